// In-flight tracking of a packed virtqueue over fake guest memory: what a new
// process (a new PackedQueue over the same ring and QueueRegionPacked) recovers
// after the previous one died with requests in flight, including in the middle
// of returning a batch, before and after the guest could see it.
import { strict as assert } from 'node:assert';
import { RangeAllocator } from '../../src/frontend/allocator';
import { PackedDriverQueue, VRING_PACKED_DESC_F_AVAIL as AVAIL, VRING_PACKED_DESC_F_USED as USED } from '../../src/frontend/packed-driver-queue';
import { CHAIN_OK, Chain } from '../../src/virtq/chain';
import { PackedQueue, packedBase } from '../../src/virtq/packed';
import { PackedInflight, packedInflightQueueBytes } from '../../src/virtq/packed-inflight';
import { FakeGuest, fakeGuest } from '../support/fake-memory';

const SIZE = 8;
const MEM = 0x100000;
const layout = { size: SIZE, descAddr: 0x1000, availAddr: 0x2000, usedAddr: 0x2100 };
const FRESH = packedBase(0, 1, 0, 1);

interface World { g: FakeGuest; d: PackedDriverQueue; region: ArrayBuffer }

function world(): World {
  const g = fakeGuest(MEM);
  const d = new PackedDriverQueue(g.bytes.buffer as ArrayBuffer, layout, { eventIdx: false, allocator: new RangeAllocator(0x10000, 0x80000) });
  d.clearRings();
  return { g, d, region: new ArrayBuffer(packedInflightQueueBytes(SIZE)) };
}

/** "Start a process": a queue over the ring with SET_VRING_BASE = base, tracking in the region. */
function start(w: World, base = FRESH) {
  const q = new PackedQueue(w.g.mem, layout, base, { eventIdx: false, indirect: true });
  const recovery = q.trackInflight(w.region, 0, SIZE);
  return { q, recovery };
}

/** A chain of `n` buffers whose first buffer's address names it. */
function add(w: World, tag: number, n: number): number {
  const id = w.d.add(Array.from({ length: n }, (_, i) => ({ addr: 0x40000 + 0x1000 * tag + 0x10 * i, len: 16, writable: i === n - 1 })));
  assert.ok(id >= 0);
  return id;
}

function popAll(q: PackedQueue): number[] {
  const ids: number[] = [];
  for (let id = q.pop(); id >= 0; id = q.pop()) ids.push(id);
  return ids;
}

/** Complete everything the queue hands out and check the driver gets exactly `expect` back. */
function serveRest(w: World, q: PackedQueue, expect: number[]): void {
  const chain = new Chain();
  const ids = popAll(q);
  for (const id of ids) {
    assert.equal(q.walk(id, chain), CHAIN_OK);
    q.push(id, 1);
  }
  q.publish();
  assert.deepEqual(w.d.reapAll().map((e) => e.id).sort(), [...expect].sort());
  assert.equal(w.d.outstanding, 0);
  assert.equal(q.base, w.d.base, 'ring positions agree after recovery');
}

/** A process that took chains of these lengths and returned those at `returned` (not published yet). */
function tookAndReturned(lengths: number[], returned: number[]): { w: World; a: ReturnType<typeof start>; ids: number[] } {
  const w = world();
  const a = start(w);
  const ids = lengths.map((n, i) => add(w, i + 1, n));
  w.d.publish();
  popAll(a.q);
  for (const i of returned) a.q.push(ids[i], 1);
  return { w, a, ids };
}

/** publish() dies after the region took the batch back, before any used flag was written. */
function dieAfterRelease(q: PackedQueue): void {
  const region = (q as unknown as { inflight: PackedInflight }).inflight;
  const release = region.release.bind(region);
  region.release = (...args) => {
    release(...args);
    throw new Error('killed');
  };
  assert.throws(() => q.publish(), /killed/);
}

