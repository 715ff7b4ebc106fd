// Thread-pool engine: preadv/pwritev/fdatasync on libuv's worker threads,
// straight into guest memory. Works everywhere; io_uring replaces it where the
// kernel allows.
import { IoEngineHandle, native } from '../native/addon';
import { CompletionHandler, StorageEngine } from './engine';

export const THREADPOOL_MAX_IOV = 256;

export class ThreadPoolEngine implements StorageEngine {
  readonly name = 'threads';
  readonly maxIov = THREADPOOL_MAX_IOV;
  private handle: IoEngineHandle | undefined;

  constructor(slots: number, onComplete: CompletionHandler, onRoundEnd?: () => void) {
    // The pool completes one request per callback: each is a round of its own.
    this.handle = native.ioEngineCreate(slots, THREADPOOL_MAX_IOV, onRoundEnd === undefined ? onComplete : (slot, result) => {
      onComplete(slot, result);
      onRoundEnd();
    });
  }

  submit(slot: number, op: number, fd: number, offset: number, iov: Float64Array, iovCount: number): void {
    native.ioEngineSubmit(this.handle!, slot, op, fd, offset, iov, iovCount);
  }

  submitRange(slot: number, op: number, fd: number, offset: number, length: number): void {
    native.ioEngineSubmitRange(this.handle!, slot, op, fd, offset, length);
  }

  flush(): void { /* every submit is already queued to the pool */ }

  inFlight(): number {
    return this.handle === undefined ? 0 : native.ioEngineInFlight(this.handle);
  }

  close(): void {
    if (this.handle === undefined) return;
    native.ioEngineDestroy(this.handle);
    this.handle = undefined;
  }
}

export const threadPoolEngineFactory = (slots: number, onComplete: CompletionHandler, onRoundEnd?: () => void): StorageEngine =>
  new ThreadPoolEngine(slots, onComplete, onRoundEnd);
