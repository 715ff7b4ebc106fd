// Layer 2: fio inside a real Linux guest (QEMU with TCG, the test guest of
// `make guest`). One boot serves the whole layer: every server of every
// storage is its own virtio disk, all running at once but used one at a time,
// so boot time is paid once and the runs interleave. The server's CPU is read
// from /proc when the guest prints the markers around each measured fio.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  GuestDisk, assertGuestSucceeded, formatCommandLine, guestImagePaths, guestImageProblem, qemuCommandLine, runGuest,
} from '../../test/support/guest';
import { CpuFigures, openCpuWindow } from './cpu';
import { guestFioArgs, parseFioJson } from './fio';
import { GuestTarget, fioOutputs, guestOrder, guestScript, parseMarker, slotHex } from './guest-script';
import { ServerId, serverArgs, serverDef } from './matrix';
import { COSTS, Plan, serversFor } from './options';
import { GUEST_FIGURES, GuestRow, GuestRun, StorageInfo, medianOf } from './report';
import { BenchServer, startServer } from './servers';

/** The first PCI slot for the disks; q35 with -nodefaults leaves 0x02 to 0x1e free. */
const FIRST_SLOT = 0x02;
/** The kernel stays silent, so nothing lands in the middle of fio's JSON on the console. */
const KERNEL_ARGS = 'loglevel=1';

interface Target extends GuestTarget {
  storage: StorageInfo;
  server: ServerId;
  socket: string;
  srv?: BenchServer;
}

export interface GuestLayerResult {
  rows: GuestRow[];
  qemuCommand: string;
  fioCommand: string;
  bootMs: number;
}

/** The guest's command line as the report shows it (one disk; the others differ in socket and slot). */
function qemuCommand(plan: Plan): string {
  const paths = guestImagePaths();
  return formatCommandLine(qemuCommandLine({
    disks: [{ socketPath: '$SOCKET', numQueues: 1, extra: `addr=0x${slotHex(FIRST_SLOT)}` }],
    kernel: paths.kernel, initrd: '$INITRD', cpus: plan.guest.cpus, memoryMiB: plan.guest.memoryMiB, kernelArgs: KERNEL_ARGS,
  }));
}

export async function runGuestLayer(plan: Plan, storages: readonly StorageInfo[], log: (line: string) => void): Promise<GuestLayerResult> {
  const problem = guestImageProblem();
  if (problem !== null) throw new Error(`guest layer: ${problem}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-bench-guest-'));
  const targets: Target[] = storages.flatMap((storage) => serversFor(plan, storage.id).map((server) => ({ storage, server })))
    .map((t, i) => ({ ...t, label: `${t.storage.id}.${t.server}`, slot: FIRST_SLOT + i, socket: path.join(dir, `${i}.sock`) }));
  try {
    for (const t of targets) {
      const def = serverDef(t.server);
      t.srv = await startServer(def, serverArgs(def, t.storage.image, t.storage.direct, 1, t.socket), t.socket);
    }
    const byLabel = new Map(targets.map((t) => [t.label, t]));
    const order = guestOrder(targets, plan.rounds);
    const open = new Map<string, () => CpuFigures>();
    const cpu = new Map<string, CpuFigures>();
    let markerError: Error | undefined;
    const onLine = (line: string): void => {
      const m = parseMarker(line);
      if (m === undefined) return;
      const key = `${m.label} ${m.round}`;
      const t = byLabel.get(m.label);
      if (t === undefined) { markerError ??= new Error(`guest named an unknown disk: ${line}`); return; }
      if (m.kind === 'begin') open.set(key, openCpuWindow(t.srv!.pid));
      else {
        const close = open.get(key);
        if (close === undefined) { markerError ??= new Error(`guest ended a run it never began: ${line}`); return; }
        cpu.set(key, close());
        open.delete(key);
      }
    };
    const disks: GuestDisk[] = targets.map((t) => ({ socketPath: t.socket, numQueues: 1, extra: `addr=0x${slotHex(t.slot)}` }));
    const perRun = plan.guest.warmupSec + plan.guest.durationSec + COSTS.guestRunSec;
    log(`guest: booting with ${targets.length} disks (${targets.map((t) => t.label).join(', ')}); ${order.length} fio runs of ${plan.guest.durationSec} s`);
    const result = await runGuest({
      disks, fio: true, cpus: plan.guest.cpus, memoryMiB: plan.guest.memoryMiB, kernelArgs: KERNEL_ARGS,
      script: guestScript(order, { blockSize: plan.blockSize, qd: plan.guest.qd, durationSec: plan.guest.durationSec, warmupSec: plan.guest.warmupSec }),
      // Generous: TCG on a busy machine can take several times the estimate.
      timeoutMs: (COSTS.guestBootSec * 4 + order.length * perRun * 3) * 1000,
      log: onLine,
    });
    assertGuestSucceeded(result);
    if (markerError !== undefined) throw markerError;
    log(`guest: booted in ${(result.bootMs / 1000).toFixed(1)} s`);

    const outputs = fioOutputs(result.scriptOutput);
    const runs = new Map<string, GuestRun[]>();
    for (const { target, round } of order) {
      const key = `${target.label} ${round}`;
      const json = outputs.get(key);
      const c = cpu.get(key);
      if (json === undefined || c === undefined) throw new Error(`guest run ${key}: no ${json === undefined ? 'fio output' : 'CPU figures'}`);
      const f = parseFioJson(json);
      // The server idles outside fio's run (fio starting and exiting in the guest): all its CPU between the markers is fio's.
      const run: GuestRun = {
        round, ios: f.ios, seconds: f.seconds, iops: f.iops, p50Us: f.p50Us, p99Us: f.p99Us,
        serverCpuSec: c.serverSec, serverCpuUsPerIo: (c.serverSec * 1e6) / f.ios, serverCpuPct: c.serverCpuPct,
        serverThreads: c.serverThreads,
      };
      log(`guest round ${round}/${plan.rounds} ${target.label.padEnd(26)} ${(run.iops / 1000).toFixed(1).padStart(6)}k IOPS  ` +
        `p50 ${run.p50Us.toFixed(0).padStart(5)} µs  p99 ${run.p99Us.toFixed(0).padStart(6)} µs  server ${run.serverCpuUsPerIo.toFixed(1).padStart(5)} µs/IO ` +
        `(${run.serverCpuPct.toFixed(0)}%: ${run.serverThreads})`);
      if (!runs.has(target.label)) runs.set(target.label, []);
      runs.get(target.label)!.push(run);
    }
    return {
      rows: targets.map((t) => ({ storage: t.storage.id, server: t.server, median: medianOf(runs.get(t.label)!, GUEST_FIGURES), runs: runs.get(t.label)! })),
      qemuCommand: qemuCommand(plan),
      fioCommand: ['fio', ...guestFioArgs({ device: '/dev/vdX', blockSize: plan.blockSize, qd: plan.guest.qd, durationSec: plan.guest.durationSec })].join(' '),
      bootMs: result.bootMs,
    };
  } finally {
    for (const t of targets) await t.srv?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
