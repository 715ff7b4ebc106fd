// The listening vhost-user socket: creation with a safe mode, replacement of a
// stale socket left by a crashed run, and removal on close.
import * as fs from 'node:fs';
import { POLL_READABLE, Watcher, native } from '../native/addon';
import { log } from '../util/log';

export interface ListenerOptions {
  path: string;
  /** Use this inherited listening socket instead of creating one at `path` (which is then left alone). */
  fd?: number;
  /** Permission bits of the socket file (default 0600: only the owner may attach). */
  mode?: number;
}

export class UnixListener {
  private watcher: Watcher | undefined;
  readonly fd: number;

  constructor(private readonly o: ListenerOptions, onConnection: (fd: number) => void) {
    if (o.fd !== undefined) {
      if (!isListeningSocket(o.fd)) throw new Error(`--fd ${o.fd}: not a socket`);
      this.fd = o.fd;
    } else {
      try {
        this.fd = listenReplacingStale(o.path);
      } catch (e) {
        throw new Error(`socket ${o.path}: ${(e as Error).message}`);
      }
      fs.chmodSync(o.path, o.mode ?? 0o600);
    }
    this.watcher = native.watch(this.fd, POLL_READABLE, () => {
      try {
        for (let fd = native.accept(this.fd); fd >= 0; fd = native.accept(this.fd)) onConnection(fd);
      } catch (e) {
        // EMFILE and friends: the pending connection stays queued; nothing else is affected.
        log.error('accept failed', { socket: o.path, error: e as Error });
      }
    });
  }

  close(): void {
    if (this.watcher === undefined) return;
    this.watcher.stop();
    this.watcher = undefined;
    native.close(this.fd);
    if (this.o.fd !== undefined) return; // not ours to remove
    try {
      fs.unlinkSync(this.o.path);
    } catch { /* already gone */ }
  }
}

function isListeningSocket(fd: number): boolean {
  try {
    return fs.fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

/** Listen on `path`; a socket file nobody listens on any more is replaced, a live one is an error. */
export function listenReplacingStale(path: string): number {
  try {
    return native.unixListen(path, 16);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
  }
  if (!fs.lstatSync(path).isSocket()) throw new Error(`${path} exists and is not a socket`);
  let probe = -1;
  try {
    probe = native.unixConnect(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ECONNREFUSED') throw e;
  }
  if (probe >= 0) {
    native.close(probe);
    throw new Error(`${path} is in use by another server`);
  }
  fs.unlinkSync(path);
  return native.unixListen(path, 16);
}
