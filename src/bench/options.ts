// What one `make bench` runs: the layers, the matrix subset, durations and
// rounds, parsed from the command line, and how long that will take. Pure.
import {
  LIMITS, Op, SERVERS, limitsDurationSec, STORAGES, ServerId, StorageId, serverDef, serves, storageDef, workloads,
} from './matrix';
import type { LayerSettings } from './report';

/**
 * scaling: vublk alone, SCALING's workload on one iothread and on two; coalescing: vublk alone,
 * COALESCING's workload with interrupt coalescing off and on (the front-end driver again);
 * limits: vublk alone, each of LIMITS' cases held for LIMITS.durationSec.
 */
export type Layer = 'driver' | 'scaling' | 'coalescing' | 'limits' | 'guest' | 'host';
export const LAYERS: readonly Layer[] = ['driver', 'scaling', 'coalescing', 'limits', 'guest', 'host'];

export interface Plan extends LayerSettings {
  layers: Layer[];
  storages: StorageId[];
  servers: ServerId[];
  ops: Op[];
  qds: number[];
  queues: number[];
  /** Every layer runs this many interleaved rounds; figures are medians over them. */
  rounds: number;
  blockSize: number;
  imageMiB: number;
  /** Ring size of the front-end driver's queues: 3 descriptors per request, so 512 holds QD 128. */
  queueSize: number;
  /** A directory on a disk-backed filesystem; found automatically when unset. */
  diskDir?: string;
  out: string;
  command: string;
  quick: boolean;
  dryRun: boolean;
}

export type Invocation = { kind: 'run'; plan: Plan } | { kind: 'render'; json: string } | { kind: 'help' };

/** The full run: about 25 minutes on a 2-core machine (see estimateSeconds). */
const FULL = { rounds: 2, driver: { durationSec: 3, warmupSec: 1 }, host: { durationSec: 3 }, guest: { durationSec: 6, warmupSec: 2 } };
/** --quick: one short round of everything, to see that it all works. */
const QUICK = { rounds: 1, driver: { durationSec: 1, warmupSec: 0.5 }, host: { durationSec: 1 }, guest: { durationSec: 3, warmupSec: 1 } };

/** qsd-native (aio=native, cache.direct=on only) is left out by default: it adds ~2 minutes (--servers ...,qsd-native). */
export const DEFAULT_SERVERS: readonly ServerId[] = ['vublk', 'qsd', 'qsd-io_uring'];

export const USAGE = `usage: bench [options]          (make bench BENCH_ARGS='...')
       bench --render [REPORT.json]   rewrite REPORT.md and its plot from REPORT.json
  --layers L,...     ${LAYERS.join(',')} (default: all)
  --storage S,...    ${STORAGES.map((s) => s.id).join(',')} (default: all)
  --servers S,...    ${SERVERS.map((s) => s.id).join(',')} (default: vublk,qsd,qsd-io_uring; qsd-native runs only where cache.direct=on)
  --ops O,...        randread,randwrite (default: both)
  --qd N,...         queue depths per queue (default 1,32,128)
  --queues N,...     queue counts (default 1,4)
  --rounds N         interleaved rounds (default ${FULL.rounds})
  --duration S       driver layer: measured seconds per run (default ${FULL.driver.durationSec}), --warmup S (${FULL.driver.warmupSec})
  --host-duration S  host layer: seconds per fio run (default ${FULL.host.durationSec})
  --guest-duration S guest layer: measured seconds (default ${FULL.guest.durationSec}), --guest-warmup S (${FULL.guest.warmupSec})
  --quick            ${QUICK.rounds} round, ${QUICK.driver.durationSec} s runs (guest ${QUICK.guest.durationSec} s): a check that everything works
  --image-mib N      image size (default 1024)
  --disk-dir DIR     where the disk image goes (default: /var/tmp, else the repository, whichever is on a disk)
  --out PREFIX       writes PREFIX.md, PREFIX.json, PREFIX-iops-qd.png (default docs/benchmarks)
  --dry-run          print the plan and its expected duration, run nothing
environment: VUBLK_BENCH_NODE_ARGS='--perf-basic-prof ...' gives vublk's node these options (profiling)`;

