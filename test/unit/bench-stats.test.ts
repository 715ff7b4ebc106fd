import { strict as assert } from 'node:assert';
import { ProcessSample, busiestThread, cpuByThread, parseMachineStat, parseProcStat } from '../../src/util/proc-stats';
import { RunFigures, limitOf, summarize } from '../../src/bench/report';
import { SampleRecorder, median, percentile } from '../../src/bench/stats';

describe('bench: percentiles and medians', () => {
  it('nearest-rank percentile', () => {
    const v = Float64Array.from({ length: 100 }, (_, i) => i + 1);
    assert.equal(percentile(v, 50), 50);
    assert.equal(percentile(v, 99), 99);
    assert.equal(percentile(v, 100), 100);
    assert.equal(percentile(v, 0), 1);
    assert.equal(percentile([7], 99), 7);
    assert.ok(Number.isNaN(percentile([], 50)));
  });

  it('median of odd and even counts, NaN ignored', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.equal(median([NaN, 5]), 5);
    assert.ok(Number.isNaN(median([])));
  });

  it('the sample recorder grows and sorts numerically', () => {
    const r = new SampleRecorder();
    for (let i = 100_000; i > 0; i--) r.add(i);
    const s = r.sorted();
    assert.equal(s.length, 100_000);
    assert.equal(s[0], 1);
    assert.equal(s[9], 10);
    assert.equal(percentile(s, 50), 50_000);
  });
});

describe('bench: /proc parsing', () => {
  it('reads utime, stime and threads after a comm with spaces and parentheses', () => {
    const line = '4242 (IO io0) (x)) S 1 4242 4242 0 -1 4194560 1219 0 0 0 731 205 0 0 20 0 5 0 12345 1000 200 ' +
      '18446744073709551615 1 1 0 0 0 0 0 4096 17 1 0 0 0 0 0\n';
    const s = parseProcStat(line);
    assert.equal(s.comm, 'IO io0) (x)');
    assert.equal(s.state, 'S');
    assert.equal(s.utime, 731);
    assert.equal(s.stime, 205);
    assert.equal(s.cutime, 0);
    assert.equal(s.cstime, 0);
    assert.equal(s.numThreads, 5);
    // A shell after its child exited: the child's CPU is in cutime and cstime.
    const sh = parseProcStat('99 (sh) S 1 99 99 0 -1 0 0 0 0 0 1 2 250 80 20 0 1 0 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0');
    assert.equal(sh.cutime, 250);
    assert.equal(sh.cstime, 80);
    assert.throws(() => parseProcStat('garbage'), /not a \/proc stat line/);
  });

  it('machine busy, steal and total from /proc/stat', () => {
    const m = parseMachineStat('cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 50 2 25 400 10 1 1 5 0 0\nintr 1\n');
    assert.equal(m.total, 990);
    assert.equal(m.busy, 990 - 800 - 20);
    assert.equal(m.steal, 10);
  });
});

describe('bench: per-thread CPU', () => {
  const sample = (threads: Array<[number, string, number]>): ProcessSample =>
    ({ cpuSec: 0, threads: new Map(threads.map(([tid, name, cpuSec]) => [tid, { name, cpuSec }])) });

  it('ranks threads by their CPU delta and sums io_uring workers, new ones included', () => {
    const a = sample([[1, 'node', 5], [2, 'vublk-io0', 10], [3, 'iou-wrk-2', 1]]);
    const b = sample([[1, 'node', 5.5], [2, 'vublk-io0', 14], [3, 'iou-wrk-2', 2], [4, 'iou-wrk-2', 2.5]]);
    assert.deepEqual(cpuByThread(a, b), [{ name: 'vublk-io0', cpuSec: 4 }, { name: 'iou-wrk', cpuSec: 3.5 }, { name: 'node', cpuSec: 0.5 }]);
    assert.deepEqual(busiestThread(a, b), { tid: 2, name: 'vublk-io0', cpuSec: 4 });
  });
});

describe('bench: summaries', () => {
  const run = (iops: number, driverCpuPct: number): RunFigures => ({
    iops, p50Us: 100, p99Us: 200, serverCpuUsPerIo: 10, driverCpuUsPerIo: 5, serverCpuPct: 50,
    busiestServerThreadPct: 40, driverCpuPct, machineBusyPct: 60, stealPct: 1, otherCpuPct: 5,
  });

  it('takes the median of each figure separately', () => {
    const m = summarize([run(1000, 99), run(3000, 10), run(2000, 20)]);
    assert.equal(m.iops, 2000);
    assert.equal(m.driverCpuPct, 20);
  });

  it('names a saturated driver as the limit', () => {
    assert.match(limitOf(run(1, 95), 2), /driver/);
    assert.match(limitOf(run(1, 50), 2), /no core saturated/);
  });
});
