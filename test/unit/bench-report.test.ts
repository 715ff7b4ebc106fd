import { strict as assert } from 'node:assert';
import { betterOf, compareWorkload, ratioTo } from '../../src/bench/compare';
import { ServerId, StorageId } from '../../src/bench/matrix';
import { gnuplotScript, plotData } from '../../src/bench/plot';
import { fmt, renderMarkdown } from '../../src/bench/render';
import { BenchReport, DriverRow, GuestRow, HostRow, REPORT_SCHEMA, RunFigures, medianOf } from '../../src/bench/report';

describe('bench: vublk against the better qsd engine', () => {
  it('the better figure: higher or lower, NaN skipped, ties to the first (qsd\'s default)', () => {
    const c = [{ server: 'qsd' as ServerId, value: 10 }, { server: 'qsd-io_uring' as ServerId, value: NaN }, { server: 'qsd-native' as ServerId, value: 10 }];
    assert.equal(betterOf(c, 'higher')?.server, 'qsd');
    assert.equal(betterOf([...c, { server: 'qsd-io_uring', value: 12 }], 'higher')?.server, 'qsd-io_uring');
    assert.equal(betterOf([...c, { server: 'qsd-io_uring', value: 3 }], 'lower')?.value, 3);
    assert.equal(betterOf([], 'lower'), undefined);
  });

  it('ratios are vublk ÷ qsd, NaN without a usable qsd figure', () => {
    assert.deepEqual(ratioTo(200, [{ server: 'qsd', value: 100 }, { server: 'qsd-io_uring', value: 160 }], 'higher'),
      { vublk: 200, against: { server: 'qsd-io_uring', value: 160 }, ratio: 1.25 });
    assert.ok(Number.isNaN(ratioTo(1, [], 'higher').ratio));
    assert.ok(Number.isNaN(ratioTo(1, [{ server: 'qsd', value: 0 }], 'lower').ratio));
    assert.ok(Number.isNaN(ratioTo(NaN, [{ server: 'qsd', value: 1 }], 'lower').ratio));
  });

  it('each figure against its own best qsd engine; p99 only at queue depth 1', () => {
    const vublk = { server: 'vublk' as ServerId, iops: 120, serverCpuUsPerIo: 6, p99Us: 90 };
    const qsd = [
      { server: 'qsd' as ServerId, iops: 100, serverCpuUsPerIo: 8, p99Us: 100 },
      { server: 'qsd-io_uring' as ServerId, iops: 80, serverCpuUsPerIo: 5, p99Us: 120 },
    ];
    const c = compareWorkload(vublk, qsd, 1);
    assert.equal(c.iops.against?.server, 'qsd');
    assert.equal(c.iops.ratio, 1.2);
    assert.equal(c.cpu.against?.server, 'qsd-io_uring');
    assert.equal(c.cpu.ratio, 6 / 5);
    assert.equal(c.p99?.ratio, 0.9);
    assert.equal(compareWorkload(vublk, qsd, 32).p99, undefined);
  });

  it('medians of each figure separately', () => {
    assert.deepEqual(medianOf([{ a: 1, b: 9 }, { a: 3, b: 1 }, { a: 2, b: 5 }], ['a', 'b']), { a: 2, b: 5 });
  });
});

// --- a small report to render --------------------------------------------------------

function figures(iops: number, cpu: number, p99: number, over: Partial<RunFigures> = {}): RunFigures {
  return {
    iops, p50Us: p99 / 2, p99Us: p99, serverCpuUsPerIo: cpu, driverCpuUsPerIo: 1, serverCpuPct: 80, busiestServerThreadPct: 60,
    driverCpuPct: 30, machineBusyPct: 60, stealPct: 0.1, otherCpuPct: 5, ...over,
  };
}

