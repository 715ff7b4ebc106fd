import { strict as assert } from 'node:assert';
import { guestFioArgs, hostFioArgs, parseFioJson } from '../../src/bench/fio';
import { fioOutputs, guestOrder, guestScript, parseMarker } from '../../src/bench/guest-script';

/** A fio 3.33 --output-format=json document, trimmed to the fields that matter plus some that do not. */
function fioJson(jobs: Array<{ read?: object; write?: object; error?: number; jobname?: string }>): string {
  const dir = (d?: object): object => ({ io_bytes: 0, total_ios: 0, iops: 0, runtime: 0, short_ios: 0, ...d });
  return JSON.stringify({
    'fio version': 'fio-3.33',
    jobs: jobs.map((j) => ({
      jobname: j.jobname ?? 'host', groupid: 0, error: j.error ?? 0, 'job options': { rw: 'randread' },
      read: dir(j.read), write: dir(j.write), trim: dir(), job_runtime: 1000, usr_cpu: 20.7, sys_cpu: 59.8,
    })),
  }, null, 2);
}

const clat = (p50: number, p99: number): object => ({ clat_ns: { min: 1, percentile: { '1.000000': 100, '50.000000': p50, '99.000000': p99 } } });

describe('bench: fio JSON', () => {
  it('reads I/Os, IOPS, runtime and completion latency percentiles in µs', () => {
    const f = parseFioJson(fioJson([{ read: { total_ios: 336162, iops: 335826.17, runtime: 1001, ...clat(2_800, 9_500) } }]));
    assert.deepEqual(f, { ios: 336162, iops: 335826.17, seconds: 1.001, p50Us: 2.8, p99Us: 9.5 });
  });

  it('skips what fio printed around the JSON (warnings on a shared stream)', () => {
    const text = `fio: time_based requires a runtime/timeout setting\n${fioJson([{ read: { total_ios: 10, iops: 5, runtime: 2000, ...clat(1000, 2000) } }])}\n`;
    assert.equal(parseFioJson(text).ios, 10);
  });

  it('takes the busier direction for latency and adds up jobs without group reporting', () => {
    const f = parseFioJson(fioJson([
      { write: { total_ios: 300, iops: 150, runtime: 2000, ...clat(40_000, 90_000) } },
      { write: { total_ios: 100, iops: 50, runtime: 2100, ...clat(10_000, 20_000) } },
    ]));
    assert.equal(f.ios, 400);
    assert.equal(f.iops, 200);
    assert.equal(f.seconds, 2.1);
    assert.equal(f.p50Us, 40);
  });

  it('refuses a failed job, no I/O and no JSON', () => {
    assert.throws(() => parseFioJson(fioJson([{ jobname: 'guest', error: 5, read: { total_ios: 1 } }])), /guest failed with error 5/);
    assert.throws(() => parseFioJson(fioJson([{}])), /did no I\/O/);
    assert.throws(() => parseFioJson('fio: engine io_uring not loadable'), /no fio JSON/);
    assert.throws(() => parseFioJson('{"jobs": []}'), /no jobs/);
  });

  it('gives NaN for percentiles fio did not report', () => {
    const f = parseFioJson(fioJson([{ read: { total_ios: 1, iops: 1, runtime: 1 } }]));
    assert.ok(Number.isNaN(f.p99Us));
  });

  it('host and guest command lines: io_uring on the image, libaio with O_DIRECT in the guest, no progress line', () => {
    const host = hostFioArgs({ filename: '/dev/shm/x.img', op: 'randwrite', blockSize: 4096, qd: 128, jobs: 4, direct: true, durationSec: 3 });
    for (const a of ['--filename=/dev/shm/x.img', '--rw=randwrite', '--bs=4096', '--ioengine=io_uring', '--iodepth=128', '--numjobs=4',
      '--direct=1', '--runtime=3s', '--time_based', '--group_reporting', '--eta=never', '--output-format=json']) assert.ok(host.includes(a), a);
    assert.ok(hostFioArgs({ filename: '$IMAGE', op: '$OP', blockSize: 4096, qd: '$QD', jobs: '$JOBS', direct: '$DIRECT', durationSec: 3 }).includes('--direct=$DIRECT'));
    const guest = guestFioArgs({ device: '/dev/vdb', blockSize: 4096, qd: 32, durationSec: 6 });
    for (const a of ['--filename=/dev/vdb', '--rw=randread', '--ioengine=libaio', '--iodepth=32', '--direct=1', '--eta=never']) assert.ok(guest.includes(a), a);
  });
});

