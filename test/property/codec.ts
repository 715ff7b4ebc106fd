// Properties of the vhost-user codec against a hostile front-end (or back-end):
// random and mutated messages (bit flips, truncations, extensions, wrong sizes,
// wrong fd counts, random request numbers and flags), decoded directly and
// through the MessageReader's framing with arbitrary read boundaries.
//
// - Decoders never throw and return a Message or a ProtocolError.
// - Every fd a decoder or the reader is given comes back exactly once: in the
//   message, in the error, or from dispose(). An fd that went missing would
//   leak in the server; one handed out twice would be closed twice.
// - What decodes re-encodes to something that decodes the same (no payload the
//   encoder cannot represent), and messages before the first damaged one come
//   through the framing intact.
import fc from 'fast-check';
import {
  BackendRequest as B, FrontendRequest as F, HEADER_SIZE, Message, MessageReader, NEED_REPLY_FLAG, Payload,
  ProtocolError, REPLY_FLAG, RawMessage, decodeBackendAck, decodeBackendMessage, decodeBackendReply,
  decodeFrontendMessage, decodeReply, encodeMessage,
} from '../../protocol';

// ---- valid messages -------------------------------------------------------------------

const u32 = (): fc.Arbitrary<number> => fc.oneof(fc.nat(16), fc.nat({ max: 0xffffffff }));
const safe = (): fc.Arbitrary<number> => fc.oneof(fc.nat(0x10000), fc.constantFrom(0, 2 ** 32, 2 ** 53 - 1), fc.maxSafeNat());
const u64 = (): fc.Arbitrary<bigint> => fc.oneof(fc.bigInt({ min: 0n, max: 0xffffn }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
const region = () => fc.record({ guestPhysAddr: safe(), size: safe(), userAddr: safe(), mmapOffset: safe() });

/** A payload of each kind, with the fd count the request takes with it. */
const PAYLOADS: Record<string, fc.Arbitrary<{ payload: Payload; fds: number }>> = {
  none: fc.constant({ payload: { kind: 'none' }, fds: 0 }),
  u64: u64().map((value) => ({ payload: { kind: 'u64', value }, fds: 0 })),
  vringState: fc.record({ index: u32(), num: u32() }).map((p) => ({ payload: { kind: 'vringState', ...p }, fds: 0 })),
  vringAddr: fc.record({ index: u32(), flags: u32(), descUserAddr: safe(), usedUserAddr: safe(), availUserAddr: safe(), logGuestAddr: safe() })
    .map((p) => ({ payload: { kind: 'vringAddr', ...p }, fds: 0 })),
  memoryTable: fc.array(region(), { maxLength: 8 }).map((regions) => ({ payload: { kind: 'memoryTable', regions }, fds: regions.length })),
  memoryRegion: region().map((r) => ({ payload: { kind: 'memoryRegion', region: r }, fds: 1 })),
  vringFd: fc.record({ index: fc.nat(255), noFd: fc.boolean() }).map((p) => ({ payload: { kind: 'vringFd', ...p }, fds: p.noFd ? 0 : 1 })),
  config: fc.record({ offset: u32(), flags: u32(), data: fc.uint8Array({ maxLength: 256 }) })
    .map((p) => ({ payload: { kind: 'config', offset: p.offset, size: p.data.length, flags: p.flags, data: p.data }, fds: 0 })),
  inflight: fc.record({ mmapSize: safe(), mmapOffset: safe(), numQueues: fc.nat(0xffff), queueSize: fc.nat(0xffff) })
    .map((p) => ({ payload: { kind: 'inflight', ...p }, fds: 1 })),
  log: fc.record({ mmapSize: safe(), mmapOffset: safe() }).map((p) => ({ payload: { kind: 'log', ...p }, fds: 1 })),
  iotlb: fc.record({ iova: u64(), size: u64(), userAddr: u64(), perm: fc.nat(255), type: fc.nat(255) })
    .map((p) => ({ payload: { kind: 'iotlb', ...p }, fds: 0 })),
  vringArea: fc.record({ index: fc.nat(255), noFd: fc.boolean(), size: safe(), offset: safe() })
    .map((p) => ({ payload: { kind: 'vringArea', ...p }, fds: p.noFd ? 0 : 1 })),
  sharedObject: fc.uint8Array({ minLength: 16, maxLength: 16 }).map((uuid) => ({ payload: { kind: 'sharedObject', uuid }, fds: 0 })),
  deviceState: fc.record({ direction: u32(), phase: u32() }).map((p) => ({ payload: { kind: 'deviceState', ...p }, fds: 1 })),
  raw: fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ payload: { kind: 'raw', bytes }, fds: 0 })),
};

