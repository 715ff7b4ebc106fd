// Starting the servers under test as child processes: vublk itself and the
// reference qemu-storage-daemon, with the same image and queue options.
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LogRecord, findLogs, parseLogRecords } from './logs';

export type { LogRecord } from './logs';

export const VUBLK_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'vublk');

export interface ServerProcess {
  proc: ChildProcess;
  socketPath: string;
  /** Everything the server printed so far (stdout and stderr). */
  output(): string;
  /** vublk's log records so far (JSON lines on its stderr). */
  logs(): LogRecord[];
  /** The log records with this msg (string: exactly, RegExp: anywhere) and these field values. */
  findLogs(msg: string | RegExp, fields?: Record<string, unknown>): LogRecord[];
  /** SIGTERM, then SIGKILL after 5 s; resolves to the exit code, or the signal's name if one ended it. */
  stop(): Promise<number | string>;
}

export interface ExportSpec {
  image: string;
  socketPath: string;
  numQueues?: number;
  readOnly?: boolean;
  logicalBlockSize?: number;
  serial?: string;
  /** Extra vublk arguments. */
  args?: string[];
}

function track(proc: ChildProcess, socketPath: string): ServerProcess {
  let out = '';
  let stderr = '';
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr?.on('data', (d: Buffer) => { out += d.toString(); stderr += d.toString(); });
  const exited = new Promise<number | string>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')));
  return {
    proc,
    socketPath,
    output: () => out,
    logs: () => parseLogRecords(stderr),
    findLogs: (msg, fields) => findLogs(parseLogRecords(stderr), msg, fields),
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
        const code = await exited;
        clearTimeout(timer);
        return code;
      }
      return exited;
    },
  };
}

/** Poll until `ready()` holds; fail early if the server exits. */
async function waitUntil(s: ServerProcess, ready: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (s.proc.exitCode !== null || s.proc.signalCode !== null) {
      throw new Error(`server exited (${s.proc.exitCode ?? s.proc.signalCode}) before ${what}:\n${s.output()}`);
    }
    if (ready()) return;
    if (Date.now() > deadline) throw new Error(`no ${what} after ${timeoutMs} ms:\n${s.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

/**
 * Run `vublk ARGS` in the qemu-storage-daemon style (it prints nothing when
 * ready, like qemu-storage-daemon) and wait until every path in `sockets` listens.
 */
export async function startVublkDaemon(args: string[], sockets: string[], cwd?: string): Promise<ServerProcess> {
  const s = track(spawn(process.execPath, [VUBLK_BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] }), sockets[0] ?? '');
  await waitUntil(s, () => sockets.every((p) => isSocket(path.resolve(cwd ?? '.', p))), `sockets ${sockets.join(', ')}`);
  return s;
}

/** Run `vublk ARGS` and wait for its "serving" line (printed once it listens and handles signals). */
export async function startVublkWithArgs(args: string[], socketPath: string, cwd?: string): Promise<ServerProcess> {
  const s = track(spawn(process.execPath, [VUBLK_BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] }), socketPath);
  await waitUntil(s, () => s.output().includes('vublk: serving'), 'serving line');
  return s;
}

export async function startVublk(e: ExportSpec, cwd?: string): Promise<ServerProcess> {
  const args = ['serve', '--socket', e.socketPath];
  if (e.numQueues !== undefined) args.push('--num-queues', String(e.numQueues));
  if (e.readOnly) args.push('--readonly');
  if (e.logicalBlockSize !== undefined) args.push('--logical-block-size', String(e.logicalBlockSize));
  if (e.serial !== undefined) args.push('--serial', e.serial);
  args.push(...(e.args ?? []), e.image);
  return startVublkWithArgs(args, e.socketPath, cwd);
}

export async function startQemuStorageDaemon(e: ExportSpec): Promise<ServerProcess> {
  const exportOpts = [
    'type=vhost-user-blk', 'id=exp', 'node-name=disk', 'addr.type=unix', `addr.path=${e.socketPath}`,
    `writable=${e.readOnly ? 'off' : 'on'}`, `num-queues=${e.numQueues ?? 1}`,
  ];
  if (e.logicalBlockSize !== undefined) exportOpts.push(`logical-block-size=${e.logicalBlockSize}`);
  const proc = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=disk,filename=${e.image}${e.readOnly ? ',read-only=on' : ''}`,
    '--export', exportOpts.join(','),
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const s = track(proc, e.socketPath);
  const spawnFailed = new Promise<never>((_, reject) => proc.once('error', reject));
  await Promise.race([waitUntil(s, () => isSocket(e.socketPath), `socket ${e.socketPath}`), spawnFailed]);
  return s;
}