describe('bench: the guest script', () => {
  const targets = [{ label: 'tmpfs.vublk', slot: 2 }, { label: 'tmpfs.qsd', slot: 3 }, { label: 'disk.qsd-io_uring', slot: 10 }];

  it('rotates the order of the targets from round to round', () => {
    const order = guestOrder(targets, 3).map((r) => `${r.round}:${r.target.label}`);
    assert.deepEqual(order, [
      '1:tmpfs.vublk', '1:tmpfs.qsd', '1:disk.qsd-io_uring',
      '2:tmpfs.qsd', '2:disk.qsd-io_uring', '2:tmpfs.vublk',
      '3:disk.qsd-io_uring', '3:tmpfs.vublk', '3:tmpfs.qsd',
    ]);
  });

  it('finds each disk by its PCI slot, marks every measured run and prints the JSON after all runs', () => {
    const script = guestScript(guestOrder(targets, 1), { blockSize: 4096, qd: 32, durationSec: 6, warmupSec: 2 });
    assert.match(script, /for s in 02 03 0a; do/);
    assert.match(script, /0000:00:\$1\.0/);
    assert.match(script, /^bench disk\.qsd-io_uring 0a 1$/m);
    assert.match(script, /\/usr\/bin\/fio .*--runtime=2s .*--output=\/dev\/null/);
    assert.match(script, /echo "VUBLK-BENCH-BEGIN \$1 \$3"\n {2}\/usr\/bin\/fio .*--runtime=6s/);
    assert.ok(script.lastIndexOf('\nbench ') < script.indexOf('VUBLK-BENCH-JSON tmpfs.vublk 1'));
    const noWarmup = guestScript(guestOrder(targets, 1), { blockSize: 4096, qd: 32, durationSec: 6, warmupSec: 0 });
    assert.doesNotMatch(noWarmup, /--output=\/dev\/null/);
  });

  it('reads markers, also after a line the console overwrote with a carriage return', () => {
    assert.deepEqual(parseMarker('VUBLK-BENCH-BEGIN tmpfs.vublk 2'), { kind: 'begin', label: 'tmpfs.vublk', round: 2 });
    assert.deepEqual(parseMarker('Jobs: 1 (f=1)\rVUBLK-BENCH-END disk-direct.qsd-native 1'), { kind: 'end', label: 'disk-direct.qsd-native', round: 1 });
    assert.equal(parseMarker('echo VUBLK-BENCH-BEGIN x 1'), undefined);
    assert.equal(parseMarker('VUBLK-BENCH-BEGIN x'), undefined);
  });

  it('cuts fio\'s JSON per run out of the script output', () => {
    const out = 'VUBLK-BENCH-BEGIN a 1\nVUBLK-BENCH-END a 1\nVUBLK-BENCH-JSON a 1\n{\n  "jobs": []\n}\nVUBLK-BENCH-JSON-END\n' +
      'VUBLK-BENCH-JSON b.c 2\n{}\nVUBLK-BENCH-JSON-END\n';
    const m = fioOutputs(out);
    assert.deepEqual([...m.keys()], ['a 1', 'b.c 2']);
    assert.equal(m.get('a 1'), '{\n  "jobs": []\n}');
  });
});
