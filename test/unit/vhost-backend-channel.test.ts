// The back-end channel (BACKEND_REQ) of VhostBackend, driven in-process: the
// control connection is faked as in vhost-backend.test.ts, the channel is a
// real socketpair whose front-end end is read by the test, byte for byte.
import { strict as assert } from 'node:assert';
import {
  BackendRequest as B, FrontendRequest as R, NEED_REPLY_FLAG, Payload, ProtocolFeature, RawMessage, bit, encodeReplyAck,
} from '../../protocol';
import { BlkDevice } from '../../src/blk/device';
import { BlkDisk } from '../../src/blk/disk';
import { LocalDataPlane } from '../../src/iothread/local';
import { native } from '../../src/native/addon';
import { Endpoint } from '../../src/transport/endpoint';
import { Logger, setLogSink } from '../../src/util/log';
import { BackendRequestError } from '../../src/vhost/backend-channel';
import { VhostBackend, VhostBackendOptions } from '../../src/vhost/backend';
import { FakeEndpoint, exchange, isOpen, raw, settle } from '../support/fake-endpoint';
import { MemoryEngine } from '../support/memory-engine';
import { sleep, waitFor } from '../support/wait';

/** The front-end's end of the back-end channel: raw bytes in, anything out. */
class FrontendEnd {
  readonly received: RawMessage[] = [];
  closedReason: string | undefined;
  private readonly endpoint: Endpoint;
  constructor(readonly fd: number) {
    this.endpoint = new Endpoint(fd, {
      message: (raw) => this.received.push(raw),
      protocolError: () => undefined,
      closed: (reason) => { this.closedReason = reason; },
    });
    this.endpoint.start();
  }
  /** The request bytes as they were on the wire (header and body). */
  bytes(i: number): Uint8Array {
    const r = this.received[i];
    const out = new Uint8Array(12 + r.body.length);
    const v = new DataView(out.buffer);
    v.setUint32(0, r.request, true);
    v.setUint32(4, r.flags, true);
    v.setUint32(8, r.size, true);
    out.set(r.body, 12);
    return out;
  }
  ack(value: bigint, request: number = B.CONFIG_CHANGE_MSG): void { this.endpoint.send(encodeReplyAck(request, value)); }
  sendRaw(bytes: Uint8Array): void { this.endpoint.send(bytes); }
  close(): void { this.endpoint.close(); }
}

/** The same outcome, observed at once: a rejection settling while the test awaits something else is not "unhandled". */
function settled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ''), 'hex'));

