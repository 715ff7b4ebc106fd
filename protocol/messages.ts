// Which payload and how many fds each request carries, per the spec and per
// what QEMU really sends (see notes on individual entries).
import { ProtocolError } from './errors';
import type { RawMessage } from './framing';
import { HEADER_SIZE, NEED_REPLY_FLAG, REPLY_FLAG, checkFlags, writeHeader } from './header';
import * as P from './payloads';
import { BackendRequest as B, FrontendRequest as F } from './requests';

export type Payload =
  | P.NonePayload
  | P.U64Payload
  | P.VringStatePayload
  | P.VringAddrPayload
  | P.MemoryTablePayload
  | P.MemoryRegionPayload
  | P.VringFdPayload
  | P.ConfigPayload
  | P.InflightPayload
  | P.LogPayload
  | P.IotlbPayload
  | P.VringAreaPayload
  | P.SharedObjectPayload
  | P.DeviceStatePayload
  | P.RawPayload;

export type PayloadKind = Payload['kind'];

export interface Message {
  request: number;
  flags: number;
  payload: Payload;
  fds: number[];
}

type Decoder = (body: Uint8Array) => P.Decoded<Payload>;
/** Allowed fd counts, given the decoded payload. */
type FdRule = (payload: Payload) => readonly [min: number, max: number];

interface Rule {
  decode: Decoder;
  fds: FdRule;
}

const exactly = (n: number): FdRule => () => [n, n];
const NO_FDS = exactly(0);
const ONE_FD = exactly(1);
const perRegion: FdRule = (p) => {
  const n = p.kind === 'memoryTable' ? p.regions.length : 0;
  return [n, n];
};
/** The no-fd bit must agree with the ancillary data. */
const perNoFdBit: FdRule = (p) => ((p.kind === 'vringFd' || p.kind === 'vringArea') && p.noFd ? [0, 0] : [1, 1]);

function rule(decode: Decoder, fds: FdRule = NO_FDS): Rule {
  return { decode, fds };
}

/** Some requests are legal with either of two layouts, told apart by size. */
function bySize(sizes: ReadonlyMap<number, Decoder>, fallback: Decoder): Decoder {
  return (body) => (sizes.get(body.length) ?? fallback)(body);
}

const noneOrSharedObject = bySize(new Map([[0, P.decodeNone]]), P.decodeSharedObject);

