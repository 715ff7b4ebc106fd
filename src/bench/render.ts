// docs/benchmarks.md from the report: method, the three layers with vublk,
// each qsd engine and their ratios, where the CPU went, the driver ceiling
// and the exact command lines. Pure.
import { Comparison, Ratio, compareWorkload } from './compare';
import { COALESCING, LIMITS, Op, SCALING, limitsDurationSec, ServerDef, ServerId, StorageId, serverDef, serves, storageDef, workloadLabel } from './matrix';
import {
  BenchReport, DriverRow, GuestRow, HostRow, NOISY_OTHER_PCT, RunFigures, SATURATED_PCT, StorageInfo, limitOf,
} from './report';
import { median } from './stats';

/** Fixed digits; '-' for a missing figure, and no "-0" for a small negative (other CPU % can dip below zero). */
export function fmt(v: number, digits = 0): string {
  if (!Number.isFinite(v)) return '-';
  const s = v.toFixed(digits);
  return Number(s) === 0 ? (0).toFixed(digits) : s;
}
export const kiops = (v: number): string => (Number.isFinite(v) ? `${(v / 1000).toFixed(1)}k` : '-');
export const times = (v: number): string => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '-');

/** `align`: one letter per column, l or r. */
function table(head: string[], align: string, rows: string[][]): string[] {
  return [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (align[i] === 'r' ? ' ---: ' : ' --- ')).join('|')}|`,
    ...rows.map((row) => `| ${row.join(' | ')} |`),
    '',
  ];
}

/** How a server is named in the text: the engine it runs included. */
export function serverName(s: ServerDef): string {
  return s.role === 'vublk' ? 'vublk (io_uring, its default)' : s.aio === undefined ? 'qsd aio=threads (its default)' : s.label;
}

/** qsd's figures, one per engine in plan order, the one the ratio used in bold. */
function qsdCell(values: Array<{ server: ServerId; text: string }>, chosen: Ratio | undefined): string {
  if (values.length === 0) return '-';
  return values.map((v) => (v.server === chosen?.against?.server ? `**${v.text}**` : v.text)).join(' / ');
}

/** The qsd engines that ran on `storage`, in plan order. */
const qsdServers = (r: BenchReport, storage: StorageId): ServerId[] =>
  r.servers.filter((s) => serverDef(s).role === 'qsd' && serves(serverDef(s), storageDef(storage)));

/** One cell per engine in `qsd`, '-' where an engine has no row (not run there, or failed). */
function qsdValues<T extends { server: ServerId }>(rows: readonly T[], qsd: readonly ServerId[], f: (x: T) => string): Array<{ server: ServerId; text: string }> {
  return qsd.map((id) => {
    const x = rows.find((y) => y.server === id);
    return { server: id, text: x === undefined ? '-' : f(x) };
  });
}

const engineList = (ids: ServerId[]): string => ids.map((id) => serverDef(id).aio ?? 'threads').join(' / ');

interface ComparableRow {
  server: ServerId;
  median: { iops: number; serverCpuUsPerIo: number; p99Us: number };
}

/** vublk's row and qsd's rows of one workload (driver or guest layer), compared; `qd` 1 adds the p99 ratio. */
export function compareRows(rows: readonly ComparableRow[], qsd: readonly ServerId[], qd: number): Comparison | undefined {
  const vublk = rows.find((x) => x.server === 'vublk');
  if (vublk === undefined) return undefined;
  const q = qsd.map((id) => rows.find((x) => x.server === id)).filter((x): x is ComparableRow => x !== undefined);
  return compareWorkload({ server: 'vublk', ...vublk.median }, q.map((x) => ({ server: x.server, ...x.median })), qd);
}

function driverTable(r: BenchReport, s: StorageInfo): string[] {
  const rows = (r.driver?.rows ?? []).filter((x) => x.storage === s.id);
  const qsd = qsdServers(r, s.id);
  const host = r.host?.rows ?? [];
  const keys = [...new Map(rows.map((x) => [`${x.op}|${x.queues}|${x.qd}`, x])).values()]
    .sort((a, b) => a.op.localeCompare(b.op) || a.queues - b.queues || a.qd - b.qd);
  const eng = engineList(qsd);
  return table(
    ['workload', 'vublk IOPS', `qsd IOPS (${eng})`, 'IOPS ×', 'vublk CPU µs/IO', `qsd CPU µs/IO (${eng})`, 'CPU/IO ×',
      'vublk p50 / p99 µs', `qsd p99 µs (${eng})`, 'p99 × (QD1)', 'host fio IOPS'],
    'lrrrrrrrrrr',
    keys.map((k) => {
      const same = rows.filter((x) => x.op === k.op && x.queues === k.queues && x.qd === k.qd);
      const v = same.find((x) => x.server === 'vublk');
      const c = compareRows(same, qsd, k.qd);
      const q = (f: (x: DriverRow) => string): Array<{ server: ServerId; text: string }> => qsdValues(same, qsd, f);
      const h = host.find((x) => x.storage === s.id && x.op === k.op && x.jobs === k.queues && x.qd === k.qd);
      return [
        workloadLabel(k),
        v !== undefined ? kiops(v.median.iops) : '-', qsdCell(q((x) => kiops(x.median.iops)), c?.iops), times(c?.iops.ratio ?? NaN),
        v !== undefined ? fmt(v.median.serverCpuUsPerIo, 1) : '-', qsdCell(q((x) => fmt(x.median.serverCpuUsPerIo, 1)), c?.cpu), times(c?.cpu.ratio ?? NaN),
        v !== undefined ? `${fmt(v.median.p50Us)} / ${fmt(v.median.p99Us)}` : '-', qsdCell(q((x) => fmt(x.median.p99Us)), c?.p99), times(c?.p99?.ratio ?? NaN),
        h !== undefined ? kiops(h.median.iops) : '-',
      ];
    }),
  );
}

function guestTable(r: BenchReport): string[] {
  const rows = r.guest?.rows ?? [];
  const qsdAll = [...new Set(r.storages.flatMap((s) => qsdServers(r, s.id)))];
  const eng = engineList(qsdAll);
  return table(
    ['storage', 'vublk IOPS', `qsd IOPS (${eng})`, 'IOPS ×', 'vublk server CPU µs/IO', `qsd server CPU µs/IO (${eng})`, 'CPU/IO ×',
      'vublk p50 / p99 µs', `qsd p99 µs (${eng})`],
    'lrrrrrrrr',
    r.storages.filter((s) => rows.some((x) => x.storage === s.id)).map((s) => {
      const same = rows.filter((x) => x.storage === s.id);
      const qsd = qsdServers(r, s.id);
      const v = same.find((x) => x.server === 'vublk');
      const c = compareRows(same, qsd, r.settings.guest.qd);
      // All engines of the layer, so the columns line up: aio=native shows as "-" where O_DIRECT is off.
      const q = (f: (x: GuestRow) => string): Array<{ server: ServerId; text: string }> => qsdValues(same, qsdAll, f);
      return [
        s.label,
        v !== undefined ? kiops(v.median.iops) : '-', qsdCell(q((x) => kiops(x.median.iops)), c?.iops), times(c?.iops.ratio ?? NaN),
        v !== undefined ? fmt(v.median.serverCpuUsPerIo, 1) : '-', qsdCell(q((x) => fmt(x.median.serverCpuUsPerIo, 1)), c?.cpu), times(c?.cpu.ratio ?? NaN),
        v !== undefined ? `${fmt(v.median.p50Us)} / ${fmt(v.median.p99Us)}` : '-', qsdCell(q((x) => fmt(x.median.p99Us)), undefined),
      ];
    }),
  );
}

function hostTable(r: BenchReport, s: StorageInfo): string[] {
  const rows = (r.host?.rows ?? []).filter((x) => x.storage === s.id);
  const drv = (r.driver?.rows ?? []).filter((x) => x.storage === s.id);
  const qsd = qsdServers(r, s.id);
  return table(
    ['workload', 'fio IOPS', 'fio CPU µs/IO', 'p50 / p99 µs', 'vublk IOPS ÷ host', 'best qsd IOPS ÷ host'],
    'lrrrrr',
    rows.map((h: HostRow) => {
      const same = drv.filter((x) => x.op === h.op && x.queues === h.jobs && x.qd === h.qd);
      const v = same.find((x) => x.server === 'vublk');
      const c = compareRows(same, qsd, h.qd);
      const share = (iops: number | undefined): string => (iops !== undefined && h.median.iops > 0 ? `${fmt((100 * iops) / h.median.iops)}%` : '-');
      return [
        `${h.op} QD${h.qd}, ${h.jobs} ${h.jobs === 1 ? 'job' : 'jobs'}`,
        kiops(h.median.iops), fmt(h.median.cpuUsPerIo, 1), `${fmt(h.median.p50Us)} / ${fmt(h.median.p99Us)}`,
        share(v?.median.iops), share(c?.iops.against?.value),
      ];
    }),
  );
}

/** Median and range of vublk's ratios over a storage's workloads, for the summary. */
function ratioSpread(values: number[]): string {
  const v = values.filter(Number.isFinite);
  if (v.length === 0) return '-';
  return `${times(median(v))} (${times(Math.min(...v))}–${times(Math.max(...v))})`;
}

function summary(r: BenchReport): string[] {
  const rows = r.storages.map((s) => {
    const drv = (r.driver?.rows ?? []).filter((x) => x.storage === s.id);
    const groups = [...new Map(drv.map((x) => [`${x.op}|${x.queues}|${x.qd}`, drv.filter((y) => y.op === x.op && y.queues === x.queues && y.qd === x.qd)])).values()];
    const cs = groups.map((g) => compareRows(g, qsdServers(r, s.id), g[0].qd)).filter((c): c is Comparison => c !== undefined);
    const g = compareRows((r.guest?.rows ?? []).filter((x) => x.storage === s.id), qsdServers(r, s.id), r.settings.guest.qd);
    return [
      s.label,
      ratioSpread(cs.map((c) => c.iops.ratio)), ratioSpread(cs.map((c) => c.cpu.ratio)), ratioSpread(cs.map((c) => c.p99?.ratio ?? NaN)),
      times(g?.iops.ratio ?? NaN), times(g?.cpu.ratio ?? NaN),
    ];
  });
  return table(
    ['storage', 'driver: IOPS ×', 'driver: server CPU/IO ×', 'driver: p99 × (QD1)', 'guest: IOPS ×', 'guest: server CPU/IO ×'],
    'lrrrrr', rows,
  );
}

function ceilingSection(r: BenchReport): string[] {
  const ceiling = r.driver?.ceiling ?? [];
  if (ceiling.length === 0) return [];
  const rows = r.driver?.rows ?? [];
  const lines = ['### Driver ceiling', '',
    'First in every round, the driver sends VIRTIO_BLK_T_GET_ID to vublk, which answers it from memory without touching ' +
    'storage: the cheapest request there is. Its IOPS at each queue depth and queue count is the most this driver reaches on ' +
    'this machine; a workload near it, or with the driver near a full core, would measure the driver rather than the server.', ''];
  lines.push(...table(
    ['QD', 'queues', 'GET_ID IOPS', 'driver CPU %', 'driver CPU µs/IO', 'IOPS with a whole core', 'best workload IOPS there', 'of the ceiling'],
    'rrrrrrrr',
    ceiling.map((c) => {
      const best = Math.max(...rows.filter((x) => x.qd === c.qd && x.queues === c.queues).map((x) => x.median.iops));
      return [String(c.qd), String(c.queues), kiops(c.median.iops), fmt(c.median.driverCpuPct), fmt(c.median.driverCpuUsPerIo, 1),
        kiops(1e6 / c.median.driverCpuUsPerIo), kiops(best), Number.isFinite(best) ? `${fmt((100 * best) / c.median.iops)}%` : '-'];
    }),
  ));
  const bound = rows.filter((x) => x.median.driverCpuPct >= SATURATED_PCT);
  const near = rows.filter((x) => {
    const c = ceiling.find((y) => y.qd === x.qd && y.queues === x.queues);
    return c !== undefined && x.median.iops >= 0.9 * c.median.iops;
  });
  if (bound.length === 0 && near.length === 0) {
    lines.push(`No workload had the driver above ${SATURATED_PCT}% of a core or came within 90% of the ceiling at its queue depth ` +
      'and queue count: no figure above is capped by the driver.');
  } else {
    const name = (x: DriverRow): string => `${x.storage} ${x.server} ${workloadLabel(x)}`;
    if (bound.length > 0) lines.push(`The driver was above ${SATURATED_PCT}% of a core in: ${bound.map(name).join('; ')}.`);
    if (near.length > 0) {
      lines.push(`Within 90% of the driver ceiling: ${near.map(name).join('; ')}. These figures are bounded by the driver's round trip ` +
        '(its CPU, or at QD 1 the wake-ups on both sides) as much as by the server\'s work.');
    }
  }
  lines.push('');
  return lines;
}