function driverRow(storage: StorageId, server: ServerId, op: 'randread' | 'randwrite' | 'getid', qd: number, f: RunFigures): DriverRow {
  const run = { ...f, round: 1, ios: f.iops * 3, errors: 0, seconds: 3, busiestServerThread: 'vublk-io0', serverThreads: 'vublk-io0 60%' };
  return { storage, server, op, qd, queues: 1, median: f, iopsMin: f.iops, iopsMax: f.iops, runs: [run] };
}

function report(): BenchReport {
  const rows: DriverRow[] = [];
  for (const op of ['randread', 'randwrite'] as const) {
    for (const qd of [1, 32, 128]) {
      rows.push(driverRow('tmpfs', 'vublk', op, qd, figures(10_000 * qd, 5, 50 * qd)));
      rows.push(driverRow('tmpfs', 'qsd', op, qd, figures(5_000 * qd, 15, 100 * qd)));
      rows.push(driverRow('tmpfs', 'qsd-io_uring', op, qd, figures(8_000 * qd, 10, 120 * qd)));
    }
  }
  const guest = (server: ServerId, iops: number, cpu: number): GuestRow => {
    const m = { iops, p50Us: 8000, p99Us: 14000, serverCpuUsPerIo: cpu, serverCpuPct: 20 };
    return { storage: 'tmpfs', server, median: m, runs: [{ ...m, round: 1, ios: iops * 6, seconds: 6, serverCpuSec: 1, serverThreads: 'x 1%' }] };
  };
  const host = (op: 'randread' | 'randwrite', qd: number): HostRow => {
    const m = { iops: 20_000 * qd, p50Us: 10, p99Us: 30, cpuUsPerIo: 4 };
    return { storage: 'tmpfs', op, qd, jobs: 1, median: m, runs: [{ ...m, round: 1, ios: 1, seconds: 3, cpuSec: 1 }] };
  };
  return {
    schema: REPORT_SCHEMA, date: '2026-11-27T00:00:00.000Z', command: 'make bench',
    machine: { nproc: 2, cpuModel: 'AMD EPYC', kernel: '6.1', memoryGiB: 24 },
    versions: { node: 'v20', qemuStorageDaemon: 'qemu-storage-daemon version 7.2.22', qemu: 'QEMU emulator version 7.2.22', fio: 'fio-3.33', vublkCommit: 'abc1234' },
    settings: {
      rounds: 2, blockSize: 4096, imageBytes: 2 ** 30, queueSize: 512, quick: false, driver: { durationSec: 3, warmupSec: 1 },
      host: { durationSec: 3 }, guest: { durationSec: 6, warmupSec: 2, qd: 32, cpus: 1, memoryMiB: 512 }, elapsedSec: 1500,
    },
    storages: [{ id: 'tmpfs', label: 'tmpfs, cache.direct=off', image: '/dev/shm/b.img', direct: false, fstype: 'tmpfs', source: 'tmpfs', mountpoint: '/dev/shm' }],
    servers: ['vublk', 'qsd', 'qsd-io_uring'],
    commands: [{ storage: 'tmpfs', server: 'vublk', command: 'bin/vublk --blockdev driver=file,node-name=disk,filename=/dev/shm/b.img,cache.direct=off' }],
    driver: {
      rows,
      ceiling: [driverRow('tmpfs', 'vublk', 'getid', 128, figures(3_000_000, 1, 10, { driverCpuPct: 95 }))],
      scaling: [
        { ...driverRow('tmpfs', 'vublk', 'randread', 32, figures(200_000, 4, 300, { machineBusyPct: 70 })), queues: 4, iothreads: 1 },
        { ...driverRow('tmpfs', 'vublk', 'randread', 32, figures(260_000, 5, 300, { machineBusyPct: 97 })), queues: 4, iothreads: 2 },
      ],
      coalescing: [0, 50].map((coalescingUs) => {
        const row = driverRow('tmpfs', 'vublk', 'randread', 128, figures(coalescingUs === 0 ? 250_000 : 200_000, coalescingUs === 0 ? 4 : 3, 1000));
        return { ...row, coalescingUs, runs: row.runs.map((run) => ({ ...run, interruptsPerIo: coalescingUs === 0 ? 0.08 : 0.01 })) };
      }),
    },
    guest: { rows: [guest('vublk', 4000, 40), guest('qsd', 3900, 50), guest('qsd-io_uring', 4100, 45)], qemuCommand: 'qemu-system-x86_64 ...', fioCommand: 'fio --name=guest', bootMs: 6400 },
    host: { rows: [host('randread', 1), host('randread', 32), host('randread', 128), host('randwrite', 32)], fioCommand: 'fio --name=host' },
    failures: [],
  };
}

