// Range operations (discard / write zeroes) through both storage engines:
// fallocate on files, BLKDISCARD / BLKZEROOUT on a loop device.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IO_BLKDISCARD, IO_BLKZEROOUT, IO_PUNCH_HOLE, IO_READ, IO_ZERO_RANGE, native } from '../../src/native/addon';
import { CompletionHandler, StorageEngine } from '../../src/storage/engine';
import { InlineEngine } from '../../src/storage/inline';
import { ThreadPoolEngine } from '../../src/storage/threadpool';
import { UringEngine } from '../../src/storage/uring';
import { OpenFiles } from '../support/open-files';
import { waitFor } from '../support/wait';

const ERRNO = os.constants.errno;
const MiB = 1 << 20;


type EngineMaker = (slots: number, onComplete: CompletionHandler) => StorageEngine;
const ENGINES: Array<[string, EngineMaker]> = [
  ['threads', (slots, cb) => new ThreadPoolEngine(slots, cb)],
  ['io_uring', (slots, cb) => new UringEngine(slots, cb)],
  ['inline', (slots, cb) => new InlineEngine(slots, cb)],
];

/** Attach FILE to a free loop device; undefined (with the reason) when that is not possible here. */
function attachLoop(file: string): { dev?: string; why?: string } {
  try {
    const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    return dev.startsWith('/dev/') ? { dev } : { why: `losetup printed ${JSON.stringify(dev)}` };
  } catch (err) {
    const e = err as { stderr?: Buffer | string; message: string };
    return { why: `losetup -f --show failed: ${String(e.stderr ?? e.message).trim()}` };
  }
}