/** Front-end requests with their payload kind (fd counts as the spec and QEMU have them). */
const FRONTEND: Array<[number, string, number?]> = [
  [F.GET_FEATURES, 'none'], [F.SET_FEATURES, 'u64'], [F.SET_OWNER, 'none'], [F.RESET_OWNER, 'none'],
  [F.SET_MEM_TABLE, 'memoryTable'], [F.SET_LOG_BASE, 'log'], [F.SET_LOG_FD, 'none', 1], [F.SET_VRING_NUM, 'vringState'],
  [F.SET_VRING_ADDR, 'vringAddr'], [F.SET_VRING_BASE, 'vringState'], [F.GET_VRING_BASE, 'vringState'],
  [F.SET_VRING_KICK, 'vringFd'], [F.SET_VRING_CALL, 'vringFd'], [F.SET_VRING_ERR, 'vringFd'],
  [F.GET_PROTOCOL_FEATURES, 'none'], [F.SET_PROTOCOL_FEATURES, 'u64'], [F.GET_QUEUE_NUM, 'none'],
  [F.SET_VRING_ENABLE, 'vringState'], [F.SET_BACKEND_REQ_FD, 'none', 1], [F.IOTLB_MSG, 'iotlb'],
  [F.GET_CONFIG, 'config'], [F.SET_CONFIG, 'config'], [F.CREATE_CRYPTO_SESSION, 'raw'], [F.GET_INFLIGHT_FD, 'inflight', 0],
  [F.SET_INFLIGHT_FD, 'inflight'], [F.RESET_DEVICE, 'none'], [F.VRING_KICK, 'vringState'], [F.GET_MAX_MEM_SLOTS, 'none'],
  [F.ADD_MEM_REG, 'memoryRegion'], [F.REM_MEM_REG, 'memoryRegion', 0], [F.SET_STATUS, 'u64'], [F.GET_STATUS, 'none'],
  [F.GET_SHARED_OBJECT, 'sharedObject'], [F.SET_DEVICE_STATE_FD, 'deviceState'], [F.CHECK_DEVICE_STATE, 'none'],
];
const BACKEND: Array<[number, string, number?]> = [
  [B.IOTLB_MSG, 'iotlb'], [B.CONFIG_CHANGE_MSG, 'none'], [B.VRING_HOST_NOTIFIER_MSG, 'vringArea'], [B.VRING_CALL, 'vringState'],
  [B.VRING_ERR, 'vringState'], [B.SHARED_OBJECT_ADD, 'sharedObject'], [B.SHARED_OBJECT_LOOKUP, 'sharedObject'],
];

/** Bytes on the wire and the fds sent with them. */
interface Wire { bytes: Uint8Array; nfds: number }

const validWire = (): fc.Arbitrary<Wire> => fc.oneof(
  // Requests in either direction, with or without NEED_REPLY.
  fc.tuple(fc.constantFrom(...FRONTEND, ...BACKEND), fc.boolean()).chain(([[request, kind, fds], needReply]) =>
    PAYLOADS[kind].map((p) => ({ bytes: encodeMessage(request, needReply ? NEED_REPLY_FLAG : 0, p.payload), nfds: fds ?? p.fds }))),
  // Replies: the REPLY_ACK u64, or the request's own reply payload.
  fc.tuple(fc.constantFrom(...FRONTEND), fc.oneof(PAYLOADS.u64, PAYLOADS.vringState, PAYLOADS.config, PAYLOADS.inflight, PAYLOADS.none))
    .map(([[request], p]) => ({ bytes: encodeMessage(request, REPLY_FLAG, p.payload), nfds: p.fds })),
);

