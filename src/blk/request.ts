// virtio-blk request handling for one virtqueue: parse the chain, check the
// request against the disk, start I/O in place on guest memory, and complete it
// with a status byte. Every chain the guest makes available is completed, even
// a malformed one: with IOERR when it has a status byte, with length 0 otherwise.
import { GuestMemory } from '../memory/guest-memory';
import { IO_FLUSH, IO_READ, IO_WRITE, StorageEngine } from '../storage/engine';
import { Logger } from '../util/log';
import { CHAIN_OK, Chain, SplitQueue, chainErrorNames } from '../virtq/split';
import {
  ID_BYTES, REQUEST_HEADER_SIZE, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
} from './constants';
import { BlkCacheState, BlkDisk } from './disk';

const PHASE_IDLE = 0;
const PHASE_IO = 1;
/** Write-through: the write is done, its data sync is running. */
const PHASE_SYNC = 2;

export interface BlkQueueOptions {
  queue: SplitQueue;
  mem: GuestMemory;
  disk: BlkDisk;
  cache: BlkCacheState;
  engine: StorageEngine;
  /** Engine slot of this queue's descriptor 0; slot = slotBase + head. */
  slotBase: number;
  /** Called after used elements were pushed, so the owner can publish them. */
  onCompleted: () => void;
  log: Logger;
}

/** Counters for one queue; read by tests and, later, metrics. */
export interface BlkQueueStats {
  requests: number;
  ioErrors: number;
  unsupported: number;
  malformed: number;
}

export class BlkQueue {
  readonly stats: BlkQueueStats = { requests: 0, ioErrors: 0, unsupported: 0, malformed: 0 };
  private readonly chain = new Chain();
  private readonly header = new DataView(new ArrayBuffer(REQUEST_HEADER_SIZE));
  private readonly headerBytes = new Uint8Array(this.header.buffer);
  private readonly iov: Float64Array;
  private iovCount = 0;
  private iovBytes = 0;
  // Per-head state of requests in flight (a head is unique while in flight).
  private readonly phase: Uint8Array;
  private readonly statusAddr: Float64Array;
  private readonly op: Uint8Array;
  private readonly dataBytes: Float64Array;
  private readonly sector: Float64Array;

  constructor(private readonly o: BlkQueueOptions) {
    const size = o.queue.size;
    this.iov = new Float64Array(2 * o.engine.maxIov);
    this.phase = new Uint8Array(size);
    this.statusAddr = new Float64Array(size);
    this.op = new Uint8Array(size);
    this.dataBytes = new Float64Array(size);
    this.sector = new Float64Array(size);
  }

  /** Handle one head taken from the available ring. */
  handle(head: number): void {
    const o = this.o;
    const chain = this.chain;
    this.stats.requests++;
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
    this.readHeader();
    const type = this.header.getUint32(0, true);
    const sector = this.header.getUint32(8, true) + this.header.getUint32(12, true) * 0x100000000;
    this.sector[head] = sector;

    switch (type) {
      case VIRTIO_BLK_T_IN:
        if (chain.readableBytes !== REQUEST_HEADER_SIZE) return this.fail(head, 'read request with device-readable data');
        return this.startData(head, IO_READ, sector);
      case VIRTIO_BLK_T_OUT:
          if (chain.writableBytes !== 1) return this.fail(head, 'write request with device-writable data');
        if (o.disk.readOnly) return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
        return this.startData(head, IO_WRITE, sector);
      case VIRTIO_BLK_T_FLUSH:
        this.op[head] = IO_FLUSH;
        this.phase[head] = PHASE_IO;
        o.engine.submit(o.slotBase + head, IO_FLUSH, o.disk.fd, 0, this.iov, 0);
        return;
      case VIRTIO_BLK_T_GET_ID:
        return this.getId(head);
      default:
        this.stats.unsupported++;
        return this.complete(head, VIRTIO_BLK_S_UNSUPP, 1);
    }
  }

  /** End of a batch of handle() calls. */
  endBatch(): void {
    this.o.engine.flush();
  }

