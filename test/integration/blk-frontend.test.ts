// The real server process driven by our own front-end over a real socket and
// memfd guest memory: setup sequence, I/O on both queues, error statuses,
// pipelining, ring stop, reconnect. Bytes are checked in the image file too.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  FrontendRequest, ProtocolFeature, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, bit,
  encodeHeader, hasBit,
} from '../../protocol';
import {
  BlkFrontend, FRONTEND_PROTOCOL_FEATURES, SECTOR_SIZE, UNTOUCHED, VIRTIO_BLK_F_LIFETIME, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VRING_DESC_F_NEXT, VhostUserClient, VhostUserError,
  encodeBlkHeader,
} from '../../src/frontend';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublkDaemon, startVublkWithArgs } from '../support/servers';
import { processStopped, waitFor } from '../support/wait';

const IMAGE_SIZE = 16 << 20;
const SERIAL = 'vublk-fe-serial-01';

interface Server extends ServerProcess {
  image: string;
  log(): string;
}

async function startServer(dir: string, name: string, args: string[], imageSize = IMAGE_SIZE): Promise<Server> {
  const image = path.join(dir, `${name}.img`);
  const socketPath = path.join(dir, `${name}.sock`);
  createImage(image, imageSize);
  const s = await startVublkWithArgs(['serve', '--socket', socketPath, ...args, image], socketPath);
  return { ...s, image, log: s.output };
}

/** Connect, retrying while the server still tears down the previous front-end (it refuses a second one). */
async function connectRetrying(socketPath: string, o: Partial<Parameters<typeof BlkFrontend.connect>[0]> = {}): Promise<BlkFrontend> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await BlkFrontend.connect({ socketPath, numQueues: 2, ...o });
    } catch (e) {
      if (!(e instanceof VhostUserError && e.code === 'closed') || attempt >= 50) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

function readImage(image: string, offset: number, len: number): Uint8Array {
  const fd = fs.openSync(image, 'r');
  try {
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, offset);
    return new Uint8Array(buf);
  } finally {
    fs.closeSync(fd);
  }
}

function sha(image: string): string {
  return require('node:crypto').createHash('sha256').update(fs.readFileSync(image)).digest('hex');
}