const failsWith = (code: BackendRequestError['code'], pattern?: RegExp) => (e: unknown): boolean => {
  assert.ok(e instanceof BackendRequestError, `not a BackendRequestError: ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (pattern !== undefined) assert.match(e.message, pattern);
  return true;
};

describe('vhost-user back-end channel (BACKEND_REQ)', () => {
  let ep: FakeEndpoint;
  let backend: VhostBackend;
  let lines: string[];
  let restore: (l: string) => void;
  let frontends: FrontendEnd[];
  const disk: BlkDisk = {
    fd: -1, kind: 'file', sizeBytes: 1 << 20, readOnly: false, logicalBlockSize: 512, physicalBlockSize: 512,
    minIoSize: 0, optIoSize: 0, direct: false, directAlignment: 512, discard: false, writeZeroes: false, serial: 's',
  };

  function makeBackend(options: VhostBackendOptions = {}): VhostBackend {
    const device = new BlkDevice({ disk, maxQueues: 2, writeback: true });
    const dataPlane = new LocalDataPlane({ type: 'blk', disk, writeback: true, aio: 'threads', lanes: 2 }, new Logger(),
      () => (_n, done, onRoundEnd) => new MemoryEngine(new Uint8Array(1), new Uint8Array(1), done, { onRoundEnd }));
    return new VhostBackend(ep as unknown as Endpoint, device, dataPlane, new Logger(), options);
  }

  beforeEach(() => {
    lines = [];
    frontends = [];
    restore = setLogSink((l) => lines.push(l));
    ep = new FakeEndpoint();
    backend = makeBackend();
  });
  afterEach(async () => {
    await backend.teardown();
    for (const f of frontends) f.close();
    setLogSink(restore);
  });

  /** Send a control message; returns the REPLY_ACK value if one came. */
  async function send(request: number, payload: Payload, fds: number[] = [], flags = 0): Promise<bigint | undefined> {
    const m = await exchange(backend, ep, request, payload, fds, flags);
    return m === undefined ? undefined : (m.payload as { value: bigint }).value;
  }


  const FEATURES = bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.BACKEND_REQ);

  async function negotiate(features = FEATURES): Promise<void> {
    await send(R.SET_PROTOCOL_FEATURES, { kind: 'u64', value: features });
    await send(R.SET_OWNER, { kind: 'none' });
  }

  /** SET_BACKEND_REQ_FD with one end of a fresh socketpair; returns the other end and the REPLY_ACK. */
  async function setBackendReqFd(): Promise<{ fe: FrontendEnd; ack: bigint | undefined; passed: number }> {
    const [ours, theirs] = native.socketpair();
    const fe = new FrontendEnd(ours);
    frontends.push(fe);
    const ack = await send(R.SET_BACKEND_REQ_FD, { kind: 'none' }, [theirs], NEED_REPLY_FLAG);
    return { fe, ack, passed: theirs };
  }

  it('refuses SET_BACKEND_REQ_FD unless BACKEND_REQ was negotiated, and closes the fd', async () => {
    await negotiate(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG));
    const { fe, ack, passed } = await setBackendReqFd();
    assert.equal(ack, 1n);
    assert.equal(isOpen(passed), false);
    await waitFor('the front-end end to see the hang-up', () => fe.closedReason !== undefined);
    assert.equal(backend.state.backendChannel, false);
    assert.equal(ep.closed, false);
    assert.ok(lines.some((l) => /request refused/.test(l) && /BACKEND_REQ protocol feature was not negotiated/.test(l)));
  });

  it('refuses an fd that is not a socket, and closes it', async () => {
    await negotiate();
    const efd = native.eventfd(0);
    assert.equal(await send(R.SET_BACKEND_REQ_FD, { kind: 'none' }, [efd], NEED_REPLY_FLAG), 1n);
    assert.equal(isOpen(efd), false);
    assert.equal(backend.state.backendChannel, false);
    assert.ok(lines.some((l) => /not a socket/.test(l)));
  });

  it('without REPLY_ACK a refused SET_BACKEND_REQ_FD closes the connection', async () => {
    await negotiate(bit(ProtocolFeature.CONFIG));
    const efd = native.eventfd(0);
    await send(R.SET_BACKEND_REQ_FD, { kind: 'none' }, [efd]);
    assert.equal(isOpen(efd), false);
    assert.match(ep.closedReason ?? '', /SET_BACKEND_REQ_FD failed/);
  });

  it('notifyConfigChange before any ring runs is kept for later: the front-end is still setting up', async () => {
    await negotiate();
    await backend.notifyConfigChange();
    // Sent once a ring starts (QEMU reconnecting); the guest tests see it arrive.
    assert.equal(ep.sent.length, 0);
  });

  it('sends CONFIG_CHANGE_MSG with NEED_REPLY and resolves on the zero ack', async () => {
    await negotiate();
    const { fe, ack } = await setBackendReqFd();
    assert.equal(ack, 0n);
    assert.equal(backend.state.backendChannel, true);
    let resolved = false;
    const p = backend.notifyConfigChange().then(() => { resolved = true; });
    await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
    assert.deepEqual(fe.bytes(0), hex('02000000 09000000 00000000'));
    await sleep(10);
    assert.equal(resolved, false, 'waits for the ack');
    fe.ack(0n);
    await p;
    assert.equal(ep.closed, false);
  });

  it('serves control requests while waiting for the ack (QEMU reads the config before acking)', async () => {
    await negotiate();
    const { fe } = await setBackendReqFd();
    const p = backend.notifyConfigChange();
    await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
    const before = ep.sent.length;
    backend.receive(raw(R.GET_CONFIG, { kind: 'config', offset: 0, size: 8, flags: 0, data: new Uint8Array(8) }));
    await settle();
    assert.equal(ep.sent.length, before + 1, 'GET_CONFIG answered');
    fe.ack(0n);
    await p;
  });

  it('without REPLY_ACK, sends CONFIG_CHANGE_MSG without NEED_REPLY and resolves at once', async () => {
    await negotiate(bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.BACKEND_REQ));
    const { fe, ack } = await setBackendReqFd();
    assert.equal(ack, undefined);
    await backend.notifyConfigChange();
    await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
    assert.deepEqual(fe.bytes(0), hex('02000000 01000000 00000000'));
  });

  it('rejects without CONFIG negotiated: the front-end could not read the change', async () => {
    await negotiate(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.BACKEND_REQ));
    const { fe } = await setBackendReqFd();
    await assert.rejects(backend.notifyConfigChange(), failsWith('not-negotiated', /CONFIG protocol feature/));
    await sleep(10);
    assert.equal(fe.received.length, 0);
  });

  it('rejects on a non-zero ack and keeps the channel', async () => {
    await negotiate();
    const { fe } = await setBackendReqFd();
    const p = backend.notifyConfigChange();
    await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
    fe.ack(1n);
    await assert.rejects(p, failsWith('nack', /front-end reported failure \(ack 1\)/));
    assert.equal(backend.state.backendChannel, true);
  });

  it('times out without a reply; a late reply is consumed, and the next request gets its own', async () => {
    await backend.teardown();
    backend = makeBackend({ backendReplyTimeoutMs: 30 });
    await negotiate();
    const { fe } = await setBackendReqFd();
    await assert.rejects(backend.notifyConfigChange(), failsWith('timeout', /no reply from the front-end within 30 ms/));
    fe.ack(0n); // late, for the first request
    const second = backend.notifyConfigChange();
    await waitFor('second CONFIG_CHANGE_MSG', () => fe.received.length === 2);
    await sleep(5);
    fe.ack(1n);
    await assert.rejects(second, failsWith('nack'), 'the late zero ack was not taken for this one');
    assert.ok(lines.some((l) => /late reply/.test(l)));
    assert.equal(backend.state.backendChannel, true);
  });

  it('concurrent notifications each get their own reply, in order', async () => {
    await negotiate();
    const { fe } = await setBackendReqFd();
    const results = [0, 1, 2].map(() => backend.notifyConfigChange().then(() => 'ok', (e: BackendRequestError) => e.code));
    await waitFor('three requests', () => fe.received.length === 3);
    fe.ack(0n);
    fe.ack(7n);
    fe.ack(0n);
    assert.deepEqual(await Promise.all(results), ['ok', 'nack', 'ok']);
  });

  const garbage: Array<[string, string]> = [
    ['a reply to another request', '01000000 05000000 08000000 0000000000000000'],
    ['a reply without the REPLY flag', '02000000 01000000 08000000 0000000000000000'],
    ['a short reply', '02000000 05000000 04000000 00000000'],
    ['an oversized message', '02000000 05000000 00100000'],
    ['a bad version', 'ffffffff ffffffff ffffffff'],
  ];
  for (const [what, bytes] of garbage) {
    it(`closes only the channel on ${what}`, async () => {
      await negotiate();
      const { fe } = await setBackendReqFd();
      const pending = backend.notifyConfigChange();
      await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
      fe.sendRaw(hex(bytes));
      await assert.rejects(pending, (e: unknown) => e instanceof BackendRequestError && ['protocol', 'closed'].includes(e.code));
      await waitFor('the channel to close', () => fe.closedReason !== undefined);
      assert.equal(backend.state.backendChannel, false);
      assert.equal(ep.closed, false, 'the vhost-user connection goes on');
      assert.ok(lines.some((l) => /"level":50/.test(l) && /back-end channel/.test(l)), lines.join('\n'));
      await assert.rejects(backend.notifyConfigChange(), failsWith('no-channel', /back-end channel is closed/));
      assert.equal(await send(R.GET_STATUS, { kind: 'none' }), 0n, 'control requests are still served');
    });
  }

  it('closes the channel on an unsolicited message', async () => {
    await negotiate();
    const { fe } = await setBackendReqFd();
    fe.ack(0n);
    await waitFor('the channel to close', () => fe.closedReason !== undefined);
    assert.equal(backend.state.backendChannel, false);
    assert.equal(ep.closed, false);
    assert.ok(lines.some((l) => /unsolicited message on the back-end channel/.test(l)));
  });

  it('rejects a pending request when the front-end closes the channel', async () => {
    await negotiate();
    const { fe } = await setBackendReqFd();
    const p = backend.notifyConfigChange();
    await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
    fe.close();
    await assert.rejects(p, failsWith('closed', /closed before the reply \(peer closed the connection\)/));
    assert.equal(backend.state.backendChannel, false);
    assert.equal(ep.closed, false);
  });

  it('a second SET_BACKEND_REQ_FD replaces and closes the first channel', async () => {
    await negotiate();
    const first = await setBackendReqFd();
    const p = settled(backend.notifyConfigChange());
    await waitFor('CONFIG_CHANGE_MSG', () => first.fe.received.length === 1);
    const second = await setBackendReqFd();
    assert.equal(second.ack, 0n);
    await assert.rejects(p, failsWith('closed', /replaced/));
    await waitFor('the first channel to close', () => first.fe.closedReason !== undefined);
    assert.equal(isOpen(first.passed), false);
    const q = backend.notifyConfigChange();
    await waitFor('CONFIG_CHANGE_MSG on the new channel', () => second.fe.received.length === 1);
    second.fe.ack(0n);
    await q;
  });

  it('survives a device reset and is closed on teardown, failing what waits', async () => {
    await negotiate();
    const { fe, passed } = await setBackendReqFd();
    await send(R.RESET_DEVICE, { kind: 'none' }, [], NEED_REPLY_FLAG);
    assert.equal(backend.state.backendChannel, true);
    const p = settled(backend.notifyConfigChange());
    await waitFor('CONFIG_CHANGE_MSG', () => fe.received.length === 1);
    await backend.teardown();
    await assert.rejects(p, failsWith('closed', /connection closed/));
    assert.equal(isOpen(passed), false);
    await waitFor('the front-end end to see the hang-up', () => fe.closedReason !== undefined);
    await assert.rejects(backend.notifyConfigChange(), failsWith('no-channel'));
  });
});
