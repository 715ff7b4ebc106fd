// The listening vhost-user socket: creation with a safe mode (and, if asked,
// an owner and group), replacement of a stale socket left by a crashed run,
// and removal on close.
import * as fs from 'node:fs';
import { POLL_READABLE, Watcher, native } from '../native/addon';
import { log } from '../util/log';

/**
 * Who may connect through a socket file. Applied after bind() and before
 * listen(): until then connections are refused, so no client ever gets in
 * under the permissions the umask would have given.
 */
export interface SocketAccess {
  /** Permission bits of the socket file (default 0600: only the owner may attach). */
  mode?: number;
  /** Owner and group to give the socket file (numeric ids; see socket-access.ts for names). */
  uid?: number;
  gid?: number;
  /** How the configuration named each setting, for error messages ("x-vublk-socket-owner=qemu"). */
  labels?: { mode?: string; owner?: string; group?: string };
}

export interface ListenerOptions {
  path: string;
  /** Use this inherited listening socket instead of creating one at `path` (which is then left alone). */
  fd?: number;
  access?: SocketAccess;
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
        this.fd = listenReplacingStale(o.path, o.access);
      } catch (e) {
        throw new Error(`socket ${o.path}: ${(e as Error).message}`);
      }
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

/** "bind: Permission denied (EACCES)": the addon's and Node's errors, with the code to grep for. */
function describe(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (typeof err?.code !== 'string') return (e as Error).message;
  // Node's text is "EPERM: operation not permitted, chown '/x'"; the addon's "bind: Permission denied".
  const node = /^[A-Z0-9_]+: (.*?), (\w+) '/.exec(err.message);
  const text = node === null ? err.message : `${node[2]}: ${node[1]}`;
  return text.includes(err.code) ? text : `${text} (${err.code})`;
}

/**
 * Listen on `path` with the given access; a socket file nobody listens on any
 * more is replaced, a live one is an error. Errors are one line (the caller
 * adds the path) and name the setting that failed.
 */
export function listenReplacingStale(path: string, access: SocketAccess = {}): number {
  const fd = bindReplacingStale(path);
  const mode = access.mode ?? 0o600;
  let step = access.labels?.mode ?? `mode 0${mode.toString(8)}`;
  try {
    fs.chmodSync(path, mode);
    if (access.uid !== undefined) {
      step = access.labels?.owner ?? `owner ${access.uid}`;
      fs.chownSync(path, access.uid, -1);
    }
    if (access.gid !== undefined) {
      step = access.labels?.group ?? `group ${access.gid}`;
      fs.chownSync(path, -1, access.gid);
    }
    step = 'listen';
    native.listen(fd, 16);
  } catch (e) {
    // Bound a moment ago by us: leaving the file would only block the next try.
    native.close(fd);
    fs.rmSync(path, { force: true });
    throw new Error(step === 'listen' ? describe(e) : `${step}: ${describe(e)}`);
  }
  return fd;
}

function bindReplacingStale(path: string): number {
  try {
    return native.unixBind(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw new Error(describe(e));
  }
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch (e) {
    throw new Error(describe(e));
  }
  if (!st.isSocket()) throw new Error(st.isDirectory() ? 'exists and is a directory, not a socket' : 'exists and is not a socket');
  let probe = -1;
  try {
    probe = native.unixConnect(path);
  } catch (e) {
    // Refused: nothing listens there any more (a crashed run's leftover).
    if ((e as NodeJS.ErrnoException).code !== 'ECONNREFUSED') throw new Error(describe(e));
  }
  if (probe >= 0) {
    native.close(probe);
    throw new Error('is in use by another server');
  }
  fs.unlinkSync(path);
  try {
    return native.unixBind(path);
  } catch (e) {
    throw new Error(describe(e));
  }
}
