// Byte-level fixtures laid out the way QEMU 7.2's hw/virtio/vhost-user.c
// builds them (x86-64, little endian), decoded by the back-end side.
import { strict as assert } from 'node:assert';
import {
  FrontendRequest as F,
  ProtocolError,
  decodeFrontendMessage,
  decodeReply,
  decodeBackendMessage,
  decodeBackendReply,
  decodeBackendAck,
  encodeBackendRequest,
  encodeReplyAck,
  encodeMessage,
  REPLY_FLAG,
  BackendRequest as B,
  ProtocolFeature,
  MessageReader,
  bit,
  type Message,
  type RawMessage,
} from '../../protocol';

function hex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, '');
  if (clean.length % 2 !== 0) throw new Error(`odd hex: ${text}`);
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => parseInt(b, 16));
}

function u32le(n: number): string {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, n, true);
  return Buffer.from(bytes).toString('hex');
}

/** Splits wire bytes the way the framing layer would, without validating. */
function toRaw(bytes: Uint8Array, fds: number[] = []): RawMessage {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    request: view.getUint32(0, true),
    flags: view.getUint32(4, true),
    size: view.getUint32(8, true),
    body: bytes.slice(12),
    fds,
  };
}

function ok(result: Message | ProtocolError): Message {
  if (result instanceof ProtocolError) assert.fail(`unexpected ${result.kind}: ${result.message}`);
  return result;
}

function err(result: Message | ProtocolError, kind: ProtocolError['kind'], fds: number[] = []): ProtocolError {
  if (!(result instanceof ProtocolError)) assert.fail(`expected ${kind}, got a ${result.payload.kind} message`);
  assert.equal(result.kind, kind, result.message);
  assert.deepEqual(result.fds, fds);
  return result;
}

const front = (bytes: string, fds: number[] = []) => decodeFrontendMessage(toRaw(hex(bytes), fds));

// QEMU's pc machine with 1 GiB of memfd-backed RAM: two vhost regions from
// the same RAMBlock, split around the VGA hole.
const MEM_TABLE_2 = `05000000 09000000 48000000
  02000000 00000000
  0000000000000000 00000a0000000000 000000403b7f0000 0000000000000000
  00000c0000000000 0000f43f00000000 00000c403b7f0000 00000c0000000000`;

const REGION_4G = `0000000001000000 0000004000000000 000000803b7f0000 0000008000000000`;