const FRONTEND_RULES: ReadonlyMap<number, Rule> = new Map<number, Rule>([
  [F.GET_FEATURES, rule(P.decodeNone)],
  [F.SET_FEATURES, rule(P.decodeU64)],
  [F.SET_OWNER, rule(P.decodeNone)],
  [F.RESET_OWNER, rule(P.decodeNone)],
  [F.SET_MEM_TABLE, rule(P.decodeMemoryTable, perRegion)],
  // The spec says u64, but QEMU has always sent VhostUserLog (size + offset).
  // The fd is only sent with LOG_SHMFD, and without it QEMU blocks migration.
  [F.SET_LOG_BASE, rule(P.decodeLog, ONE_FD)],
  [F.SET_LOG_FD, rule(P.decodeNone, ONE_FD)],
  [F.SET_VRING_NUM, rule(P.decodeVringState)],
  [F.SET_VRING_ADDR, rule(P.decodeVringAddr)],
  [F.SET_VRING_BASE, rule(P.decodeVringState)],
  [F.GET_VRING_BASE, rule(P.decodeVringState)],
  [F.SET_VRING_KICK, rule(P.decodeVringFd, perNoFdBit)],
  [F.SET_VRING_CALL, rule(P.decodeVringFd, perNoFdBit)],
  [F.SET_VRING_ERR, rule(P.decodeVringFd, perNoFdBit)],
  [F.GET_PROTOCOL_FEATURES, rule(P.decodeNone)],
  [F.SET_PROTOCOL_FEATURES, rule(P.decodeU64)],
  [F.GET_QUEUE_NUM, rule(P.decodeNone)],
  [F.SET_VRING_ENABLE, rule(P.decodeVringState)],
  [F.SEND_RARP, rule(P.decodeU64)],
  [F.NET_SET_MTU, rule(P.decodeU64)],
  [F.SET_BACKEND_REQ_FD, rule(P.decodeNone, ONE_FD)],
  [F.IOTLB_MSG, rule(P.decodeIotlb)],
  [F.SET_VRING_ENDIAN, rule(P.decodeVringState)],
  // GET_CONFIG carries `size` zero bytes as a placeholder for the reply.
  [F.GET_CONFIG, rule(P.decodeConfig)],
  [F.SET_CONFIG, rule(P.decodeConfig)],
  // Layout depends on QEMU's crypto structs; nothing to validate here.
  [F.CREATE_CRYPTO_SESSION, rule(P.decodeRaw)],
  [F.CLOSE_CRYPTO_SESSION, rule(P.decodeU64)],
  [F.POSTCOPY_ADVISE, rule(P.decodeNone)],
  [F.POSTCOPY_LISTEN, rule(P.decodeNone)],
  [F.POSTCOPY_END, rule(P.decodeNone)],
  [F.GET_INFLIGHT_FD, rule(P.decodeInflight)],
  [F.SET_INFLIGHT_FD, rule(P.decodeInflight, ONE_FD)],
  [F.GPU_SET_SOCKET, rule(P.decodeNone, ONE_FD)],
  [F.RESET_DEVICE, rule(P.decodeNone)],
  [F.VRING_KICK, rule(P.decodeVringState)],
  [F.GET_MAX_MEM_SLOTS, rule(P.decodeNone)],
  [F.ADD_MEM_REG, rule(P.decodeMemoryRegion, ONE_FD)],
  // The spec says no fd, but QEMU up to 8.0 (so 7.2 too) sends the region's fd;
  // the spec lets back-ends accept it. The caller must close it.
  [F.REM_MEM_REG, rule(P.decodeMemoryRegion, () => [0, 1])],
  [F.SET_STATUS, rule(P.decodeU64)],
  [F.GET_STATUS, rule(P.decodeNone)],
  // QEMU forgets to set hdr.size here, so its UUID never reaches the wire.
  [F.GET_SHARED_OBJECT, rule(noneOrSharedObject)],
  [F.SET_DEVICE_STATE_FD, rule(P.decodeDeviceState, ONE_FD)],
  [F.CHECK_DEVICE_STATE, rule(P.decodeNone)],
]);

const BACKEND_RULES: ReadonlyMap<number, Rule> = new Map<number, Rule>([
  [B.IOTLB_MSG, rule(P.decodeIotlb)],
  [B.CONFIG_CHANGE_MSG, rule(P.decodeNone)],
  [B.VRING_HOST_NOTIFIER_MSG, rule(P.decodeVringArea, perNoFdBit)],
  [B.VRING_CALL, rule(P.decodeVringState)],
  [B.VRING_ERR, rule(P.decodeVringState)],
  [B.SHARED_OBJECT_ADD, rule(P.decodeSharedObject)],
  [B.SHARED_OBJECT_REMOVE, rule(P.decodeSharedObject)],
  [B.SHARED_OBJECT_LOOKUP, rule(P.decodeSharedObject)],
]);

/** Replies whose body is not the plain REPLY_ACK u64. */
function frontendReplyRule(request: number): Rule {
  switch (request) {
    case F.GET_VRING_BASE:
      return rule(P.decodeVringState);
    case F.GET_CONFIG:
      // An empty reply is how a back-end reports failure.
      return rule(bySize(new Map([[0, P.decodeNone]]), P.decodeConfig));
    case F.GET_INFLIGHT_FD:
      // QEMU only takes the fd when mmap_size is non-zero.
      return rule(P.decodeInflight, (p) => (p.kind === 'inflight' && p.mmapSize === 0 ? [0, 1] : [1, 1]));
    case F.POSTCOPY_ADVISE:
      return rule(P.decodeNone, ONE_FD);
    case F.CREATE_CRYPTO_SESSION:
      return rule(P.decodeRaw);
    case F.SET_MEM_TABLE:
      // With postcopy the back-end echoes the table with its own addresses.
      return rule(bySize(new Map([[P.U64_SIZE, P.decodeU64]]), P.decodeMemoryTable));
    case F.ADD_MEM_REG:
      return rule(bySize(new Map([[P.U64_SIZE, P.decodeU64]]), P.decodeMemoryRegion));
    case F.GET_SHARED_OBJECT:
      return rule(bySize(new Map([[0, P.decodeNone]]), P.decodeU64), () => [0, 1]);
    case F.SET_DEVICE_STATE_FD:
      // Bits 0-7 are an error code, bit 8 says "no fd"; errors carry no fd.
      return rule(P.decodeU64, (p) => {
        const v = p.kind === 'u64' ? p.value : 0n;
        return (v & 0xffn) !== 0n || (v & BigInt(P.VRING_NOFD_FLAG)) !== 0n ? [0, 0] : [1, 1];
      });
    default:
      return rule(P.decodeU64);
  }
}

