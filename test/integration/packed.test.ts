// Packed virtqueues (VIRTIO_F_RING_PACKED) end to end: the real server driven by
// our front-end's packed driver over a real socket. Data and status bytes on
// both queues, direct and indirect chains, many laps of the ring with requests
// pipelined, the vring base GET_VRING_BASE reports (both positions with their
// wrap counters). Bytes checked in the image.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VIRTIO_F_RING_PACKED, hasBit } from '../../protocol';
import { BlkFrontend, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { PackedDriverQueue } from '../../src/frontend/packed-driver-queue';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublkWithArgs } from '../support/servers';

const IMAGE_SIZE = 8 << 20;

function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (seed * 131 + i * 7 + (i >> 9)) & 0xff;
  return out;
}

describe('packed virtqueues through the server', function () {
  this.timeout(60000);
  let dir: string;
  let image: string;
  let socketPath: string;
  let server: ServerProcess | undefined;
  let fe: BlkFrontend | undefined;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-packed-'));
    image = path.join(dir, 'disk.img');
    socketPath = path.join(dir, 'vublk.sock');
    createImage(image, IMAGE_SIZE);
    server = await startVublkWithArgs(['serve', '--socket', socketPath, '--num-queues', '2', image], socketPath);
  });
  after(async () => {
    await fe?.disconnect();
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('negotiates packed rings and serves reads, writes, flushes and GET_ID on both queues, direct and indirect', async () => {
    fe = await BlkFrontend.connect({ socketPath, numQueues: 2, queueSize: 64, packed: true });
    assert.ok(hasBit(fe.negotiatedFeatures, VIRTIO_F_RING_PACKED));
    assert.ok(fe.queue(0).ring instanceof PackedDriverQueue);
    for (const [q, indirect] of [[0, false], [1, true]] as const) {
      const data = pattern(64 * 1024, q + 1);
      assert.equal((await fe.write(q, 256 * (q + 1), data, { indirect })).status, VIRTIO_BLK_S_OK);
      const r = await fe.read(q, 256 * (q + 1), data.length, { indirect });
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.deepEqual(r.data, data);
      assert.equal((await fe.flush(q)).status, VIRTIO_BLK_S_OK);
      assert.equal((await fe.getId(q)).status, VIRTIO_BLK_S_OK);
      const onDisk = fs.readFileSync(image).subarray(512 * 256 * (q + 1), 512 * 256 * (q + 1) + data.length);
      assert.deepEqual(new Uint8Array(onDisk), data);
    }
  });

  it('goes round the ring many times with requests pipelined, and reports both wrap counters in the vring base', async () => {
    const f = fe!;
    // 64 slots per queue; 600 requests of 1-3 descriptors each go round about 25 times.
    for (let round = 0; round < 6; round++) {
      const writes = Array.from({ length: 100 }, (_, i) => f.write(i % 2, 8 * (i + 100 * round), pattern(4096, i + round), { indirect: i % 3 === 0 }));
      for (const w of await Promise.all(writes)) assert.equal(w.status, VIRTIO_BLK_S_OK);
    }
    const img = fs.readFileSync(image);
    for (let i = 0; i < 100; i++) {
      const at = 512 * 8 * (i + 500);
      assert.deepEqual(new Uint8Array(img.subarray(at, at + 4096)), pattern(4096, i + 5), `block ${i + 500}`);
    }
    const rings = f.queues.map((q) => q.ring as PackedDriverQueue);
    const bases = await f.stop();
    for (let q = 0; q < 2; q++) {
      assert.equal(bases[q], rings[q].base, `queue ${q}: GET_VRING_BASE = the driver's positions and wrap counters`);
      assert.equal(bases[q] >>> 16, bases[q] & 0xffff, 'nothing in flight: used = avail');
    }
  });
});
