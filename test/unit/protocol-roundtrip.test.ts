import { strict as assert } from 'node:assert';
import {
  BackendRequest as B,
  FrontendRequest as F,
  HEADER_SIZE,
  MessageReader,
  NEED_REPLY_FLAG,
  ProtocolError,
  ProtocolFeature,
  REPLY_FLAG,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_VERSION_1,
  backendRequestName,
  bit,
  decodeBackendMessage,
  decodeBackendReply,
  decodeFrontendMessage,
  decodeHeader,
  decodeReply,
  encodeHeader,
  encodeMessage,
  frontendRequestName,
  hasBit,
  type Message,
  type Payload,
  type RawMessage,
} from '../../protocol';

type Decode = (raw: RawMessage) => Message | ProtocolError;

interface Case {
  name: string;
  request: number;
  flags: number;
  payload: Payload;
  fds: number[];
  decode: Decode;
}

const MAX = Number.MAX_SAFE_INTEGER;
const U64_MAX = 0xffff_ffff_ffff_ffffn;
const region = { guestPhysAddr: MAX, size: 0x4000_0000, userAddr: 0x7fff_ffff_f000, mmapOffset: 0 };
const front: Decode = decodeFrontendMessage;
const reply = (request: number): Decode => (raw) => decodeReply(request, raw);

/** Every payload kind, each through a request that carries it. */
const CASES: Case[] = [
  { name: 'none', request: F.GET_FEATURES, flags: 0, payload: { kind: 'none' }, fds: [], decode: front },
  { name: 'u64', request: F.SET_FEATURES, flags: 0, payload: { kind: 'u64', value: U64_MAX }, fds: [], decode: front },
  {
    name: 'vringState',
    request: F.SET_VRING_BASE,
    flags: NEED_REPLY_FLAG,
    payload: { kind: 'vringState', index: 0xffff_ffff, num: 0x8000_8000 },
    fds: [],
    decode: front,
  },
  {
    name: 'vringAddr',
    request: F.SET_VRING_ADDR,
    flags: 0,
    payload: {
      kind: 'vringAddr',
      index: 3,
      flags: 1,
      descUserAddr: MAX,
      usedUserAddr: 0x7f00_0000_1000,
      availUserAddr: 1,
      logGuestAddr: 0x1234_5678_9abc,
    },
    fds: [],
    decode: front,
  },
  {
    name: 'memoryTable (8 regions)',
    request: F.SET_MEM_TABLE,
    flags: NEED_REPLY_FLAG,
    payload: {
      kind: 'memoryTable',
      regions: Array.from({ length: 8 }, (_, i) => ({ ...region, guestPhysAddr: i * 0x4000_0000, mmapOffset: i })),
    },
    fds: [10, 11, 12, 13, 14, 15, 16, 17],
    decode: front,
  },
  {
    name: 'memoryTable (empty)',
    request: F.SET_MEM_TABLE,
    flags: 0,
    payload: { kind: 'memoryTable', regions: [] },
    fds: [],
    decode: front,
  },
  { name: 'memoryRegion', request: F.ADD_MEM_REG, flags: 0, payload: { kind: 'memoryRegion', region }, fds: [20], decode: front },
  {
    name: 'vringFd with fd',
    request: F.SET_VRING_ERR,
    flags: 0,
    payload: { kind: 'vringFd', index: 255, noFd: false },
    fds: [21],
    decode: front,
  },
  {
    name: 'vringFd without fd',
    request: F.SET_VRING_KICK,
    flags: 0,
    payload: { kind: 'vringFd', index: 7, noFd: true },
    fds: [],
    decode: front,
  },
  {
    name: 'config (256 bytes)',
    request: F.SET_CONFIG,
    flags: 0,
    payload: { kind: 'config', offset: 4, size: 256, flags: 1, data: Uint8Array.from({ length: 256 }, (_, i) => i) },
    fds: [],
    decode: front,
  },
  {
    name: 'inflight',
    request: F.SET_INFLIGHT_FD,
    flags: 0,
    payload: { kind: 'inflight', mmapSize: MAX, mmapOffset: 4096, numQueues: 0xffff, queueSize: 1024 },
    fds: [22],
    decode: front,
  },
  {
    name: 'log',
    request: F.SET_LOG_BASE,
    flags: 0,
    payload: { kind: 'log', mmapSize: 0x8000, mmapOffset: MAX },
    fds: [23],
    decode: front,
  },
  {
    name: 'iotlb',
    request: F.IOTLB_MSG,
    flags: NEED_REPLY_FLAG,
    payload: { kind: 'iotlb', iova: U64_MAX, size: 1n << 63n, userAddr: 0x7f00_0000_0000n, perm: 3, type: 2 },
    fds: [],
    decode: front,
  },
  {
    name: 'sharedObject',
    request: F.GET_SHARED_OBJECT,
    flags: 0,
    payload: { kind: 'sharedObject', uuid: Uint8Array.from({ length: 16 }, (_, i) => 0xf0 | i) },
    fds: [],
    decode: front,
  },
  {
    name: 'deviceState',
    request: F.SET_DEVICE_STATE_FD,
    flags: 0,
    payload: { kind: 'deviceState', direction: 0, phase: 0 },
    fds: [24],
    decode: front,
  },
  {
    name: 'raw',
    request: F.CREATE_CRYPTO_SESSION,
    flags: 0,
    payload: { kind: 'raw', bytes: Uint8Array.from([1, 2, 3, 4, 5]) },
    fds: [],
    decode: front,
  },
  {
    name: 'vringArea',
    request: B.VRING_HOST_NOTIFIER_MSG,
    flags: NEED_REPLY_FLAG,
    payload: { kind: 'vringArea', index: 4, noFd: false, size: 4096, offset: MAX },
    fds: [25],
    decode: decodeBackendMessage,
  },
  {
    name: 'vringState reply',
    request: F.GET_VRING_BASE,
    flags: REPLY_FLAG,
    payload: { kind: 'vringState', index: 1, num: 0xffff_ffff },
    fds: [],
    decode: reply(F.GET_VRING_BASE),
  },
  {
    name: 'inflight reply',
    request: F.GET_INFLIGHT_FD,
    flags: REPLY_FLAG,
    payload: { kind: 'inflight', mmapSize: 8448, mmapOffset: 0, numQueues: 4, queueSize: 128 },
    fds: [26],
    decode: reply(F.GET_INFLIGHT_FD),
  },
  {
    name: 'REPLY_ACK on the back-end channel',
    request: B.IOTLB_MSG,
    flags: REPLY_FLAG,
    payload: { kind: 'u64', value: 0n },
    fds: [],
    decode: (raw) => decodeBackendReply(B.IOTLB_MSG, raw),
  },
];

