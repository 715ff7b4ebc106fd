// One vhost-user-blk export: an image, a listening socket, and at most one
// front-end connection at a time.
import { BlkDevice } from '../blk/device';
import { BlkDisk } from '../blk/disk';
import { native } from '../native/addon';
import { EngineFactory } from '../storage/engine';
import { ImageFile, openImage } from '../storage/image';
import { threadPoolEngineFactory } from '../storage/threadpool';
import { Endpoint } from '../transport/endpoint';
import { Logger, log as rootLog } from '../util/log';
import { VhostBackend } from '../vhost/backend';
import { UnixListener } from './listener';

export interface BlkExportOptions {
  id: string;
  socketPath: string;
  imagePath: string;
  readOnly: boolean;
  numQueues: number;
  logicalBlockSize: number;
  serial: string;
  writeback: boolean;
  socketMode?: number;
  engines?: EngineFactory;
}

interface Session {
  endpoint: Endpoint;
  backend: VhostBackend;
  closed: Promise<void>;
}

export class BlkExport {
  readonly device: BlkDevice;
  private readonly image: ImageFile;
  private listener: UnixListener | undefined;
  private session: Session | undefined;
  private readonly log: Logger;
  private connections = 0;

  constructor(readonly o: BlkExportOptions) {
    this.log = rootLog.child({ export: o.id });
    try {
      this.image = openImage(o.imagePath, o.readOnly);
    } catch (e) {
      throw new Error(`image ${o.imagePath}: ${(e as Error).message}`);
    }
    const disk: BlkDisk = {
      fd: this.image.fd,
      kind: 'file',
      sizeBytes: this.image.sizeBytes - (this.image.sizeBytes % o.logicalBlockSize),
      readOnly: o.readOnly,
      logicalBlockSize: o.logicalBlockSize,
      physicalBlockSize: o.logicalBlockSize,
      minIoSize: 0,
      optIoSize: 0,
      direct: false,
      directAlignment: o.logicalBlockSize,
      discard: false,
      writeZeroes: false,
      serial: o.serial,
    };
    this.device = new BlkDevice({ disk, maxQueues: o.numQueues, writeback: o.writeback, engines: o.engines ?? threadPoolEngineFactory });
  }

  listen(): void {
    try {
      this.listener = new UnixListener({ path: this.o.socketPath, mode: this.o.socketMode }, (fd) => this.accept(fd));
    } catch (e) {
      this.image.close();
      throw e;
    }
    this.log.info('listening', { socket: this.o.socketPath, image: this.o.imagePath, readonly: this.o.readOnly, queues: this.o.numQueues });
  }

  get activeSession(): VhostBackend | undefined { return this.session?.backend; }

  private accept(fd: number): void {
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
        void backend.teardown().then(() => {
          if (this.session?.endpoint === endpoint) this.session = undefined;
          resolveClosed();
        });
      },
    });
    const backend = new VhostBackend(endpoint, this.device, log);
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
    this.image.close();
  }
}
