// Packed virtqueue (device side) against the packed driver of the front-end,
// both over one fake guest memory: chains, ids, wrap counters, out-of-order
// returns, indirect tables, event suppression both ways, vring base values and
// the rules a hostile driver can break.
import { strict as assert } from 'node:assert';
import {
  PackedDriverQueue, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE, availFlags,
} from '../../src/frontend/packed-driver-queue';
import { RangeAllocator } from '../../src/frontend/allocator';
import {
  CHAIN_BAD_ADDRESS, CHAIN_BAD_INDIRECT, CHAIN_NESTED_INDIRECT, CHAIN_OK, Chain,
} from '../../src/virtq/chain';
import {
  PackedQueue, VRING_DESC_F_INDIRECT as IND, VRING_DESC_F_NEXT as NEXT,
  checkPackedRingLayout, packedBase,
} from '../../src/virtq/packed';
import { DirtyLog } from '../../src/memory/dirty-log';
import { fakeGuest } from '../support/fake-memory';

const MEM = 0x100000;
const DESC = 0x1000;
const DRIVER = 0x2000;
const DEVICE = 0x2100;
const FRESH = packedBase(0, 1, 0, 1);

function setup(size = 8, opts: { eventIdx?: boolean; indirect?: boolean; base?: number } = {}) {
  const g = fakeGuest(MEM);
  const layout = { size, descAddr: DESC, availAddr: DRIVER, usedAddr: DEVICE };
  const allocator = new RangeAllocator(0x10000, MEM - 0x10000);
  const eventIdx = opts.eventIdx ?? false;
  const d = new PackedDriverQueue(g.bytes.buffer as ArrayBuffer, layout, { eventIdx, allocator });
  d.clearRings();
  const q = new PackedQueue(g.mem, layout, opts.base ?? FRESH, { eventIdx, indirect: opts.indirect ?? true });
  return { ...g, d, q, chain: new Chain(), allocator };
}

const buf = (addr: number, len: number, writable = false) => ({ addr, len, writable });

