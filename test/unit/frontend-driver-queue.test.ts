// The front-end's driver ring against the server's own SplitQueue over the same
// memory, no sockets: what one side writes, the other must read back exactly.
import { strict as assert } from 'node:assert';
import { RangeAllocator } from '../../src/frontend/allocator';
import {
  DriverBuffer, DriverQueue, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, allocateRing, needEvent,
} from '../../src/frontend/driver-queue';
import { GuestMemory } from '../../src/memory/guest-memory';
import {
  CHAIN_BAD_ADDRESS, CHAIN_BAD_INDIRECT, CHAIN_BAD_NEXT, CHAIN_NESTED_INDIRECT, CHAIN_OK,
  CHAIN_TOO_LONG, Chain, SplitQueue,
} from '../../src/virtq/split';

const MEM_SIZE = 1 << 20;

interface Rig {
  buffer: ArrayBuffer;
  alloc: RangeAllocator;
  driver: DriverQueue;
  device: SplitQueue;
  chain: Chain;
  notified: { count: number };
}

interface RigOptions {
  size?: number;
  eventIdx?: boolean;
  indirect?: boolean;
  /** Start both sides at this ring index (to cross the 16-bit wrap). */
  startIdx?: number;
}

function rig(o: RigOptions = {}): Rig {
  const size = o.size ?? 8;
  const eventIdx = o.eventIdx ?? false;
  const buffer = new ArrayBuffer(MEM_SIZE);
  const mem = new GuestMemory();
  mem.add({ guestPhysAddr: 0, size: MEM_SIZE, userAddr: 0x7f00_0000_0000, hostAddr: 0,
    windows: [{ buffer, bytes: new Uint8Array(buffer), view: new DataView(buffer) }] });
  const alloc = new RangeAllocator(4096, MEM_SIZE - 4096);
  const layout = allocateRing(size, alloc);
  const notified = { count: 0 };
  const driver = new DriverQueue(buffer, layout, { eventIdx, allocator: alloc, notify: () => notified.count++ });
  driver.clearRings();
  const start = o.startIdx ?? 0;
  if (start !== 0) {
    // A device resuming at `start` finds the used index there; the driver continues from the same point.
    new DataView(buffer).setUint16(layout.usedAddr + 2, start, true);
    driver.resume(start, start);
  }
  const device = new SplitQueue(mem, layout, start, { eventIdx, indirect: o.indirect ?? true });
  return { buffer, alloc, driver, device, chain: new Chain(), notified };
}

function buffers(alloc: RangeAllocator, spec: Array<[number, boolean]>): DriverBuffer[] {
  return spec.map(([len, writable]) => ({ addr: alloc.alloc(len), len, writable }));
}

function walked(r: Rig, head: number): DriverBuffer[] {
  assert.equal(r.device.walk(head, r.chain), CHAIN_OK);
  const out: DriverBuffer[] = [];
  for (let i = 0; i < r.chain.count; i++) out.push({ addr: r.chain.addr[i], len: r.chain.len[i], writable: r.chain.writable[i] === 1 });
  return out;
}