function list<T extends string>(flag: string, v: string, allowed: readonly T[]): T[] {
  const items = v.split(',').filter((x) => x !== '');
  for (const x of items) if (!allowed.includes(x as T)) throw new Error(`${flag}: unknown '${x}' (one of ${allowed.join(', ')})`);
  if (items.length === 0) throw new Error(`${flag}: empty list`);
  return [...new Set(items)] as T[];
}

function num(flag: string, v: string, min: number): number {
  const n = Number(v);
  if (v === '' || !Number.isFinite(n) || n < min) throw new Error(`${flag}: expected a number >= ${min}, got '${v}'`);
  return n;
}

function ints(flag: string, v: string, min: number): number[] {
  return [...new Set(v.split(',').map((x) => Math.floor(num(flag, x, min))))];
}

export function parseArgs(argv: readonly string[], defaultCommand: string): Invocation {
  if (argv[0] === '--render') return { kind: 'render', json: argv[1] ?? 'docs/benchmarks.json' };
  const plan: Plan = {
    layers: [...LAYERS], storages: STORAGES.map((s) => s.id), servers: [...DEFAULT_SERVERS],
    ops: ['randread', 'randwrite'], qds: [1, 32, 128], queues: [1, 4],
    rounds: FULL.rounds, blockSize: 4096, imageMiB: 1024, queueSize: 512,
    driver: { ...FULL.driver }, host: { ...FULL.host }, guest: { ...FULL.guest, qd: 32, cpus: 1, memoryMiB: 512 },
    out: 'docs/benchmarks', command: defaultCommand, quick: false, dryRun: false,
  };
  // Explicit durations win over --quick wherever it stands.
  const explicit: Array<(p: Plan) => void> = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--help' || flag === '-h') return { kind: 'help' };
    if (flag === '--quick') { plan.quick = true; continue; }
    if (flag === '--dry-run') { plan.dryRun = true; continue; }
    const v = argv[++i];
    if (v === undefined) throw new Error(`${flag}: missing value\n${USAGE}`);
    switch (flag) {
      case '--layers': plan.layers = list(flag, v, LAYERS); break;
      case '--storage': plan.storages = list(flag, v, STORAGES.map((s) => s.id)); break;
      case '--servers': plan.servers = list(flag, v, SERVERS.map((s) => s.id)); break;
      case '--ops': plan.ops = list<Op>(flag, v, ['randread', 'randwrite']); break;
      case '--qd': plan.qds = ints(flag, v, 1); break;
      case '--queues': plan.queues = ints(flag, v, 1); break;
      case '--rounds': { const n = Math.floor(num(flag, v, 1)); explicit.push((p) => { p.rounds = n; }); break; }
      case '--duration': { const n = num(flag, v, 0.1); explicit.push((p) => { p.driver.durationSec = n; }); break; }
      case '--warmup': { const n = num(flag, v, 0); explicit.push((p) => { p.driver.warmupSec = n; }); break; }
      case '--host-duration': { const n = Math.max(1, Math.round(num(flag, v, 1))); explicit.push((p) => { p.host.durationSec = n; }); break; }
      case '--guest-duration': { const n = Math.max(1, Math.round(num(flag, v, 1))); explicit.push((p) => { p.guest.durationSec = n; }); break; }
      case '--guest-warmup': { const n = Math.round(num(flag, v, 0)); explicit.push((p) => { p.guest.warmupSec = n; }); break; }
      case '--image-mib': plan.imageMiB = Math.floor(num(flag, v, 16)); break;
      case '--disk-dir': plan.diskDir = v; break;
      case '--out': plan.out = v; break;
      case '--command': plan.command = v; break;
      default: throw new Error(`${flag}: unknown option\n${USAGE}`);
    }
  }
  if (plan.quick) {
    plan.rounds = QUICK.rounds;
    plan.driver = { ...QUICK.driver };
    plan.host = { ...QUICK.host };
    plan.guest = { ...plan.guest, ...QUICK.guest };
  }
  for (const set of explicit) set(plan);
  const maxQd = Math.max(...plan.qds);
  // Requests are 3-descriptor chains without indirect tables.
  plan.queueSize = Math.max(128, 2 ** Math.ceil(Math.log2(3 * maxQd)));
  if (plan.queueSize > 1024) throw new Error(`--qd ${maxQd}: at most 341 (3 descriptors per request in a ring of at most 1024)`);
  if (!plan.servers.includes('vublk')) throw new Error('--servers: vublk is what the others are compared with; keep it');
  if (!plan.servers.some((s) => serverDef(s).role === 'qsd')) throw new Error('--servers: name at least one qsd variant');
  return { kind: 'run', plan };
}

