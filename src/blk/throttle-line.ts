// The requests of one queue that wait for the export's I/O limits (throttle.ts),
// in arrival order. A request that must wait is parsed again from its
// descriptors when its turn comes (as one that waited for a bounce slot is), so
// nothing per request is kept here but its head; one timer per queue wakes the
// line when the limiter says the first one may go.
import { SharedThrottle, sharedNowMs } from './throttle';

/** Longest a line sleeps before it asks the limiter again. */
const MAX_SLEEP_MS = 100;

export class ThrottleLine {
  private readonly ring: Uint16Array;
  private first = 0;
  /** Requests waiting. */
  count = 0;
  /** Inside tick(): the request restarted is the first in line, not a newcomer. */
  private draining = false;
  private timer: NodeJS.Timeout | undefined;
  /** Inside releaseAll(): the limits are not asked. */
  private bypass = false;
  private readonly tickBound = (): void => this.tick();

  /**
   * @param restart parses request `head` again and starts it (it asks mustWait() again)
   * @param afterDrain called after a tick restarted requests (submit what they queued)
   */
  constructor(private readonly throttle: SharedThrottle, queueSize: number,
              private readonly restart: (head: number) => void, private readonly afterDrain: () => void) {
    this.ring = new Uint16Array(queueSize);
  }

  /**
   * Whether request `head` (a read or write of `bytes`) must wait; if so it is in
   * line now. A new request waits behind those already waiting, whatever the limits.
   */
  mustWait(head: number, write: boolean, bytes: number): boolean {
    if (this.count > 0 && !this.draining) {
      this.push(head);
      return true;
    }
    if (this.bypass || !this.throttle.active) return false;
    const wait = this.throttle.admit(write, bytes, sharedNowMs());
    if (wait === 0) return false;
    if (this.draining) this.pushFront(head);
    else this.push(head);
    // Looked at again within MAX_SLEEP_MS whatever the wait: new limits (block_set_io_throttle) apply then.
    if (this.timer === undefined) this.timer = setTimeout(this.tickBound, Math.min(MAX_SLEEP_MS, Math.max(1, Math.ceil(wait))));
    return true;
  }

  /**
   * Start everything waiting now, whatever the limits: the ring stops or the
   * memory table changes, and the front-end waits for every request in flight
   * (QEMU lets throttled requests go when it drains a device, too).
   */
  releaseAll(): void {
    if (this.count === 0) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.bypass = true;
    try {
      this.tick();
    } finally {
      this.bypass = false;
    }
  }

  /** Stop the timer; only with nothing waiting (the queue stops once its requests completed). */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private push(head: number): void {
    this.ring[(this.first + this.count) % this.ring.length] = head;
    this.count++;
  }

  private pushFront(head: number): void {
    this.first = (this.first + this.ring.length - 1) % this.ring.length;
    this.ring[this.first] = head;
    this.count++;
  }

  private tick(): void {
    this.timer = undefined;
    this.draining = true;
    try {
      while (this.count > 0) {
        const head = this.ring[this.first];
        this.first = (this.first + 1) % this.ring.length;
        this.count--;
        this.restart(head);
        // Back at the front of the line: the limiter said wait, and the timer is set.
        if (this.count > 0 && this.ring[this.first] === head) break;
      }
    } finally {
      this.draining = false;
    }
    this.afterDrain();
  }
}
