// fio for the guest and host layers: the command lines (the same block size,
// queue depth and O_DIRECT setting as the driver layer) and what its JSON
// output says. Pure.
import { Op } from './matrix';

export interface FioFigures {
  /** Completed I/Os of the measured run (all jobs, reads and writes). */
  ios: number;
  iops: number;
  /** Longest job runtime. */
  seconds: number;
  /** Completion latency percentiles of the busier direction. */
  p50Us: number;
  p99Us: number;
}

interface FioDir {
  total_ios?: number;
  iops?: number;
  runtime?: number;
  clat_ns?: { percentile?: Record<string, number> };
}

interface FioJob {
  jobname?: string;
  error?: number;
  read?: FioDir;
  write?: FioDir;
}

/**
 * fio's --output-format=json. Whatever fio printed around the object (warnings
 * on a shared stream) is skipped; a job error or no I/O at all is an error.
 */
export function parseFioJson(text: string): FioFigures {
  const start = text.indexOf('{');
  const end = text.lastIndexOf('}');
  if (start < 0 || end < start) throw new Error(`no fio JSON in: ${text.slice(0, 200)}`);
  let doc: { jobs?: FioJob[] };
  try {
    doc = JSON.parse(text.slice(start, end + 1)) as { jobs?: FioJob[] };
  } catch (e) {
    throw new Error(`fio JSON does not parse (${(e as Error).message}): ${text.slice(start, start + 200)}`);
  }
  const jobs = doc.jobs ?? [];
  if (jobs.length === 0) throw new Error('fio JSON has no jobs');
  let ios = 0;
  let iops = 0;
  let runtimeMs = 0;
  let busiest: FioDir | undefined;
  for (const j of jobs) {
    if ((j.error ?? 0) !== 0) throw new Error(`fio job ${j.jobname ?? '?'} failed with error ${j.error}`);
    for (const d of [j.read, j.write]) {
      if (d === undefined || (d.total_ios ?? 0) === 0) continue;
      ios += d.total_ios ?? 0;
      iops += d.iops ?? 0;
      runtimeMs = Math.max(runtimeMs, d.runtime ?? 0);
      if (busiest === undefined || (d.total_ios ?? 0) > (busiest.total_ios ?? 0)) busiest = d;
    }
  }
  if (busiest === undefined) throw new Error('fio did no I/O');
  const pct = (p: string): number => {
    const ns = busiest?.clat_ns?.percentile?.[p];
    return ns === undefined ? NaN : ns / 1000;
  };
  return { ios, iops, seconds: runtimeMs / 1000, p50Us: pct('50.000000'), p99Us: pct('99.000000') };
}

/**
 * Options every run shares: random offsets without fio's bookkeeping of which
 * blocks were hit, and no progress line (on the guest's console it would run
 * into the marker lines).
 */
const COMMON = ['--norandommap', '--randrepeat=0', '--time_based', '--group_reporting', '--eta=never', '--output-format=json'];

/** Strings stand for placeholders in the report's command lines ($QD). */
export interface HostFioOptions {
  filename: string;
  op: Op | string;
  blockSize: number;
  qd: number | string;
  jobs: number | string;
  direct: boolean | string;
  durationSec: number;
}

/**
 * The host ceiling: io_uring straight on the image, one job per queue of the
 * matching driver workload, each with the same queue depth.
 */
export function hostFioArgs(o: HostFioOptions): string[] {
  return [
    '--name=host', `--filename=${o.filename}`, `--rw=${o.op}`, `--bs=${o.blockSize}`, '--ioengine=io_uring',
    `--iodepth=${o.qd}`, `--numjobs=${o.jobs}`, `--direct=${typeof o.direct === 'string' ? o.direct : o.direct ? 1 : 0}`,
    `--runtime=${o.durationSec}s`, ...COMMON,
  ];
}

export interface GuestFioOptions {
  device: string;
  blockSize: number;
  qd: number;
  durationSec: number;
}

/** The guest's workload: 4K random reads at QD 32 with libaio and O_DIRECT, as a guest application would do them. */
export function guestFioArgs(o: GuestFioOptions): string[] {
  return [
    '--name=guest', `--filename=${o.device}`, '--rw=randread', `--bs=${o.blockSize}`, '--ioengine=libaio',
    `--iodepth=${o.qd}`, '--direct=1', `--runtime=${o.durationSec}s`, ...COMMON,
  ];
}
