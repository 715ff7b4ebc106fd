// `make bench`: vublk (io_uring / thread pool, 1 / 2 iothreads) side by side
// with qemu-storage-daemon, driven by our own front-end with a closed loop of
// 4K random reads. Configurations run interleaved for several rounds and the
// medians go to docs/benchmarks.md and docs/benchmarks.json.
//
//   node dist/src/bench/frontend-bench.js --image /dev/shm/vublk-bench.img [--duration 10] [--warmup 2]
//        [--rounds 3] [--qd 32] [--bs 4096] [--rw randread|randwrite|randrw] [--write-pct 30]
//        [--configs NAME,...] [--out docs/benchmarks] [--command TEXT]
//   node dist/src/bench/frontend-bench.js --render docs/benchmarks.json   (rewrite the .md from the .json)
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BlkFrontend } from '../frontend';
import { DriverKind, Measure, Op, Workload, startLoad } from './driver';
import { CLK_TCK, busiestThread, cpuByThread, sampleMachine, sampleProcess } from '../util/proc-stats';
import { BenchReport, ConfigResult, RunResult, renderMarkdown, summarize } from './report';
import { ServerSpec, displayArgv, serverArgv, startServer } from './servers';
import { percentile } from './stats';

interface BenchConfig {
  name: string;
  label: string;
  role: ConfigResult['role'];
  server: ServerSpec;
  baseline?: string;
  /** Overrides the workload's op (the ceiling runs use GET_ID). */
  op?: Op;
  driver?: DriverKind;
}

const vublk = (aio: 'io_uring' | 'threads', n: number): ServerSpec => ({ kind: 'vublk', aio, iothreads: n, queues: n });

export const CONFIGS: BenchConfig[] = [
  { name: 'vublk-uring-1t', label: 'vublk io_uring, 1 iothread', role: 'vublk', server: vublk('io_uring', 1), baseline: 'qsd-iothread-1q' },
  { name: 'vublk-threads-1t', label: 'vublk threads, 1 iothread', role: 'vublk', server: vublk('threads', 1), baseline: 'qsd-iothread-1q' },
  { name: 'vublk-uring-2t', label: 'vublk io_uring, 2 iothreads', role: 'vublk', server: vublk('io_uring', 2), baseline: 'qsd-iothread-2q' },
  { name: 'vublk-threads-2t', label: 'vublk threads, 2 iothreads', role: 'vublk', server: vublk('threads', 2), baseline: 'qsd-iothread-2q' },
  { name: 'qsd-main-1q', label: 'qsd, main loop', role: 'qsd', server: { kind: 'qsd', queues: 1 } },
  { name: 'qsd-iothread-1q', label: 'qsd, iothread', role: 'qsd', server: { kind: 'qsd', queues: 1, qsdIothread: true } },
  { name: 'qsd-iothread-2q', label: 'qsd, iothread, 2 queues', role: 'qsd', server: { kind: 'qsd', queues: 2, qsdIothread: true } },
  { name: 'ceiling-ring', label: 'ceiling: GET_ID, vublk io_uring 1 iothread', role: 'ceiling', server: vublk('io_uring', 1), op: 'getid' },
  { name: 'ceiling-promise', label: 'ceiling: GET_ID, promise driver', role: 'ceiling', server: vublk('io_uring', 1), op: 'getid', driver: 'promise' },
];

interface Options {
  image: string;
  durationSec: number;
  warmupSec: number;
  rounds: number;
  qd: number;
  blockSize: number;
  op: Op;
  writePercent: number;
  configs: BenchConfig[];
  out: string;
  command: string;
}

const USAGE = 'usage: frontend-bench --image PATH [--duration S] [--warmup S] [--rounds N] [--qd N] [--bs BYTES]\n' +
  '        [--rw randread|randwrite|randrw] [--write-pct P] [--configs NAME,...] [--out PREFIX] [--command TEXT]\n' +
  '       frontend-bench --render REPORT.json\n' +
  `configurations: ${CONFIGS.map((c) => c.name).join(', ')}`;

