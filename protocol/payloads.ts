// Payload layouts of the vhost-user spec ("Payload" section), little endian.
// Sizes follow what QEMU actually puts on the wire, which is sizeof() of its
// C structs: that includes tail padding the spec's tables do not show
// (inflight is 24 bytes, IOTLB is 32).
import type { ProtocolErrorKind } from './errors';

export const U64_SIZE = 8;
export const VRING_STATE_SIZE = 8;
export const VRING_ADDR_SIZE = 40;
export const MEMORY_REGION_SIZE = 32;
export const MEMORY_TABLE_HEADER_SIZE = 8;
export const MAX_MEMORY_REGIONS = 8;
export const SINGLE_REGION_SIZE = 8 + MEMORY_REGION_SIZE;
export const LOG_SIZE = 16;
export const INFLIGHT_SIZE = 24;
export const IOTLB_SIZE = 32;
export const VRING_AREA_SIZE = 24;
export const CONFIG_HEADER_SIZE = 12;
export const MAX_CONFIG_SIZE = 256;
export const UUID_SIZE = 16;
export const DEVICE_STATE_SIZE = 8;

/** Bits 0-7 of the SET_VRING_KICK/CALL/ERR and vring-area u64. */
export const VRING_INDEX_MASK = 0xff;
/** Bit 8 of the same u64: no fd in the ancillary data. */
export const VRING_NOFD_FLAG = 0x100;
/** Bit number of VHOST_VRING_F_LOG in the vring address flags. */
export const VRING_F_LOG = 0;

export const ConfigFlags = { WRITABLE: 0, MIGRATION: 1 } as const;
export const IotlbType = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
export const IotlbPerm = { NONE: 0, READ: 1, WRITE: 2, READ_WRITE: 3 } as const;
export const DeviceStateDirection = { SAVE: 0, LOAD: 1 } as const;
export const DeviceStatePhase = { STOPPED: 0 } as const;

export interface MemoryRegion {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
}

export interface NonePayload { kind: 'none' }
export interface U64Payload { kind: 'u64'; value: bigint }
export interface VringStatePayload { kind: 'vringState'; index: number; num: number }
export interface VringAddrPayload {
  kind: 'vringAddr';
  index: number;
  flags: number;
  descUserAddr: number;
  usedUserAddr: number;
  availUserAddr: number;
  logGuestAddr: number;
}
export interface MemoryTablePayload { kind: 'memoryTable'; regions: MemoryRegion[] }
/** ADD_MEM_REG / REM_MEM_REG: u64 padding then one region. */
export interface MemoryRegionPayload { kind: 'memoryRegion'; region: MemoryRegion }
export interface VringFdPayload { kind: 'vringFd'; index: number; noFd: boolean }
export interface ConfigPayload { kind: 'config'; offset: number; size: number; flags: number; data: Uint8Array }
export interface InflightPayload { kind: 'inflight'; mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }
export interface LogPayload { kind: 'log'; mmapSize: number; mmapOffset: number }
/** IOTLB values stay bigint: invalidations may cover the whole 64-bit IOVA space. */
export interface IotlbPayload { kind: 'iotlb'; iova: bigint; size: bigint; userAddr: bigint; perm: number; type: number }
export interface VringAreaPayload { kind: 'vringArea'; index: number; noFd: boolean; size: number; offset: number }
export interface SharedObjectPayload { kind: 'sharedObject'; uuid: Uint8Array }
export interface DeviceStatePayload { kind: 'deviceState'; direction: number; phase: number }
export interface RawPayload { kind: 'raw'; bytes: Uint8Array }

export type Decoded<T> = { ok: true; value: T } | { ok: false; kind: ProtocolErrorKind; message: string };

const TWO_32 = 0x1_0000_0000;
/** hi word limit for a u64 to stay below 2^53 */
const SAFE_HI_LIMIT = 0x20_0000;

function ok<T>(value: T): Decoded<T> {
  return { ok: true, value };
}

