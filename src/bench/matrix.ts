// The benchmark's matrix: where the image lives (storage), which server serves
// it, and the workloads. Both servers get literally the same
// qemu-storage-daemon command line with only the binary changed, so
// "equivalent options" can be read straight off the report. Pure.

export type StorageId = 'tmpfs' | 'disk' | 'disk-direct';

export interface StorageDef {
  id: StorageId;
  label: string;
  /** cache.direct=on (O_DIRECT); impossible on tmpfs. */
  direct: boolean;
  /** On a disk-backed filesystem (else /dev/shm). */
  onDisk: boolean;
}

export const STORAGES: readonly StorageDef[] = [
  { id: 'tmpfs', label: 'tmpfs, cache.direct=off', direct: false, onDisk: false },
  { id: 'disk', label: 'disk, cache.direct=off', direct: false, onDisk: true },
  { id: 'disk-direct', label: 'disk, cache.direct=on', direct: true, onDisk: true },
];

export type ServerId = 'vublk' | 'qsd' | 'qsd-io_uring' | 'qsd-native';
export type Aio = 'threads' | 'io_uring' | 'native';

export interface ServerDef {
  id: ServerId;
  label: string;
  role: 'vublk' | 'qsd';
  /** The aio= key on --blockdev; absent: the binary's default (vublk io_uring, qsd threads). */
  aio?: Aio;
  /** QEMU refuses aio=native without cache.direct=on. */
  needsDirect?: boolean;
}

export const SERVERS: readonly ServerDef[] = [
  { id: 'vublk', label: 'vublk', role: 'vublk' },
  { id: 'qsd', label: 'qsd aio=threads', role: 'qsd' },
  { id: 'qsd-io_uring', label: 'qsd aio=io_uring', role: 'qsd', aio: 'io_uring' },
  { id: 'qsd-native', label: 'qsd aio=native', role: 'qsd', aio: 'native', needsDirect: true },
];

/** What a server runs with when aio= is not given: how the report names each engine. */
export const DEFAULT_AIO: Record<ServerDef['role'], Aio> = { vublk: 'io_uring', qsd: 'threads' };

export function serverDef(id: ServerId): ServerDef {
  const s = SERVERS.find((x) => x.id === id);
  if (s === undefined) throw new Error(`unknown server ${id}`);
  return s;
}

export function storageDef(id: StorageId): StorageDef {
  const s = STORAGES.find((x) => x.id === id);
  if (s === undefined) throw new Error(`unknown storage ${id}`);
  return s;
}

/** Whether the server can run on this storage at all. */
export function serves(server: ServerDef, storage: StorageDef): boolean {
  return server.needsDirect !== true || storage.direct;
}

export type Op = 'randread' | 'randwrite';

/** One cell of the front-end driver matrix; qd is per queue, as fio's iodepth is per job. */
export interface Workload {
  op: Op;
  qd: number;
  queues: number;
}

export const workloadKey = (w: Workload): string => `${w.op}-qd${w.qd}-q${w.queues}`;
export const workloadLabel = (w: { op: string; qd: number; queues: number }): string => `${w.op} QD${w.qd}, ${w.queues} ${w.queues === 1 ? 'queue' : 'queues'}`;

/** Every combination, in report order: op, then queues, then queue depth. */
export function workloads(ops: readonly Op[], qds: readonly number[], queues: readonly number[]): Workload[] {
  const out: Workload[] = [];
  for (const op of ops) for (const q of queues) for (const qd of qds) out.push({ op, qd, queues: q });
  return out;
}

export const SERVER_BINARY: Record<ServerDef['role'], string> = { vublk: 'bin/vublk', qsd: 'qemu-storage-daemon' };

/**
 * The arguments (without the binary) both servers get: one file node, one
 * iothread object, one vhost-user-blk export on it. With more iothreads the
 * export takes them as a list (QEMU 9's syntax, which qsd 7.2 lacks: only
 * vublk runs those).
 */
export function serverArgs(server: ServerDef, image: string, direct: boolean, queues: number | string, socket: string, iothreads = 1,
  exportExtra = ''): string[] {
  const blockdev = `driver=file,node-name=disk,filename=${image},cache.direct=${direct ? 'on' : 'off'}` +
    (server.aio !== undefined ? `,aio=${server.aio}` : '');
  const ids = Array.from({ length: iothreads }, (_, i) => `io${i}`);
  const iothreadKey = iothreads === 1 ? 'iothread=io0' : ids.map((id, i) => `iothread.${i}=${id}`).join(',');
  return [
    '--blockdev', blockdev,
    ...ids.flatMap((id) => ['--object', `iothread,id=${id}`]),
    '--export', `type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path=${socket},writable=on,num-queues=${queues},${iothreadKey}${exportExtra}`,
  ];
}

/**
 * The scaling check (vublk only): the same 4-queue workload with the queues on
 * one iothread and spread over two.
 */
export const SCALING = { queues: 4, qd: 32, iothreads: 2 } as const;

/**
 * The interrupt coalescing check (vublk only): a high queue depth with coalescing off
 * and with x-vublk-coalescing.delay-us=delayUs (no rate threshold).
 */
export const COALESCING = { queues: 1, qd: 128, delayUs: 50 } as const;

/**
 * The I/O limits check (vublk only): 4 queues on 2 iothreads, so one limit binds two
 * threads, each workload driven well above its limit for durationSec; the rate achieved
 * must be within 5 % of the limit. Each case is an x-vublk-throttling key and value.
 */
export const LIMITS = {
  queues: 4, qd: 32, iothreads: 2, durationSec: 30, warmupSec: 2,
  cases: [
    { op: 'randread', key: 'iops-total', value: 20_000 },
    { op: 'randwrite', key: 'bps-write', value: 40 * 1024 * 1024 },
  ],
} as const;

/** Measured seconds of a limits run: LIMITS.durationSec, or a short check with --quick. */
export const limitsDurationSec = (quick: boolean): number => (quick ? 5 : LIMITS.durationSec);

/** The export key of one LIMITS case, for serverArgs' exportExtra. */
export const limitKeys = (key: string, value: number): string => `,x-vublk-throttling.${key}=${value}`;

/** The export keys that switch coalescing on, for serverArgs' exportExtra. */
export const coalescingKeys = (delayUs: number): string => (delayUs > 0 ? `,x-vublk-coalescing.delay-us=${delayUs}` : '');

/** The command line as a reader would type it; queues and socket may be placeholders ($QUEUES). */
export function displayCommand(server: ServerDef, image: string, direct: boolean, queues: number | string, socket: string): string {
  return [SERVER_BINARY[server.role], ...serverArgs(server, image, direct, queues, socket)].join(' ');
}
