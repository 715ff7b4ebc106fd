// A backing store that fills up, for real: an image on a small tmpfs, larger
// than the tmpfs, served by the real server. Writes fail with IOERR once the
// filesystem is full, one by one; what was acknowledged reads back, reads go
// on, the server says ENOSPC with export, queue and sector, the counters show
// it, and another export of the same process (same iothread) is unaffected.
// Needs to mount a tmpfs (root or CAP_SYS_ADMIN); skipped, saying why, otherwise.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bit } from '../../protocol';
import { BlkFrontend, DRIVER_FEATURES, SECTOR_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from '../../src/frontend';
import type { DaemonStats } from '../../src/daemon/metrics';
import { QmpClient } from '../../src/qmp/client';
import { fetchText } from '../support/http';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublkDaemon } from '../support/servers';
import { waitFor } from '../support/wait';

const MiB = 1 << 20;
const TMPFS_BYTES = 8 * MiB;
const IMAGE_BYTES = 64 * MiB;
const CHUNK = 256 * 1024;

function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** Mount a tmpfs of `bytes` on `dir`; the reason it cannot, or undefined when mounted. */
function mountTmpfs(dir: string, bytes: number): string | undefined {
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes},mode=0700`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.error !== undefined) return `cannot run mount: ${r.error.message}`;
  if (r.status !== 0) return `mounting a tmpfs is not permitted here: ${r.stderr.trim() || `mount exited ${r.status}`}`;
  return undefined;
}

function unmount(dir: string): void {
  // Lazy as a fallback: a test that failed half-way must not leave the mount behind.
  if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
}

describe('storage faults: a full filesystem under a served image', function () {
  this.timeout(60000);
  let dir: string;
  let full: string;
  let mounted = false;
  let server: ServerProcess | undefined;
  let qmp: QmpClient | undefined;
  const frontends: BlkFrontend[] = [];

  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-faults-'));
    full = path.join(dir, 'full');
    fs.mkdirSync(full);
    const why = mountTmpfs(full, TMPFS_BYTES);
    if (why !== undefined) {
      this.currentTest!.title += ` (skipped: ${why})`;
      this.skip();
    }
    mounted = true;
  });

  afterEach(async () => {
    // Stop everything that holds files on the tmpfs before unmounting it, even after a failure.
    for (const fe of frontends.splice(0)) await fe.disconnect().catch(() => undefined);
    qmp?.close();
    qmp = undefined;
    const s = server;
    server = undefined;
    const code = s === undefined ? 0 : await s.stop();
    if (mounted) unmount(full);
    mounted = false;
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(code, 0, s?.output());
  });

  it('fails the writes that do not fit with IOERR and ENOSPC, keeps what was acknowledged, and keeps serving', async () => {
    createImage(path.join(full, 'full.img'), IMAGE_BYTES);
    createImage(path.join(dir, 'other.img'), 16 * MiB);
    assert.ok(fs.statSync(path.join(full, 'full.img')).size > TMPFS_BYTES, 'the image is larger than its filesystem');
    const srv = await startVublkDaemon([
      '--blockdev', 'driver=file,node-name=full,filename=full/full.img,discard=unmap',
      '--blockdev', 'driver=file,node-name=other,filename=other.img',
      '--object', 'iothread,id=io0',
      // Both exports on one iothread: the full one must not hold up the other.
      '--export', 'type=vhost-user-blk,id=full,node-name=full,addr.type=unix,addr.path=full.sock,writable=on,iothread=io0,num-queues=2',
      '--export', 'type=vhost-user-blk,id=other,node-name=other,addr.type=unix,addr.path=other.sock,writable=on,iothread=io0',
      '--chardev', 'socket,id=m,path=qmp.sock,server=on,wait=off', '--monitor', 'chardev=m',
      '--metrics', '127.0.0.1:0',
    ], ['full.sock', 'other.sock', 'qmp.sock'], dir);
    server = srv;
    const client = await QmpClient.connect(path.join(dir, 'qmp.sock'));
    qmp = client;
    const fe = await BlkFrontend.connect({ socketPath: path.join(dir, 'full.sock'), numQueues: 2, features: DRIVER_FEATURES | bit(VIRTIO_BLK_F_DISCARD) });
    frontends.push(fe);

    // Fill the filesystem, alternating queues, until writes fail; then a few more.
    const acked: Array<{ sector: number; data: Uint8Array }> = [];
    const failed: Array<{ queue: number; sector: number }> = [];
    for (let i = 0; i < IMAGE_BYTES / CHUNK && failed.length < 6; i++) {
      const sector = (i * CHUNK) / SECTOR_SIZE;
      const data = pattern(CHUNK, i + 1);
      const queue = i % 2;
      const r = await fe.write(queue, sector, data);
      if (r.status === VIRTIO_BLK_S_OK) {
        assert.equal(failed.length, 0, `write ${i} succeeded after a failed one on a full filesystem`);
        acked.push({ sector, data });
      } else {
        assert.equal(r.status, VIRTIO_BLK_S_IOERR, `write ${i}`);
        failed.push({ queue, sector });
      }
    }
    assert.equal(failed.length, 6, 'writes failed once the filesystem was full');
    assert.ok(acked.length > 0 && acked.length * CHUNK <= TMPFS_BYTES, `${acked.length} writes acknowledged`);

    // What was acknowledged reads back, through the device and in the file; reads of
    // the failed ranges work too (whatever part of them reached the file).
    for (const [k, a] of acked.entries()) {
      const r = await fe.read(k % 2, a.sector, CHUNK);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.ok(Buffer.from(r.data).equals(Buffer.from(a.data)), `acknowledged write at sector ${a.sector} reads back`);
    }
    for (const f of failed) assert.equal((await fe.read(f.queue, f.sector, CHUNK)).status, VIRTIO_BLK_S_OK, 'reads still work');
    assert.equal((await fe.read(0, IMAGE_BYTES / SECTOR_SIZE - 8, 4096)).status, VIRTIO_BLK_S_OK, 'a hole past the full part reads');
    const fd = fs.openSync(path.join(full, 'full.img'), 'r');
    try {
      const buf = Buffer.alloc(CHUNK);
      fs.readSync(fd, buf, 0, CHUNK, acked[0].sector * SECTOR_SIZE);
      assert.ok(buf.equals(Buffer.from(acked[0].data)), 'the bytes are in the image');
    } finally {
      fs.closeSync(fd);
    }

    // One record per failed write (few enough not to be throttled), with export, queue and sector.
    await waitFor('the error records', () => srv.findLogs('I/O error').length >= failed.length);
    for (const f of failed) {
      const found = srv.findLogs('I/O error', { export: 'full', queue: f.queue, sector: f.sector, errno: 'ENOSPC', request: 'write', iothread: 'vublk-io0' });
      assert.equal(found.length, 1, `record for the write at sector ${f.sector}:\n${srv.output()}`);
    }
    assert.equal(srv.findLogs('I/O error').length, failed.length, 'no other storage errors');

    // Counted per queue: QMP statistics and Prometheus metrics.
    const perQueue = [0, 1].map((q) => failed.filter((f) => f.queue === q).length);
    const stats = (await client.execute('x-vublk-query-stats')) as DaemonStats;
    const fullStats = stats.exports.find((e) => e.id === 'full')!;
    for (const q of [0, 1]) {
      assert.equal(fullStats.queues[q]['io-errors'], perQueue[q], `queue ${q} io-errors`);
      assert.deepEqual(fullStats.queues[q]['storage-errors'], perQueue[q] > 0 ? { ENOSPC: perQueue[q] } : {}, `queue ${q} storage-errors`);
    }
    await waitFor('metrics port', () => srv.findLogs('metrics listening').length > 0);
    const port = srv.findLogs('metrics listening')[0].port as number;
    const text = await fetchText(`http://127.0.0.1:${port}/metrics`);
    for (const q of [0, 1]) {
      assert.match(text, new RegExp(`vublk_storage_errors_total\\{export="full",queue="${q}",errno="ENOSPC"\\} ${perQueue[q]}\\b`));
      assert.match(text, new RegExp(`vublk_request_errors_total\\{export="full",queue="${q}",status="ioerr"\\} ${perQueue[q]}\\b`));
    }
    assert.doesNotMatch(text, /vublk_storage_errors_total\{export="other"/);

    // The other export of the process, on the same iothread, serves as before.
    const other = await BlkFrontend.connect({ socketPath: path.join(dir, 'other.sock'), numQueues: 1 });
    frontends.push(other);
    const data = pattern(CHUNK, 99);
    assert.equal((await other.write(0, 2048, data)).status, VIRTIO_BLK_S_OK);
    const back = await other.read(0, 2048, CHUNK);
    assert.equal(back.status, VIRTIO_BLK_S_OK);
    assert.ok(Buffer.from(back.data).equals(Buffer.from(data)));

    // And the full export recovers once there is room: discard (punch) the first
    // acknowledged chunk, and the first failed write goes through.
    const d = await fe.discard(0, acked[0].sector, CHUNK / SECTOR_SIZE);
    assert.equal(d.status, VIRTIO_BLK_S_OK, 'discard frees space on the tmpfs');
    const retry = pattern(CHUNK, 1234);
    assert.equal((await fe.write(failed[0].queue, failed[0].sector, retry)).status, VIRTIO_BLK_S_OK, 'a write fits again');
    const again = await fe.read(failed[0].queue, failed[0].sector, CHUNK);
    assert.ok(Buffer.from(again.data).equals(Buffer.from(retry)));
  });
});
