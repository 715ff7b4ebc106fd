// The servers under test as child processes: vublk and qemu-storage-daemon.
// Only what the benchmark needs: the pid (for /proc accounting), readiness,
// and a clean stop.
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const VUBLK_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'vublk');

export interface ServerSpec {
  kind: 'vublk' | 'qsd';
  queues: number;
  /** vublk: --aio and --iothreads. */
  aio?: 'io_uring' | 'threads';
  iothreads?: number;
  /** qsd: run the export in an iothread object (else in the main loop). */
  qsdIothread?: boolean;
}

export interface BenchServer {
  readonly pid: number;
  readonly argv: string[];
  stop(): Promise<void>;
}

/** The command line that serves `image` on `socket`. */
export function serverArgv(s: ServerSpec, image: string, socket: string): string[] {
  if (s.kind === 'vublk') {
    return [process.execPath, VUBLK_BIN, 'serve', '--socket', socket, '--aio', s.aio ?? 'io_uring',
      '--iothreads', String(s.iothreads ?? 1), '--num-queues', String(s.queues), '--cache', 'writeback', image];
  }
  const exp = ['type=vhost-user-blk', 'id=exp', 'node-name=disk', 'addr.type=unix', `addr.path=${socket}`,
    'writable=on', `num-queues=${s.queues}`];
  const argv = ['qemu-storage-daemon', '--blockdev', `driver=file,node-name=disk,filename=${image}`];
  if (s.qsdIothread) {
    argv.push('--object', 'iothread,id=io0');
    exp.push('iothread=io0');
  }
  return [...argv, '--export', exp.join(',')];
}

/** The command line as a reader would type it: `node bin/vublk ...`. */
export function displayArgv(argv: readonly string[]): string {
  return argv.map((a) => (a === process.execPath ? 'node' : a === VUBLK_BIN ? 'bin/vublk' : a)).join(' ');
}

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

/** Start the server and wait until it accepts connections (vublk: its "serving" line; qsd: the socket). */
export async function startServer(s: ServerSpec, image: string, socket: string): Promise<BenchServer> {
  const argv = serverArgv(s, image, socket);
  const proc: ChildProcess = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  let spawnError: Error | undefined;
  proc.once('error', (e) => { spawnError = e; });
  const ready = (): boolean => (s.kind === 'vublk' ? out.includes('vublk: serving') : isSocket(socket));
  const deadline = Date.now() + 15_000;
  while (!ready()) {
    if (spawnError !== undefined) throw spawnError;
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${argv.join(' ')} exited:\n${out}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`${argv.join(' ')} not ready after 15 s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: proc.pid!,
    argv,
    stop: async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}