function fail<T>(kind: ProtocolErrorKind, message: string): Decoded<T> {
  return { ok: false, kind, message };
}

function exactSize<T>(body: Uint8Array, size: number, what: string): Decoded<T> | undefined {
  return body.length === size ? undefined : fail('bad-size', `${what} needs ${size} bytes, got ${body.length}`);
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** u64 as a number, or -1 when it is not below 2^53. */
function readSafeU64(view: DataView, offset: number): number {
  const hi = view.getUint32(offset + 4, true);
  if (hi >= SAFE_HI_LIMIT) return -1;
  return hi * TWO_32 + view.getUint32(offset, true);
}

/** Reads consecutive u64s as numbers; undefined when any is out of range. */
function readSafeU64s(view: DataView, offset: number, count: number): number[] | undefined {
  const values: number[] = [];
  for (let i = 0; i < count; i++) {
    const v = readSafeU64(view, offset + 8 * i);
    if (v < 0) return undefined;
    values.push(v);
  }
  return values;
}

function outOfRange<T>(what: string): Decoded<T> {
  return fail('out-of-range', `${what} has a value >= 2^53`);
}

// ---- decoders -----------------------------------------------------------

export function decodeU64(body: Uint8Array): Decoded<U64Payload> {
  return exactSize(body, U64_SIZE, 'u64') ?? ok({ kind: 'u64', value: viewOf(body).getBigUint64(0, true) });
}

export function decodeVringState(body: Uint8Array): Decoded<VringStatePayload> {
  const bad = exactSize<VringStatePayload>(body, VRING_STATE_SIZE, 'vring state');
  if (bad) return bad;
  const view = viewOf(body);
  return ok({ kind: 'vringState', index: view.getUint32(0, true), num: view.getUint32(4, true) });
}

export function decodeVringAddr(body: Uint8Array): Decoded<VringAddrPayload> {
  const bad = exactSize<VringAddrPayload>(body, VRING_ADDR_SIZE, 'vring address');
  if (bad) return bad;
  const view = viewOf(body);
  const addrs = readSafeU64s(view, 8, 4);
  if (!addrs) return outOfRange('vring address');
  const [descUserAddr, usedUserAddr, availUserAddr, logGuestAddr] = addrs as [number, number, number, number];
  return ok({
    kind: 'vringAddr',
    index: view.getUint32(0, true),
    flags: view.getUint32(4, true),
    descUserAddr,
    usedUserAddr,
    availUserAddr,
    logGuestAddr,
  });
}

function readRegion(view: DataView, offset: number): MemoryRegion | undefined {
  const fields = readSafeU64s(view, offset, 4);
  if (!fields) return undefined;
  const [guestPhysAddr, size, userAddr, mmapOffset] = fields as [number, number, number, number];
  return { guestPhysAddr, size, userAddr, mmapOffset };
}

/** Only the used regions are on the wire, so the size is 8 + 32 * nregions. */
export function decodeMemoryTable(body: Uint8Array): Decoded<MemoryTablePayload> {
  if (body.length < MEMORY_TABLE_HEADER_SIZE) {
    return fail('bad-size', `memory table needs at least ${MEMORY_TABLE_HEADER_SIZE} bytes, got ${body.length}`);
  }
  const view = viewOf(body);
  const nregions = view.getUint32(0, true);
  if (nregions > MAX_MEMORY_REGIONS) {
    return fail('too-many-regions', `memory table has ${nregions} regions, at most ${MAX_MEMORY_REGIONS} allowed`);
  }
  const bad = exactSize<MemoryTablePayload>(
    body,
    MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * nregions,
    `memory table with ${nregions} regions`,
  );
  if (bad) return bad;
  const regions: MemoryRegion[] = [];
  for (let i = 0; i < nregions; i++) {
    const region = readRegion(view, MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * i);
    if (!region) return outOfRange(`memory region ${i}`);
    regions.push(region);
  }
  return ok({ kind: 'memoryTable', regions });
}

export function decodeMemoryRegion(body: Uint8Array): Decoded<MemoryRegionPayload> {
  const bad = exactSize<MemoryRegionPayload>(body, SINGLE_REGION_SIZE, 'memory region message');
  if (bad) return bad;
  const region = readRegion(viewOf(body), 8);
  return region ? ok({ kind: 'memoryRegion', region }) : outOfRange('memory region');
}

/** Index and no-fd flag of the vring fd / vring area u64; other bits are reserved. */
function splitVringU64(view: DataView, offset: number): { index: number; noFd: boolean } | undefined {
  const lo = view.getUint32(offset, true);
  const hi = view.getUint32(offset + 4, true);
  if (hi !== 0 || (lo & ~(VRING_INDEX_MASK | VRING_NOFD_FLAG)) !== 0) return undefined;
  return { index: lo & VRING_INDEX_MASK, noFd: (lo & VRING_NOFD_FLAG) !== 0 };
}

export function decodeVringFd(body: Uint8Array): Decoded<VringFdPayload> {
  const bad = exactSize<VringFdPayload>(body, U64_SIZE, 'vring fd u64');
  if (bad) return bad;
  const parts = splitVringU64(viewOf(body), 0);
  if (!parts) return fail('reserved-bits', 'vring fd u64 sets bits other than 0-8');
  return ok({ kind: 'vringFd', ...parts });
}

export function decodeConfig(body: Uint8Array): Decoded<ConfigPayload> {
  if (body.length < CONFIG_HEADER_SIZE) {
    return fail('bad-size', `config needs at least ${CONFIG_HEADER_SIZE} bytes, got ${body.length}`);
  }
  const view = viewOf(body);
  const size = view.getUint32(4, true);
  if (size > MAX_CONFIG_SIZE) return fail('bad-size', `config size ${size} exceeds ${MAX_CONFIG_SIZE}`);
  const bad = exactSize<ConfigPayload>(body, CONFIG_HEADER_SIZE + size, `config with ${size} data bytes`);
  if (bad) return bad;
  return ok({
    kind: 'config',
    offset: view.getUint32(0, true),
    size,
    flags: view.getUint32(8, true),
    data: body.slice(CONFIG_HEADER_SIZE),
  });
}

export function decodeInflight(body: Uint8Array): Decoded<InflightPayload> {
  const bad = exactSize<InflightPayload>(body, INFLIGHT_SIZE, 'inflight description');
  if (bad) return bad;
  const view = viewOf(body);
  const values = readSafeU64s(view, 0, 2);
  if (!values) return outOfRange('inflight description');
  const [mmapSize, mmapOffset] = values as [number, number];
  return ok({
    kind: 'inflight',
    mmapSize,
    mmapOffset,
    numQueues: view.getUint16(16, true),
    queueSize: view.getUint16(18, true),
  });
}

export function decodeLog(body: Uint8Array): Decoded<LogPayload> {
  const bad = exactSize<LogPayload>(body, LOG_SIZE, 'log description');
  if (bad) return bad;
  const values = readSafeU64s(viewOf(body), 0, 2);
  if (!values) return outOfRange('log description');
  const [mmapSize, mmapOffset] = values as [number, number];
  return ok({ kind: 'log', mmapSize, mmapOffset });
}

export function decodeIotlb(body: Uint8Array): Decoded<IotlbPayload> {
  const bad = exactSize<IotlbPayload>(body, IOTLB_SIZE, 'IOTLB message');
  if (bad) return bad;
  const view = viewOf(body);
  return ok({
    kind: 'iotlb',
    iova: view.getBigUint64(0, true),
    size: view.getBigUint64(8, true),
    userAddr: view.getBigUint64(16, true),
    perm: view.getUint8(24),
    type: view.getUint8(25),
  });
}

export function decodeVringArea(body: Uint8Array): Decoded<VringAreaPayload> {
  const bad = exactSize<VringAreaPayload>(body, VRING_AREA_SIZE, 'vring area');
  if (bad) return bad;
  const view = viewOf(body);
  const parts = splitVringU64(view, 0);
  if (!parts) return fail('reserved-bits', 'vring area u64 sets bits other than 0-8');
  const values = readSafeU64s(view, 8, 2);
  if (!values) return outOfRange('vring area');
  const [size, offset] = values as [number, number];
  return ok({ kind: 'vringArea', ...parts, size, offset });
}

export function decodeSharedObject(body: Uint8Array): Decoded<SharedObjectPayload> {
  return exactSize(body, UUID_SIZE, 'shared object UUID') ?? ok({ kind: 'sharedObject', uuid: body.slice(0, UUID_SIZE) });
}

export function decodeDeviceState(body: Uint8Array): Decoded<DeviceStatePayload> {
  const bad = exactSize<DeviceStatePayload>(body, DEVICE_STATE_SIZE, 'device state transfer parameters');
  if (bad) return bad;
  const view = viewOf(body);
  return ok({ kind: 'deviceState', direction: view.getUint32(0, true), phase: view.getUint32(4, true) });
}

export function decodeNone(body: Uint8Array): Decoded<NonePayload> {
  return exactSize(body, 0, 'empty payload') ?? ok({ kind: 'none' });
}

export function decodeRaw(body: Uint8Array): Decoded<RawPayload> {
  return ok({ kind: 'raw', bytes: body });
}

// ---- encoders: bad arguments are caller bugs, so they throw -------------

function checkUint(value: number, max: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what} = ${value} is not an integer in 0..${max}`);
  }
}

function setSafeU64(view: DataView, offset: number, value: number, what: string): void {
  checkUint(value, Number.MAX_SAFE_INTEGER, what);
  view.setUint32(offset, value % TWO_32, true);
  view.setUint32(offset + 4, Math.floor(value / TWO_32), true);
}

function setBigU64(view: DataView, offset: number, value: bigint, what: string): void {
  if (value < 0n || value > 0xffff_ffff_ffff_ffffn) throw new RangeError(`${what} = ${value} is not a u64`);
  view.setBigUint64(offset, value, true);
}

function alloc(size: number): [Uint8Array, DataView] {
  const bytes = new Uint8Array(size);
  return [bytes, viewOf(bytes)];
}

function vringU64(index: number, noFd: boolean): number {
  checkUint(index, VRING_INDEX_MASK, 'vring index');
  return index | (noFd ? VRING_NOFD_FLAG : 0);
}

function setRegion(view: DataView, offset: number, region: MemoryRegion): void {
  setSafeU64(view, offset, region.guestPhysAddr, 'guestPhysAddr');
  setSafeU64(view, offset + 8, region.size, 'size');
  setSafeU64(view, offset + 16, region.userAddr, 'userAddr');
  setSafeU64(view, offset + 24, region.mmapOffset, 'mmapOffset');
}

export function encodeU64(p: U64Payload): Uint8Array {
  const [bytes, view] = alloc(U64_SIZE);
  setBigU64(view, 0, p.value, 'u64');
  return bytes;
}

export function encodeVringState(p: VringStatePayload): Uint8Array {
  const [bytes, view] = alloc(VRING_STATE_SIZE);
  checkUint(p.index, 0xffffffff, 'index');
  checkUint(p.num, 0xffffffff, 'num');
  view.setUint32(0, p.index, true);
  view.setUint32(4, p.num, true);
  return bytes;
}

export function encodeVringAddr(p: VringAddrPayload): Uint8Array {
  const [bytes, view] = alloc(VRING_ADDR_SIZE);
  checkUint(p.index, 0xffffffff, 'index');
  checkUint(p.flags, 0xffffffff, 'flags');
  view.setUint32(0, p.index, true);
  view.setUint32(4, p.flags, true);
  setSafeU64(view, 8, p.descUserAddr, 'descUserAddr');
  setSafeU64(view, 16, p.usedUserAddr, 'usedUserAddr');
  setSafeU64(view, 24, p.availUserAddr, 'availUserAddr');
  setSafeU64(view, 32, p.logGuestAddr, 'logGuestAddr');
  return bytes;
}

export function encodeMemoryTable(p: MemoryTablePayload): Uint8Array {
  if (p.regions.length > MAX_MEMORY_REGIONS) {
    throw new RangeError(`${p.regions.length} memory regions, at most ${MAX_MEMORY_REGIONS} allowed`);
  }
  const [bytes, view] = alloc(MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * p.regions.length);
  view.setUint32(0, p.regions.length, true);
  p.regions.forEach((region, i) => setRegion(view, MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * i, region));
  return bytes;
}

export function encodeMemoryRegion(p: MemoryRegionPayload): Uint8Array {
  const [bytes, view] = alloc(SINGLE_REGION_SIZE);
  setRegion(view, 8, p.region);
  return bytes;
}

export function encodeVringFd(p: VringFdPayload): Uint8Array {
  const [bytes, view] = alloc(U64_SIZE);
  view.setUint32(0, vringU64(p.index, p.noFd), true);
  return bytes;
}

export function encodeConfig(p: ConfigPayload): Uint8Array {
  if (p.size !== p.data.length) throw new RangeError(`config size ${p.size} != data length ${p.data.length}`);
  checkUint(p.size, MAX_CONFIG_SIZE, 'config size');
  checkUint(p.offset, 0xffffffff, 'config offset');
  checkUint(p.flags, 0xffffffff, 'config flags');
  const [bytes, view] = alloc(CONFIG_HEADER_SIZE + p.size);
  view.setUint32(0, p.offset, true);
  view.setUint32(4, p.size, true);
  view.setUint32(8, p.flags, true);
  bytes.set(p.data, CONFIG_HEADER_SIZE);
  return bytes;
}

export function encodeInflight(p: InflightPayload): Uint8Array {
  const [bytes, view] = alloc(INFLIGHT_SIZE);
  setSafeU64(view, 0, p.mmapSize, 'mmapSize');
  setSafeU64(view, 8, p.mmapOffset, 'mmapOffset');
  checkUint(p.numQueues, 0xffff, 'numQueues');
  checkUint(p.queueSize, 0xffff, 'queueSize');
  view.setUint16(16, p.numQueues, true);
  view.setUint16(18, p.queueSize, true);
  return bytes;
}

export function encodeLog(p: LogPayload): Uint8Array {
  const [bytes, view] = alloc(LOG_SIZE);
  setSafeU64(view, 0, p.mmapSize, 'mmapSize');
  setSafeU64(view, 8, p.mmapOffset, 'mmapOffset');
  return bytes;
}

export function encodeIotlb(p: IotlbPayload): Uint8Array {
  const [bytes, view] = alloc(IOTLB_SIZE);
  setBigU64(view, 0, p.iova, 'iova');
  setBigU64(view, 8, p.size, 'size');
  setBigU64(view, 16, p.userAddr, 'userAddr');
  checkUint(p.perm, 0xff, 'perm');
  checkUint(p.type, 0xff, 'type');
  view.setUint8(24, p.perm);
  view.setUint8(25, p.type);
  return bytes;
}

export function encodeVringArea(p: VringAreaPayload): Uint8Array {
  const [bytes, view] = alloc(VRING_AREA_SIZE);
  view.setUint32(0, vringU64(p.index, p.noFd), true);
  setSafeU64(view, 8, p.size, 'size');
  setSafeU64(view, 16, p.offset, 'offset');
  return bytes;
}

export function encodeSharedObject(p: SharedObjectPayload): Uint8Array {
  if (p.uuid.length !== UUID_SIZE) throw new RangeError(`UUID must be ${UUID_SIZE} bytes, got ${p.uuid.length}`);
  return p.uuid.slice();
}

export function encodeDeviceState(p: DeviceStatePayload): Uint8Array {
  const [bytes, view] = alloc(DEVICE_STATE_SIZE);
  checkUint(p.direction, 0xffffffff, 'direction');
  checkUint(p.phase, 0xffffffff, 'phase');
  view.setUint32(0, p.direction, true);
  view.setUint32(4, p.phase, true);
  return bytes;
}
