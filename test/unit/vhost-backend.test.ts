import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { FrontendRequest as R, Message, NEED_REPLY_FLAG, Payload, ProtocolFeature, bit } from '../../protocol';
import { BlkDevice } from '../../src/blk/device';
import { BlkDisk } from '../../src/blk/disk';
import { LocalDataPlane } from '../../src/iothread/local';
import { native } from '../../src/native/addon';
import { Endpoint } from '../../src/transport/endpoint';
import { Logger, setLogSink } from '../../src/util/log';
import { PROTOCOL_FEATURES, VhostBackend } from '../../src/vhost/backend';
import { findLogs, parseLogRecords } from '../support/logs';
import { FakeEndpoint, exchange, isOpen, raw, settle } from '../support/fake-endpoint';
import { MemoryEngine } from '../support/memory-engine';

describe('vhost-user back-end state machine', () => {
  let ep: FakeEndpoint;
  let backend: VhostBackend;
  let lines: string[];
  let restore: (l: string) => void;
  const disk: BlkDisk = {
    fd: -1, kind: 'file', sizeBytes: 1 << 20, readOnly: false, logicalBlockSize: 512, physicalBlockSize: 512,
    minIoSize: 0, optIoSize: 0, direct: false, directAlignment: 512, discard: false, writeZeroes: false, serial: 's',
  };

  beforeEach(async () => {
    lines = [];
    restore = setLogSink((l) => lines.push(l));
    ep = new FakeEndpoint();
    const device = new BlkDevice({ disk, maxQueues: 2, writeback: true });
    const dataPlane = new LocalDataPlane({ type: 'blk', disk, writeback: true, aio: 'threads', lanes: 2 }, new Logger(),
      () => (_n, done, onRoundEnd) => new MemoryEngine(new Uint8Array(1), new Uint8Array(1), done, { onRoundEnd }));
    backend = new VhostBackend(ep as unknown as Endpoint, device, dataPlane, new Logger());
    await send(R.SET_OWNER, { kind: 'none' });
  });
  afterEach(async () => {
    await backend.teardown();
    setLogSink(restore);
  });

  function send(request: number, payload: Payload, fds: number[] = [], flags = 0): Promise<Message | undefined> {
    return exchange(backend, ep, request, payload, fds, flags);
  }
  const u64 = (value: bigint): Payload => ({ kind: 'u64', value });
  const valueOf = (m: Message | undefined): bigint => (m!.payload as { value: bigint }).value;

  async function negotiateReplyAck(): Promise<void> {
    await send(R.SET_PROTOCOL_FEATURES, u64(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG)));
  }

  it('offers the transport and virtio-blk features and the protocol features', async () => {
    const f = valueOf(await send(R.GET_FEATURES, { kind: 'none' }));
    assert.ok(f & bit(32), 'VERSION_1');
    assert.ok(f & bit(28) && f & bit(29) && f & bit(30), 'INDIRECT, EVENT_IDX, PROTOCOL_FEATURES');
    assert.ok(f & bit(12), 'MQ');
    const pf = valueOf(await send(R.GET_PROTOCOL_FEATURES, { kind: 'none' }));
    assert.equal(pf, PROTOCOL_FEATURES);
    for (const b of ['MQ', 'REPLY_ACK', 'CONFIG', 'CONFIGURE_MEM_SLOTS', 'RESET_DEVICE', 'STATUS', 'BACKEND_REQ', 'INFLIGHT_SHMFD'] as const) {
      assert.ok(pf & bit(ProtocolFeature[b]), b);
    }
    assert.equal(valueOf(await send(R.GET_QUEUE_NUM, { kind: 'none' })), 2n);
  });

  it('refuses what changes the device before SET_OWNER, but not negotiation', async () => {
    await negotiateReplyAck();
    await send(R.RESET_OWNER, { kind: 'none' });
    assert.ok(valueOf(await send(R.GET_FEATURES, { kind: 'none' })) > 0n);
    assert.equal(valueOf(await send(R.SET_FEATURES, u64(bit(32)), [], NEED_REPLY_FLAG)), 1n);
    const efd = native.eventfd(0);
    assert.equal(valueOf(await send(R.SET_VRING_CALL, { kind: 'vringFd', index: 0, noFd: false }, [efd], NEED_REPLY_FLAG)), 1n);
    assert.equal(isOpen(efd), false, 'the fd of a refused message is closed');
    assert.ok(findLogs(parseLogRecords(lines.join('\n')), 'request refused', { reason: 'SET_FEATURES before SET_OWNER' }).length === 1, lines.join('\n'));
    await send(R.SET_OWNER, { kind: 'none' });
    assert.equal(valueOf(await send(R.SET_FEATURES, u64(bit(32)), [], NEED_REPLY_FLAG)), 0n);
  });

  it('acks success and failure truthfully with REPLY_ACK', async () => {
    await negotiateReplyAck();
    const offered = valueOf(await send(R.GET_FEATURES, { kind: 'none' }));
    assert.equal(valueOf(await send(R.SET_FEATURES, u64(offered), [], NEED_REPLY_FLAG)), 0n);
    assert.equal(valueOf(await send(R.SET_FEATURES, u64(bit(63)), [], NEED_REPLY_FLAG)), 1n);
    assert.equal(valueOf(await send(R.SET_VRING_NUM, { kind: 'vringState', index: 0, num: 100 }, [], NEED_REPLY_FLAG)), 1n, 'not a power of two');
    assert.equal(valueOf(await send(R.SET_VRING_NUM, { kind: 'vringState', index: 7, num: 128 }, [], NEED_REPLY_FLAG)), 1n, 'queue out of range');
    assert.equal(valueOf(await send(R.SET_VRING_NUM, { kind: 'vringState', index: 1, num: 128 }, [], NEED_REPLY_FLAG)), 0n);
    assert.equal(ep.closed, false);
    assert.ok(findLogs(parseLogRecords(lines), 'request refused', { request: 'SET_FEATURES', reason: /never offered/ }).length > 0, lines.join('\n'));
  });

  it('closes the connection when a request fails and no ack was asked for', async () => {
    await send(R.SET_FEATURES, u64(bit(63)));
    assert.match(ep.closedReason ?? '', /SET_FEATURES failed/);
  });

  it('closes the connection on a malformed message and closes its fds', async () => {
    const fd = native.eventfd(0);
    // SET_VRING_CALL for queue 0 claiming "no fd" yet carrying one.
    backend.receive(raw(R.SET_VRING_CALL, { kind: 'vringFd', index: 0, noFd: true }, [fd]));
    await settle();
    assert.equal(ep.closed, true);
    assert.equal(isOpen(fd), false, 'fd of the malformed message was closed');
    assert.ok(findLogs(parseLogRecords(lines), /^malformed message/, { request: 'SET_VRING_CALL' }).length > 0, lines.join('\n'));
  });

  it('closes fds of vring messages for queues out of range', async () => {
    await negotiateReplyAck();
    const fd = native.eventfd(0);
    const m = await send(R.SET_VRING_KICK, { kind: 'vringFd', index: 5, noFd: false }, [fd], NEED_REPLY_FLAG);
    assert.equal(valueOf(m), 1n);
    assert.equal(isOpen(fd), false);
  });

  it('maps memory regions, refuses overlaps and translates ring addresses through them', async () => {
    await negotiateReplyAck();
    const mk = (size: number): number => { const fd = native.memfdCreate('t'); fs.ftruncateSync(fd, size); return fd; };
    const region = { guestPhysAddr: 0, size: 1 << 20, userAddr: 0x7f0000000000, mmapOffset: 0 };
    const add = (r: typeof region) => send(R.ADD_MEM_REG, { kind: 'memoryRegion', region: r }, [mk(1 << 20)], NEED_REPLY_FLAG);
    assert.equal(valueOf(await add(region)), 0n);
    assert.equal(valueOf(await add({ ...region, guestPhysAddr: 0x80000, userAddr: 0x7f1000000000 })), 1n, 'overlap');
    assert.equal(valueOf(await add({ ...region, guestPhysAddr: 1 << 20, size: 2 << 20, userAddr: 0x7f2000000000 })), 1n, 'region larger than its fd');
    assert.equal(backend.state.regions, 1);

    await send(R.SET_VRING_NUM, { kind: 'vringState', index: 0, num: 64 });
    const addr = (d: number) => ({ kind: 'vringAddr' as const, index: 0, flags: 0, descUserAddr: d, availUserAddr: d + 0x1000, usedUserAddr: d + 0x2000, logGuestAddr: 0 });
    assert.equal(valueOf(await send(R.SET_VRING_ADDR, addr(0x7f0000000000 + 0x10000), [], NEED_REPLY_FLAG)), 0n);
    assert.equal(valueOf(await send(R.SET_VRING_ADDR, addr(0x7f0000000000 + (1 << 20) - 0x1000), [], NEED_REPLY_FLAG)), 1n, 'ring past the region');
    assert.equal(valueOf(await send(R.SET_VRING_ADDR, addr(0x1000), [], NEED_REPLY_FLAG)), 1n, 'not a front-end address');

    const rem = await send(R.REM_MEM_REG, { kind: 'memoryRegion', region: { ...region, guestPhysAddr: 0x200000 } }, [], NEED_REPLY_FLAG);
    assert.equal(valueOf(rem), 1n, 'no such region');
    assert.equal(valueOf(await send(R.REM_MEM_REG, { kind: 'memoryRegion', region }, [], NEED_REPLY_FLAG)), 0n);
    assert.equal(backend.state.regions, 0);
  });

  it('serves config space and lets the guest toggle the write cache', async () => {
    const m = await send(R.GET_CONFIG, { kind: 'config', offset: 0, size: 60, flags: 0, data: new Uint8Array(60) });
    const data = (m!.payload as { data: Uint8Array }).data;
    assert.equal(data.length, 60);
    const v = new DataView(data.buffer, data.byteOffset);
    assert.equal(v.getUint32(0, true), (1 << 20) / 512, 'capacity in sectors');
    assert.equal(v.getUint32(20, true), 512, 'blk_size');
    assert.equal(v.getUint16(34, true), 2, 'num_queues');
    assert.equal(data[32], 1, 'writeback');
    await negotiateReplyAck();
    assert.equal(valueOf(await send(R.SET_CONFIG, { kind: 'config', offset: 32, size: 1, flags: 0, data: new Uint8Array([0]) }, [], NEED_REPLY_FLAG)), 0n);
    const after = await send(R.GET_CONFIG, { kind: 'config', offset: 32, size: 1, flags: 0, data: new Uint8Array(1) });
    assert.equal((after!.payload as { data: Uint8Array }).data[0], 0);
    assert.equal(valueOf(await send(R.SET_CONFIG, { kind: 'config', offset: 0, size: 8, flags: 0, data: new Uint8Array(8) }, [], NEED_REPLY_FLAG)), 1n, 'capacity is read-only');
  });

  it('stores the device status and refuses requests it does not implement', async () => {
    await negotiateReplyAck();
    await send(R.SET_STATUS, u64(0x0fn));
    assert.equal(valueOf(await send(R.GET_STATUS, { kind: 'none' })), 0x0fn);
    assert.equal(valueOf(await send(R.SET_VRING_ENDIAN, { kind: 'vringState', index: 0, num: 0 }, [], NEED_REPLY_FLAG)), 1n);
    assert.ok(findLogs(parseLogRecords(lines), 'request refused', { request: 'SET_VRING_ENDIAN', reason: /not supported/ }).length > 0, lines.join('\n'));
  });
  describe('in-flight region (GET/SET_INFLIGHT_FD)', () => {
    const inflight = (numQueues: number, queueSize: number, mmapSize = 0, mmapOffset = 0): Payload =>
      ({ kind: 'inflight', mmapSize, mmapOffset, numQueues, queueSize });
    const memfd = (size: number): number => { const fd = native.memfdCreate('t'); fs.ftruncateSync(fd, size); return fd; };
    const refusals = () => findLogs(parseLogRecords(lines), 'request refused', { request: 'SET_INFLIGHT_FD' });

    async function negotiate(): Promise<void> {
      await send(R.SET_PROTOCOL_FEATURES, u64(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.INFLIGHT_SHMFD)));
    }

    it('GET_INFLIGHT_FD answers with a zeroed memfd sized as libvhost-user sizes it, headers naming the queue size', async () => {
      await negotiate();
      const m = await send(R.GET_INFLIGHT_FD, inflight(2, 128));
      assert.deepEqual(m!.payload, inflight(2, 128, 4224, 0));
      assert.equal(m!.fds.length, 1);
      const fd = m!.fds[0];
      assert.equal(fs.fstatSync(fd).size, 4224);
      const bytes = Buffer.alloc(4224);
      fs.readSync(fd, bytes, 0, 4224, 0);
      for (const q of [0, 1]) {
        assert.equal(bytes.readUInt16LE(q * 2112 + 8), 0, 'version 0: blank until the ring starts');
        assert.equal(bytes.readUInt16LE(q * 2112 + 10), 128, 'desc_num');
        bytes.writeUInt16LE(0, q * 2112 + 10);
      }
      assert.ok(bytes.every((b) => b === 0), 'zero-filled');
    });

    it('GET_INFLIGHT_FD that cannot be served answers mmap_size 0 without an fd, and says why', async () => {
      let m = await send(R.GET_INFLIGHT_FD, inflight(1, 128));
      assert.deepEqual(m!.payload, inflight(1, 128), 'not negotiated');
      assert.deepEqual(m!.fds, []);
      await negotiate();
      for (const [q, s] of [[3, 128], [0, 128], [1, 100], [1, 2048]]) {
        m = await send(R.GET_INFLIGHT_FD, inflight(q, s));
        assert.equal((m!.payload as { mmapSize: number }).mmapSize, 0, `${q} queues of ${s}`);
      }
      const logged = findLogs(parseLogRecords(lines), /^cannot provide an in-flight region/);
      assert.equal(logged.length, 5, lines.join('\n'));
      assert.match(String(logged[0].reason), /INFLIGHT_SHMFD/);
      assert.match(String(logged[1].reason), /3 queues/);
      assert.match(String(logged[3].reason), /power of two/);
      assert.equal(ep.closed, false);
    });

    it('SET_INFLIGHT_FD adopts a region that fits and refuses, with a log line, one that does not', async () => {
      await negotiate();
      const ack = async (p: Payload, fd: number): Promise<bigint> => valueOf(await send(R.SET_INFLIGHT_FD, p, [fd], NEED_REPLY_FLAG));
      assert.equal(await ack(inflight(2, 128, 4224), memfd(4224)), 0n);
      const bad: Array<[Payload, number, RegExp]> = [
        [inflight(2, 128, 4223), 4224, /mmap_size 4223 is less than the 4224 bytes/],
        [inflight(2, 128, 4224, 4096), 4224, /beyond the end of the fd/],
        [inflight(2, 128, 4224, 4), 8192, /not 8-byte aligned/],
        [inflight(3, 128, 6336), 6336, /3 queues asked for/],
        [inflight(1, 96, 4096), 4096, /power of two/],
      ];
      for (const [p, size, why] of bad) {
        const fd = memfd(size);
        assert.equal(await ack(p, fd), 1n, String(why));
        assert.equal(isOpen(fd), false, `${why}: fd closed`);
        assert.match(String(refusals().at(-1)?.reason), why);
      }
      // A region laid out for another queue size is not taken for this one.
      const fd = memfd(4224);
      const header = Buffer.alloc(4);
      header.writeUInt16LE(1, 0); // version 1
      header.writeUInt16LE(64, 2); // desc_num 64
      fs.writeSync(fd, header, 0, 4, 8);
      assert.equal(await ack(inflight(2, 128, 4224), fd), 1n);
      assert.match(String(refusals().at(-1)?.reason), /laid out for 64 descriptors/);
      // Without REPLY_ACK (as QEMU sends it) a refusal hangs up.
      backend.receive(raw(R.SET_INFLIGHT_FD, inflight(2, 128, 100), [memfd(4224)]));
      await settle();
      assert.match(ep.closedReason ?? '', /SET_INFLIGHT_FD failed/);
    });

    it('SET_INFLIGHT_FD maps a region at a page-unaligned offset', async () => {
      await negotiate();
      const fd = memfd(8192);
      assert.equal(valueOf(await send(R.SET_INFLIGHT_FD, inflight(1, 128, 2112, 1024), [fd], NEED_REPLY_FLAG)), 0n);
      const header = Buffer.alloc(2);
      fs.readSync(fd, header, 0, 2, 1024 + 10);
      assert.equal(header.readUInt16LE(0), 128, 'desc_num written at the offset');
    });
  });
});
