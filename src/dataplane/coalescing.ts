// Interrupt coalescing, like SPDK's vhost_controller_set_coalescing: while a
// queue takes more than `iopsThreshold` requests per second, the interrupt a
// publish asks for waits up to `delayUs`, so one interrupt covers everything
// completed meanwhile. Used elements still go out at once (a guest that polls
// sees them); only the guest's interrupt, and our eventfd write, wait. The
// delay is a timerfd: libuv's timers have millisecond resolution.
import { performance } from 'node:perf_hooks';
import { Watcher, native } from '../native/addon';

export interface CoalescingSettings {
  /** 0: no coalescing. */
  delayUs: number;
  /** Requests per second above which interrupts are delayed; 0: always. */
  iopsThreshold: number;
}

export const COALESCING_OFF: CoalescingSettings = { delayUs: 0, iopsThreshold: 0 };

/** The rate is measured over windows this long (SPDK looks at it every few ms as well). */
const RATE_WINDOW_NS = 10e6;

export class InterruptCoalescer {
  private settings = COALESCING_OFF;
  private timerFd = -1;
  private watcher: Watcher | undefined;
  /** An interrupt waits for the timer. */
  private pending = false;
  private windowStart = 0;
  private taken = 0;
  private busy = false;
  private readonly onTimerBound = (events: number): void => this.onTimer(events);

  /** `interrupt` signals the guest; `warn` reports a timer that cannot work (interrupts then go out at once). */
  constructor(private readonly interrupt: () => void, private readonly warn: (reason: string) => void) {}

  set(settings: CoalescingSettings): void {
    this.settings = settings;
    // The first window starts now, not when the thread did.
    this.windowStart = performance.now() * 1e6;
    this.taken = 0;
    this.busy = false;
    if (settings.delayUs === 0) this.flush();
  }

  /** Requests taken from the ring, counted for the rate. */
  took(n: number): void {
    this.taken += n;
  }

  /** A publish wants an interrupt: true if it is deferred (the timer sends it), false to send it now. */
  defer(): boolean {
    if (this.settings.delayUs === 0) return false;
    if (this.pending) return true;
    if (!this.rateAbove()) return false;
    try {
      if (this.timerFd < 0) {
        // Both or neither: a timer nobody watches would hold interrupts back for good.
        const fd = native.timerfd();
        try {
          this.watcher = native.watchEventfd(fd, this.onTimerBound);
        } catch (e) {
          native.close(fd);
          throw e;
        }
        this.timerFd = fd;
      }
      native.timerfdArm(this.timerFd, this.settings.delayUs * 1000);
    } catch (e) {
      this.warn(`cannot arm the interrupt coalescing timer: ${(e as Error).message}`);
      return false;
    }
    this.pending = true;
    return true;
  }

  /** Send a deferred interrupt now: the ring stops, its call fd changes, or coalescing is switched off. */
  flush(): void {
    if (!this.pending) return;
    this.pending = false;
    native.timerfdArm(this.timerFd, 0);
    this.interrupt();
  }

  /** Send what waits and let go of the timer. */
  close(): void {
    this.flush();
    this.watcher?.stop();
    this.watcher = undefined;
    if (this.timerFd >= 0) native.close(this.timerFd);
    this.timerFd = -1;
  }

  private rateAbove(): boolean {
    if (this.settings.iopsThreshold === 0) return true;
    const now = performance.now() * 1e6;
    const elapsed = now - this.windowStart;
    if (elapsed >= RATE_WINDOW_NS) {
      // A window that began long ago (an idle queue) measures a low rate, as it should.
      this.busy = (this.taken * 1e9) / elapsed > this.settings.iopsThreshold;
      this.windowStart = now;
      this.taken = 0;
    }
    return this.busy;
  }

  private onTimer(events: number): void {
    if (events < 0) this.warn(`interrupt coalescing timer failed: errno ${-events}`);
    if (!this.pending) return;
    this.pending = false;
    this.interrupt();
  }
}
