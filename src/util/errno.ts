// Names of Linux errno values ("ENOSPC" for 28), for logs and metric labels.
// The table is built once at load, so a lookup on the data path returns a
// string that already exists and allocates nothing.
import * as os from 'node:os';

/** Errnos Linux defines go up to 133 (EHWPOISON). */
export const ERRNO_MAX = 133;

// Node's table lacks some that block storage reports; spelled out here.
const EXTRA: Readonly<Record<number, string>> = {
  117: 'EUCLEAN', 121: 'EREMOTEIO', 122: 'EDQUOT', 123: 'ENOMEDIUM', 124: 'EMEDIUMTYPE', 133: 'EHWPOISON',
};
// Where Node has two names for one number, the one Linux's strerrorname_np gives.
const PREFERRED = new Set(['EAGAIN', 'EOPNOTSUPP']);

const names: string[] = [];
for (let n = 0; n <= ERRNO_MAX; n++) names.push(EXTRA[n] ?? `E${n}`);
for (const [name, n] of Object.entries(os.constants.errno)) {
  if (n > ERRNO_MAX || EXTRA[n] !== undefined) continue;
  if (names[n] === `E${n}` || PREFERRED.has(name)) names[n] = name;
}

/** "ENOSPC" for 28; "E<n>" for a number without a name (as the native addon's errors say). */
export function errnoName(errno: number): string {
  return Number.isInteger(errno) && errno >= 0 && errno <= ERRNO_MAX ? names[errno] : `E${errno}`;
}