describe('protocol: front-end requests as QEMU 7.2 sends them', () => {
  it('GET_FEATURES with an empty payload', () => {
    const m = ok(front('01000000 01000000 00000000'));
    assert.equal(m.request, F.GET_FEATURES);
    assert.equal(m.flags, 1);
    assert.deepEqual(m.payload, { kind: 'none' });
    assert.deepEqual(m.fds, []);
  });

  it('SET_FEATURES with a u64 feature word', () => {
    const m = ok(front('02000000 01000000 08000000 46760050 01000000'));
    assert.deepEqual(m.payload, { kind: 'u64', value: 0x0000_0001_5000_7646n });
  });

  it('SET_OWNER, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS: empty', () => {
    for (const request of ['03', '0f', '11', '24']) {
      const m = ok(front(`${request}000000 01000000 00000000`));
      assert.deepEqual(m.payload, { kind: 'none' });
    }
  });

  it('SET_PROTOCOL_FEATURES', () => {
    const m = ok(front('10000000 01000000 08000000 0b9a0000 00000000'));
    assert.deepEqual(m.payload, { kind: 'u64', value: 0x9a0bn });
  });

  it('SET_MEM_TABLE with 2 regions and 2 fds, NEED_REPLY set', () => {
    const m = ok(front(MEM_TABLE_2, [40, 41]));
    assert.equal(m.flags, 0x9);
    assert.deepEqual(m.fds, [40, 41]);
    assert.deepEqual(m.payload, {
      kind: 'memoryTable',
      regions: [
        { guestPhysAddr: 0, size: 0xa0000, userAddr: 0x7f3b_4000_0000, mmapOffset: 0 },
        { guestPhysAddr: 0xc0000, size: 0x3ff4_0000, userAddr: 0x7f3b_400c_0000, mmapOffset: 0xc0000 },
      ],
    });
  });

  it('ADD_MEM_REG: u64 padding, one region, one fd', () => {
    const m = ok(front(`25000000 09000000 28000000 0000000000000000 ${REGION_4G}`, [50]));
    assert.deepEqual(m.payload, {
      kind: 'memoryRegion',
      region: { guestPhysAddr: 0x1_0000_0000, size: 0x4000_0000, userAddr: 0x7f3b_8000_0000, mmapOffset: 0x8000_0000 },
    });
    assert.deepEqual(m.fds, [50]);
  });

  it('REM_MEM_REG with the fd QEMU 7.2 still sends, and without it', () => {
    const bytes = `26000000 09000000 28000000 0000000000000000 ${REGION_4G}`;
    assert.deepEqual(ok(front(bytes, [51])).fds, [51]);
    assert.deepEqual(ok(front(bytes)).fds, []);
    err(front(bytes, [51, 52]), 'bad-fd-count', [51, 52]);
  });

  it('SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE: vring state', () => {
    assert.deepEqual(ok(front('08000000 01000000 08000000 00000000 00010000')).payload, {
      kind: 'vringState',
      index: 0,
      num: 256,
    });
    assert.deepEqual(ok(front('0a000000 01000000 08000000 01000000 00000000')).payload, {
      kind: 'vringState',
      index: 1,
      num: 0,
    });
    assert.deepEqual(ok(front('0b000000 01000000 08000000 00000000 00000000')).payload, {
      kind: 'vringState',
      index: 0,
      num: 0,
    });
    assert.deepEqual(ok(front('12000000 01000000 08000000 00000000 01000000')).payload, {
      kind: 'vringState',
      index: 0,
      num: 1,
    });
  });

  it('SET_VRING_ADDR', () => {
    const m = ok(
      front(`09000000 01000000 28000000 00000000 00000000
        00807c4b3b7f0000 40927c4b3b7f0000 00907c4b3b7f0000 0000000000000000`),
    );
    assert.deepEqual(m.payload, {
      kind: 'vringAddr',
      index: 0,
      flags: 0,
      descUserAddr: 0x7f3b_4b7c_8000,
      usedUserAddr: 0x7f3b_4b7c_9240,
      availUserAddr: 0x7f3b_4b7c_9000,
      logGuestAddr: 0,
    });
  });

  it('SET_VRING_KICK with an eventfd', () => {
    const m = ok(front('0c000000 01000000 08000000 00000000 00000000', [60]));
    assert.deepEqual(m.payload, { kind: 'vringFd', index: 0, noFd: false });
    assert.deepEqual(m.fds, [60]);
  });

  it('SET_VRING_CALL with the no-fd bit and no fd', () => {
    const m = ok(front('0d000000 01000000 08000000 01010000 00000000'));
    assert.deepEqual(m.payload, { kind: 'vringFd', index: 1, noFd: true });
  });

  it('SET_VRING_ERR', () => {
    assert.deepEqual(ok(front('0e000000 01000000 08000000 03000000 00000000', [7])).payload, {
      kind: 'vringFd',
      index: 3,
      noFd: false,
    });
  });

  it('GET_CONFIG for a 60-byte virtio-blk config (zeroed placeholder)', () => {
    const m = ok(front(`18000000 01000000 48000000 00000000 3c000000 00000000 ${'00'.repeat(60)}`));
    assert.equal(m.payload.kind, 'config');
    if (m.payload.kind !== 'config') return;
    assert.equal(m.payload.offset, 0);
    assert.equal(m.payload.size, 60);
    assert.equal(m.payload.flags, 0);
    assert.deepEqual(m.payload.data, new Uint8Array(60));
  });

  it('SET_CONFIG with the live-migration flag', () => {
    const m = ok(front('19000000 09000000 0d000000 20000000 01000000 01000000 01'));
    assert.deepEqual(m.payload, { kind: 'config', offset: 0x20, size: 1, flags: 1, data: new Uint8Array([1]) });
  });

  it('SET_BACKEND_REQ_FD: empty payload, one socket fd', () => {
    const m = ok(front('15000000 09000000 00000000', [70]));
    assert.deepEqual(m.payload, { kind: 'none' });
    assert.deepEqual(m.fds, [70]);
  });

  it('SET_LOG_BASE carries a 16-byte log description, not the u64 the spec lists', () => {
    const m = ok(front('06000000 01000000 10000000 0080000000000000 0000000000000000', [80]));
    assert.deepEqual(m.payload, { kind: 'log', mmapSize: 0x8000, mmapOffset: 0 });
    err(front('06000000 01000000 08000000 0080000000000000', [80]), 'bad-size', [80]);
  });

  it('GET_INFLIGHT_FD and SET_INFLIGHT_FD use the padded 24-byte struct', () => {
    const get = ok(front('1f000000 01000000 18000000 0000000000000000 0000000000000000 0100 8000 00000000'));
    assert.deepEqual(get.payload, { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 128 });
    const set = ok(front('20000000 01000000 18000000 0021000000000000 0000000000000000 0100 8000 00000000', [90]));
    assert.deepEqual(set.payload, { kind: 'inflight', mmapSize: 0x2100, mmapOffset: 0, numQueues: 1, queueSize: 128 });
    err(front('1f000000 01000000 14000000 0000000000000000 0000000000000000 0100 8000'), 'bad-size');
  });

  it('SET_STATUS / GET_STATUS', () => {
    assert.deepEqual(ok(front('27000000 01000000 08000000 0b00000000000000')).payload, { kind: 'u64', value: 0xbn });
    assert.deepEqual(ok(front('28000000 01000000 00000000')).payload, { kind: 'none' });
  });

  it('IOTLB_MSG keeps 64-bit values as bigint', () => {
    const m = ok(front(`16000000 09000000 20000000 0000000000000000 ffffffffffffffff 0000000000000000 00 03 000000000000`));
    assert.deepEqual(m.payload, { kind: 'iotlb', iova: 0n, size: 0xffff_ffff_ffff_ffffn, userAddr: 0n, perm: 0, type: 3 });
  });

  it('GET_SHARED_OBJECT: QEMU sends it with size 0; the spec layout (16 bytes) is accepted too', () => {
    assert.deepEqual(ok(front('29000000 01000000 00000000')).payload, { kind: 'none' });
    const uuid = Uint8Array.from({ length: 16 }, (_, i) => i);
    const m = ok(front(`29000000 01000000 10000000 ${Buffer.from(uuid).toString('hex')}`));
    assert.deepEqual(m.payload, { kind: 'sharedObject', uuid });
  });

  it('SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE', () => {
    const m = ok(front('2a000000 01000000 08000000 01000000 00000000', [95]));
    assert.deepEqual(m.payload, { kind: 'deviceState', direction: 1, phase: 0 });
    assert.deepEqual(ok(front('2b000000 01000000 00000000')).payload, { kind: 'none' });
  });
});

