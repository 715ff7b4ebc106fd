// CPU accounting from /proc: a process (all its threads), each of its
// threads, and the whole machine. Parsing is pure; reading is a few small
// file reads, done only at the edges of a measured interval.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

export interface ProcStat {
  comm: string;
  state: string;
  /** Clock ticks in user and kernel mode; for a process, summed over its threads. */
  utime: number;
  stime: number;
  /** Ticks of the children it has waited for (and theirs): a wrapper shell's view of a finished command. */
  cutime: number;
  cstime: number;
  numThreads: number;
}

/**
 * One /proc/PID/stat (or /proc/PID/task/TID/stat) line. comm may hold spaces
 * and parentheses, so the fields are counted from the last ')'.
 */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`not a /proc stat line: ${text.slice(0, 80)}`);
  // Fields from 3 (state) on; field k (1-based, proc(5)) is rest[k - 3].
  const rest = text.slice(close + 2).trim().split(/\s+/);
  if (rest.length < 18) throw new Error(`short /proc stat line: ${text.slice(0, 80)}`);
  return {
    comm: text.slice(open + 1, close),
    state: rest[0],
    utime: Number(rest[14 - 3]),
    stime: Number(rest[15 - 3]),
    cutime: Number(rest[16 - 3]),
    cstime: Number(rest[17 - 3]),
    numThreads: Number(rest[20 - 3]),
  };
}

export interface MachineStat {
  /** Ticks summed over all CPUs: everything but idle and iowait. */
  busy: number;
  /** Ticks stolen by the hypervisor. */
  steal: number;
  /** All ticks (user..steal; guest time is already inside user). */
  total: number;
}

/** The aggregate "cpu " line of /proc/stat. */
export function parseMachineStat(text: string): MachineStat {
  const line = text.split('\n').find((l) => l.startsWith('cpu '));
  if (line === undefined) throw new Error('no cpu line in /proc/stat');
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = user + nice + system + idle + iowait + irq + softirq + (steal ?? 0);
  return { busy: total - idle - iowait, steal: steal ?? 0, total };
}

function clockTicks(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** USER_HZ: the unit of the tick counts above. */
export const CLK_TCK = clockTicks();

export interface ProcessSample {
  /** CPU seconds of the whole process (all threads). */
  cpuSec: number;
  /** Per live thread: name and CPU seconds. */
  threads: Map<number, { name: string; cpuSec: number }>;
}

const ticksToSec = (s: ProcStat): number => (s.utime + s.stime) / CLK_TCK;

export function sampleProcess(pid: number): ProcessSample {
  const cpuSec = ticksToSec(parseProcStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')));
  const threads = new Map<number, { name: string; cpuSec: number }>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const s = parseProcStat(fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
      threads.set(Number(tid), { name: s.comm, cpuSec: ticksToSec(s) });
    } catch {
      // The thread ended between readdir and read.
    }
  }
  return { cpuSec, threads };
}

/** The thread that used the most CPU between two samples. */
export function busiestThread(a: ProcessSample, b: ProcessSample): { tid: number; name: string; cpuSec: number } {
  let best = { tid: 0, name: '-', cpuSec: 0 };
  for (const [tid, t] of b.threads) {
    const d = t.cpuSec - (a.threads.get(tid)?.cpuSec ?? 0);
    if (d > best.cpuSec) best = { tid, name: t.name, cpuSec: d };
  }
  return best;
}

/**
 * CPU seconds per thread between two samples, busiest first. io_uring's
 * iou-wrk-N workers come and go, so they are summed into one "iou-wrk" entry.
 */
export function cpuByThread(a: ProcessSample, b: ProcessSample): Array<{ name: string; cpuSec: number }> {
  const byKey = new Map<string, { name: string; cpuSec: number }>();
  for (const [tid, t] of b.threads) {
    const d = t.cpuSec - (a.threads.get(tid)?.cpuSec ?? 0);
    if (d <= 0) continue;
    const name = t.name.startsWith('iou-wrk') ? 'iou-wrk' : t.name;
    const key = name === 'iou-wrk' ? name : String(tid);
    const e = byKey.get(key) ?? { name, cpuSec: 0 };
    e.cpuSec += d;
    byKey.set(key, e);
  }
  return [...byKey.values()].sort((x, y) => y.cpuSec - x.cpuSec);
}

export function sampleMachine(): MachineStat {
  return parseMachineStat(fs.readFileSync('/proc/stat', 'utf8'));
}
