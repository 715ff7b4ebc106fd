// An export's socket options (x-vublk-socket-mode/-owner/-group) turned into
// what the listener applies: numeric mode, uid and gid. Users and groups may
// be names (looked up through NSS, as chown(1) does) or numeric ids.
import { ExportOptions } from '../config/model';
import { native } from '../native/addon';
import { SocketAccess } from './listener';

/** Largest uid/gid: (uid_t)-1 means "unchanged" to chown(2), so it is not an id. */
const MAX_ID = 0xfffffffe;

/** A user or group, by name or numeric id; throws "<option>: no user named 'x'" and the like. */
function resolveId(option: string, value: string, kind: 'user' | 'group'): number {
  if (/^\d+$/.test(value)) {
    const id = Number(value);
    if (id > MAX_ID) throw new Error(`${option}: ${kind} id ${value} is out of range`);
    return id;
  }
  let id: number;
  try {
    id = kind === 'user' ? native.userId(value) : native.groupId(value);
  } catch (e) {
    throw new Error(`${option}: cannot look up ${kind} '${value}': ${(e as Error).message}`);
  }
  if (id < 0) throw new Error(`${option}: no ${kind} named '${value}'`);
  return id;
}

/** The socket access an export asks for; throws a one-line error naming the option. */
export function exportSocketAccess(o: ExportOptions): SocketAccess {
  const access: SocketAccess = { labels: {} };
  const mode = o['x-vublk-socket-mode'];
  const owner = o['x-vublk-socket-owner'];
  const group = o['x-vublk-socket-group'];
  if (mode !== undefined) {
    access.mode = parseInt(mode, 8);
    access.labels!.mode = `x-vublk-socket-mode=${mode}`;
  }
  if (owner !== undefined) {
    access.uid = resolveId('x-vublk-socket-owner', owner, 'user');
    access.labels!.owner = `x-vublk-socket-owner=${owner}`;
  }
  if (group !== undefined) {
    access.gid = resolveId('x-vublk-socket-group', group, 'group');
    access.labels!.group = `x-vublk-socket-group=${group}`;
  }
  return access;
}