describe('frontend DriverQueue against the device SplitQueue', () => {
  it('lays out rings with the alignment virtio requires', () => {
    const alloc = new RangeAllocator(4096 + 2, 1 << 16);
    const l = allocateRing(256, alloc);
    assert.equal(l.descAddr % 16, 0);
    assert.equal(l.availAddr % 2, 0);
    assert.equal(l.usedAddr % 4, 0);
    assert.throws(() => allocateRing(100, alloc), /power of two/);
  });

  it('a direct chain is walked exactly as added, and comes back through the used ring', () => {
    const r = rig();
    const bufs = buffers(r.alloc, [[16, false], [4096, true], [1, true]]);
    const head = r.driver.add(bufs);
    assert.equal(r.driver.freeDescriptors, 8 - 3);
    assert.equal(r.device.pop(), -1, 'nothing is visible before publish');
    assert.equal(r.driver.kick(), true);
    assert.equal(r.notified.count, 1);
    assert.equal(r.device.pop(), head);
    assert.deepEqual(walked(r, head), bufs);
    assert.equal(r.chain.readableBytes, 16);
    assert.equal(r.chain.writableBytes, 4097);

    assert.equal(r.driver.reap(), undefined);
    r.device.push(head, 4097);
    r.device.publish();
    assert.deepEqual(r.driver.reap(), { id: head, len: 4097, known: true });
    assert.equal(r.driver.reap(), undefined);
    assert.equal(r.driver.freeDescriptors, 8);
    assert.equal(r.driver.outstanding, 0);
  });

  it('links descriptors through next and flags them NEXT/WRITE', () => {
    const r = rig();
    const head = r.driver.add(buffers(r.alloc, [[16, false], [8, true]]));
    const d0 = r.driver.readDescriptor(head);
    assert.equal(d0.flags, VRING_DESC_F_NEXT);
    const d1 = r.driver.readDescriptor(d0.next);
    assert.equal(d1.flags, VRING_DESC_F_WRITE);
  });

  it('an indirect chain uses one ring descriptor and its table is freed on reap', () => {
    const r = rig();
    const bufs = buffers(r.alloc, [[16, false], [512, false], [512, false], [1, true]]);
    const live = r.alloc.liveCount;
    const head = r.driver.add(bufs, { indirect: true });
    assert.equal(r.alloc.liveCount, live + 1, 'the indirect table is allocated');
    assert.equal(r.driver.freeDescriptors, 7);
    assert.equal(r.driver.readDescriptor(head).flags, VRING_DESC_F_INDIRECT);
    r.driver.kick();
    assert.equal(r.device.pop(), head);
    assert.deepEqual(walked(r, head), bufs);
    r.device.push(head, 1);
    r.device.publish();
    assert.deepEqual(r.driver.reap(), { id: head, len: 1, known: true });
    assert.equal(r.alloc.liveCount, live, 'the indirect table is freed');
    assert.equal(r.driver.freeDescriptors, 8);
  });

  it('an indirect chain may be longer than the queue', () => {
    const r = rig({ size: 4 });
    const bufs = buffers(r.alloc, Array.from({ length: 20 }, (_, i): [number, boolean] => [32, i >= 10]));
    const head = r.driver.add(bufs, { indirect: true });
    r.driver.kick();
    assert.equal(r.device.pop(), head);
    assert.deepEqual(walked(r, head), bufs);
    assert.throws(() => r.driver.add(bufs), /does not fit/);
  });

  it('add() reports a full ring and works again once descriptors come back', () => {
    const r = rig({ size: 4 });
    const a = r.driver.add(buffers(r.alloc, [[16, false], [1, true]]));
    const b = r.driver.add(buffers(r.alloc, [[16, false], [1, true]]));
    assert.equal(r.driver.add(buffers(r.alloc, [[1, true]])), -1);
    r.driver.kick();
    assert.equal(r.device.pop(), a);
    assert.equal(r.device.pop(), b);
    r.device.push(b, 1); // out of order completion
    r.device.publish();
    assert.equal(r.driver.reap()?.id, b);
    const c = r.driver.add(buffers(r.alloc, [[16, false], [1, true]]));
    assert.notEqual(c, -1);
    assert.equal(r.driver.outstanding, 2);
  });

  for (const startIdx of [0, 65530]) {
    it(`runs many chains through the ring, wrapping indices (start ${startIdx})`, () => {
      const r = rig({ size: 8, startIdx });
      let expectedLen = 0;
      for (let round = 0; round < 50; round++) {
        const heads: number[] = [];
        for (let k = 0; k < 3; k++) heads.push(r.driver.add(buffers(r.alloc, [[16, false], [1, true]])));
        r.driver.kick();
        for (const h of heads) {
          assert.equal(r.device.pop(), h);
          r.device.walk(h, r.chain);
          r.device.push(h, ++expectedLen);
        }
        r.device.publish();
        const used = r.driver.reapAll();
        assert.deepEqual(used.map((u) => u.id), heads);
        assert.deepEqual(used.map((u) => u.len), [expectedLen - 2, expectedLen - 1, expectedLen]);
      }
      assert.equal(r.driver.availIdx, (startIdx + 150) & 0xffff);
      assert.equal(r.driver.lastUsed, (startIdx + 150) & 0xffff);
      assert.equal(r.device.lastAvail, (startIdx + 150) & 0xffff);
      assert.equal(r.driver.freeDescriptors, 8);
    });
  }

  describe('notification suppression without EVENT_IDX', () => {
    it('does not kick while the device sets NO_NOTIFY', () => {
      const r = rig();
      r.device.suppressKicks();
      r.driver.add(buffers(r.alloc, [[1, true]]));
      assert.equal(r.driver.kick(), false);
      assert.equal(r.notified.count, 0);
      assert.equal(r.device.pop() >= 0, true, 'the chain is published even without a kick');
      r.device.allowKicks();
      r.driver.add(buffers(r.alloc, [[1, true]]));
      assert.equal(r.driver.kick(), true);
      assert.equal(r.notified.count, 1);
    });

    it('publishing nothing new never kicks', () => {
      const r = rig();
      r.driver.add(buffers(r.alloc, [[1, true]]));
      assert.equal(r.driver.kick(), true);
      assert.equal(r.driver.kick(), false);
    });

    it('NO_INTERRUPT stops device interrupts; enabling again asks for them', () => {
      const r = rig();
      const h = r.driver.add(buffers(r.alloc, [[1, true]]));
      r.driver.kick();
      r.device.pop();
      r.driver.disableInterrupts();
      r.device.push(h, 1);
      assert.equal(r.device.publish(), false);
      assert.equal(r.driver.enableInterrupts(), true, 'a used element is already pending');
      r.driver.reapAll();
      const h2 = r.driver.add(buffers(r.alloc, [[1, true]]));
      r.driver.kick();
      r.device.pop();
      r.device.push(h2, 1);
      assert.equal(r.device.publish(), true);
    });
  });

  describe('EVENT_IDX', () => {
    it('vring_need_event matches the spec formula, across the wrap', () => {
      assert.equal(needEvent(0, 1, 0), true);
      assert.equal(needEvent(1, 1, 0), false);
      assert.equal(needEvent(5, 10, 3), true);
      assert.equal(needEvent(10, 10, 3), false);
      assert.equal(needEvent(65535, 1, 65534), true);
      assert.equal(needEvent(2, 1, 65534), false);
    });

    it('kicks only when avail_event is crossed', () => {
      const r = rig({ eventIdx: true });
      r.device.allowKicks(); // avail_event = 0: kick at the first buffer
      r.driver.add(buffers(r.alloc, [[1, true]]));
      assert.equal(r.driver.kick(), true);
      r.driver.add(buffers(r.alloc, [[1, true]]));
      assert.equal(r.driver.kick(), false, 'the device has not caught up: no second kick');
      assert.equal(r.driver.usedFlags, 0, 'flags stay 0 with EVENT_IDX');
      r.device.pop();
      r.device.pop();
      assert.equal(r.device.allowKicks(), false);
      assert.equal(r.driver.availEvent, 2);
      r.driver.add(buffers(r.alloc, [[1, true]]));
      r.driver.add(buffers(r.alloc, [[1, true]]));
      assert.equal(r.driver.kick(), true, 'one kick for a batch that crosses avail_event');
      assert.equal(r.notified.count, 2);
    });

    it('interrupts only when used_event is crossed', () => {
      const r = rig({ eventIdx: true });
      const heads = [0, 1, 2].map(() => r.driver.add(buffers(r.alloc, [[1, true]])));
      r.driver.kick();
      for (let i = 0; i < 3; i++) r.device.pop();
      assert.equal(r.driver.enableInterrupts(), false);
      assert.equal(r.driver.usedEvent, 0);
      r.device.push(heads[0], 1);
      assert.equal(r.device.publish(), true);
      r.device.push(heads[1], 1);
      assert.equal(r.device.publish(), false, 'the driver has not reaped: no second interrupt');
      assert.equal(r.driver.reapAll().length, 2);
      assert.equal(r.driver.enableInterrupts(), false);
      assert.equal(r.driver.usedEvent, 2);
      r.driver.disableInterrupts();
      assert.equal(r.driver.availFlags, 0, 'flags stay 0 with EVENT_IDX');
      r.device.push(heads[2], 1);
      assert.equal(r.device.publish(), false, 'interrupts disabled through used_event');
      assert.equal(r.driver.enableInterrupts(), true, 'pending element reported on re-enable');
    });
  });

  describe('raw mode (hostile driver)', () => {
    it('a descriptor loop is caught', () => {
      const r = rig();
      const a = r.alloc.alloc(16);
      r.driver.writeDescriptor(0, { addr: a, len: 16, flags: VRING_DESC_F_NEXT, next: 1 });
      r.driver.writeDescriptor(1, { addr: a, len: 16, flags: VRING_DESC_F_NEXT, next: 0 });
      r.driver.pushAvail(0);
      r.driver.kick();
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_TOO_LONG);
    });

    it('addresses outside guest memory, bad next and bad heads are caught', () => {
      const r = rig();
      r.driver.writeDescriptor(0, { addr: MEM_SIZE - 8, len: 16, flags: 0, next: 0 });
      r.driver.writeDescriptor(1, { addr: 2 ** 60, len: 1, flags: 0, next: 0 });
      r.driver.writeDescriptor(2, { addr: 0, len: 1, flags: VRING_DESC_F_NEXT, next: 8 });
      for (const h of [0, 1, 2, 9]) r.driver.pushAvail(h);
      r.driver.kick();
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_BAD_ADDRESS);
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_BAD_ADDRESS);
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_BAD_NEXT);
      // A head beyond the queue cannot even be returned: the ring is broken at pop.
      assert.equal(r.device.pop(), -1);
      assert.equal(r.device.broken, true);
      assert.match(r.device.brokenReason, /head 9 out of range/);
    });

    it('bad indirect tables are caught', () => {
      const r = rig();
      const table = r.alloc.alloc(64);
      r.driver.writeTable(table, [
        { addr: 0, len: 1, flags: VRING_DESC_F_INDIRECT, next: 0 }, // nested indirect
      ]);
      r.driver.writeDescriptor(0, { addr: table, len: 24, flags: VRING_DESC_F_INDIRECT, next: 0 }); // not a multiple of 16
      r.driver.writeDescriptor(1, { addr: table, len: 16, flags: VRING_DESC_F_INDIRECT, next: 0 });
      r.driver.writeDescriptor(2, { addr: MEM_SIZE - 16, len: 32, flags: VRING_DESC_F_INDIRECT, next: 0 });
      r.driver.writeDescriptor(3, { addr: table, len: 16, flags: VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, next: 4 });
      for (const h of [0, 1, 2, 3]) r.driver.pushAvail(h);
      r.driver.kick();
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_BAD_INDIRECT);
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_NESTED_INDIRECT);
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_BAD_INDIRECT);
      assert.equal(r.device.walk(r.device.pop(), r.chain), CHAIN_NESTED_INDIRECT);
    });

    it('an avail index jumping by more than the queue size breaks the ring', () => {
      const r = rig();
      r.driver.setAvailIdx(9);
      assert.equal(r.device.pop(), -1);
      assert.equal(r.device.broken, true);
    });

    it('used elements for heads never submitted are flagged', () => {
      const r = rig();
      r.driver.pushAvail(5);
      r.driver.kick();
      assert.equal(r.device.pop(), 5);
      r.device.push(5, 0);
      r.device.publish();
      assert.deepEqual(r.driver.reap(), { id: 5, len: 0, known: false });
      assert.equal(r.driver.unknownUsed, 1);
    });
  });
});
