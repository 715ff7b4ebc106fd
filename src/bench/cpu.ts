// CPU accounting over a measured interval: the server process (all its
// threads, from /proc), this process (the front-end driver) and the whole
// machine, so the report can say where the CPU went and what was saturated.
import * as os from 'node:os';
import { performance } from 'node:perf_hooks';
import { busiestThread, cpuByThread, sampleMachine, sampleProcess } from '../util/proc-stats';

export interface CpuFigures {
  seconds: number;
  serverSec: number;
  driverSec: number;
  /** In % of one core. */
  serverCpuPct: number;
  busiestServerThreadPct: number;
  busiestServerThread: string;
  /** "vublk-io0 45%, iou-wrk 39%, 3 others 2%". */
  serverThreads: string;
  driverCpuPct: number;
  /** Whole machine, % of all cores. */
  machineBusyPct: number;
  stealPct: number;
  /** Everything but the server and the driver, % of one core. */
  otherCpuPct: number;
}

/** Start counting now; the returned function stops and gives the figures. */
export function openCpuWindow(serverPid: number): () => CpuFigures {
  const srv0 = sampleProcess(serverPid);
  const mach0 = sampleMachine();
  const drv0 = process.cpuUsage();
  const t0 = performance.now();
  return () => {
    const seconds = (performance.now() - t0) / 1000;
    const drv = process.cpuUsage(drv0);
    const mach1 = sampleMachine();
    const srv1 = sampleProcess(serverPid);
    const serverSec = srv1.cpuSec - srv0.cpuSec;
    const driverSec = (drv.user + drv.system) / 1e6;
    const busiest = busiestThread(srv0, srv1);
    const machTicks = mach1.total - mach0.total;
    const machineBusyPct = machTicks > 0 ? (100 * (mach1.busy - mach0.busy)) / machTicks : NaN;
    const pct = (sec: number): number => (100 * sec) / seconds;
    return {
      seconds, serverSec, driverSec,
      serverCpuPct: pct(serverSec),
      busiestServerThreadPct: pct(busiest.cpuSec),
      busiestServerThread: busiest.name,
      serverThreads: describeThreads(cpuByThread(srv0, srv1).map((t) => ({ name: t.name, pct: pct(t.cpuSec) }))),
      driverCpuPct: pct(driverSec),
      machineBusyPct,
      stealPct: machTicks > 0 ? (100 * (mach1.steal - mach0.steal)) / machTicks : NaN,
      otherCpuPct: machineBusyPct * os.cpus().length - pct(serverSec) - pct(driverSec),
    };
  };
}

/** "vublk-io0 45%, iou-wrk 39%, 3 others 2%": the three busiest threads, then the rest summed (idle ones left out). */
export function describeThreads(busiestFirst: ReadonlyArray<{ name: string; pct: number }>): string {
  const threads = busiestFirst.filter((t) => t.pct >= 0.5);
  const shown = threads.slice(0, 3).map((t) => `${t.name} ${t.pct.toFixed(0)}%`);
  const rest = threads.slice(3);
  if (rest.length > 0) shown.push(`${rest.length} others ${rest.reduce((n, t) => n + t.pct, 0).toFixed(0)}%`);
  return shown.join(', ');
}
