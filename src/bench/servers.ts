// The servers under test as child processes, started with the same
// qemu-storage-daemon arguments. Only what the benchmark needs: the pid (for
// /proc accounting), readiness (the socket listens, as neither prints anything
// when ready in this mode), and a clean stop.
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ServerDef } from './matrix';

export const VUBLK_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'vublk');

/** Enough of the server's output to explain a failure. */
const OUTPUT_TAIL = 16 << 10;
const READY_TIMEOUT_MS = 15_000;

/** Servers not stopped yet, so an interrupted benchmark leaves none behind. */
const running = new Set<ChildProcess>();

/** SIGKILL every server still running (for an interrupted benchmark). */
export function killServers(): void {
  for (const p of running) p.kill('SIGKILL');
}

export interface BenchServer {
  readonly pid: number;
  readonly socket: string;
  output(): string;
  stop(): Promise<void>;
}

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

/** Start `server` with `args` (see serverArgs) and wait until `socket` accepts connections. */
export async function startServer(server: ServerDef, args: string[], socket: string): Promise<BenchServer> {
  // vublk through node directly, so the pid is the server's own. VUBLK_BENCH_NODE_ARGS adds
  // node options for profiling, e.g. '--perf-basic-prof --no-turbo-inlining'.
  const nodeArgs = (process.env.VUBLK_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '');
  const [bin, argv] = server.role === 'vublk'
    ? [process.execPath, [...nodeArgs, VUBLK_BIN, ...args]] : ['qemu-storage-daemon', args];
  const proc: ChildProcess = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer): void => { out = (out + d.toString()).slice(-OUTPUT_TAIL); };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  running.add(proc);
  const exited = new Promise<void>((resolve) => proc.once('exit', () => { running.delete(proc); resolve(); }));
  let spawnError: Error | undefined;
  proc.once('error', (e) => { spawnError = e; });
  const what = `${server.label} (${[bin, ...argv].join(' ')})`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!isSocket(socket)) {
    if (spawnError !== undefined) throw new Error(`${what}: ${spawnError.message}`);
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${what} exited:\n${out}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`${what} not listening after ${READY_TIMEOUT_MS / 1000} s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: proc.pid!,
    socket,
    output: () => out,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}