/** The target of the performance issue: IOPS with the queues on two iothreads against one. */
export const SCALING_TARGET = 1.7;

function scalingSection(r: BenchReport): string[] {
  const rows = r.driver?.scaling ?? [];
  if (rows.length === 0) return [];
  const storage = r.storages.find((s) => s.id === rows[0].storage);
  const lines = [`## Scaling: ${SCALING.queues} queues on 1 and on ${SCALING.iothreads} iothreads`, '',
    `vublk alone (qemu-storage-daemon 7.2 runs an export on one iothread only), ${storage?.label ?? rows[0].storage}, QD ${SCALING.qd} ` +
    `per queue, the same front-end driver: the export's ${SCALING.queues} queues on one iothread, then spread round-robin over ` +
    `${SCALING.iothreads} (\`iothread.0=io0,iothread.1=io1\`). The target is ${SCALING_TARGET}× the IOPS where the driver is not the limit; ` +
    `with ${r.machine.nproc} CPUs shared by the driver, the iothreads and everything else, the machine's CPU caps it first (see "machine busy").`, ''];
  const ops = [...new Set(rows.map((x) => x.op))];
  lines.push(...table(
    ['workload', 'IOPS, 1 iothread', `IOPS, ${SCALING.iothreads} iothreads`, 'scaling ×', 'server CPU µs/IO (1 / 2)',
      'server threads (2)', 'driver CPU %', 'machine busy % (1 / 2)', 'limited by (2)'],
    'lrrrrlrrl',
    ops.map((op) => {
      const one = rows.find((x) => x.op === op && x.iothreads === 1);
      const two = rows.find((x) => x.op === op && x.iothreads === SCALING.iothreads);
      const f = (x: DriverRow | undefined, g: (m: RunFigures) => string): string => (x === undefined ? '-' : g(x.median));
      return [workloadLabel({ op, qd: SCALING.qd, queues: SCALING.queues }), f(one, (m) => kiops(m.iops)), f(two, (m) => kiops(m.iops)),
        one !== undefined && two !== undefined ? times(two.median.iops / one.median.iops) : '-',
        `${f(one, (m) => fmt(m.serverCpuUsPerIo, 1))} / ${f(two, (m) => fmt(m.serverCpuUsPerIo, 1))}`,
        two === undefined ? '-' : medianRun(two.runs)?.serverThreads ?? '-', f(two, (m) => fmt(m.driverCpuPct)),
        `${f(one, (m) => fmt(m.machineBusyPct))} / ${f(two, (m) => fmt(m.machineBusyPct))}`,
        f(two, (m) => limitOf(m, r.machine.nproc))];
    }),
  ));
  lines.push('');
  return lines;
}