describe('protocol: in-flight region messages (GET/SET_INFLIGHT_FD)', () => {
  const body = (size: string, offset: string, queues: string, qsize: string) => `${size} ${offset} ${queues} ${qsize} 00000000`;
  const reply = (bytes: string, fds: number[] = []) => decodeReply(F.GET_INFLIGHT_FD, toRaw(hex(bytes), fds));

  it('QEMU 7.2 GET_INFLIGHT_FD for 2 queues of 256: zero size and offset, no fd', () => {
    const m = ok(front(`1f000000 01000000 18000000 ${body('0000000000000000', '0000000000000000', '0200', '0001')}`));
    assert.deepEqual(m.payload, { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues: 2, queueSize: 256 });
    assert.deepEqual(m.fds, []);
  });

  it('SET_INFLIGHT_FD keeps 16-bit counts and u64 sizes whole', () => {
    const m = ok(front(`20000000 01000000 18000000 ${body('0041000000000000', '0010000000000000', 'ffff', '0004')}`, [7]));
    assert.deepEqual(m.payload, { kind: 'inflight', mmapSize: 0x4100, mmapOffset: 0x1000, numQueues: 0xffff, queueSize: 1024 });
    assert.deepEqual(m.fds, [7]);
  });

  it('refuses the unpadded 20-byte struct and other sizes, returning the fds', () => {
    const short = '0021000000000000 0000000000000000 0100 8000';
    err(front(`1f000000 01000000 14000000 ${short}`), 'bad-size');
    err(front(`20000000 01000000 14000000 ${short}`, [8]), 'bad-size', [8]);
    err(front(`20000000 01000000 1c000000 ${short} 00000000 00000000`, [8]), 'bad-size', [8]);
    err(front('1f000000 01000000 00000000'), 'bad-size');
  });

  it('refuses fds on GET_INFLIGHT_FD and anything but one fd on SET_INFLIGHT_FD', () => {
    const b = body('0021000000000000', '0000000000000000', '0100', '8000');
    err(front(`1f000000 01000000 18000000 ${b}`, [9]), 'bad-fd-count', [9]);
    err(front(`20000000 01000000 18000000 ${b}`, [9, 10]), 'bad-fd-count', [9, 10]);
  });

  it('refuses sizes and offsets that are not exact Numbers', () => {
    err(front(`20000000 01000000 18000000 ${body('0000000000002000', '0000000000000000', '0100', '8000')}`, [11]), 'out-of-range', [11]);
    err(front(`20000000 01000000 18000000 ${body('0021000000000000', 'ffffffffffffffff', '0100', '8000')}`, [11]), 'out-of-range', [11]);
  });

  it('the reply: payload plus exactly one fd, bytes as the back-end encodes them', () => {
    const bytes = encodeMessage(F.GET_INFLIGHT_FD, REPLY_FLAG, { kind: 'inflight', mmapSize: 0x2100, mmapOffset: 0, numQueues: 4, queueSize: 128 });
    assert.equal(Buffer.from(bytes).toString('hex'), '1f00000005000000180000000021000000000000000000000000000004008000' + '00000000');
    const b = body('0021000000000000', '0000000000000000', '0400', '8000');
    assert.deepEqual(ok(reply(`1f000000 05000000 18000000 ${b}`, [12])).payload,
      { kind: 'inflight', mmapSize: 0x2100, mmapOffset: 0, numQueues: 4, queueSize: 128 });
    err(reply(`1f000000 05000000 18000000 ${b}`, [12, 13]), 'bad-fd-count', [12, 13]);
    err(reply(`1f000000 05000000 10000000 0021000000000000 0000000000000000`, [12]), 'bad-size', [12]);
    // mmap_size 0 means "no region"; QEMU ignores a stray fd then, and so do we (the caller closes it).
    assert.deepEqual(ok(reply(`1f000000 05000000 18000000 ${body('0000000000000000', '0000000000000000', '0400', '8000')}`, [14])).fds, [14]);
  });
});

