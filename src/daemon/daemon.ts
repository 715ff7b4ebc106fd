// The state of a vublk process, as qemu-storage-daemon has it: iothread
// objects, block nodes and exports, each under its id, changed at start from
// the configuration and at runtime by QMP. Errors are thrown as DaemonError
// with QMP's error class, so the monitor can pass them on unchanged.
import { EventEmitter } from 'node:events';
import { PRE_EOL_INFO } from '../blk/constants';
import { BlkLifetime } from '../blk/disk';
import { BUCKETS, IoLimits, checkLimits, noLimits } from '../blk/throttle';
import { CoalescingSettings } from '../dataplane/coalescing';
import { BlockdevOptions, ExportOptions, IothreadObjectOptions } from '../config/model';
import { roundRobinQueueMap } from '../iothread/device-plane';
import { Iothread } from '../iothread/iothread';
import { Logger, log as rootLog } from '../util/log';
import { BlkExport } from './blk-export';
import { BlockNode } from './block-node';
import { SocketAccess } from './listener';
import { exportSocketAccess } from './socket-access';
import { ActivatedSocket } from './systemd';

/** QEMU's default poll-max-ns for iothreads. */
export const DEFAULT_POLL_MAX_NS = 32768;
/** Exports without an iothread run here, like qemu-storage-daemon's main loop. */
const MAIN_LOOP = 'main-loop';

export class DaemonError extends Error {
  constructor(message: string, readonly errorClass: 'GenericError' | 'DeviceNotFound' = 'GenericError') {
    super(message);
  }
}

interface ExportEntry {
  exp: BlkExport;
  options: ExportOptions;
  node: BlockNode;
}

export interface DaemonEvents {
  /** A QMP event: BLOCK_EXPORT_DELETED and the like. */
  event: [name: string, data: Record<string, unknown>];
}

export class Daemon extends EventEmitter<DaemonEvents> {
  readonly iothreads = new Map<string, Iothread>();
  private mainLoop: Iothread | undefined;
  readonly nodes = new Map<string, BlockNode>();
  readonly exports = new Map<string, ExportEntry>();
  private anonymousNodes = 0;
  /** Serialises changes: QMP commands and shutdown never interleave half-done. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly activated: ActivatedSocket[] = [], private readonly log: Logger = rootLog) {
    super();
  }

  /** Run `fn` after every change queued before it. */
  serialise<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  async addIothread(o: IothreadObjectOptions): Promise<void> {
    if (this.iothreads.has(o.id)) throw new DaemonError(`attempt to add duplicate property '${o.id}' to object (type 'container')`);
    const t = await Iothread.start({
      id: o.id, threadName: `vublk-${o.id}`, cpus: o['x-vublk-cpu-affinity'] ?? [], pollMaxNs: o['poll-max-ns'] ?? DEFAULT_POLL_MAX_NS,
    }, this.log);
    this.iothreads.set(o.id, t);
  }

  async delIothread(id: string): Promise<void> {
    const t = this.iothreads.get(id);
    if (t === undefined) throw new DaemonError(`object '${id}' not found`);
    if (t.attached > 0) throw new DaemonError(`object '${id}' is in use, can not be deleted`);
    this.iothreads.delete(id);
    await t.close();
  }

  addBlockdev(o: BlockdevOptions): void {
    const name = o['node-name'];
    if (name === undefined) throw new DaemonError('A top-level node needs node-name');
    if (this.nodes.has(name)) throw new DaemonError(`Duplicate nodes with node-name='${name}'`);
    if (typeof o.file === 'object' && o.file['node-name'] !== undefined && this.nodes.has(o.file['node-name'])) {
      throw new DaemonError(`Duplicate nodes with node-name='${o.file['node-name']}'`);
    }
    let node: BlockNode;
    try {
      node = BlockNode.open(o, (n) => this.nodes.get(n), () => `#block${++this.anonymousNodes}`);
    } catch (e) {
      throw new DaemonError((e as Error).message);
    }
    this.nodes.set(name, node);
    if (node.child !== undefined && typeof o.file === 'object' && o.file['node-name'] !== undefined) this.nodes.set(node.child.name, node.child);
    this.log.debug('block node added', { node: name, driver: o.driver, filename: node.filename });
  }

  delBlockdev(name: string): void {
    const node = this.nodes.get(name);
    if (node === undefined) throw new DaemonError(`Failed to find node with node-name='${name}'`);
    if (node.users.size > 0) throw new DaemonError(`Node '${name}' is busy: in use by ${[...node.users].join(', ')}`);
    node.close();
    this.nodes.delete(name);
    // A named inline child goes with its parent.
    if (node.child !== undefined && typeof node.options.file === 'object') this.nodes.delete(node.child.name);
    this.log.info('block node deleted', { node: name });
  }

