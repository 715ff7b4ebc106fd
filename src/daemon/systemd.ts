// systemd integration without libsystemd: readiness notifications on
// $NOTIFY_SOCKET (sd_notify(3) is one datagram per state change) and socket
// activation through $LISTEN_FDS / $LISTEN_FDNAMES (sd_listen_fds(3)).
import { native } from '../native/addon';
import { log } from '../util/log';

/** First fd systemd passes (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;

/** Send "KEY=value" lines to systemd, if it is listening; false when not under systemd. */
export function sdNotify(state: string): boolean {
  const socket = process.env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return false;
  try {
    native.unixDatagramSend(socket, new TextEncoder().encode(state));
    return true;
  } catch (e) {
    log.warn('cannot notify systemd', { socket, error: e as Error });
    return false;
  }
}

export interface ActivatedSocket {
  fd: number;
  name: string;
}

/**
 * The sockets systemd passed to this process, by name. The variables are
 * removed so child processes do not take the fds for theirs.
 */
export function takeListenFds(): ActivatedSocket[] {
  const pid = Number(process.env.LISTEN_PID);
  const count = Number(process.env.LISTEN_FDS);
  const names = (process.env.LISTEN_FDNAMES ?? '').split(':');
  delete process.env.LISTEN_PID;
  delete process.env.LISTEN_FDS;
  delete process.env.LISTEN_FDNAMES;
  if (pid !== process.pid || !(count > 0)) return [];
  return Array.from({ length: count }, (_, i) => ({ fd: LISTEN_FDS_START + i, name: names[i] ?? 'unknown' }));
}

/** The activated socket for export `id`: the one named like it, or the only one. */
export function activatedSocketFor(id: string, sockets: ActivatedSocket[]): number | undefined {
  const named = sockets.find((s) => s.name === id);
  if (named !== undefined) return named.fd;
  return sockets.length === 1 ? sockets[0].fd : undefined;
}