describe('packed virtqueue in-flight tracking', () => {
  it('sizes queue regions as DPDK does (32-byte header and entries, rounded up to 64)', () => {
    assert.equal(packedInflightQueueBytes(128), 4160);
    assert.equal(packedInflightQueueBytes(1), 64);
    assert.equal(packedInflightQueueBytes(256), 8256);
  });

  it('initialises a blank region and keeps SET_VRING_BASE', () => {
    const w = world();
    const { q, recovery } = start(w, packedBase(3, 0, 3, 0));
    assert.equal(recovery.initialised, true);
    assert.equal(q.base, packedBase(3, 0, 3, 0));
    const t = new PackedInflight(w.region, 0, SIZE);
    assert.equal(t.version, 1);
    assert.equal(t.usedIdx, 3);
  });

  it('resubmits what was in flight, oldest first, with the buffers taken then, and resumes the ring after them', () => {
    const w = world();
    const a = start(w);
    const chain = new Chain();
    // Enough traffic first to wrap the ring once.
    for (let i = 0; i < 5; i++) {
      add(w, 0, 2);
      w.d.publish();
      for (const id of popAll(a.q)) a.q.push(id, 1);
      a.q.publish();
      w.d.reapAll();
    }
    const ids = [add(w, 1, 3), add(w, 2, 1), add(w, 3, 2), add(w, 4, 1)];
    w.d.publish();
    assert.deepEqual(popAll(a.q), ids);
    a.q.push(ids[1], 1); // the second one completes: its used element lands over the first one's head
    a.q.publish();
    assert.deepEqual(w.d.reapAll().map((e) => e.id), [ids[1]]);
    // The process dies here. QEMU's base after a crash is a guess: give it a wrong one.
    const b = start(w, FRESH);
    assert.equal(b.recovery.initialised, false);
    assert.deepEqual([...b.recovery.heads], [ids[0], ids[2], ids[3]]);
    assert.equal(b.q.pendingResubmits, 3);
    const first = b.q.pop();
    assert.equal(first, ids[0]);
    assert.equal(b.q.walk(first, chain), CHAIN_OK);
    assert.equal(chain.count, 3);
    assert.equal(chain.addr[0], 0x40000 + 0x1000 * 1, 'the copy kept in the region, not the overwritten ring slot');
    b.q.push(first, 1);
    b.q.publish();
    w.d.reapAll();
    serveRest(w, b.q, [ids[2], ids[3]]);
    // And the ring goes on normally.
    const more = add(w, 5, 2);
    w.d.publish();
    serveRest(w, b.q, [more]);
  });

  it('rolls back a batch the guest never saw: its requests run again', () => {
    const { w, a, ids } = tookAndReturned([1, 2], [0, 1]);
    // Die after the region took the batch back, before any used flag was written.
    dieAfterRelease(a.q);
    assert.equal(w.d.hasUsed(), false);
    const b = start(w);
    assert.equal(b.recovery.fixedUp, 1);
    assert.deepEqual([...b.recovery.heads], ids);
    serveRest(w, b.q, ids);
  });

  it('rolls forward a batch the guest saw: nothing runs twice', () => {
    const { w, a, ids } = tookAndReturned([1, 2, 1], [2, 0]);
    // Die after the used flags went out, before the region committed.
    const region = (a.q as unknown as { inflight: PackedInflight }).inflight;
    region.commit = () => undefined;
    a.q.publish();
    assert.deepEqual(w.d.reapAll().map((e) => e.id), [ids[2], ids[0]]);
    const b = start(w);
    assert.equal(b.recovery.fixedUp, 1);
    assert.deepEqual([...b.recovery.heads], [ids[1]]);
    serveRest(w, b.q, [ids[1]]);
  });

  it('rolling back, gives slots flagged by the dead process their available flags back, so nothing completes twice', () => {
    const { w, a, ids } = tookAndReturned([1, 1], [0, 1]);
    dieAfterRelease(a.q);
    // Flags go out last to first: the second element's was stored when the process died.
    const second = w.d.readDescriptor(1);
    w.d.writeDescriptor(1, { ...second, flags: AVAIL | USED });
    const b = start(w);
    assert.deepEqual([...b.recovery.heads], ids);
    assert.equal(w.d.readDescriptor(1).flags & (AVAIL | USED), AVAIL, 'slot 1 is available again, not used');
    // The resubmitted requests complete in the other order: the driver must see each once.
    assert.equal(b.q.pop(), ids[0]);
    assert.equal(b.q.pop(), ids[1]);
    b.q.push(ids[1], 1);
    b.q.publish();
    assert.deepEqual(w.d.reapAll().map((e) => e.id), [ids[1]]);
    b.q.push(ids[0], 1);
    b.q.publish();
    assert.deepEqual(w.d.reapAll().map((e) => e.id), [ids[0]]);
    assert.equal(w.d.unknownUsed, 0);
  });

  it('rolls forward a batch whose first slot the driver already offered again for the next lap', () => {
    const { w, a, ids } = tookAndReturned([1, 1], [0]);
    const region = (a.q as unknown as { inflight: PackedInflight }).inflight;
    region.commit = () => undefined;
    a.q.publish();
    // The driver took the element and wrote the slot for its next lap (wrap 0: AVAIL 0, USED 1).
    w.d.writeDescriptor(0, { ...w.d.readDescriptor(0), flags: USED });
    const b = start(w);
    assert.equal(b.recovery.fixedUp, 1);
    assert.deepEqual([...b.recovery.heads], [ids[1]], 'the published request is not run again');
  });

  it('discards a garbled region (loudly) instead of resubmitting garbage', () => {
    const w = world();
    const a = start(w);
    add(w, 1, 2);
    w.d.publish();
    popAll(a.q);
    const t = new PackedInflight(w.region, 0, SIZE);
    const head = [...Array(SIZE).keys()].find((e) => t.isInflight(e))!;
    new DataView(w.region).setUint16(32 + 32 * head + 6, 40, true); // num = 40 descriptors
    const b = start(w);
    assert.match(b.recovery.discarded ?? '', /has 40 descriptors/);
    assert.equal(b.recovery.initialised, true);
  });
});
