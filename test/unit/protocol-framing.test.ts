import { strict as assert } from 'node:assert';
import {
  FrontendRequest as F,
  HEADER_SIZE,
  MessageReader,
  NEED_REPLY_FLAG,
  decodeFrontendMessage,
  encodeHeader,
  encodeMessage,
  type FeedResult,
  type RawMessage,
} from '../../protocol';

interface Wire {
  bytes: Uint8Array;
  fds: number[];
}

const MESSAGES: Wire[] = [
  { bytes: encodeMessage(F.GET_FEATURES, 0, { kind: 'none' }), fds: [] },
  {
    bytes: encodeMessage(F.SET_MEM_TABLE, NEED_REPLY_FLAG, {
      kind: 'memoryTable',
      regions: [
        { guestPhysAddr: 0, size: 0xa0000, userAddr: 0x7f3b_4000_0000, mmapOffset: 0 },
        { guestPhysAddr: 0xc0000, size: 0x3ff4_0000, userAddr: 0x7f3b_400c_0000, mmapOffset: 0xc0000 },
      ],
    }),
    fds: [40, 41],
  },
  { bytes: encodeMessage(F.SET_VRING_CALL, 0, { kind: 'vringFd', index: 0, noFd: true }), fds: [] },
  { bytes: encodeMessage(F.SET_VRING_KICK, 0, { kind: 'vringFd', index: 0, noFd: false }), fds: [42] },
];

const STREAM = concat(MESSAGES.map((m) => m.bytes));
const STARTS = MESSAGES.map((_, i) => MESSAGES.slice(0, i).reduce((n, m) => n + m.bytes.length, 0));

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Emulates a transport: the kernel hands data over in segments ending at
 * `cuts`; each read takes min(needed, rest of segment) into one reused
 * scratch buffer, and a message's fds come with the read that starts it.
 */
function transport(reader: MessageReader, cuts: readonly number[]): FeedResult[] {
  const results: FeedResult[] = [];
  const scratch = new Uint8Array(STREAM.length);
  const ends = [...cuts, STREAM.length];
  let pos = 0;
  for (const end of ends) {
    while (pos < end) {
      const n = Math.min(reader.needed, end - pos);
      assert.ok(n > 0, 'reader asked for nothing mid-stream');
      scratch.set(STREAM.subarray(pos, pos + n));
      const msgIndex = STARTS.indexOf(pos);
      const fds = msgIndex >= 0 ? MESSAGES[msgIndex]!.fds : [];
      const result = reader.feed(scratch.subarray(0, n), fds);
      scratch.fill(0xee); // the reader must have copied what it keeps
      pos += n;
      if (result.type !== 'more') results.push(result);
    }
  }
  return results;
}

function expectAllMessages(results: FeedResult[]): void {
  assert.equal(results.length, MESSAGES.length);
  results.forEach((result, i) => {
    assert.equal(result.type, 'message', `result ${i}`);
    if (result.type !== 'message') return;
    const wire = MESSAGES[i]!;
    const view = new DataView(wire.bytes.buffer);
    assert.equal(result.raw.request, view.getUint32(0, true));
    assert.equal(result.raw.flags, view.getUint32(4, true));
    assert.equal(result.raw.size, wire.bytes.length - HEADER_SIZE);
    assert.deepEqual(result.raw.body, wire.bytes.subarray(HEADER_SIZE));
    assert.deepEqual(result.raw.fds, wire.fds);
    assert.ok(!(decodeFrontendMessage(result.raw) instanceof Error), `message ${i} decodes`);
  });
}

function expectError(result: FeedResult, kind: string, fds: number[]): void {
  assert.equal(result.type, 'error');
  if (result.type !== 'error') return;
  assert.equal(result.error.kind, kind, result.error.message);
  assert.deepEqual(result.error.fds, fds);
}

function header(request: number, flags: number, size: number): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, request, true);
  view.setUint32(4, flags, true);
  view.setUint32(8, size, true);
  return bytes;
}

