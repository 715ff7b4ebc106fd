// A storage engine over an in-memory disk, for unit tests: completes on the
// next macrotask, can inject errors and short transfers, and records what it
// was asked to do.
import { CompletionHandler, IO_FLUSH, IO_READ, IO_WRITE, StorageEngine } from '../../src/storage/engine';
import { FAKE_HOST_BASE } from './fake-memory';

export interface EngineCall {
  slot: number;
  op: number;
  offset: number;
  bytes: number;
  /** Host (address, length) pairs of submit(); empty for range operations. */
  iov: number[];
}

export interface MemoryEngineOptions {
  /**
   * Act like an O_DIRECT fd: throw from submit() unless the offset and every iovec
   * address and length are multiples of this (0 = no check).
   */
  alignment?: number;
  /**
   * Complete inside submit() instead of on the next macrotask. The request code
   * must cope with that (it guards against completions arriving inside handle()).
   */
  synchronous?: boolean;
  /** The EngineFactory's onRoundEnd: each completion is a round of its own. */
  onRoundEnd?: () => void;
}

export class MemoryEngine implements StorageEngine {
  readonly name = 'memory';
  readonly maxIov = 64;
  readonly calls: EngineCall[] = [];
  /** Next results to force (e.g. -5 for EIO), consumed in order; 0 runs the call normally. */
  readonly injected: number[] = [];
  /**
   * A failing disk, asked about every call `injected` does not decide: -errno fails
   * the call and touches nothing; n >= 0 on a read or write moves only its first n
   * bytes and reports n (a short transfer); undefined runs the call normally.
   */
  fault: ((call: EngineCall) => number | undefined) | undefined;
  alignment: number;
  synchronous: boolean;
  private readonly onRoundEnd: (() => void) | undefined;
  /** Most requests ever in flight at once. */
  maxPending = 0;
  private pending = 0;
  /** Host memory besides the guest's that iovecs may point into (bounce buffers). */
  private readonly areas: Array<{ base: number; bytes: Uint8Array }> = [];

  constructor(private readonly disk: Uint8Array, guest: Uint8Array,
              private readonly onComplete: CompletionHandler, options: MemoryEngineOptions = {}) {
    this.alignment = options.alignment ?? 0;
    this.synchronous = options.synchronous ?? false;
    this.onRoundEnd = options.onRoundEnd;
    this.areas.push({ base: FAKE_HOST_BASE, bytes: guest });
  }

  /** Make [hostAddr, hostAddr + bytes.length) usable in iovecs. */
  addHostArea(hostAddr: number, bytes: Uint8Array): void {
    this.areas.push({ base: hostAddr, bytes });
  }

  /** Bytes behind host [addr, addr + n); throws for addresses no area holds (the real engine's EFAULT). */
  private resolve(addr: number, n: number): Uint8Array {
    for (const a of this.areas) {
      if (addr >= a.base && addr + n <= a.base + a.bytes.length) return a.bytes.subarray(addr - a.base, addr - a.base + n);
    }
    throw new Error(`memory engine: iovec ${addr.toString(16)}+${n} is outside every known area`);
  }

  submit(slot: number, op: number, _fd: number, offset: number, iov: Float64Array, iovCount: number): void {
    let bytes = 0;
    const pairs: number[] = [];
    for (let i = 0; i < iovCount; i++) {
      bytes += iov[2 * i + 1];
      pairs.push(iov[2 * i], iov[2 * i + 1]);
    }
    const a = this.alignment;
    if (a > 0 && op !== IO_FLUSH) {
      if (offset % a !== 0) throw new Error(`memory engine: offset ${offset} not aligned to ${a}`);
      for (let i = 0; i < pairs.length; i += 2) {
        if (pairs[i] % a !== 0 || pairs[i + 1] % a !== 0) {
          throw new Error(`memory engine: iovec ${pairs[i].toString(16)}+${pairs[i + 1]} not aligned to ${a}`);
        }
      }
    }
    const call: EngineCall = { slot, op, offset, bytes, iov: pairs };
    this.calls.push(call);
    let result = this.injected.length > 0 ? this.injected.shift()! : 0;
    const fault = result === 0 ? this.fault?.(call) : undefined;
    if (fault !== undefined && fault < 0) {
      result = fault;
    } else if (result === 0 && op !== IO_FLUSH) {
      // Up to the fault's byte count, if it cut the transfer short.
      let left = fault === undefined ? bytes : Math.min(fault, bytes);
      result = left;
      let pos = offset;
      for (let i = 0; i < iovCount && left > 0; i++) {
        const n = Math.min(iov[2 * i + 1], left);
        const buf = this.resolve(iov[2 * i], n);
        if (op === IO_READ) buf.set(this.disk.subarray(pos, pos + n));
        else if (op === IO_WRITE) this.disk.set(buf, pos);
        pos += n;
        left -= n;
      }
    }
    this.complete(slot, result);
  }

  private complete(slot: number, result: number): void {
    if (this.synchronous) return this.deliver(slot, result);
    this.pending++;
    this.maxPending = Math.max(this.maxPending, this.pending);
    setImmediate(() => {
      this.pending--;
      this.deliver(slot, result);
    });
  }

  private deliver(slot: number, result: number): void {
    this.onComplete(slot, result);
    this.onRoundEnd?.();
  }

  /** Every range operation zeroes the range, as a hole or written zeroes would read back. */
  submitRange(slot: number, op: number, _fd: number, offset: number, length: number): void {
    const call: EngineCall = { slot, op, offset, bytes: length, iov: [] };
    this.calls.push(call);
    let result = this.injected.length > 0 ? this.injected.shift()! : 0;
    if (result === 0) result = this.fault?.(call) ?? 0;
    if (result === 0) this.disk.fill(0, offset, offset + length);
    this.complete(slot, result);
  }

  flush(): void {}
  inFlight(): number { return this.pending; }
  close(): void {}
}