/** The servers that run on `storage`, in plan order. */
export function serversFor(plan: Plan, storage: StorageId): ServerId[] {
  return plan.servers.filter((s) => serves(serverDef(s), storageDef(storage)));
}

/** Fixed costs besides the measured seconds, from smoke runs on a 2-core machine. */
export const COSTS = {
  /** Start a server and stop it again. */
  serverSec: 0.5,
  /** Connect, drain and disconnect the front-end around one driver run. */
  driverRunSec: 0.3,
  /** fio's start and exit on the host. */
  hostRunSec: 0.3,
  /** Start the servers and boot the TCG guest (fio archive included) until its script starts (6 s seen). */
  guestBootSec: 20,
  /** Two fio starts under TCG (warm-up and measured run) and printing the result (3 s seen). */
  guestRunSec: 4,
  /** Writing one image to disk, per GiB. */
  diskImageSecPerGiB: 6,
};

export interface Estimate { images: number; driver: number; host: number; guest: number; total: number }

/** Seconds the plan should take; the fixed costs are COSTS. */
export function estimateSeconds(plan: Plan): Estimate {
  const has = (l: Layer): boolean => plan.layers.includes(l);
  const diskImages = plan.storages.filter((s) => storageDef(s).onDisk).length;
  const images = (diskImages * plan.imageMiB / 1024) * COSTS.diskImageSecPerGiB;
  const ws = workloads(plan.ops, plan.qds, plan.queues);
  const driverRun = plan.driver.warmupSec + plan.driver.durationSec + COSTS.driverRunSec;
  let driver = 0;
  if (has('driver')) {
    // The ceiling: GET_ID at every queue depth and queue count, one server per queue count.
    driver += plan.queues.length * COSTS.serverSec + plan.qds.length * plan.queues.length * driverRun;
    for (const s of plan.storages) {
      const sessions = serversFor(plan, s).length * plan.queues.length;
      driver += sessions * COSTS.serverSec + sessions * plan.ops.length * plan.qds.length * driverRun;
    }
    driver *= plan.rounds;
  }
  if (has('scaling')) {
    // Two sessions (one and two iothreads) per round on the first storage.
    driver += plan.rounds * 2 * (COSTS.serverSec + plan.ops.length * driverRun);
  }
  if (has('coalescing')) {
    // Two sessions (coalescing off and on) per round on the first storage.
    driver += plan.rounds * 2 * (COSTS.serverSec + plan.ops.length * driverRun);
  }
  if (has('limits')) {
    // One session per limit per round, each one long run.
    driver += plan.rounds * LIMITS.cases.length * (COSTS.serverSec + LIMITS.warmupSec + limitsDurationSec(plan.quick) + COSTS.driverRunSec);
  }
  const host = has('host') ? plan.rounds * plan.storages.length * ws.length * (plan.host.durationSec + COSTS.hostRunSec) : 0;
  let guest = 0;
  if (has('guest')) {
    const targets = plan.storages.reduce((n, s) => n + serversFor(plan, s).length, 0);
    guest = COSTS.guestBootSec + plan.rounds * targets * (plan.guest.warmupSec + plan.guest.durationSec + COSTS.guestRunSec);
  }
  return { images, driver, host, guest, total: images + driver + host + guest };
}