function coalescingSection(r: BenchReport): string[] {
  const rows = r.driver?.coalescing ?? [];
  if (rows.length === 0) return [];
  const storage = r.storages.find((s) => s.id === rows[0].storage);
  const lines = [`## Interrupt coalescing`, '',
    `vublk alone, ${storage?.label ?? rows[0].storage}, QD ${COALESCING.qd} on ${COALESCING.queues} queue, the same front-end driver: ` +
    `the export without coalescing, then with \`x-vublk-coalescing.delay-us=${COALESCING.delayUs}\` (no rate threshold): an interrupt ` +
    `waits up to ${COALESCING.delayUs} µs, so one covers what completed meanwhile. Fewer interrupts mean fewer eventfd writes for the ` +
    `server and fewer wake-ups for the driver (a guest's vCPU, under QEMU), at the price of latency.`, ''];
  const ops = [...new Set(rows.map((x) => x.op))];
  const perIo = (x: DriverRow | undefined): string => {
    const v = x?.runs.map((run) => run.interruptsPerIo).filter((n): n is number => n !== undefined) ?? [];
    return v.length === 0 ? '-' : fmt(median(v), 3);
  };
  lines.push(...table(
    ['workload', 'IOPS (off / on)', 'server CPU µs/IO (off / on)', 'CPU/IO ×', 'driver CPU µs/IO (off / on)',
      'interrupts per I/O (off / on)', 'p50 / p99 µs, off', 'p50 / p99 µs, on'],
    'lrrrrrrr',
    ops.map((op) => {
      const off = rows.find((x) => x.op === op && x.coalescingUs === 0);
      const on = rows.find((x) => x.op === op && (x.coalescingUs ?? 0) > 0);
      const f = (x: DriverRow | undefined, g: (m: RunFigures) => string): string => (x === undefined ? '-' : g(x.median));
      return [workloadLabel({ op, qd: COALESCING.qd, queues: COALESCING.queues }),
        `${f(off, (m) => kiops(m.iops))} / ${f(on, (m) => kiops(m.iops))}`,
        `${f(off, (m) => fmt(m.serverCpuUsPerIo, 1))} / ${f(on, (m) => fmt(m.serverCpuUsPerIo, 1))}`,
        off !== undefined && on !== undefined ? times(on.median.serverCpuUsPerIo / off.median.serverCpuUsPerIo) : '-',
        `${f(off, (m) => fmt(m.driverCpuUsPerIo, 1))} / ${f(on, (m) => fmt(m.driverCpuUsPerIo, 1))}`,
        `${perIo(off)} / ${perIo(on)}`,
        f(off, (m) => `${fmt(m.p50Us)} / ${fmt(m.p99Us)}`), f(on, (m) => `${fmt(m.p50Us)} / ${fmt(m.p99Us)}`)];
    }),
  ));
  lines.push('');
  return lines;
}

