// The interface between request handling and whatever performs the I/O.
// Requests are named by slot numbers chosen by the caller; completions come
// back through one function per engine, so nothing is allocated per request.
export {
  IO_BLKDISCARD, IO_BLKZEROOUT, IO_FLUSH, IO_OP_NAMES, IO_PUNCH_HOLE, IO_READ, IO_WRITE, IO_ZERO_RANGE,
} from '../native/io-ops';

export type CompletionHandler = (slot: number, result: number) => void;

/** What engines throw when a slot is submitted again before its completion was delivered. */
export function slotBusyError(message: string): Error {
  return Object.assign(new Error(message), { code: 'EBUSY' });
}

/** Before a submission, for engines that track their slots in `busy`: the slot must exist and be free. */
export function checkSlotFree(busy: Uint8Array, slot: number): void {
  if (!(Number.isInteger(slot) && slot >= 0 && slot < busy.length)) throw new RangeError(`slot ${slot} out of range (${busy.length} slots)`);
  if (busy[slot] !== 0) throw slotBusyError(`slot ${slot} is busy`);
}

export interface StorageEngine {
  readonly name: string;
  /** Most (address, length) pairs one request may carry. */
  readonly maxIov: number;
  /**
   * Start one request. `iov` holds host (address, length) pairs into memory that
   * stays mapped until completion. Result: bytes transferred or -errno.
   */
  submit(slot: number, op: number, fd: number, offset: number, iov: Float64Array, iovCount: number): void;
  /** Start a range operation (IO_PUNCH_HOLE, IO_ZERO_RANGE, IO_BLKDISCARD, IO_BLKZEROOUT) on [offset, offset+length). Result: 0 or -errno. */
  submitRange(slot: number, op: number, fd: number, offset: number, length: number): void;
  /** End of a batch: engines that queue submissions issue them now. */
  flush(): void;
  inFlight(): number;
  close(): void;
}

/**
 * `onRoundEnd`, when given, runs after each round of completions an engine delivers
 * (from the loop or inside flush), once the round's last onComplete returned.
 */
export type EngineFactory = (slots: number, onComplete: CompletionHandler, onRoundEnd?: () => void) => StorageEngine;
