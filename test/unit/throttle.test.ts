// The export's I/O limiter (blk/throttle.ts) on a simulated clock: the rates
// it holds over time, its bursts, reads and writes against total limits, bytes
// and operations together, iops-size, and limits changed while it runs.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { IoLimits, SharedThrottle, checkLimits, noLimits, sharedNowMs } from '../../src/blk/throttle';
import { ThrottleLine } from '../../src/blk/throttle-line';

function limits(set: Partial<Record<string, [number, number?, number?]>>, iopsSize = 0): IoLimits {
  const l = noLimits();
  for (const [b, [avg, max = 0, maxLength = 1]] of Object.entries(set) as Array<[keyof IoLimits, [number, number?, number?]]>) {
    (l as unknown as Record<string, { avg: number; max: number; maxLength: number }>)[b as string] = { avg, max, maxLength };
  }
  l.iopsSize = iopsSize;
  return l;
}

/** Offer requests as fast as the limiter lets them through for `seconds` of simulated time; returns what got through. */
function run(t: SharedThrottle, seconds: number, req: () => { write: boolean; bytes: number }, start = 0): { ops: number; bytes: number; end: number } {
  let now = start;
  let ops = 0;
  let bytes = 0;
  let next = req();
  while (now < start + seconds * 1000) {
    const wait = t.admit(next.write, next.bytes, now);
    if (wait > 0) {
      now += wait;
      continue;
    }
    ops++;
    bytes += next.bytes;
    next = req();
  }
  return { ops, bytes, end: now };
}

