// Whether device-mapper and LVM can be used here: for tests that build logical
// volumes and for messages that explain why a /dev/mapper target cannot exist.
// Probes only (files and PATH); never runs the tools.
import * as fs from 'node:fs';

export interface Availability {
  available: boolean;
  /** Why not (every missing piece, '; '-separated), or what was found. */
  reason: string;
}

/** What the probes look at; tests substitute a fake system. */
export interface ProbeSystem {
  exists(path: string): boolean;
  /** File contents, or undefined if unreadable. */
  readFile(path: string): string | undefined;
  /** An executable regular file? */
  isExecutable(path: string): boolean;
  /** Directories searched for commands (PATH). */
  pathDirs: string[];
}

// LVM lives in sbin, which a non-root PATH often lacks.
const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

export const hostSystem: ProbeSystem = {
  exists: (p) => fs.existsSync(p),
  readFile: (p) => {
    try {
      return fs.readFileSync(p, 'utf8');
    } catch {
      return undefined;
    }
  },
  isExecutable: (p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  },
  get pathDirs() {
    return (process.env.PATH ?? '').split(':').filter((d) => d !== '');
  },
};

/** Absolute path of command `name` on PATH or in the sbin directories, or undefined. */
export function findExecutable(name: string, sys: ProbeSystem = hostSystem): string | undefined {
  const dirs = [...sys.pathDirs, ...SBIN_DIRS.filter((d) => !sys.pathDirs.includes(d))];
  for (const dir of dirs) {
    const candidate = `${dir.replace(/\/+$/, '')}/${name}`;
    if (sys.isExecutable(candidate)) return candidate;
  }
  return undefined;
}

function deviceMapperProblems(sys: ProbeSystem): string[] {
  const problems: string[] = [];
  if (!sys.exists('/dev/mapper/control')) problems.push('/dev/mapper/control missing');
  // The driver registers the misc device "device-mapper" (/proc/misc: " 236 device-mapper").
  const misc = sys.readFile('/proc/misc');
  const inKernel = (misc !== undefined && /^\s*\d+\s+device-mapper\s*$/m.test(misc)) || sys.exists('/sys/class/misc/device-mapper');
  if (!inKernel) problems.push('no device-mapper driver in the kernel (not in /proc/misc, no /sys/class/misc/device-mapper; dm-mod not built or not loaded)');
  if (findExecutable('dmsetup', sys) === undefined) problems.push('dmsetup not found');
  return problems;
}

/** device-mapper usable: the kernel driver, its control node and dmsetup. */
export function deviceMapperAvailability(sys: ProbeSystem = hostSystem): Availability {
  const problems = deviceMapperProblems(sys);
  if (problems.length > 0) return { available: false, reason: `device-mapper not available: ${problems.join('; ')}` };
  return { available: true, reason: 'device-mapper available' };
}

/** The LVM commands tests use to build and remove a volume group. */
export const LVM_COMMANDS = ['pvcreate', 'vgcreate', 'lvcreate', 'vgremove', 'pvremove'];

/** LVM usable: device-mapper plus the LVM tools. */
export function lvmAvailability(sys: ProbeSystem = hostSystem): Availability {
  const dm = deviceMapperAvailability(sys);
  const missing = LVM_COMMANDS.filter((c) => findExecutable(c, sys) === undefined);
  const problems: string[] = [];
  if (!dm.available) problems.push(dm.reason);
  if (missing.length > 0) problems.push(`LVM tools not found: ${missing.join(', ')} (Debian package lvm2)`);
  if (problems.length > 0) return { available: false, reason: problems.join('; ') };
  return { available: true, reason: 'device-mapper and LVM available' };
}