describe('protocol: malformed front-end requests', () => {
  it('SET_MEM_TABLE with a missing fd returns the fds that did arrive', () => {
    const e = err(front(MEM_TABLE_2, [40]), 'bad-fd-count', [40]);
    assert.equal(e.request, F.SET_MEM_TABLE);
  });

  it('SET_MEM_TABLE with an extra fd', () => {
    err(front(MEM_TABLE_2, [40, 41, 42]), 'bad-fd-count', [40, 41, 42]);
  });

  it('SET_MEM_TABLE with 9 regions', () => {
    const region = '0000000000000000 0010000000000000 0000000000000000 0000000000000000';
    const fds = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    err(front(`05000000 01000000 ${u32le(8 + 32 * 9)} 09000000 00000000 ${region.repeat(9)}`, fds), 'too-many-regions', fds);
  });

  it('SET_MEM_TABLE whose nregions disagrees with the size', () => {
    err(front(MEM_TABLE_2.replace('02000000 00000000', '03000000 00000000'), [1, 2]), 'bad-size', [1, 2]);
    err(front('05000000 01000000 04000000 00000000'), 'bad-size');
  });

  it('truncated payloads', () => {
    err(front('02000000 01000000 04000000 46760050'), 'bad-size');
    err(front('09000000 01000000 20000000 00000000 00000000 00807c4b3b7f0000 40927c4b3b7f0000 00907c4b3b7f0000'), 'bad-size');
    err(front(`25000000 01000000 20000000 ${REGION_4G}`, [5]), 'bad-size', [5]);
    err(front('0c000000 01000000 04000000 00000000', [6]), 'bad-size', [6]);
    err(front('18000000 01000000 08000000 00000000 3c000000'), 'bad-size');
  });

  it('payloads where none is expected', () => {
    err(front('01000000 01000000 08000000 0000000000000000'), 'bad-size');
  });

  it('config whose size field disagrees with the payload, or exceeds 256', () => {
    err(front('18000000 01000000 0d000000 00000000 3c000000 00000000 00'), 'bad-size');
    err(front(`18000000 01000000 ${u32le(12 + 257)} 00000000 ${u32le(257)} 00000000 ${'00'.repeat(257)}`), 'bad-size');
  });

  it('a body shorter than the header size field', () => {
    err(decodeFrontendMessage({ ...toRaw(hex('02000000 01000000 08000000 46760050 01000000')), size: 16 }), 'bad-size');
  });

  it('SET_VRING_KICK: no-fd bit set but an fd arrived', () => {
    err(front('0c000000 01000000 08000000 00010000 00000000', [61]), 'bad-fd-count', [61]);
  });

  it('SET_VRING_CALL: no-fd bit clear but no fd arrived', () => {
    err(front('0d000000 01000000 08000000 00000000 00000000'), 'bad-fd-count');
  });

  it('SET_VRING_CALL with reserved bits above bit 8', () => {
    err(front('0d000000 01000000 08000000 00020000 00000000', [3]), 'reserved-bits', [3]);
    err(front('0d000000 01000000 08000000 00000000 00000001', [3]), 'reserved-bits', [3]);
  });

  it('fds on requests that take none', () => {
    err(front('01000000 01000000 00000000', [9]), 'bad-fd-count', [9]);
    err(front('02000000 01000000 08000000 46760050 01000000', [9, 10]), 'bad-fd-count', [9, 10]);
  });

  it('missing fd on SET_LOG_FD, SET_BACKEND_REQ_FD, SET_INFLIGHT_FD, ADD_MEM_REG, SET_DEVICE_STATE_FD', () => {
    err(front('07000000 01000000 00000000'), 'bad-fd-count');
    err(front('15000000 01000000 00000000'), 'bad-fd-count');
    err(front('20000000 01000000 18000000 0021000000000000 0000000000000000 0100 8000 00000000'), 'bad-fd-count');
    err(front(`25000000 01000000 28000000 0000000000000000 ${REGION_4G}`), 'bad-fd-count');
    err(front('2a000000 01000000 08000000 01000000 00000000'), 'bad-fd-count');
  });

  it('unknown request numbers, with their fds returned', () => {
    const e = err(front('2c000000 01000000 00000000', [11]), 'unknown-request', [11]);
    assert.equal(e.request, 44);
    err(front('00000000 01000000 00000000'), 'unknown-request');
    err(front('ffffffff 01000000 00000000'), 'unknown-request');
  });

  it('bad version, reserved flag bits, and REPLY on a request', () => {
    err(front('01000000 00000000 00000000', [4]), 'bad-version', [4]);
    err(front('01000000 02000000 00000000'), 'bad-version');
    err(front('01000000 11000000 00000000'), 'reserved-flags');
    err(front('01000000 01000080 00000000'), 'reserved-flags');
    err(front('01000000 05000000 00000000'), 'bad-reply-flag');
  });

  it('addresses up to 2^53 - 1 decode, 2^53 and above do not', () => {
    const max = 'ffffffffffff1f00'; // 2^53 - 1
    const over = '0000000000002000'; // 2^53
    const table = (gpa: string) => `05000000 01000000 28000000 01000000 00000000 ${gpa} 0010000000000000 0000000000000000 0000000000000000`;
    const m = ok(front(table(max), [1]));
    assert.equal(m.payload.kind === 'memoryTable' && m.payload.regions[0]?.guestPhysAddr, Number.MAX_SAFE_INTEGER);
    err(front(table(over), [1]), 'out-of-range', [1]);
    err(front(table('ffffffffffffffff'), [1]), 'out-of-range', [1]);
    err(front(`25000000 01000000 28000000 0000000000000000 0000000000000000 0010000000000000 ${over} 0000000000000000`, [2]), 'out-of-range', [2]);
    err(front(`09000000 01000000 28000000 00000000 00000000 ${over} 0000000000000000 0000000000000000 0000000000000000`), 'out-of-range');
    err(front(`06000000 01000000 10000000 ${over} 0000000000000000`, [3]), 'out-of-range', [3]);
    err(front(`1f000000 01000000 18000000 0000000000000000 ${over} 0100 8000 00000000`), 'out-of-range');
  });

  it('plain u64 values keep all 64 bits', () => {
    assert.deepEqual(ok(front('02000000 01000000 08000000 ffffffff ffffffff')).payload, {
      kind: 'u64',
      value: 0xffff_ffff_ffff_ffffn,
    });
  });
});