function backendReplyRule(request: number): Rule {
  if (request === B.SHARED_OBJECT_LOOKUP) {
    // The front-end sends the dma-buf fd only on success.
    return rule(P.decodeU64, (p) => (p.kind === 'u64' && p.value === 0n ? [0, 1] : [0, 0]));
  }
  return rule(P.decodeU64);
}

function decodeWith(raw: RawMessage, rule: Rule): Message | ProtocolError {
  const { request, fds } = raw;
  if (raw.body.length !== raw.size) {
    return new ProtocolError('bad-size', `header size ${raw.size} but ${raw.body.length} body bytes`, { request, fds });
  }
  const decoded = rule.decode(raw.body);
  if (!decoded.ok) return new ProtocolError(decoded.kind, decoded.message, { request, fds });
  const [min, max] = rule.fds(decoded.value);
  if (fds.length < min || fds.length > max) {
    const expected = min === max ? `${min}` : `${min}..${max}`;
    return new ProtocolError('bad-fd-count', `expected ${expected} fds, got ${fds.length}`, { request, fds });
  }
  return { request, flags: raw.flags, payload: decoded.value, fds: [...fds] };
}

function checkRequestFlags(raw: RawMessage): ProtocolError | undefined {
  const bad = checkFlags(raw.request, raw.flags, raw.fds);
  if (bad) return bad;
  if (raw.flags & REPLY_FLAG) {
    return new ProtocolError('bad-reply-flag', 'REPLY flag set on a request', { request: raw.request, fds: raw.fds });
  }
  return undefined;
}

function checkReplyFlags(request: number, raw: RawMessage): ProtocolError | undefined {
  const bad = checkFlags(raw.request, raw.flags, raw.fds);
  if (bad) return bad;
  if ((raw.flags & (REPLY_FLAG | NEED_REPLY_FLAG)) !== REPLY_FLAG) {
    return new ProtocolError('bad-reply-flag', `reply flags 0x${raw.flags.toString(16)}, expected REPLY only`, {
      request: raw.request,
      fds: raw.fds,
    });
  }
  if (raw.request !== request) {
    return new ProtocolError('unexpected-reply', `reply to request ${raw.request} while awaiting ${request}`, {
      request: raw.request,
      fds: raw.fds,
    });
  }
  return undefined;
}

/** Back-end side: decode a request from the front-end. */
export function decodeFrontendMessage(raw: RawMessage): Message | ProtocolError {
  const bad = checkRequestFlags(raw);
  if (bad) return bad;
  const found = FRONTEND_RULES.get(raw.request);
  if (!found) {
    return new ProtocolError('unknown-request', `unknown front-end request ${raw.request}`, {
      request: raw.request,
      fds: raw.fds,
    });
  }
  return decodeWith(raw, found);
}

/** Front-end side: decode a request arriving on the back-end channel. */
export function decodeBackendMessage(raw: RawMessage): Message | ProtocolError {
  const bad = checkRequestFlags(raw);
  if (bad) return bad;
  const found = BACKEND_RULES.get(raw.request);
  if (!found) {
    return new ProtocolError('unknown-request', `unknown back-end request ${raw.request}`, {
      request: raw.request,
      fds: raw.fds,
    });
  }
  return decodeWith(raw, found);
}

