// --daemonize and --pidfile, as qemu-storage-daemon has them: the parent
// returns once the server listens (exit 0) or failed to start (exit 2, with
// the error), and the server goes on detached, its output to /dev/null.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';

/** Set in the detached child: the fd of the pipe on which it reports its start. */
const READY_FD_ENV = 'VUBLK_DAEMON_READY_FD';
const READY = 'ready\n';

/** In the parent: start the detached server; the process exits with how its start went. */
export function daemonize(argv: string[], binary: string): void {
  const child = spawn(process.execPath, [binary, ...argv.filter((a) => a !== '--daemonize')], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  });
  let report = '';
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  pipe.setEncoding('utf8');
  pipe.on('data', (d: string) => { report += d; });
  pipe.on('end', () => {
    if (report === READY) {
      child.unref();
      process.exit(0);
    }
    process.stderr.write(report.length > 0 ? report : 'vublk: the server exited before it was ready\n');
    process.exit(2);
  });
}

/** In the detached child: where startup errors must go, if anywhere. */
function readyFd(): number | undefined {
  const v = process.env[READY_FD_ENV];
  return v === undefined ? undefined : Number(v);
}

/** A startup error of the detached child reaches the waiting parent. */
export function reportStartupError(line: string): void {
  const fd = readyFd();
  if (fd !== undefined) fs.writeSync(fd, line);
}

/** The server listens: release the waiting parent. */
export function reportReady(): void {
  const fd = readyFd();
  if (fd === undefined) return;
  fs.writeSync(fd, READY);
  fs.closeSync(fd);
  delete process.env[READY_FD_ENV];
}

/** Write our pid to `file`; removed again by removePidfile() at exit. */
export function writePidfile(file: string): void {
  fs.writeFileSync(file, `${process.pid}\n`, { mode: 0o644 });
}

export function removePidfile(file: string | undefined): void {
  if (file !== undefined) fs.rmSync(file, { force: true });
}
