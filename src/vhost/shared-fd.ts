// Mapping part of a file the front-end shares by fd (the in-flight region, the
// migration's dirty log): checked against the file first, because touching a
// mapping beyond the end of its file kills the process with SIGBUS.
import * as fs from 'node:fs';
import { native } from '../native/addon';

const PAGE_SIZE = 4096;

export interface SharedMapping {
  /** What munmap() needs. */
  mapAddr: number;
  mapLength: number;
  /** Host address of the byte at the offset asked for. */
  hostAddr: number;
}

/**
 * Map `length` bytes at `offset` of `fd`, shared and writable; the file must hold
 * `declared` bytes there (what the front-end said it has, at least `length`).
 * Throws an Error whose message names `what` when the fd is not a file or memfd,
 * or too short.
 */
export function mapSharedRange(fd: number, offset: number, length: number, what: string, declared = length): SharedMapping {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (e) {
    throw new Error(`cannot stat the ${what} fd: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new Error(`the ${what} fd is not a regular file or memfd`);
  if (st.size < offset + declared) {
    throw new Error(`offset ${offset} + size ${declared} lie beyond the end of the fd (${st.size} bytes) of the ${what}`);
  }
  // mmap wants a page-aligned offset: map from the page below and skip ahead.
  const skew = offset % PAGE_SIZE;
  const mapLength = length + skew;
  let mapAddr: number;
  try {
    mapAddr = native.mmap(fd, mapLength, offset - skew, true);
  } catch (e) {
    throw new Error(`cannot map the ${what}: ${(e as Error).message}`);
  }
  return { mapAddr, mapLength, hostAddr: mapAddr + skew };
}
