// Fuzz runner: the unit run's properties (test/property/registry.ts) for a time
// budget instead of a fixed case count, from a random seed.
//
//   node dist/test/fuzz/run.js [--seconds N] [--seed S] [--only NAME,...]
//   node dist/test/fuzz/run.js --only NAME --seed S --path P     (replay one failure)
//
// The budget is shared equally by the properties. Each runs in chunks of a few
// seconds with seeds derived from the run's seed, so a failure found late is
// still shrunk in full and reported with the chunk's seed and path, which
// replay it exactly (here, or in the unit tests with VUBLK_FC_SEED/VUBLK_FC_PATH).
import fc from 'fast-check';
import { setLogSink } from '../../src/util/log';
import { PROPERTIES, PropertyEntry } from '../property/registry';

interface Options {
  seconds: number;
  seed: number;
  only: string[] | undefined;
  path: string | undefined;
}

function usage(message: string): never {
  process.stderr.write(`fuzz: ${message}\nusage: run.js [--seconds N] [--seed S] [--only NAME,...] [--path P]\n` +
    `properties: ${PROPERTIES.map((p) => p.name).join(', ')}\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { seconds: Number(process.env.FUZZ_SECONDS ?? 60), seed: randomSeed(), only: undefined, path: undefined };
  for (let i = 0; i < argv.length; i++) {
    const value = (): string => argv[++i] ?? usage(`${argv[i - 1]} needs a value`);
    switch (argv[i]) {
      case '--seconds': o.seconds = Number(value()); break;
      case '--seed': o.seed = Number(value()); break;
      case '--only': o.only = value().split(','); break;
      case '--path': o.path = value(); break;
      default: usage(`unknown argument ${argv[i]}`);
    }
  }
  if (!(o.seconds > 0)) usage('--seconds must be positive');
  if (!Number.isInteger(o.seed)) usage('--seed must be an integer');
  for (const n of o.only ?? []) if (!PROPERTIES.some((p) => p.name === n)) usage(`no property ${n}`);
  if (o.path !== undefined && o.only?.length !== 1) usage('--path replays one property: give --only NAME');
  return o;
}

function randomSeed(): number {
  return (Math.random() * 0x100000000) | 0;
}

/** Seed of chunk k: distinct per chunk, reproducible from the run's seed. */
const chunkSeed = (seed: number, k: number): number => (seed + Math.imul(k, 0x9e3779b9)) | 0;

const CHUNK_MS = 5000;

interface Result { name: string; cases: number; ms: number; failed: boolean }

async function fuzz(p: PropertyEntry, seed: number, budgetMs: number): Promise<Result> {
  const start = Date.now();
  let cases = 0;
  let runs = 20;
  for (let k = 0; Date.now() - start < budgetMs; k++) {
    const s = chunkSeed(seed, k);
    const t = Date.now();
    const d = await fc.check(p.make(), { seed: s, numRuns: runs });
    cases += d.numRuns;
    if (d.failed) {
      process.stdout.write(`\n${p.name}: FAILED after ${cases} cases\n${fc.defaultReportMessage(d)}\n${describeError(d.errorInstance)}\n` +
        `replay: make fuzz FUZZ_ARGS='--only ${p.name} --seed ${s} --path ${d.counterexamplePath}'\n` +
        `    or: VUBLK_FC_SEED=${s} VUBLK_FC_PATH=${d.counterexamplePath} npx mocha 'dist/test/unit/*-property.test.js' -g '(${p.name})'\n\n`);
      return { name: p.name, cases, ms: Date.now() - start, failed: true };
    }
    // Size the next chunk to about CHUNK_MS, never past the budget by much.
    const perCase = Math.max(0.01, (Date.now() - t) / Math.max(1, d.numRuns));
    const left = budgetMs - (Date.now() - start);
    runs = Math.max(1, Math.floor(Math.min(CHUNK_MS, left) / perCase));
  }
  return { name: p.name, cases, ms: Date.now() - start, failed: false };
}

function describeError(e: unknown): string {
  return `Caused by: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
}

async function replay(p: PropertyEntry, seed: number, path: string): Promise<boolean> {
  const d = await fc.check(p.make(), { seed, path, numRuns: 1 });
  process.stdout.write(d.failed ? `${p.name}: ${fc.defaultReportMessage(d)}\n${describeError(d.errorInstance)}\n` : `${p.name}: passes at seed ${seed} path ${path}\n`);
  return !d.failed;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  // Hostile cases log malformed requests by the thousand.
  setLogSink(() => {});
  const chosen = PROPERTIES.filter((p) => o.only === undefined || o.only.includes(p.name));
  if (o.path !== undefined) {
    process.exitCode = (await replay(chosen[0], o.seed, o.path)) ? 0 : 1;
    return;
  }
  process.stdout.write(`fuzz: seed ${o.seed}, ${o.seconds} s over ${chosen.map((p) => p.name).join(', ')}\n`);
  const started = Date.now();
  const results: Result[] = [];
  for (const p of chosen) {
    const r = await fuzz(p, o.seed, (o.seconds * 1000) / chosen.length);
    results.push(r);
    process.stdout.write(`  ${r.failed ? 'FAIL' : 'ok  '} ${p.name.padEnd(14)} ${String(r.cases).padStart(9)} cases in ${(r.ms / 1000).toFixed(1)} s\n`);
  }
  const failed = results.filter((r) => r.failed).length;
  const cases = results.reduce((n, r) => n + r.cases, 0);
  process.stdout.write(`fuzz: seed ${o.seed}: ${cases} cases in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  process.stdout.write(`${results.length - failed} passed, ${failed} failed\n`);
  process.exitCode = failed > 0 ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`fuzz: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
