// One vhost-user-blk export: a block node's disk offered on a listening
// socket to at most one front-end connection at a time, its queues served by
// iothreads that it may share with other exports.
import { BlkDevice } from '../blk/device';
import { BlkDisk } from '../blk/disk';
import { allocQueueMetrics } from '../blk/queue-metrics';
import { IoLimits, SharedThrottle, noLimits } from '../blk/throttle';
import { COALESCING_OFF, CoalescingSettings } from '../dataplane/coalescing';
import { native } from '../native/addon';
import { DevicePlane } from '../iothread/device-plane';
import { Iothread } from '../iothread/iothread';
import { AioMode } from '../iothread/messages';
import { Endpoint } from '../transport/endpoint';
import { Logger, log as rootLog } from '../util/log';
import { VhostBackend } from '../vhost/backend';
import { SocketAccess, UnixListener } from './listener';

export interface BlkExportOptions {
  id: string;
  /** Socket path to create (unused when listenFd is given). */
  socketPath?: string;
  /** Inherited listening socket to use instead of socketPath. */
  listenFd?: number;
  /** Mode, owner and group of the socket file created at socketPath. */
  socketAccess?: SocketAccess;
  disk: BlkDisk;
  numQueues: number;
  /** Volatile write cache offered to the guest. */
  writeback: boolean;
  aio: AioMode;
  /** Iothreads this export's queues run on. */
  iothreads: Iothread[];
  /** queueMap[q] = index into iothreads of the owner of queue q. */
  queueMap: number[];
  /** Interrupt coalescing of the rings (absent: off); changed at runtime with setCoalescing. */
  coalescing?: CoalescingSettings;
  /** I/O limits (absent: none); changed at runtime with setIoLimits. */
  ioLimits?: IoLimits;
}

interface Session {
  endpoint: Endpoint;
  backend: VhostBackend;
  closed: Promise<void>;
}

export class BlkExport {
  readonly device: BlkDevice;
  private listener: UnixListener | undefined;
  private session: Session | undefined;
  private readonly log: Logger;
  private connections = 0;
  private plane: DevicePlane | undefined;
  /** Interrupt coalescing now in force. */
  coalescing: CoalescingSettings;
  private resolveReady!: () => void;
  private readonly ready = new Promise<void>((r) => { this.resolveReady = r; });
  /** Set once close() began (QMP query-block-exports "shutting-down"). */
  shuttingDown = false;
  /** Per-queue counters, written by the iothreads (blk/queue-metrics.ts). */
  readonly metrics: SharedArrayBuffer;
  /** The limiter every queue of the export obeys, on whichever iothread; it holds the limits in force. */
  private readonly throttle = new SharedThrottle();

  /** Listen, then attach the device to its iothreads. */
  static async open(o: BlkExportOptions): Promise<BlkExport> {
    const exp = new BlkExport(o);
    try {
      // Socket first: a bad path fails fast, before any thread does work. Connections
      // that arrive before the iothreads are ready wait in accept().
      exp.listen();
      exp.plane = await DevicePlane.attach({
        type: 'blk', disk: o.disk, writeback: o.writeback, aio: o.aio, metrics: exp.metrics, logContext: { export: o.id },
        coalescing: exp.coalescing, throttle: exp.throttle.buffer,
      }, o.iothreads, o.queueMap, exp.log);
      exp.resolveReady();
    } catch (e) {
      exp.listener?.close();
      throw e;
    }
    return exp;
  }

  private constructor(readonly o: BlkExportOptions) {
    this.coalescing = o.coalescing ?? COALESCING_OFF;
    this.throttle.set(o.ioLimits ?? noLimits());
    this.log = rootLog.child({ export: o.id });
    this.device = new BlkDevice({ disk: o.disk, maxQueues: o.numQueues, writeback: o.writeback });
    this.metrics = allocQueueMetrics(o.numQueues);
  }

