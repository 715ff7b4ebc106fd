// VhostUserClient against a scripted back-end on a socketpair: flags, reply
// matching, REPLY_ACK, fd passing, and how failures surface.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import {
  BackendRequest as B, FrontendRequest as R, Message, NEED_REPLY_FLAG, Payload, ProtocolError, ProtocolFeature,
  RawMessage, REPLY_FLAG, bit, decodeBackendAck, decodeFrontendMessage, encodeBackendRequest, encodeMessage,
} from '../../protocol';
import { VhostUserClient, VhostUserError } from '../../src/frontend/client';
import { native } from '../../src/native/addon';
import { Endpoint } from '../../src/transport/endpoint';
import { waitFor } from '../support/wait';

/** The back-end end of the pair: records requests and answers through `answer`. */
class FakeBackend {
  readonly received: Message[] = [];
  readonly endpoint: Endpoint;
  answer: (m: Message) => void = () => undefined;
  private waiters: Array<() => void> = [];

  constructor(fd: number) {
    this.endpoint = new Endpoint(fd, {
      message: (raw) => {
        const m = decodeFrontendMessage(raw);
        if (m instanceof ProtocolError) throw m;
        this.received.push(m);
        this.answer(m);
        for (const w of this.waiters.splice(0)) w();
      },
      protocolError: (e) => { throw e; },
      closed: () => undefined,
    });
    this.endpoint.start();
  }

  reply(request: number, payload: Payload, flags = REPLY_FLAG): void {
    this.endpoint.send(encodeMessage(request, flags, payload));
  }

  /** Resolves once `n` requests have arrived. */
  async waitFor(n: number): Promise<void> {
    while (this.received.length < n) await new Promise<void>((r) => this.waiters.push(r));
  }
}

function pair(timeoutMs?: number): { client: VhostUserClient; backend: FakeBackend } {
  const [a, b] = native.socketpair();
  return { client: VhostUserClient.fromFd(a, { timeoutMs }), backend: new FakeBackend(b) };
}

const isError = (code: string, pattern?: RegExp) => (e: unknown): boolean =>
  e instanceof VhostUserError && e.code === code && (pattern === undefined || pattern.test(e.message));

