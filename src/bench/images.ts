// The images under test: one in tmpfs (/dev/shm) and, for the disk layers, one
// per O_DIRECT setting on a disk-backed filesystem. Each is written in full
// with zeros, so every block is allocated: reads of an unwritten (sparse or
// fallocated) extent would return zeros without touching the disk.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { STORAGES, StorageId } from './matrix';
import { StorageInfo } from './report';

export interface MountInfo {
  source: string;
  fstype: string;
  target: string;
}

/** Filesystems that keep files in memory (or only on top of another one): not "a file on disk". */
const NOT_DISK = new Set(['tmpfs', 'ramfs', 'devtmpfs', 'overlay', 'aufs', 'squashfs', 'fuse', 'proc', 'sysfs']);

export const isDiskFs = (fstype: string): boolean => !NOT_DISK.has(fstype) && !fstype.startsWith('fuse.');

/** The filesystem holding `dir`, or undefined when findmnt does not know it. */
export function mountOf(dir: string): MountInfo | undefined {
  try {
    const out = execFileSync('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,TARGET', '-T', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const [source, fstype, target] = out.trim().split(/\s+/);
    return fstype === undefined ? undefined : { source, fstype, target };
  } catch {
    return undefined;
  }
}

/** The first candidate directory on a disk-backed filesystem. */
export function pickDiskDir(candidates: ReadonlyArray<{ dir: string; mount?: MountInfo }>): { dir: string; mount: MountInfo } | undefined {
  for (const c of candidates) if (c.mount !== undefined && isDiskFs(c.mount.fstype)) return { dir: c.dir, mount: c.mount };
  return undefined;
}

const CHUNK = Buffer.alloc(1 << 20);

/** `bytes` of real zeros (a multiple of 1 MiB), flushed, so the image is allocated and nothing is left to write back. */
export function writeImage(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < bytes; done += CHUNK.length) fs.writeSync(fd, CHUNK);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Read the whole image once, so a page-cached (cache.direct=off) run starts with
 * the image in the page cache. Writing it is not enough here: this machine
 * reclaims cold page cache in the background (kdamond), and the first server
 * to run after a pause read from the device while the next ones read from memory.
 */
export function warmImage(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK.length);
    while (fs.readSync(fd, buf, 0, buf.length, null) > 0) { /* reading is the point */ }
  } finally {
    fs.closeSync(fd);
  }
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

export interface Images {
  storages: StorageInfo[];
  remove(): void;
}

/** Create the images of `storages`; `diskDir` forces the disk directory, otherwise /var/tmp or `repoDir`. */
export function createImages(storages: readonly StorageId[], bytes: number, diskDir: string | undefined, repoDir: string,
  log: (line: string) => void): Images {
  const created: string[] = [];
  const remove = (): void => { for (const f of created) fs.rmSync(f, { force: true }); };
  const out: StorageInfo[] = [];
  try {
    let disk: { dir: string; mount: MountInfo } | undefined;
    if (storages.some((id) => id !== 'tmpfs')) {
      const candidates = (diskDir !== undefined ? [diskDir] : ['/var/tmp', repoDir]).map((dir) => ({ dir, mount: mountOf(dir) }));
      disk = pickDiskDir(candidates);
      if (disk === undefined) {
        throw new Error(`no disk-backed filesystem among ${candidates.map((c) => `${c.dir} (${c.mount?.fstype ?? 'unknown'})`).join(', ')}; ` +
          'name one with --disk-dir, or leave the disk out with --storage tmpfs');
      }
    }
    for (const id of storages) {
      const def = STORAGES.find((s) => s.id === id)!;
      const dir = def.onDisk ? disk!.dir : '/dev/shm';
      const mount = def.onDisk ? disk!.mount : mountOf(dir);
      if (!def.onDisk && mount?.fstype !== 'tmpfs') throw new Error(`/dev/shm is ${mount?.fstype ?? 'missing'}, not tmpfs`);
      if (freeBytes(dir) < bytes * 1.1) throw new Error(`${dir}: less than ${(bytes * 1.1 / 2 ** 30).toFixed(1)} GiB free for the ${id} image`);
      // A separate file per O_DIRECT setting: O_DIRECT writes drop cached pages, which would
      // leave the cache=off image colder from round to round.
      const image = path.join(dir, `vublk-bench-${process.pid}-${id}.img`);
      const t0 = Date.now();
      created.push(image);
      writeImage(image, bytes);
      log(`image ${image}: ${bytes / 2 ** 20} MiB on ${mount!.fstype} (${mount!.source}) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      out.push({ id, label: def.label, image, direct: def.direct, fstype: mount!.fstype, source: mount!.source, mountpoint: mount!.target });
    }
  } catch (e) {
    remove();
    throw e;
  }
  return { storages: out, remove };
}
