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
});
