// The QMP commands vublk answers, with qemu-storage-daemon's names,
// arguments and results. Each validates its arguments with the same schemas
// as the command line and works on the Daemon.
import { BucketLimit, BucketName, IoLimits, noLimits } from '../blk/throttle';
import { BlockdevOptions, ExportOptions, IothreadObjectOptions } from '../config/model';
import { ConfigError, Schema, blockdevSchema, coalescingSchema, exportSchema, iothreadSchema, validate } from '../config/schema';
import { Daemon, DaemonError, coalescingOf } from '../daemon/daemon';

/** A QMP error reply: `class` and `desc`, as QEMU sends them. */
export class QmpError extends Error {
  constructor(readonly errorClass: string, desc: string) {
    super(desc);
  }
}

export interface CommandContext {
  daemon: Daemon;
  /** quit: shut the process down once the reply is out. */
  quit(): void;
  /** Extra, vublk-specific queries (statistics), if the process offers them. */
  stats?: () => unknown;
}

interface Command {
  args: Schema;
  run(ctx: CommandContext, args: Record<string, unknown>): unknown;
}

const noArgs: Schema = { type: 'object', properties: {}, additionalProperties: false };
const args = (properties: Record<string, Schema>, required: string[] = []): Schema => ({ type: 'object', properties, required, additionalProperties: false });
const str = { type: 'string', minLength: 1 };
const qmpLimit = { type: 'integer', minimum: 0, maximum: 1e15 };

/** block_set_io_throttle's arguments: which bucket and which part of its limit each sets. */
const QMP_LIMITS: Record<string, [BucketName | 'iops-size', keyof BucketLimit | 'size']> = Object.fromEntries([
  ...([['bps', 'bps-total'], ['bps_rd', 'bps-read'], ['bps_wr', 'bps-write'], ['iops', 'iops-total'], ['iops_rd', 'iops-read'],
    ['iops_wr', 'iops-write']] as const).flatMap(([arg, bucket]) => [
    [arg, [bucket, 'avg']], [`${arg}_max`, [bucket, 'max']], [`${arg}_max_length`, [bucket, 'maxLength']],
  ]),
  ['iops_size', ['iops-size', 'size']],
]);

function ioLimitsFromQmp(a: Record<string, unknown>): IoLimits {
  const limits = noLimits();
  for (const [arg, [bucket, part]] of Object.entries(QMP_LIMITS)) {
    const v = a[arg] as number | undefined;
    if (v === undefined) continue;
    if (bucket === 'iops-size') limits.iopsSize = v;
    else limits[bucket][part as keyof BucketLimit] = v;
  }
  return limits;
}

function describeNode(d: Daemon, name: string): Record<string, unknown> {
  const node = d.nodes.get(name)!;
  return {
    'node-name': name,
    drv: node.driver,
    file: node.filename,
    ro: node.readOnly,
    encrypted: false,
    detect_zeroes: 'off',
    backing_file_depth: 0,
    bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0,
    write_threshold: 0,
    cache: { writeback: true, direct: node.direct, 'no-flush': false },
    image: { filename: node.filename, format: node.driver, 'virtual-size': node.sizeBytes },
  };
}

