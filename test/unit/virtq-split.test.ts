import { strict as assert } from 'node:assert';
import { GuestMemory, GuestRegion } from '../../src/memory/guest-memory';
import {
  CHAIN_BAD_ADDRESS, CHAIN_BAD_HEAD, CHAIN_BAD_INDIRECT, CHAIN_BAD_NEXT, CHAIN_NESTED_INDIRECT, CHAIN_OK,
  CHAIN_TOO_LONG, Chain, SplitQueue, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT as IND,
  VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE, VRING_USED_F_NO_NOTIFY, checkRingLayout,
} from '../../src/virtq/split';
import { fakeGuest, makeAvailable, writeDesc } from '../support/fake-memory';

const SIZE = 8;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;
const MEM = 0x100000;
const layout = { size: SIZE, descAddr: DESC, availAddr: AVAIL, usedAddr: USED };

function setup(opts: { eventIdx?: boolean; indirect?: boolean } = {}) {
  const g = fakeGuest(MEM);
  const q = new SplitQueue(g.mem, layout, 0, { eventIdx: opts.eventIdx ?? false, indirect: opts.indirect ?? true });
  return { ...g, q, chain: new Chain() };
}

describe('split virtqueue', () => {
  it('walks a direct chain in order with directions and totals', () => {
    const { view, q, chain } = setup();
    writeDesc(view, DESC, 0, 0x10000, 16, NEXT, 3);
    writeDesc(view, DESC, 3, 0x11000, 4096, NEXT | WRITE, 5);
    writeDesc(view, DESC, 5, 0x12000, 1, WRITE, 0);
    makeAvailable(view, AVAIL, SIZE, [0]);
    const head = q.pop();
    assert.equal(head, 0);
    assert.equal(q.walk(head, chain), CHAIN_OK);
    assert.equal(chain.count, 3);
    assert.deepEqual([...chain.addr.subarray(0, 3)], [0x10000, 0x11000, 0x12000]);
    assert.deepEqual([...chain.len.subarray(0, 3)], [16, 4096, 1]);
    assert.deepEqual([...chain.writable.subarray(0, 3)], [0, 1, 1]);
    assert.equal(chain.readableBytes, 16);
    assert.equal(chain.writableBytes, 4097);
    assert.equal(chain.misordered, false);
    assert.equal(q.pop(), -1);
  });

  it('ends a descriptor loop with CHAIN_TOO_LONG', () => {
    const { view, q, chain } = setup();
    writeDesc(view, DESC, 0, 0x10000, 16, NEXT, 1);
    writeDesc(view, DESC, 1, 0x10000, 16, NEXT, 0);
    assert.equal(q.walk(0, chain), CHAIN_TOO_LONG);
    writeDesc(view, DESC, 2, 0x10000, 16, NEXT, 2); // self-loop
    assert.equal(q.walk(2, chain), CHAIN_TOO_LONG);
  });

  it('rejects buffers outside guest memory, straddling its end, or beyond 2^53', () => {
    const { view, q, chain } = setup();
    writeDesc(view, DESC, 0, MEM, 1, 0, 0);
    assert.equal(q.walk(0, chain), CHAIN_BAD_ADDRESS);
    writeDesc(view, DESC, 0, MEM - 8, 16, 0, 0);
    assert.equal(q.walk(0, chain), CHAIN_BAD_ADDRESS);
    writeDesc(view, DESC, 0, 0x10000, 0xffffffff, WRITE, 0);
    assert.equal(q.walk(0, chain), CHAIN_BAD_ADDRESS);
    writeDesc(view, DESC, 0, 2 ** 53, 16, 0, 0);
    assert.equal(q.walk(0, chain), CHAIN_BAD_ADDRESS);
    view.setUint32(DESC + 4, 0xffffffff, true); // address 0xffffffff_xxxxxxxx
    assert.equal(q.walk(0, chain), CHAIN_BAD_ADDRESS);
  });

  it('rejects heads and next indices beyond the queue', () => {
    const { view, q, chain } = setup();
    assert.equal(q.walk(SIZE, chain), CHAIN_BAD_HEAD);
    assert.equal(q.walk(0xffff, chain), CHAIN_BAD_HEAD);
    writeDesc(view, DESC, 0, 0x10000, 16, NEXT, SIZE);
    assert.equal(q.walk(0, chain), CHAIN_BAD_NEXT);
  });

  it('follows an indirect table and rejects bad or nested ones', () => {
    const { view, q, chain } = setup();
    const table = 0x20000;
    writeDesc(view, table, 0, 0x10000, 16, NEXT, 1);
    writeDesc(view, table, 1, 0x11000, 512, NEXT | WRITE, 2);
    writeDesc(view, table, 2, 0x12000, 1, WRITE, 0);
    writeDesc(view, DESC, 0, table, 48, IND, 0);
    assert.equal(q.walk(0, chain), CHAIN_OK);
    assert.equal(chain.count, 3);
    assert.equal(chain.writableBytes, 513);

    writeDesc(view, DESC, 0, table, 40, IND, 0); // not a multiple of 16
    assert.equal(q.walk(0, chain), CHAIN_BAD_INDIRECT);
    writeDesc(view, DESC, 0, table, 0, IND, 0);
    assert.equal(q.walk(0, chain), CHAIN_BAD_INDIRECT);
    writeDesc(view, DESC, 0, MEM - 16, 48, IND, 0); // table straddles the end of memory
    assert.equal(q.walk(0, chain), CHAIN_BAD_INDIRECT);
    writeDesc(view, DESC, 0, table, 48, IND | NEXT, 1); // indirect must be the whole chain
    assert.equal(q.walk(0, chain), CHAIN_NESTED_INDIRECT);
    writeDesc(view, table, 1, 0x30000, 16, IND, 0); // indirect inside indirect
    writeDesc(view, DESC, 0, table, 48, IND, 0);
    assert.equal(q.walk(0, chain), CHAIN_NESTED_INDIRECT);
    writeDesc(view, table, 1, 0x11000, 512, NEXT | WRITE, 1); // loop inside the table
    assert.equal(q.walk(0, chain), CHAIN_TOO_LONG);
    writeDesc(view, table, 1, 0x11000, 512, NEXT | WRITE, 3); // next beyond the table
    assert.equal(q.walk(0, chain), CHAIN_BAD_NEXT);
  });

  it('refuses indirect descriptors when the feature was not negotiated', () => {
    const { view, q, chain } = setup({ indirect: false });
    writeDesc(view, 0x20000, 0, 0x10000, 16, 0, 0);
    writeDesc(view, DESC, 0, 0x20000, 16, IND, 0);
    assert.equal(q.walk(0, chain), CHAIN_NESTED_INDIRECT);
  });

  it('flags a device-readable buffer after a device-writable one', () => {
    const { view, q, chain } = setup();
    writeDesc(view, DESC, 0, 0x11000, 16, NEXT | WRITE, 1);
    writeDesc(view, DESC, 1, 0x10000, 16, 0, 0);
    assert.equal(q.walk(0, chain), CHAIN_OK);
    assert.equal(chain.misordered, true);
  });

  it('marks the ring broken when the available index runs more than a queue ahead', () => {
    const { view, q } = setup();
    view.setUint16(AVAIL + 2, SIZE + 1, true);
    assert.equal(q.pop(), -1);
    assert.equal(q.broken, true);
    assert.match(q.brokenReason, /jumped/);
    assert.equal(q.hasAvailable(), false);
  });

  it('breaks the ring on a head that is out of range or offered again while in flight', () => {
    const a = setup();
    makeAvailable(a.view, AVAIL, SIZE, [SIZE]);
    assert.equal(a.q.pop(), -1);
    assert.match(a.q.brokenReason, /out of range/);
    const b = setup();
    makeAvailable(b.view, AVAIL, SIZE, [2, 2]);
    assert.equal(b.q.pop(), 2);
    assert.equal(b.q.pop(), -1);
    assert.match(b.q.brokenReason, /again while in flight/);
    const c = setup();
    makeAvailable(c.view, AVAIL, SIZE, [2]);
    c.q.pop();
    c.q.push(2, 1);
    makeAvailable(c.view, AVAIL, SIZE, [2]);
    assert.equal(c.q.pop(), 2, 'a returned head may be offered again');
  });

  it('tells when the requests in flight at a moment are all returned', () => {
    const { view, q } = setup();
    makeAvailable(view, AVAIL, SIZE, [1, 2]);
    q.pop();
    q.pop();
    let done = false;
    q.whenInFlightDone(() => { done = true; });
    makeAvailable(view, AVAIL, SIZE, [3]);
    q.pop(); // started after the question: not waited for
    q.push(2, 1);
    assert.equal(done, false);
    q.push(1, 1);
    assert.equal(done, true);
    let immediate = false;
    setup().q.whenInFlightDone(() => { immediate = true; });
    assert.equal(immediate, true);
  });

  it('stops touching a broken ring but still accounts for requests in flight', () => {
    const { view, q } = setup();
    makeAvailable(view, AVAIL, SIZE, [3]);
    assert.equal(q.pop(), 3);
    q.markBroken('memory went away');
    q.push(3, 1);
    assert.equal(q.inFlight, 0);
    assert.equal(q.publish(), false);
    assert.equal(view.getUint16(USED + 2, true), 0, 'used ring untouched');
    assert.equal(q.allowKicks(), false);
  });

  it('wraps the 16-bit available and used indices', () => {
    const g = fakeGuest(MEM);
    g.view.setUint16(AVAIL + 2, 0xffff, true);
    g.view.setUint16(USED + 2, 0xffff, true);
    const q = new SplitQueue(g.mem, layout, 0xffff, { eventIdx: false, indirect: false });
    writeDesc(g.view, DESC, 2, 0x10000, 16, 0, 0);
    makeAvailable(g.view, AVAIL, SIZE, [2]);
    assert.equal(g.view.getUint16(AVAIL + 2, true), 0);
    assert.equal(q.pop(), 2);
    assert.equal(q.lastAvail, 0);
    q.push(2, 7);
    q.publish();
    assert.equal(g.view.getUint16(USED + 2, true), 0);
    assert.equal(g.view.getUint32(USED + 4 + 8 * 7, true), 2); // slot 0xffff % 8 = 7
    assert.equal(g.view.getUint32(USED + 8 + 8 * 7, true), 7);
  });

  it('publishes used elements and honours NO_INTERRUPT', () => {
    const { view, q } = setup();
    makeAvailable(view, AVAIL, SIZE, [1, 4]);
    q.pop();
    q.pop();
    q.push(4, 100);
    q.push(1, 1);
    assert.equal(view.getUint16(USED + 2, true), 0, 'not visible before publish');
    assert.equal(q.publish(), true);
    assert.equal(view.getUint16(USED + 2, true), 2);
    assert.deepEqual([view.getUint32(USED + 4, true), view.getUint32(USED + 8, true)], [4, 100]);
    assert.deepEqual([view.getUint32(USED + 12, true), view.getUint32(USED + 16, true)], [1, 1]);
    assert.equal(q.inFlight, 0);
    assert.equal(q.publish(), false, 'nothing new: no interrupt');
    view.setUint16(AVAIL, VRING_AVAIL_F_NO_INTERRUPT, true);
    makeAvailable(view, AVAIL, SIZE, [0]);
    q.pop();
    q.push(0, 1);
    assert.equal(q.publish(), false);
  });

  it('decides interrupts with EVENT_IDX (used_event)', () => {
    const { view, q } = setup({ eventIdx: true });
    const usedEvent = AVAIL + 4 + 2 * SIZE;
    makeAvailable(view, AVAIL, SIZE, [0, 1, 2]);
    view.setUint16(usedEvent, 1, true); // guest wants an interrupt once used idx passes 1
    q.pop();
    q.push(0, 1);
    assert.equal(q.publish(), false, 'used idx 1 has not passed used_event 1');
    q.pop();
    q.push(1, 1);
    assert.equal(q.publish(), true, 'used idx 2 passed used_event 1');
    q.pop();
    q.push(2, 1);
    assert.equal(q.publish(), false, 'used_event still 1: already signalled');
  });

  it('suppresses and re-allows kicks, reporting buffers that raced in', () => {
    const plain = setup();
    plain.q.suppressKicks();
    assert.equal(plain.view.getUint16(USED, true) & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);
    assert.equal(plain.q.allowKicks(), false);
    assert.equal(plain.view.getUint16(USED, true) & VRING_USED_F_NO_NOTIFY, 0);
    makeAvailable(plain.view, AVAIL, SIZE, [0]);
    assert.equal(plain.q.allowKicks(), true, 'a buffer arrived: keep draining');

    const ev = setup({ eventIdx: true });
    makeAvailable(ev.view, AVAIL, SIZE, [0, 1]);
    ev.q.pop();
    ev.q.pop();
    assert.equal(ev.q.allowKicks(), false);
    assert.equal(ev.view.getUint16(USED + 4 + 8 * SIZE, true), 2, 'avail_event = next index to take');
  });

  it('checks ring layout: alignment, size and placement', () => {
    const { mem } = fakeGuest(MEM);
    assert.equal(checkRingLayout(mem, layout), undefined);
    assert.match(checkRingLayout(mem, { ...layout, size: 6 })!, /queue size/);
    assert.match(checkRingLayout(mem, { ...layout, size: 2048 })!, /queue size/);
    assert.match(checkRingLayout(mem, { ...layout, descAddr: DESC + 8 })!, /aligned/);
    assert.match(checkRingLayout(mem, { ...layout, usedAddr: USED + 2 })!, /aligned/);
    assert.match(checkRingLayout(mem, { ...layout, usedAddr: MEM - 16 })!, /outside/);
  });

  it('accepts a buffer spanning two adjacent regions and rejects one over a hole', () => {
    const a = fakeGuest(0x10000, 0);
    const b = fakeGuest(0x10000, 0x10000);
    const c = fakeGuest(0x10000, 0x30000);
    const mem = new GuestMemory();
    mem.add(a.mem.list()[0] as GuestRegion);
    mem.add(b.mem.list()[0] as GuestRegion);
    mem.add(c.mem.list()[0] as GuestRegion);
    assert.equal(mem.covers(0xf000, 0x2000), true);
    assert.equal(mem.covers(0x1f000, 0x2000), false);
    assert.equal(mem.add(fakeGuest(0x1000, 0x8000).mem.list()[0] as GuestRegion), false, 'overlap refused');
  });
});