describe('protocol: replies decoded by a front-end', () => {
  const reply = (request: number, bytes: string, fds: number[] = []) => decodeReply(request, toRaw(hex(bytes), fds));

  it('GET_FEATURES reply', () => {
    const m = ok(reply(F.GET_FEATURES, '01000000 05000000 08000000 46760050 01000000'));
    assert.deepEqual(m.payload, { kind: 'u64', value: 0x1_5000_7646n });
  });

  it('replies must set REPLY and nothing else, and answer the awaited request', () => {
    err(reply(F.GET_FEATURES, '01000000 01000000 08000000 00000000 00000000'), 'bad-reply-flag');
    err(reply(F.GET_FEATURES, '01000000 0d000000 08000000 00000000 00000000'), 'bad-reply-flag');
    err(reply(F.GET_FEATURES, '0f000000 05000000 08000000 00000000 00000000', [3]), 'unexpected-reply', [3]);
    err(reply(F.GET_FEATURES, '01000000 04000000 08000000 00000000 00000000'), 'bad-version');
    err(reply(F.GET_FEATURES, '01000000 05000000 00000000'), 'bad-size');
  });

  it('u64 replies: protocol features, queue num, mem slots, status', () => {
    for (const request of [F.GET_PROTOCOL_FEATURES, F.GET_QUEUE_NUM, F.GET_MAX_MEM_SLOTS, F.GET_STATUS]) {
      const code = request.toString(16).padStart(2, '0');
      assert.deepEqual(ok(reply(request, `${code}000000 05000000 08000000 20000000 00000000`)).payload, {
        kind: 'u64',
        value: 32n,
      });
    }
  });

  it('GET_VRING_BASE reply', () => {
    assert.deepEqual(ok(reply(F.GET_VRING_BASE, '0b000000 05000000 08000000 01000000 2a000000')).payload, {
      kind: 'vringState',
      index: 1,
      num: 42,
    });
  });

  it('GET_CONFIG reply, and the empty reply that signals failure', () => {
    const data = hex(`00002000 00000000 00000000 fe000000 00000000 00020000 00 00 0000 00000000 ${'00'.repeat(28)}`);
    const m = ok(reply(F.GET_CONFIG, `18000000 05000000 48000000 00000000 3c000000 00000000 ${Buffer.from(data).toString('hex')}`));
    assert.deepEqual(m.payload, { kind: 'config', offset: 0, size: 60, flags: 0, data });
    assert.deepEqual(ok(reply(F.GET_CONFIG, '18000000 05000000 00000000')).payload, { kind: 'none' });
  });

  it('GET_INFLIGHT_FD reply needs the fd when the area is non-empty', () => {
    const body = '0021000000000000 0000000000000000 0100 8000 00000000';
    assert.deepEqual(ok(reply(F.GET_INFLIGHT_FD, `1f000000 05000000 18000000 ${body}`, [5])).fds, [5]);
    err(reply(F.GET_INFLIGHT_FD, `1f000000 05000000 18000000 ${body}`), 'bad-fd-count');
    const empty = '0000000000000000 0000000000000000 0100 8000 00000000';
    assert.deepEqual(ok(reply(F.GET_INFLIGHT_FD, `1f000000 05000000 18000000 ${empty}`)).fds, []);
  });

  it('REPLY_ACK for requests without an explicit reply body', () => {
    assert.deepEqual(ok(reply(F.SET_MEM_TABLE, '05000000 05000000 08000000 00000000 00000000')).payload, {
      kind: 'u64',
      value: 0n,
    });
    assert.deepEqual(ok(reply(F.SET_VRING_ADDR, '09000000 05000000 08000000 01000000 00000000')).payload, {
      kind: 'u64',
      value: 1n,
    });
    err(reply(F.SET_OWNER, '03000000 05000000 04000000 00000000'), 'bad-size');
    err(reply(0x99, '99000000 05000000 08000000 00000000 00000000'), 'unknown-request');
  });

  it('SET_DEVICE_STATE_FD reply: the no-fd bit must match the ancillary data', () => {
    assert.deepEqual(ok(reply(F.SET_DEVICE_STATE_FD, '2a000000 05000000 08000000 00000000 00000000', [8])).fds, [8]);
    ok(reply(F.SET_DEVICE_STATE_FD, '2a000000 05000000 08000000 00010000 00000000'));
    err(reply(F.SET_DEVICE_STATE_FD, '2a000000 05000000 08000000 00010000 00000000', [8]), 'bad-fd-count', [8]);
    err(reply(F.SET_DEVICE_STATE_FD, '2a000000 05000000 08000000 01000000 00000000', [8]), 'bad-fd-count', [8]);
  });
});