for (const [engineName, makeEngine] of ENGINES) {
  describe(`range operations: ${engineName}`, () => {
    let dir = '';
    let engine: StorageEngine;
    let waiters = new Map<number, (r: number) => void>();
    const files = new OpenFiles();
    const open = (file: string, flags: string | number): number => files.open(file, flags);

    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-range-'));
      waiters = new Map();
      engine = makeEngine(4, (slot, result) => {
        const w = waiters.get(slot);
        waiters.delete(slot);
        assert.ok(w, `unexpected completion for slot ${slot}`);
        w(result);
      });
    });

    afterEach(async () => {
      await waitFor('requests to drain', () => engine.inFlight() === 0);
      engine.close();
      files.closeAll();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    function range(slot: number, op: number, fd: number, offset: number, length: number): Promise<number> {
      const p = new Promise<number>((resolve) => waiters.set(slot, resolve));
      engine.submitRange(slot, op, fd, offset, length);
      engine.flush();
      return p;
    }

    /** A fully allocated file of random bytes, on disk (so st_blocks counts it). */
    function makeFile(size: number): { file: string; fd: number; data: Buffer } {
      const file = path.join(dir, 'disk.img');
      const data = randomBytes(size);
      fs.writeFileSync(file, data);
      const fd = open(file, 'r+');
      fs.fsyncSync(fd);
      return { file, fd, data };
    }

    it('punches a hole: zeroes read back, blocks are freed, the size stays', async () => {
      const { fd, data } = makeFile(MiB);
      const before = fs.fstatSync(fd);
      assert.ok(before.blocks >= MiB / 512, `file is allocated (${before.blocks} blocks)`);
      assert.equal(await range(1, IO_PUNCH_HOLE, fd, 64 * 1024, 256 * 1024), 0);
      const after = fs.fstatSync(fd);
      assert.equal(after.size, MiB);
      assert.ok(before.blocks - after.blocks >= (256 * 1024) / 512, `blocks ${before.blocks} -> ${after.blocks}`);
      const now = fs.readFileSync(path.join(dir, 'disk.img'));
      assert.ok(now.subarray(64 * 1024, 320 * 1024).equals(Buffer.alloc(256 * 1024)), 'hole reads as zeroes');
      assert.ok(now.subarray(0, 64 * 1024).equals(data.subarray(0, 64 * 1024)), 'data before the hole intact');
      assert.ok(now.subarray(320 * 1024).equals(data.subarray(320 * 1024)), 'data after the hole intact');
    });

    it('zeroes a range, unaligned ends included, without changing the size', async () => {
      const { fd, data } = makeFile(MiB);
      assert.equal(await range(0, IO_ZERO_RANGE, fd, 100000, 50001), 0);
      const now = fs.readFileSync(path.join(dir, 'disk.img'));
      assert.equal(now.length, MiB);
      assert.ok(now.subarray(100000, 150001).equals(Buffer.alloc(50001)));
      assert.ok(now.subarray(0, 100000).equals(data.subarray(0, 100000)));
      assert.ok(now.subarray(150001).equals(data.subarray(150001)));
      // Past the end: KEEP_SIZE means the size stays.
      assert.equal(await range(0, IO_ZERO_RANGE, fd, MiB - 4096, 64 * 1024), 0);
      assert.equal(fs.fstatSync(fd).size, MiB);
      assert.ok(fs.readFileSync(path.join(dir, 'disk.img')).subarray(MiB - 4096).equals(Buffer.alloc(4096)));
    });

    it('reports failures as negative errno results', async () => {
      const { file } = makeFile(64 * 1024);
      const ro = open(file, 'r');
      assert.equal(await range(0, IO_PUNCH_HOLE, ro, 0, 4096), -ERRNO.EBADF, 'read-only fd');
      const stale = native.eventfd(0);
      native.close(stale);
      assert.equal(await range(1, IO_ZERO_RANGE, stale, 0, 4096), -ERRNO.EBADF);
      const rw = open(file, 'r+');
      assert.equal(await range(2, IO_PUNCH_HOLE, rw, 0, 0), -ERRNO.EINVAL, 'zero length goes to the kernel');
      assert.equal(await range(3, IO_BLKDISCARD, rw, 0, 4096), -ERRNO.ENOTTY, 'block ioctls on a regular file');
      assert.equal(await range(3, IO_BLKZEROOUT, rw, 0, 4096), -ERRNO.ENOTTY);
      assert.equal(await range(0, IO_BLKDISCARD, -1, 0, 4096), -ERRNO.EBADF);
    });

    it('validates range submissions', () => {
      const { fd } = makeFile(4096);
      assert.throws(() => engine.submitRange(0, IO_READ, fd, 0, 1), RangeError, 'data ops are not range ops');
      assert.throws(() => engine.submitRange(0, 7, fd, 0, 1), RangeError);
      assert.throws(() => engine.submitRange(4, IO_PUNCH_HOLE, fd, 0, 1), RangeError);
      assert.throws(() => engine.submitRange(0, IO_PUNCH_HOLE, fd, -1, 1), RangeError);
      assert.throws(() => engine.submitRange(0, IO_PUNCH_HOLE, fd, 0, -1), RangeError);
      assert.throws(() => engine.submitRange(0, IO_PUNCH_HOLE, fd, 0.5, 1), RangeError);
      assert.throws(() => engine.submitRange(0, IO_PUNCH_HOLE, fd, 0, 2 ** 53 + 2), RangeError);
      assert.throws(() => engine.submitRange(0, IO_PUNCH_HOLE, fd, 0, '1' as unknown as number), TypeError);
      assert.equal(engine.inFlight(), 0);
    });

    describe('on a loop device', function () {
      let dev = '';
      let devFd = -1;
      const backing = path.join(os.tmpdir(), `vublk-loop-${process.pid}-${engineName}.img`);

      before(function () {
        fs.writeFileSync(backing, randomBytes(4 * MiB));
        const r = attachLoop(backing);
        if (!r.dev) {
          console.log(`      (skipped: BLKDISCARD/BLKZEROOUT need a loop device; ${r.why})`);
          fs.rmSync(backing, { force: true });
          this.skip();
        }
        dev = r.dev!;
        devFd = fs.openSync(dev, 'r+');
      });

      after(() => {
        if (devFd >= 0) fs.closeSync(devFd);
        devFd = -1;
        if (dev) execFileSync('losetup', ['-d', dev]);
        dev = '';
        fs.rmSync(backing, { force: true });
      });

      function readDev(offset: number, length: number): Buffer {
        const b = Buffer.alloc(length);
        assert.equal(fs.readSync(devFd, b, 0, length, offset), length);
        return b;
      }

      it('discards with BLKDISCARD (a file-backed loop device then reads zeroes)', async () => {
        const before = readDev(MiB - 4096, 4096);
        assert.ok(!before.equals(Buffer.alloc(4096)));
        assert.equal(await range(2, IO_BLKDISCARD, devFd, MiB, MiB), 0);
        assert.ok(readDev(MiB, MiB).equals(Buffer.alloc(MiB)));
        assert.ok(readDev(MiB - 4096, 4096).equals(before), 'data before the range intact');
        assert.ok(!readDev(2 * MiB, 4096).equals(Buffer.alloc(4096)), 'data after the range intact');
      });

      it('writes zeroes with BLKZEROOUT', async () => {
        const after = readDev(3 * MiB + 512 * 1024, 4096);
        assert.equal(await range(3, IO_BLKZEROOUT, devFd, 3 * MiB, 512 * 1024), 0);
        assert.ok(readDev(3 * MiB, 512 * 1024).equals(Buffer.alloc(512 * 1024)));
        assert.ok(readDev(3 * MiB + 512 * 1024, 4096).equals(after), 'data after the range intact');
      });

      it('refuses misaligned and out-of-device ranges with -EINVAL', async () => {
        assert.equal(await range(0, IO_BLKDISCARD, devFd, 100, 4096), -ERRNO.EINVAL);
        assert.equal(await range(1, IO_BLKZEROOUT, devFd, 0, 100), -ERRNO.EINVAL);
        assert.equal(await range(2, IO_BLKZEROOUT, devFd, 4 * MiB, MiB), -ERRNO.EINVAL);
      });
    });
  });
}

describe('range operations: io_uring batching', () => {
  it('queues fallocate on the ring until the flush, and runs block ioctls at once', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-range-'));
    const file = path.join(dir, 'disk.img');
    fs.writeFileSync(file, randomBytes(64 * 1024));
    const fd = fs.openSync(file, 'r+');
    const results = new Map<number, number>();
    const e = new UringEngine(4, (slot, r) => results.set(slot, r));
    try {
      e.submitRange(0, IO_PUNCH_HOLE, fd, 0, 4096);
      e.submitRange(1, IO_ZERO_RANGE, fd, 8192, 4096);
      e.submitRange(2, IO_BLKDISCARD, fd, 0, 4096); // pool: ENOTTY on a file
      assert.equal(e.stats()!.queued, 2);
      await waitFor('the pool request', () => results.has(2));
      assert.equal(results.get(2), -ERRNO.ENOTTY);
      assert.ok(!results.has(0) && !results.has(1), 'ring requests wait for the flush');
      assert.equal(e.inFlight(), 2);
      e.flush();
      await waitFor('the ring requests', () => results.size === 3);
      assert.equal(results.get(0), 0);
      assert.equal(results.get(1), 0);
      const now = fs.readFileSync(file);
      assert.ok(now.subarray(0, 4096).equals(Buffer.alloc(4096)));
      assert.ok(now.subarray(8192, 12288).equals(Buffer.alloc(4096)));
    } finally {
      await waitFor('drain', () => e.inFlight() === 0);
      e.close();
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
