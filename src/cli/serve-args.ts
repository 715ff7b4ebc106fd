// Argument parsing for `vublk serve`. Pure: returns options or a one-line error.

export interface ServeOptions {
  socketPath: string;
  /** An inherited, already listening socket (vhost-user back-end convention --fd); replaces socketPath. */
  listenFd: number | undefined;
  /** The socket file's mode (octal string, default 0600), owner and group (names or numeric ids). */
  socketMode: string | undefined;
  socketOwner: string | undefined;
  socketGroup: string | undefined;
  /** --print-capabilities: print the back-end's capabilities as JSON and exit. */
  printCapabilities: boolean;
  /** Write the server's pid here once it listens; removed at exit. */
  pidfile: string | undefined;
  /** Detach once listening (the command returns; the server goes on). */
  daemonize: boolean;
  imagePath: string | undefined;
  numQueues: number;
  readOnly: boolean;
  /** Guest-visible block size; undefined: the device's own (512 for files). */
  logicalBlockSize: number | undefined;
  serial: string;
  /** Volatile write cache offered to the guest (FLUSH makes writes durable). */
  writeback: boolean;
  /** Bypass the host page cache (O_DIRECT). */
  direct: boolean;
  iothreads: number;
  /** queueMap[q] = iothread of queue q; undefined: round-robin. */
  queueMap: number[] | undefined;
  /** iothreadCpus[i] = CPUs of iothread i. */
  iothreadCpus: number[][];
  aio: 'auto' | 'io_uring' | 'threads';
  pollMaxNs: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error' | undefined;
  logFormat: 'auto' | 'json' | 'pretty' | undefined;
}

/** QEMU's cache modes: (direct, writeback). */
const CACHE_MODES: Record<string, { direct: boolean; writeback: boolean }> = {
  none: { direct: true, writeback: true },
  writeback: { direct: false, writeback: true },
  writethrough: { direct: false, writeback: false },
  directsync: { direct: true, writeback: false },
};

export const MAX_IOTHREADS = 64;
/** QEMU's default poll-max-ns for iothreads. */
export const DEFAULT_POLL_MAX_NS = 32768;

/**
 * QEMU's vhost-user-blk-pci defaults num-queues to the guest's vCPU count and
 * refuses a back-end that offers fewer, so offer plenty; queues cost nothing until started.
 */
export const DEFAULT_NUM_QUEUES = 64;
export const MAX_NUM_QUEUES = 256;
export const DEFAULT_SOCKET = 'vublk.sock';
export const DEFAULT_IMAGE = 'vublk-default.img';
export const DEFAULT_SERIAL = 'vublk';

export class UsageError extends Error {}

/** A user or group as --socket-owner/--socket-group take it: a name useradd would accept, or a numeric id. */
const PRINCIPAL = /^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$/;

export const SERVE_USAGE =
  'usage: vublk serve [--socket PATH | --fd FD] [--socket-mode MODE] [--socket-owner USER] [--socket-group GROUP]\n' +
  '                   [--num-queues N] [--readonly] [--logical-block-size 512|4096]\n' +
  '                   [--serial ID] [--cache none|writeback|writethrough|directsync] [--aio io_uring|threads]\n' +
  '                   [--iothreads N] [--queue-map Q:T,...] [--iothread-cpus T:CPU[+CPU...],...]\n' +
  '                   [--poll-max-ns NS] [--pidfile FILE] [--daemonize] [--log-level L] [--log-format auto|json|pretty]\n' +
  '                   [IMAGE | --blk-file IMAGE]\n' +
  '       vublk --socket-path PATH --blk-file IMAGE [--read-only] ...   (vhost-user back-end conventions)\n' +
  '       vublk --print-capabilities';

function integer(flag: string, v: string, min: number, max: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < min || n > max) throw new UsageError(`${flag}: expected an integer in ${min}..${max}, got '${v}'`);
  return n;
}

/** "a:b,c:d" → [[a, b], [c, d]] with integer checks; the value after ':' may be '+'-joined (CPU lists). */
function pairs(flag: string, v: string): Array<[number, number[]]> {
  return v.split(',').map((item) => {
    const m = /^(\d+):(\d+(?:\+\d+)*)$/.exec(item);
    if (m === null) throw new UsageError(`${flag}: expected N:M items separated by commas, got '${item}'`);
    return [Number(m[1]), m[2].split('+').map(Number)];
  });
}

