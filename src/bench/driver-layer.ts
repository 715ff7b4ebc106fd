// Layer 1: our own front-end (the ring driver) against each server. A server
// is started once per storage and queue count and serves every workload of
// that session, each over a fresh vhost-user connection (as a rebooted guest
// would connect again), so start-up costs are paid once. Sessions alternate
// between the servers, in a rotated order each round.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlkFrontend } from '../frontend';
import { openCpuWindow } from './cpu';
import { Measure, startLoad } from './driver';
import {
  COALESCING, LIMITS, SCALING, ServerDef, coalescingKeys, limitKeys, limitsDurationSec, serverArgs, serverDef, workloadLabel, workloads,
} from './matrix';
import { Plan, serversFor } from './options';
import { DriverRow, RunResult, StorageInfo, summarize } from './report';
import { warmImage } from './images';
import { startServer } from './servers';
import { RunsByCell, percentile } from './stats';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A server that stops completing requests fails its session instead of hanging the benchmark. */
const DRAIN_TIMEOUT_MS = 10_000;

function drainOrFail(drained: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`requests still in flight ${DRAIN_TIMEOUT_MS / 1000} s after the run`)), DRAIN_TIMEOUT_MS);
  });
  return Promise.race([drained.then(() => undefined), late]).finally(() => clearTimeout(timer));
}

/** Guest RAM of the driver: QD 128 on 4 queues needs 512 slots of 4 KiB data plus rings. */
const DRIVER_RAM_BYTES = 32 << 20;

/**
 * What a row of the report is about; iothreads is set for the scaling runs and coalescingUs
 * for the coalescing runs (kept apart from the matrix's, even with one iothread or 0 µs).
 */
type Cell = Pick<DriverRow, 'storage' | 'server' | 'op' | 'qd' | 'queues' | 'iothreads' | 'coalescingUs' | 'limit'>;

const cellKey = (c: Cell): string => `${c.storage}|${c.server}|${c.op}|${c.qd}|${c.queues}|${c.iothreads ?? '-'}|${c.coalescingUs ?? '-'}|` +
  `${c.limit === undefined ? '-' : `${c.limit.key}=${c.limit.value}`}`;

/** One measured run over a fresh connection to a running server. */
async function measure(socket: string, serverPid: number, c: Cell, plan: Plan, round: number): Promise<RunResult> {
  const fe = await BlkFrontend.connect({ socketPath: socket, numQueues: c.queues, queueSize: plan.queueSize, memoryBytes: DRIVER_RAM_BYTES });
  try {
    const m = new Measure();
    const streams = startLoad('ring', fe, { op: c.op, blockSize: plan.blockSize, qd: c.qd, writePercent: 0, capacity: fe.config.capacity }, m);
    await sleep(plan.driver.warmupSec * 1000);
    const close = openCpuWindow(serverPid);
    m.recording = true;
    await sleep(plan.driver.durationSec * 1000);
    m.recording = false;
    const cpu = close();
    m.stopping = true;
    await drainOrFail(Promise.all(streams.map((s) => s.drained)));
    if (m.errors > 0) throw new Error(`${cellKey(c)}: ${m.errors} requests completed with a non-OK status`);
    const lat = m.latencyUs.sorted();
    return {
      round, ios: m.ios, errors: m.errors, seconds: cpu.seconds, interruptsPerIo: m.interrupts / m.ios,
      iops: m.ios / cpu.seconds,
      p50Us: percentile(lat, 50),
      p99Us: percentile(lat, 99),
      serverCpuUsPerIo: (cpu.serverSec * 1e6) / m.ios,
      driverCpuUsPerIo: (cpu.driverSec * 1e6) / m.ios,
      serverCpuPct: cpu.serverCpuPct,
      busiestServerThreadPct: cpu.busiestServerThreadPct,
      busiestServerThread: cpu.busiestServerThread,
      serverThreads: cpu.serverThreads,
      driverCpuPct: cpu.driverCpuPct,
      machineBusyPct: cpu.machineBusyPct,
      stealPct: cpu.stealPct,
      otherCpuPct: cpu.otherCpuPct,
    };
  } finally {
    await fe.disconnect();
  }
}