describe('protocol: MessageReader framing', () => {
  it('reads messages back to back in one segment', () => {
    const reader = new MessageReader();
    expectAllMessages(transport(reader, []));
    assert.equal(reader.needed, HEADER_SIZE);
    assert.ok(reader.idle);
  });

  it('reads the stream split at every possible byte boundary', () => {
    for (let cut = 1; cut < STREAM.length; cut++) {
      expectAllMessages(transport(new MessageReader(), [cut]));
    }
  });

  it('reads the stream split at every pair of boundaries inside the first two messages', () => {
    const limit = STARTS[2]!;
    for (let a = 1; a < limit; a++) {
      for (let b = a + 1; b < limit; b++) expectAllMessages(transport(new MessageReader(), [a, b]));
    }
  });

  it('reads the stream one byte at a time', () => {
    const cuts = Array.from({ length: STREAM.length - 1 }, (_, i) => i + 1);
    expectAllMessages(transport(new MessageReader(), cuts));
  });

  it('asks for the remaining header, then exactly the body', () => {
    const reader = new MessageReader();
    const msg = MESSAGES[1]!.bytes;
    assert.equal(reader.needed, 12);
    assert.equal(reader.feed(msg.subarray(0, 5), [40, 41]).type, 'more');
    assert.equal(reader.needed, 7);
    assert.ok(!reader.idle);
    assert.equal(reader.feed(msg.subarray(5, 12)).type, 'more');
    assert.equal(reader.needed, msg.length - 12);
    assert.equal(reader.feed(msg.subarray(12, 20)).type, 'more');
    assert.equal(reader.needed, msg.length - 20);
    const done = reader.feed(msg.subarray(20));
    assert.equal(done.type, 'message');
    assert.deepEqual(done.type === 'message' && done.raw.fds, [40, 41]);
    assert.equal(reader.needed, 12);
  });

  it('collects fds that arrive with any part of the header', () => {
    const reader = new MessageReader();
    const msg = MESSAGES[1]!.bytes;
    reader.feed(msg.subarray(0, 4), [40]);
    reader.feed(msg.subarray(4, 12), [41]);
    const done = reader.feed(msg.subarray(12));
    assert.deepEqual(done.type === 'message' && done.raw.fds, [40, 41]);
  });

  it('completes an empty-payload message on its header', () => {
    const reader = new MessageReader();
    const result = reader.feed(encodeHeader(F.SET_OWNER, 0, 0));
    assert.equal(result.type, 'message');
    assert.deepEqual(result.type === 'message' && result.raw.body, new Uint8Array(0));
  });

  it('rejects fds arriving with body bytes, returning every fd of the message', () => {
    const reader = new MessageReader();
    const msg = MESSAGES[1]!.bytes;
    assert.equal(reader.feed(msg.subarray(0, 12), [40]).type, 'more');
    expectError(reader.feed(msg.subarray(12, 20), [41, 42]), 'fds-mid-message', [40, 41, 42]);
    assert.equal(reader.needed, 0);
  });

  it('refuses all input after an error and hands back new fds', () => {
    const reader = new MessageReader();
    expectError(reader.feed(header(1, 0, 0), [3]), 'bad-version', [3]);
    assert.equal(reader.needed, 0);
    assert.ok(!reader.idle);
    expectError(reader.feed(new Uint8Array(0), [4, 5]), 'reader-closed', [4, 5]);
    expectError(reader.feed(new Uint8Array(0)), 'reader-closed', []);
  });

  it('rejects an oversized size field right after the header, without buffering', () => {
    const reader = new MessageReader();
    const result = reader.feed(header(F.SET_MEM_TABLE, 1, 0xffff_ffff), [7]);
    expectError(result, 'payload-too-large', [7]);
    assert.equal(result.type === 'error' && result.error.request, F.SET_MEM_TABLE);
    assert.equal(reader.needed, 0);
  });

  it('honours maxPayloadSize exactly', () => {
    const atLimit = new MessageReader({ maxPayloadSize: 16 });
    assert.equal(atLimit.feed(header(F.SET_LOG_BASE, 1, 16)).type, 'more');
    assert.equal(atLimit.needed, 16);
    const over = new MessageReader({ maxPayloadSize: 16 });
    expectError(over.feed(header(F.SET_LOG_BASE, 1, 17)), 'payload-too-large', []);
  });

  it('rejects bad versions and reserved flag bits in the header', () => {
    expectError(new MessageReader().feed(header(1, 0x2, 0), [1]), 'bad-version', [1]);
    expectError(new MessageReader().feed(header(1, 0x3, 0)), 'bad-version', []);
    expectError(new MessageReader().feed(header(1, 0x11, 0)), 'reserved-flags', []);
    expectError(new MessageReader().feed(header(1, 0x8000_0001, 0)), 'reserved-flags', []);
  });

  it('leaves request-level checks to the decoders', () => {
    const result = new MessageReader().feed(header(999, 1, 0), [2]);
    assert.equal(result.type, 'message');
    if (result.type !== 'message') return;
    const decoded = decodeFrontendMessage(result.raw);
    assert.ok(decoded instanceof Error && decoded.kind === 'unknown-request');
    assert.deepEqual(decoded.fds, [2]);
  });

  it('limits fds per message', () => {
    const reader = new MessageReader({ maxFds: 2 });
    assert.equal(reader.feed(MESSAGES[1]!.bytes.subarray(0, 4), [1, 2]).type, 'more');
    expectError(reader.feed(MESSAGES[1]!.bytes.subarray(4, 12), [3]), 'too-many-fds', [1, 2, 3]);
  });

  it('throws when fed more than it asked for (a transport bug)', () => {
    const reader = new MessageReader();
    assert.throws(() => reader.feed(STREAM.subarray(0, 13)), RangeError);
    assert.throws(() => new MessageReader({ maxFds: -1 }), RangeError);
  });

  it('keeps message bodies independent of each other', () => {
    const reader = new MessageReader();
    const results = transport(reader, []);
    const bodies = results.map((r) => (r.type === 'message' ? r.raw : undefined)).filter((r): r is RawMessage => !!r);
    bodies[1]!.body.fill(0);
    assert.deepEqual(bodies[3]!.body, MESSAGES[3]!.bytes.subarray(HEADER_SIZE));
  });
});
