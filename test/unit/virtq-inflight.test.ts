// In-flight tracking of a split virtqueue over fake guest memory: what pop(),
// push() and publish() leave in the QueueRegionSplit, and what a new process
// (a new SplitQueue over the same ring and region) recovers from it, including
// from the states a crash can leave between any two of those stores.
import { strict as assert } from 'node:assert';
import {
  DESC_STATE_BYTES, INFLIGHT_VERSION, QUEUE_REGION_HEADER_BYTES, SplitInflight, inflightQueueBytes,
} from '../../src/virtq/inflight';
import { inflightRegionBytes } from '../../src/virtq/make-queue';
import { SplitQueue } from '../../src/virtq/split';
import { FakeGuest, fakeGuest, makeAvailable, writeDesc } from '../support/fake-memory';

const SIZE = 8;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const layout = { size: SIZE, descAddr: DESC, availAddr: AVAIL, usedAddr: USED };

/** A guest with SIZE one-buffer chains (head i -> buffer 0x10000 + 0x100 i) and a blank in-flight region. */
function setup(regionSize = SIZE): { g: FakeGuest; region: ArrayBuffer } {
  const g = fakeGuest(0x100000);
  for (let i = 0; i < SIZE; i++) writeDesc(g.view, DESC, i, 0x10000 + 0x100 * i, 16, 0, 0);
  return { g, region: new ArrayBuffer(inflightQueueBytes(regionSize)) };
}

/** "Start a process": a queue over the ring with SET_VRING_BASE = base, tracking in `region`. */
function start(g: FakeGuest, region: ArrayBuffer, base: number, descNum = SIZE) {
  const q = new SplitQueue(g.mem, layout, base, { eventIdx: false, indirect: false });
  // A second view of the region, for the test's reads.
  const t = new SplitInflight(region, 0, descNum);
  const recovery = q.trackInflight(region, 0, descNum);
  return { q, t, recovery };
}

/** Everything pop() hands out now, in order. */
function drain(q: SplitQueue): number[] {
  const heads: number[] = [];
  for (let h = q.pop(); h >= 0; h = q.pop()) heads.push(h);
  return heads;
}

const ringUsedIdx = (g: FakeGuest): number => g.view.getUint16(USED + 2, true);
const u16 = (region: ArrayBuffer, off: number): number => new DataView(region).getUint16(off, true);
const nextOf = (region: ArrayBuffer, head: number): number => u16(region, QUEUE_REGION_HEADER_BYTES + DESC_STATE_BYTES * head + 6);