function split(bytes: Uint8Array, fds: number[]): RawMessage {
  const header = decodeHeader(bytes);
  if (header instanceof ProtocolError) assert.fail(header.message);
  return { ...header, body: bytes.slice(HEADER_SIZE), fds };
}

describe('protocol: encode/decode round trips', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const bytes = encodeMessage(c.request, c.flags, c.payload);
      const raw = split(bytes, c.fds);
      assert.equal(raw.size, bytes.length - HEADER_SIZE);
      assert.equal(raw.flags, c.flags | 1);
      const decoded = c.decode(raw);
      if (decoded instanceof ProtocolError) assert.fail(`${decoded.kind}: ${decoded.message}`);
      assert.deepEqual(decoded, { request: c.request, flags: c.flags | 1, payload: c.payload, fds: c.fds });
    });
  }

  it('covers every payload kind', () => {
    const kinds = new Set(CASES.map((c) => c.payload.kind));
    const all: Payload['kind'][] = [
      'none', 'u64', 'vringState', 'vringAddr', 'memoryTable', 'memoryRegion', 'vringFd', 'config',
      'inflight', 'log', 'iotlb', 'vringArea', 'sharedObject', 'deviceState', 'raw',
    ];
    assert.deepEqual([...kinds].sort(), [...all].sort());
  });

  it('round trips through the MessageReader as one stream', () => {
    const reader = new MessageReader();
    for (const c of CASES) {
      const bytes = encodeMessage(c.request, c.flags, c.payload);
      let result = reader.feed(bytes.subarray(0, HEADER_SIZE), c.fds);
      if (result.type === 'more') result = reader.feed(bytes.subarray(HEADER_SIZE));
      assert.equal(result.type, 'message', c.name);
      if (result.type !== 'message') return;
      const decoded = c.decode(result.raw);
      assert.ok(!(decoded instanceof ProtocolError), c.name);
      assert.deepEqual((decoded as Message).payload, c.payload, c.name);
    }
  });
});

