// The queues of one device running on the current thread. The control plane
// tells it which rings to start and stop; it never sees vhost-user messages.
// (Iothread workers will run one of these each.)
import { GuestMemory, RegionWindow } from '../memory/guest-memory';
import { detachWindows, makeWindows } from '../memory/mapping';
import { Logger } from '../util/log';
import { checkQueueLayout, inflightBytesFor, makeQueue } from '../virtq/make-queue';
import { Virtqueue } from '../virtq/virtqueue';
import { COALESCING_OFF, CoalescingSettings } from './coalescing';
import { CompletionRound } from './completion-round';
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
  /** VIRTIO_F_RING_PACKED: a packed ring (desc/avail/used addresses are the descriptor ring and the driver and device areas). */
  packed: boolean;
  /** This queue's part of the front-end's in-flight region (INFLIGHT_SHMFD), when it set one. */
  inflight?: InflightQueueRegion;
}

/** Where one queue's QueueRegionSplit or QueueRegionPacked is mapped in this process (the control plane owns the mapping). */
export interface InflightQueueRegion {
  hostAddr: number;
  /** Descriptors the region was laid out for (VhostUserInflight.queue_size); at least the ring's size. */
  queueSize: number;
}

export interface QueueContext {
  index: number;
  queue: Virtqueue;
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
  /** Views of the in-flight region, detached when the ring stops (the control plane may unmap it then). */
  inflightWindows?: RegionWindow[];
}

export class DataPlane {
  private readonly running = new Map<number, Running>();

  /** `round`: the storage engine's rounds of completions, if it reports them (see CompletionRound). */
  constructor(private readonly mem: GuestMemory, private readonly makeHandler: QueueHandlerFactory,
              private readonly log: Logger, private readonly pollMaxNs = 0, private readonly round?: CompletionRound,
              private coalescing: CoalescingSettings = COALESCING_OFF) {}

  /** Interrupt coalescing for every ring, running and to come. */
  setCoalescing(settings: CoalescingSettings): void {
    this.coalescing = settings;
    for (const { runner } of this.running.values()) runner.setCoalescing(settings);
  }

  isRunning(index: number): boolean { return this.running.has(index); }

  /** Start processing a ring; returns why it cannot start. */
  startRing(cfg: RingConfig): string | undefined {
    if (this.running.has(cfg.index)) return `queue ${cfg.index} already started`;
    const layout = { size: cfg.size, descAddr: cfg.descAddr, availAddr: cfg.availAddr, usedAddr: cfg.usedAddr };
    const why = checkQueueLayout(this.mem, layout, cfg.packed);
    if (why !== undefined) return `queue ${cfg.index}: ${why}`;
    if (cfg.inflight !== undefined && cfg.size > cfg.inflight.queueSize) {
      return `queue ${cfg.index}: size ${cfg.size} exceeds the ${cfg.inflight.queueSize} descriptors of its in-flight region`;
    }
    let queue: Virtqueue;
    try {
      queue = makeQueue(this.mem, layout, cfg.base, cfg);
    } catch (e) {
      return `queue ${cfg.index}: ${(e as Error).message}`;
    }
    const log = this.log.child({ queue: cfg.index });
    const runner = new QueueRunner(cfg.index, queue, cfg.kickFd, cfg.callFd, cfg.errFd, log, this.pollMaxNs, this.round, this.coalescing);
    const handler = this.makeHandler({ index: cfg.index, queue, mem: this.mem, onCompleted: () => runner.completed(), log });
    // Before the runner starts: recovery decides where the ring resumes.
    const inflightWindows = cfg.inflight === undefined ? undefined : this.trackInflight(queue, cfg, log);
    runner.attach(handler);
    runner.setEnabled(cfg.enabled);
    this.running.set(cfg.index, { runner, handler, inflightWindows });
    runner.start();
    log.debug('queue started', { size: cfg.size, base: cfg.base, packed: cfg.packed, ...queue.describe(), inflight: cfg.inflight !== undefined });
    return undefined;
  }

  /** Attach the queue's in-flight region: recover what a previous process left in flight, then track. */
  private trackInflight(queue: Virtqueue, cfg: RingConfig, log: Logger): RegionWindow[] {
    const region = cfg.inflight!;
    const windows = makeWindows(region.hostAddr, inflightBytesFor(cfg.packed, region.queueSize));
    const r = queue.trackInflight(windows[0].buffer, 0, region.queueSize);
    if (r.discarded !== undefined) {
      // Requests the previous process had in flight (if any) are lost to the guest; say so loudly.
      log.error('in-flight region unusable; starting it afresh', { reason: r.discarded, base: cfg.base });
    } else if (r.heads.length > 0 || r.fixedUp > 0) {
      log.info('resubmitting requests left in flight', {
        resubmit: r.heads.length, fixedUp: r.fixedUp, fixedUpMarked: r.fixedUpMarked, base: cfg.base, ...queue.describe(),
      });
    } else if (!r.initialised && cfg.base !== queue.base) {
      log.info('in-flight region moves the ring start', { base: cfg.base, ...queue.describe() });
    }
    return windows;
  }

  /** Stop a ring after its in-flight requests completed; resolves to the next avail index (undefined if not running). */
  async stopRing(index: number): Promise<number | undefined> {
    const r = this.running.get(index);
    if (r === undefined) return undefined;
    const next = await r.runner.stop();
    this.running.delete(index);
    r.handler.close();
    if (r.inflightWindows !== undefined) detachWindows(r.inflightWindows);
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
    for (const r of this.running.values()) r.handler.releaseWaiting?.();
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
