// A reference model of what a virtio-blk device must do with one descriptor
// chain, written from the virtio 1.2 spec (§2.7.5 descriptors, §2.7.5.3
// indirect tables, §5.2.6 requests) rather than from src/. The hostile-guest
// property compares the back-end against it. Where the spec leaves a choice,
// the model follows the back-end's documented policy and says so.
//
// Addresses are bigint: a hostile guest can name any u64, and the model must
// not round them the way the back-end's Numbers would.
import { DWZ_SEG_MAX, maxRangeSectors, offersDiscard, offersWriteZeroes } from '../../src/blk/config';
import {
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/blk/constants';
import { BlkCacheState, BlkDisk } from '../../src/blk/disk';
import { InstrumentedGuest } from '../support/instrumented-memory';

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

/** Back-end policy: an indirect table holds at most this many descriptors (QEMU's VIRTQUEUE_MAX_SIZE). */
const MAX_INDIRECT = 1024;
/** Addresses from 2^53 up cannot be guest memory of this back-end: refused whatever the length. */
const ADDR_LIMIT = 2n ** 53n;

export interface ModelBuf { addr: bigint; len: number; write: boolean }
/** A guest-physical byte range the device reads (descriptor entries, tables). */
export interface Range { start: bigint; end: bigint }

export interface ModelChain {
  ok: boolean;
  why: string;
  bufs: ModelBuf[];
  /** Descriptor entries and readable buffers the device reads while walking. */
  reads: Range[];
}

interface RawDesc { addr: bigint; len: number; flags: number; next: number }

function readDesc(g: InstrumentedGuest, at: bigint): RawDesc | undefined {
  const r = g.regionOf(Number(at), 16);
  if (r === undefined) return undefined;
  const v = g.viewAt(Number(at), 16);
  return {
    addr: v.getBigUint64(0, true), len: v.getUint32(8, true), flags: v.getUint16(12, true), next: v.getUint16(14, true),
  };
}

/** Walk the chain at `head` in the guest's memory as it is now. */
export function modelWalk(g: InstrumentedGuest, descAddr: number, size: number, head: number, indirectOn: boolean): ModelChain {
  const c: ModelChain = { ok: false, why: '', bufs: [], reads: [] };
  const bad = (why: string): ModelChain => ({ ...c, why });
  if (head >= size) return bad('head out of range');
  let table = BigInt(descAddr);
  let tableLen = size;
  let inIndirect = false;
  let i = head;
  let steps = 0;
  for (;;) {
    // Without a loop a chain visits each descriptor of its table at most once.
    if (++steps > tableLen) return bad('loop');
    const at = table + BigInt(16 * i);
    const d = readDesc(g, at);
    if (d === undefined) return bad('descriptor unreadable'); // cannot happen: tables are checked before use
    c.reads.push({ start: at, end: at + 16n });
    if (d.addr >= ADDR_LIMIT) return bad('address beyond 2^53');
    if (d.flags & F_INDIRECT) {
      // §2.7.5.3.1: only without NEXT, never inside a table, and only if negotiated;
      // a table is a whole chain, so only the first descriptor may refer to one.
      if (inIndirect || !indirectOn || steps !== 1 || (d.flags & F_NEXT)) return bad('misplaced indirect');
      if (d.len === 0 || d.len % 16 !== 0 || d.len / 16 > MAX_INDIRECT) return bad('indirect length');
      // Back-end policy: a table must lie within one memory region (it is read through one view).
      if (g.regionOf(Number(d.addr), d.len) === undefined) return bad('indirect table outside one region');
      table = d.addr;
      tableLen = d.len / 16;
      inIndirect = true;
      steps = 0;
      i = 0;
      continue;
    }
    // A zero-length buffer names no memory, so its address does not matter.
    if (d.len > 0 && !g.covers(d.addr, BigInt(d.len))) return bad('buffer outside memory');
    c.bufs.push({ addr: d.addr, len: d.len, write: (d.flags & F_WRITE) !== 0 });
    if (!(d.flags & F_WRITE) && d.len > 0) c.reads.push({ start: d.addr, end: d.addr + BigInt(d.len) });
    if (!(d.flags & F_NEXT)) return { ...c, ok: true };
    if (d.next >= tableLen) return bad('next out of range');
    i = d.next;
  }
}

/** What the device may answer for a chain the model walked successfully. */
export interface Expectation {
  /** No device-writable byte for a status: the chain comes back with used length 0 and nothing written. */
  noStatus: boolean;
  statusAddr: bigint;
  /** Status values the device may write, each with the used length that must go with it. */
  allowed: Map<number, number>;
  /** Device-writable ranges (where it may write at all). */
  writable: Range[];
}

export interface DeviceModel {
  g: InstrumentedGuest;
  disk: BlkDisk;
  cache: BlkCacheState;
  maxIov: number;
  /** Engine errors were injected: any request that reaches the engine may fail with IOERR. */
  engineMayFail: boolean;
}

const SECTOR = 512n;

/** Bytes of [addr, addr+len) split at region boundaries: how many pieces (iovecs) they take. */
function pieces(g: InstrumentedGuest, addr: bigint, len: number): number {
  let n = 0;
  let at = addr;
  const end = addr + BigInt(len);
  while (at < end) {
    const r = g.regions.find((x) => at >= BigInt(x.gpa) && at < BigInt(x.gpa + x.size));
    if (r === undefined) return n; // walk() already refused such a buffer
    n++;
    at = BigInt(r.gpa + r.size);
  }
  return n;
}

/** Concatenated device-readable bytes [skip, skip + n). */
function readable(g: InstrumentedGuest, bufs: ModelBuf[], skip: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let got = 0;
  for (const b of bufs) {
    if (b.write || got >= n) continue;
    for (let j = 0; j < b.len && got < n; j++) {
      if (skip > 0) { skip--; continue; }
      const a = Number(b.addr) + j;
      out[got++] = g.at(a, 1)[0];
    }
  }
  return out;
}

/** Data iovecs of a read (writable bytes before the status) or write (readable bytes after the header). */
function dataPieces(g: InstrumentedGuest, bufs: ModelBuf[], write: boolean, skip: number, total: number): number {
  let n = 0;
  let remaining = total;
  for (const b of bufs) {
    if (b.write !== write || remaining <= 0) continue;
    let addr = b.addr;
    let len = b.len;
    const s = Math.min(skip, len);
    addr += BigInt(s);
    len -= s;
    skip -= s;
    len = Math.min(len, remaining);
    remaining -= len;
    n += pieces(g, addr, len);
  }
  return n;
}

export function expectFor(m: DeviceModel, chain: ModelChain): Expectation {
  const bufs = chain.bufs;
  const writable: Range[] = bufs.filter((b) => b.write && b.len > 0).map((b) => ({ start: b.addr, end: b.addr + BigInt(b.len) }));
  // §5.2.6: the status is the last byte the driver lets the device write.
  const last = [...bufs].reverse().find((b) => b.write && b.len > 0);
  const allowed = new Map<number, number>();
  if (last === undefined) return { noStatus: true, statusAddr: -1n, allowed, writable };
  const statusAddr = last.addr + BigInt(last.len) - 1n;
  const e: Expectation = { noStatus: false, statusAddr, allowed, writable };
  const ioerr = (): Expectation => { allowed.set(VIRTIO_BLK_S_IOERR, 1); return e; };
  const unsupp = (): Expectation => { allowed.set(VIRTIO_BLK_S_UNSUPP, 1); return e; };
  const ok = (usedLen: number, reachesEngine: boolean): Expectation => {
    allowed.set(VIRTIO_BLK_S_OK, usedLen);
    if (reachesEngine && m.engineMayFail) allowed.set(VIRTIO_BLK_S_IOERR, 1);
    return e;
  };

  let readBytes = 0;
  let writeBytes = 0;
  let misordered = false;
  for (const b of bufs) {
    if (b.write) writeBytes += b.len;
    else {
      readBytes += b.len;
      // §2.7.4.2: readable descriptors come first. Back-end policy: an empty
      // writable descriptor holds nothing, so only writable bytes count.
      if (writeBytes > 0) misordered = true;
    }
  }
  if (misordered || readBytes < 16) return ioerr();
  const hdr = new DataView(readable(m.g, bufs, 0, 16).buffer);
  const type = hdr.getUint32(0, true);
  const sector = hdr.getBigUint64(8, true);
  const disk = m.disk;
  const lbs = BigInt(disk.logicalBlockSize);
  const size = BigInt(disk.sizeBytes);
  const inRange = (offset: bigint, bytes: bigint): boolean =>
    bytes % lbs === 0n && offset % lbs === 0n && offset + bytes <= size;

  switch (type) {
    case VIRTIO_BLK_T_IN: {
      if (readBytes !== 16) return ioerr();
      const data = writeBytes - 1;
      if (dataPieces(m.g, bufs, true, 0, data) > m.maxIov) return ioerr();
      if (!inRange(sector * SECTOR, BigInt(data))) return ioerr();
      return ok(writeBytes, data > 0);
    }
    case VIRTIO_BLK_T_OUT: {
      if (writeBytes !== 1 || disk.readOnly) return ioerr();
      const data = readBytes - 16;
      if (dataPieces(m.g, bufs, false, 16, data) > m.maxIov) return ioerr();
      if (!inRange(sector * SECTOR, BigInt(data))) return ioerr();
      return ok(1, data > 0);
    }
    case VIRTIO_BLK_T_FLUSH:
      return ok(1, true);
    case VIRTIO_BLK_T_GET_ID:
      return ok(Math.min(20, writeBytes - 1) + 1, false);
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      // §5.2.6.2: writes to a read-only device fail; operations not offered are unsupported.
      if (writeBytes !== 1 || disk.readOnly) return ioerr();
      if (!(type === VIRTIO_BLK_T_DISCARD ? offersDiscard(disk) : offersWriteZeroes(disk))) return unsupp();
      const dataLen = readBytes - 16;
      if (dataLen === 0 || dataLen % 16 !== 0 || dataLen / 16 > DWZ_SEG_MAX) return ioerr();
      const segs = new DataView(readable(m.g, bufs, 16, dataLen).buffer);
      const count = dataLen / 16;
      const badFlags = type === VIRTIO_BLK_T_DISCARD ? 0xffffffff : 0xfffffffe;
      for (let i = 0; i < count; i++) if ((segs.getUint32(16 * i + 12, true) & badFlags) !== 0) return unsupp();
      let work = false;
      for (let i = 0; i < count; i++) {
        const s = segs.getBigUint64(16 * i, true);
        const num = segs.getUint32(16 * i + 8, true);
        if (num > maxRangeSectors(disk) || !inRange(s * SECTOR, BigInt(num) * SECTOR)) return ioerr();
        if (num > 0) work = true;
      }
      return ok(1, work);
    }
    default:
      return unsupp();
  }
}

