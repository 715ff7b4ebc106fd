// Inline engine: each request runs on the iothread itself, a plain
// preadv/pwritev into guest memory. Only for stores that never wait for a
// device — files in tmpfs, whose pages are memory — where io_uring can only
// hand every request to a kernel worker thread (tmpfs has no non-blocking
// reads) and the thread pool pays a hand-off per request, both costing more
// CPU than the copy itself.
//
// Requests run at submit; their completions are delivered at flush(), the end
// of the batch, so request handling never re-enters itself. A completion that
// submits again (a bounced chunk, a write-through sync) is delivered in the
// same flush.
import { native } from '../native/addon';
import { CompletionHandler, IO_FLUSH, checkSlotFree, slotBusyError, StorageEngine } from './engine';

export const INLINE_MAX_IOV = 1024;

export class InlineEngine implements StorageEngine {
  readonly name = 'inline';
  readonly maxIov = INLINE_MAX_IOV;
  /** Finished requests not yet delivered: (slot, result) pairs, a ring of `slots` entries. */
  private readonly done: Float64Array;
  /** Slots whose completion is not delivered yet (the same slot may not be submitted again). */
  private readonly busy: Uint8Array;
  private first = 0;
  private count = 0;
  private delivering = false;

  constructor(private readonly slots: number, private readonly onComplete: CompletionHandler,
              private readonly onRoundEnd?: () => void) {
    this.done = new Float64Array(2 * slots);
    this.busy = new Uint8Array(slots);
  }

  submit(slot: number, op: number, fd: number, offset: number, iov: Float64Array, iovCount: number): void {
    checkSlotFree(this.busy, slot);
    this.finished(slot, native.ioRun(op, fd, op === IO_FLUSH ? 0 : offset, iov, op === IO_FLUSH ? 0 : iovCount));
  }

  submitRange(slot: number, op: number, fd: number, offset: number, length: number): void {
    checkSlotFree(this.busy, slot);
    this.finished(slot, native.ioRunRange(op, fd, offset, length));
  }

  private finished(slot: number, result: number): void {
    this.busy[slot] = 1;
    // A slot is in the ring at most once (it is busy until delivered), so `slots` entries suffice.
    const i = 2 * ((this.first + this.count) % this.slots);
    this.done[i] = slot;
    this.done[i + 1] = result;
    this.count++;
  }

  flush(): void {
    if (this.delivering) return;
    this.delivering = true;
    try {
      while (this.count > 0) {
        const i = 2 * this.first;
        const slot = this.done[i];
        const result = this.done[i + 1];
        this.first = (this.first + 1) % this.slots;
        this.count--;
        this.busy[slot] = 0;
        this.onComplete(slot, result);
      }
    } finally {
      this.delivering = false;
    }
    this.onRoundEnd?.();
  }

  inFlight(): number {
    return this.count;
  }

  close(): void {
    if (this.count > 0) throw slotBusyError(`inline engine closed with ${this.count} completions undelivered`);
  }
}

export const inlineEngineFactory = (slots: number, onComplete: CompletionHandler, onRoundEnd?: () => void): InlineEngine =>
  new InlineEngine(slots, onComplete, onRoundEnd);
