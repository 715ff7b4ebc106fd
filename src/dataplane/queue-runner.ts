// Drives one started virtqueue on the current thread: waits for kicks, drains
// the available ring into a request handler, publishes used elements once per
// batch and interrupts the guest through the call eventfd when it asks for it.
//
// Nothing the guest or the front-end does may throw out of here: a failure in
// a callback would end the whole thread. Errors stop this ring instead.
import { Watcher, POLL_READABLE, native } from '../native/addon';
import { Logger } from '../util/log';
import { SplitQueue } from '../virtq/split';

/** Device-specific request processing for one queue (virtio-blk: blk/request.ts). */
export interface RequestHandler {
  handle(head: number): void;
  /** Called after each drain of the available ring. */
  endBatch(): void;
}

export class QueueRunner {
  private watcher: Watcher | undefined;
  private handler: RequestHandler | undefined;
  private flushScheduled = false;
  private drainScheduled = false;
  private stopWaiter: (() => void) | undefined;
  /** Set once stop() resolved: a flush or drain still scheduled must not touch the ring any more. */
  private stopped = false;
  private enabled = true;
  private readonly flushBound = (): void => this.flush();
  private readonly drainBound = (): void => {
    this.drainScheduled = false;
    this.drain();
  };
  private readonly onKickBound = (events: number): void => this.onKick(events);

  constructor(readonly index: number, readonly queue: SplitQueue, private kickFd: number,
              private callFd: number, private errFd: number, private readonly log: Logger) {}

  /** The handler needs `completed` of this runner, so it is attached after construction. */
  attach(handler: RequestHandler): void {
    this.handler = handler;
  }

  /**
   * Start watching kicks; buffers made available before the start are picked up
   * at once, and the guest gets one interrupt in case it waited for one across a
   * reconnect (QEMU sends the call fd before the ring starts).
   */
  start(): void {
    this.watchKicks();
    this.drain();
    this.signal(this.callFd);
  }

  private watchKicks(): void {
    if (this.kickFd >= 0) this.watcher = native.watch(this.kickFd, POLL_READABLE, this.onKickBound);
  }

  setEnabled(on: boolean): void {
    this.enabled = on;
    if (on) this.drain();
  }

  /** A new kick fd while running: watch it instead, and look for buffers kicked meanwhile. */
  setKickFd(fd: number): void {
    this.watcher?.stop();
    this.watcher = undefined;
    this.kickFd = fd;
    if (this.stopped || this.stopWaiter !== undefined) return;
    this.watchKicks();
    this.drain();
  }

  setCallFd(fd: number): void {
    this.callFd = fd;
    this.signal(fd);
  }

  setErrFd(fd: number): void {
    this.errFd = fd;
  }

  private signal(fd: number): void {
    if (fd < 0) return;
    try {
      native.eventfdWrite(fd, 1);
    } catch (e) {
      this.fail(`cannot signal the guest: ${(e as Error).message}`);
    }
  }

  private onKick(events: number): void {
    if (events < 0) return this.fail(`kick fd error errno=${-events}`);
    try {
      native.eventfdRead(this.kickFd);
    } catch (e) {
      return this.fail(`cannot read the kick fd: ${(e as Error).message}`);
    }
    this.drain();
  }

  /**
   * Take available requests; re-check after allowing kicks again so none is
   * missed. At most a queue's worth per turn, so a guest that never stops
   * adding buffers cannot starve the other queues and the control messages.
   */
  drain(): void {
    const q = this.queue;
    const handler = this.handler!;
    if (!this.enabled || this.stopped || this.stopWaiter !== undefined || q.broken) return;
    let budget = q.size;
    try {
      do {
        q.suppressKicks();
        for (let head = q.pop(); head >= 0; head = budget-- > 0 ? q.pop() : -1) handler.handle(head);
      } while (budget > 0 && !q.broken && q.allowKicks());
      handler.endBatch();
    } catch (e) {
      return this.fail(`request handling failed: ${(e as Error).stack ?? e}`);
    }
    if (q.broken) this.reportBroken();
    else if (budget <= 0 && !this.drainScheduled) {
      this.drainScheduled = true;
      setImmediate(this.drainBound);
    }
    this.flush();
  }

  /** A request was completed; publish at the end of this loop turn, once for the whole batch. */
  completed(): void {
    if (this.flushScheduled || this.stopped) return;
    this.flushScheduled = true;
    setImmediate(this.flushBound);
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.stopped) return;
    if (this.queue.publish()) this.signal(this.callFd);
    if (this.stopWaiter !== undefined && this.queue.inFlight === 0) {
      const done = this.stopWaiter;
      this.stopWaiter = undefined;
      this.stopped = true;
      done();
    }
  }

  /** Something about this ring cannot work; stop using it (the guest must reset the device). */
  private fail(reason: string): void {
    if (!this.queue.broken) this.queue.markBroken(reason);
    this.reportBroken();
  }

  private reportBroken(): void {
    this.log.error('virtqueue stopped until the device is reset', { reason: this.queue.brokenReason });
    this.watcher?.stop();
    this.watcher = undefined;
    const fd = this.errFd;
    this.errFd = -1; // one report per breakage
    this.signal(fd);
  }

  /** Stop taking requests, wait for those in flight to complete and be published; resolves to the next avail index. */
  stop(): Promise<number> {
    this.watcher?.stop();
    this.watcher = undefined;
    return new Promise<number>((resolve) => {
      this.stopWaiter = () => resolve(this.queue.lastAvail);
      this.flush();
    });
  }
}