describe('bench: the markdown report', () => {
  const md = renderMarkdown(report(), { json: 'benchmarks.json', png: 'benchmarks-iops-qd.png' });
  const line = (start: string): string => md.split('\n').find((l) => l.startsWith(start)) ?? assert.fail(`no line starting ${start}`);

  it('every layer, the ceiling, where the CPU went, the plot and the command lines', () => {
    for (const h of ['# Benchmarks', '## Summary', '## 1. Front-end driver', '### Driver ceiling', '### Where the CPU went', '## 2. Guest',
      '## 3. Host ceiling', '## Command lines']) assert.match(md, new RegExp(`^${h.replace(/[.]/g, '\\.')}$`, 'm'), h);
    assert.match(md, /!\[[^\]]*\]\(benchmarks-iops-qd\.png\)/);
    assert.match(md, /\[benchmarks\.json\]\(benchmarks\.json\)/);
    assert.match(md, /Generated by `make bench` on 2026-11-27T00:00:00\.000Z \(25\.0 minutes\)/);
    assert.match(md, /bin\/vublk --blockdev driver=file/);
    assert.doesNotMatch(md, /Quick run/);
    assert.match(md, /drives each server directly: 4K randread and randwrite at queue depth 1, 32 and 128 per queue, on 1 queue\./);
  });

  it('a driver row: both qsd engines, the better one in bold, the ratios and the host ceiling', () => {
    // vublk 320k; qsd 160k, io_uring 256k: IOPS against io_uring, CPU 5 against io_uring's 10.
    assert.equal(line('| randread QD32, 1 queue |'),
      '| randread QD32, 1 queue | 320.0k | 160.0k / **256.0k** | 1.25× | 5.0 | 15.0 / **10.0** | 0.50× | 800 / 1600 | 3200 / 3840 | - | 640.0k |');
    // At QD1 the p99 ratio is there, against the lower p99 (qsd's 100 µs).
    assert.match(line('| randread QD1, 1 queue |'), /\| \*\*100\*\* \/ 120 \| 0\.50× \| 20\.0k \|$/);
    assert.match(line('| randwrite QD1, 1 queue |'), /\| - \|$/, 'no host figure for this workload');
  });

  it('the scaling rows: one iothread against two, their ratio and what bounds them', () => {
    assert.match(md, /^## Scaling: 4 queues on 1 and on 2 iothreads$/m);
    assert.equal(line('| randread QD32, 4 queues |'),
      '| randread QD32, 4 queues | 200.0k | 260.0k | 1.30× | 4.0 / 5.0 | vublk-io0 60% | 30 | 70 / 97 | machine CPU (all 2 cores busy) |');
  });

  it('the coalescing rows: off against on, CPU per I/O, interrupts per I/O and latency', () => {
    assert.match(md, /^## Interrupt coalescing$/m);
    assert.equal(line('| randread QD128, 1 queue | 250.0k / 200.0k |'),
      '| randread QD128, 1 queue | 250.0k / 200.0k | 4.0 / 3.0 | 0.75× | 1.0 / 1.0 | 0.080 / 0.010 | 500 / 1000 | 500 / 1000 |');
  });

  it('the summary takes the median ratio over the workloads and the guest\'s', () => {
    assert.equal(line('| tmpfs, cache.direct=off | 1.25×'), '| tmpfs, cache.direct=off | 1.25× (1.25×–1.25×) | 0.50× (0.50×–0.50×) | 0.50× (0.50×–0.50×) | 0.98× | 0.89× |');
  });

  it('the guest row compares with the better qsd figure too', () => {
    assert.match(line('| tmpfs, cache.direct=off | 4.0k'), /\| 4\.0k \| 3\.9k \/ \*\*4\.1k\*\* \| 0\.98× \| 40\.0 \| 50\.0 \/ \*\*45\.0\*\* \| 0\.89× \|/);
  });

  it('says when the driver may cap a figure', () => {
    // The ceiling row saturated the driver, but it is the ceiling: only workloads count.
    assert.match(md, /no figure above is capped by the driver/);
    const r = report();
    r.driver!.rows[0].median.driverCpuPct = 95;
    assert.match(renderMarkdown(r, { json: 'b.json' }), /The driver was above 90% of a core in: tmpfs vublk randread QD1, 1 queue\./);
  });

  it('warns about quick runs and noisy machines, and leaves out the plot when there is none', () => {
    const r = report();
    r.settings.quick = true;
    r.driver!.rows[2].median.otherCpuPct = 61;
    const quick = renderMarkdown(r, { json: 'b.json' });
    assert.match(quick, /\*\*Quick run\*\*/);
    assert.match(quick, /\*\*Other load took 5–61% of a core/);
    assert.doesNotMatch(quick, /!\[/);
  });

  it('lists what failed, first lines only', () => {
    const r = report();
    r.failures = ['driver round 2, disk qsd, 4 queue(s): qemu-storage-daemon exited:\nlong output'];
    assert.match(renderMarkdown(r, { json: 'b.json' }), /\*\*Parts of this run failed\*\* and are missing below:\n\n- driver round 2, disk qsd, 4 queue\(s\): qemu-storage-daemon exited:\n\n/);
  });

  it('formats figures without "-0"', () => {
    assert.equal(fmt(-0.3), '0');
    assert.equal(fmt(-0.04, 1), '0.0');
    assert.equal(fmt(-3), '-3');
    assert.equal(fmt(NaN), '-');
  });
});

describe('bench: the plot', () => {
  it('IOPS against queue depth per op for every server, and the host ceiling dashed', () => {
    const d = plotData(report())!;
    assert.equal(d.title, 'IOPS vs queue depth (tmpfs, cache.direct=off, 1 queue, front-end driver)');
    assert.deepEqual(d.qds, [1, 32, 128]);
    assert.deepEqual(d.panels.map((p) => p.title), ['4K randread', '4K randwrite']);
    const read = d.panels[0].series;
    assert.deepEqual(read.map((s) => s.title), ['vublk (io_uring)', 'qsd aio=threads', 'qsd aio=io_uring', 'fio io_uring on the host (ceiling)']);
    assert.deepEqual(read[0].points, [[1, 10_000], [32, 320_000], [128, 1_280_000]]);
    assert.equal(read[3].dashed, true);
    assert.equal(d.panels[1].series[3].points.length, 1);

    const script = gnuplotScript(d, '/tmp/out "x".png', 'pngcairo');
    assert.match(script, /^set terminal pngcairo noenhanced /m);
    assert.match(script, /^set output "\/tmp\/out \\"x\\"\.png"$/m);
    assert.match(script, /^set multiplot layout 1,2 /m);
    assert.match(script, /^set xtics \("1" 1, "32" 32, "128" 128\)$/m);
    assert.match(script, /^\$p0s0 << EOD\n1 10\.000\n32 320\.000\n128 1280\.000\nEOD$/m);
    assert.match(script, /\$p0s3 using 1:2 with linespoints lw 2 pt 7 dt 2 /);
    assert.match(gnuplotScript(d, 'o.png', 'png'), /^set terminal png noenhanced /m);
  });

  it('nothing to plot without driver figures', () => {
    const r = report();
    delete r.driver;
    assert.equal(plotData(r), undefined);
  });
});