/** Start `server` on `storage` with `queues` queues (on `iothreads` iothreads) and run `cells` against it. */
async function session(server: ServerDef, storage: StorageInfo, queues: number, cells: Cell[], plan: Plan, round: number,
  record: (c: Cell, r: RunResult) => void, iothreads = 1, exportExtra = ''): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-bench-'));
  const socket = path.join(dir, 'sock');
  const args = serverArgs(server, storage.image, storage.direct, queues, socket, iothreads, exportExtra);
  const srv = await startServer(server, args, socket);
  try {
    for (const c of cells) {
      // Every server starts each workload from the same, warm page cache.
      if (!storage.direct) warmImage(storage.image);
      try {
        record(c, await measure(socket, srv.pid, c, plan, round));
      } catch (e) {
        throw new Error(`${(e as Error).message}\n${server.label} said:\n${srv.output()}`);
      }
    }
  } finally {
    await srv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function logRun(c: Cell, r: RunResult, round: number, rounds: number, log: (line: string) => void): void {
  let what = c.op === 'getid' ? `ceiling GET_ID QD${c.qd}, ${c.queues} queue(s)` : `${c.storage} ${workloadLabel({ op: c.op, qd: c.qd, queues: c.queues })}`;
  if (c.iothreads !== undefined) what += ` on ${c.iothreads} iothread(s)`;
  if (c.coalescingUs !== undefined) what += c.coalescingUs > 0 ? `, coalescing ${c.coalescingUs} µs` : ', no coalescing';
  if (c.limit !== undefined) what += `, ${c.limit.key}=${c.limit.value}`;
  log(`driver round ${round}/${rounds} ${c.server.padEnd(12)} ${what.padEnd(38)} ${(r.iops / 1000).toFixed(1).padStart(7)}k IOPS  ` +
    `p50 ${r.p50Us.toFixed(0).padStart(5)} µs  p99 ${r.p99Us.toFixed(0).padStart(6)} µs  ` +
    `server ${r.serverCpuUsPerIo.toFixed(1).padStart(5)} µs/IO  driver ${r.driverCpuUsPerIo.toFixed(1).padStart(4)} µs/IO  ` +
    `(server ${r.serverCpuPct.toFixed(0)}%: ${r.serverThreads}; driver ${r.driverCpuPct.toFixed(0)}%, other ${r.otherCpuPct.toFixed(0)}%)`);
}

/** Collects the runs of every round, then turns them into report rows. */
export class DriverLayer {
  private readonly runs = new RunsByCell<Cell, RunResult>(cellKey);
  /** Sessions that failed; the rest of the matrix still runs, and the report lists these. */
  readonly failures: string[] = [];

  constructor(private readonly plan: Plan, private readonly storages: StorageInfo[], private readonly log: (line: string) => void) {}

  /**
   * One round: the driver ceiling (GET_ID, answered from memory, against vublk on the
   * first image), then every storage, queue count and server; then the scaling runs.
   */
  async round(round: number): Promise<void> {
    const { plan } = this;
    const record = (c: Cell, r: RunResult): void => {
      this.runs.add(c, r);
      logRun(c, r, round, plan.rounds, this.log);
    };
    const attempt = async (what: string, run: () => Promise<void>): Promise<void> => {
      try {
        await run();
      } catch (e) {
        const msg = `driver round ${round}, ${what}: ${(e as Error).message}`;
        this.failures.push(msg);
        this.log(`FAILED ${msg}`);
      }
    };
    const vublk = serverDef('vublk');
    if (plan.layers.includes('scaling')) {
      const storage = this.storages[0];
      for (const iothreads of [1, SCALING.iothreads]) {
        const cells = plan.ops.map((op): Cell => ({ storage: storage.id, server: 'vublk', op, qd: SCALING.qd, queues: SCALING.queues, iothreads }));
        await attempt(`scaling, ${iothreads} iothread(s)`, () => session(vublk, storage, SCALING.queues, cells, plan, round, record, iothreads));
      }
    }
    if (plan.layers.includes('coalescing')) {
      const storage = this.storages[0];
      for (const coalescingUs of [0, COALESCING.delayUs]) {
        const cells = plan.ops.map((op): Cell => ({ storage: storage.id, server: 'vublk', op, qd: COALESCING.qd, queues: COALESCING.queues, coalescingUs }));
        await attempt(`coalescing ${coalescingUs} µs`, () => session(vublk, storage, COALESCING.queues, cells, plan, round, record, 1, coalescingKeys(coalescingUs)));
      }
    }
    if (plan.layers.includes('limits')) {
      const storage = this.storages[0];
      // One long run per limit: a limit is a rate over time, short runs would mostly measure the burst.
      const long: Plan = { ...plan, driver: { durationSec: limitsDurationSec(plan.quick), warmupSec: LIMITS.warmupSec } };
      for (const { op, key, value } of LIMITS.cases) {
        const cell: Cell = { storage: storage.id, server: 'vublk', op, qd: LIMITS.qd, queues: LIMITS.queues, iothreads: LIMITS.iothreads, limit: { key, value } };
        await attempt(`limit ${key}=${value}`, () => session(vublk, storage, LIMITS.queues, [cell], long, round, record, LIMITS.iothreads, limitKeys(key, value)));
      }
    }
    if (!plan.layers.includes('driver')) return;
    for (const queues of plan.queues) {
      const cells = plan.qds.map((qd): Cell => ({ storage: this.storages[0].id, server: 'vublk', op: 'getid', qd, queues }));
      await attempt(`ceiling, ${queues} queue(s)`, () => session(vublk, this.storages[0], queues, cells, plan, round, record));
    }
    for (const storage of this.storages) {
      const servers = serversFor(plan, storage.id);
      for (const queues of plan.queues) {
        // Rotate so that no server always runs first (page cache, CPU frequency, neighbours' habits).
        const shift = (round - 1) % servers.length;
        for (const id of [...servers.slice(shift), ...servers.slice(0, shift)]) {
          const cells = workloads(plan.ops, plan.qds, [queues]).map((w): Cell => ({ storage: storage.id, server: id, ...w }));
          await attempt(`${storage.id} ${id}, ${queues} queue(s)`, () => session(serverDef(id), storage, queues, cells, plan, round, record));
        }
      }
    }
  }

  result(): { rows: DriverRow[]; ceiling: DriverRow[]; scaling: DriverRow[]; coalescing: DriverRow[]; limits: DriverRow[] } {
    const rows: DriverRow[] = [];
    for (const { cell, runs } of this.runs.all()) {
      const iops = runs.map((r) => r.iops);
      rows.push({ ...cell, median: summarize(runs), iopsMin: Math.min(...iops), iopsMax: Math.max(...iops), runs });
    }
    const matrix = rows.filter((r) => r.iothreads === undefined && r.coalescingUs === undefined && r.limit === undefined);
    return {
      rows: matrix.filter((r) => r.op !== 'getid'),
      ceiling: matrix.filter((r) => r.op === 'getid'),
      scaling: rows.filter((r) => r.iothreads !== undefined && r.limit === undefined),
      coalescing: rows.filter((r) => r.coalescingUs !== undefined),
      limits: rows.filter((r) => r.limit !== undefined),
    };
  }
}
