// io_uring engine: one ring per engine (one engine per iothread), requests
// straight from guest memory, one io_uring_enter per batch. Create and use it
// on one thread only; completions run on that thread's loop.
import { native, UringEngineHandle, UringStats } from '../native/addon';
import { CompletionHandler, EngineFactory, StorageEngine, checkSlotFree } from './engine';

/** Same as the thread-pool engine, so the device looks the same whichever engine serves it. */
export const URING_MAX_IOV = 256;
/** Default SQ size: a batch of more submissions is issued in several io_uring_enter calls. */
export const URING_DEFAULT_ENTRIES = 256;

/**
 * The submission table shared with the addon (native/uring.c reads it): the number of staged
 * records, the index just past the last one, then the records, each slot, op, fd, offset,
 * iovCount and iovCount (address, length) pairs. The addon empties it whenever it runs.
 */
export const TABLE_COUNT = 0;
export const TABLE_END = 1;
export const TABLE_FIRST = 2;
export const TABLE_RECORD = 5;
/** Room per slot: a 4K request is one pair; a request that finds no room goes through uringEngineSubmit. */
const TABLE_PAIRS_PER_SLOT = 4;
/** Rounds of requests that completed inside a flush, delivered before flush() returns. */
const FLUSH_ROUNDS = 8;

export function submissionTable(slots: number): Float64Array {
  const table = new Float64Array(TABLE_FIRST + slots * (TABLE_RECORD + 2 * TABLE_PAIRS_PER_SLOT));
  table[TABLE_END] = TABLE_FIRST;
  return table;
}

/** Stage one request in `table`; false when it has no room for it. */
export function stageSubmission(table: Float64Array, slot: number, op: number, fd: number, offset: number,
                                iov: Float64Array, iovCount: number): boolean {
  const at = table[TABLE_END];
  const pairs = at + TABLE_RECORD;
  const end = pairs + 2 * iovCount;
  if (end > table.length) return false;
  table[at] = slot;
  table[at + 1] = op;
  table[at + 2] = fd;
  table[at + 3] = offset;
  table[at + 4] = iovCount;
  for (let i = 0; i < 2 * iovCount; i++) table[pairs + i] = iov[i];
  table[TABLE_END] = end;
  table[TABLE_COUNT]++;
  return true;
}

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
  private readonly table: Float64Array;
  private readonly done: Float64Array;
  /** Slots submitted and not yet completed: a busy slot is refused at submit, as the addon would. */
  private readonly busy: Uint8Array;
  /** Delivering the pairs a flush returned: a flush from a completion must not overwrite them. */
  private delivering = false;
  /**
   * A request went to the SQ directly (a range operation, or one the table had no room for).
   * The addon issues such requests by itself only inside its own deliveries, so a flush goes
   * round again after delivering what its enter completed if one was queued meanwhile.
   */
  private queuedDirect = false;

  /** Throws (code ENOSYS, EPERM, ...) when io_uring is unavailable. */
  constructor(slots: number, private readonly onComplete: CompletionHandler, options: UringOptions = {},
              private readonly onRoundEnd?: () => void) {
    const entries = options.entries ?? Math.min(URING_DEFAULT_ENTRIES, slots);
    this.done = new Float64Array(2 * slots);
    this.table = submissionTable(slots);
    this.busy = new Uint8Array(slots);
    const onCompletions = (count: number): void => this.deliver(count);
    this.handle = native.uringEngineCreate(slots, URING_MAX_IOV, entries, this.done, this.table, onCompletions,
      options.setupFlags);
  }

  submit(slot: number, op: number, fd: number, offset: number, iov: Float64Array, iovCount: number): void {
    checkSlotFree(this.busy, slot);
    if (!stageSubmission(this.table, slot, op, fd, offset, iov, iovCount)) {
      native.uringEngineSubmit(this.handle!, slot, op, fd, offset, iov, iovCount);
      this.queuedDirect = true;
    }
    this.busy[slot] = 1;
  }

  submitRange(slot: number, op: number, fd: number, offset: number, length: number): void {
    checkSlotFree(this.busy, slot);
    native.uringEngineSubmitRange(this.handle!, slot, op, fd, offset, length);
    this.busy[slot] = 1;
    this.queuedDirect = true;
  }

  /**
   * Issues the staged batch with one io_uring_enter; requests that completed at once are
   * delivered before it returns (and what their completions submit, for a few rounds).
   */
  flush(): void {
    const h = this.handle!;
    if (this.delivering) {
      h.flush(false);
      return;
    }
    this.delivering = true;
    try {
      for (let round = 0; round < FLUSH_ROUNDS; round++) {
        this.queuedDirect = false;
        const n = h.flush(true);
        if (n === 0) return;
        this.deliver(n);
        if (this.table[TABLE_COUNT] === 0 && !this.queuedDirect) return;
      }
      h.flush(false); // the rest comes from the loop
    } finally {
      this.delivering = false;
    }
  }

  private deliver(count: number): void {
    const done = this.done;
    for (let i = 0; i < 2 * count; i += 2) {
      this.busy[done[i]] = 0;
      this.onComplete(done[i], done[i + 1]);
    }
    this.onRoundEnd?.();
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
