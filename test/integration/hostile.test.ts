// A guest or front-end that breaks the rules: the server refuses or stops the
// offending ring, says so in its log, and keeps serving everything else.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlkFrontend, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VhostUserError, encodeBlkHeader } from '../../src/frontend';
import { native } from '../../src/native/addon';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublk } from '../support/servers';

describe('hostile guests and front-ends', function () {
  this.timeout(30000);
  let dir: string;
  let server: ServerProcess;
  let fe: BlkFrontend | undefined;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-hostile-'));
    const image = path.join(dir, 'disk.img');
    createImage(image, 8 << 20);
    server = await startVublk({ image, socketPath: path.join(dir, 's.sock'), numQueues: 2, args: ['--iothreads', '2'] });
  });
  afterEach(async () => {
    await fe?.disconnect().catch(() => undefined);
    fe = undefined;
  });
  after(async () => {
    assert.equal(await server.stop(), 0, server.output());
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const connect = async (): Promise<BlkFrontend> => (fe = await BlkFrontend.connect({ socketPath: server.socketPath, numQueues: 2 }));
  const stillServes = async (f: BlkFrontend, q = 0): Promise<void> => assert.equal((await f.read(q, 0, 4096)).status, VIRTIO_BLK_S_OK);
  /** Wait for a log record with this msg and fields (see findLogs). */
  const waitForLog = async (msg: string, fields: Record<string, unknown>): Promise<void> => {
    for (let i = 0; i < 100 && server.findLogs(msg, fields).length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(server.findLogs(msg, fields).length > 0, `no "${msg}" record with ${String(Object.entries(fields))}:\n${server.output()}`);
  };

  it('stops a ring whose driver offers a head again while it is in flight, and serves the other queue', async () => {
    const f = await connect();
    const ring = f.queue(1).split;
    const hdr = f.ram.alloc(16);
    const data = f.ram.alloc(65536, 4096);
    const status = f.ram.alloc(1);
    f.ram.write(hdr, encodeBlkHeader(VIRTIO_BLK_T_IN, 0));
    ring.writeDescriptor(100, { addr: hdr, len: 16, flags: VRING_DESC_F_NEXT, next: 101 });
    ring.writeDescriptor(101, { addr: data, len: 65536, flags: VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, next: 102 });
    ring.writeDescriptor(102, { addr: status, len: 1, flags: VRING_DESC_F_WRITE, next: 0 });
    ring.pushAvail(100);
    ring.pushAvail(100);
    ring.kick();
    await waitForLog('virtqueue stopped until the device is reset', { queue: 1, reason: /head 100 made available again while in flight/ });
    await stillServes(f, 0);
  });

  it('refuses a call fd that is not an eventfd, and the ring keeps working', async () => {
    const f = await connect();
    const [a, b] = native.socketpair();
    try {
      await assert.rejects(f.client.setVringCall(0, a, { needReply: true }), (e: Error) => e instanceof VhostUserError && e.code === 'nack');
    } finally {
      native.close(a);
      native.close(b);
    }
    await stillServes(f, 0);
    await waitForLog('request refused', { request: 'SET_VRING_CALL', reason: /not an eventfd/ });
  });

  it('moves a running ring to a new kick fd', async () => {
    const f = await connect();
    await f.replaceKickFd(0);
    await stillServes(f, 0);
    await f.replaceKickFd(0);
    await stillServes(f, 0);
  });

  it('refuses memory regions that are not page-aligned', async () => {
    const f = await connect();
    const fd = native.memfdCreate('odd');
    fs.ftruncateSync(fd, 1 << 20);
    try {
      const region = { guestPhysAddr: 0x40000002, size: 1 << 16, userAddr: 0x7e0000000000, mmapOffset: 0 };
      await assert.rejects(f.client.addMemReg(region, fd, { needReply: true }), (e: Error) => e instanceof VhostUserError && e.code === 'nack');
    } finally {
      native.close(fd);
    }
    await stillServes(f, 1);
  });

  it('survives a front-end that disappears with requests in flight', async () => {
    for (let i = 0; i < 5; i++) {
      const f = await connect();
      const pending = Array.from({ length: 64 }, (_, k) => f.read(k % 2, k * 8, 65536, { indirect: true }).catch(() => undefined));
      await new Promise((r) => setImmediate(r));
      f.client.close();
      await Promise.all(pending);
      await f.disconnect(); // releases our side: ring memory and eventfd watchers
      fe = undefined;
    }
    await stillServes(await connect(), 0);
  });
});
