// Storage targets (src/storage/target.ts) on real files, loop devices and, where
// device-mapper exists, an LVM logical volume; plus the device-mapper/LVM probes.
// Loop and LVM tests need root and losetup; without them they say why and skip.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../src/native/addon';
import { ProbeSystem, deviceMapperAvailability, findExecutable, lvmAvailability } from '../../src/storage/lvm';
import {
  OpenTargetOptions, StorageTarget, TargetError, createSparseImage, devNumbers, openTarget, sysfsQueueDir,
} from '../../src/storage/target';

const MiB = 1024 * 1024;
const { O_RDONLY, O_RDWR, O_EXCL, O_DIRECT } = fs.constants;
const O_ACCMODE = 3;
/** Linux errno (Node's os.constants.errno lacks it). */
const ENOTBLK = 15;
const RW: OpenTargetOptions = { readOnly: false, direct: false, serial: 'test-serial' };
const RO: OpenTargetOptions = { ...RW, readOnly: true };

/** File status flags of fd as the kernel reports them. */
function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m, `no flags for fd ${fd}`);
  return parseInt(m[1], 8);
}

function isClosed(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EBADF';
  }
}

/** assert.throws matcher for a TargetError with this code whose message names `p`. */
function targetError(code: string, p: string, text?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof TargetError, `expected a TargetError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.startsWith(`${p}: `), `message names the path: ${e.message}`);
    if (text !== undefined) assert.match(e.message, text);
    return true;
  };
}

/** A page-aligned buffer (memfd mapping), as O_DIRECT needs; release() unmaps it. */
function alignedBuffer(length: number): { buf: Uint8Array; release(): void } {
  const mfd = native.memfdCreate('storage-target-test');
  fs.ftruncateSync(mfd, length);
  const addr = native.mmap(mfd, length, 0, true);
  native.close(mfd);
  const ab = native.arrayBuffer(addr, length);
  return {
    buf: new Uint8Array(ab),
    release: () => {
      native.detach(ab);
      native.munmap(addr, length);
    },
  };
}

/** errno code of a read on fd, or 'ok'. */
function readOutcome(fd: number, buf: Uint8Array, length: number, position: number): string {
  try {
    fs.readSync(fd, buf, 0, length, position);
    return 'ok';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, timeout: 60_000 });
  if (r.error !== undefined) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/** A scratch directory on a disk-backed filesystem (not tmpfs, where O_DIRECT differs). */
function scratchDir(prefix: string): string {
  const base = fs.existsSync('/var/tmp') ? '/var/tmp' : os.tmpdir();
  return fs.mkdtempSync(path.join(base, prefix));
}

/** Why loop devices cannot be used here, or undefined if they can. */
function loopUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (findExecutable('losetup') === undefined) return 'losetup not found (Debian package mount)';
  if (!fs.existsSync('/dev/loop-control')) return '/dev/loop-control missing (no loop driver)';
  return undefined;
}

/** Loop devices attached by a suite, detached in its after hook whatever happened. */
class Loops {
  readonly devices: string[] = [];
  attach(file: string, ...extra: string[]): string {
    const dev = run(findExecutable('losetup')!, ['--find', '--show', ...extra, file]);
    assert.match(dev, /^\/dev\/loop\d+$/);
    this.devices.push(dev);
    return dev;
  }
  detachAll(): void {
    const errors: string[] = [];
    for (const dev of this.devices.splice(0)) {
      try {
        run(findExecutable('losetup')!, ['--detach', dev]);
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    if (errors.length > 0) throw new Error(`detaching loop devices: ${errors.join('; ')}`);
  }
}

/** Targets opened by a test (including ones expected to fail), closed after it even when it fails. */
class Opened {
  private readonly targets: StorageTarget[] = [];
  open(p: string, o: OpenTargetOptions): StorageTarget {
    const t = openTarget(p, o);
    this.targets.push(t);
    return t;
  }
  closeAll(): void {
    for (const t of this.targets.splice(0)) t.close();
  }
}

describe('storage targets: regular files', () => {
  let dir: string;
  const opened = new Opened();
  before(() => { dir = scratchDir('vublk-target-'); });
  afterEach(() => opened.closeAll());
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  function makeFile(name: string, size: number): string {
    const p = path.join(dir, name);
    fs.writeFileSync(p, Buffer.alloc(0));
    fs.truncateSync(p, size);
    return p;
  }

  it('createSparseImage makes a sparse file once and leaves an existing one alone', () => {
    const p = path.join(dir, 'sparse.img');
    assert.equal(createSparseImage(p, 64 * MiB), true);
    const st = fs.statSync(p);
    assert.equal(st.size, 64 * MiB);
    assert.ok(st.blocks * 512 < MiB, `sparse: ${st.blocks} blocks allocated`);
    fs.writeFileSync(p, 'x');
    assert.equal(createSparseImage(p, 64 * MiB), false);
    assert.equal(fs.statSync(p).size, 1, 'not truncated again');
  });

  it('opens read-write with size rounded down to 512 and fallocate-based discard/zeroes', () => {
    const p = makeFile('rw.img', MiB + 100);
    const t = opened.open(p, RW);
    const d = t.disk;
    assert.equal(t.path, p);
    assert.equal(d.kind, 'file');
    assert.equal(d.sizeBytes, MiB);
    assert.equal(d.logicalBlockSize, 512);
    assert.ok(d.physicalBlockSize >= 512 && (d.physicalBlockSize & (d.physicalBlockSize - 1)) === 0);
    assert.equal(d.readOnly, false);
    assert.equal(d.direct, false);
    assert.equal(d.discard, true);
    assert.equal(d.writeZeroes, true);
    assert.equal(d.serial, 'test-serial');
    assert.equal(fdFlags(d.fd) & O_ACCMODE, O_RDWR);
    assert.equal(fdFlags(d.fd) & O_DIRECT, 0);
    // The fd is this file.
    fs.writeSync(d.fd, Buffer.from('vublk'), 0, 5, 4096);
    assert.equal(fs.readFileSync(p).subarray(4096, 4101).toString(), 'vublk');
    const [major, minor] = devNumbers(fs.statSync(p, { bigint: true }).dev);
    assert.equal(t.details.device, `${major}:${minor}`);
    t.close();
    assert.ok(isClosed(d.fd), 'close() closes the fd');
    t.close();
  });

  it('honours an explicit logical block size and rejects invalid ones', () => {
    const p = makeFile('lbs.img', 3 * 4096 + 3584);
    const t = opened.open(p, { ...RW, logicalBlockSize: 4096 });
    assert.equal(t.disk.logicalBlockSize, 4096);
    assert.equal(t.disk.sizeBytes, 3 * 4096);
    assert.ok(t.disk.physicalBlockSize >= 4096);
    for (const bad of [0, 256, 1000, 3 * 512, 131072, 512.5]) {
      assert.throws(() => opened.open(p, { ...RW, logicalBlockSize: bad }), RangeError, `lbs ${bad}`);
    }
    assert.throws(() => opened.open(p, { ...RW, serial: 'x'.repeat(21) }), RangeError);
  });

  it('opens read-only with O_RDONLY and offers neither discard nor write zeroes', () => {
    const p = makeFile('ro.img', MiB);
    const t = opened.open(p, RO);
    assert.equal(t.disk.readOnly, true);
    assert.equal(fdFlags(t.disk.fd) & O_ACCMODE, O_RDONLY);
    assert.throws(() => fs.writeSync(t.disk.fd, Buffer.from('x'), 0, 1, 0), { code: 'EBADF' });
    assert.equal(t.disk.discard, false);
    assert.equal(t.disk.writeZeroes, false);
  });

  it('reports missing paths and things that are neither files nor block devices', () => {
    const missing = path.join(dir, 'missing.img');
    assert.throws(() => opened.open(missing, RW), targetError('ENOENT', missing, /no such file/));
    assert.throws(() => opened.open(dir, RW), targetError('EINVAL', dir, /not a regular file or block device \(a directory\)/));
    assert.throws(() => opened.open('/dev/null', RW), targetError('EINVAL', '/dev/null', /a character device/));
    const fifo = path.join(dir, 'fifo');
    run('mkfifo', [fifo]);
    // Must not block in open().
    assert.throws(() => opened.open(fifo, RW), targetError('EINVAL', fifo, /a FIFO/));
  });

  it('opens with O_DIRECT on a disk-backed filesystem, with the filesystem\'s alignment', function () {
    const p = makeFile('direct.img', MiB);
    fs.writeFileSync(p, randomBytes(MiB));
    const t = opened.open(p, { ...RW, direct: true });
    const d = t.disk;
    assert.equal(d.direct, true);
    assert.ok(fdFlags(d.fd) & O_DIRECT, 'O_DIRECT set on the fd');
    assert.ok(d.directAlignment >= 512 && (d.directAlignment & (d.directAlignment - 1)) === 0, `alignment ${d.directAlignment}`);
    assert.ok(d.logicalBlockSize >= t.details.deviceLogicalBlockSize);
    console.log(`      (${path.dirname(p)}: ${t.details.fsType}, device ${t.details.device}, directAlignment ${d.directAlignment})`);
    const a = alignedBuffer(2 * d.directAlignment);
    try {
      assert.equal(readOutcome(d.fd, a.buf, d.directAlignment, d.directAlignment), 'ok');
      assert.ok(Buffer.from(a.buf.subarray(0, d.directAlignment)).equals(fs.readFileSync(p).subarray(d.directAlignment, 2 * d.directAlignment)));
      // A filesystem that reports a real alignment enforces it: proof that O_DIRECT is in effect.
      if (native.directIoAlignment(d.fd) !== null) {
        assert.equal(readOutcome(d.fd, a.buf, d.directAlignment, d.directAlignment / 2), 'EINVAL');
      }
    } finally {
      a.release();
    }
  });

  it('O_DIRECT on tmpfs matches what the kernel allows (supported since Linux 6.6)', function () {
    const mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' '));
    const tmpfs = ['/tmp', '/dev/shm', '/run'].find((m) => mounts.some((f) => f[1] === m && f[2] === 'tmpfs' && /(^|,)rw(,|$)/.test(f[3])));
    if (tmpfs === undefined) {
      console.log('      skipped: no writable tmpfs at /tmp, /dev/shm or /run');
      this.skip();
    }
    const tdir = fs.mkdtempSync(path.join(tmpfs, 'vublk-target-'));
    try {
      const p = path.join(tdir, 'tmpfs.img');
      fs.writeFileSync(p, Buffer.alloc(64 * 1024));
      let kernelAllows: boolean;
      try {
        fs.closeSync(fs.openSync(p, O_RDWR | O_DIRECT));
        kernelAllows = true;
      } catch (e) {
        assert.equal((e as NodeJS.ErrnoException).code, 'EINVAL');
        kernelAllows = false;
      }
      console.log(`      (${tmpfs} is tmpfs; O_DIRECT ${kernelAllows ? 'supported' : 'rejected'} by this kernel)`);
      if (kernelAllows) {
        const t = openTarget(p, { ...RW, direct: true });
        try {
          assert.equal(t.disk.direct, true);
          assert.ok(fdFlags(t.disk.fd) & O_DIRECT);
        } finally {
          t.close();
        }
      } else {
        assert.throws(() => opened.open(p, { ...RW, direct: true }), targetError('EINVAL', p, /\(tmpfs\) does not support O_DIRECT.*--cache writeback/));
      }
    } finally {
      fs.rmSync(tdir, { recursive: true, force: true });
    }
  });

  it('a filesystem without O_DIRECT (procfs) gives a clear error naming it and --cache writeback', () => {
    assert.throws(() => opened.open('/proc/version', { ...RO, direct: true }),
      targetError('EINVAL', '/proc/version', /the filesystem \(proc\) does not support O_DIRECT; serve this image with --cache writeback/));
  });

  describe('on ramfs (no O_DIRECT at all)', () => {
    let mnt: string | undefined;
    before(function () {
      if (process.getuid?.() !== 0) {
        console.log('      skipped: mounting ramfs needs root');
        this.skip();
      }
      const m = fs.mkdtempSync(path.join(dir, 'ramfs-'));
      const r = spawnSync('mount', ['-t', 'ramfs', 'ramfs', m], { encoding: 'utf8' });
      if (r.status !== 0) {
        console.log(`      skipped: cannot mount ramfs: ${(r.stderr || r.error?.message || '').trim()}`);
        this.skip();
      }
      mnt = m;
    });
    after(() => {
      if (mnt === undefined) return;
      // Lazily if something still holds it, so that the directory can go.
      if (spawnSync('umount', [mnt]).status !== 0) run('umount', ['--lazy', mnt]);
    });

    it('refuses direct with the clear error, opens buffered', () => {
      const p = path.join(mnt!, 'ram.img');
      fs.writeFileSync(p, Buffer.alloc(8192));
      assert.throws(() => opened.open(p, { ...RW, direct: true }), targetError('EINVAL', p, /\(ramfs\) does not support O_DIRECT.*--cache writeback/));
      const t = openTarget(p, RW);
      try {
        assert.equal(t.disk.sizeBytes, 8192);
        assert.equal(t.details.fsType, 'ramfs');
        assert.equal(t.details.sysfsQueue, undefined, 'ramfs has no block device');
        assert.equal(t.disk.directAlignment, 512);
      } finally {
        t.close();
      }
    });
  });
});

describe('storage targets: block devices (loop)', function () {
  this.timeout(30_000);
  const loops = new Loops();
  const opened = new Opened();
  let dir: string | undefined;
  let dev512: string;
  let file512: string;
  let dev4k: string;
  let devRo: string;

  before(function () {
    const why = loopUnavailable();
    if (why !== undefined) {
      console.log(`      skipped: loop devices unavailable: ${why}`);
      this.skip();
    }
    dir = scratchDir('vublk-loop-');
    file512 = path.join(dir, 'backing512.img');
    // 64 MiB + 3 sectors: a 512-byte device whose size is not a multiple of 4096.
    fs.writeFileSync(file512, randomBytes(64 * 1024));
    fs.truncateSync(file512, 64 * MiB + 1536);
    const file4k = path.join(dir, 'backing4k.img');
    fs.writeFileSync(file4k, Buffer.alloc(0));
    fs.truncateSync(file4k, 32 * MiB);
    try {
      dev512 = loops.attach(file512);
    } catch (e) {
      console.log(`      skipped: losetup cannot attach a loop device: ${(e as Error).message}`);
      this.skip();
    }
    dev4k = loops.attach(file4k, '--sector-size', '4096');
    devRo = loops.attach(file4k, '--read-only');
  });
  afterEach(() => opened.closeAll());
  after(() => {
    opened.closeAll();
    try {
      loops.detachAll();
    } finally {
      if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('blockDeviceInfo reports the ioctl geometry, agreeing with sysfs', () => {
    for (const [dev, lbs] of [[dev512, 512], [dev4k, 4096]] as const) {
      const fd = fs.openSync(dev, O_RDONLY);
      try {
        const info = native.blockDeviceInfo(fd);
        const name = path.basename(dev);
        const sys = (attr: string): number => Number(fs.readFileSync(`/sys/class/block/${name}/${attr}`, 'utf8'));
        assert.equal(info.logicalBlockSize, lbs, dev);
        assert.equal(info.logicalBlockSize, sys('queue/logical_block_size'));
        assert.equal(info.physicalBlockSize, sys('queue/physical_block_size'));
        assert.equal(info.minIoSize, sys('queue/minimum_io_size'));
        assert.equal(info.optIoSize, sys('queue/optimal_io_size'));
        assert.equal(info.sizeBytes, sys('size') * 512);
        assert.equal(info.rotational, sys('queue/rotational') === 1);
        assert.equal(info.readOnly, false);
        assert.equal(`${info.major}:${info.minor}`, fs.readFileSync(`/sys/class/block/${name}/dev`, 'utf8').trim());
        console.log(`      (${dev}: ${JSON.stringify(info)})`);
      } finally {
        fs.closeSync(fd);
      }
    }
    const rofd = fs.openSync(devRo, O_RDONLY);
    try {
      assert.equal(native.blockDeviceInfo(rofd).readOnly, true, 'losetup --read-only');
    } finally {
      fs.closeSync(rofd);
    }
  });

  it('blockDeviceInfo rejects what is not a block device', () => {
    const fd = fs.openSync(file512, O_RDONLY);
    try {
      assert.throws(() => native.blockDeviceInfo(fd), { code: 'ENOTBLK', errno: ENOTBLK });
    } finally {
      fs.closeSync(fd);
    }
    const closed = fs.openSync(dev512, O_RDONLY);
    fs.closeSync(closed);
    assert.throws(() => native.blockDeviceInfo(closed), { code: 'EBADF' });
    assert.throws(() => native.blockDeviceInfo('3' as unknown as number), TypeError);
  });

  it('a 512-byte loop device: geometry, discard from the queue limits, and the fd is the device', () => {
    const t = opened.open(dev512, RW);
    const d = t.disk;
    assert.equal(d.kind, 'block');
    assert.equal(d.sizeBytes, 64 * MiB + 1536);
    assert.equal(d.logicalBlockSize, 512);
    assert.equal(d.physicalBlockSize, 512);
    assert.equal(d.minIoSize, 512);
    assert.equal(d.directAlignment, 512);
    assert.equal(d.readOnly, false);
    assert.equal(d.writeZeroes, true);
    const queue = `/sys/class/block/${path.basename(dev512)}/queue`;
    const discardMax = Number(fs.readFileSync(`${queue}/discard_max_bytes`, 'utf8'));
    assert.equal(t.details.discardMaxBytes, discardMax);
    assert.equal(d.discard, discardMax > 0);
    assert.equal(t.details.writeZeroesMaxBytes, Number(fs.readFileSync(`${queue}/write_zeroes_max_bytes`, 'utf8')));
    assert.equal(t.details.discardGranularity, Number(fs.readFileSync(`${queue}/discard_granularity`, 'utf8')));
    assert.equal(fs.realpathSync(t.details.sysfsQueue!), fs.realpathSync(queue));
    assert.equal(t.details.device, fs.readFileSync(`/sys/class/block/${path.basename(dev512)}/dev`, 'utf8').trim());
    const [major, minor] = devNumbers(fs.statSync(dev512, { bigint: true }).rdev);
    assert.equal(t.details.device, `${major}:${minor}`);
    assert.equal(fdFlags(d.fd) & O_ACCMODE, O_RDWR);
    // Written through the target, visible in the backing file.
    const data = randomBytes(4096);
    fs.writeSync(d.fd, data, 0, data.length, 8192);
    fs.fsyncSync(d.fd);
    const back = fs.openSync(file512, O_RDONLY);
    try {
      const got = Buffer.alloc(4096);
      fs.readSync(back, got, 0, 4096, 8192);
      assert.ok(got.equals(data), 'bytes written to the loop device reach its backing file');
    } finally {
      fs.closeSync(back);
    }
  });

  it('a guest block size above the device\'s rounds the size down to it', () => {
    const t = opened.open(dev512, { ...RW, logicalBlockSize: 4096 });
    assert.equal(t.disk.logicalBlockSize, 4096);
    assert.equal(t.disk.physicalBlockSize, 4096);
    assert.equal(t.disk.sizeBytes, 64 * MiB);
    assert.equal(t.disk.directAlignment, 512, 'the device still needs only 512');
  });

  it('a 4096-byte loop device (--sector-size 4096) defaults to 4096 and refuses 512', () => {
    const t = opened.open(dev4k, RW);
    assert.equal(t.disk.logicalBlockSize, 4096);
    assert.equal(t.disk.physicalBlockSize, 4096);
    assert.equal(t.disk.sizeBytes, 32 * MiB);
    assert.equal(t.disk.directAlignment, 4096);
    assert.equal(t.details.deviceLogicalBlockSize, 4096);
    t.close();
    assert.throws(() => opened.open(dev4k, { ...RW, logicalBlockSize: 512 }), targetError('EINVAL', dev4k, /512 is smaller than the device's own \(4096\)/));
    // The failed open released the device again.
    opened.open(dev4k, { ...RW, logicalBlockSize: 4096 });
  });

  it('is exclusive: a second export of the same device fails with EBUSY naming it', () => {
    const first = opened.open(dev512, RW);
    assert.throws(() => opened.open(dev512, RW), targetError('EBUSY', dev512, /busy/));
    assert.throws(() => opened.open(dev512, RO), targetError('EBUSY', dev512), 'read-only exports are exclusive too');
    // The claim is the target's own O_EXCL, not something else holding the device.
    assert.throws(() => fs.openSync(dev512, O_RDONLY | O_EXCL), { code: 'EBUSY' });
    first.close();
    fs.closeSync(fs.openSync(dev512, O_RDONLY | O_EXCL));
    opened.open(dev512, RW);
  });

  it('opens read-only with O_RDONLY, without discard or write zeroes', () => {
    const t = opened.open(dev512, RO);
    assert.equal(t.disk.readOnly, true);
    assert.equal(fdFlags(t.disk.fd) & O_ACCMODE, O_RDONLY);
    assert.throws(() => fs.writeSync(t.disk.fd, Buffer.alloc(512), 0, 512, 0), { code: 'EBADF' });
    assert.equal(t.disk.discard, false);
    assert.equal(t.disk.writeZeroes, false);
  });

  it('a read-only device exported read-write says to use --readonly', () => {
    assert.throws(() => opened.open(devRo, RW), targetError('EROFS', devRo, /block device is read-only; export it with --readonly/));
    const t = opened.open(devRo, RO);
    assert.equal(t.disk.readOnly, true);
    assert.equal(t.disk.sizeBytes, 32 * MiB);
  });

  it('a file on ext4 over a 4096-byte device: O_DIRECT needs 4096, so the guest gets 4096', function () {
    const mkfs = findExecutable('mkfs.ext4');
    if (mkfs === undefined) {
      console.log('      skipped: mkfs.ext4 not found (Debian package e2fsprogs)');
      this.skip();
    }
    const backing = path.join(dir!, 'fs4k.img');
    fs.writeFileSync(backing, Buffer.alloc(0));
    fs.truncateSync(backing, 32 * MiB);
    const dev = loops.attach(backing, '--sector-size', '4096');
    run(mkfs, ['-q', '-F', dev]);
    const mnt = fs.mkdtempSync(path.join(dir!, 'mnt-'));
    run('mount', [dev, mnt]);
    try {
      const p = path.join(mnt, 'image.img');
      fs.writeFileSync(p, Buffer.alloc(0));
      fs.truncateSync(p, MiB + 512);
      const t = opened.open(p, { ...RW, direct: true });
      assert.equal(t.disk.kind, 'file');
      assert.equal(t.details.fsType, 'ext4');
      assert.equal(t.details.deviceLogicalBlockSize, 4096);
      assert.equal(t.disk.logicalBlockSize, 4096);
      assert.equal(t.disk.directAlignment, 4096);
      assert.equal(t.disk.sizeBytes, MiB);
      assert.throws(() => opened.open(p, { ...RW, direct: true, logicalBlockSize: 512 }),
        targetError('EINVAL', p, /logical block size 512 is smaller than the 4096-byte alignment O_DIRECT needs/));
      // Buffered, the page cache absorbs 512-byte I/O: files default to 512.
      const b = opened.open(p, { ...RW, readOnly: true });
      assert.equal(b.disk.logicalBlockSize, 512);
      assert.equal(b.disk.sizeBytes, MiB + 512);
    } finally {
      opened.closeAll();
      if (spawnSync('umount', [mnt]).status !== 0) run('umount', ['--lazy', mnt]);
    }
  });

  it('O_DIRECT on a 4096-byte device: aligned reads work, 512-byte-aligned ones are refused', () => {
    const t = opened.open(dev4k, { ...RW, direct: true });
    assert.equal(t.disk.direct, true);
    assert.ok(fdFlags(t.disk.fd) & O_DIRECT);
    const a = alignedBuffer(8192);
    try {
      assert.equal(readOutcome(t.disk.fd, a.buf, 4096, 4096), 'ok');
      assert.equal(readOutcome(t.disk.fd, a.buf, 512, 512), 'EINVAL', 'O_DIRECT is in effect');
    } finally {
      a.release();
    }
    t.close();
    // Buffered, the page cache takes the same unaligned read.
    const b = opened.open(dev4k, RW);
    assert.equal(readOutcome(b.disk.fd, Buffer.alloc(512), 512, 512), 'ok');
  });
});

describe('storage: device-mapper and LVM probes', () => {
  const fake = (files: Record<string, string>, executables: string[], pathDirs = ['/usr/bin']): ProbeSystem => ({
    exists: (p) => p in files,
    readFile: (p) => files[p],
    isExecutable: (p) => executables.includes(p),
    pathDirs,
  });
  const dmFiles = { '/dev/mapper/control': '', '/proc/misc': ' 237 loop-control\n 236 device-mapper\n' };
  const lvmTools = ['pvcreate', 'vgcreate', 'lvcreate', 'vgremove', 'pvremove'].map((c) => `/usr/sbin/${c}`);

  it('finds commands on PATH and in sbin', () => {
    assert.equal(findExecutable('dmsetup', fake({}, ['/opt/x/dmsetup'], ['/opt/x/'])), '/opt/x/dmsetup');
    assert.equal(findExecutable('dmsetup', fake({}, ['/sbin/dmsetup'])), '/sbin/dmsetup');
    assert.equal(findExecutable('dmsetup', fake({}, [])), undefined);
  });

  it('device-mapper is available only with control node, kernel driver and dmsetup', () => {
    assert.deepEqual(deviceMapperAvailability(fake(dmFiles, ['/usr/sbin/dmsetup'])), { available: true, reason: 'device-mapper available' });
    const noControl = deviceMapperAvailability(fake({ '/proc/misc': dmFiles['/proc/misc'] }, ['/usr/sbin/dmsetup']));
    assert.deepEqual(noControl, { available: false, reason: 'device-mapper not available: /dev/mapper/control missing' });
    const noDriver = deviceMapperAvailability(fake({ '/dev/mapper/control': '', '/proc/misc': ' 237 loop-control\n' }, ['/usr/sbin/dmsetup']));
    assert.equal(noDriver.available, false);
    assert.match(noDriver.reason, /^device-mapper not available: no device-mapper driver in the kernel/);
    const viaSysfs = deviceMapperAvailability(fake({ '/dev/mapper/control': '', '/sys/class/misc/device-mapper': '' }, ['/usr/sbin/dmsetup']));
    assert.equal(viaSysfs.available, true);
    const nothing = deviceMapperAvailability(fake({}, []));
    assert.equal(nothing.reason, 'device-mapper not available: /dev/mapper/control missing; ' +
      'no device-mapper driver in the kernel (not in /proc/misc, no /sys/class/misc/device-mapper; dm-mod not built or not loaded); dmsetup not found');
  });

  it('LVM needs device-mapper and its tools', () => {
    assert.equal(lvmAvailability(fake(dmFiles, ['/usr/sbin/dmsetup', ...lvmTools])).available, true);
    const noTools = lvmAvailability(fake(dmFiles, ['/usr/sbin/dmsetup', '/usr/sbin/pvcreate']));
    assert.deepEqual(noTools, { available: false, reason: 'LVM tools not found: vgcreate, lvcreate, vgremove, pvremove (Debian package lvm2)' });
    const noDm = lvmAvailability(fake({}, ['/usr/sbin/dmsetup', ...lvmTools]));
    assert.equal(noDm.available, false);
    assert.match(noDm.reason, /^device-mapper not available: \/dev\/mapper\/control missing/);
  });

  it('the probe of this host agrees with the host', () => {
    const dm = deviceMapperAvailability();
    assert.equal(dm.available, fs.existsSync('/dev/mapper/control') && findExecutable('dmsetup') !== undefined &&
      (/\bdevice-mapper$/m.test(fs.readFileSync('/proc/misc', 'utf8')) || fs.existsSync('/sys/class/misc/device-mapper')));
    console.log(`      (this host: ${lvmAvailability().reason})`);
  });
});

describe('storage targets: LVM logical volume', function () {
  this.timeout(120_000);
  const loops = new Loops();
  const opened = new Opened();
  // LVM must not wait for a udev that containers often lack; libdevmapper makes the nodes.
  const env = { ...process.env, DM_DISABLE_UDEV: '1' };
  const vg = `vublk_test_${process.pid}_${randomBytes(3).toString('hex')}`;
  let dir: string | undefined;
  let pv: string | undefined;
  let vgCreated = false;
  let lvmConfig: string;

  const lvm = (cmd: string, ...args: string[]): string => run(findExecutable(cmd)!, ['--config', lvmConfig, ...args], env);

  before(function () {
    const avail = lvmAvailability();
    if (!avail.available) {
      console.log(`      skipped: ${avail.reason}`);
      this.skip();
    }
    const why = loopUnavailable();
    if (why !== undefined) {
      console.log(`      skipped: needs a loop device for the physical volume: ${why}`);
      this.skip();
    }
    dir = scratchDir('vublk-lvm-');
    const backing = path.join(dir, 'pv.img');
    fs.writeFileSync(backing, Buffer.alloc(0));
    fs.truncateSync(backing, 64 * MiB);
    pv = loops.attach(backing);
    // Only our loop device: never scan (or record in a devices file) the host's disks.
    lvmConfig = `devices { filter = [ "a|^${pv}$|", "r|.*|" ] use_devicesfile = 0 }`;
    lvm('pvcreate', '--yes', pv);
    lvm('vgcreate', '--yes', vg, pv);
    vgCreated = true;
    lvm('lvcreate', '--yes', '--zero', 'n', '--wipesignatures', 'n', '--size', '16m', '--name', 'lv0', vg);
  });
  afterEach(() => opened.closeAll());
  after(() => {
    opened.closeAll();
    const errors: string[] = [];
    const attempt = (f: () => unknown): void => {
      try {
        f();
      } catch (e) {
        errors.push((e as Error).message);
      }
    };
    if (vgCreated) attempt(() => lvm('vgremove', '--force', '--force', '--yes', vg));
    if (pv !== undefined) attempt(() => lvm('pvremove', '--force', '--force', '--yes', pv!));
    attempt(() => loops.detachAll());
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
    if (errors.length > 0) throw new Error(`LVM cleanup: ${errors.join('; ')}`);
  });

  it('exports /dev/VG/LV as an exclusive block device', () => {
    const lv = `/dev/${vg}/lv0`;
    const t = opened.open(lv, RW);
    assert.equal(t.disk.kind, 'block');
    assert.equal(t.disk.sizeBytes, 16 * MiB);
    assert.equal(t.disk.logicalBlockSize, 512);
    // It is the device-mapper device of this LV.
    const dmName = fs.readFileSync(`/sys/dev/block/${t.details.device}/dm/name`, 'utf8').trim();
    assert.equal(dmName, `${vg}-lv0`);
    assert.ok(sysfsQueueDir(...t.details.device.split(':').map(Number) as [number, number]));
    assert.throws(() => opened.open(lv, RW), targetError('EBUSY', lv));
    // The physical volume under it is held by device-mapper.
    assert.throws(() => opened.open(pv!, RW), targetError('EBUSY', pv!));
    const data = randomBytes(4096);
    fs.writeSync(t.disk.fd, data, 0, data.length, 0);
    fs.fsyncSync(t.disk.fd);
    t.close();
    const r = opened.open(lv, RO);
    const got = Buffer.alloc(4096);
    fs.readSync(r.disk.fd, got, 0, 4096, 0);
    assert.ok(got.equals(data));
  });
});
