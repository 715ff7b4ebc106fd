// Raw image files as block-device targets.
import * as fs from 'node:fs';

export interface ImageFile {
  fd: number;
  path: string;
  sizeBytes: number;
  readOnly: boolean;
  close(): void;
}

export function openImage(path: string, readOnly: boolean): ImageFile {
  const fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new Error(`${path}: not a regular file`);
    let closed = false;
    return {
      fd, path, sizeBytes: st.size, readOnly,
      close: () => { if (!closed) { closed = true; fs.closeSync(fd); } },
    };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Create a sparse image of `sizeBytes` unless `path` exists already; returns true if it was created. */
export function createSparseImage(path: string, sizeBytes: number): boolean {
  let fd: number;
  try {
    fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}
