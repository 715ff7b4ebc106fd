// Layer 3: the host ceiling. fio with io_uring straight on each image, at the
// driver layer's block size, queue depths and O_DIRECT setting, one job per
// queue: what a back-end could approach. fio's CPU is its whole process tree
// (jobs and io_uring workers, whose time fio's own usr/sys figures leave out),
// read by a wrapper shell from its children's times once fio has exited.
import { warmImage } from './images';
import { spawn } from 'node:child_process';
import { CLK_TCK, parseProcStat } from '../util/proc-stats';
import { FioFigures, hostFioArgs, parseFioJson } from './fio';
import { Op, StorageId, workloadLabel, workloads } from './matrix';
import { Plan } from './options';
import { HOST_FIGURES, HostRow, HostRun, StorageInfo, medianOf } from './report';
import { RunsByCell } from './stats';

const STAT_MARK = 'VUBLK-FIO-SHELL-STAT ';
/** After fio exits, the shell's own /proc stat holds fio's CPU in its children's fields. */
const WRAPPER = `fio "$@"; s=$?; read -r st < /proc/self/stat; printf '${STAT_MARK}%s\\n' "$st" >&2; exit $s`;

export interface FioRun {
  figures: FioFigures;
  /** CPU seconds of fio and everything it waited for. */
  cpuSec: number;
}

/** Run fio with `args` (JSON output) and measure its CPU. */
export function runFio(args: string[]): Promise<FioRun> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', WRAPPER, 'sh', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.once('error', reject);
    child.once('close', (code) => {
      try {
        if (code !== 0) throw new Error(`fio ${args.join(' ')} exited with ${code}:\n${err}`);
        const line = err.split('\n').find((l) => l.startsWith(STAT_MARK));
        if (line === undefined) throw new Error(`no CPU figures from fio's wrapper:\n${err}`);
        const st = parseProcStat(line.slice(STAT_MARK.length));
        resolve({ figures: parseFioJson(out), cpuSec: (st.cutime + st.cstime) / CLK_TCK });
      } catch (e) {
        reject(e);
      }
    });
  });
}

interface Cell { storage: StorageId; op: Op; qd: number; jobs: number }

export class HostLayer {
  private readonly runs = new RunsByCell<Cell, HostRun>((c) => `${c.storage}|${c.op}|${c.qd}|${c.jobs}`);
  /** Runs that failed; the report lists them. */
  readonly failures: string[] = [];

  constructor(private readonly plan: Plan, private readonly storages: StorageInfo[], private readonly log: (line: string) => void) {}

  async round(round: number): Promise<void> {
    const { plan } = this;
    for (const s of this.storages) {
      for (const w of workloads(plan.ops, plan.qds, plan.queues)) {
        const cell: Cell = { storage: s.id, op: w.op, qd: w.qd, jobs: w.queues };
        const args = hostFioArgs({ filename: s.image, op: w.op, blockSize: plan.blockSize, qd: w.qd, jobs: w.queues, direct: s.direct, durationSec: plan.host.durationSec });
        let fio: FioRun;
        try {
          if (!s.direct) warmImage(s.image);
          fio = await runFio(args);
        } catch (e) {
          const msg = `host round ${round}, ${s.id} ${workloadLabel(w)}: ${(e as Error).message}`;
          this.failures.push(msg);
          this.log(`FAILED ${msg}`);
          continue;
        }
        const { figures: f, cpuSec } = fio;
        const run: HostRun = { round, ios: f.ios, seconds: f.seconds, iops: f.iops, p50Us: f.p50Us, p99Us: f.p99Us, cpuSec, cpuUsPerIo: (cpuSec * 1e6) / f.ios };
        this.runs.add(cell, run);
        this.log(`host round ${round}/${plan.rounds} fio io_uring ${s.id} ${workloadLabel(w).padEnd(28)} ${(run.iops / 1000).toFixed(1).padStart(7)}k IOPS  ` +
          `p50 ${run.p50Us.toFixed(0).padStart(5)} µs  p99 ${run.p99Us.toFixed(0).padStart(6)} µs  fio ${run.cpuUsPerIo.toFixed(1).padStart(5)} µs/IO`);
      }
    }
  }

  result(): HostRow[] {
    return this.runs.all().map(({ cell, runs }) => ({ ...cell, median: medianOf(runs, HOST_FIGURES), runs }));
  }
}