  get id(): string { return this.o.id; }

  private listen(): void {
    this.listener = new UnixListener({ path: this.o.socketPath ?? '', fd: this.o.listenFd, access: this.o.socketAccess }, (fd) => this.accept(fd));
    this.log.info('listening', { socket: this.o.listenFd !== undefined ? `fd ${this.o.listenFd}` : this.o.socketPath, readonly: this.o.disk.readOnly, queues: this.o.numQueues });
  }

  get activeSession(): VhostBackend | undefined { return this.session?.backend; }

  private accept(fd: number): void {
    if (this.plane === undefined) {
      void this.ready.then(() => this.accept(fd));
      return;
    }
    const current = this.session;
    if (current !== undefined) {
      if (current.endpoint.closed) {
        // The previous front-end is gone and only its teardown is pending (a quick
        // reconnect): take the new one as soon as the old state is released.
        void current.closed.then(() => (this.listener !== undefined ? this.accept(fd) : native.close(fd)));
        return;
      }
      this.log.warn('refusing a second front-end while one is attached');
      native.close(fd);
      return;
    }
    const id = ++this.connections;
    const log = this.log.child({ conn: id });
    let resolveClosed!: () => void;
    const closed = new Promise<void>((r) => { resolveClosed = r; });
    const endpoint = new Endpoint(fd, {
      message: (raw) => backend.receive(raw),
      protocolError: (err) => log.error('protocol error', { kind: err.kind, reason: err.message }),
      closed: (reason) => {
        log.info('front-end disconnected', { reason });
        void backend.teardown()
          .catch((e: Error) => log.error('teardown failed', { error: e }))
          .then(() => {
            if (this.session?.endpoint === endpoint) this.session = undefined;
            resolveClosed();
          });
      },
    });
    const backend = new VhostBackend(endpoint, this.device, this.plane!, log);
    this.session = { endpoint, backend, closed };
    log.info('front-end connected');
    endpoint.start();
  }

  /** Which iothread (by id) serves each queue. */
  get queueIothreads(): string[] {
    return this.o.queueMap.map((t) => this.o.iothreads[t].id);
  }

  /**
   * The image changed size: the iothreads check requests against the new size
   * and the config space reports it. Telling a connected driver is the
   * caller's part (notifyConfigChange on the session).
   */
  resized(sizeBytes: number): void {
    this.device.resize(sizeBytes - (sizeBytes % this.o.disk.logicalBlockSize));
    this.plane?.setDeviceState(this.device.state());
  }

  /** Interrupt coalescing of every ring of the export from now on (x-vublk-set-coalescing). */
  setCoalescing(settings: CoalescingSettings): void {
    this.coalescing = settings;
    this.plane?.setCoalescing(settings);
    this.log.info('interrupt coalescing', { delayUs: settings.delayUs, iopsThreshold: settings.iopsThreshold });
  }

  /** I/O limits of the export from now on (block_set_io_throttle); requests waiting are measured against them. */
  setIoLimits(limits: IoLimits): void {
    this.throttle.set(limits);
    this.log.info('I/O limits', Object.fromEntries(Object.entries(limits).filter(([, v]) => typeof v === 'number' ? v !== 0 : v.avg !== 0)));
  }

  /** Tell a connected driver that the config space changed (new capacity); nothing to do without one. */
  async notifyDriver(): Promise<void> {
    const backend = this.session?.backend;
    if (backend === undefined || this.session!.endpoint.closed) return;
    await backend.notifyConfigChange();
  }

  /** Stop accepting, let in-flight requests finish, disconnect, release the iothreads. */
  async close(): Promise<void> {
    this.shuttingDown = true;
    this.listener?.close();
    this.listener = undefined;
    const s = this.session;
    if (s !== undefined) {
      s.endpoint.close('export shutting down');
      await s.closed;
    }
    await this.plane?.detach();
    this.plane = undefined;
  }
}