describe('protocol: encoder', () => {
  it('always sets version 1 and keeps REPLY / NEED_REPLY', () => {
    const flagsOf = (flags: number) => new DataView(encodeMessage(F.GET_FEATURES, flags, { kind: 'none' }).buffer).getUint32(4, true);
    assert.equal(flagsOf(0), 0x1);
    assert.equal(flagsOf(REPLY_FLAG), 0x5);
    assert.equal(flagsOf(NEED_REPLY_FLAG), 0x9);
    assert.equal(flagsOf(0x3), 0x1);
    assert.deepEqual(encodeHeader(F.SET_FEATURES, 0, 8), Uint8Array.from([2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]));
  });

  it('writes QEMU-identical bytes for SET_VRING_CALL without an fd', () => {
    const bytes = encodeMessage(F.SET_VRING_CALL, 0, { kind: 'vringFd', index: 1, noFd: true });
    assert.deepEqual(bytes, Uint8Array.from([13, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]));
  });

  it('throws on impossible payloads and flags', () => {
    const cases: [string, () => unknown][] = [
      ['reserved flag', () => encodeMessage(1, 0x10, { kind: 'none' })],
      ['request not u32', () => encodeMessage(-1, 0, { kind: 'none' })],
      ['9 regions', () => encodeMessage(F.SET_MEM_TABLE, 0, { kind: 'memoryTable', regions: Array(9).fill(region) })],
      ['address >= 2^53', () => encodeMessage(F.ADD_MEM_REG, 0, { kind: 'memoryRegion', region: { ...region, size: 2 ** 53 } })],
      ['negative address', () => encodeMessage(F.SET_LOG_BASE, 0, { kind: 'log', mmapSize: -1, mmapOffset: 0 })],
      ['fractional address', () => encodeMessage(F.SET_LOG_BASE, 0, { kind: 'log', mmapSize: 1.5, mmapOffset: 0 })],
      ['config > 256', () => encodeMessage(F.SET_CONFIG, 0, { kind: 'config', offset: 0, size: 257, flags: 0, data: new Uint8Array(257) })],
      ['config size mismatch', () => encodeMessage(F.SET_CONFIG, 0, { kind: 'config', offset: 0, size: 4, flags: 0, data: new Uint8Array(3) })],
      ['vring index 256', () => encodeMessage(F.SET_VRING_KICK, 0, { kind: 'vringFd', index: 256, noFd: false })],
      ['u64 overflow', () => encodeMessage(F.SET_FEATURES, 0, { kind: 'u64', value: 1n << 64n })],
      ['negative u64', () => encodeMessage(F.SET_FEATURES, 0, { kind: 'u64', value: -1n })],
      ['queue size > u16', () => encodeMessage(F.SET_INFLIGHT_FD, 0, { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 65536 })],
      ['uuid length', () => encodeMessage(F.GET_SHARED_OBJECT, 0, { kind: 'sharedObject', uuid: new Uint8Array(15) })],
      ['unknown kind', () => encodeMessage(1, 0, { kind: 'bogus' } as unknown as Payload)],
    ];
    for (const [name, fn] of cases) assert.throws(fn, Error, name);
  });
});

describe('protocol: names and feature bits', () => {
  it('names front-end and back-end requests', () => {
    assert.equal(frontendRequestName(1), 'GET_FEATURES');
    assert.equal(frontendRequestName(21), 'SET_BACKEND_REQ_FD');
    assert.equal(frontendRequestName(43), 'CHECK_DEVICE_STATE');
    assert.equal(frontendRequestName(0), 'UNKNOWN(0)');
    assert.equal(frontendRequestName(44), 'UNKNOWN(44)');
    assert.equal(backendRequestName(1), 'IOTLB_MSG');
    assert.equal(backendRequestName(8), 'SHARED_OBJECT_LOOKUP');
    assert.equal(backendRequestName(9), 'UNKNOWN(9)');
  });

  it('numbers requests contiguously as the spec does', () => {
    const codes: number[] = Object.values(F);
    assert.deepEqual([...codes].sort((a, b) => a - b), Array.from({ length: 43 }, (_, i) => i + 1));
    assert.deepEqual([...Object.values(B)].sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('builds feature masks', () => {
    assert.equal(bit(VIRTIO_F_VERSION_1), 0x1_0000_0000n);
    assert.equal(bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VIRTIO_F_VERSION_1), 0x1_4000_0000n);
    assert.ok(hasBit(0x1_5000_7646n, VHOST_USER_F_PROTOCOL_FEATURES));
    assert.ok(!hasBit(0x1_5000_7646n, 33));
    assert.equal(bit(ProtocolFeature.DEVICE_STATE), 0x80000n);
    assert.equal(Object.keys(ProtocolFeature).length, 20);
    assert.throws(() => bit(64), RangeError);
    assert.throws(() => bit(-1), RangeError);
  });
});
