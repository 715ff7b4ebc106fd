// Guest memory for property tests against a hostile guest: every region has its
// own ArrayBuffer (as real mappings do, so a view cannot run from one region
// into the next), followed by guard bytes that no region covers. Every range
// the back-end asks GuestMemory for is recorded, so a test can check it against
// its own idea of where the regions are, and the guards tell whether anything
// wrote past a region's end through a typed array built on the region's buffer.
import { GuestMemory, GuestRegion } from '../../src/memory/guest-memory';
import { FAKE_HOST_BASE } from './fake-memory';

/** Guard bytes after each region: a ring view or window that overran would land here. */
export const GUARD_BYTES = 4096;
const GUARD_FILL = 0xa5;
/** Host addresses of regions are this far apart, so nothing can span two of them by accident. */
export const REGION_HOST_STRIDE = 2 ** 36;

export interface RegionSpec {
  gpa: number;
  size: number;
}

export interface InstrumentedRegion extends RegionSpec {
  hostAddr: number;
  /** The region's bytes (without the guard). */
  bytes: Uint8Array;
  view: DataView;
  buffer: ArrayBuffer;
}

/** A range the back-end was allowed to touch by GuestMemory.access() or translate(). */
export interface MemoryAccess {
  kind: 'access' | 'translate';
  gpa: number;
  len: number;
}

/** GuestMemory that records every range it hands out. */
export class RecordingGuestMemory extends GuestMemory {
  readonly accesses: MemoryAccess[] = [];
  /** Off while the test itself lays out memory. */
  recording = true;

  override access(gpa: number, len: number): boolean {
    const ok = super.access(gpa, len);
    if (ok && this.recording) this.accesses.push({ kind: 'access', gpa, len });
    return ok;
  }

  override translate(gpa: number, len: number): boolean {
    const ok = super.translate(gpa, len);
    // The caller may use min(len, contiguous) bytes from here.
    if (ok && this.recording) this.accesses.push({ kind: 'translate', gpa, len: Math.min(len, this.contiguous) });
    return ok;
  }
}

export class InstrumentedGuest {
  readonly mem = new RecordingGuestMemory();
  readonly regions: InstrumentedRegion[] = [];

  /** Regions must not overlap; region i gets host address FAKE_HOST_BASE + i * REGION_HOST_STRIDE. */
  constructor(specs: readonly RegionSpec[]) {
    specs.forEach((s, i) => {
      const buffer = new ArrayBuffer(s.size + GUARD_BYTES);
      new Uint8Array(buffer, s.size).fill(GUARD_FILL);
      const bytes = new Uint8Array(buffer, 0, s.size);
      const view = new DataView(buffer, 0, s.size);
      const hostAddr = FAKE_HOST_BASE + i * REGION_HOST_STRIDE;
      const region: GuestRegion = {
        guestPhysAddr: s.gpa, size: s.size, userAddr: 0x10000000 + s.gpa, hostAddr, windows: [{ buffer, bytes, view }],
      };
      if (!this.mem.add(region)) throw new RangeError(`region ${s.gpa.toString(16)}+${s.size.toString(16)} overlaps another`);
      this.regions.push({ ...s, hostAddr, bytes, view, buffer });
    });
  }

  /** The region holding all of [gpa, gpa + len), if one does. */
  regionOf(gpa: number, len: number): InstrumentedRegion | undefined {
    return this.regions.find((r) => gpa >= r.gpa && gpa + len <= r.gpa + r.size);
  }

  /** Whether every byte of [gpa, gpa + len) is in some region (adjacent regions count as one range). */
  covers(gpa: bigint, len: bigint): boolean {
    let at = gpa;
    const end = gpa + len;
    while (at < end) {
      const r = this.regions.find((x) => at >= BigInt(x.gpa) && at < BigInt(x.gpa + x.size));
      if (r === undefined) return false;
      at = BigInt(r.gpa + r.size);
    }
    return true;
  }

  /** Bytes of [gpa, gpa + len), which the test placed inside one region. */
  at(gpa: number, len: number): Uint8Array {
    const r = this.regionOf(gpa, len);
    if (r === undefined) throw new RangeError(`test bug: ${gpa.toString(16)}+${len} is not inside one region`);
    return r.bytes.subarray(gpa - r.gpa, gpa - r.gpa + len);
  }

  /** Copy `bytes` to guest memory at `gpa`, across adjacent regions. */
  write(gpa: number, bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.length) {
      const r = this.regionOf(gpa + done, 1);
      if (r === undefined) throw new RangeError(`test bug: ${(gpa + done).toString(16)} is not guest memory`);
      const n = Math.min(bytes.length - done, r.gpa + r.size - (gpa + done));
      r.bytes.set(bytes.subarray(done, done + n), gpa + done - r.gpa);
      done += n;
    }
  }

  /** Copy of guest memory [gpa, gpa + len), across adjacent regions. */
  read(gpa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const r = this.regionOf(gpa + done, 1);
      if (r === undefined) throw new RangeError(`test bug: ${(gpa + done).toString(16)} is not guest memory`);
      const n = Math.min(len - done, r.gpa + r.size - (gpa + done));
      out.set(r.bytes.subarray(gpa + done - r.gpa, gpa + done - r.gpa + n), done);
      done += n;
    }
    return out;
  }

  viewAt(gpa: number, len: number): DataView {
    const b = this.at(gpa, len);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  /** Copy of guest memory: one array per region. */
  snapshot(): Uint8Array[] {
    return this.regions.map((r) => r.bytes.slice());
  }

  /** Guest addresses whose bytes differ from `before` (a snapshot()). */
  changedSince(before: readonly Uint8Array[]): number[] {
    const out: number[] = [];
    this.regions.forEach((r, i) => {
      const old = before[i];
      for (let j = 0; j < r.size; j++) if (r.bytes[j] !== old[j]) out.push(r.gpa + j);
    });
    return out;
  }

  /** First region whose guard bytes were written, or -1. */
  guardBroken(): number {
    return this.regions.findIndex((r) => new Uint8Array(r.buffer, r.size).some((b) => b !== GUARD_FILL));
  }

  /** Recorded accesses that are not wholly inside one region. */
  accessesOutside(): MemoryAccess[] {
    return this.mem.accesses.filter((a) => this.regionOf(a.gpa, a.len) === undefined && !(a.len === 0 && this.regionOf(a.gpa, 1)));
  }

  /** Whether a host iovec lies inside one region (as the engine would read or write it). */
  hostRangeInside(addr: number, len: number): boolean {
    return this.regions.some((r) => addr >= r.hostAddr && addr + len <= r.hostAddr + r.size);
  }
}