export function parseServeArgs(argv: string[]): ServeOptions {
  const o: ServeOptions = {
    socketPath: DEFAULT_SOCKET, listenFd: undefined, socketMode: undefined, socketOwner: undefined, socketGroup: undefined, printCapabilities: false, pidfile: undefined, daemonize: false, imagePath: undefined, numQueues: DEFAULT_NUM_QUEUES, readOnly: false,
    logicalBlockSize: undefined, serial: DEFAULT_SERIAL, writeback: true, direct: false,
    iothreads: 1, queueMap: undefined, iothreadCpus: [], aio: 'auto', pollMaxNs: DEFAULT_POLL_MAX_NS,
    logLevel: undefined, logFormat: undefined,
  };
  let queueMapArg: Array<[number, number[]]> | undefined;
  let socketGiven = false;
  const value = (i: number, name: string): string => {
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new UsageError(`${name}: missing value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const take = (): string => {
      if (inline !== undefined) return inline;
      const v = value(i, flag);
      i++;
      return v;
    };
    switch (flag) {
      // --socket-path, --fd, --blk-file and --print-capabilities are the vhost-user
      // spec's "back-end program conventions", so tools that start back-ends can start us.
      case '--socket':
      case '--socket-path':
        o.socketPath = take();
        if (o.socketPath === '') throw new UsageError(`${flag}: empty path`);
        socketGiven = true;
        break;
      case '--fd':
        o.listenFd = integer(flag, take(), 0, 65535);
        break;
      case '--socket-mode': {
        const v = take();
        if (!/^0?[0-7]{3}$/.test(v)) throw new UsageError(`${flag}: expected an octal mode like 0660, got '${v}'`);
        o.socketMode = v;
        break;
      }
      case '--socket-owner':
      case '--socket-group': {
        const v = take();
        if (!PRINCIPAL.test(v)) throw new UsageError(`${flag}: expected a ${flag === '--socket-owner' ? 'user' : 'group'} name or numeric id, got '${v}'`);
        if (flag === '--socket-owner') o.socketOwner = v;
        else o.socketGroup = v;
        break;
      }
      case '--blk-file':
        if (o.imagePath !== undefined) throw new UsageError(`${flag}: only one image may be given`);
        o.imagePath = take();
        break;
      case '--pidfile':
        o.pidfile = take();
        if (o.pidfile === '') throw new UsageError(`${flag}: empty path`);
        break;
      case '--daemonize':
        if (inline !== undefined) throw new UsageError(`${flag}: takes no value`);
        o.daemonize = true;
        break;
      case '--print-capabilities':
        if (inline !== undefined) throw new UsageError(`${flag}: takes no value`);
        o.printCapabilities = true;
        break;
      case '--num-queues':
        o.numQueues = integer(flag, take(), 1, MAX_NUM_QUEUES);
        break;
      case '--iothreads':
        o.iothreads = integer(flag, take(), 1, MAX_IOTHREADS);
        break;
      case '--queue-map':
        queueMapArg = pairs(flag, take());
        break;
      case '--iothread-cpus':
        for (const [t, cpus] of pairs(flag, take())) o.iothreadCpus[t] = cpus;
        break;
      case '--poll-max-ns':
        o.pollMaxNs = integer(flag, take(), 0, 1_000_000_000);
        break;
      case '--aio': {
        const v = take();
        if (v !== 'io_uring' && v !== 'threads' && v !== 'native') throw new UsageError(`--aio: expected io_uring or threads, got '${v}'`);
        // QEMU's aio=native (Linux AIO) maps to our io_uring engine.
        o.aio = v === 'threads' ? 'threads' : 'io_uring';
        break;
      }
      case '--log-level': {
        const v = take();
        if (v !== 'debug' && v !== 'info' && v !== 'warn' && v !== 'error') throw new UsageError(`--log-level: expected debug, info, warn or error, got '${v}'`);
        o.logLevel = v;
        break;
      }
      case '--log-format': {
        const v = take();
        if (v !== 'auto' && v !== 'json' && v !== 'pretty') throw new UsageError(`--log-format: expected auto, json or pretty, got '${v}'`);
        o.logFormat = v;
        break;
      }
      case '--readonly':
      case '--read-only':
        if (inline !== undefined) throw new UsageError(`${flag}: takes no value`);
        o.readOnly = true;
        break;
      case '--logical-block-size': {
        const v = take();
        if (v !== '512' && v !== '4096') throw new UsageError(`--logical-block-size: expected 512 or 4096, got '${v}'`);
        o.logicalBlockSize = Number(v);
        break;
      }
      case '--serial': {
        const v = take();
        if (v.length > 20 || !/^[\x20-\x7e]*$/.test(v)) throw new UsageError(`--serial: at most 20 printable ASCII characters, got '${v}'`);
        o.serial = v;
        break;
      }
      case '--cache': {
        const v = take();
        const mode = CACHE_MODES[v];
        if (mode === undefined) throw new UsageError(`--cache: expected one of ${Object.keys(CACHE_MODES).join(', ')}, got '${v}'`);
        o.direct = mode.direct;
        o.writeback = mode.writeback;
        break;
      }
      default:
        if (a.startsWith('-')) throw new UsageError(`${flag}: unknown option`);
        if (o.imagePath !== undefined) throw new UsageError(`${a}: only one IMAGE may be given`);
        o.imagePath = a;
    }
  }
  if (o.listenFd !== undefined && socketGiven) throw new UsageError('--fd: cannot be combined with --socket-path');
  if (o.listenFd !== undefined) {
    // An inherited socket was made by whoever passed it; its file is not ours to change.
    const given = o.socketMode !== undefined ? '--socket-mode' : o.socketOwner !== undefined ? '--socket-owner' : o.socketGroup !== undefined ? '--socket-group' : undefined;
    if (given !== undefined) throw new UsageError(`${given}: cannot be combined with --fd (the inherited socket is left as it is)`);
  }
  if (queueMapArg !== undefined) {
    // Queues not named keep the round-robin default.
    const map = Array.from({ length: o.numQueues }, (_, q) => q % o.iothreads);
    for (const [q, [t]] of queueMapArg) {
      if (q >= o.numQueues) throw new UsageError(`--queue-map: queue ${q} does not exist (--num-queues ${o.numQueues})`);
      if (t >= o.iothreads) throw new UsageError(`--queue-map: iothread ${t} does not exist (--iothreads ${o.iothreads})`);
      map[q] = t;
    }
    o.queueMap = map;
  }
  for (let t = 0; t < o.iothreadCpus.length; t++) {
    if (o.iothreadCpus[t] !== undefined && t >= o.iothreads) throw new UsageError(`--iothread-cpus: iothread ${t} does not exist (--iothreads ${o.iothreads})`);
  }
  return o;
}
