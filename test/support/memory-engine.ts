// A storage engine over an in-memory disk, for unit tests: completes on the
// next macrotask, can inject errors, and records what it was asked to do.
import { CompletionHandler, IO_FLUSH, IO_READ, IO_WRITE, StorageEngine } from '../../src/storage/engine';
import { FAKE_HOST_BASE } from './fake-memory';

export interface EngineCall { slot: number; op: number; offset: number; bytes: number }

export class MemoryEngine implements StorageEngine {
  readonly name = 'memory';
  readonly maxIov = 64;
  readonly calls: EngineCall[] = [];
  /** Next results to force (e.g. -5 for EIO), consumed in order. */
  readonly injected: number[] = [];
  private pending = 0;

  constructor(private readonly disk: Uint8Array, private readonly guest: Uint8Array,
              private readonly onComplete: CompletionHandler) {}

  submit(slot: number, op: number, _fd: number, offset: number, iov: Float64Array, iovCount: number): void {
    let bytes = 0;
    for (let i = 0; i < iovCount; i++) bytes += iov[2 * i + 1];
    this.calls.push({ slot, op, offset, bytes });
    let result = this.injected.length > 0 ? this.injected.shift()! : 0;
    if (result === 0 && op !== IO_FLUSH) {
      let pos = offset;
      for (let i = 0; i < iovCount; i++) {
        const g = iov[2 * i] - FAKE_HOST_BASE;
        const n = iov[2 * i + 1];
        if (op === IO_READ) this.guest.set(this.disk.subarray(pos, pos + n), g);
        else if (op === IO_WRITE) this.disk.set(this.guest.subarray(g, g + n), pos);
        pos += n;
      }
      result = bytes;
    }
    this.complete(slot, result);
  }

  private complete(slot: number, result: number): void {
    this.pending++;
    setImmediate(() => {
      this.pending--;
      this.onComplete(slot, result);
    });
  }

  /** Every range operation zeroes the range, as a hole or written zeroes would read back. */
  submitRange(slot: number, op: number, _fd: number, offset: number, length: number): void {
    this.calls.push({ slot, op, offset, bytes: length });
    const result = this.injected.length > 0 ? this.injected.shift()! : 0;
    if (result === 0) this.disk.fill(0, offset, offset + length);
    this.complete(slot, result);
  }

  flush(): void {}
  inFlight(): number { return this.pending; }
  close(): void {}
}
