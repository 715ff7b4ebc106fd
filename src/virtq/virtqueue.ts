// What the data plane and virtio-blk need of a virtqueue, whichever layout the
// driver negotiated: split (split.ts) or packed (packed.ts). Requests are named
// by an id below the queue size (a split ring's head, a packed ring's buffer id)
// that stays unique while the request is in flight, so per-request state can
// live in arrays indexed by it.
import { Chain } from './chain';
import { InflightRecovery } from './inflight';

export interface Virtqueue {
  readonly size: number;
  /** Requests taken and not yet returned. */
  readonly inFlight: number;
  /** The guest broke the ring's rules; it stays stopped until reset. */
  readonly broken: boolean;
  readonly brokenReason: string;
  /** Requests recovered from the in-flight region and not handed out yet. */
  readonly pendingResubmits: number;
  /** Where the ring resumes: the GET_VRING_BASE value (split: next avail index; packed: both positions and wrap counters). */
  readonly base: number;

  /** (Re)build views after the memory table changed; returns why the ring is no longer mapped. */
  remap(): string | undefined;
  markBroken(reason: string): void;
  /** Whether the guest has made buffers available that we have not taken. */
  hasAvailable(): boolean;
  /** Take the next available request, or -1 if none (or the ring is broken). */
  pop(): number;
  /** Gather the buffers of request `id` into `chain`: CHAIN_OK or a chain error (complete it with IOERR). */
  walk(id: number, chain: Chain): number;
  /** Return request `id` with `writtenLen` bytes written; visible to the guest at publish(). */
  push(id: number, writtenLen: number): void;
  /** Make pushed requests visible; says whether the guest wants an interrupt for them. */
  publish(): boolean;
  /** Ask the guest not to kick while we are draining the ring anyway. */
  suppressKicks(): void;
  /** Ask for kicks again; true if buffers became available meanwhile (keep draining). */
  allowKicks(): boolean;
  /** Call `done` once every request in flight now has been returned. */
  whenInFlightDone(done: () => void): void;
  /**
   * Track requests in the front-end's in-flight region (at `byteOffset` of
   * `buffer`, laid out for `descNum` descriptors), recovering what a previous
   * process left there; call once, before the first pop().
   */
  trackInflight(buffer: ArrayBuffer, byteOffset: number, descNum: number): InflightRecovery;
  /** Short description of the ring position, for logs. */
  describe(): Record<string, number>;
}