describe('BlkFrontend against vublk serve', function () {
  this.timeout(60000);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-fe-')); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('read-write export with 2 queues', () => {
    let srv: Server;
    let fe: BlkFrontend;
    const capacity = IMAGE_SIZE / SECTOR_SIZE;

    before(async () => {
      srv = await startServer(dir, 'rw', ['--num-queues', '2', '--serial', SERIAL]);
      fe = await BlkFrontend.connect({ socketPath: srv.socketPath, numQueues: 2 });
    });
    after(async () => {
      await fe?.disconnect();
      await srv?.stop();
    });

    it('negotiates features and reads the config space', () => {
      for (const b of [VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_MQ]) {
        assert.ok(hasBit(fe.negotiatedFeatures, b), `feature bit ${b} negotiated`);
      }
      assert.ok(!hasBit(fe.offeredFeatures, VIRTIO_BLK_F_RO));
      for (const p of [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG, ProtocolFeature.CONFIGURE_MEM_SLOTS]) {
        assert.ok(hasBit(fe.protocolFeatures, p), `protocol feature ${p} negotiated`);
      }
      assert.equal(fe.maxQueues, 2);
      assert.equal(fe.config.capacity, capacity);
      assert.equal(fe.config.blkSize, 512);
      assert.equal(fe.config.numQueues, 2);
      assert.ok(fe.config.segMax >= 1);
    });

    it('reports the device status set during setup', async () => {
      // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
      assert.equal(await fe.client.getStatus(), 0x0f);
    });

    it('toggles the write cache through config space (config-wce)', async () => {
      const wce = fe.config.writeback;
      await fe.client.setConfig(32, new Uint8Array([wce ? 0 : 1]));
      assert.deepEqual(await fe.client.getConfig(32, 1), new Uint8Array([wce ? 0 : 1]));
      await fe.client.setConfig(32, new Uint8Array([wce]));
      await assert.rejects(fe.client.setConfig(0, new Uint8Array(8)), (e: unknown) => e instanceof VhostUserError && e.code === 'nack');
    });

    it('completes a hostile descriptor loop with length 0 and keeps the queue working', async () => {
      const q = fe.queue(1);
      const scratch = fe.ram.alloc(16);
      // The highest descriptors: add() hands out low ones first, so they do not collide.
      q.split.writeDescriptor(127, { addr: scratch, len: 16, flags: VRING_DESC_F_NEXT, next: 126 });
      q.split.writeDescriptor(126, { addr: scratch, len: 16, flags: VRING_DESC_F_NEXT, next: 127 });
      q.split.pushAvail(127);
      q.ring.kick();
      for (let i = 0; i < 100 && q.unknownUsed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(q.unknownUsed, [{ id: 127, len: 0, known: false }]);
      q.unknownUsed.length = 0;
      fe.ram.free(scratch);
      assert.equal((await fe.read(1, 0, 512)).status, VIRTIO_BLK_S_OK);
    });

    it('writes and reads back at several sectors on both queues; the bytes land in the image', async () => {
      let seed = 1;
      for (const q of [0, 1]) {
        for (const [sector, len] of [[0, 512], [1, 4096], [7, 1536], [2048 + q * 64, 65536], [capacity - 8, 4096]]) {
          const data = pattern(len, seed++);
          const w = await fe.write(q, sector, data);
          assert.deepEqual(w, { status: VIRTIO_BLK_S_OK, usedLen: 1 }, `write q${q} sector ${sector}`);
          const r = await fe.read(q, sector, len);
          assert.equal(r.status, VIRTIO_BLK_S_OK);
          assert.equal(r.usedLen, len + 1, 'used.len counts data and status');
          assert.deepEqual(r.data, data, `read back q${q} sector ${sector}`);
          assert.deepEqual(readImage(srv.image, sector * SECTOR_SIZE, len), data, `image bytes at sector ${sector}`);
        }
      }
    });

    it('reads what the other queue wrote', async () => {
      const data = pattern(8192, 99);
      assert.equal((await fe.write(0, 4096, data)).status, VIRTIO_BLK_S_OK);
      assert.deepEqual((await fe.read(1, 4096, 8192)).data, data);
    });

    it('handles scatter-gather and indirect chains', async () => {
      const data = pattern(12288, 7);
      assert.equal((await fe.write(0, 300, data, { segments: 5 })).status, VIRTIO_BLK_S_OK);
      const r = await fe.read(1, 300, 12288, { segments: 7, indirect: true });
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.deepEqual(r.data, data);
      assert.equal((await fe.write(1, 400, data, { indirect: true, segments: 3 })).status, VIRTIO_BLK_S_OK);
      assert.deepEqual(readImage(srv.image, 400 * SECTOR_SIZE, data.length), data);
    });

    it('FLUSH completes with OK', async () => {
      assert.deepEqual(await fe.flush(0), { status: VIRTIO_BLK_S_OK, usedLen: 1 });
      assert.deepEqual(await fe.flush(1), { status: VIRTIO_BLK_S_OK, usedLen: 1 });
    });

    it('GET_ID returns the serial', async () => {
      const r = await fe.getId(0);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.equal(r.id, SERIAL);
      assert.equal(r.bytes.length, 20);
      assert.equal(r.bytes[SERIAL.length], 0, 'a serial shorter than 20 bytes is NUL-terminated');
      assert.equal(r.usedLen, 21, 'used.len: 20 id bytes and the status');
    });

    it('GET_LIFETIME is UNSUPP when the export has no lifetime figures, and the feature is not offered', async () => {
      assert.ok(!hasBit(fe.offeredFeatures, VIRTIO_BLK_F_LIFETIME));
      const r = await fe.getLifetime(1);
      assert.equal(r.status, VIRTIO_BLK_S_UNSUPP);
      assert.equal(r.usedLen, 1);
    });

    it('a read or write past the end is IOERR and touches nothing', async () => {
      const before = sha(srv.image);
      for (const [sector, len] of [[capacity, 512], [capacity - 1, 1024], [capacity + 1000, 4096], [2 ** 52, 512]]) {
        const r = await fe.read(0, sector, len);
        assert.equal(r.status, VIRTIO_BLK_S_IOERR, `read at ${sector}+${len}`);
        assert.equal(r.usedLen, 1, 'only the status byte was written');
        assert.ok(r.data.every((b) => b === UNTOUCHED), `read buffer at ${sector} untouched`);
        const w = await fe.write(1, sector, pattern(len, 5));
        assert.equal(w.status, VIRTIO_BLK_S_IOERR, `write at ${sector}+${len}`);
      }
      assert.equal(fs.statSync(srv.image).size, IMAGE_SIZE, 'the image did not grow');
      assert.equal(sha(srv.image), before, 'the image is unchanged');
    });

    it('an unknown request type is UNSUPP', async () => {
      const c = await fe.submit(0, [{ readable: encodeBlkHeader(99, 0) }, { writable: 1, fill: 0xff }]);
      assert.equal(c.status, VIRTIO_BLK_S_UNSUPP);
      assert.equal(c.usedLen, 1);
    });

    it('keeps 64 requests in flight on one queue', async () => {
      const q = fe.queue(0);
      const kicksBefore = q.ring.kicks;
      const datas = Array.from({ length: 64 }, (_, i) => pattern(4096, 1000 + i));
      const writes = datas.map((d, i) => fe.write(0, 8192 + i * 8, d, { indirect: true }));
      assert.equal(q.inFlight, 64);
      assert.equal(q.split.outstanding, 64, 'all 64 chains are in the ring at once');
      const ws = await Promise.all(writes);
      assert.ok(ws.every((w) => w.status === VIRTIO_BLK_S_OK));
      assert.ok(q.ring.kicks - kicksBefore <= 2, `one kick for the batch, got ${q.ring.kicks - kicksBefore}`);
      const rs = await Promise.all(datas.map((_, i) => fe.read(0, 8192 + i * 8, 4096, { indirect: true })));
      rs.forEach((r, i) => {
        assert.equal(r.status, VIRTIO_BLK_S_OK);
        assert.deepEqual(r.data, datas[i], `request ${i}`);
      });
    });

    it('queues requests beyond the ring capacity until descriptors free up', async () => {
      // 100 direct 3-descriptor chains do not fit a 128-entry ring at once.
      const rs = await Promise.all(Array.from({ length: 100 }, (_, i) => fe.read(1, 8192 + (i % 64) * 8, 4096)));
      assert.ok(rs.every((r) => r.status === VIRTIO_BLK_S_OK));
      assert.deepEqual(rs[70].data, pattern(4096, 1000 + 6));
    });

    it('GET_VRING_BASE returns the next available index of each ring after I/O', async () => {
      const expected = fe.queues.map((q) => q.split.availIdx);
      assert.ok(expected.every((n) => n > 0));
      assert.deepEqual(await fe.stop(), expected);
    });
  });

  describe('--logical-block-size 4096', () => {
    let srv: Server;
    let fe: BlkFrontend;
    before(async () => {
      srv = await startServer(dir, 'lbs', ['--num-queues', '1', '--logical-block-size', '4096']);
      fe = await BlkFrontend.connect({ socketPath: srv.socketPath, numQueues: 1 });
    });
    after(async () => {
      await fe?.disconnect();
      await srv?.stop();
    });

    it('advertises blk_size 4096 and serves aligned requests', async () => {
      assert.equal(fe.config.blkSize, 4096);
      const data = pattern(8192, 3);
      assert.equal((await fe.write(0, 8, data)).status, VIRTIO_BLK_S_OK);
      assert.deepEqual((await fe.read(0, 8, 8192)).data, data);
    });

    it('a misaligned length or sector is IOERR', async () => {
      const before = sha(srv.image);
      assert.equal((await fe.read(0, 8, 512)).status, VIRTIO_BLK_S_IOERR, 'length 512');
      assert.equal((await fe.read(0, 8, 4096 + 512)).status, VIRTIO_BLK_S_IOERR, 'length 4608');
      assert.equal((await fe.read(0, 1, 4096)).status, VIRTIO_BLK_S_IOERR, 'sector 1');
      assert.equal((await fe.write(0, 8, pattern(1024, 1))).status, VIRTIO_BLK_S_IOERR, 'write length 1024');
      assert.equal((await fe.write(0, 3, pattern(4096, 1))).status, VIRTIO_BLK_S_IOERR, 'write sector 3');
      assert.equal(sha(srv.image), before);
    });
  });

  describe('x-vublk-lifetime on a qemu-storage-daemon command line', () => {
    let srv: Server;
    let fe: BlkFrontend;
    before(async () => {
      const image = path.join(dir, 'life.img');
      const socketPath = path.join(dir, 'life.sock');
      createImage(image, IMAGE_SIZE);
      const s = await startVublkDaemon([
        '--blockdev', `driver=file,node-name=d,filename=${image}`,
        '--export', `type=vhost-user-blk,id=life,node-name=d,addr.type=unix,addr.path=${socketPath},writable=on,` +
          'x-vublk-serial=worn-disk,x-vublk-lifetime.pre-eol-info=warning,x-vublk-lifetime.typ-a=3,x-vublk-lifetime.typ-b=11',
      ], [socketPath]);
      srv = { ...s, image, log: s.output };
      fe = await BlkFrontend.connect({ socketPath, numQueues: 1 });
    });
    after(async () => {
      await fe?.disconnect();
      await srv?.stop();
    });

    it('offers VIRTIO_BLK_F_LIFETIME and answers GET_LIFETIME with the figures; GET_ID with the serial', async () => {
      assert.ok(hasBit(fe.negotiatedFeatures, VIRTIO_BLK_F_LIFETIME));
      assert.deepEqual(await fe.getLifetime(0), { status: VIRTIO_BLK_S_OK, usedLen: 7, preEolInfo: 2, estTypA: 3, estTypB: 11 });
      assert.equal((await fe.getId(0)).id, 'worn-disk');
    });
  });

  describe('--readonly', () => {
    let srv: Server;
    let fe: BlkFrontend;
    before(async () => {
      srv = await startServer(dir, 'ro', ['--num-queues', '1', '--readonly']);
      fe = await BlkFrontend.connect({ socketPath: srv.socketPath, numQueues: 1 });
    });
    after(async () => {
      await fe?.disconnect();
      await srv?.stop();
    });

    it('offers VIRTIO_BLK_F_RO, fails writes with IOERR and leaves the image unchanged', async () => {
      assert.ok(hasBit(fe.negotiatedFeatures, VIRTIO_BLK_F_RO));
      const before = sha(srv.image);
      assert.equal((await fe.write(0, 0, pattern(4096, 2))).status, VIRTIO_BLK_S_IOERR);
      const r = await fe.read(0, 0, 4096);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.ok(r.data.every((b) => b === 0));
      assert.equal(sha(srv.image), before);
    });
  });

  describe('connections', () => {
    let srv: Server;
    before(async () => { srv = await startServer(dir, 'conn', ['--num-queues', '2']); });
    after(async () => { await srv?.stop(); });

    it('accepts the next front-end after a disconnect; data persists', async () => {
      const data = pattern(4096, 42);
      const fe1 = await connectRetrying(srv.socketPath);
      assert.equal((await fe1.write(1, 16, data)).status, VIRTIO_BLK_S_OK);
      await fe1.disconnect();
      const fe2 = await connectRetrying(srv.socketPath);
      try {
        assert.deepEqual((await fe2.read(0, 16, 4096)).data, data);
      } finally {
        await fe2.disconnect();
      }
    });

    it('works with SET_MEM_TABLE when CONFIGURE_MEM_SLOTS is not negotiated, and without REPLY_ACK', async () => {
      for (const drop of [ProtocolFeature.CONFIGURE_MEM_SLOTS, ProtocolFeature.REPLY_ACK]) {
        const fe = await connectRetrying(srv.socketPath, { protocolFeatures: FRONTEND_PROTOCOL_FEATURES & ~bit(drop) });
        try {
          assert.ok(!hasBit(fe.protocolFeatures, drop));
          const data = pattern(2048, drop);
          assert.equal((await fe.write(0, 100, data)).status, VIRTIO_BLK_S_OK);
          assert.deepEqual((await fe.read(1, 100, 2048)).data, data);
        } finally {
          await fe.disconnect();
        }
      }
    });

    it('works without EVENT_IDX and INDIRECT_DESC', async () => {
      const features = (await connectRetrying(srv.socketPath).then(async (fe) => {
        const f = fe.negotiatedFeatures;
        await fe.disconnect();
        return f;
      })) & ~(bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC));
      const fe = await connectRetrying(srv.socketPath, { features });
      try {
        const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => fe.write(i % 2, 200 + i, pattern(512, i))));
        assert.ok(rs.every((r) => r.status === VIRTIO_BLK_S_OK));
        assert.deepEqual((await fe.read(0, 200, 512 * 40)).data.subarray(512 * 39), pattern(512, 39));
      } finally {
        await fe.disconnect();
      }
    });

    it('a refused request with REPLY_ACK rejects with a nack, and the connection stays usable', async () => {
      const fe = await connectRetrying(srv.socketPath);
      try {
        await assert.rejects(fe.client.setVringNum(0, 3), (e: unknown) => e instanceof VhostUserError && e.code === 'nack');
        assert.equal(await fe.client.getQueueNum(), 2);
      } finally {
        await fe.disconnect();
      }
    });

    it('a connection closed by the server rejects the pending request and later ones', async () => {
      let client: VhostUserClient | undefined;
      for (let attempt = 0; client === undefined; attempt++) {
        const c = await VhostUserClient.connect(srv.socketPath);
        try {
          await c.getFeatures();
          client = c;
        } catch (e) {
          if (attempt > 50) throw e;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      // Version bits 0: the server must hang up.
      const bad = encodeHeader(FrontendRequest.GET_FEATURES, 0, 0);
      bad[4] = 0;
      const reply = client.sendRaw(bad, [], { expectReply: true, request: FrontendRequest.GET_FEATURES });
      await assert.rejects(reply, (e: unknown) => e instanceof VhostUserError && e.code === 'closed' && /closed by the back-end/.test(e.message));
      assert.match(await client.closed, /peer closed/);
      await assert.rejects(client.getFeatures(), (e: unknown) => e instanceof VhostUserError && e.code === 'closed');
    });

    it('I/O in flight when the server dies is rejected, not left hanging', async () => {
      const own = await startServer(dir, 'dying', ['--num-queues', '1']);
      const fe = await BlkFrontend.connect({ socketPath: own.socketPath, numQueues: 1 });
      try {
        assert.equal((await fe.read(0, 0, 512)).status, VIRTIO_BLK_S_OK);
        // Stopped first, so the request is surely still in flight when the server dies.
        own.proc.kill('SIGSTOP');
        // The signal is only queued by kill(): wait until every thread has stopped.
        await waitFor('the server to stop', () => processStopped(own.proc.pid!));
        const pending = fe.read(0, 0, 512);
        await new Promise((r) => setTimeout(r, 100));
        own.proc.kill('SIGKILL');
        await assert.rejects(pending, /connection closed/);
        await assert.rejects(fe.read(0, 0, 512), /connection closed/);
      } finally {
        await fe.disconnect();
        await own.stop();
      }
    });
  });
});
