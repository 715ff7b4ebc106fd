import { strict as assert } from 'node:assert';
import { QueueRunner } from '../../src/dataplane/queue-runner';
import { native } from '../../src/native/addon';
import { Logger } from '../../src/util/log';
import { SplitQueue } from '../../src/virtq/split';
import { fakeGuest, makeAvailable, writeDesc } from '../support/fake-memory';

const SIZE = 64;
const DESC = 0x1000;
const AVAIL = 0x2000;
const USED = 0x3000;

describe('queue runner', () => {
  let callFd = -1;
  afterEach(() => {
    if (callFd >= 0) native.close(callFd);
    callFd = -1;
  });

  it('publishes a long batch of requests that complete at once in pieces of 8, signalling each', () => {
    const { mem, view } = fakeGuest(0x100000);
    const queue = new SplitQueue(mem, { size: SIZE, descAddr: DESC, availAddr: AVAIL, usedAddr: USED }, 0, { eventIdx: false, indirect: false });
    for (let i = 0; i < SIZE; i++) writeDesc(view, DESC, i, 0x10000 + 16 * i, 16, 0, 0);
    const N = 20;
    makeAvailable(view, AVAIL, SIZE, [...Array(N).keys()]);
    callFd = native.eventfd(0);
    const runner = new QueueRunner(0, queue, -1, callFd, -1, new Logger({ component: 'test' }));
    // What the guest sees in the used ring, and the interrupts it got since the last request started.
    const guestUsedIdx = (): number => view.getUint16(USED + 2, true);
    const interrupts = (): number => { try { return native.eventfdRead(callFd); } catch { return 0; } };
    const seen: Array<[number, number]> = [];
    let pending: number[] = [];
    runner.attach({
      handle(head) {
        seen.push([guestUsedIdx(), interrupts()]);
        pending.push(head); // completes when the engine's batch ends, like a page-cache read
      },
      endBatch() {
        for (const head of pending) queue.push(head, 0);
        if (pending.length > 0) runner.completed();
        pending = [];
      },
    });
    runner.start();
    assert.deepEqual(seen.map(([used]) => used), [...Array(8).fill(0), ...Array(8).fill(8), ...Array(4).fill(16)]);
    assert.deepEqual(seen.map(([, n]) => n), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert.equal(guestUsedIdx(), N, 'the rest is published when the drain ends');
    assert.ok(interrupts() >= 1);
  });

  describe('interrupt coalescing', () => {
    /** A runner whose requests complete as soon as they are handled; `add` makes heads available. */
    function coalescingRunner(delayUs: number, iopsThreshold = 0) {
      const { mem, view } = fakeGuest(0x100000);
      const queue = new SplitQueue(mem, { size: SIZE, descAddr: DESC, availAddr: AVAIL, usedAddr: USED }, 0, { eventIdx: false, indirect: false });
      for (let i = 0; i < SIZE; i++) writeDesc(view, DESC, i, 0x10000 + 16 * i, 16, 0, 0);
      callFd = native.eventfd(0);
      const runner = new QueueRunner(0, queue, -1, callFd, -1, new Logger({ component: 'test' }), 0, undefined, { delayUs, iopsThreshold });
      runner.attach({ handle(head) { queue.push(head, 0); runner.completed(); }, endBatch() { /* completes in handle */ } });
      let next = 0;
      const add = (n: number): void => {
        const heads = Array.from({ length: n }, () => next++ % SIZE);
        makeAvailable(view, AVAIL, SIZE, heads);
        runner.setEnabled(true);
      };
      const usedIdx = (): number => view.getUint16(USED + 2, true);
      return { runner, add, usedIdx };
    }
    const interrupts = (): number => native.eventfdRead(callFd);
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

    it('publishes at once but sends one interrupt for everything completed within the delay', async () => {
      const { runner, add, usedIdx } = coalescingRunner(20_000);
      runner.start();
      assert.equal(interrupts(), 1, 'the start-up interrupt');
      add(3);
      assert.equal(usedIdx(), 3, 'used elements go out at once');
      add(2);
      assert.equal(usedIdx(), 5);
      assert.equal(interrupts(), 0, 'the interrupt waits');
      await sleep(40);
      assert.equal(interrupts(), 1, 'one interrupt for both batches');
      add(1);
      assert.equal(interrupts(), 0);
      // Switching it off sends what waits, and later batches signal at once.
      runner.setCoalescing({ delayUs: 0, iopsThreshold: 0 });
      assert.equal(interrupts(), 1);
      add(1);
      assert.equal(interrupts(), 1);
      // Stopping the ring sends a waiting interrupt before GET_VRING_BASE is answered.
      runner.setCoalescing({ delayUs: 500_000, iopsThreshold: 0 });
      add(1);
      assert.equal(interrupts(), 0);
      assert.equal(await runner.stop(), 8);
      assert.equal(interrupts(), 1);
    });

    it('measures the rate from when coalescing was set, so a busy queue coalesces after the first window', async () => {
      const { runner, add } = coalescingRunner(20_000, 1000);
      runner.start();
      interrupts();
      add(50);
      assert.ok(interrupts() >= 1, 'the first window is still being measured: interrupts go out');
      await sleep(12);
      add(1); // 51 requests in ~12 ms: well above 1000 per second
      assert.equal(interrupts(), 0, 'deferred');
      await runner.stop();
      assert.equal(interrupts(), 1);
    });

    it('signals at once while the queue takes fewer requests per second than the threshold', async () => {
      const { runner, add } = coalescingRunner(20_000, 1_000_000);
      runner.start();
      interrupts();
      for (let i = 0; i < 3; i++) {
        await sleep(12); // a new rate window each time, well under a million per second
        add(1);
        assert.equal(interrupts(), 1, `request ${i} interrupts at once`);
      }
      await runner.stop();
    });
  });
});
