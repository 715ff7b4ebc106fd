// `make bench`: vublk against qemu-storage-daemon in three layers (our own
// front-end driver, fio in a guest, fio on the host as the ceiling), on tmpfs
// and on a disk with O_DIRECT off and on. Writes PREFIX.json, PREFIX.md and
// PREFIX-iops-qd.png (docs/benchmarks by default); see USAGE in options.ts.
//
//   node dist/src/bench/main.js [options]
//   node dist/src/bench/main.js --render [docs/benchmarks.json]   (rewrite the .md and .png from the .json)
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DriverLayer } from './driver-layer';
import { hostFioArgs } from './fio';
import { runGuestLayer } from './guest-layer';
import { HostLayer } from './host-layer';
import { Images, createImages } from './images';
import { displayCommand, serverDef } from './matrix';
import { Plan, USAGE, estimateSeconds, parseArgs, serversFor } from './options';
import { renderPlot } from './plot';
import { BenchReport, REPORT_SCHEMA } from './report';
import { renderMarkdown } from './render';
import { killServers } from './servers';
import { machine, versions } from './versions';

const REPO = path.resolve(__dirname, '..', '..', '..');
const started = Date.now();

function log(line: string): void {
  const s = Math.floor((Date.now() - started) / 1000);
  console.log(`[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}`);
}

/** Write PREFIX.md and PREFIX-iops-qd.png next to PREFIX.json. */
function writeDocs(r: BenchReport, jsonPath: string): void {
  const prefix = jsonPath.replace(/\.json$/, '');
  const png = `${prefix}-iops-qd.png`;
  const why = renderPlot(r, png);
  if (why !== undefined) log(`no plot: ${why}`);
  fs.writeFileSync(`${prefix}.md`, renderMarkdown(r, { json: path.basename(jsonPath), png: why === undefined ? path.basename(png) : undefined }));
  log(`wrote ${prefix}.md${why === undefined ? ` and ${png}` : ''}`);
}

function render(json: string): void {
  const r = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport;
  if (r.schema !== REPORT_SCHEMA) {
    throw new Error(`${json} is from another version of the benchmark (schema ${r.schema ?? 1}, this one writes ${REPORT_SCHEMA}); run make bench again`);
  }
  writeDocs(r, json);
}

function describePlan(plan: Plan): void {
  const e = estimateSeconds(plan);
  const min = (s: number): string => `${(s / 60).toFixed(1)} min`;
  log(`layers ${plan.layers.join(', ')}; storage ${plan.storages.join(', ')}; servers ${plan.servers.join(', ')}; ` +
    `ops ${plan.ops.join(', ')}; QD ${plan.qds.join(', ')}; queues ${plan.queues.join(', ')}; ${plan.rounds} round(s)`);
  log(`runs: driver ${plan.driver.warmupSec}+${plan.driver.durationSec} s, host ${plan.host.durationSec} s, guest ${plan.guest.warmupSec}+${plan.guest.durationSec} s`);
  log(`expected duration: ${min(e.total)} (images ${min(e.images)}, driver ${min(e.driver)}, host ${min(e.host)}, guest ${min(e.guest)})`);
}

function requireCommand(cmd: string, why: string): void {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
  } catch {
    throw new Error(`${cmd} not found (${why}); run scripts/install-deps.sh --bench`);
  }
}

async function run(plan: Plan): Promise<void> {
  describePlan(plan);
  if (plan.dryRun) return;
  requireCommand('qemu-storage-daemon', 'the server vublk is compared with');
  if (plan.layers.includes('host')) requireCommand('fio', 'the host layer');
  if (plan.layers.includes('guest')) requireCommand('qemu-system-x86_64', 'the guest layer');

  let images: Images | undefined;
  const cleanup = (): void => { images?.remove(); };
  const interrupted = (): void => { killServers(); cleanup(); process.exit(130); };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    images = createImages(plan.storages, plan.imageMiB * 2 ** 20, plan.diskDir, REPO, log);
    const storages = images.storages;
    const driver = plan.layers.some((l) => l === 'driver' || l === 'scaling' || l === 'coalescing' || l === 'limits') ? new DriverLayer(plan, storages, log) : undefined;
    const host = plan.layers.includes('host') ? new HostLayer(plan, storages, log) : undefined;
    for (let round = 1; round <= plan.rounds; round++) {
      await driver?.round(round);
      await host?.round(round);
    }
    const failures = [...driver?.failures ?? [], ...host?.failures ?? []];
    let guest: Awaited<ReturnType<typeof runGuestLayer>> | undefined;
    if (plan.layers.includes('guest')) {
      try {
        guest = await runGuestLayer(plan, storages, log);
      } catch (e) {
        failures.push(`guest layer: ${(e as Error).message}`);
        log(`FAILED guest layer: ${(e as Error).message}`);
      }
    }

    const report: BenchReport = {
      schema: REPORT_SCHEMA,
      date: new Date().toISOString(),
      command: plan.command,
      machine: machine(),
      versions: versions(REPO),
      settings: {
        rounds: plan.rounds, blockSize: plan.blockSize, imageBytes: plan.imageMiB * 2 ** 20, queueSize: plan.queueSize, quick: plan.quick,
        driver: plan.driver, host: plan.host, guest: plan.guest, elapsedSec: (Date.now() - started) / 1000,
      },
      storages,
      servers: plan.servers,
      commands: storages.flatMap((s) => serversFor(plan, s.id).map((id) => ({
        storage: s.id, server: id, command: displayCommand(serverDef(id), s.image, s.direct, '$QUEUES', '$SOCKET'),
      }))),
      driver: driver?.result(),
      guest,
      host: host !== undefined ? {
        rows: host.result(),
        fioCommand: ['fio', ...hostFioArgs({ filename: '$IMAGE', op: '$OP', blockSize: plan.blockSize, qd: '$QD', jobs: '$JOBS', direct: '$DIRECT', durationSec: plan.host.durationSec })].join(' '),
      } : undefined,
      failures,
    };
    fs.mkdirSync(path.dirname(path.resolve(plan.out)), { recursive: true });
    fs.writeFileSync(`${plan.out}.json`, `${JSON.stringify(report, null, 2)}\n`);
    log(`wrote ${plan.out}.json`);
    writeDocs(report, `${plan.out}.json`);
    if (failures.length > 0) throw new Error(`${failures.length} part(s) of the benchmark failed; the report lists them`);
  } finally {
    cleanup();
  }
}

async function main(): Promise<void> {
  const inv = parseArgs(process.argv.slice(2), `node ${path.relative(process.cwd(), __filename)} ${process.argv.slice(2).join(' ')}`.trim());
  if (inv.kind === 'help') console.log(USAGE);
  else if (inv.kind === 'render') render(inv.json);
  else await run(inv.plan);
}

main().catch((e: unknown) => {
  console.error((e as Error).message ?? e);
  process.exit(1);
});
