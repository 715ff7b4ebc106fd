// The queues of one device running on the current thread. The control plane
// tells it which rings to start and stop; it never sees vhost-user messages.
// (Iothread workers will run one of these each.)
import { GuestMemory } from '../memory/guest-memory';
import { Logger } from '../util/log';
import { SplitQueue, checkRingLayout } from '../virtq/split';
import { QueueRunner, RequestHandler } from './queue-runner';

export interface RingConfig {
  index: number;
  size: number;
  /** Guest physical addresses of the ring parts. */
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  /** Next available index to process. */
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  eventIdx: boolean;
  indirect: boolean;
}

export interface QueueContext {
  index: number;
  queue: SplitQueue;
  mem: GuestMemory;
  /** Tell the runner that used elements were pushed. */
  onCompleted: () => void;
  log: Logger;
}

export interface QueueHandler extends RequestHandler {
  /** Release per-queue resources; only called with nothing in flight. */
  close(): void;
}

export type QueueHandlerFactory = (ctx: QueueContext) => QueueHandler;

interface Running {
  runner: QueueRunner;
  handler: QueueHandler;
}

export class DataPlane {
  private readonly running = new Map<number, Running>();

  constructor(private readonly mem: GuestMemory, private readonly makeHandler: QueueHandlerFactory,
              private readonly log: Logger, private readonly pollMaxNs = 0) {}

  isRunning(index: number): boolean { return this.running.has(index); }

  /** Start processing a ring; returns why it cannot start. */
  startRing(cfg: RingConfig): string | undefined {
    if (this.running.has(cfg.index)) return `queue ${cfg.index} already started`;
    const layout = { size: cfg.size, descAddr: cfg.descAddr, availAddr: cfg.availAddr, usedAddr: cfg.usedAddr };
    const why = checkRingLayout(this.mem, layout);
    if (why !== undefined) return `queue ${cfg.index}: ${why}`;
    const queue = new SplitQueue(this.mem, layout, cfg.base, { eventIdx: cfg.eventIdx, indirect: cfg.indirect });
    const log = this.log.child({ queue: cfg.index });
    const runner = new QueueRunner(cfg.index, queue, cfg.kickFd, cfg.callFd, cfg.errFd, log, this.pollMaxNs);
    const handler = this.makeHandler({ index: cfg.index, queue, mem: this.mem, onCompleted: () => runner.completed(), log });
    runner.attach(handler);
    runner.setEnabled(cfg.enabled);
    this.running.set(cfg.index, { runner, handler });
    runner.start();
    log.debug('queue started', { size: cfg.size, base: cfg.base });
    return undefined;
  }

  /** Stop a ring after its in-flight requests completed; resolves to the next avail index (undefined if not running). */
  async stopRing(index: number): Promise<number | undefined> {
    const r = this.running.get(index);
    if (r === undefined) return undefined;
    const next = await r.runner.stop();
    this.running.delete(index);
    r.handler.close();
    this.log.debug('queue stopped', { queue: index, next });
    return next;
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.running.keys()].map((i) => this.stopRing(i)));
  }

  setEnabled(index: number, on: boolean): void { this.running.get(index)?.runner.setEnabled(on); }
  setKickFd(index: number, fd: number): void { this.running.get(index)?.runner.setKickFd(fd); }
  setCallFd(index: number, fd: number): void { this.running.get(index)?.runner.setCallFd(fd); }
  setErrFd(index: number, fd: number): void { this.running.get(index)?.runner.setErrFd(fd); }

  /** Resolves once every request in flight now (on any ring) has completed. */
  whenInFlightDone(): Promise<void> {
    return Promise.all([...this.running.values()].map((r) => new Promise<void>((done) => r.runner.queue.whenInFlightDone(done))))
      .then(() => undefined);
  }

  /** The memory table changed: rebuild ring views; a ring whose memory vanished is stopped as broken. */
  memoryChanged(): void {
    for (const [index, r] of this.running) {
      const why = r.runner.queue.remap();
      if (why !== undefined) {
        this.log.error('ring no longer in guest memory', { queue: index, reason: why });
        r.runner.queue.markBroken(`ring no longer in guest memory: ${why}`);
      }
    }
  }
}
