// What the benchmark records (docs/benchmarks.json): per-run figures of the
// three layers, their medians, and the settings and versions they came from.
// Pure (no I/O).
import { Op, ServerId, StorageId } from './matrix';
import { median } from './stats';

/** Bumped when the JSON changes shape; --render refuses other versions. */
export const REPORT_SCHEMA = 3;

/** How long each layer's runs last, and the guest's shape: set by the plan, recorded in the report. */
export interface LayerSettings {
  driver: { durationSec: number; warmupSec: number };
  /** fio's whole run is measured (its CPU comes from the wrapper shell), so no ramp. */
  host: { durationSec: number };
  guest: { durationSec: number; warmupSec: number; qd: number; cpus: number; memoryMiB: number };
}

/** Front-end driver layer: figures of one measured interval. */
export interface RunFigures {
  iops: number;
  p50Us: number;
  p99Us: number;
  /** Server process CPU (all threads) per I/O. */
  serverCpuUsPerIo: number;
  /** Driver process CPU per I/O. */
  driverCpuUsPerIo: number;
  /** CPU use in % of one core. */
  serverCpuPct: number;
  busiestServerThreadPct: number;
  driverCpuPct: number;
  /** Whole machine, % of all cores. */
  machineBusyPct: number;
  stealPct: number;
  /** CPU used by everything else on the machine (other processes, interrupts), % of one core. */
  otherCpuPct: number;
}

export interface RunResult extends RunFigures {
  round: number;
  /** Interrupts (call eventfd signals) the driver got per I/O; recorded since the coalescing layer. */
  interruptsPerIo?: number;
  ios: number;
  errors: number;
  seconds: number;
  busiestServerThread: string;
  /** Server CPU of its busiest threads, e.g. "vublk-io0 45%, iou-wrk 39%" (io_uring workers summed). */
  serverThreads: string;
}

export interface DriverRow {
  storage: StorageId;
  server: ServerId;
  /** getid: the driver ceiling rows. */
  op: Op | 'getid';
  /** Requests in flight per queue. */
  qd: number;
  queues: number;
  /** Iothreads the export's queues are spread over (the scaling rows); absent: one. */
  iothreads?: number;
  /** The coalescing rows: x-vublk-coalescing.delay-us (0: off). */
  coalescingUs?: number;
  /** The I/O limit rows: the x-vublk-throttling key and its value. */
  limit?: { key: string; value: number };
  median: RunFigures;
  iopsMin: number;
  iopsMax: number;
  runs: RunResult[];
}

/** Guest layer: fio in the guest against one server. */
export interface GuestFigures {
  iops: number;
  p50Us: number;
  p99Us: number;
  /** Server CPU over fio's run divided by fio's I/O count. */
  serverCpuUsPerIo: number;
  /** % of one core between the markers around fio (which include fio's start and exit). */
  serverCpuPct: number;
}

export interface GuestRun extends GuestFigures {
  round: number;
  ios: number;
  /** fio's runtime. */
  seconds: number;
  /** Between the markers around fio (includes fio's start and exit, when the server idles). */
  serverCpuSec: number;
  serverThreads: string;
}

export interface GuestRow {
  storage: StorageId;
  server: ServerId;
  median: GuestFigures;
  runs: GuestRun[];
}

/** Host layer: fio with io_uring straight on the image. */
export interface HostFigures {
  iops: number;
  p50Us: number;
  p99Us: number;
  /** fio's own CPU (user + system, io_uring workers included) per I/O. */
  cpuUsPerIo: number;
}

export interface HostRun extends HostFigures {
  round: number;
  ios: number;
  seconds: number;
  cpuSec: number;
}

export interface HostRow {
  storage: StorageId;
  op: Op;
  qd: number;
  /** fio jobs: one per queue of the matching driver workload. */
  jobs: number;
  median: HostFigures;
  runs: HostRun[];
}

export interface StorageInfo {
  id: StorageId;
  label: string;
  image: string;
  direct: boolean;
  /** The filesystem under the image, from findmnt. */
  fstype: string;
  source: string;
  mountpoint: string;
}

export interface BenchReport {
  schema: number;
  date: string;
  command: string;
  machine: { nproc: number; cpuModel: string; kernel: string; memoryGiB: number };
  versions: { node: string; qemuStorageDaemon: string; qemu: string; fio: string; vublkCommit: string };
  settings: LayerSettings & {
    rounds: number;
    blockSize: number;
    imageBytes: number;
    queueSize: number;
    quick: boolean;
    /** Measured seconds of the whole run. */
    elapsedSec: number;
  };
  storages: StorageInfo[];
  /** In plan order; the first qsd-role server is qsd's default engine. */
  servers: ServerId[];
  /** Server command lines per storage, with $SOCKET and $QUEUES. */
  commands: Array<{ storage: StorageId; server: ServerId; command: string }>;
  /** scaling: vublk's SCALING workload on one iothread and on SCALING.iothreads. */
  driver?: { rows: DriverRow[]; ceiling: DriverRow[]; scaling: DriverRow[]; coalescing?: DriverRow[]; limits?: DriverRow[] };
  guest?: { rows: GuestRow[]; qemuCommand: string; fioCommand: string; bootMs: number };
  host?: { rows: HostRow[]; fioCommand: string };
  /** What failed (a server that would not start or exited, fio errors); everything else still ran. */
  failures: string[];
}

/** Median of each listed figure over the runs, each taken separately. */
export function medianOf<T extends object>(runs: readonly T[], keys: ReadonlyArray<keyof T>): T {
  const out = {} as T;
  for (const k of keys) out[k] = median(runs.map((r) => r[k] as unknown as number)) as unknown as T[keyof T];
  return out;
}

export const RUN_FIGURES: ReadonlyArray<keyof RunFigures> = [
  'iops', 'p50Us', 'p99Us', 'serverCpuUsPerIo', 'driverCpuUsPerIo', 'serverCpuPct',
  'busiestServerThreadPct', 'driverCpuPct', 'machineBusyPct', 'stealPct', 'otherCpuPct',
];
export const GUEST_FIGURES: ReadonlyArray<keyof GuestFigures> = ['iops', 'p50Us', 'p99Us', 'serverCpuUsPerIo', 'serverCpuPct'];
export const HOST_FIGURES: ReadonlyArray<keyof HostFigures> = ['iops', 'p50Us', 'p99Us', 'cpuUsPerIo'];

/** Median of every driver-layer figure over the runs. */
export function summarize(runs: readonly RunFigures[]): RunFigures {
  return medianOf(runs, RUN_FIGURES);
}

/** A core counts as saturated above this share. */
export const SATURATED_PCT = 90;

/** Other load (in % of one core) above which the report warns that IOPS are depressed. */
export const NOISY_OTHER_PCT = 20;

/** What bounds a configuration, judged from its CPU figures. */
export function limitOf(f: RunFigures, nproc: number): string {
  const limits: string[] = [];
  if (f.driverCpuPct >= SATURATED_PCT) limits.push('driver (a full core)');
  if (f.busiestServerThreadPct >= SATURATED_PCT) limits.push('a server thread (a full core)');
  if (f.machineBusyPct >= SATURATED_PCT) limits.push(`machine CPU (all ${nproc} cores busy)`);
  return limits.length > 0 ? limits.join('; ') : 'no core saturated (latency, wake-ups)';
}