// ---- mutations ----------------------------------------------------------------------------

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'extend'; bytes: Uint8Array }
  | { kind: 'field'; offset: 0 | 4 | 8; value: number }
  | { kind: 'fds'; delta: number };

const mutationArb = (): fc.Arbitrary<Mutation> => fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('extend' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 24 }) }),
  fc.record({
    kind: fc.constant('field' as const), offset: fc.constantFrom<0 | 4 | 8>(0, 4, 8),
    value: fc.oneof(fc.nat(64), fc.constantFrom(0x5, 0x9, 0xd, 0x2, 0x10000, 0xffffffff), fc.nat({ max: 0xffffffff })),
  }),
  fc.record({ kind: fc.constant('fds' as const), delta: fc.integer({ min: -3, max: 40 }) }),
);

function mutate(w: Wire, ms: readonly Mutation[]): Wire {
  let bytes = w.bytes.slice();
  let nfds = w.nfds;
  for (const m of ms) {
    switch (m.kind) {
      case 'flip':
        if (bytes.length > 0) bytes[m.at % bytes.length] ^= 1 << m.bit;
        break;
      case 'truncate':
        bytes = bytes.slice(0, m.at % (bytes.length + 1));
        break;
      case 'extend': {
        const b = new Uint8Array(bytes.length + m.bytes.length);
        b.set(bytes);
        b.set(m.bytes, bytes.length);
        bytes = b;
        break;
      }
      case 'field':
        if (bytes.length >= HEADER_SIZE) new DataView(bytes.buffer).setUint32(m.offset, m.value, true);
        break;
      case 'fds':
        nfds = Math.max(0, nfds + m.delta);
        break;
    }
  }
  return { bytes, nfds };
}

/** Any bytes at all, or a valid message damaged a little. */
const wireArb = (): fc.Arbitrary<{ wire: Wire; damaged: boolean }> => fc.oneof(
  { weight: 2, arbitrary: validWire().map((wire) => ({ wire, damaged: false })) },
  { weight: 5, arbitrary: fc.tuple(validWire(), fc.array(mutationArb(), { minLength: 1, maxLength: 4 })).map(([w, ms]) => ({ wire: mutate(w, ms), damaged: true })) },
  { weight: 1, arbitrary: fc.record({ bytes: fc.uint8Array({ maxLength: 80 }), nfds: fc.nat(4) }).map((wire) => ({ wire, damaged: true })) },
);

// ---- fd accounting ------------------------------------------------------------------------

let nextFd = 1000;
/** Distinct fd numbers (never opened: the codec only passes numbers along). */
const freshFds = (n: number): number[] => Array.from({ length: n }, () => nextFd++);

function sameFds(given: readonly number[], back: readonly number[], what: string): void {
  const a = [...given].sort((x, y) => x - y);
  const b = [...back].sort((x, y) => x - y);
  if (a.length !== b.length || a.some((x, i) => x !== b[i])) {
    throw new Error(`${what}: given fds [${a}] but got back [${b}]`);
  }
}

/** The raw message a transport would hand up for these bytes (header fields as read, the rest as body). */
function rawOf(w: Wire, fds: number[]): RawMessage {
  const v = new DataView(w.bytes.buffer, w.bytes.byteOffset, w.bytes.byteLength);
  const field = (o: number): number => (w.bytes.length >= o + 4 ? v.getUint32(o, true) : 0);
  const body = w.bytes.subarray(Math.min(HEADER_SIZE, w.bytes.length));
  return { request: field(0), flags: field(4), size: field(8), body, fds };
}

type Decoded = Message | ProtocolError;