describe('I/O limits (shared throttle)', () => {
  it('holds an iops limit over time, with a tenth of a second of burst up front', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-total': [1000] }), 0);
    const r = run(t, 30, () => ({ write: false, bytes: 4096 }));
    assert.ok(Math.abs(r.ops - 30_100) <= 2, `${r.ops} operations in 30 s at 1000/s`);
  });

  it('holds bytes and operations at once: whichever binds', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-total': [1000], 'bps-total': [1 << 20] }), 0);
    const big = run(t, 10, () => ({ write: true, bytes: 64 << 10 }));
    assert.ok(Math.abs(big.bytes / 10 - (1 << 20)) / (1 << 20) < 0.02, `${big.bytes / 10} bytes/s with 64 KiB writes`);
    const t2 = new SharedThrottle();
    t2.set(limits({ 'iops-total': [1000], 'bps-total': [1 << 20] }), 0);
    const small = run(t2, 10, () => ({ write: true, bytes: 512 }));
    assert.ok(Math.abs(small.ops / 10 - 1000) < 20, `${small.ops / 10} ops/s with 512-byte writes`);
  });

  it('limits reads and writes each, and lets the unlimited side through', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-read': [500], 'iops-write': [100] }), 0);
    let i = 0;
    const mixed = run(t, 10, () => ({ write: i++ % 2 === 1, bytes: 4096 }));
    // Strictly alternating, the writes bind: about 100 of each per second.
    assert.ok(Math.abs(mixed.ops / 10 - 200) < 10, `${mixed.ops / 10} ops/s alternating`);
    const reads = run(t, 10, () => ({ write: false, bytes: 4096 }), mixed.end);
    assert.ok(Math.abs(reads.ops / 10 - 500) < 10, `${reads.ops / 10} reads/s alone`);
    const u = new SharedThrottle();
    u.set(limits({ 'iops-write': [100] }), 0);
    assert.equal(u.admit(false, 4096, 0), 0);
    for (let n = 0; n < 1000; n++) assert.equal(u.admit(false, 4096, 0), 0, 'reads are not limited');
  });

  it('allows a burst at the max rate for about max-length seconds, then the average', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-total': [100, 1000, 2] }), 0);
    // At once: a tenth of a second of the burst rate, not the whole burst.
    let admitted = 0;
    while (t.admit(false, 4096, 0) === 0) admitted++;
    assert.equal(admitted, 101);
    const half = run(t, 0.5, () => ({ write: false, bytes: 4096 }), 0);
    assert.ok(half.ops <= 510, `${half.ops} more in the first half second: the burst runs at 1000/s`);
    const burst = run(t, 1.5, () => ({ write: false, bytes: 4096 }), half.end);
    assert.ok(admitted + half.ops + burst.ops > 1900, `${admitted + half.ops + burst.ops} in the first 2 s`);
    const later = run(t, 20, () => ({ write: false, bytes: 4096 }), burst.end);
    assert.ok(later.ops >= 2000 && later.ops <= 2400, `${later.ops} in the next 20 s: the rest of the burst, then 100/s`);
    const steady = run(t, 20, () => ({ write: false, bytes: 4096 }), later.end);
    assert.ok(Math.abs(steady.ops - 2000) <= 5, `then ${steady.ops} in 20 s at 100/s`);
  });

  it('counts a request larger than iops-size as several operations', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-total': [100] }, 16384), 0);
    const r = run(t, 10, () => ({ write: false, bytes: 65536 }));
    assert.ok(Math.abs(r.ops / 10 - 25) < 2, `${r.ops / 10} 64 KiB requests/s`);
  });

  it('takes new limits at runtime, and none at all', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-total': [100] }), 0);
    const slow = run(t, 5, () => ({ write: false, bytes: 4096 }));
    t.set(limits({ 'iops-total': [1000] }), slow.end);
    const fast = run(t, 5, () => ({ write: false, bytes: 4096 }), slow.end);
    assert.ok(Math.abs(fast.ops / 5 - 1000) < 30, `${fast.ops / 5}/s after raising the limit`);
    assert.equal(t.active, true);
    t.set(noLimits(), fast.end);
    assert.equal(t.active, false);
  });

  it('shares its state through the buffer: another view (another thread) sees the same bucket', () => {
    const a = new SharedThrottle();
    a.set(limits({ 'iops-total': [10] }), 0);
    const b = new SharedThrottle(a.buffer);
    assert.equal(a.admit(false, 1, 0), 0);
    assert.equal(b.admit(false, 1, 0), 0);
    assert.ok(b.admit(false, 1, 0) > 0, 'the second view saw the first one\'s requests');
  });

  it('reads the process\'s monotonic clock in every thread, whatever the thread\'s own time origin', async () => {
    // Each reading pairs sharedNowMs() with process.hrtime() (CLOCK_MONOTONIC, one clock for all
    // threads); a clock built on performance.timeOrigin would be off by any wall-clock step between
    // the threads' starts.
    const reading = (): [number, number] => {
      const hr = process.hrtime();
      return [sharedNowMs(), hr[0] * 1e3 + hr[1] / 1e6];
    };
    const module = path.resolve(__dirname, '../../src/blk/throttle.js');
    const worker = new Worker(`
      const { parentPort } = require('node:worker_threads');
      const { sharedNowMs } = require(${JSON.stringify(module)});
      const hr = process.hrtime();
      parentPort.postMessage([sharedNowMs(), hr[0] * 1e3 + hr[1] / 1e6]);`, { eval: true });
    const [workerShared, workerMonotonic] = await new Promise<[number, number]>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    const [mainShared, mainMonotonic] = reading();
    // Within 50 ms (a preempted thread between two readings); timeOrigin + now() is off by decades.
    assert.ok(Math.abs(mainShared - mainMonotonic) < 50, `main thread: ${mainShared} against ${mainMonotonic}`);
    assert.ok(Math.abs(workerShared - workerMonotonic) < 50, `worker: ${workerShared} against ${workerMonotonic}`);
    assert.ok(workerShared <= mainShared, 'the worker read it first');
  });

  it('refuses what QEMU refuses', () => {
    assert.match(checkLimits(limits({ 'iops-total': [100], 'iops-read': [50] }))!, /cannot be combined/);
    assert.match(checkLimits(limits({ 'bps-read': [100, 50] }))!, /below/);
    assert.match(checkLimits(limits({ 'bps-read': [0, 50] }))!, /needs bps-read/);
    assert.match(checkLimits(limits({ 'iops-write': [10, 20, 0] }))!, /at least 1/);
    assert.equal(checkLimits(limits({ 'iops-read': [100, 200, 5], 'bps-write': [1 << 20] })), undefined);
  });

  it('line: newcomers wait behind those already waiting, and releaseAll starts everyone in order, limits or not', () => {
    const t = new SharedThrottle();
    t.set(limits({ 'iops-total': [1] }));
    const restarted: number[] = [];
    let drains = 0;
    const line: ThrottleLine = new ThrottleLine(t, 8, (head) => {
      restarted.push(head);
      assert.equal(line.mustWait(head, false, 512), false, 'released: no wait');
    }, () => drains++);
    // The first goes (the bucket's tenth of a second holds one), the rest wait in arrival order.
    assert.equal(line.mustWait(0, false, 512), false);
    for (const head of [5, 3, 7]) assert.equal(line.mustWait(head, false, 512), true);
    assert.equal(line.count, 3);
    line.releaseAll();
    assert.deepEqual(restarted, [5, 3, 7]);
    assert.equal(line.count, 0);
    assert.equal(drains, 1);
    line.close();
  });
});