describe('frontend VhostUserClient', () => {
  let client: VhostUserClient;
  let backend: FakeBackend;
  beforeEach(() => ({ client, backend } = pair()));
  afterEach(() => {
    client.close();
    backend.endpoint.close();
  });

  it('sends GET_FEATURES without flags and returns the reply value', async () => {
    backend.answer = (m) => backend.reply(m.request, { kind: 'u64', value: 0x1_4000_0000n });
    assert.equal(await client.getFeatures(), 0x1_4000_0000n);
    assert.equal(backend.received[0].request, R.GET_FEATURES);
    assert.equal(backend.received[0].flags, 1, 'version 1, no REPLY/NEED_REPLY');
  });

  it('GET_INFLIGHT_FD keeps the memfd of the reply for the caller; SET_INFLIGHT_FD sends it back', async () => {
    const memfd = native.memfdCreate('inflight');
    fs.ftruncateSync(memfd, 2112);
    backend.answer = (m) => {
      if (m.request !== R.GET_INFLIGHT_FD) return;
      const p = m.payload as { numQueues: number; queueSize: number };
      backend.endpoint.send(encodeMessage(m.request, REPLY_FLAG,
        { kind: 'inflight', mmapSize: 2112, mmapOffset: 0, numQueues: p.numQueues, queueSize: p.queueSize }), [memfd]);
    };
    const got = await client.getInflightFd(1, 128);
    assert.deepEqual(backend.received[0].payload, { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 128 });
    assert.deepEqual(got.area, { kind: 'inflight', mmapSize: 2112, mmapOffset: 0, numQueues: 1, queueSize: 128 });
    assert.ok(got.fd >= 0 && got.fd !== memfd, 'a fd of our own');
    assert.equal(fs.fstatSync(got.fd).size, 2112, 'the same memfd');
    await client.setInflightFd(got.area, got.fd);
    await backend.waitFor(2);
    const set = backend.received[1];
    assert.equal(set.request, R.SET_INFLIGHT_FD);
    assert.deepEqual(set.payload, got.area);
    assert.equal(set.fds.length, 1);
    assert.equal(fs.fstatSync(got.fd).size, 2112, 'still ours after sending');
    for (const fd of [memfd, got.fd, ...set.fds]) native.close(fd);
  });

  it('rejects a reply to another request as a protocol error and hangs up', async () => {
    backend.answer = () => backend.reply(R.GET_QUEUE_NUM, { kind: 'u64', value: 1n });
    await assert.rejects(client.getFeatures(), isError('protocol', /GET_FEATURES/));
    assert.match(await client.closed, /malformed reply/);
  });

  it('rejects a reply without the REPLY flag', async () => {
    backend.answer = (m) => backend.reply(m.request, { kind: 'u64', value: 1n }, 0);
    await assert.rejects(client.getProtocolFeatures(), isError('protocol'));
  });

  it('rejects an unsolicited message by hanging up', async () => {
    backend.reply(R.GET_FEATURES, { kind: 'u64', value: 1n });
    assert.match(await client.closed, /unsolicited/);
  });

  it('without REPLY_ACK, messages without a reply resolve at once and carry no NEED_REPLY', async () => {
    await client.setOwner();
    await client.setVringNum(0, 256);
    await backend.waitFor(2);
    assert.deepEqual(backend.received.map((m) => [m.request, m.flags]), [[R.SET_OWNER, 1], [R.SET_VRING_NUM, 1]]);
    assert.deepEqual(backend.received[1].payload, { kind: 'vringState', index: 0, num: 256 });
  });

  it('with REPLY_ACK, sets NEED_REPLY and waits for the ack; a non-zero ack is a nack', async () => {
    await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
    let ack = 0n;
    backend.answer = (m) => {
      if (m.flags & NEED_REPLY_FLAG) backend.reply(m.request, { kind: 'u64', value: ack });
      else if (m.request === R.GET_QUEUE_NUM) backend.reply(m.request, { kind: 'u64', value: 4n });
    };
    await client.setOwner();
    assert.equal(backend.received[1].flags, 1 | NEED_REPLY_FLAG);
    ack = 1n;
    await assert.rejects(client.setVringEnable(0, true), isError('nack', /SET_VRING_ENABLE/));
    assert.equal(await client.getQueueNum(), 4, 'requests with their own reply carry no NEED_REPLY');
    assert.equal(backend.received[3].flags, 1);
  });

  it('passes fds with vring and memory messages and sets the no-fd bit without one', async () => {
    const efd = native.eventfd(0);
    const memfd = native.memfdCreate('t');
    try {
      await client.setVringKick(1, efd);
      await client.setVringCall(2);
      await client.setMemTable([{ guestPhysAddr: 0, size: 4096, userAddr: 0x10000, mmapOffset: 0 }], [memfd]);
      await backend.waitFor(3);
      const [kick, call, table] = backend.received;
      assert.deepEqual(kick.payload, { kind: 'vringFd', index: 1, noFd: false });
      assert.equal(kick.fds.length, 1);
      assert.deepEqual(call.payload, { kind: 'vringFd', index: 2, noFd: true });
      assert.equal(call.fds.length, 0);
      assert.equal(table.fds.length, 1);
      for (const m of backend.received) for (const fd of m.fds) native.close(fd);
    } finally {
      native.close(efd);
      native.close(memfd);
    }
  });

  it('one request at a time: the second is sent only after the first reply', async () => {
    const replies: Array<() => void> = [];
    backend.answer = (m) => replies.push(() => backend.reply(m.request, { kind: 'u64', value: BigInt(m.request) }));
    const a = client.getFeatures();
    const b = client.getQueueNum();
    await backend.waitFor(1);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(backend.received.length, 1);
    replies[0]();
    await backend.waitFor(2);
    replies[1]();
    assert.equal(await a, BigInt(R.GET_FEATURES));
    assert.equal(await b, R.GET_QUEUE_NUM);
  });

  it('decodes GET_VRING_BASE and GET_CONFIG replies and checks they match the question', async () => {
    backend.answer = (m) => {
      if (m.request === R.GET_VRING_BASE) backend.reply(m.request, { kind: 'vringState', index: 1, num: 77 });
      if (m.request === R.GET_CONFIG) {
        const c = m.payload as { offset: number; size: number };
        backend.reply(m.request, { kind: 'config', offset: c.offset, size: c.size, flags: 0, data: new Uint8Array(c.size).fill(7) });
      }
    };
    assert.equal(await client.getVringBase(1), 77);
    assert.deepEqual(await client.getConfig(4, 3), new Uint8Array([7, 7, 7]));
    await assert.rejects(client.getVringBase(0), isError('protocol', /queue 1, asked for 0/));
  });

  it('an empty GET_CONFIG reply is a failure', async () => {
    backend.answer = (m) => backend.reply(m.request, { kind: 'none' });
    await assert.rejects(client.getConfig(0, 60), isError('nack', /GET_CONFIG failed/));
  });

  it('sendRaw delivers bytes and fds as given and hands back the raw reply', async () => {
    backend.answer = (m) => backend.reply(m.request, { kind: 'u64', value: 5n });
    const efd = native.eventfd(0);
    try {
      const bytes = encodeMessage(R.SET_VRING_CALL, 0, { kind: 'vringFd', index: 3, noFd: false });
      const raw = await client.sendRaw(bytes, [efd], { expectReply: true });
      assert.equal(raw?.request, R.SET_VRING_CALL);
      assert.equal(raw?.flags, 1 | REPLY_FLAG);
      assert.equal(backend.received[0].fds.length, 1);
      native.close(backend.received[0].fds[0]);
    } finally {
      native.close(efd);
    }
  });

  it('a back-end hanging up rejects the pending request and every later one', async () => {
    backend.answer = () => backend.endpoint.close();
    await assert.rejects(client.getFeatures(), isError('closed', /closed by the back-end while waiting for the reply to GET_FEATURES/));
    await assert.rejects(client.setOwner(), isError('closed', /before SET_OWNER was sent/));
  });

  it('gives up after the timeout and closes the connection', async () => {
    client.close();
    backend.endpoint.close();
    ({ client, backend } = pair(50));
    await assert.rejects(client.getFeatures(), isError('timeout', /GET_FEATURES within 50 ms/));
    assert.equal(client.isClosed, true);
  });
});