function checkDecoded(r: unknown, raw: RawMessage, what: string): r is Decoded {
  if (r instanceof ProtocolError) {
    sameFds(raw.fds, r.fds, `${what} error ${r.kind}`);
    return true;
  }
  const m = r as Message;
  if (typeof m !== 'object' || m === null || typeof m.payload !== 'object') throw new Error(`${what} returned ${String(r)}`);
  sameFds(raw.fds, m.fds, `${what} message`);
  if (m.request !== raw.request || m.flags !== raw.flags) throw new Error(`${what}: header fields changed`);
  return true;
}

/** Re-encode a decoded message: the encoder must take it, and decoding again gives the same. */
function checkReencodes(m: Message, decode: (raw: RawMessage) => Decoded, what: string): void {
  const bytes = encodeMessage(m.request, m.flags & (REPLY_FLAG | NEED_REPLY_FLAG), m.payload);
  const again = decode(rawOf({ bytes, nfds: 0 }, m.fds));
  if (again instanceof ProtocolError) throw new Error(`${what}: re-encoded message fails: ${again.message}`);
  if (!deepEqual(again.payload, m.payload)) throw new Error(`${what}: payload changed on re-encoding`);
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) return a.length === b.length && a.every((x, i) => x === b[i]);
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return a === b;
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

// ---- properties ---------------------------------------------------------------------------

const AWAITED = [...FRONTEND.map(([r]) => r), ...BACKEND.map(([r]) => r), 0, 99, 0xffffffff];

/** Every decoder, on any raw message: no throw, a Message or a ProtocolError, every fd back once. */
export const decodersProperty = (): fc.IPropertyWithHooks<[{ wire: Wire; damaged: boolean }, number, boolean]> =>
  fc.property(wireArb(), fc.constantFrom(...AWAITED), fc.boolean(), ({ wire }, awaitedOther, sameRequest) => {
    const raw = rawOf(wire, freshFds(wire.nfds));
    const awaited = sameRequest ? raw.request : awaitedOther;
    const decoders: Array<[string, (r: RawMessage) => Decoded]> = [
      ['decodeFrontendMessage', decodeFrontendMessage],
      ['decodeBackendMessage', decodeBackendMessage],
      ['decodeReply', (r) => decodeReply(awaited, r)],
      ['decodeBackendReply', (r) => decodeBackendReply(awaited, r)],
    ];
    for (const [name, decode] of decoders) {
      const r = decode(raw);
      checkDecoded(r, raw, name);
      if (!(r instanceof ProtocolError)) checkReencodes(r, decode, name);
    }
    const ack = decodeBackendAck(awaited, raw);
    if (ack instanceof ProtocolError) sameFds(raw.fds, ack.fds, 'decodeBackendAck error');
    else if (typeof ack !== 'bigint') throw new Error(`decodeBackendAck returned ${String(ack)}`);
    // A verdict without the message: any fd that came with it would be lost.
    else if (raw.fds.length > 0) throw new Error(`decodeBackendAck accepted a reply with ${raw.fds.length} fds`);
  });

interface StreamCase {
  msgs: Array<{ wire: Wire; damaged: boolean }>;
  /** Extra read boundaries (positions in the stream, taken modulo its length). */
  cuts: number[];
  /** Fds that arrive with a read in the middle of the stream. */
  strays: Array<{ at: number; n: number }>;
  maxPayloadSize: number;
  maxFds: number;
}

const streamArb = (): fc.Arbitrary<StreamCase> => fc.record({
  msgs: fc.array(fc.oneof({ weight: 3, arbitrary: validWire().map((wire) => ({ wire, damaged: false })) }, { weight: 1, arbitrary: wireArb() }), { minLength: 1, maxLength: 6 }),
  cuts: fc.array(fc.nat(), { maxLength: 8 }),
  strays: fc.oneof({ weight: 3, arbitrary: fc.constant<StreamCase['strays']>([]) }, { weight: 1, arbitrary: fc.array(fc.record({ at: fc.nat(), n: fc.integer({ min: 1, max: 3 }) }), { maxLength: 2 }) }),
  maxPayloadSize: fc.oneof({ weight: 4, arbitrary: fc.constant(4096) }, { weight: 1, arbitrary: fc.nat(300) }),
  maxFds: fc.oneof({ weight: 4, arbitrary: fc.constant(32) }, { weight: 1, arbitrary: fc.nat(8) }),
});

