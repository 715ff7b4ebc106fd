// The plot in the report: IOPS against queue depth for vublk and each qsd
// engine (and fio on the host as the ceiling), one panel per operation, from
// the driver layer on tmpfs with one queue. gnuplot draws it; the script is
// built here (pure) and run by renderPlot.
import { spawnSync } from 'node:child_process';
import { Op, ServerId, serverDef } from './matrix';
import { BenchReport } from './report';

export interface Series {
  title: string;
  /** [queue depth, IOPS], by queue depth. */
  points: Array<[number, number]>;
  /** The host ceiling is drawn dashed. */
  dashed: boolean;
}

export interface Panel {
  title: string;
  series: Series[];
}

export interface PlotData {
  title: string;
  panels: Panel[];
  qds: number[];
}

const engine = (id: ServerId): string => {
  const s = serverDef(id);
  return s.role === 'vublk' ? 'vublk (io_uring)' : s.label;
};

/** What to draw: tmpfs (else the first storage) and one queue (else the fewest). Undefined without driver figures. */
export function plotData(r: BenchReport): PlotData | undefined {
  const rows = r.driver?.rows ?? [];
  if (rows.length === 0) return undefined;
  const storage = rows.some((x) => x.storage === 'tmpfs') ? 'tmpfs' : rows[0].storage;
  const queues = Math.min(...rows.filter((x) => x.storage === storage).map((x) => x.queues));
  const info = r.storages.find((s) => s.id === storage);
  const ops = (['randread', 'randwrite'] as Op[]).filter((op) => rows.some((x) => x.storage === storage && x.op === op));
  const qds = [...new Set(rows.map((x) => x.qd))].sort((a, b) => a - b);
  const panels = ops.map((op): Panel => {
    const series: Series[] = r.servers.map((server) => ({
      title: engine(server),
      points: rows.filter((x) => x.storage === storage && x.queues === queues && x.op === op && x.server === server)
        .map((x): [number, number] => [x.qd, x.median.iops]).sort((a, b) => a[0] - b[0]),
      dashed: false,
    }));
    const host = (r.host?.rows ?? []).filter((x) => x.storage === storage && x.jobs === queues && x.op === op)
      .map((x): [number, number] => [x.qd, x.median.iops]).sort((a, b) => a[0] - b[0]);
    series.push({ title: 'fio io_uring on the host (ceiling)', points: host, dashed: true });
    return { title: `${r.settings.blockSize / 1024}K ${op}`, series: series.filter((s) => s.points.length > 0) };
  });
  const where = `${info?.label ?? storage}, ${queues} ${queues === 1 ? 'queue' : 'queues'}, front-end driver`;
  return { title: `IOPS vs queue depth (${where})`, panels, qds };
}

const quote = (s: string): string => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

/** A gnuplot script writing `png` with `terminal` (pngcairo, or png where cairo is missing). */
export function gnuplotScript(d: PlotData, png: string, terminal: 'pngcairo' | 'png'): string {
  const lines = [
    // noenhanced: "io_uring" is a name, not io with a subscript u.
    terminal === 'pngcairo' ? `set terminal pngcairo noenhanced size ${520 * d.panels.length + 80},440 font ",10"` : `set terminal png noenhanced size ${520 * d.panels.length + 80},440`,
    `set output ${quote(png)}`,
    `set multiplot layout 1,${d.panels.length} title ${quote(d.title)}`,
    'set logscale x 2',
    `set xrange [${Math.min(...d.qds) * 0.8}:${Math.max(...d.qds) * 1.25}]`,
    `set xtics (${d.qds.map((q) => `"${q}" ${q}`).join(', ')})`,
    'set xlabel "queue depth (per queue)"',
    'set ylabel "IOPS (thousands)"',
    'set yrange [0:*]',
    'set grid',
    'set key top left Left reverse opaque',
  ];
  d.panels.forEach((p, i) => {
    p.series.forEach((s, j) => {
      lines.push(`$p${i}s${j} << EOD`, ...s.points.map(([qd, iops]) => `${qd} ${(iops / 1000).toFixed(3)}`), 'EOD');
    });
    lines.push(`set title ${quote(p.title)}`);
    const plots = p.series.map((s, j) => `$p${i}s${j} using 1:2 with linespoints lw 2 pt 7 ${s.dashed ? 'dt 2 lc rgb "gray40" ' : ''}title ${quote(s.title)}`);
    lines.push(`plot ${plots.join(', \\\n     ')}`);
  });
  lines.push('unset multiplot', '');
  return lines.join('\n');
}

function hasCairo(): boolean {
  return spawnSync('gnuplot', ['-e', 'set terminal pngcairo'], { stdio: 'ignore' }).status === 0;
}

/** Draw the plot into `png`; a reason when it could not (no driver figures, no gnuplot). */
export function renderPlot(r: BenchReport, png: string): string | undefined {
  const d = plotData(r);
  if (d === undefined || d.panels.length === 0) return 'no driver-layer figures to plot';
  const probe = spawnSync('gnuplot', ['--version'], { encoding: 'utf8' });
  if (probe.error !== undefined || probe.status !== 0) return 'gnuplot not found (scripts/install-deps.sh --bench installs gnuplot-nox)';
  const run = spawnSync('gnuplot', [], { input: gnuplotScript(d, png, hasCairo() ? 'pngcairo' : 'png'), encoding: 'utf8' });
  if (run.status !== 0) return `gnuplot failed: ${run.stderr}`;
  return undefined;
}