describe('protocol: back-end channel', () => {
  it('front-end decodes back-end requests', () => {
    const config = decodeBackendMessage(toRaw(hex('02000000 09000000 00000000')));
    assert.deepEqual(ok(config).payload, { kind: 'none' });
    const area = decodeBackendMessage(
      toRaw(hex('03000000 01000000 18000000 0200000000000000 0010000000000000 0000000000000000'), [4]),
    );
    assert.deepEqual(ok(area).payload, { kind: 'vringArea', index: 2, noFd: false, size: 0x1000, offset: 0 });
    err(decodeBackendMessage(toRaw(hex('09000000 01000000 00000000'))), 'unknown-request');
  });

  it('back-end decodes the front-end REPLY_ACK', () => {
    const m = decodeBackendReply(B.CONFIG_CHANGE_MSG, toRaw(hex('02000000 05000000 08000000 00000000 00000000')));
    assert.deepEqual(ok(m).payload, { kind: 'u64', value: 0n });
    const lookup = decodeBackendReply(
      B.SHARED_OBJECT_LOOKUP,
      toRaw(hex('08000000 05000000 08000000 00000000 00000000'), [12]),
    );
    assert.deepEqual(ok(lookup).fds, [12]);
    err(
      decodeBackendReply(B.SHARED_OBJECT_LOOKUP, toRaw(hex('08000000 05000000 08000000 eaffffff ffffffff'), [12])),
      'bad-fd-count',
      [12],
    );
  });
});

