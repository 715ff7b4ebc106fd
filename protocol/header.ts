// The 12-byte message header: request u32, flags u32, size u32, little endian
// (the spec says "native byte order"; every host QEMU runs vhost-user on is LE).
import { ProtocolError } from './errors';

export const HEADER_SIZE = 12;
export const VERSION = 0x1;
export const VERSION_MASK = 0x3;
export const REPLY_FLAG = 0x4;
export const NEED_REPLY_FLAG = 0x8;
/** Flag bits the spec defines; the rest are reserved and rejected. */
export const KNOWN_FLAGS = VERSION_MASK | REPLY_FLAG | NEED_REPLY_FLAG;

export interface Header {
  request: number;
  flags: number;
  size: number;
}

/** Version and reserved-bit checks shared by the reader and the decoders. */
export function checkFlags(request: number, flags: number, fds: readonly number[] = []): ProtocolError | undefined {
  if ((flags & VERSION_MASK) !== VERSION) {
    return new ProtocolError('bad-version', `version ${flags & VERSION_MASK} in flags 0x${hex(flags)}, expected ${VERSION}`, {
      request,
      fds,
    });
  }
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    return new ProtocolError('reserved-flags', `reserved bits set in flags 0x${hex(flags)}`, { request, fds });
  }
  return undefined;
}

export function decodeHeader(bytes: Uint8Array): Header | ProtocolError {
  if (bytes.length < HEADER_SIZE) {
    return new ProtocolError('bad-size', `header needs ${HEADER_SIZE} bytes, got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const header = {
    request: view.getUint32(0, true),
    flags: view.getUint32(4, true),
    size: view.getUint32(8, true),
  };
  return checkFlags(header.request, header.flags) ?? header;
}

/** Normalises the version bits to 1; throws on reserved flag bits (a caller bug). */
export function encodeFlags(flags: number): number {
  if (!isU32(flags) || (flags & ~KNOWN_FLAGS) !== 0) {
    throw new RangeError(`flags 0x${hex(flags)} set reserved bits`);
  }
  return (flags & ~VERSION_MASK) | VERSION;
}

export function writeHeader(target: Uint8Array, request: number, flags: number, size: number): void {
  if (!isU32(request)) throw new RangeError(`request ${request} is not a u32`);
  if (!isU32(size)) throw new RangeError(`size ${size} is not a u32`);
  const view = new DataView(target.buffer, target.byteOffset, HEADER_SIZE);
  view.setUint32(0, request, true);
  view.setUint32(4, encodeFlags(flags), true);
  view.setUint32(8, size, true);
}

export function encodeHeader(request: number, flags: number, size: number): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE);
  writeHeader(bytes, request, flags, size);
  return bytes;
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

function hex(n: number): string {
  return (n >>> 0).toString(16);
}
