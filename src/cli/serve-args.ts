// Argument parsing for `vublk serve`. Pure: returns options or a one-line error.

export interface ServeOptions {
  socketPath: string;
  imagePath: string | undefined;
  numQueues: number;
  readOnly: boolean;
  logicalBlockSize: number;
  serial: string;
  writeback: boolean;
}

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

export const SERVE_USAGE =
  'usage: vublk serve [--socket PATH] [--num-queues N] [--readonly] [--logical-block-size 512|4096]\n' +
  '                   [--serial ID] [--cache writeback|writethrough] [IMAGE]';

export function parseServeArgs(argv: string[]): ServeOptions {
  const o: ServeOptions = {
    socketPath: DEFAULT_SOCKET, imagePath: undefined, numQueues: DEFAULT_NUM_QUEUES, readOnly: false,
    logicalBlockSize: 512, serial: DEFAULT_SERIAL, writeback: true,
  };
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
      case '--socket':
        o.socketPath = take();
        if (o.socketPath === '') throw new UsageError('--socket: empty path');
        break;
      case '--num-queues': {
        const v = take();
        const n = Number(v);
        if (!/^\d+$/.test(v) || n < 1 || n > MAX_NUM_QUEUES) throw new UsageError(`--num-queues: expected an integer in 1..${MAX_NUM_QUEUES}, got '${v}'`);
        o.numQueues = n;
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
        if (v !== 'writeback' && v !== 'writethrough') throw new UsageError(`--cache: expected writeback or writethrough, got '${v}'`);
        o.writeback = v === 'writeback';
        break;
      }
      default:
        if (a.startsWith('-')) throw new UsageError(`${flag}: unknown option`);
        if (o.imagePath !== undefined) throw new UsageError(`${a}: only one IMAGE may be given`);
        o.imagePath = a;
    }
  }
  return o;
}