function limitsSection(r: BenchReport): string[] {
  const rows = r.driver?.limits ?? [];
  if (rows.length === 0) return [];
  const storage = r.storages.find((s) => s.id === rows[0].storage);
  const lines = [`## I/O limits`, '',
    `vublk alone, ${storage?.label ?? rows[0].storage}, QD ${LIMITS.qd} on each of ${LIMITS.queues} queues spread over ${LIMITS.iothreads} ` +
    `iothreads (one limit binds both), the front-end driver offering far more than the limit, measured for ` +
    `${limitsDurationSec(r.settings.quick)} s after ` +
    `${LIMITS.warmupSec} s of warm-up. Requests over the limit wait in line; none fails. The target: the rate held within 5 % of the limit.`, ''];
  lines.push(...table(
    ['workload', 'limit (x-vublk-throttling)', 'achieved', 'achieved ÷ limit (per round)', 'within 5 %', 'p50 / p99 µs'],
    'llrrll',
    rows.map((x) => {
      const bytes = x.limit!.key.startsWith('bps');
      const rate = (run: RunFigures): number => (bytes ? run.iops * r.settings.blockSize : run.iops);
      const ratios = x.runs.map((run) => rate(run) / x.limit!.value);
      const shown = (v: number): string => (bytes ? `${(v / (1 << 20)).toFixed(2)} MiB/s` : `${fmt(v, 0)} IOPS`);
      return [workloadLabel({ op: x.op as Op, qd: x.qd, queues: x.queues }), `${x.limit!.key}=${x.limit!.value} (${shown(x.limit!.value)})`,
        shown(rate(x.median)), ratios.map((v) => v.toFixed(3)).join(', '),
        ratios.every((v) => Math.abs(v - 1) <= 0.05) ? 'yes' : 'no', `${fmt(x.median.p50Us)} / ${fmt(x.median.p99Us)}`];
    }),
  ));
  lines.push('');
  return lines;
}