/** The back-end's end of a back-end channel: sends requests, collects the acks. */
class ChannelPeer {
  readonly replies: RawMessage[] = [];
  closedReason: string | undefined;
  readonly endpoint: Endpoint;
  constructor(fd: number) {
    this.endpoint = new Endpoint(fd, {
      message: (raw) => this.replies.push(raw),
      protocolError: () => undefined,
      closed: (reason) => { this.closedReason = reason; },
    });
    this.endpoint.start();
  }
  send(bytes: Uint8Array): void { this.endpoint.send(bytes); }
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

describe('frontend VhostUserClient: back-end channel', () => {
  let client: VhostUserClient;
  let backend: FakeBackend;
  let peer: ChannelPeer | undefined;
  beforeEach(() => ({ client, backend } = pair()));
  afterEach(() => {
    client.close();
    backend.endpoint.close();
    peer?.endpoint.close();
    peer = undefined;
  });

  /** SET_BACKEND_REQ_FD through the fake back-end, which keeps the fd it got. */
  async function setUp(handlers: Parameters<VhostUserClient['setBackendReqFd']>[0], ack?: bigint): Promise<ChannelPeer> {
    if (ack !== undefined) {
      await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.BACKEND_REQ));
      backend.answer = (m) => { if (m.flags & NEED_REPLY_FLAG) backend.reply(m.request, { kind: 'u64', value: ack }); };
    }
    const done = client.setBackendReqFd(handlers);
    await backend.waitFor(ack !== undefined ? 2 : 1);
    await done;
    const m = backend.received[backend.received.length - 1];
    assert.equal(m.request, R.SET_BACKEND_REQ_FD);
    assert.equal(m.fds.length, 1);
    assert.ok(fs.fstatSync(m.fds[0]).isSocket());
    peer = new ChannelPeer(m.fds[0]);
    return peer;
  }