// The back-end channel as QEMU 7.2 runs it (hw/virtio/vhost-user.c): the
// front-end creates a socketpair and passes one end with SET_SLAVE_REQ_FD
// (NEED_REPLY set when REPLY_ACK was negotiated); its slave_read() answers a
// request carrying NEED_REPLY with the same header, NEED_REPLY swapped for
// REPLY, size 8, and u64 = !!ret.
describe('protocol: back-end channel (BACKEND_REQ)', () => {
  const ack = (request: number, bytes: string, fds: number[] = []) => decodeBackendAck(request, toRaw(hex(bytes), fds));
  const ackErr = (request: number, bytes: string, kind: ProtocolError['kind'], fds: number[] = []): ProtocolError => {
    const r = ack(request, bytes, fds);
    if (!(r instanceof ProtocolError)) return assert.fail(`expected ${kind}, got ack ${r}`);
    assert.equal(r.kind, kind, r.message);
    assert.deepEqual(r.fds, fds);
    return r;
  };

  it('numbers: SET_BACKEND_REQ_FD 21, feature bit 5, IOTLB 1 / CONFIG_CHANGE 2 / VRING_HOST_NOTIFIER 3', () => {
    assert.equal(F.SET_BACKEND_REQ_FD, 21);
    assert.equal(ProtocolFeature.BACKEND_REQ, 5);
    assert.equal(bit(ProtocolFeature.BACKEND_REQ), 0x20n);
    assert.deepEqual([B.IOTLB_MSG, B.CONFIG_CHANGE_MSG, B.VRING_HOST_NOTIFIER_MSG], [1, 2, 3]);
  });

  it('SET_BACKEND_REQ_FD as QEMU sends it, with and without NEED_REPLY', () => {
    for (const flags of ['01000000', '09000000']) {
      const m = ok(front(`15000000 ${flags} 00000000`, [33]));
      assert.equal(m.request, F.SET_BACKEND_REQ_FD);
      assert.deepEqual(m.payload, { kind: 'none' });
      assert.deepEqual(m.fds, [33]);
    }
    err(front('15000000 09000000 00000000', [33, 34]), 'bad-fd-count', [33, 34]);
    err(front('15000000 09000000 08000000 0000000000000000', [33]), 'bad-size', [33]);
  });

  it('encodes CONFIG_CHANGE_MSG: header only, NEED_REPLY only when asked', () => {
    assert.deepEqual(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, true), hex('02000000 09000000 00000000'));
    assert.deepEqual(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, false), hex('02000000 01000000 00000000'));
    assert.throws(() => encodeBackendRequest(F.GET_CONFIG, { kind: 'none' }, false), RangeError);
    assert.throws(() => encodeBackendRequest(0, { kind: 'none' }, false), RangeError);
  });

  it('a size-0 CONFIG_CHANGE_MSG is a whole message as soon as its header is read', () => {
    const r = new MessageReader().feed(hex('02000000 09000000 00000000'));
    assert.equal(r.type, 'message');
    if (r.type !== 'message') return;
    assert.deepEqual(ok(decodeBackendMessage(r.raw)).payload, { kind: 'none' });
  });

  it('encodes the REPLY_ACK a front-end sends back, byte for byte like QEMU', () => {
    assert.deepEqual(encodeReplyAck(B.CONFIG_CHANGE_MSG, 0n), hex('02000000 05000000 08000000 0000000000000000'));
    assert.deepEqual(encodeReplyAck(B.CONFIG_CHANGE_MSG, 1n), hex('02000000 05000000 08000000 0100000000000000'));
  });

  it('decodes the ack value of a well-formed reply', () => {
    assert.equal(ack(B.CONFIG_CHANGE_MSG, '02000000 05000000 08000000 0000000000000000'), 0n);
    assert.equal(ack(B.CONFIG_CHANGE_MSG, '02000000 05000000 08000000 0100000000000000'), 1n);
    assert.equal(ack(B.CONFIG_CHANGE_MSG, '02000000 05000000 08000000 eaffffffffffffff'), 0xffff_ffff_ffff_ffean);
    assert.equal(ack(B.IOTLB_MSG, '01000000 05000000 08000000 0000000000000000'), 0n);
  });

  it('malformed replies: flags', () => {
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 01000000 08000000 0000000000000000', 'bad-reply-flag');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 09000000 08000000 0000000000000000', 'bad-reply-flag');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 0d000000 08000000 0000000000000000', 'bad-reply-flag');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 04000000 08000000 0000000000000000', 'bad-version');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 07000000 08000000 0000000000000000', 'bad-version');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 15000000 08000000 0000000000000000', 'reserved-flags');
  });

  it('malformed replies: another request number, sizes, fds', () => {
    const e = ackErr(B.CONFIG_CHANGE_MSG, '01000000 05000000 08000000 0000000000000000', 'unexpected-reply');
    assert.equal(e.request, B.IOTLB_MSG);
    ackErr(B.CONFIG_CHANGE_MSG, '15000000 05000000 08000000 0000000000000000', 'unexpected-reply');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 05000000 00000000', 'bad-size');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 05000000 04000000 00000000', 'bad-size');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 05000000 10000000 0000000000000000 0000000000000000', 'bad-size');
    ackErr(B.CONFIG_CHANGE_MSG, '02000000 05000000 08000000 0000000000000000', 'bad-fd-count', [44]);
    // The header claims 8 bytes but fewer arrived (the framing layer never does this; a caller might).
    const short = decodeBackendAck(B.CONFIG_CHANGE_MSG, { ...toRaw(hex('02000000 05000000 04000000 00000000')), size: 8 });
    assert.ok(short instanceof ProtocolError && short.kind === 'bad-size');
    // Even SHARED_OBJECT_LOOKUP, whose full reply may carry an fd: an ack is a bare verdict.
    ackErr(B.SHARED_OBJECT_LOOKUP, '08000000 05000000 08000000 0000000000000000', 'bad-fd-count', [45]);
    ackErr(9, '09000000 05000000 08000000 0000000000000000', 'unknown-request', [46]);
  });

  it('front-end side: malformed back-end requests', () => {
    const back = (bytes: string, fds: number[] = []) => decodeBackendMessage(toRaw(hex(bytes), fds));
    assert.equal(ok(back('02000000 01000000 00000000')).flags, 1, 'no NEED_REPLY without REPLY_ACK');
    err(back('02000000 09000000 08000000 0000000000000000'), 'bad-size');
    err(back('02000000 09000000 00000000', [47]), 'bad-fd-count', [47]);
    err(back('02000000 05000000 00000000'), 'bad-reply-flag');
    err(back('02000000 00000000 00000000'), 'bad-version');
    err(back('02000000 19000000 00000000'), 'reserved-flags');
    err(back('00000000 01000000 00000000'), 'unknown-request');
    err(back('15000000 09000000 00000000', [48]), 'unknown-request', [48]);
  });
});
