// virtio-blk request handling for one virtqueue: parse the chain, check the
// request against the disk, start I/O (in place on guest memory, or through a
// bounce buffer when O_DIRECT cannot use the guest's buffers), and complete it
// with a status byte. Every chain the guest makes available is completed, even
// a malformed one: with IOERR when it has a status byte, with length 0 otherwise.
//
// Nothing here allocates per request: per-head state lives in typed arrays sized
// by the queue, multi-step requests (bounced chunks, discard segments, the data
// sync of write-through) resubmit on the same engine slot from the completion.
import { performance } from 'node:perf_hooks';
import { GuestMemory, WINDOW_OVERLAP } from '../memory/guest-memory';
import {
  IO_BLKDISCARD, IO_BLKZEROOUT, IO_FLUSH, IO_OP_NAMES, IO_PUNCH_HOLE, IO_READ, IO_WRITE, IO_ZERO_RANGE, StorageEngine,
} from '../storage/engine';
import { errnoName } from '../util/errno';
import { Logger } from '../util/log';
import { CHAIN_OK, Chain, chainErrorNames } from '../virtq/chain';
import { Virtqueue } from '../virtq/virtqueue';
import type { BounceAllocator, BounceArea } from './bounce';
import { DWZ_SEG_MAX, maxRangeSectors, offersDiscard, offersWriteZeroes } from './config';
import {
  DWZ_SEGMENT_SIZE, ID_BYTES, LIFETIME_BYTES, REQUEST_HEADER_SIZE, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './constants';
import { BlkCacheState, BlkDisk } from './disk';
import { SharedThrottle } from './throttle';
import { ThrottleLine } from './throttle-line';
import {
  KIND_NAMES, KIND_OTHER, M_BYTES_READ, M_BYTES_WRITTEN, M_IN_FLIGHT, M_IOERR, M_LATENCY_BUCKETS, M_LATENCY_SUM, M_REQUESTS,
  M_STORAGE_ERRORS, M_UNSUPP, QUEUE_METRICS_FIELDS, kindOf, latencyBucket, storageErrorSlot,
} from './queue-metrics';

const PHASE_IDLE = 0;
const PHASE_IO = 1;
/** Write-through: the write is done, its data sync is running. */
const PHASE_SYNC = 2;
/** Needs a bounce slot and all are busy: parked in the wait ring. */
const PHASE_WAIT = 3;

/** Bounce slots per queue (capped by the queue size). */
export const BOUNCE_SLOTS = 8;
/**
 * Bytes per bounce slot. A larger misaligned request goes through its slot in
 * chunks of this size, one after another, so any request works with a fixed area.
 * 1 MiB covers Linux's default largest request (1280 KiB) in two chunks.
 */
export const BOUNCE_SLOT_BYTES = 1 << 20;
const PAGE_SIZE = 4096;

export interface BlkQueueOptions {
  queue: Virtqueue;
  mem: GuestMemory;
  disk: BlkDisk;
  cache: BlkCacheState;
  engine: StorageEngine;
  /** Engine slot of this queue's descriptor 0; slot = slotBase + head. */
  slotBase: number;
  /** Called after used elements were pushed, so the owner can publish them. */
  onCompleted: () => void;
  /** Carries the context of the queue's records (export, iothread, queue): request logs add only the request's fields. */
  log: Logger;
  /** Memory for bounce buffers when disk.direct (default: a memfd mapping, blk/bounce.ts). */
  allocBounce?: BounceAllocator;
  /** This queue's counters (queue-metrics.ts layout), shared with the control plane; default: private. */
  metrics?: Float64Array;
  /** Bounce pool shape (tests shrink it to exercise chunking and waiting). */
  bounceSlots?: number;
  bounceSlotBytes?: number;
  /** The export's I/O limits, shared by all its queues on every iothread. */
  throttle?: SharedThrottle;
}

/**
 * What the queue's log throttling and tests count; the exported figures (requests by
 * type, bytes, errors, latency) are the per-queue metrics of queue-metrics.ts.
 */
export interface BlkQueueStats {
  /** Requests completed with IOERR, for any reason. */
  ioErrors: number;
  /** Of those, the ones the backing store failed (an errno or a short transfer). */
  storageErrors: number;
  unsupported: number;
  malformed: number;
  /** Data requests that went through a bounce buffer (cache=none, misaligned guest buffers). */
  bounced: number;
  /** Times a request waited for a free bounce slot. */
  bounceWaits: number;
}

/** Marks `phase[head]` for a request waiting for the I/O limits. */
const PHASE_THROTTLED = 4;

export class BlkQueue {
  readonly stats: BlkQueueStats = { ioErrors: 0, storageErrors: 0, unsupported: 0, malformed: 0, bounced: 0, bounceWaits: 0 };
  private readonly chain = new Chain();
  private readonly header = new DataView(new ArrayBuffer(REQUEST_HEADER_SIZE));
  private readonly headerBytes = new Uint8Array(this.header.buffer);
  private readonly maxIov: number;
  private readonly iov: Float64Array;
  /** Guest physical address of each iov entry (each lies within one region): bounce copies need it. */
  private readonly iovGpa: Float64Array;
  private iovCount = 0;
  private iovBytes = 0;
  /** Every iov entry meets disk.directAlignment (always true without O_DIRECT). */
  private iovAligned = true;
  private inHandle = false;

  // Per-head state of requests in flight (a head is unique while in flight).
  private readonly phase: Uint8Array;
  private readonly statusAddr: Float64Array;
  /** Request type (VIRTIO_BLK_T_*; all we accept fit in a byte). */
  private readonly type: Uint8Array;
  /** Engine op of the current step. */
  private readonly op: Uint8Array;
  private readonly dataBytes: Float64Array;
  private readonly sector: Float64Array;
  /** performance.now() when the head arrived, for the latency histogram. */
  private readonly started: Float64Array;
  /** performance.now() at the batch's first handle(), -1 between batches. */
  private batchStart = -1;
  /** Counter kind of the head's request (queue-metrics.ts). */
  private readonly kind: Uint8Array;
  private readonly metrics: Float64Array;

  // Discard / write zeroes: validated segments per head, DWZ_SEG_MAX each.
  private readonly discardOn: boolean;
  private readonly writeZeroesOn: boolean;
  private readonly maxRangeSectors: number;
  private readonly segBytes = new Uint8Array(DWZ_SEGMENT_SIZE * DWZ_SEG_MAX);
  private readonly segView = new DataView(this.segBytes.buffer);
  private readonly segOffset: Float64Array;
  private readonly segLength: Float64Array;
  private readonly segOp: Uint8Array;
  private readonly segNext: Uint8Array;
  private readonly segCount: Uint8Array;

  // Bounce pool (disk.direct only).
  private area: BounceArea | undefined;
  /** Offset of slot 0 in area.bytes (the area is rounded up to directAlignment). */
  private areaBase = 0;
  private readonly slotBytes: number;
  private readonly freeSlots: Uint16Array;
  private freeCount = 0;
  /** Bounce slot of each head, -1 when none. */
  private readonly bounceOf: Int16Array;
  /** Per slot: the guest side of its request as (gpa, len) pairs, maxIov per slot. */
  private readonly bSegs: Float64Array;
  private readonly bSegCount: Uint16Array;
  private readonly bTotal: Float64Array;
  private readonly bDone: Float64Array;
  private readonly bChunk: Float64Array;
  /** Copy cursor into bSegs: chunks are copied in order, each exactly once. */
  private readonly bCurSeg: Uint16Array;
  private readonly bCurOff: Float64Array;
  private readonly bounceIov = new Float64Array(2);
  /** Heads waiting for a bounce slot, FIFO; never more than the queue size. */
  private readonly waitRing: Uint16Array;
  /** Requests waiting for the export's I/O limits (only with limits to obey). */
  private readonly throttleLine: ThrottleLine | undefined;
  /** 1 once the head's request got through the I/O limits. */
  private readonly admitted: Uint8Array;
  private waitFirst = 0;
  private waitCount = 0;

  constructor(private readonly o: BlkQueueOptions) {
    const size = o.queue.size;
    const disk = o.disk;
    this.maxIov = o.engine.maxIov;
    this.iov = new Float64Array(2 * this.maxIov);
    this.iovGpa = new Float64Array(this.maxIov);
    this.phase = new Uint8Array(size);
    this.statusAddr = new Float64Array(size);
    this.started = new Float64Array(size);
    this.kind = new Uint8Array(size);
    this.metrics = o.metrics ?? new Float64Array(QUEUE_METRICS_FIELDS);
    this.type = new Uint8Array(size);
    this.op = new Uint8Array(size);
    this.dataBytes = new Float64Array(size);
    this.sector = new Float64Array(size);

    this.discardOn = offersDiscard(disk);
    this.writeZeroesOn = offersWriteZeroes(disk);
    this.maxRangeSectors = maxRangeSectors(disk);
    const segs = this.discardOn || this.writeZeroesOn ? size * DWZ_SEG_MAX : 0;
    this.segOffset = new Float64Array(segs);
    this.segLength = new Float64Array(segs);
    this.segOp = new Uint8Array(segs);
    this.segNext = new Uint8Array(segs === 0 ? 0 : size);
    this.segCount = new Uint8Array(segs === 0 ? 0 : size);

    this.bounceOf = new Int16Array(size).fill(-1);
    let slots = 0;
    let slotBytes = 0;
    if (disk.direct) {
      const align = disk.directAlignment;
      if (!(Number.isInteger(align) && align >= 1 && (align & (align - 1)) === 0)) {
        throw new RangeError(`direct I/O alignment must be a power of two, got ${align}`);
      }
      slots = Math.max(1, Math.min(o.bounceSlots ?? BOUNCE_SLOTS, size));
      // Slots start at multiples of the alignment, and every chunk but a request's
      // last is a whole slot, so chunk addresses, lengths and file offsets (the
      // request's, lbs-aligned, plus whole slots) stay aligned.
      slotBytes = roundUp(o.bounceSlotBytes ?? BOUNCE_SLOT_BYTES, Math.max(align, disk.logicalBlockSize, PAGE_SIZE));
      const alloc = o.allocBounce ?? defaultBounceAllocator();
      // Room to round the start up: areas are page-aligned, alignments beyond a page are not met by that.
      const area = alloc(slots * slotBytes + (align > PAGE_SIZE ? align : 0));
      this.area = area;
      this.areaBase = roundUp(area.hostAddr, align) - area.hostAddr;
    }
    this.slotBytes = slotBytes;
    this.freeSlots = new Uint16Array(slots);
    // Stack order: slot 0 is handed out first and reused most, so a queue that
    // rarely bounces touches few pages of the area.
    for (let i = 0; i < slots; i++) this.freeSlots[i] = slots - 1 - i;
    this.freeCount = slots;
    this.bSegs = new Float64Array(slots * 2 * this.maxIov);
    this.bSegCount = new Uint16Array(slots);
    this.bTotal = new Float64Array(slots);
    this.bDone = new Float64Array(slots);
    this.bChunk = new Float64Array(slots);
    this.bCurSeg = new Uint16Array(slots);
    this.bCurOff = new Float64Array(slots);
    this.waitRing = new Uint16Array(slots > 0 ? size : 0);
    this.admitted = new Uint8Array(size);
    if (o.throttle !== undefined) {
      this.throttleLine = new ThrottleLine(o.throttle, size, (head) => this.restartThrottled(head), () => this.endBatch());
    }
  }

  /** Handle one head taken from the available ring. */
  handle(head: number): void {
    // One clock read per batch: the batch's requests were all there when it began.
    if (this.batchStart < 0) this.batchStart = performance.now();
    this.started[head] = this.batchStart;
    this.admitted[head] = 0;
    this.kind[head] = KIND_OTHER;
    this.metrics[M_IN_FLIGHT]++;
    // Completions that arrive synchronously inside a submit must not start waiting
    // requests while this one still uses the shared chain.
    this.inHandle = true;
    try {
      this.process(head);
    } finally {
      this.inHandle = false;
    }
  }

  /** End of a batch of handle() calls. */
  endBatch(): void {
    this.batchStart = -1;
    if (this.waitCount > 0 && this.freeCount > 0) this.drainWaiters();
    this.o.engine.flush();
  }

  /** The ring stops or the memory changes: requests waiting for the I/O limits start now. */
  releaseWaiting(): void {
    this.throttleLine?.releaseAll();
  }

  /** A request whose turn came in the I/O limits' line: parse it again and start it. */
  private restartThrottled(head: number): void {
    this.phase[head] = PHASE_IDLE;
    this.inHandle = true;
    try {
      this.process(head);
    } finally {
      this.inHandle = false;
    }
  }

  /** Engine completion for this queue's slot `head`. */
  ioComplete(head: number, result: number): void {
    this.completion(head, result);
    if (this.waitCount > 0 && this.freeCount > 0 && !this.inHandle) this.drainWaiters();
  }

  /** Release the bounce area; only with nothing in flight. */
  close(): void {
    this.throttleLine?.close();
    const area = this.area;
    this.area = undefined;
    area?.free();
  }

  /** Parse and start one request (again, for a request that waited for a bounce slot). */
  private process(head: number): void {
    const o = this.o;
    const chain = this.chain;
    const err = o.queue.walk(head, chain);
    if (err !== CHAIN_OK) {
      this.malformed(head, chainErrorNames[err]);
      this.returnWithoutStatus(head);
      return;
    }
    // The status byte is the last byte of the last device-writable buffer.
    let last = chain.count - 1;
    while (last >= 0 && (chain.writable[last] === 0 || chain.len[last] === 0)) last--;
    if (last < 0) {
      this.malformed(head, 'no device-writable status byte');
      this.returnWithoutStatus(head);
      return;
    }
    this.statusAddr[head] = chain.addr[last] + chain.len[last] - 1;
    if (chain.misordered) return this.fail(head, 'device-readable buffer after a device-writable one');
    if (chain.readableBytes < REQUEST_HEADER_SIZE) return this.fail(head, 'request header too short');
    this.copyReadable(0, this.headerBytes, REQUEST_HEADER_SIZE);
    const type = this.header.getUint32(0, true);
    this.kind[head] = kindOf(type);
    const sector = this.header.getUint32(8, true) + this.header.getUint32(12, true) * 0x100000000;
    this.sector[head] = sector;

    switch (type) {
      case VIRTIO_BLK_T_IN:
        if (chain.readableBytes !== REQUEST_HEADER_SIZE) return this.fail(head, 'read request with device-readable data');
        return this.startData(head, VIRTIO_BLK_T_IN, IO_READ, sector);
      case VIRTIO_BLK_T_OUT:
        if (chain.writableBytes !== 1) return this.fail(head, 'write request with device-writable data');
        // virtio 1.2 5.2.6.2: IOERR for writes when VIRTIO_BLK_F_RO is offered, and write nothing.
        if (o.disk.readOnly) return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
        return this.startData(head, VIRTIO_BLK_T_OUT, IO_WRITE, sector);
      case VIRTIO_BLK_T_FLUSH:
        this.type[head] = VIRTIO_BLK_T_FLUSH;
        this.op[head] = IO_FLUSH;
        this.phase[head] = PHASE_IO;
        o.engine.submit(o.slotBase + head, IO_FLUSH, o.disk.fd, 0, this.iov, 0);
        return;
      case VIRTIO_BLK_T_GET_ID:
        return this.getId(head);
      case VIRTIO_BLK_T_GET_LIFETIME:
        return this.getLifetime(head);
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        return this.startRange(head, type);
      default:
        this.stats.unsupported++;
        return this.complete(head, VIRTIO_BLK_S_UNSUPP, 1);
    }
  }

  private completion(head: number, result: number): void {
    const phase = this.phase[head];
    if (phase !== PHASE_IO && phase !== PHASE_SYNC) {
      // An engine bug; completing the head again would hand the guest a buffer twice.
      this.o.log.error('completion for a request not in flight', { head, result });
      return;
    }
    if (result < 0) return this.storageFailed(head, -result, 0, 0);
    if (phase === PHASE_SYNC) return this.complete(head, VIRTIO_BLK_S_OK, 1);
    switch (this.type[head]) {
      case VIRTIO_BLK_T_IN:
      case VIRTIO_BLK_T_OUT:
        if (this.bounceOf[head] >= 0) return this.bounceChunkDone(head, result);
        // The engine only stops early at end of file, which bounds checks rule out
        // unless the backing store shrank underneath us.
        if (result !== this.dataBytes[head]) return this.storageFailed(head, 0, result, this.dataBytes[head]);
        return this.dataDone(head);
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        return this.segmentDone(head);
      default:
        return this.complete(head, VIRTIO_BLK_S_OK, 1);
    }
  }

  /** All data of a read or write transferred. */
  private dataDone(head: number): void {
    if (this.type[head] === VIRTIO_BLK_T_OUT && !this.o.cache.writeback) return this.sync(head);
    this.complete(head, VIRTIO_BLK_S_OK, this.type[head] === VIRTIO_BLK_T_IN ? this.dataBytes[head] + 1 : 1);
  }

  /** Write-through: the guest may only hear "done" once the data is durable. */
  private sync(head: number): void {
    const o = this.o;
    this.phase[head] = PHASE_SYNC;
    this.op[head] = IO_FLUSH;
    o.engine.submit(o.slotBase + head, IO_FLUSH, o.disk.fd, 0, this.iov, 0);
  }

  /**
   * The backing store failed the current step of a request: with `errno`, or
   * (errno 0) by moving `transferred` of `expected` bytes. The request gets
   * IOERR; its neighbours and the queue go on. Counted by cause, and logged
   * with the context of the queue's logger (export, iothread, queue).
   */
  private storageFailed(head: number, errno: number, transferred: number, expected: number): void {
    this.metrics[M_STORAGE_ERRORS + storageErrorSlot(errno)]++;
    const n = ++this.stats.storageErrors;
    // A failing or full disk fails request after request: log the first few, then
    // every power of two, so the log stays readable; `count` tells how many so far.
    if (n <= 8 || (n & (n - 1)) === 0) {
      const fields: Record<string, unknown> = {
        request: KIND_NAMES[this.kind[head]], op: IO_OP_NAMES[this.op[head]], sector: this.sector[head],
        errno: errno === 0 ? 'short' : errnoName(errno), count: n,
      };
      if (errno === 0) {
        fields.expected = expected;
        fields.transferred = transferred;
      }
      this.o.log.warn('I/O error', fields);
    }
    this.complete(head, VIRTIO_BLK_S_IOERR, 1);
  }

  /**
   * Copy `n` device-readable bytes, starting `skip` bytes into them, to `dst`.
   * Buffers may be split anywhere (and a buffer may span two regions); walk() has
   * checked every byte is guest memory. n is small (header, segments).
   */
  private copyReadable(skip: number, dst: Uint8Array, n: number): void {
    const chain = this.chain;
    const mem = this.o.mem;
    let got = 0;
    for (let i = 0; i < chain.count && got < n; i++) {
      if (chain.writable[i] === 1) continue;
      const len = chain.len[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const addr = chain.addr[i] + skip;
      const m = Math.min(len - skip, n - got);
      skip = 0;
      if (mem.access(addr, m)) {
        const bytes = mem.bytes;
        const off = mem.offset;
        for (let j = 0; j < m; j++) dst[got + j] = bytes[off + j];
      } else {
        for (let j = 0; j < m; j++) if (mem.access(addr + j, 1)) dst[got + j] = mem.bytes[mem.offset];
      }
      got += m;
    }
  }

  /** Build host iovecs for the data part of the chain: readable bytes after the header, or writable bytes before the status. */
  private gatherData(writable: boolean): boolean {
    const chain = this.chain;
    const mem = this.o.mem;
    const iov = this.iov;
    const gpas = this.iovGpa;
    const maxIov = this.maxIov;
    const direct = this.o.disk.direct;
    const align = this.o.disk.directAlignment;
    let aligned = true;
    let skip = writable ? 0 : REQUEST_HEADER_SIZE;
    let remaining = writable ? chain.writableBytes - 1 : chain.readableBytes - REQUEST_HEADER_SIZE;
    this.iovCount = 0;
    this.iovBytes = remaining;
    for (let i = 0; i < chain.count && remaining > 0; i++) {
      if ((chain.writable[i] === 1) !== writable) continue;
      let addr = chain.addr[i];
      let len = chain.len[i];
      if (skip > 0) {
        const s = Math.min(skip, len);
        addr += s;
        len -= s;
        skip -= s;
      }
      if (len > remaining) len = remaining;
      remaining -= len;
      while (len > 0) {
        if (!mem.translate(addr, len)) return false;
        if (this.iovCount >= maxIov) return false;
        const n = Math.min(len, mem.contiguous);
        const c = this.iovCount++;
        iov[2 * c] = mem.hostAddr;
        iov[2 * c + 1] = n;
        gpas[c] = addr;
        // O_DIRECT needs aligned buffer addresses and lengths (offsets are checked per request).
        if (direct && (mem.hostAddr % align !== 0 || n % align !== 0)) aligned = false;
        addr += n;
        len -= n;
      }
    }
    this.iovAligned = aligned;
    return true;
  }

  private startData(head: number, type: number, op: number, sector: number): void {
    const o = this.o;
    if (!this.gatherData(op === IO_READ)) return this.fail(head, 'too many data segments or bad address');
    const bytes = this.iovBytes;
    const lbs = o.disk.logicalBlockSize;
    const offset = sector * SECTOR_SIZE;
    if (bytes % lbs !== 0 || offset % lbs !== 0 || sector > Number.MAX_SAFE_INTEGER / SECTOR_SIZE ||
        offset + bytes > o.disk.sizeBytes) {
      return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
    }
    if (!this.admit(head, op === IO_WRITE, bytes)) return;
    this.type[head] = type;
    this.op[head] = op;
    this.dataBytes[head] = bytes;
    this.phase[head] = PHASE_IO;
    if (bytes === 0) return this.complete(head, VIRTIO_BLK_S_OK, 1);
    if (!this.iovAligned) return this.startBounce(head);
    o.engine.submit(o.slotBase + head, op, o.disk.fd, offset, this.iov, this.iovCount);
  }

  /**
   * Through the I/O limits, once per request: a request parsed again after waiting for a
   * bounce slot is not counted twice. False if it waits in line now (restartThrottled starts it).
   */
  private admit(head: number, write: boolean, bytes: number): boolean {
    if (this.throttleLine === undefined || this.admitted[head] !== 0) return true;
    if (this.throttleLine.mustWait(head, write, bytes)) {
      this.phase[head] = PHASE_THROTTLED;
      return false;
    }
    this.admitted[head] = 1;
    return true;
  }

  // --- cache=none bounce buffers -----------------------------------------------

  /** Take a bounce slot for the gathered request, or park it until one is free. */
  private startBounce(head: number): void {
    if (this.freeCount === 0) {
      // Parked requests are parsed again when a slot frees (drainWaiters): keeping
      // their buffer lists here would cost maxIov pairs per head.
      this.phase[head] = PHASE_WAIT;
      this.waitRing[(this.waitFirst + this.waitCount) % this.waitRing.length] = head;
      this.waitCount++;
      this.stats.bounceWaits++;
      return;
    }
    const b = this.freeSlots[--this.freeCount];
    this.bounceOf[head] = b;
    this.stats.bounced++;
    // The chain and iov arrays are reused by the next request: keep the guest side.
    const n = this.iovCount;
    const base = 2 * this.maxIov * b;
    const segs = this.bSegs;
    for (let i = 0; i < n; i++) {
      segs[base + 2 * i] = this.iovGpa[i];
      segs[base + 2 * i + 1] = this.iov[2 * i + 1];
    }
    this.bSegCount[b] = n;
    this.bTotal[b] = this.dataBytes[head];
    this.bDone[b] = 0;
    this.bCurSeg[b] = 0;
    this.bCurOff[b] = 0;
    this.bounceChunk(head, b);
  }

  /** Start the next chunk of a bounced request: writes copy guest data in first. */
  private bounceChunk(head: number, b: number): void {
    const o = this.o;
    const n = Math.min(this.slotBytes, this.bTotal[b] - this.bDone[b]);
    this.bChunk[b] = n;
    const op = this.op[head];
    if (op === IO_WRITE && !this.copyGuest(b, n, true)) return this.fail(head, 'guest buffer no longer mapped');
    const iov = this.bounceIov;
    iov[0] = this.area!.hostAddr + this.areaBase + b * this.slotBytes;
    iov[1] = n;
    o.engine.submit(o.slotBase + head, op, o.disk.fd, this.sector[head] * SECTOR_SIZE + this.bDone[b], iov, 1);
  }

  private bounceChunkDone(head: number, result: number): void {
    const b = this.bounceOf[head];
    const n = this.bChunk[b];
    if (result !== n) return this.storageFailed(head, 0, result, n);
    if (this.op[head] === IO_READ && !this.copyGuest(b, n, false)) return this.fail(head, 'guest buffer no longer mapped');
    this.bDone[b] += n;
    if (this.bDone[b] < this.bTotal[b]) return this.bounceChunk(head, b);
    // The data sync of write-through needs no buffer: free the slot for others now.
    this.releaseBounce(head);
    this.dataDone(head);
  }

  /**
   * Copy the next `n` bytes of slot b's request between guest memory and the slot:
   * toSlot for writes (before submitting), !toSlot for reads (after completion).
   * Each stored guest piece lies in one region; access() windows reach 1 MiB.
   */
  private copyGuest(b: number, n: number, toSlot: boolean): boolean {
    const mem = this.o.mem;
    const area = this.area!.bytes;
    const segs = this.bSegs;
    const base = 2 * this.maxIov * b;
    const count = this.bSegCount[b];
    let seg = this.bCurSeg[b];
    let off = this.bCurOff[b];
    let pos = this.areaBase + b * this.slotBytes;
    while (n > 0) {
      if (seg >= count) return false;
      const len = segs[base + 2 * seg + 1];
      const k = Math.min(len - off, n, WINDOW_OVERLAP);
      if (!mem.access(segs[base + 2 * seg] + off, k)) return false;
      // set() of a subarray is a memcpy; the view it needs is the one small object
      // made per guest piece on this (slow) path. A byte loop would allocate nothing
      // but runs 15-100x slower than the copy itself (measured on Node 20).
      if (toSlot) area.set(mem.bytes.subarray(mem.offset, mem.offset + k), pos);
      else mem.bytes.set(area.subarray(pos, pos + k), mem.offset);
      pos += k;
      n -= k;
      off += k;
      if (off === len) {
        seg++;
        off = 0;
      }
    }
    this.bCurSeg[b] = seg;
    this.bCurOff[b] = off;
    return true;
  }

  private releaseBounce(head: number): void {
    const b = this.bounceOf[head];
    if (b < 0) return;
    this.bounceOf[head] = -1;
    this.freeSlots[this.freeCount++] = b;
  }

  /** Restart parked requests while slots are free (from endBatch or a completion, never inside handle). */
  private drainWaiters(): void {
    while (this.waitCount > 0 && this.freeCount > 0) {
      const head = this.waitRing[this.waitFirst];
      this.waitFirst = (this.waitFirst + 1) % this.waitRing.length;
      this.waitCount--;
      this.phase[head] = PHASE_IDLE;
      // The head is still in flight, so its descriptors are still ours to read; they
      // are validated again like a new request.
      this.process(head);
    }
  }

  // --- discard / write zeroes ----------------------------------------------------

  private startRange(head: number, type: number): void {
    const o = this.o;
    const chain = this.chain;
    if (chain.writableBytes !== 1) return this.fail(head, 'discard/write-zeroes request with device-writable data');
    // They change the disk, so they are writes to a read-only device (5.2.6.2): IOERR,
    // like QEMU's vhost-user-blk export. Checked before support: an RO export never offers them.
    if (o.disk.readOnly) return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
    if (!(type === VIRTIO_BLK_T_DISCARD ? this.discardOn : this.writeZeroesOn)) {
      // Not offered: a request type this device does not support.
      this.stats.unsupported++;
      return this.complete(head, VIRTIO_BLK_S_UNSUPP, 1);
    }
    const dataLen = chain.readableBytes - REQUEST_HEADER_SIZE;
    if (dataLen === 0 || dataLen % DWZ_SEGMENT_SIZE !== 0) return this.fail(head, 'segment data is not a whole number of segments');
    const count = dataLen / DWZ_SEGMENT_SIZE;
    // More than max_*_seg is a driver error (5.2.6.1), hence IOERR.
    if (count > DWZ_SEG_MAX) return this.fail(head, 'too many discard/write-zeroes segments');
    // Copy once, validate the copy and act on it: the guest can change its buffers meanwhile.
    this.copyReadable(REQUEST_HEADER_SIZE, this.segBytes, dataLen);
    const v = this.segView;
    // 5.2.6.2: UNSUPP if any unknown flag is set, and for DISCARD with unmap set. A MUST
    // with no exception, so it wins over range errors in other segments.
    const badFlags = type === VIRTIO_BLK_T_DISCARD ? ~0 : ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    for (let i = 0; i < count; i++) {
      if ((v.getUint32(i * DWZ_SEGMENT_SIZE + 12, true) & badFlags) !== 0) {
        this.stats.unsupported++;
        return this.complete(head, VIRTIO_BLK_S_UNSUPP, 1);
      }
    }
    const lbs = o.disk.logicalBlockSize;
    const size = o.disk.sizeBytes;
    const file = o.disk.kind === 'file';
    const base = head * DWZ_SEG_MAX;
    let k = 0;
    let total = 0;
    for (let i = 0; i < count; i++) {
      const p = i * DWZ_SEGMENT_SIZE;
      const lo = v.getUint32(p, true);
      const hi = v.getUint32(p + 4, true);
      const num = v.getUint32(p + 8, true);
      // A bad segment fails the whole request before anything is touched. hi >= 2^12
      // means an offset of 2^53 bytes or more: beyond any disk, and beyond exact Numbers.
      if (num > this.maxRangeSectors || hi >= 0x1000) return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
      const offset = (hi * 0x100000000 + lo) * SECTOR_SIZE;
      const bytes = num * SECTOR_SIZE;
      if (offset % lbs !== 0 || bytes % lbs !== 0 || offset > size || bytes > size - offset) {
        return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
      }
      // fallocate and the ioctls reject empty ranges; there is nothing to do anyway.
      if (num === 0) continue;
      const unmap = (v.getUint32(p + 12, true) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0;
      let op: number;
      if (type === VIRTIO_BLK_T_DISCARD) op = file ? IO_PUNCH_HOLE : IO_BLKDISCARD;
      // A hole reads back as zeroes, so a file may deallocate when the guest allows it.
      else if (file) op = unmap ? IO_PUNCH_HOLE : IO_ZERO_RANGE;
      else op = IO_BLKZEROOUT;
      this.segOffset[base + k] = offset;
      this.segLength[base + k] = bytes;
      this.segOp[base + k] = op;
      total += bytes;
      k++;
    }
    // Write zeroes count against the write limits as a write of their length, discards not at
    // all: QEMU throttles blk_co_pwrite_zeroes as a write and leaves discards alone.
    if (type === VIRTIO_BLK_T_WRITE_ZEROES && k > 0 && !this.admit(head, true, total)) return;
    this.type[head] = type;
    this.segCount[head] = k;
    this.segNext[head] = 0;
    this.phase[head] = PHASE_IO;
    if (k === 0) return this.complete(head, VIRTIO_BLK_S_OK, 1);
    this.submitSegment(head);
  }

  /** Segments run one after another on the head's slot: no per-segment state to allocate. */
  private submitSegment(head: number): void {
    const o = this.o;
    const i = head * DWZ_SEG_MAX + this.segNext[head];
    const op = this.segOp[i];
    this.op[head] = op;
    o.engine.submitRange(o.slotBase + head, op, o.disk.fd, this.segOffset[i], this.segLength[i]);
  }

  private segmentDone(head: number): void {
    if (++this.segNext[head] < this.segCount[head]) return this.submitSegment(head);
    // Written zeroes are data like any write: durable before completion in write-through.
    if (this.type[head] === VIRTIO_BLK_T_WRITE_ZEROES && !this.o.cache.writeback) return this.sync(head);
    this.complete(head, VIRTIO_BLK_S_OK, 1);
  }

  // --- the rest -------------------------------------------------------------------

  private getId(head: number): void {
    const serial = this.o.disk.serial;
    // The id goes into the device-writable bytes before the status byte, NUL-padded to 20.
    const written = this.writeDeviceBytes(ID_BYTES, (k) => (k < serial.length ? serial.charCodeAt(k) & 0x7f : 0));
    this.complete(head, VIRTIO_BLK_S_OK, written + 1);
  }

  private getLifetime(head: number): void {
    const life = this.o.disk.lifetime;
    if (life === undefined) {
      // Not offered: a request type this device does not support.
      this.stats.unsupported++;
      return this.complete(head, VIRTIO_BLK_S_UNSUPP, 1);
    }
    const chain = this.chain;
    if (chain.readableBytes !== REQUEST_HEADER_SIZE) return this.fail(head, 'get-lifetime request with device-readable data');
    if (chain.writableBytes < LIFETIME_BYTES + 1) return this.fail(head, 'get-lifetime buffer shorter than struct virtio_blk_lifetime');
    // Three le16 fields; every value fits in the low byte.
    const written = this.writeDeviceBytes(LIFETIME_BYTES, (k) => (k === 0 ? life.preEolInfo : k === 2 ? life.estTypA : k === 4 ? life.estTypB : 0));
    if (written < LIFETIME_BYTES) return this.fail(head, 'get-lifetime buffer outside guest memory');
    this.complete(head, VIRTIO_BLK_S_OK, written + 1);
  }

  /**
   * Writes byteAt(0..max-1) into the chain's device-writable buffers, before the status
   * byte; returns how many bytes landed (fewer if the buffers are shorter or a byte lies
   * outside guest memory). Control requests only: byteAt is a closure.
   */
  private writeDeviceBytes(max: number, byteAt: (k: number) => number): number {
    const chain = this.chain;
    const mem = this.o.mem;
    let written = 0;
    for (let i = 0; i < chain.count && written < max; i++) {
      if (chain.writable[i] === 0) continue;
      const room = Math.min(chain.len[i], chain.writableBytes - 1 - written, max - written);
      for (let j = 0; j < room; j++) {
        if (!mem.access(chain.addr[i] + j, 1)) return written + j;
        mem.bytes[mem.offset] = byteAt(written + j);
      }
      written += Math.max(0, room);
    }
    return written;
  }

  private fail(head: number, why: string): void {
    this.malformed(head, why);
    this.complete(head, VIRTIO_BLK_S_IOERR, 1);
  }

  private malformed(head: number, why: string): void {
    const n = ++this.stats.malformed;
    // Log the first few and then every power of two: a hostile guest must not flood the log.
    if (n <= 8 || (n & (n - 1)) === 0) this.o.log.warn('malformed request', { head, reason: why, count: n });
  }

  /** Count a finished request: by kind, bytes moved, status, latency. */
  private account(head: number, status: number): void {
    const m = this.metrics;
    const kind = this.kind[head];
    m[M_REQUESTS + kind]++;
    m[M_IN_FLIGHT]--;
    if (status === VIRTIO_BLK_S_OK) {
      if (kind === 0) m[M_BYTES_READ] += this.dataBytes[head];
      else if (kind === 1) m[M_BYTES_WRITTEN] += this.dataBytes[head];
    } else if (status === VIRTIO_BLK_S_UNSUPP) {
      m[M_UNSUPP]++;
    } else {
      m[M_IOERR]++;
    }
    const seconds = (performance.now() - this.started[head]) / 1000;
    m[M_LATENCY_SUM] += seconds;
    m[M_LATENCY_BUCKETS + latencyBucket(seconds)]++;
  }

  private complete(head: number, status: number, usedLen: number): void {
    const mem = this.o.mem;
    this.account(head, status);
    if (status === VIRTIO_BLK_S_IOERR) this.stats.ioErrors++;
    // Error paths of bounced requests end here with their slot still taken.
    this.releaseBounce(head);
    if (mem.access(this.statusAddr[head], 1)) mem.bytes[mem.offset] = status;
    this.phase[head] = PHASE_IDLE;
    this.o.queue.push(head, usedLen);
    this.o.onCompleted();
  }

  private returnWithoutStatus(head: number): void {
    this.account(head, VIRTIO_BLK_S_IOERR);
    this.releaseBounce(head);
    this.phase[head] = PHASE_IDLE;
    this.o.queue.push(head, 0);
    this.o.onCompleted();
  }
}

function roundUp(n: number, align: number): number {
  const r = n % align;
  return r === 0 ? n : n + (align - r);
}

/** The memfd-backed allocator, loaded only by queues that need it. */
function defaultBounceAllocator(): BounceAllocator {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return (require('./bounce') as typeof import('./bounce')).mapBounceArea;
}