export const COMMANDS: Record<string, Command> = {
  'query-version': {
    args: noArgs,
    run: () => ({ qemu: { major: 7, minor: 2, micro: 0 }, package: 'vublk' }),
  },
  'query-commands': {
    args: noArgs,
    run: () => ['qmp_capabilities', ...Object.keys(COMMANDS)].map((name) => ({ name })),
  },
  'blockdev-add': {
    args: blockdevSchema,
    run: ({ daemon }, a) => daemon.serialise(() => daemon.addBlockdev(a as unknown as BlockdevOptions)).then(() => ({})),
  },
  'blockdev-del': {
    args: args({ 'node-name': str }, ['node-name']),
    run: ({ daemon }, a) => daemon.serialise(() => daemon.delBlockdev(a['node-name'] as string)).then(() => ({})),
  },
  'block-export-add': {
    args: exportSchema,
    run: ({ daemon }, a) => daemon.serialise(() => daemon.addExport(a as unknown as ExportOptions)).then(() => ({})),
  },
  'block-export-del': {
    args: args({ id: str, mode: { enum: ['safe', 'hard'] } }, ['id']),
    // Returns at once; BLOCK_EXPORT_DELETED follows when the export is gone.
    run: ({ daemon }, a) => daemon.serialise(() => { daemon.delExport(a.id as string); }).then(() => ({})),
  },
  'query-block-exports': {
    args: noArgs,
    run: ({ daemon }) => [...daemon.exports.values()].map(({ exp, options }) => ({
      type: options.type, id: options.id, 'node-name': options['node-name'], 'shutting-down': exp.shuttingDown,
    })),
  },
  'query-named-block-nodes': {
    args: args({ flat: { type: 'boolean' } }),
    run: ({ daemon }) => [...daemon.nodes.keys()].map((name) => describeNode(daemon, name)),
  },
  block_resize: {
    args: args({ device: { type: 'string' }, 'node-name': str, size: { type: 'integer', minimum: 0 } }, ['size']),
    run: ({ daemon }, a) => {
      const name = (a['node-name'] ?? a.device) as string | undefined;
      if (name === undefined) throw new QmpError('GenericError', "Need 'device' or 'node-name'");
      return daemon.serialise(() => daemon.resize(name, a.size as number)).then(() => ({}));
    },
  },
  'query-iothreads': {
    args: noArgs,
    run: ({ daemon }) => [...daemon.iothreads.values()].map((t) => ({
      id: t.id, 'thread-id': t.threadId, 'poll-max-ns': t.o.pollMaxNs, 'poll-grow': 0, 'poll-shrink': 0, 'aio-max-batch': 0,
    })),
  },
  'object-add': {
    args: iothreadSchema,
    run: ({ daemon }, a) => daemon.serialise(() => daemon.addIothread(a as unknown as IothreadObjectOptions)).then(() => ({})),
  },
  'object-del': {
    args: args({ id: str }, ['id']),
    run: ({ daemon }, a) => daemon.serialise(() => daemon.delIothread(a.id as string)).then(() => ({})),
  },
  // QEMU's block_set_io_throttle with its argument names; `id` (or `device`) names the export.
  'block_set_io_throttle': {
    args: args({ id: str, device: str, group: str, ...Object.fromEntries(Object.keys(QMP_LIMITS).map((k) => [k, qmpLimit])) },
      ['bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr']),
    run: ({ daemon }, a) => {
      const id = (a.id ?? a.device) as string | undefined;
      if (id === undefined) throw new QmpError('GenericError', "Parameter 'id' is missing");
      if (a.group !== undefined) throw new QmpError('GenericError', 'throttle groups across exports are not supported: each export has its own limits');
      return daemon.serialise(() => daemon.setIoLimits(id, ioLimitsFromQmp(a))).then(() => ({}));
    },
  },
  // SPDK's vhost_controller_set_coalescing, for one export: delay-us 0 switches it off.
  'x-vublk-set-coalescing': {
    args: args({ id: str, ...(coalescingSchema.properties as Record<string, Schema>) }, ['id', 'delay-us']),
    run: ({ daemon }, a) => daemon.serialise(() => daemon.setCoalescing(a.id as string, coalescingOf(a)!)).then(() => ({})),
  },
  'x-vublk-query-stats': {
    args: noArgs,
    run: (ctx) => {
      if (ctx.stats === undefined) throw new QmpError('GenericError', 'statistics are not collected in this process');
      return ctx.stats();
    },
  },
  quit: {
    args: noArgs,
    run: (ctx) => {
      ctx.quit();
      return {};
    },
  },
};

/** Run a command; every failure becomes a QmpError. */
export async function runCommand(ctx: CommandContext, name: string, rawArgs: unknown): Promise<unknown> {
  const cmd = Object.prototype.hasOwnProperty.call(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (cmd === undefined) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
  try {
    const a = validate<Record<string, unknown>>(cmd.args, rawArgs ?? {}, undefined);
    return await cmd.run(ctx, a);
  } catch (e) {
    if (e instanceof QmpError) throw e;
    if (e instanceof DaemonError) throw new QmpError(e.errorClass, e.message);
    if (e instanceof ConfigError) throw new QmpError('GenericError', e.message);
    throw new QmpError('GenericError', (e as Error).message);
  }
}