/**
 * The framing over a byte stream read in arbitrary pieces, as the transport
 * does it: each read takes min(needed, rest of the kernel's segment), and fds
 * come with the read that starts where they were sent. Stops at the first error,
 * as the transport closes then; disposes the reader at the end.
 */
export const framingProperty = (): fc.IPropertyWithHooks<[StreamCase]> => fc.property(streamArb(), (c) => {
  const total = c.msgs.reduce((n, m) => n + m.wire.bytes.length, 0);
  const stream = new Uint8Array(total);
  const fdsAt = new Map<number, number[]>();
  const attach = (at: number, fds: number[]): void => { fdsAt.set(at, [...(fdsAt.get(at) ?? []), ...fds]); };
  const starts: number[] = [];
  let pos = 0;
  for (const m of c.msgs) {
    starts.push(pos);
    stream.set(m.wire.bytes, pos);
    attach(pos, freshFds(m.wire.nfds));
    pos += m.wire.bytes.length;
  }
  if (total > 0) for (const s of c.strays) attach(s.at % total, freshFds(s.n));
  // Reads end at segment boundaries: the chosen cuts, and wherever fds were sent.
  const bounds = [...new Set([...c.cuts.map((x) => (total > 0 ? x % total : 0)), ...fdsAt.keys(), total])].filter((x) => x > 0).sort((a, b) => a - b);

  const reader = new MessageReader({ maxPayloadSize: c.maxPayloadSize, maxFds: c.maxFds });
  const back: number[] = [];
  const messages: RawMessage[] = [];
  const scratch = new Uint8Array(total);
  let failed = false;
  pos = 0;
  for (const end of bounds) {
    while (pos < end && !failed) {
      const n = Math.min(reader.needed, end - pos);
      if (n <= 0) throw new Error(`reader asked for ${reader.needed} bytes mid-stream without failing`);
      scratch.set(stream.subarray(pos, pos + n));
      const fds = fdsAt.get(pos) ?? [];
      const r = reader.feed(scratch.subarray(0, n), fds);
      scratch.fill(0xee); // the reader must have copied what it keeps
      pos += n;
      if (r.type === 'message') {
        back.push(...r.raw.fds);
        messages.push(r.raw);
        const d = decodeFrontendMessage(r.raw);
        checkDecoded(d, r.raw, 'decodeFrontendMessage after framing');
      } else if (r.type === 'error') {
        if (!(r.error instanceof ProtocolError)) throw new Error('framing error is not a ProtocolError');
        back.push(...r.error.fds);
        failed = true;
        if (reader.needed !== 0) throw new Error('reader still asks for input after an error');
      } else if (r.type !== 'more') {
        throw new Error(`feed returned ${JSON.stringify(r)}`);
      }
    }
    if (failed) break;
  }
  back.push(...reader.dispose());
  // Fds sent after the bytes the reader took (after it stopped, or with no bytes
  // after them at the end) never reached it; the transport closes those itself.
  const fed = [...fdsAt].filter(([at]) => at < pos).flatMap(([, fds]) => fds);
  sameFds(fed, back, 'MessageReader');

  // Messages before the first damaged one (and before stray fds) come through intact.
  const firstStray = c.strays.length > 0 && total > 0 ? Math.min(...c.strays.map((s) => s.at % total)) : Infinity;
  for (let i = 0; i < c.msgs.length; i++) {
    const m = c.msgs[i];
    const end = starts[i] + m.wire.bytes.length;
    if (m.damaged || end > firstStray || m.wire.bytes.length - HEADER_SIZE > c.maxPayloadSize || m.wire.nfds > c.maxFds) break;
    const got = messages[i];
    if (got === undefined) throw new Error(`intact message ${i} was not delivered`);
    const want = rawOf(m.wire, []);
    if (got.request !== want.request || got.flags !== want.flags || !deepEqual(got.body, want.body) || got.fds.length !== m.wire.nfds) {
      throw new Error(`intact message ${i} came through changed`);
    }
  }
});
