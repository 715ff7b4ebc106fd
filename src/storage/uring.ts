// io_uring engine: one ring per engine (one engine per iothread), requests
// straight from guest memory, one io_uring_enter per batch. Create and use it
// on one thread only; completions run on that thread's loop.
import { native, UringEngineHandle, UringStats } from '../native/addon';
import { CompletionHandler, EngineFactory, StorageEngine } from './engine';

/** Same as the thread-pool engine, so the device looks the same whichever engine serves it. */
export const URING_MAX_IOV = 256;
/** Default SQ size: a batch of more submissions is issued in several io_uring_enter calls. */
export const URING_DEFAULT_ENTRIES = 256;

export interface UringOptions {
  /** SQ entries (1..32768); default min(URING_DEFAULT_ENTRIES, slots). */
  entries?: number;
  /** io_uring setup flags (URING_SETUP_* of addon.ts) instead of the addon's default; measurements only. */
  setupFlags?: number;
}

export class UringEngine implements StorageEngine {
  readonly name = 'io_uring';
  readonly maxIov = URING_MAX_IOV;
  private handle: UringEngineHandle | undefined;

  /** Throws (code ENOSYS, EPERM, ...) when io_uring is unavailable. */
  constructor(slots: number, onComplete: CompletionHandler, options: UringOptions = {}, onRoundEnd?: () => void) {
    const entries = options.entries ?? Math.min(URING_DEFAULT_ENTRIES, slots);
    const done = new Float64Array(2 * slots);
    const onCompletions = (count: number): void => {
      for (let i = 0; i < 2 * count; i += 2) onComplete(done[i], done[i + 1]);
      onRoundEnd?.();
    };
    this.handle = native.uringEngineCreate(slots, URING_MAX_IOV, entries, done, onCompletions, options.setupFlags);
  }

  submit(slot: number, op: number, fd: number, offset: number, iov: Float64Array, iovCount: number): void {
    native.uringEngineSubmit(this.handle!, slot, op, fd, offset, iov, iovCount);
  }

  submitRange(slot: number, op: number, fd: number, offset: number, length: number): void {
    native.uringEngineSubmitRange(this.handle!, slot, op, fd, offset, length);
  }

  /** Issues the queued batch with one io_uring_enter; requests that completed at once are delivered before it returns. */
  flush(): void {
    native.uringEngineFlush(this.handle!);
  }

  inFlight(): number {
    return this.handle === undefined ? 0 : native.uringEngineInFlight(this.handle);
  }

  stats(): UringStats | undefined {
    return this.handle === undefined ? undefined : native.uringEngineStats(this.handle);
  }

  close(): void {
    if (this.handle === undefined) return;
    native.uringEngineDestroy(this.handle);
    this.handle = undefined;
  }
}

export function uringEngineFactory(options: UringOptions = {}): EngineFactory {
  return (slots, onComplete, onRoundEnd) => new UringEngine(slots, onComplete, options, onRoundEnd);
}
