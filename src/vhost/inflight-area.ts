// The in-flight region of one connection (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD):
// a memfd that the back-end creates for GET_INFLIGHT_FD and the front-end keeps
// and hands back with SET_INFLIGHT_FD, after a reconnect to a new back-end
// process too. This module owns the fd and its mapping in this process; the
// iothreads reach each queue's part by host address (dataplane RingConfig), as
// they reach guest memory. The layout inside is virtq/inflight.ts's.
import * as fs from 'node:fs';
import type { InflightPayload } from '../../protocol';
import type { InflightQueueRegion } from '../dataplane/dataplane';
import { native } from '../native/addon';
import { MAX_QUEUE_SIZE } from '../virtq/chain';
import { INFLIGHT_VERSION, QUEUE_REGION_DESC_NUM_OFFSET, QUEUE_REGION_VERSION_OFFSET } from '../virtq/inflight';
import { inflightBytesFor, inflightRegionBytes } from '../virtq/make-queue';
import { SharedMapping, mapSharedRange } from './shared-fd';

/** Why an area cannot be built; the message is meant for the log. */
export class InflightAreaError extends Error {}

function fail(message: string): never {
  throw new InflightAreaError(message);
}

/** Queue count and size as GET/SET_INFLIGHT_FD carry them, checked against what the device offers. */
function checkShape(numQueues: number, queueSize: number, maxQueues: number): void {
  if (!(numQueues >= 1 && numQueues <= maxQueues)) fail(`${numQueues} queues asked for, the device has 1..${maxQueues}`);
  if (!(queueSize >= 1 && queueSize <= MAX_QUEUE_SIZE && (queueSize & (queueSize - 1)) === 0)) {
    fail(`queue size ${queueSize} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
  }
}

export class InflightArea {
  private closed = false;

  private constructor(
    /** The memfd (ours from GET, or the front-end's from SET); kept open while the area lives. */
    readonly fd: number,
    private readonly mapAddr: number,
    private readonly mapLength: number,
    /** Host address of queue 0's region. */
    readonly hostAddr: number,
    readonly numQueues: number,
    readonly queueSize: number,
    /** What GET_INFLIGHT_FD answers (mmap size and offset in the fd). */
    readonly mmapSize: number,
    readonly mmapOffset: number,
    /** Regions in the packed layout (VIRTIO_F_RING_PACKED negotiated), else the split one; the version and size sit alike in both. */
    readonly packed: boolean,
  ) {}

  /** GET_INFLIGHT_FD: a zero-filled memfd for `numQueues` regions of `queueSize` descriptors, mapped here. */
  static create(numQueues: number, queueSize: number, maxQueues: number, packed: boolean): InflightArea {
    checkShape(numQueues, queueSize, maxQueues);
    const size = inflightRegionBytes(packed, numQueues, queueSize);
    const fd = native.memfdCreate('vublk-inflight');
    try {
      // A new memfd reads as zeros: every queue region starts blank (version 0).
      fs.ftruncateSync(fd, size);
      const addr = native.mmap(fd, size, 0, true);
      const area = new InflightArea(fd, addr, size, addr, numQueues, queueSize, size, 0, packed);
      area.writeDescNums();
      return area;
    } catch (e) {
      native.close(fd);
      if (e instanceof InflightAreaError) throw e;
      fail(`cannot create the in-flight region: ${(e as Error).message}`);
    }
  }

  /**
   * SET_INFLIGHT_FD: map the region the front-end kept. Ownership of `fd` passes
   * here (closed on failure). Sizes are checked against the fd: touching a
   * mapping beyond the end of its file kills the process with SIGBUS.
   */
  static adopt(fd: number, p: InflightPayload, maxQueues: number, packed: boolean): InflightArea {
    let addr = -1;
    let length = 0;
    try {
      checkShape(p.numQueues, p.queueSize, maxQueues);
      const needed = inflightRegionBytes(packed, p.numQueues, p.queueSize);
      if (p.mmapSize < needed) {
        fail(`mmap_size ${p.mmapSize} is less than the ${needed} bytes ${p.numQueues} queues of ${p.queueSize} need`);
      }
      // The u64 counters are read as aligned u32 pairs.
      if (p.mmapOffset % 8 !== 0) fail(`mmap_offset ${p.mmapOffset} is not 8-byte aligned`);
      // The whole declared range must be in the file; only the queue regions we use are mapped.
      let m: SharedMapping;
      try {
        m = mapSharedRange(fd, p.mmapOffset, needed, 'in-flight region', p.mmapSize);
      } catch (e) {
        fail((e as Error).message);
      }
      addr = m.mapAddr;
      length = m.mapLength;
      const area = new InflightArea(fd, addr, length, m.hostAddr, p.numQueues, p.queueSize, p.mmapSize, p.mmapOffset, packed);
      area.checkQueues();
      return area;
    } catch (e) {
      if (addr >= 0) native.munmap(addr, length);
      native.close(fd);
      throw e;
    }
  }

  /** Bytes between consecutive queue regions. */
  get stride(): number { return inflightBytesFor(this.packed, this.queueSize); }

  /** Queue `index`'s region for an iothread, or undefined for a queue the region does not cover. */
  queueRegion(index: number): InflightQueueRegion | undefined {
    if (this.closed || index >= this.numQueues) return undefined;
    return { hostAddr: this.hostAddr + index * this.stride, queueSize: this.queueSize };
  }

  /** The reply to GET_INFLIGHT_FD (its fd is `fd`). */
  payload(): InflightPayload {
    return { kind: 'inflight', mmapSize: this.mmapSize, mmapOffset: this.mmapOffset, numQueues: this.numQueues, queueSize: this.queueSize };
  }

  /** Unmap and close; only once no ring uses the region (iothreads detached their views). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.munmap(this.mapAddr, this.mapLength);
    native.close(this.fd);
  }

  /** Each queue's header names its size (libvhost-user writes it too; recovery checks it). */
  private writeDescNums(): void {
    this.withHeaders((view, at) => view.setUint16(at + QUEUE_REGION_DESC_NUM_OFFSET, this.queueSize, true));
  }

  /**
   * A region handed back must have been laid out for this queue size: a region
   * of another shape would make us read marks from the wrong places. Blank queue
   * regions (version 0, never started) get their size written.
   */
  private checkQueues(): void {
    this.withHeaders((view, at, q) => {
      const version = view.getUint16(at + QUEUE_REGION_VERSION_OFFSET, true);
      const descNum = view.getUint16(at + QUEUE_REGION_DESC_NUM_OFFSET, true);
      if (version === 0) {
        view.setUint16(at + QUEUE_REGION_DESC_NUM_OFFSET, this.queueSize, true);
      } else if (version !== INFLIGHT_VERSION) {
        fail(`queue ${q}'s region has version ${version}, this back-end knows ${INFLIGHT_VERSION}`);
      } else if (descNum !== this.queueSize) {
        fail(`queue ${q}'s region was laid out for ${descNum} descriptors, the message says ${this.queueSize}`);
      }
    });
  }

  /** Visit each queue header through a temporary view (control path; detached before returning). */
  private withHeaders(visit: (view: DataView, offset: number, queue: number) => void): void {
    const buffer = native.arrayBuffer(this.hostAddr, this.numQueues * this.stride);
    try {
      const view = new DataView(buffer);
      for (let q = 0; q < this.numQueues; q++) visit(view, q * this.stride, q);
    } finally {
      native.detach(buffer);
    }
  }
}