  /** Engine completion for this queue's slot `head`. */
  ioComplete(head: number, result: number): void {
    const o = this.o;
    if (result < 0) return this.ioFailed(head, 'I/O error', -result);
    if (this.phase[head] === PHASE_IO && this.op[head] !== IO_FLUSH) {
      // The engine only stops early at end of file, which bounds checks rule out
      // unless the backing store shrank underneath us.
      if (result !== this.dataBytes[head]) return this.ioFailed(head, 'short transfer', 0);
      if (this.op[head] === IO_WRITE && !o.cache.writeback) {
        // Write-through: the guest may only hear "done" once the data is durable.
        this.phase[head] = PHASE_SYNC;
        o.engine.submit(o.slotBase + head, IO_FLUSH, o.disk.fd, 0, this.iov, 0);
        return;
      }
    }
    this.complete(head, VIRTIO_BLK_S_OK, this.op[head] === IO_READ ? this.dataBytes[head] + 1 : 1);
  }

  private ioFailed(head: number, what: string, errno: number): void {
    this.o.log.warn(what, { sector: this.sector[head], errno });
    this.complete(head, VIRTIO_BLK_S_IOERR, 1);
  }

  /** Copy the 16-byte header out of the first device-readable buffers (they may be split). */
  private readHeader(): void {
    const chain = this.chain;
    const mem = this.o.mem;
    let got = 0;
    for (let i = 0; i < chain.count && got < REQUEST_HEADER_SIZE; i++) {
      const n = Math.min(chain.len[i], REQUEST_HEADER_SIZE - got);
      for (let j = 0; j < n; j++) {
        // covers() was checked at walk time; a byte may still be in another region than its neighbour.
        if (mem.access(chain.addr[i] + j, 1)) this.headerBytes[got + j] = mem.bytes[mem.offset];
      }
      got += n;
    }
  }

  /** Build host iovecs for the data part of the chain: readable bytes after the header, or writable bytes before the status. */
  private gatherData(writable: boolean): boolean {
    const chain = this.chain;
    const mem = this.o.mem;
    const iov = this.iov;
    const maxIov = this.o.engine.maxIov;
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
        iov[2 * this.iovCount] = mem.hostAddr;
        iov[2 * this.iovCount + 1] = n;
        this.iovCount++;
        addr += n;
        len -= n;
      }
    }
    return true;
  }

  private startData(head: number, op: number, sector: number): void {
    const o = this.o;
    const write = op === IO_WRITE;
    if (!this.gatherData(!write)) return this.fail(head, 'too many data segments or bad address');
    const bytes = this.iovBytes;
    const lbs = o.disk.logicalBlockSize;
    const offset = sector * SECTOR_SIZE;
    if (bytes % lbs !== 0 || offset % lbs !== 0 || sector > Number.MAX_SAFE_INTEGER / SECTOR_SIZE ||
        offset + bytes > o.disk.sizeBytes) {
      return this.complete(head, VIRTIO_BLK_S_IOERR, 1);
    }
    this.op[head] = op;
    this.dataBytes[head] = bytes;
    this.phase[head] = PHASE_IO;
    if (bytes === 0) return this.complete(head, VIRTIO_BLK_S_OK, 1);
    o.engine.submit(o.slotBase + head, op, o.disk.fd, offset, this.iov, this.iovCount);
  }

  private getId(head: number): void {
    const chain = this.chain;
    const mem = this.o.mem;
    const serial = this.o.disk.serial;
    // The id goes into the device-writable bytes before the status byte.
    let written = 0;
    for (let i = 0; i < chain.count && written < ID_BYTES; i++) {
      if (chain.writable[i] === 0) continue;
      const room = Math.min(chain.len[i], chain.writableBytes - 1 - written, ID_BYTES - written);
      for (let j = 0; j < room; j++) {
        if (!mem.access(chain.addr[i] + j, 1)) break;
        const k = written + j;
        mem.bytes[mem.offset] = k < serial.length ? serial.charCodeAt(k) & 0x7f : 0;
      }
      written += Math.max(0, room);
    }
    this.complete(head, VIRTIO_BLK_S_OK, written + 1);
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

  private complete(head: number, status: number, usedLen: number): void {
    const mem = this.o.mem;
    if (status === VIRTIO_BLK_S_IOERR) this.stats.ioErrors++;
    if (mem.access(this.statusAddr[head], 1)) mem.bytes[mem.offset] = status;
    this.phase[head] = PHASE_IDLE;
    this.o.queue.push(head, usedLen);
    this.o.onCompleted();
  }

  private returnWithoutStatus(head: number): void {
    this.o.queue.push(head, 0);
    this.o.onCompleted();
  }
}