describe('split virtqueue in-flight tracking', () => {
  it('sizes queue regions as libvhost-user does (16 * size + 2, rounded up to 64), room for the header included', () => {
    assert.equal(inflightQueueBytes(128), 2112);
    assert.equal(inflightQueueBytes(1), 64);
    assert.equal(inflightQueueBytes(1024), 16448);
    assert.equal(inflightRegionBytes(false, 4, 128), 8448);
    for (let s = 1; s <= 1024; s *= 2) assert.ok(inflightQueueBytes(s) >= QUEUE_REGION_HEADER_BYTES + DESC_STATE_BYTES * s, `size ${s}`);
  });

  it('initialises a blank region at first start and keeps SET_VRING_BASE', () => {
    const { g, region } = setup();
    g.view.setUint16(USED + 2, 5, true);
    g.view.setUint16(AVAIL + 2, 5, true);
    const { q, t, recovery } = start(g, region, 5);
    assert.equal(recovery.initialised, true);
    assert.equal(recovery.discarded, undefined);
    assert.equal(t.version, INFLIGHT_VERSION);
    assert.equal(u16(region, 10), SIZE, 'desc_num');
    assert.equal(t.usedIdx, 5, 'used_idx starts at the ring\'s, so no phantom batch is fixed up later');
    assert.equal(q.lastAvail, 5);
  });

  it('marks a head (counter, then inflight) when it is popped, before the request runs', () => {
    const { g, region } = setup();
    const { q, t } = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [3, 1]);
    assert.equal(q.pop(), 3);
    // Nothing has run yet, but a crash now must resubmit head 3.
    assert.equal(t.isInflight(3), true);
    assert.equal(t.counterOf(3), 1);
    assert.equal(t.isInflight(1), false, 'not popped yet');
    assert.equal(q.pop(), 1);
    assert.equal(t.counterOf(1), 2, 'counters grow in pop order');
  });

  it('links a batch through next/last_batch_head at push and clears it only after the used index is published', () => {
    const { g, region } = setup();
    const { q, t } = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [5, 2, 7]);
    drain(q);
    q.push(2, 1);
    q.push(7, 1);
    assert.equal(t.lastBatchHead, 7);
    assert.equal(nextOf(region, 7), 2, 'desc[7].next = previous last_batch_head');
    assert.equal(t.isInflight(2) && t.isInflight(7), true, 'not published: the guest has not seen them');
    assert.equal(t.usedIdx, 0);
    q.publish();
    assert.equal(ringUsedIdx(g), 2);
    assert.equal(t.isInflight(2) || t.isInflight(7), false, 'batch cleared');
    assert.equal(t.isInflight(5), true, 'still running');
    assert.equal(t.usedIdx, 2, 'used_idx = used ring idx');
    assert.equal(q.publish(), false);
    assert.equal(t.usedIdx, 2, 'an empty publish commits nothing');
  });

  it('publishes in the spec\'s order: used.idx with the batch still marked, then the marks cleared, then used_idx', () => {
    const { g, region } = setup();
    const { q, t } = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [1, 6]);
    drain(q);
    q.push(6, 1);
    q.push(1, 1);
    // Watch the two ordered stores of publish(): each Atomics.store is a point the
    // state must make sense at (seq-cst, so nothing before it can move after it).
    const seen: string[] = [];
    const store = Atomics.store;
    (Atomics as { store: unknown }).store = (a: Uint16Array, i: number, v: number): number => {
      if (a.buffer === region) seen.push(`used_idx=${v} marks=${+t.isInflight(1)}${+t.isInflight(6)}`);
      else if (a.buffer === g.view.buffer && i === 1) seen.push(`used.idx=${v} marks=${+t.isInflight(1)}${+t.isInflight(6)} lbh=${t.lastBatchHead}`);
      return store(a, i, v);
    };
    try {
      q.publish();
    } finally {
      (Atomics as { store: unknown }).store = store;
    }
    assert.deepEqual(seen, ['used.idx=2 marks=11 lbh=1', 'used_idx=2 marks=00']);
  });

  it('after a crash resubmits the heads still in flight, oldest counter first, exactly once, before new ones', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    // Taken in this order: counters 4->1, 2->2, 0->3, 5->4, 1->5, 3->6.
    makeAvailable(g.view, AVAIL, SIZE, [4, 2, 0, 5, 1, 3]);
    assert.deepEqual(drain(a.q), [4, 2, 0, 5, 1, 3]);
    for (const h of [2, 5, 1]) a.q.push(h, 1);
    a.q.publish();
    // The process dies. The guest queues two more requests meanwhile; QEMU 7.2
    // reconnects with SET_VRING_BASE = the used index (3).
    makeAvailable(g.view, AVAIL, SIZE, [6, 7]);
    const b = start(g, region, ringUsedIdx(g));
    assert.equal(b.recovery.initialised, false);
    assert.deepEqual([...b.recovery.heads], [4, 0, 3], 'in counter order');
    assert.equal(b.q.lastAvail, 6, 'used idx 3 + 3 in flight: the six entries taken are not taken again');
    assert.equal(b.q.pendingResubmits, 3);
    assert.deepEqual(drain(b.q), [4, 0, 3, 6, 7], 'resubmits, then only the new entries');
    assert.equal(b.t.counterOf(4), 1, 'resubmitted heads keep their counters');
    assert.equal(b.t.counterOf(6), 7, 'the counter continues after the newest recovered head');
    assert.equal(b.q.inFlight, 5);
    assert.equal(b.q.hasAvailable(), false);
  });

  it('survives a second crash in the middle of resubmission without losing or repeating a request', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [1, 2, 3, 4]);
    drain(a.q);
    a.q.push(2, 1);
    a.q.publish();
    const b = start(g, region, ringUsedIdx(g));
    assert.deepEqual(drain(b.q), [1, 3, 4]);
    b.q.push(3, 1);
    b.q.publish();
    makeAvailable(g.view, AVAIL, SIZE, [0]);
    assert.deepEqual(drain(b.q), [0]);
    // Second crash: 1 and 4 (old) and 0 (new) are still out.
    const c = start(g, region, ringUsedIdx(g));
    assert.deepEqual([...c.recovery.heads], [1, 4, 0]);
    assert.equal(c.q.lastAvail, 5);
    assert.deepEqual(drain(c.q), [1, 4, 0]);
    for (const h of [0, 1, 4]) c.q.push(h, 1);
    c.q.publish();
    assert.equal(ringUsedIdx(g), 5, 'five avail entries, five used entries: each completed once');
    const used = Array.from({ length: 5 }, (_, i) => g.view.getUint32(USED + 4 + 8 * i, true));
    assert.deepEqual([...used].sort(), [0, 1, 2, 3, 4]);
  });

  it('fixes up a batch whose used index went out before its marks were cleared', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [0, 1, 2, 3]);
    drain(a.q);
    a.q.push(1, 1);
    a.q.push(3, 1);
    // publish() dies right after its first store (the ring's used.idx): the marks of 1 and 3 are still set.
    g.view.setUint16(USED + 2, 2, true);
    assert.equal(a.t.isInflight(1) && a.t.isInflight(3), true);
    const b = start(g, region, 2);
    assert.equal(b.recovery.fixedUp, 2);
    assert.equal(b.recovery.fixedUpMarked, 2, 'both marks were still set');
    assert.deepEqual([...b.recovery.heads], [0, 2], 'the guest already has 1 and 3: not again');
    assert.equal(b.t.usedIdx, 2);
    assert.equal(b.q.lastAvail, 4);
  });

  it('fixes up a batch left half cleared', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [0, 1, 2, 3]);
    drain(a.q);
    a.q.push(0, 1);
    a.q.publish();
    a.q.push(1, 1);
    a.q.push(3, 1);
    // publish() of [1, 3] dies after the index store and the first clear (commit walks 3, then 1).
    g.view.setUint16(USED + 2, 3, true);
    new Uint8Array(region)[QUEUE_REGION_HEADER_BYTES + DESC_STATE_BYTES * 3] = 0;
    assert.equal(a.t.isInflight(1), true);
    const b = start(g, region, 3);
    assert.equal(b.recovery.fixedUp, 2, 'the batch since used_idx 1');
    assert.equal(b.recovery.fixedUpMarked, 1, 'one mark of the two was still set');
    assert.equal(b.t.isInflight(1), false);
    assert.deepEqual([...b.recovery.heads], [2]);
    assert.equal(b.q.lastAvail, 4);
  });

  it('resubmits completed-but-unpublished heads: the guest never saw them', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [6, 5]);
    drain(a.q);
    a.q.push(5, 1); // used element written and linked, used.idx not published
    const b = start(g, region, 0);
    assert.equal(b.recovery.fixedUp, 0);
    assert.deepEqual([...b.recovery.heads], [6, 5]);
    assert.equal(b.q.lastAvail, 2);
  });

  it('takes a head again from the available ring when the crash came between its counter and its mark', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [2, 4]);
    drain(a.q);
    // Undo the last store of mark(4): counter written, inflight flag not.
    new Uint8Array(region)[QUEUE_REGION_HEADER_BYTES + DESC_STATE_BYTES * 4] = 0;
    const b = start(g, region, 0);
    assert.deepEqual([...b.recovery.heads], [2]);
    assert.equal(b.q.lastAvail, 1, 'the avail entry of head 4 is taken again');
    assert.deepEqual(drain(b.q), [2, 4]);
  });

  it('keeps counter order across the 2^32 boundary of the low word', () => {
    const { g, region } = setup();
    const a = start(g, region, 0);
    makeAvailable(g.view, AVAIL, SIZE, [0]);
    drain(a.q);
    // Pretend head 0 got counter 2^32 - 1.
    const v = new DataView(region);
    v.setUint32(QUEUE_REGION_HEADER_BYTES + 8, 0xffffffff, true);
    const b = start(g, region, 0);
    assert.equal(b.t.counterOf(0), 0xffffffff);
    makeAvailable(g.view, AVAIL, SIZE, [1, 2]);
    assert.deepEqual(drain(b.q), [0, 1, 2]);
    assert.equal(b.t.counterOf(1), 2 ** 32, 'carried into the high word');
    assert.equal(b.t.counterOf(2), 2 ** 32 + 1);
    // Crash again: 1 and 2 (high word 1) must still sort after 0 (high word 0).
    v.setUint32(QUEUE_REGION_HEADER_BYTES + 8, 0xfffffffe, true);
    const c = start(g, region, 0);
    assert.deepEqual([...c.recovery.heads], [0, 1, 2]);
  });

  it('works across the 16-bit wrap of the used index', () => {
    const { g, region } = setup();
    g.view.setUint16(USED + 2, 0xfffe, true);
    g.view.setUint16(AVAIL + 2, 0xfffe, true);
    const a = start(g, region, 0xfffe);
    makeAvailable(g.view, AVAIL, SIZE, [0, 1, 2]);
    drain(a.q);
    a.q.push(0, 1);
    a.q.push(1, 1);
    g.view.setUint16(USED + 2, 0, true); // publish interrupted after the index store (0xfffe + 2 = 0)
    const b = start(g, region, 0);
    assert.equal(b.recovery.fixedUp, 2);
    assert.deepEqual([...b.recovery.heads], [2]);
    assert.equal(b.q.lastAvail, 1);
  });

  it('starts afresh, with a reason, from a region it cannot trust', () => {
    const cases: Array<[string, (region: ArrayBuffer, g: FakeGuest) => void, RegExp]> = [
      ['unknown version', (r) => new DataView(r).setUint16(8, 7, true), /version 7/],
      ['other desc_num', (r) => new DataView(r).setUint16(10, 4, true), /laid out for 4/],
      ['batch larger than the ring', (_r, g) => g.view.setUint16(USED + 2, 100, true), /ahead/],
      ['batch link out of the ring', (r, g) => {
        new DataView(r).setUint16(12, 200, true);
        g.view.setUint16(USED + 2, 1, true);
      }, /links to descriptor 200/],
    ];
    for (const [name, spoil, why] of cases) {
      const { g, region } = setup();
      const a = start(g, region, 0);
      makeAvailable(g.view, AVAIL, SIZE, [3]);
      drain(a.q);
      spoil(region, g);
      const b = start(g, region, ringUsedIdx(g));
      assert.match(b.recovery.discarded ?? '', why, name);
      assert.equal(b.recovery.initialised, true, name);
      assert.equal(b.t.isInflight(3), false, `${name}: marks cleared`);
      assert.equal(b.t.usedIdx, ringUsedIdx(g), name);
      assert.equal(b.q.lastAvail, ringUsedIdx(g), `${name}: the front-end's base is all that is left`);
    }
  });

  it('refuses a region smaller than the ring and discards marks beyond a smaller ring', () => {
    const { g } = setup();
    const q = new SplitQueue(g.mem, layout, 0, { eventIdx: false, indirect: false });
    assert.throws(() => q.trackInflight(new ArrayBuffer(inflightQueueBytes(4)), 0, 4), /4 descriptors/);
    const big = new ArrayBuffer(inflightQueueBytes(16));
    const a = start(g, big, 0, 16);
    makeAvailable(g.view, AVAIL, SIZE, [1]);
    drain(a.q);
    new Uint8Array(big)[QUEUE_REGION_HEADER_BYTES + DESC_STATE_BYTES * 12] = 1;
    const b = start(g, big, 0, 16);
    assert.match(b.recovery.discarded ?? '', /descriptor 12 .* beyond the ring/);
  });
});