  private iothreadFor(id: string): Iothread {
    const t = this.iothreads.get(id);
    if (t === undefined) throw new DaemonError(`IOThread '${id}' not found`);
    return t;
  }

  /** The iothreads an export uses and which one serves each queue. */
  private placement(o: ExportOptions, queues: number): { threads: Iothread[]; queueMap: number[] } {
    const mapping = o['x-vublk-iothread-vq-mapping'];
    if (mapping !== undefined) {
      if (o.iothread !== undefined) throw new DaemonError(`export '${o.id}': give iothread or x-vublk-iothread-vq-mapping, not both`);
      const threads = mapping.map((m) => this.iothreadFor(m.iothread));
      const withVqs = mapping.filter((m) => m.vqs !== undefined).length;
      if (withVqs === 0) return { threads, queueMap: roundRobinQueueMap(queues, threads.length) };
      if (withVqs !== mapping.length) throw new DaemonError(`export '${o.id}': x-vublk-iothread-vq-mapping: give vqs for every iothread or for none`);
      const queueMap = new Array<number>(queues).fill(-1);
      mapping.forEach((m, t) => {
        for (const q of m.vqs!) {
          if (q >= queues) throw new DaemonError(`export '${o.id}': x-vublk-iothread-vq-mapping: queue ${q} does not exist (num-queues=${queues})`);
          if (queueMap[q] !== -1) throw new DaemonError(`export '${o.id}': x-vublk-iothread-vq-mapping: queue ${q} is assigned twice`);
          queueMap[q] = t;
        }
      });
      const missing = queueMap.indexOf(-1);
      if (missing !== -1) throw new DaemonError(`export '${o.id}': x-vublk-iothread-vq-mapping: queue ${missing} is not assigned to an iothread`);
      return { threads, queueMap };
    }
    const ids = o.iothread === undefined ? [] : Array.isArray(o.iothread) ? o.iothread : [o.iothread];
    const threads = ids.map((i) => this.iothreadFor(i));
    return threads.length > 0 ? { threads, queueMap: roundRobinQueueMap(queues, threads.length) } : { threads: [], queueMap: new Array<number>(queues).fill(0) };
  }

  private async mainLoopThread(): Promise<Iothread> {
    this.mainLoop ??= await Iothread.start({ id: MAIN_LOOP, threadName: 'vublk-main', cpus: [], pollMaxNs: DEFAULT_POLL_MAX_NS }, this.log);
    return this.mainLoop;
  }

  async addExport(o: ExportOptions): Promise<void> {
    if (this.exports.has(o.id)) throw new DaemonError(`Block export id '${o.id}' is already in use`);
    const node = this.nodes.get(o['node-name']);
    if (node === undefined) throw new DaemonError(`Cannot find device='' nor node-name='${o['node-name']}'`);
    const writable = o.writable === true;
    if (writable && node.readOnly) throw new DaemonError(`Block node '${node.name}' is read-only`);
    const queues = o['num-queues'] ?? 1;
    const placement = this.placement(o, queues);
    let socketAccess: SocketAccess;
    try {
      // Unknown users and groups are reported before anything is started for the export.
      socketAccess = exportSocketAccess(o);
    } catch (e) {
      throw new DaemonError((e as Error).message);
    }
    if (placement.threads.length === 0) placement.threads.push(await this.mainLoopThread());
    let listenFd: number | undefined;
    let socketPath: string | undefined;
    if (o.addr.type === 'fd') {
      listenFd = Number(o.addr.str);
    } else {
      socketPath = o.addr.path;
      listenFd = this.activated.find((s) => s.name === o.id)?.fd;
    }
    let exp: BlkExport;
    try {
      const disk = node.diskFor({
        logicalBlockSize: o['logical-block-size'], serial: o['x-vublk-serial'] ?? o.id.slice(0, 20), readOnly: !writable,
        lifetime: lifetimeOf(o['x-vublk-lifetime']),
      });
      exp = await BlkExport.open({
        id: o.id, socketPath, listenFd, socketAccess,
        disk, numQueues: queues, writeback: o.writethrough !== true, aio: node.aio,
        iothreads: placement.threads, queueMap: placement.queueMap, coalescing: coalescingOf(o['x-vublk-coalescing']),
        ioLimits: ioLimitsOf(o['x-vublk-throttling']),
      });
    } catch (e) {
      throw e instanceof DaemonError ? e : new DaemonError((e as Error).message);
    }
    node.users.add(o.id);
    this.exports.set(o.id, { exp, options: o, node });
  }