  it('sends SET_BACKEND_REQ_FD with one socket, NEED_REPLY with REPLY_ACK', async () => {
    await setUp({}, 0n);
    assert.equal(backend.received[1].flags, 1 | NEED_REPLY_FLAG);
    assert.deepEqual(backend.received[1].payload, { kind: 'none' });
    assert.ok(client.backendChannel !== undefined && !client.backendChannel.isClosed);
  });

  it('calls configChange and acks a NEED_REPLY CONFIG_CHANGE_MSG with 0 once the handler is done', async () => {
    let release!: () => void;
    let calls = 0;
    const p = await setUp({ configChange: () => { calls++; return new Promise<void>((r) => { release = r; }); } });
    p.send(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, true));
    await waitFor('the handler', () => calls === 1);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(p.replies.length, 0, 'no ack before the handler finished');
    release();
    await waitFor('the ack', () => p.replies.length === 1);
    assert.equal(decodeBackendAck(B.CONFIG_CHANGE_MSG, p.replies[0]), 0n);
    assert.equal(p.replies[0].flags, 1 | REPLY_FLAG);
    assert.equal(client.backendChannel?.received.length, 1);
  });

  it('does not answer a CONFIG_CHANGE_MSG without NEED_REPLY', async () => {
    let calls = 0;
    const p = await setUp({ configChange: () => { calls++; } });
    p.send(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, false));
    p.send(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, true));
    await waitFor('the ack of the second', () => p.replies.length === 1);
    assert.equal(calls, 2);
  });

  it('acks 1 when the handler fails and for requests it does not handle, in order', async () => {
    let n = 0;
    const p = await setUp({ configChange: async () => { if (++n === 1) throw new Error('GET_CONFIG failed'); } });
    p.send(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, true));
    p.send(encodeBackendRequest(B.IOTLB_MSG, { kind: 'iotlb', iova: 0n, size: 4096n, userAddr: 0n, perm: 1, type: 1 }, true));
    p.send(encodeBackendRequest(B.CONFIG_CHANGE_MSG, { kind: 'none' }, true));
    await waitFor('three acks', () => p.replies.length === 3);
    assert.deepEqual(p.replies.map((r) => r.request), [B.CONFIG_CHANGE_MSG, B.IOTLB_MSG, B.CONFIG_CHANGE_MSG]);
    assert.deepEqual(p.replies.map((r, i) => decodeBackendAck([B.CONFIG_CHANGE_MSG, B.IOTLB_MSG, B.CONFIG_CHANGE_MSG][i], r)), [1n, 1n, 0n]);
  });

  it('closes only the channel on a malformed back-end request', async () => {
    const p = await setUp({});
    p.send(encodeMessage(B.CONFIG_CHANGE_MSG, REPLY_FLAG, { kind: 'none' }));
    assert.match(await client.backendChannel!.closed, /malformed back-end request/);
    await waitFor('the back-end to see the hang-up', () => p.closedReason !== undefined);
    assert.equal(client.isClosed, false);
    backend.answer = (m) => backend.reply(m.request, { kind: 'u64', value: 3n });
    assert.equal(await client.getQueueNum(), 3);
  });

  it('a refused SET_BACKEND_REQ_FD closes our end and leaks no fd', async () => {
    await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
    const before = openFds();
    backend.answer = (m) => {
      if (m.request !== R.SET_BACKEND_REQ_FD) return;
      for (const fd of m.fds) native.close(fd);
      backend.reply(m.request, { kind: 'u64', value: 1n });
    };
    await assert.rejects(client.setBackendReqFd({}), isError('nack', /SET_BACKEND_REQ_FD/));
    assert.equal(client.backendChannel, undefined);
    assert.equal(openFds(), before);
  });

  it('closing the connection closes the channel; no fd outlives it', async () => {
    client.close();
    backend.endpoint.close();
    await client.closed;
    const before = openFds();
    ({ client, backend } = pair());
    const p = await setUp({});
    const channel = client.backendChannel!;
    client.close();
    assert.match(await channel.closed, /vhost-user connection closed/);
    await waitFor('the back-end to see the hang-up', () => p.closedReason !== undefined);
    backend.endpoint.close();
    assert.equal(openFds(), before);
  });
});