function parseArgs(argv: string[]): Options {
  const o: Options = {
    image: '', durationSec: 10, warmupSec: 2, rounds: 3, qd: 32, blockSize: 4096, op: 'randread', writePercent: 30,
    configs: CONFIGS, out: 'docs/benchmarks', command: `node ${path.relative(process.cwd(), __filename)} ${argv.join(' ')}`.trim(),
  };
  const num = (flag: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`${flag}: expected a number >= ${min}, got '${v}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    }
    const v = argv[++i];
    if (v === undefined) throw new Error(`${flag}: missing value\n${USAGE}`);
    switch (flag) {
      case '--image': o.image = v; break;
      case '--duration': o.durationSec = num(flag, v, 0.1); break;
      case '--warmup': o.warmupSec = num(flag, v, 0); break;
      case '--rounds': o.rounds = Math.floor(num(flag, v, 1)); break;
      case '--qd': o.qd = Math.floor(num(flag, v, 1)); break;
      case '--bs':
        o.blockSize = num(flag, v, 512);
        if (o.blockSize % 512 !== 0) throw new Error('--bs: a multiple of 512');
        break;
      case '--rw':
        if (v !== 'randread' && v !== 'randwrite' && v !== 'randrw') throw new Error(`--rw: randread, randwrite or randrw, got '${v}'`);
        o.op = v;
        break;
      case '--write-pct': o.writePercent = num(flag, v, 0); break;
      case '--configs':
        o.configs = v.split(',').map((n) => {
          const c = CONFIGS.find((x) => x.name === n);
          if (c === undefined) throw new Error(`--configs: unknown '${n}'\n${USAGE}`);
          return c;
        });
        break;
      case '--out': o.out = v; break;
      case '--command': o.command = v; break;
      default: throw new Error(`${flag}: unknown option\n${USAGE}`);
    }
  }
  if (o.image === '') throw new Error(`--image is required\n${USAGE}`);
  return o;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function runOne(c: BenchConfig, o: Options, round: number): Promise<RunResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-bench-'));
  const socket = path.join(dir, 'sock');
  const server = await startServer(c.server, o.image, socket);
  let fe: BlkFrontend | undefined;
  try {
    fe = await BlkFrontend.connect({ socketPath: socket, numQueues: c.server.queues, queueSize: 128, memoryBytes: 16 << 20 });
    const capacity = fe.config.capacity;
    const w: Workload = { op: c.op ?? o.op, blockSize: o.blockSize, qd: o.qd, writePercent: o.writePercent, capacity };
    const m = new Measure();
    const streams = startLoad(c.driver ?? 'ring', fe, w, m);
    await sleep(o.warmupSec * 1000);

    const srv0 = sampleProcess(server.pid);
    const mach0 = sampleMachine();
    const drv0 = process.cpuUsage();
    const t0 = performance.now();
    m.recording = true;
    await sleep(o.durationSec * 1000);
    m.recording = false;
    const seconds = (performance.now() - t0) / 1000;
    const drv = process.cpuUsage(drv0);
    const mach1 = sampleMachine();
    const srv1 = sampleProcess(server.pid);

    m.stopping = true;
    await Promise.all(streams.map((s) => s.drained));
    if (m.errors > 0) throw new Error(`${c.name}: ${m.errors} requests completed with a non-OK status`);

    const lat = m.latencyUs.sorted();
    const serverSec = srv1.cpuSec - srv0.cpuSec;
    const driverSec = (drv.user + drv.system) / 1e6;
    const busiest = busiestThread(srv0, srv1);
    const machTicks = mach1.total - mach0.total;
    const machineBusyPct = machTicks > 0 ? (100 * (mach1.busy - mach0.busy)) / machTicks : NaN;
    const pct = (sec: number): number => (100 * sec) / seconds;
    return {
      round, ios: m.ios, errors: m.errors, seconds,
      iops: m.ios / seconds,
      p50Us: percentile(lat, 50),
      p99Us: percentile(lat, 99),
      serverCpuUsPerIo: (serverSec * 1e6) / m.ios,
      driverCpuUsPerIo: (driverSec * 1e6) / m.ios,
      serverCpuPct: pct(serverSec),
      busiestServerThreadPct: pct(busiest.cpuSec),
      busiestServerThread: busiest.name,
      serverThreads: describeThreads(cpuByThread(srv0, srv1), pct),
      driverCpuPct: pct(driverSec),
      machineBusyPct,
      stealPct: machTicks > 0 ? (100 * (mach1.steal - mach0.steal)) / machTicks : NaN,
      otherCpuPct: machineBusyPct * os.cpus().length - pct(serverSec) - pct(driverSec),
    };
  } finally {
    await fe?.disconnect();
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** "vublk-io0 45%, iou-wrk 39%, 3 others 2%": the three busiest threads, then the rest summed (idle ones left out). */
function describeThreads(all: Array<{ name: string; cpuSec: number }>, pct: (sec: number) => number): string {
  const threads = all.filter((t) => pct(t.cpuSec) >= 0.5);
  const shown = threads.slice(0, 3).map((t) => `${t.name} ${pct(t.cpuSec).toFixed(0)}%`);
  const rest = threads.slice(3);
  if (rest.length > 0) shown.push(`${rest.length} others ${pct(rest.reduce((n, t) => n + t.cpuSec, 0)).toFixed(0)}%`);
  return shown.join(', ');
}

function tryRun(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0].trim();
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === '--render') {
    const json = process.argv[3] ?? 'docs/benchmarks.json';
    const md = json.replace(/\.json$/, '') + '.md';
    fs.writeFileSync(md, renderMarkdown(JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport));
    console.log(`wrote ${md}`);
    return;
  }
  const o = parseArgs(process.argv.slice(2));
  const imageBytes = fs.statSync(o.image).size;
  const runs = new Map<string, RunResult[]>(o.configs.map((c) => [c.name, []]));
  for (let round = 1; round <= o.rounds; round++) {
    for (const c of o.configs) {
      const r = await runOne(c, o, round);
      runs.get(c.name)!.push(r);
      console.log(`round ${round}/${o.rounds} ${c.name.padEnd(18)} ${(r.iops / 1000).toFixed(1).padStart(7)}k IOPS  ` +
        `p50 ${r.p50Us.toFixed(0).padStart(5)} µs  p99 ${r.p99Us.toFixed(0).padStart(6)} µs  ` +
        `server ${r.serverCpuUsPerIo.toFixed(1).padStart(5)} µs/IO  driver ${r.driverCpuUsPerIo.toFixed(1).padStart(5)} µs/IO  ` +
        `(server ${r.serverCpuPct.toFixed(0)}%: ${r.serverThreads}; driver ${r.driverCpuPct.toFixed(0)}%, ` +
        `other ${r.otherCpuPct.toFixed(0)}%, steal ${r.stealPct.toFixed(1)}%)`);
    }
  }

  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const report: BenchReport = {
    date: new Date().toISOString(),
    command: o.command,
    machine: { nproc: os.cpus().length, cpuModel, kernel: os.release() },
    versions: {
      node: process.version,
      qemuStorageDaemon: tryRun('qemu-storage-daemon', ['--version']),
      vublkCommit: tryRun('git', ['-C', path.resolve(__dirname, '..', '..', '..'), 'rev-parse', '--short', 'HEAD']),
    },
    settings: {
      durationSec: o.durationSec, warmupSec: o.warmupSec, rounds: o.rounds, qd: o.qd, blockSize: o.blockSize,
      op: o.op === 'randrw' ? `randrw (${o.writePercent}% writes)` : o.op, image: o.image, imageBytes, cache: 'writeback',
    },
    configs: o.configs.map((c): ConfigResult => {
      const rs = runs.get(c.name)!;
      const iops = rs.map((r) => r.iops);
      return {
        name: c.name, label: c.label, role: c.role, queues: c.server.queues, op: c.op ?? o.op, driver: c.driver ?? 'ring',
        baseline: o.configs.some((x) => x.name === c.baseline) ? c.baseline : undefined,
        serverCommand: displayArgv(serverArgv(c.server, '$IMAGE', '$SOCKET')),
        median: summarize(rs), iopsMin: Math.min(...iops), iopsMax: Math.max(...iops), runs: rs,
      };
    }),
  };
  fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
  fs.writeFileSync(`${o.out}.json`, `${JSON.stringify({ ...report, clockTicksPerSec: CLK_TCK }, null, 2)}\n`);
  fs.writeFileSync(`${o.out}.md`, renderMarkdown(report));
  console.log(`wrote ${o.out}.md and ${o.out}.json`);
}

main().catch((e: unknown) => {
  console.error((e as Error).message ?? e);
  process.exit(1);
});