  /**
   * Remove an export: the front-end is disconnected, requests in flight
   * complete, then BLOCK_EXPORT_DELETED is emitted (QEMU returns from
   * block-export-del before that, and so do we: `done` resolves at the event).
   */
  delExport(id: string): { done: Promise<void> } {
    const entry = this.exports.get(id);
    if (entry === undefined) throw new DaemonError(`Export '${id}' is not found`);
    if (entry.exp.shuttingDown) throw new DaemonError(`Export '${id}' is already shutting down`);
    const done = entry.exp.close().then(() => {
      entry.node.users.delete(id);
      this.exports.delete(id);
      this.log.info('export deleted', { export: id });
      this.emit('event', 'BLOCK_EXPORT_DELETED', { id });
    });
    return { done };
  }

  /** x-vublk-set-coalescing: interrupt coalescing of an export's rings from now on. */
  setCoalescing(id: string, settings: CoalescingSettings): void {
    const e = this.exports.get(id);
    if (e === undefined) throw new DaemonError(`Export '${id}' is not found`);
    e.exp.setCoalescing(settings);
  }

  /** block_set_io_throttle: an export's I/O limits from now on. */
  setIoLimits(id: string, limits: IoLimits): void {
    const e = this.exports.get(id);
    if (e === undefined) throw new DaemonError(`Device '${id}' not found`, 'DeviceNotFound');
    const bad = checkLimits(limits);
    if (bad !== undefined) throw new DaemonError(bad);
    e.exp.setIoLimits(limits);
  }

  /** block_resize: change the node's size and tell the exports of it (and their drivers). */
  async resize(nodeName: string, sizeBytes: number): Promise<void> {
    const node = this.nodes.get(nodeName);
    if (node === undefined) throw new DaemonError(`Cannot find device='' nor node-name='${nodeName}'`, 'DeviceNotFound');
    try {
      node.resize(sizeBytes);
    } catch (e) {
      throw new DaemonError((e as Error).message);
    }
    this.log.info('block node resized', { node: nodeName, size: sizeBytes });
    for (const { exp, node: n } of this.exports.values()) {
      if (n.protocolNode !== node.protocolNode) continue;
      exp.resized(sizeBytes);
      await exp.notifyDriver().catch((e: Error) => this.log.warn('cannot tell the driver about the new size', { export: exp.id, error: e }));
    }
  }

  /** Every running iothread, the implicit main-loop one included. */
  *allIothreads(): Iterable<Iothread> {
    yield* this.iothreads.values();
    if (this.mainLoop !== undefined) yield this.mainLoop;
  }

  /** Delete every export (in parallel), then the nodes and iothreads. */
  async close(): Promise<void> {
    await Promise.all([...this.exports.keys()].map((id) => this.delExport(id).done.catch(() => undefined)));
    for (const name of [...this.nodes.keys()].reverse()) {
      const node = this.nodes.get(name);
      if (node === undefined) continue;
      node.users.clear();
      node.close();
      this.nodes.delete(name);
    }
    const threads = [...this.iothreads.values()];
    if (this.mainLoop !== undefined) threads.push(this.mainLoop);
    this.iothreads.clear();
    this.mainLoop = undefined;
    await Promise.all(threads.map((t) => t.close()));
  }
}

/** x-vublk-coalescing as the rings use it: left out, off. */
export function coalescingOf(o: ExportOptions['x-vublk-coalescing']): CoalescingSettings | undefined {
  if (o === undefined) return undefined;
  return { delayUs: o['delay-us'] ?? 0, iopsThreshold: o['iops-threshold'] ?? 0 };
}

/** x-vublk-throttling (QEMU's throttling.* keys) as limits; left out, none. Throws DaemonError on a bad combination. */
export function ioLimitsOf(o: ExportOptions['x-vublk-throttling']): IoLimits | undefined {
  if (o === undefined) return undefined;
  const limits = noLimits();
  for (const b of BUCKETS) limits[b] = { avg: o[b] ?? 0, max: o[`${b}-max`] ?? 0, maxLength: o[`${b}-max-length`] ?? 1 };
  limits.iopsSize = o['iops-size'] ?? 0;
  const bad = checkLimits(limits);
  if (bad !== undefined) throw new DaemonError(`x-vublk-throttling: ${bad}`);
  return limits;
}

/** x-vublk-lifetime as GET_LIFETIME answers it: fields left out are 0, "undefined". */
export function lifetimeOf(o: ExportOptions['x-vublk-lifetime']): BlkLifetime | undefined {
  if (o === undefined) return undefined;
  return { preEolInfo: PRE_EOL_INFO[o['pre-eol-info'] ?? 'undefined'], estTypA: o['typ-a'] ?? 0, estTypB: o['typ-b'] ?? 0 };
}