/**
 * Front-end side: decode the back-end's reply to `request` — the explicit
 * reply body for GET_* style requests, otherwise the REPLY_ACK u64.
 */
export function decodeReply(request: number, raw: RawMessage): Message | ProtocolError {
  const bad = checkReplyFlags(request, raw);
  if (bad) return bad;
  if (!FRONTEND_RULES.has(request)) {
    return new ProtocolError('unknown-request', `no reply defined for request ${request}`, { request, fds: raw.fds });
  }
  return decodeWith(raw, frontendReplyRule(request));
}

/** Back-end side: decode the front-end's reply to a back-end request. */
export function decodeBackendReply(request: number, raw: RawMessage): Message | ProtocolError {
  return checkBackendReply(request, raw) ?? decodeWith(raw, backendReplyRule(request));
}

/** What every reply to a back-end request must be: flagged as a reply, to a request that has one. */
function checkBackendReply(request: number, raw: RawMessage): ProtocolError | undefined {
  const bad = checkReplyFlags(request, raw);
  if (bad) return bad;
  if (!BACKEND_RULES.has(request)) {
    return new ProtocolError('unknown-request', `no reply defined for back-end request ${request}`, {
      request,
      fds: raw.fds,
    });
  }
  return undefined;
}

/**
 * Back-end side: the front-end's REPLY_ACK to a back-end request, as its u64
 * value (0 = success). Unlike decodeBackendReply, no request may answer with
 * fds here: the caller only wants the verdict.
 */
export function decodeBackendAck(request: number, raw: RawMessage): bigint | ProtocolError {
  const bad = checkBackendReply(request, raw);
  if (bad) return bad;
  const m = decodeWith(raw, rule(P.decodeU64));
  return m instanceof ProtocolError ? m : (m.payload as P.U64Payload).value;
}

export function encodePayload(payload: Payload): Uint8Array {
  switch (payload.kind) {
    case 'none':
      return new Uint8Array(0);
    case 'u64':
      return P.encodeU64(payload);
    case 'vringState':
      return P.encodeVringState(payload);
    case 'vringAddr':
      return P.encodeVringAddr(payload);
    case 'memoryTable':
      return P.encodeMemoryTable(payload);
    case 'memoryRegion':
      return P.encodeMemoryRegion(payload);
    case 'vringFd':
      return P.encodeVringFd(payload);
    case 'config':
      return P.encodeConfig(payload);
    case 'inflight':
      return P.encodeInflight(payload);
    case 'log':
      return P.encodeLog(payload);
    case 'iotlb':
      return P.encodeIotlb(payload);
    case 'vringArea':
      return P.encodeVringArea(payload);
    case 'sharedObject':
      return P.encodeSharedObject(payload);
    case 'deviceState':
      return P.encodeDeviceState(payload);
    case 'raw':
      return payload.bytes;
    default:
      throw new TypeError(`unknown payload kind ${(payload as { kind: unknown }).kind}`);
  }
}

/** Header plus body; the version bits are always set to 1. Throws on impossible payloads. */
export function encodeMessage(request: number, flags: number, payload: Payload): Uint8Array {
  const body = encodePayload(payload);
  const bytes = new Uint8Array(HEADER_SIZE + body.length);
  writeHeader(bytes, request, flags, body.length);
  bytes.set(body, HEADER_SIZE);
  return bytes;
}

/**
 * Back-end side: a request for the back-end channel. NEED_REPLY asks the
 * front-end for a REPLY_ACK, which the spec only allows once REPLY_ACK was
 * negotiated; the caller knows that, the codec does not.
 */
export function encodeBackendRequest(request: number, payload: Payload, needReply: boolean): Uint8Array {
  if (!BACKEND_RULES.has(request)) throw new RangeError(`${request} is not a back-end request`);
  return encodeMessage(request, needReply ? NEED_REPLY_FLAG : 0, payload);
}

/**
 * The REPLY_ACK answer to `request`, in either direction: same request number,
 * REPLY flag, u64 payload, 0 for success and non-zero for failure.
 */
export function encodeReplyAck(request: number, value: bigint): Uint8Array {
  return encodeMessage(request, REPLY_FLAG, { kind: 'u64', value });
}