describe('packed virtqueue', () => {
  it('takes a chain by the buffer id of its last descriptor and returns it to the driver', () => {
    const { d, q, chain } = setup();
    const id = d.add([buf(0x10000, 16), buf(0x11000, 4096, true), buf(0x12000, 1, true)]);
    assert.equal(q.hasAvailable(), false, 'nothing is visible before publish');
    d.publish();
    assert.equal(q.pop(), id);
    assert.equal(q.walk(id, chain), CHAIN_OK);
    assert.deepEqual([...chain.addr.subarray(0, 3)], [0x10000, 0x11000, 0x12000]);
    assert.deepEqual([...chain.writable.subarray(0, 3)], [0, 1, 1]);
    assert.equal(chain.readableBytes, 16);
    assert.equal(chain.writableBytes, 4097);
    assert.equal(q.pop(), -1);
    q.push(id, 4097);
    assert.equal(d.hasUsed(), false, 'the used element is flagged at publish');
    assert.equal(q.publish(), true);
    assert.deepEqual(d.reapAll(), [{ id, len: 4097, known: true }]);
    assert.equal(q.inFlight, 0);
    assert.equal(q.base, packedBase(3, 1, 3, 1));
    assert.equal(d.base, q.base);
  });

  it('keeps both wrap counters through many laps with chains of 1-3 descriptors returned out of order', () => {
    const { d, q, chain } = setup(8);
    let seed = 7;
    const rand = (n: number): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
    const expected = new Map<number, number>();
    let reaped = 0;
    let added = 0;
    const held: number[] = [];
    for (let round = 0; round < 400; round++) {
      for (let k = rand(3); k >= 0; k--) {
        const n = 1 + rand(3);
        const id = d.add(Array.from({ length: n }, (_, i) => buf(0x20000 + 0x1000 * i + round, 8 + i, i === n - 1)));
        if (id < 0) break;
        expected.set(id, 0x20000 + round);
        added++;
      }
      d.publish();
      const taken: number[] = [];
      for (let id = q.pop(); id >= 0; id = q.pop()) {
        assert.equal(q.walk(id, chain), CHAIN_OK);
        assert.equal(chain.addr[0], expected.get(id), `round ${round} id ${id}`);
        taken.push(id);
      }
      // Return a random part of what is in flight, in a random order; the rest waits for a later round.
      held.push(...taken);
      held.sort(() => rand(3) - 1);
      const back = round === 399 ? held.length : rand(held.length + 1);
      for (const id of held.splice(0, back)) q.push(id, 8);
      q.publish();
      reaped += d.reapAll().filter((e) => e.known).length;
    }
    assert.equal(q.broken, false, q.brokenReason);
    assert.equal(reaped, added, 'every chain added came back once');
    assert.equal(q.inFlight, 0);
    assert.equal(d.outstanding, 0);
    assert.equal(q.base, d.base, 'device and driver agree on both positions and wrap counters');
    assert.ok(reaped > 100, `only ${reaped} chains went round`); // about 30 laps of the ring
  });

  it('driver: a chain added in a lap with wrap counter 0 does not read as used before it is published', () => {
    const { d, q } = setup(4);
    for (let i = 0; i < 4; i++) d.add([buf(0x10000, 16)]);
    d.publish();
    for (let id = q.pop(); id >= 0; id = q.pop()) q.push(id, 0);
    q.publish();
    assert.equal(d.reapAll().length, 4);
    assert.equal(d.base, packedBase(0, 0, 0, 0));
    d.add([buf(0x10000, 16)]);
    assert.equal(d.hasUsed(), false);
    assert.equal(q.hasAvailable(), false);
    d.publish();
    assert.equal(q.hasAvailable(), true);
  });

  it('walks a request taken earlier from its copy, after used elements overwrote its ring slots', () => {
    const { d, q, chain } = setup(4);
    const a = d.add([buf(0x10000, 16), buf(0x11000, 512, true), buf(0x12000, 1, true)]);
    const b = d.add([buf(0x13000, 16)]);
    d.publish();
    assert.equal(q.pop(), a);
    assert.equal(q.pop(), b);
    q.push(b, 0); // written at position 0, over a's head
    q.publish();
    assert.deepEqual(d.reapAll(), [{ id: b, len: 0, known: true }]);
    assert.equal(q.walk(a, chain), CHAIN_OK);
    assert.deepEqual([...chain.addr.subarray(0, 3)], [0x10000, 0x11000, 0x12000]);
    q.push(a, 513);
    q.publish();
    assert.deepEqual(d.reapAll(), [{ id: a, len: 513, known: true }]);
    assert.equal(q.base, d.base);
  });

  it('walks indirect tables, and refuses them when not negotiated, chained, or nested', () => {
    const { d, q, chain, allocator } = setup(8);
    const id = d.add([buf(0x10000, 16), buf(0x11000, 512, true), buf(0x12000, 1, true)], { indirect: true });
    d.publish();
    assert.equal(q.pop(), id);
    assert.equal(q.walk(id, chain), CHAIN_OK);
    assert.equal(chain.count, 3);
    assert.deepEqual([...chain.writable.subarray(0, 3)], [0, 1, 1]);

    const table = allocator.alloc(32, 16);
    const nested = allocator.alloc(16, 16);
    d.writeTable(table, [{ addr: 0x10000, len: 16, id: 0, flags: 0 }, { addr: nested, len: 16, id: 0, flags: IND }]);
    d.writeDescriptor(1, { addr: table, len: 32, id: 5, flags: IND | availFlags(1) });
    assert.equal(q.pop(), 5);
    assert.equal(q.walk(5, chain), CHAIN_NESTED_INDIRECT);
    // An indirect descriptor with NEXT is a chain of two: refused.
    d.writeDescriptor(2, { addr: table, len: 16, id: 0, flags: IND | NEXT | availFlags(1) });
    d.writeDescriptor(3, { addr: 0x10000, len: 16, id: 6, flags: availFlags(1) });
    assert.equal(q.pop(), 6);
    assert.equal(q.walk(6, chain), CHAIN_NESTED_INDIRECT);
    d.writeDescriptor(4, { addr: table, len: 24, id: 7, flags: IND | availFlags(1) });
    assert.equal(q.pop(), 7);
    assert.equal(q.walk(7, chain), CHAIN_BAD_INDIRECT, 'length not a multiple of 16');
    d.writeDescriptor(5, { addr: MEM - 8, len: 16, id: 1, flags: availFlags(1) });
    assert.equal(q.pop(), 1);
    assert.equal(q.walk(1, chain), CHAIN_BAD_ADDRESS);

    const off = setup(8, { indirect: false });
    const j = off.d.add([buf(0x10000, 16)], { indirect: true });
    off.d.publish();
    assert.equal(off.q.pop(), j);
    assert.equal(off.q.walk(j, off.chain), CHAIN_NESTED_INDIRECT);
  });

  it('breaks the ring on ids out of range or in flight, chains into unavailable slots, and chains longer than the free ring', () => {
    const cases: Array<[string, (d: PackedDriverQueue) => void, RegExp]> = [
      ['id out of range', (d) => d.writeDescriptor(0, { addr: 0x10000, len: 16, id: 8, flags: availFlags(1) }), /buffer id 8 out of range/],
      ['id twice', (d) => {
        d.writeDescriptor(0, { addr: 0x10000, len: 16, id: 3, flags: availFlags(1) });
        d.writeDescriptor(1, { addr: 0x10000, len: 16, id: 3, flags: availFlags(1) });
      }, /buffer id 3 made available again/],
      ['chain into a used slot', (d) => {
        d.writeDescriptor(1, { addr: 0x10000, len: 16, id: 0, flags: 0 });
        d.writeDescriptor(0, { addr: 0x10000, len: 16, id: 0, flags: NEXT | availFlags(1) });
      }, /continues into descriptor 1, which is not available/],
      ['chain around the whole ring', (d) => {
        for (let p = 7; p >= 0; p--) d.writeDescriptor(p, { addr: 0x10000, len: 16, id: 0, flags: NEXT | availFlags(1) });
      }, /continues into descriptor 0, which is not available/],
    ];
    for (const [name, write, reason] of cases) {
      const { d, q } = setup(8);
      write(d);
      const ids: number[] = [];
      for (let id = q.pop(); id >= 0; id = q.pop()) ids.push(id);
      assert.equal(q.broken, true, name);
      assert.match(q.brokenReason, reason, name);
      assert.equal(q.pop(), -1);
      assert.equal(q.publish(), false);
    }
    // One request in flight; then a chain of 7 that runs on into its slot, flagged for the next lap.
    const { d, q } = setup(8);
    d.writeDescriptor(0, { addr: 0x10000, len: 16, id: 0, flags: availFlags(1) });
    assert.equal(q.pop(), 0);
    for (let p = 1; p < 8; p++) d.writeDescriptor(p, { addr: 0x10000, len: 16, id: 1, flags: NEXT | availFlags(1) });
    d.writeDescriptor(0, { addr: 0x10000, len: 16, id: 1, flags: availFlags(0) });
    assert.equal(q.pop(), -1);
    assert.match(q.brokenReason, /longer than the 7 free descriptors/);
  });

  it('interrupts as the driver event suppression asks: enable, disable, and a descriptor position with EVENT_IDX', () => {
    const { d, q } = setup(8, { eventIdx: true });
    const round = (n: number): boolean => {
      for (let i = 0; i < n; i++) d.add([buf(0x10000, 16)]);
      d.publish();
      for (let id = q.pop(); id >= 0; id = q.pop()) q.push(id, 0);
      const want = q.publish();
      d.reapAll();
      return want;
    };
    d.setDriverEvent(0, RING_EVENT_FLAGS_ENABLE);
    assert.equal(round(1), true);
    d.setDriverEvent(0, RING_EVENT_FLAGS_DISABLE);
    assert.equal(round(2), false);
    // Position 6 in the first lap: the next round (3 -> 5) does not reach it, the one after (5 -> 8) does.
    d.setDriverEvent(6 | 0x8000, RING_EVENT_FLAGS_DESC);
    assert.equal(round(2), false);
    assert.equal(round(3), true);
    // The driver's own enableInterrupts(): the next used position, in the second lap now.
    assert.equal(d.enableInterrupts(), false);
    assert.equal(round(1), true);
  });

  it('suppresses kicks and asks for them again at the next position with EVENT_IDX', () => {
    const { d, q } = setup(8, { eventIdx: true });
    q.suppressKicks();
    assert.equal(d.deviceEventFlags, RING_EVENT_FLAGS_DISABLE);
    d.add([buf(0x10000, 16)]);
    assert.equal(d.publish(), false, 'no kick while suppressed');
    assert.equal(q.allowKicks(), true, 'a buffer raced in while kicks were off');
    q.pop();
    assert.equal(q.allowKicks(), false);
    assert.equal(d.deviceEventFlags, RING_EVENT_FLAGS_DESC);
    assert.equal(d.deviceEventOffWrap, 1 | 0x8000);
    d.add([buf(0x10000, 16)]);
    assert.equal(d.publish(), true, 'the driver filled the position the device waits on');
    const plain = setup(8, { eventIdx: false });
    assert.equal(plain.q.allowKicks(), false);
    assert.equal(plain.d.deviceEventFlags, RING_EVENT_FLAGS_ENABLE);
  });

  it('reads and reports the vring base with both wrap counters in bit 15 of each half', () => {
    const base = packedBase(3, 0, 3, 0);
    assert.equal(base, 0x00030003);
    const { q } = setup(8, { base });
    assert.deepEqual(q.describe(), { lastAvail: 3, availWrap: 0, usedIdx: 3, usedWrap: 0 });
    assert.equal(q.base, base);
    // Only the low half (as DPDK-style front-ends send it): used resumes where avail does.
    assert.deepEqual(setup(8, { base: 5 | 0x8000 }).q.describe(), { lastAvail: 5, availWrap: 1, usedIdx: 5, usedWrap: 1 });
    assert.throws(() => setup(8, { base: packedBase(9, 1, 0, 1) }), /beyond a ring of 8/);
    assert.throws(() => setup(8, { base: packedBase(2, 0, 1, 1) }), /more than a ring ahead/);
  });

  it('logs the pages it writes for a migration: writable buffers, used elements, the device event area', () => {
    const { d, q, mem } = setup(8, { eventIdx: true });
    const log = new DirtyLog(new ArrayBuffer(MEM / 4096 / 8));
    mem.dirtyLog = log;
    const id = d.add([buf(0x10000, 16), buf(0x21000, 0x2000, true), buf(0x30000, 1, true)], { indirect: true });
    d.publish();
    assert.equal(q.pop(), id);
    assert.equal(log.isDirty(0x21000), false, 'nothing before the request is returned');
    q.push(id, 0x2001);
    q.publish();
    for (const gpa of [0x21000, 0x22000, 0x30000, DESC]) assert.equal(log.isDirty(gpa), true, `0x${gpa.toString(16)}`);
    assert.equal(log.isDirty(0x10000), false, 'the header was only read');
    q.allowKicks();
    assert.equal(log.isDirty(DEVICE), true);
  });

  it('checks the ring layout: size, alignment, placement', () => {
    const { mem } = fakeGuest(MEM);
    const ok = { size: 8, descAddr: DESC, availAddr: DRIVER, usedAddr: DEVICE };
    assert.equal(checkPackedRingLayout(mem, ok), undefined);
    assert.match(checkPackedRingLayout(mem, { ...ok, size: 6 })!, /queue size/);
    assert.match(checkPackedRingLayout(mem, { ...ok, descAddr: DESC + 8 })!, /16-byte/);
    assert.match(checkPackedRingLayout(mem, { ...ok, availAddr: DRIVER + 2 })!, /driver event/);
    assert.match(checkPackedRingLayout(mem, { ...ok, usedAddr: MEM })!, /device event/);
  });
});