/** The run whose IOPS is the median (the lower middle one for an even count). */
function medianRun<T extends { iops: number }>(runs: readonly T[]): T | undefined {
  const sorted = [...runs].sort((a, b) => a.iops - b.iops);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function cpuSection(r: BenchReport): string[] {
  const rows = r.driver?.rows ?? [];
  if (rows.length === 0) return [];
  const lines = ['### Where the CPU went', '',
    `CPU in % of one core over the measured interval; "other" is everything else on the machine (other processes, interrupts); ` +
    `machine busy and steal in % of all ${r.machine.nproc} CPUs. A thread or process above ${SATURATED_PCT}% of a core counts as ` +
    'saturated. Server threads are from the median round.', ''];
  for (const s of r.storages) {
    // By workload, then server in plan order.
    const mine = rows.filter((x) => x.storage === s.id).sort((a, b) =>
      a.op.localeCompare(b.op) || a.queues - b.queues || a.qd - b.qd || r.servers.indexOf(a.server) - r.servers.indexOf(b.server));
    if (mine.length === 0) continue;
    lines.push(`<details><summary>${s.label}</summary>`, '');
    lines.push(...table(
      ['workload', 'server', 'server CPU %', 'server threads', 'driver CPU %', 'other CPU %', 'machine busy %', 'steal %', 'limited by'],
      'llrlrrrrl',
      mine.map((x) => [workloadLabel(x), serverDef(x.server).label, fmt(x.median.serverCpuPct),
        medianRun(x.runs)?.serverThreads ?? '-', fmt(x.median.driverCpuPct), fmt(x.median.otherCpuPct), fmt(x.median.machineBusyPct),
        fmt(x.median.stealPct, 1), limitOf(x.median, r.machine.nproc)]),
    ));
    lines.push('</details>', '');
  }
  return lines;
}

function commandSection(r: BenchReport, jsonName: string): string[] {
  const lines = ['## Command lines', '',
    'Every server gets the same arguments; only the binary differs. `$SOCKET` is a fresh socket per server, `$QUEUES` the ' +
    'workload\'s queue count (the guest layer uses 1).', '', '```'];
  for (const s of r.storages) {
    lines.push(`# ${s.label}: ${s.image} on ${s.fstype} (${s.source})`);
    for (const c of r.commands.filter((x) => x.storage === s.id)) lines.push(c.command);
  }
  lines.push('```', '');
  if (r.guest !== undefined) {
    lines.push('The guest (one `-chardev`/`-device` pair per server and storage, each disk at its own PCI slot; `$INITRD` is the ' +
      'test guest\'s initramfs with fio and the generated /test.sh appended), and fio inside it:', '', '```',
    r.guest.qemuCommand, r.guest.fioCommand, '```', '');
  }
  if (r.host !== undefined) {
    lines.push('The host ceiling (`$IMAGE`, `$OP`, `$QD` and `$JOBS` from the storage and workload; `$DIRECT` is 1 for cache.direct=on, else 0):', '', '```', r.host.fioCommand, '```', '');
  }
  lines.push(`Per-run figures: [${jsonName}](${jsonName}).`, '');
  return lines;
}

/** "randread and randwrite at queue depth 1, 32 and 128 per queue, on 1 and 4 queues". */
function driverMatrix(r: BenchReport): string {
  const rows = r.driver?.rows ?? [];
  const and = (xs: Array<string | number>): string => (xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`);
  const uniq = <T>(xs: T[]): T[] => [...new Set(xs)];
  const sorted = (xs: number[]): number[] => uniq(xs).sort((a, b) => a - b);
  return `${and(uniq(rows.map((x) => x.op)))} at queue depth ${and(sorted(rows.map((x) => x.qd)))} per queue, ` +
    `on ${and(sorted(rows.map((x) => x.queues)))} ${rows.every((x) => x.queues === 1) ? 'queue' : 'queues'}`;
}

export interface RenderNames {
  /** File names relative to the markdown. */
  json: string;
  png?: string;
}

export function renderMarkdown(r: BenchReport, names: RenderNames): string {
  const s = r.settings;
  const servers = r.servers.map((id) => serverDef(id));
  const lines: string[] = ['# Benchmarks', '',
    `Generated by \`${r.command}\` on ${r.date} (${fmt(s.elapsedSec / 60, 1)} minutes). Do not edit by hand: run it again.`, ''];
  if (s.quick) {
    lines.push('> **Quick run** (one round of short runs): the figures show that the benchmark works, not how fast anything is. ' +
      'Run `make bench` for the real thing.', '');
  } else if (s.rounds < 2) {
    lines.push('> **One round**: every figure is a single sample, not a median; expect it to move with the machine\'s other load.', '');
  }
  if ((r.failures ?? []).length > 0) {
    lines.push('**Parts of this run failed** and are missing below:', '', ...r.failures.map((f) => `- ${f.split('\n')[0]}`), '');
  }
  lines.push(
    'vublk and qemu-storage-daemon (qsd) side by side in one run, three ways:', '',
    '1. **Front-end driver**: our own vhost-user front-end (src/frontend, the ring driver of src/bench/driver.ts, one Node ' +
    `process) drives each server directly: ${s.blockSize / 1024}K ${driverMatrix(r)}.`,
    `2. **Guest**: fio in a Linux guest (QEMU ${r.versions.qemu.replace(/^QEMU emulator version /, '')} with TCG, ${s.guest.cpus} vCPU, ` +
    `${s.guest.memoryMiB} MiB) does ${s.blockSize / 1024}K random reads at QD ${s.guest.qd} (libaio, direct=1); every server is a virtio disk of the same guest.`,
    `3. **Host ceiling**: fio with io_uring straight on the image (same block size, queue depth and O_DIRECT setting, one job per queue): what a back-end could approach.`,
    '');
  lines.push('Storage:', '', ...table(['storage', 'image', 'filesystem', 'O_DIRECT'], 'llll',
    r.storages.map((x) => [x.label, `${x.image} (${s.imageBytes / 2 ** 30} GiB, written in full)`, `${x.fstype} on ${x.source}, mounted at ${x.mountpoint}`,
      x.direct ? 'cache.direct=on' : 'off'])));
  if (r.storages.some((x) => x.id === 'disk')) {
    lines.push('With cache.direct=off the disk image is in the page cache (it was just written), so reads come from memory ' +
      'through the disk filesystem and writes are written back by the kernel; with cache.direct=on every request goes to the device.', '');
  }
  lines.push(
    `Servers: ${servers.map(serverName).join(', ')}. Each gets literally the same command line with only the binary changed ` +
    '(see [Command lines](#command-lines)): one file node on the image with the storage\'s O_DIRECT setting, one iothread object, ' +
    'one vhost-user-blk export on it with the workload\'s queue count. qsd runs once per aio engine.', '',
    '**Ratios (×) are vublk ÷ the better qsd engine for that figure**: the higher IOPS, the lower server CPU per I/O, the lower ' +
    'p99 (the qsd figure used is in bold). IOPS × above 1 and CPU/IO × or p99 × below 1 favour vublk. Server CPU is the whole ' +
    'server process (all threads, io_uring workers included) from /proc/PID/stat over the measured interval, divided by the I/Os completed in it.', '',
    [`Method: every layer runs ${s.rounds} interleaved round(s) (each round visits every configuration, servers in a rotated order); ` +
    'every figure is the median over the rounds.',
    r.driver !== undefined ? `Driver: ${s.driver.warmupSec} s warm-up then ${s.driver.durationSec} s measured per workload, a fresh ` +
      `vhost-user connection per workload, one server process per storage and queue count, queues of ${s.queueSize} descriptors.` : '',
    r.guest !== undefined ? `Guest: one boot for the whole layer; ${s.guest.warmupSec} s fio warm-up, then ${s.guest.durationSec} s measured.` : '',
    r.host !== undefined ? `Host: ${s.host.durationSec} s fio runs.` : ''].filter((x) => x !== '').join(' '), '',
    `Machine: ${r.machine.nproc} CPUs (${r.machine.cpuModel}), ${fmt(r.machine.memoryGiB)} GiB, Linux ${r.machine.kernel}, shared with other work. ` +
    `Node ${r.versions.node}, ${r.versions.qemuStorageDaemon}, ${r.versions.fio}, vublk ${r.versions.vublkCommit}.`, '');

  const other = (r.driver?.rows ?? []).map((x) => x.median.otherCpuPct).filter(Number.isFinite);
  if (other.length > 0 && Math.max(...other) > NOISY_OTHER_PCT) {
    lines.push(`**Other load took ${fmt(Math.min(...other))}–${fmt(Math.max(...other))}% of a core during the driver runs** ` +
      '(medians per configuration, see "other CPU %" under Where the CPU went). With the machine saturated, IOPS ≈ free CPU ÷ (server + driver CPU ' +
      'per I/O): IOPS are depressed and move with the other load, so compare the CPU-per-I/O columns first.', '');
  }

  lines.push('## Summary', '', 'Median of vublk\'s ratios over the driver workloads of each storage (range in brackets), and the guest\'s:', '', ...summary(r));
  if (names.png !== undefined) lines.push(`![IOPS against queue depth, vublk and qsd](${names.png})`, '');

  if (r.driver !== undefined) {
    lines.push('## 1. Front-end driver', '');
    for (const st of r.storages) {
      if (!r.driver.rows.some((x) => x.storage === st.id)) continue;
      lines.push(`### ${st.label}`, '', ...driverTable(r, st));
    }
    lines.push(...ceilingSection(r), ...cpuSection(r));
  }
  lines.push(...scalingSection(r), ...coalescingSection(r), ...limitsSection(r));
  if (r.guest !== undefined) {
    lines.push('## 2. Guest', '',
      `fio's IOPS and latency in the guest; server CPU is the server's CPU between the markers the guest prints around fio, ` +
      `divided by fio's I/O count. The guest runs under TCG (no KVM here), so its vCPU, not the server, bounds the IOPS: ` +
      `compare the server CPU per I/O, which carries over to a KVM guest. The guest booted in ${fmt(r.guest.bootMs / 1000, 1)} s.`, '',
      ...guestTable(r));
  }
  if (r.host !== undefined) {
    lines.push('## 3. Host ceiling', '',
      'fio with io_uring on the image itself; fio\'s CPU is its whole process tree (its jobs and their io_uring workers) over the ' +
      'run, divided by its I/O count. The last columns put the driver layer\'s IOPS for the same workload against it.', '');
    for (const st of r.storages) {
      if (!r.host.rows.some((x) => x.storage === st.id)) continue;
      lines.push(`### ${st.label}`, '', ...hostTable(r, st));
    }
  }
  lines.push(...commandSection(r, names.json));
  return lines.join('\n');
}
