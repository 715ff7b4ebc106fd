// One vhost-user-blk export: an image, a listening socket, and at most one
// front-end connection at a time.
import { BlkDevice } from '../blk/device';
import { BlkDisk } from '../blk/disk';
import { native } from '../native/addon';
import { AioMode } from '../iothread/messages';
import { IothreadPool, roundRobinQueueMap } from '../iothread/pool';
import { StorageTarget, openTarget } from '../storage/target';
import { Endpoint } from '../transport/endpoint';
import { Logger, log as rootLog } from '../util/log';
import { VhostBackend } from '../vhost/backend';
import { UnixListener } from './listener';

export interface BlkExportOptions {
  id: string;
  socketPath: string;
  /** Inherited listening socket to use instead of socketPath. */
  listenFd?: number;
  imagePath: string;
  readOnly: boolean;
  numQueues: number;
  /** Guest-visible block size; default: the device's own (block devices) or 512 (files). */
  logicalBlockSize?: number;
  /** Open the image with O_DIRECT (cache=none/directsync). */
  direct?: boolean;
  serial: string;
  writeback: boolean;
  socketMode?: number;
  /** Iothreads (worker threads) serving this export's queues. */
  iothreads: number;
  /** queueMap[q] = iothread of queue q; default round-robin. */
  queueMap?: number[];
  /** iothreadCpus[i] = CPUs iothread i is pinned to. */
  iothreadCpus?: number[][];
  aio: AioMode;
  pollMaxNs: number;
}

interface Session {
  endpoint: Endpoint;
  backend: VhostBackend;
  closed: Promise<void>;
}

export class BlkExport {
  readonly device: BlkDevice;
  private readonly image: StorageTarget;
  private listener: UnixListener | undefined;
  private session: Session | undefined;
  private readonly log: Logger;
  private connections = 0;
  private pool: IothreadPool | undefined;
  private resolveReady!: () => void;
  private readonly ready = new Promise<void>((r) => { this.resolveReady = r; });

  /** Open the image, start the iothreads and listen. */
  static async open(o: BlkExportOptions): Promise<BlkExport> {
    const exp = new BlkExport(o);
    try {
      // Socket first: a bad path fails fast, before any thread starts. Connections
      // that arrive before the iothreads are up wait in accept().
      exp.listen();
      exp.pool = await IothreadPool.start(
        { type: 'blk', disk: exp.device.disk, writeback: o.writeback, aio: o.aio },
        { name: 'vublk-io', count: o.iothreads, queueMap: o.queueMap ?? roundRobinQueueMap(o.numQueues, o.iothreads), cpus: o.iothreadCpus ?? [], pollMaxNs: o.pollMaxNs },
        exp.log,
      );
      exp.resolveReady();
    } catch (e) {
      exp.listener?.close();
      await exp.pool?.close();
      exp.image.close();
      throw e;
    }
    return exp;
  }

  private constructor(readonly o: BlkExportOptions) {
    this.log = rootLog.child({ export: o.id });
    this.image = openTarget(o.imagePath, { readOnly: o.readOnly, direct: o.direct ?? false, logicalBlockSize: o.logicalBlockSize, serial: o.serial });
    const disk: BlkDisk = this.image.disk;
    this.device = new BlkDevice({ disk, maxQueues: o.numQueues, writeback: o.writeback });
  }

  private listen(): void {
    this.listener = new UnixListener({ path: this.o.socketPath, fd: this.o.listenFd, mode: this.o.socketMode }, (fd) => this.accept(fd));
    this.log.info('listening', { socket: this.o.socketPath, image: this.o.imagePath, readonly: this.o.readOnly, queues: this.o.numQueues });
  }

  get activeSession(): VhostBackend | undefined { return this.session?.backend; }

  private accept(fd: number): void {
    if (this.pool === undefined) {
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
    const backend = new VhostBackend(endpoint, this.device, this.pool!, log);
    this.session = { endpoint, backend, closed };
    log.info('front-end connected');
    endpoint.start();
  }

  /** Stop accepting, let in-flight requests finish, disconnect, release everything. */
  async close(): Promise<void> {
    this.listener?.close();
    this.listener = undefined;
    const s = this.session;
    if (s !== undefined) {
      s.endpoint.close('server shutting down');
      await s.closed;
    }
    await this.pool?.close();
    this.pool = undefined;
    this.image.close();
  }
}