/** Request type in the chain's header, if it has 16 device-readable bytes. */
export function requestType(g: InstrumentedGuest, chain: ModelChain): number | undefined {
  if (chain.bufs.filter((b) => !b.write).reduce((n, b) => n + b.len, 0) < 16) return undefined;
  return new DataView(readable(g, chain.bufs, 0, 16).buffer).getUint32(0, true);
}

const TYPE_NAMES: Record<number, string> = {
  [VIRTIO_BLK_T_IN]: 'IN', [VIRTIO_BLK_T_OUT]: 'OUT', [VIRTIO_BLK_T_FLUSH]: 'FLUSH', [VIRTIO_BLK_T_GET_ID]: 'GET_ID',
  [VIRTIO_BLK_T_DISCARD]: 'DISCARD', [VIRTIO_BLK_T_WRITE_ZEROES]: 'WRITE_ZEROES',
};

export function typeName(type: number | undefined): string {
  return type === undefined ? 'short' : TYPE_NAMES[type] ?? 'other';
}

export function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

export const STATUS_NAMES: Record<number, string> = { [VIRTIO_BLK_S_OK]: 'OK', [VIRTIO_BLK_S_IOERR]: 'IOERR', [VIRTIO_BLK_S_UNSUPP]: 'UNSUPP' };
export { VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES };
