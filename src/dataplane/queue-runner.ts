// Drives one started virtqueue on the current thread: waits for kicks, drains
// the available ring into a request handler, publishes used elements once per
// batch and interrupts the guest through the call eventfd when it asks for it.
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
  private stopWaiter: (() => void) | undefined;
  private enabled = true;
  private readonly flushBound = (): void => this.flush();
  private readonly onKickBound = (events: number): void => this.onKick(events);

  constructor(readonly index: number, readonly queue: SplitQueue, private kickFd: number,
              private callFd: number, private errFd: number, private readonly log: Logger) {}

  /** The handler needs `completed` of this runner, so it is attached after construction. */
  attach(handler: RequestHandler): void {
    this.handler = handler;
  }

  /** Start watching kicks; buffers made available before the start are picked up at once. */
  start(): void {
    if (this.kickFd >= 0) this.watcher = native.watch(this.kickFd, POLL_READABLE, this.onKickBound);
    this.drain();
  }

  setEnabled(on: boolean): void {
    this.enabled = on;
    if (on) this.drain();
  }

  setCallFd(fd: number): void {
    this.callFd = fd;
    // A guest may have waited for an interrupt across the change: give it one.
    if (fd >= 0) native.eventfdWrite(fd, 1);
  }

  setErrFd(fd: number): void {
    this.errFd = fd;
  }

  private onKick(events: number): void {
    if (events < 0) {
      this.log.error('kick fd error', { errno: -events });
      return;
    }
    native.eventfdRead(this.kickFd);
    this.drain();
  }

  /** Take every available request; re-check after allowing kicks again so none is missed. */
  drain(): void {
    const q = this.queue;
    const handler = this.handler!;
    if (!this.enabled || this.stopWaiter !== undefined || q.broken) return;
    do {
      q.suppressKicks();
      for (let head = q.pop(); head >= 0; head = q.pop()) handler.handle(head);
    } while (!q.broken && q.allowKicks());
    handler.endBatch();
    if (q.broken) this.reportBroken();
    this.flush();
  }

  /** A request was completed; publish at the end of this loop turn, once for the whole batch. */
  completed(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(this.flushBound);
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.queue.publish() && this.callFd >= 0) native.eventfdWrite(this.callFd, 1);
    if (this.stopWaiter !== undefined && this.queue.inFlight === 0) {
      const done = this.stopWaiter;
      this.stopWaiter = undefined;
      done();
    }
  }

  private reportBroken(): void {
    this.log.error('virtqueue broken by the driver; stopped until reset', { reason: this.queue.brokenReason });
    if (this.errFd >= 0) native.eventfdWrite(this.errFd, 1);
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
