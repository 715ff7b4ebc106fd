// Images in tmpfs run their I/O inline on the iothread (storage/inline.ts):
// chosen when aio is left to vublk, not when io_uring is asked for, and it
// reads, writes, flushes and discards like the other engines.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bit } from '../../protocol';
import { BlkFrontend, DRIVER_FEATURES, SECTOR_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { ServerProcess, startVublkWithArgs } from '../support/servers';

const SHM = '/dev/shm';
const MiB = 1 << 20;

describe('inline engine for memory-backed images', function () {
  this.timeout(30000);
  let dir: string;
  let server: ServerProcess | undefined;
  let fe: BlkFrontend | undefined;

  before(function () {
    if (!fs.existsSync(SHM) || fs.statfsSync(SHM).type !== 0x01021994) this.skip();
  });
  beforeEach(() => { dir = fs.mkdtempSync(path.join(SHM, 'vublk-inline-')); });
  afterEach(async () => {
    await fe?.disconnect();
    fe = undefined;
    if (server !== undefined) assert.equal(await server.stop(), 0, server.output());
    server = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function serve(args: string[]): Promise<string> {
    const image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, Buffer.alloc(0));
    fs.truncateSync(image, 16 * MiB);
    const sock = path.join(dir, 's.sock');
    server = await startVublkWithArgs(['serve', '--socket', sock, '--num-queues', '2', '--iothreads', '2', ...args, image], sock);
    fe = await BlkFrontend.connect({ socketPath: sock, numQueues: 2, features: DRIVER_FEATURES | bit(VIRTIO_BLK_F_DISCARD) });
    return image;
  }

  it('is chosen by default in tmpfs and serves reads, writes, flushes and discards', async () => {
    const image = await serve([]);
    assert.equal(server!.findLogs('iothreads attached', { engine: 'inline' }).length, 1, server!.output());
    const writes: Array<[number, Buffer]> = [];
    const pending: Array<Promise<unknown>> = [];
    for (let i = 0; i < 64; i++) {
      const data = randomBytes(4096 * (1 + (i % 4)));
      const sector = i * 64;
      writes.push([sector, data]);
      pending.push(fe!.write(i % 2, sector, data).then((r) => assert.equal(r.status, VIRTIO_BLK_S_OK)));
    }
    await Promise.all(pending);
    assert.equal((await fe!.flush(0)).status, VIRTIO_BLK_S_OK);
    const onDisk = fs.readFileSync(image);
    for (const [sector, data] of writes) {
      assert.ok(onDisk.subarray(sector * SECTOR_SIZE, sector * SECTOR_SIZE + data.length).equals(data), `sector ${sector} on the host`);
      assert.deepEqual(Buffer.from((await fe!.read((sector / 64) % 2, sector, data.length)).data), data, `sector ${sector} read back`);
    }
    assert.equal((await fe!.discard(1, 0, 64)).status, VIRTIO_BLK_S_OK);
    assert.ok(fs.readFileSync(image).subarray(0, 64 * SECTOR_SIZE).equals(Buffer.alloc(64 * SECTOR_SIZE)), 'discarded range reads as zeros');
  });

  it('is not used when io_uring is asked for', async () => {
    await serve(['--aio', 'io_uring']);
    assert.equal(server!.findLogs('iothreads attached', { engine: 'io_uring' }).length, 1, server!.output());
  });
});
