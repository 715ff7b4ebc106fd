import { strict as assert } from 'node:assert';
import { BlkDisk } from '../../src/blk/disk';
import { DWZ_SEG_MAX, blkFeatures, encodeBlkConfig } from '../../src/blk/config';
import {
  CFG, LIFETIME_BYTES, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_LIFETIME, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/blk/constants';
import {
  IO_BLKDISCARD, IO_BLKZEROOUT, IO_FLUSH, IO_PUNCH_HOLE, IO_READ, IO_WRITE, IO_ZERO_RANGE,
} from '../../src/storage/engine';
import { SharedThrottle, noLimits } from '../../src/blk/throttle';
import { LOG_LEVEL_VALUES, setLogSink } from '../../src/util/log';
import {
  BOUNCE_HOST, DATA, DISK_BYTES, DISK_SECTORS, HDR, Part, SEGS, STATUS, Seg, direct, dwz, harness, req, writeSegs,
} from '../support/blk-harness';
import { FAKE_HOST_BASE } from '../support/fake-memory';
import { findLogs, parseLogRecords } from '../support/logs';

describe('virtio-blk requests', () => {
  let restore: (l: string) => void;
  const lines: string[] = [];
  beforeEach(() => { lines.length = 0; restore = setLogSink((l) => lines.push(l)); });
  afterEach(() => setLogSink(restore));

  it('reads in place into guest memory and reports data + status as used length', async () => {
    const h = harness();
    h.diskBytes.fill(0xab, 4096, 8192);
    h.header(VIRTIO_BLK_T_IN, 8);
    const r = await h.run(req(4096, true));
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 4097);
    assert.ok(h.g.bytes.subarray(DATA, DATA + 4096).every((b) => b === 0xab));
  });

  it('writes guest data to the disk at sector * 512', async () => {
    const h = harness();
    h.g.bytes.fill(0x5a, DATA, DATA + 1024);
    h.header(VIRTIO_BLK_T_OUT, 3);
    const r = await h.run(req(1024, false));
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(r.usedLen, 1);
    assert.ok(h.diskBytes.subarray(1536, 2560).every((b) => b === 0x5a));
    assert.equal(h.diskBytes[1535], 0);
    assert.equal(h.diskBytes[2560], 0);
  });

  it('accepts a header split over two descriptors and data sharing the header buffer', async () => {
    const h = harness();
    h.diskBytes.fill(0x11, 0, 512);
    h.header(VIRTIO_BLK_T_IN, 0);
    const r = await h.run([{ addr: HDR, len: 8 }, { addr: HDR + 8, len: 8 }, { addr: DATA, len: 512, write: true }, { addr: STATUS, len: 1, write: true }]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.equal(h.g.bytes[DATA + 511], 0x11);
    // Data and status in one writable buffer (ANY_LAYOUT): the status is its last byte.
    const h2 = harness();
    h2.diskBytes.fill(0x22, 0, 512);
    h2.header(VIRTIO_BLK_T_IN, 0);
    h2.g.bytes[DATA + 512] = 0xff;
    const r2 = await h2.run([{ addr: HDR, len: 16 }, { addr: DATA, len: 513, write: true }]);
    assert.equal(r2.usedLen, 513);
    assert.equal(h2.g.bytes[DATA + 512], VIRTIO_BLK_S_OK);
    assert.equal(h2.g.bytes[DATA + 511], 0x22);
  });

  it('fails requests past the end of the disk or misaligned to the block size without touching storage', async () => {
    const h = harness();
    h.header(VIRTIO_BLK_T_IN, DISK_BYTES / 512 - 1);
    assert.equal((await h.run(req(1024, true))).status, VIRTIO_BLK_S_IOERR);
    h.header(VIRTIO_BLK_T_OUT, 2 ** 52);
    assert.equal((await h.run(req(512, false))).status, VIRTIO_BLK_S_IOERR);
    const h4k = harness({ logicalBlockSize: 4096 });
    h4k.header(VIRTIO_BLK_T_OUT, 1); // 512-byte offset, not 4K aligned
    assert.equal((await h4k.run(req(4096, false))).status, VIRTIO_BLK_S_IOERR);
    h4k.header(VIRTIO_BLK_T_IN, 8);
    assert.equal((await h4k.run(req(512, true))).status, VIRTIO_BLK_S_IOERR);
    h4k.header(VIRTIO_BLK_T_IN, 8);
    assert.equal((await h4k.run(req(4096, true))).status, VIRTIO_BLK_S_OK);
    assert.equal(h.engine.calls.length, 0);
    assert.equal(h4k.engine.calls.length, 1);
  });

  it('answers FLUSH through the engine and GET_ID with the serial', async () => {
    const h = harness();
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    const f = await h.run([{ addr: HDR, len: 16 }, { addr: STATUS, len: 1, write: true }]);
    assert.equal(f.status, VIRTIO_BLK_S_OK);
    assert.equal(h.engine.calls[0].op, IO_FLUSH);
    h.header(VIRTIO_BLK_T_GET_ID, 0);
    h.g.bytes.fill(0xee, DATA, DATA + 20);
    const id = await h.run(req(20, true));
    assert.equal(id.status, VIRTIO_BLK_S_OK);
    assert.equal(id.usedLen, 21);
    assert.equal(Buffer.from(h.g.bytes.subarray(DATA, DATA + 11)).toString('latin1'), 'test-serial');
    assert.equal(h.g.bytes[DATA + 11], 0, 'padded with NULs');
  });

  it('answers GET_LIFETIME from the configured figures, UNSUPP when there are none', async () => {
    const lifetime = { preEolInfo: 2, estTypA: 3, estTypB: 11 };
    const h = harness({ lifetime });
    h.header(VIRTIO_BLK_T_GET_LIFETIME, 0);
    h.g.bytes.fill(0xee, DATA, DATA + 16);
    let r = await h.run(req(LIFETIME_BYTES, true));
    assert.deepEqual(r, { status: VIRTIO_BLK_S_OK, usedLen: LIFETIME_BYTES + 1 });
    assert.deepEqual([...h.g.bytes.subarray(DATA, DATA + LIFETIME_BYTES)], [2, 0, 3, 0, 11, 0], 'three le16');
    assert.equal(h.g.bytes[DATA + LIFETIME_BYTES], 0xee, 'nothing past the struct');
    // Split over two writable buffers, status in the second.
    h.g.bytes.fill(0xee, DATA, DATA + 16);
    r = await h.run([{ addr: HDR, len: 16 }, { addr: DATA, len: 3, write: true }, { addr: DATA + 8, len: 4, write: true }]);
    assert.deepEqual(r, { status: VIRTIO_BLK_S_OK, usedLen: LIFETIME_BYTES + 1 });
    assert.deepEqual([...h.g.bytes.subarray(DATA, DATA + 3)], [2, 0, 3]);
    assert.deepEqual([...h.g.bytes.subarray(DATA + 8, DATA + 12)], [0, 11, 0, VIRTIO_BLK_S_OK]);
    // Too short for the struct, or with device-readable data: IOERR, and nothing written.
    h.g.bytes.fill(0xee, DATA, DATA + 16);
    assert.equal((await h.run(req(LIFETIME_BYTES - 1, true))).status, VIRTIO_BLK_S_IOERR);
    assert.ok(h.g.bytes.subarray(DATA, DATA + LIFETIME_BYTES - 1).every((b) => b === 0xee));
    assert.equal((await h.run(req(LIFETIME_BYTES, false))).status, VIRTIO_BLK_S_IOERR);
    assert.equal(h.engine.calls.length, 0, 'answered from memory');

    const none = harness();
    none.header(VIRTIO_BLK_T_GET_LIFETIME, 0);
    none.g.bytes.fill(0xee, DATA, DATA + 16);
    assert.deepEqual(await none.run(req(LIFETIME_BYTES, true)), { status: VIRTIO_BLK_S_UNSUPP, usedLen: 1 });
    assert.ok(none.g.bytes.subarray(DATA, DATA + LIFETIME_BYTES).every((b) => b === 0xee));
  });

  it('answers unknown request types with UNSUPP', async () => {
    const h = harness();
    h.header(0x1234, 0);
    assert.equal((await h.run(req(512, true))).status, VIRTIO_BLK_S_UNSUPP);
  });

  it('completes malformed chains instead of dropping them', async () => {
    const h = harness();
    // Header too short.
    h.header(VIRTIO_BLK_T_IN, 0);
    let r = await h.run([{ addr: HDR, len: 8 }, { addr: STATUS, len: 1, write: true }]);
    assert.deepEqual(r, { status: VIRTIO_BLK_S_IOERR, usedLen: 1 });
    // Read with device-readable data (wrong direction).
    h.header(VIRTIO_BLK_T_IN, 0);
    r = await h.run(req(512, false));
    assert.equal(r.status, VIRTIO_BLK_S_IOERR);
    // Write with device-writable data (wrong direction).
    h.header(VIRTIO_BLK_T_OUT, 0);
    r = await h.run(req(512, true));
    assert.equal(r.status, VIRTIO_BLK_S_IOERR);
    // Readable after writable.
    h.header(VIRTIO_BLK_T_IN, 0);
    r = await h.run([{ addr: HDR, len: 16 }, { addr: STATUS, len: 1, write: true }, { addr: DATA, len: 16 }]);
    assert.equal(r.status, VIRTIO_BLK_S_IOERR);
    // No status byte at all: returned with length 0.
    h.header(VIRTIO_BLK_T_IN, 0);
    r = await h.run([{ addr: HDR, len: 16 }]);
    assert.equal(r.usedLen, 0);
    assert.equal(r.status, 0xff, 'nothing written');
    // Buffer outside guest memory: returned with length 0.
    r = await h.run([{ addr: HDR, len: 16 }, { addr: 0x7fff0000, len: 512, write: true }, { addr: STATUS, len: 1, write: true }]);
    assert.equal(r.usedLen, 0);
    assert.equal(h.engine.calls.length, 0);
    assert.equal(findLogs(parseLogRecords(lines), 'malformed request', { level: LOG_LEVEL_VALUES.warn, reason: 'buffer outside guest memory' }).length, 1, lines.join('\n'));
  });

  it('refuses writes on a read-only disk', async () => {
    const h = harness({ readOnly: true });
    h.g.bytes.fill(0x77, DATA, DATA + 512);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert.equal((await h.run(req(512, false))).status, VIRTIO_BLK_S_IOERR);
    assert.equal(h.diskBytes[0], 0);
    assert.equal(h.engine.calls.length, 0);
  });

  it('turns an engine error into IOERR for that request only', async () => {
    const h = harness();
    h.engine.injected.push(-5);
    h.header(VIRTIO_BLK_T_IN, 0);
    assert.equal((await h.run(req(512, true))).status, VIRTIO_BLK_S_IOERR);
    assert.equal(findLogs(parseLogRecords(lines), 'I/O error', { errno: 'EIO', sector: 0 }).length, 1, lines.join('\n'));
    h.header(VIRTIO_BLK_T_IN, 0);
    assert.equal((await h.run(req(512, true))).status, VIRTIO_BLK_S_OK);
  });

  it('syncs every write before completing it in write-through mode', async () => {
    const h = harness({}, { writeback: false });
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert.equal((await h.run(req(512, false))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => c.op), [IO_WRITE, IO_FLUSH]);
  });
});

// --- DISCARD and WRITE_ZEROES -------------------------------------------------------

const has = (features: bigint, bit: number): boolean => ((features >> BigInt(bit)) & 1n) === 1n;

describe('virtio-blk DISCARD and WRITE_ZEROES', () => {
  let restore: (l: string) => void;
  const lines: string[] = [];
  beforeEach(() => { lines.length = 0; restore = setLogSink((l) => lines.push(l)); });
  afterEach(() => setLogSink(restore));

  const baseDisk: BlkDisk = {
    fd: 3, kind: 'file', sizeBytes: DISK_BYTES, readOnly: false, logicalBlockSize: 512, physicalBlockSize: 512,
    minIoSize: 0, optIoSize: 0, direct: false, directAlignment: 512, discard: true, writeZeroes: true, serial: 's',
  };
  const config = (disk: BlkDisk): DataView => new DataView(encodeBlkConfig(disk, { writeback: true }, 1).buffer);

  it('offers the features and fills their config fields only when the store can and the export is writable', () => {
    const f = blkFeatures(baseDisk, 1);
    assert.ok(has(f, VIRTIO_BLK_F_DISCARD) && has(f, VIRTIO_BLK_F_WRITE_ZEROES) && !has(f, VIRTIO_BLK_F_RO));
    const v = config({ ...baseDisk, logicalBlockSize: 4096 });
    assert.equal(v.getUint32(CFG.maxDiscardSectors, true), DISK_SECTORS);
    assert.equal(v.getUint32(CFG.maxDiscardSeg, true), DWZ_SEG_MAX);
    assert.equal(v.getUint32(CFG.discardSectorAlignment, true), 8, 'logical block size in sectors');
    assert.equal(v.getUint32(CFG.maxWriteZeroesSectors, true), DISK_SECTORS);
    assert.equal(v.getUint32(CFG.maxWriteZeroesSeg, true), DWZ_SEG_MAX);
    assert.equal(v.getUint8(CFG.writeZeroesMayUnmap), 1, 'files punch holes for unmap');
    assert.equal(config({ ...baseDisk, kind: 'block' }).getUint8(CFG.writeZeroesMayUnmap), 0, 'BLKZEROOUT never deallocates');
    // Bounded by the u32 field, in whole logical blocks.
    const big = config({ ...baseDisk, sizeBytes: 2 ** 42, logicalBlockSize: 4096 });
    assert.equal(big.getUint32(CFG.maxDiscardSectors, true), 0xfffffff8);
    assert.equal(big.getUint32(CFG.maxWriteZeroesSectors, true), 0xfffffff8);

    // Read-only: neither feature, no limits.
    const ro = { ...baseDisk, readOnly: true };
    const fro = blkFeatures(ro, 1);
    assert.ok(has(fro, VIRTIO_BLK_F_RO) && !has(fro, VIRTIO_BLK_F_DISCARD) && !has(fro, VIRTIO_BLK_F_WRITE_ZEROES));
    const vro = config(ro);
    for (const off of [CFG.maxDiscardSectors, CFG.maxDiscardSeg, CFG.discardSectorAlignment, CFG.maxWriteZeroesSectors, CFG.maxWriteZeroesSeg]) {
      assert.equal(vro.getUint32(off, true), 0, `config offset ${off}`);
    }
    assert.equal(vro.getUint8(CFG.writeZeroesMayUnmap), 0);

    // Each feature follows its own capability.
    const noDiscard = { ...baseDisk, discard: false };
    const fnd = blkFeatures(noDiscard, 1);
    assert.ok(!has(fnd, VIRTIO_BLK_F_DISCARD) && has(fnd, VIRTIO_BLK_F_WRITE_ZEROES));
    assert.equal(config(noDiscard).getUint32(CFG.maxDiscardSeg, true), 0);
    assert.equal(config(noDiscard).getUint32(CFG.maxWriteZeroesSeg, true), DWZ_SEG_MAX);
    const noZeroes = { ...baseDisk, writeZeroes: false };
    assert.ok(has(blkFeatures(noZeroes, 1), VIRTIO_BLK_F_DISCARD) && !has(blkFeatures(noZeroes, 1), VIRTIO_BLK_F_WRITE_ZEROES));
    assert.equal(config(noZeroes).getUint32(CFG.maxWriteZeroesSectors, true), 0);

    // VIRTIO_BLK_F_LIFETIME only with figures to answer GET_LIFETIME with.
    assert.ok(!has(f, VIRTIO_BLK_F_LIFETIME));
    assert.ok(has(blkFeatures({ ...baseDisk, lifetime: { preEolInfo: 1, estTypA: 0, estTypB: 0 } }, 1), VIRTIO_BLK_F_LIFETIME));
  });

  it('reports topology sizes in logical blocks', () => {
    const v = config({ ...baseDisk, logicalBlockSize: 512, physicalBlockSize: 4096, minIoSize: 4096, optIoSize: 1 << 20 });
    assert.equal(v.getUint8(CFG.physicalBlockExp), 3);
    assert.equal(v.getUint16(CFG.minIoSize, true), 8);
    assert.equal(v.getUint32(CFG.optIoSize, true), 2048);
    assert.equal(config(baseDisk).getUint16(CFG.minIoSize, true), 1, 'unreported: one block');
    assert.equal(config(baseDisk).getUint32(CFG.optIoSize, true), 0);
  });

  it('discards a range of a file by punching a hole', async () => {
    const h = harness();
    h.diskBytes.fill(0xaa);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    const r = await h.run(dwz(writeSegs(h.g.view, [[8, 16]])));
    assert.deepEqual(r, { status: VIRTIO_BLK_S_OK, usedLen: 1 });
    assert.deepEqual(h.engine.calls.map((c) => [c.op, c.offset, c.bytes]), [[IO_PUNCH_HOLE, 4096, 8192]]);
    assert.ok(h.diskBytes.subarray(4096, 12288).every((b) => b === 0));
    assert.equal(h.diskBytes[4095], 0xaa);
    assert.equal(h.diskBytes[12288], 0xaa);
  });

  it('writes zeroes to files with ZERO_RANGE, or punches a hole when the guest allows unmapping', async () => {
    const h = harness();
    h.diskBytes.fill(0xaa);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 1]])))).status, VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[4, 2, 1]])))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => [c.op, c.offset, c.bytes]), [[IO_ZERO_RANGE, 0, 512], [IO_PUNCH_HOLE, 2048, 1024]]);
    assert.ok(h.diskBytes.subarray(0, 512).every((b) => b === 0));
    assert.ok(h.diskBytes.subarray(2048, 3072).every((b) => b === 0));
    assert.ok(h.diskBytes.subarray(512, 2048).every((b) => b === 0xaa));
  });

  it('counts write zeroes against the write limits as a write of their length, and discards not at all (as QEMU)', async () => {
    const throttle = new SharedThrottle();
    const limits = noLimits();
    limits['bps-write'] = { avg: 1 << 20, max: 0, maxLength: 1 }; // a tenth of a second (100 KiB) up front
    throttle.set(limits);
    const h = harness({}, { writeback: true }, { throttle });
    h.diskBytes.fill(0xaa);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 1024]])))).status, VIRTIO_BLK_S_OK, '512 KiB discarded at once');
    // Like QEMU's buckets, the limiter lets a request in while under its burst and then charges
    // all of it: the first 512 KiB of zeroes go, the second waits (both chains share the segment).
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    const zeroes = dwz(writeSegs(h.g.view, [[1024, 1024]]));
    h.submitBatch([{ head: 0, parts: zeroes }, { head: 4, parts: zeroes }]);
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.deepEqual(h.engine.calls.map((c) => c.op), [IO_PUNCH_HOLE, IO_ZERO_RANGE], 'the second write zeroes waits for the limit');
    assert.equal(h.queue.inFlight, 1);
    h.blk.releaseWaiting(); // as when the ring stops: whatever waits starts now
    for (let i = 0; i < 200 && h.queue.inFlight > 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(h.queue.inFlight, 0);
    assert.equal(h.g.bytes[STATUS], VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => [c.op, c.offset, c.bytes]),
      [[IO_PUNCH_HOLE, 0, 1 << 19], [IO_ZERO_RANGE, 1 << 19, 1 << 19], [IO_ZERO_RANGE, 1 << 19, 1 << 19]]);
    assert.ok(h.diskBytes.every((b) => b === 0));
    h.blk.close();
  });

  it('uses BLKDISCARD and BLKZEROOUT on block devices', async () => {
    const h = harness({ kind: 'block' });
    h.diskBytes.fill(0xaa);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8]])))).status, VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[8, 8, 0]])))).status, VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[16, 8, 1]])))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => c.op), [IO_BLKDISCARD, IO_BLKZEROOUT, IO_BLKZEROOUT]);
    assert.ok(h.diskBytes.subarray(0, 12288).every((b) => b === 0));
    assert.equal(h.diskBytes[12288], 0xaa);
  });

  it('runs several segments one after another on the request\'s slot, read from descriptors split anywhere', async () => {
    const h = harness();
    h.diskBytes.fill(0xaa);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    // Header and three segments back to back, cut at odd places across three descriptors.
    writeSegs(h.g.view, [[100, 4], [0, 2], [2040, 8]], HDR + 16);
    const r = await h.run([
      { addr: HDR, len: 20 }, { addr: HDR + 20, len: 9 }, { addr: HDR + 29, len: 35 }, { addr: STATUS, len: 1, write: true },
    ], 3);
    assert.deepEqual(r, { status: VIRTIO_BLK_S_OK, usedLen: 1 });
    assert.deepEqual(h.engine.calls.map((c) => [c.slot, c.op, c.offset, c.bytes]),
      [[3, IO_PUNCH_HOLE, 51200, 2048], [3, IO_PUNCH_HOLE, 0, 1024], [3, IO_PUNCH_HOLE, 2040 * 512, 4096]]);
    assert.equal(h.engine.maxPending, 1, 'one segment at a time');
    for (const [start, len] of [[51200, 2048], [0, 1024], [2040 * 512, 4096]]) {
      assert.ok(h.diskBytes.subarray(start, start + len).every((b) => b === 0), `range at ${start} zeroed`);
    }
    assert.equal(h.diskBytes[1024], 0xaa);
    assert.equal(h.diskBytes[51200 + 2048], 0xaa);
  });

  it('fails the whole request with IOERR when any segment is out of range or misaligned, touching nothing', async () => {
    const h = harness({ logicalBlockSize: 4096 });
    h.diskBytes.fill(0xaa);
    const bad: Seg[][] = [
      [[0, 8], [DISK_SECTORS - 8, 16]], // second segment runs past the end
      [[DISK_SECTORS, 8]], // starts at the end
      [[0, 8], [1, 8]], // not 4K-aligned
      [[8, 4]], // length not a whole block
      [[2 ** 44, 8]], // offset beyond 2^53 bytes
      [[0, 0xfffffff8]], // more than max_*_sectors
    ];
    for (const type of [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]) {
      for (const segs of bad) {
        h.header(type, 0);
        assert.equal((await h.run(dwz(writeSegs(h.g.view, segs)))).status, VIRTIO_BLK_S_IOERR, `${type} ${JSON.stringify(segs)}`);
      }
    }
    assert.equal(h.engine.calls.length, 0);
    assert.ok(h.diskBytes.every((b) => b === 0xaa));
  });

  it('answers UNSUPP for reserved flags and for DISCARD with the unmap flag', async () => {
    const h = harness();
    h.diskBytes.fill(0xaa);
    const cases: Array<[number, Seg[]]> = [
      [VIRTIO_BLK_T_WRITE_ZEROES, [[0, 8, 2]]],
      [VIRTIO_BLK_T_WRITE_ZEROES, [[0, 8, 1], [8, 8, 0x80000001]]],
      [VIRTIO_BLK_T_DISCARD, [[0, 8, 1]]],
      // The spec's MUST for flags holds even when another segment is also out of range.
      [VIRTIO_BLK_T_DISCARD, [[DISK_SECTORS, 8, 0], [0, 8, 4]]],
    ];
    for (const [type, segs] of cases) {
      h.header(type, 0);
      assert.equal((await h.run(dwz(writeSegs(h.g.view, segs)))).status, VIRTIO_BLK_S_UNSUPP, JSON.stringify(segs));
    }
    assert.equal(h.engine.calls.length, 0);
    assert.equal(h.blk.stats.unsupported, cases.length);
    assert.ok(h.diskBytes.every((b) => b === 0xaa));
  });

  it('fails malformed segment data with IOERR', async () => {
    const h = harness();
    const tooMany: Seg[] = Array.from({ length: DWZ_SEG_MAX + 1 }, (_, i) => [8 * i, 8]);
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, tooMany)))).status, VIRTIO_BLK_S_IOERR, 'more than max_discard_seg');
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(17))).status, VIRTIO_BLK_S_IOERR, 'not whole segments');
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run([{ addr: HDR, len: 16 }, { addr: STATUS, len: 1, write: true }])).status, VIRTIO_BLK_S_IOERR, 'no segment');
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    writeSegs(h.g.view, [[0, 8]]);
    assert.equal((await h.run([{ addr: HDR, len: 16 }, { addr: SEGS, len: 16 }, { addr: DATA, len: 16, write: true }, { addr: STATUS, len: 1, write: true }])).status,
      VIRTIO_BLK_S_IOERR, 'device-writable data');
    assert.equal(h.engine.calls.length, 0);
    assert.equal(h.blk.stats.malformed, 4);
    // Exactly the maximum is fine.
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, tooMany.slice(0, DWZ_SEG_MAX)))))!.status, VIRTIO_BLK_S_OK);
    assert.equal(h.engine.calls.length, DWZ_SEG_MAX);
  });

  it('read-only exports refuse OUT, DISCARD and WRITE_ZEROES with IOERR and touch nothing', async () => {
    const h = harness({ readOnly: true });
    h.diskBytes.fill(0xaa);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert.equal((await h.run(req(512, false))).status, VIRTIO_BLK_S_IOERR);
    for (const type of [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]) {
      h.header(type, 0);
      assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8]])))).status, VIRTIO_BLK_S_IOERR);
    }
    assert.equal(h.engine.calls.length, 0);
    assert.ok(h.diskBytes.every((b) => b === 0xaa));
    // Reads still work.
    h.header(VIRTIO_BLK_T_IN, 0);
    assert.equal((await h.run(req(512, true))).status, VIRTIO_BLK_S_OK);
  });

  it('answers UNSUPP for the operations a writable store cannot do (features not offered)', async () => {
    const h = harness({ discard: false, writeZeroes: false });
    for (const type of [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]) {
      h.header(type, 0);
      assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8]])))).status, VIRTIO_BLK_S_UNSUPP);
    }
    assert.equal(h.engine.calls.length, 0);
  });

  it('stops at the first failing segment', async () => {
    const h = harness();
    h.diskBytes.fill(0xaa);
    h.engine.injected.push(-95);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8], [16, 8]])))).status, VIRTIO_BLK_S_IOERR);
    assert.equal(h.engine.calls.length, 1);
    assert.ok(h.diskBytes.subarray(8192, 12288).every((b) => b === 0xaa), 'second segment untouched');
    assert.equal(findLogs(parseLogRecords(lines), 'I/O error', { errno: 'EOPNOTSUPP', op: 'zero_range', request: 'write_zeroes' }).length, 1, lines.join('\n'));
    // The slot is usable again.
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8], [16, 8]])))).status, VIRTIO_BLK_S_OK);
  });

  it('syncs written zeroes in write-through mode, like writes; discards need no sync', async () => {
    const h = harness({}, { writeback: false });
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8], [16, 8]])))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => c.op), [IO_ZERO_RANGE, IO_ZERO_RANGE, IO_FLUSH]);
    h.engine.calls.length = 0;
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[0, 8]])))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => c.op), [IO_PUNCH_HOLE]);
  });

  it('accepts empty segments without calling the engine', async () => {
    const h = harness();
    h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[8, 0]])))).status, VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert.equal((await h.run(dwz(writeSegs(h.g.view, [[8, 0], [16, 8]])))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => [c.offset, c.bytes]), [[8192, 4096]]);
  });
});

// --- cache=none bounce buffers ---------------------------------------------------------

/** Recognisable disk contents. */
const fillPattern = (bytes: Uint8Array, seed: number): void => {
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + seed + (i >> 9)) & 0xff;
};

/** Concatenated guest bytes of `parts`. */
const gather = (guest: Uint8Array, parts: Part[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.len, 0));
  let pos = 0;
  for (const p of parts) { out.set(guest.subarray(p.addr, p.addr + p.len), pos); pos += p.len; }
  return out;
};

const isBounce = (addr: number): boolean => addr >= BOUNCE_HOST && addr < BOUNCE_HOST + (1 << 30);

describe('virtio-blk cache=none bounce buffers', () => {
  let restore: (l: string) => void;
  const lines: string[] = [];
  beforeEach(() => { lines.length = 0; restore = setLogSink((l) => lines.push(l)); });
  afterEach(() => setLogSink(restore));

  it('does aligned I/O in place: the engine gets the guest buffers', async () => {
    const h = harness(direct(4096), undefined, { engineAlignment: 4096 });
    fillPattern(h.diskBytes, 1);
    h.header(VIRTIO_BLK_T_IN, 8);
    assert.equal((await h.run(req(8192, true))).status, VIRTIO_BLK_S_OK);
    h.header(VIRTIO_BLK_T_OUT, 64);
    assert.equal((await h.run(req(4096, false))).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => c.iov), [[FAKE_HOST_BASE + DATA, 8192], [FAKE_HOST_BASE + DATA, 4096]]);
    assert.deepEqual(h.g.bytes.subarray(DATA, DATA + 8192), h.diskBytes.subarray(4096, 12288));
    assert.equal(h.blk.stats.bounced, 0);
    assert.equal(h.bounce.allocations, 1, 'the pool is allocated once, up front');
  });

  it('reads into a misaligned guest buffer through the bounce buffer', async () => {
    const h = harness(direct(512), undefined, { engineAlignment: 512 });
    fillPattern(h.diskBytes, 2);
    h.g.bytes[DATA] = 0x5c;
    h.g.bytes[DATA + 1025] = 0x5d;
    h.header(VIRTIO_BLK_T_IN, 2);
    const parts: Part[] = [{ addr: HDR, len: 16 }, { addr: DATA + 1, len: 1024, write: true }, { addr: STATUS, len: 1, write: true }];
    assert.deepEqual(await h.run(parts), { status: VIRTIO_BLK_S_OK, usedLen: 1025 });
    assert.deepEqual(h.g.bytes.subarray(DATA + 1, DATA + 1025), h.diskBytes.subarray(1024, 2048));
    assert.equal(h.g.bytes[DATA], 0x5c, 'nothing written before the buffer');
    assert.equal(h.g.bytes[DATA + 1025], 0x5d, 'nothing written after it');
    assert.equal(h.engine.calls.length, 1);
    assert.ok(h.engine.calls[0].iov.length === 2 && isBounce(h.engine.calls[0].iov[0]));
    assert.equal(h.blk.stats.bounced, 1);
  });

  it('writes from 512-aligned buffers on a 4096-aligned store through the bounce buffer', async () => {
    const h = harness(direct(4096), undefined, { engineAlignment: 4096 });
    const data: Part[] = [{ addr: DATA + 512, len: 1536 }, { addr: DATA + 0x3200, len: 4096 }, { addr: DATA + 0x6400, len: 2560 }];
    for (const p of data) fillPattern(h.g.bytes.subarray(p.addr, p.addr + p.len), p.addr);
    h.header(VIRTIO_BLK_T_OUT, 16);
    const r = await h.run([{ addr: HDR, len: 16 }, ...data, { addr: STATUS, len: 1, write: true }]);
    assert.deepEqual(r, { status: VIRTIO_BLK_S_OK, usedLen: 1 });
    assert.deepEqual(h.diskBytes.subarray(8192, 16384), gather(h.g.bytes, data));
    assert.ok(h.diskBytes.subarray(0, 8192).every((b) => b === 0) && h.diskBytes.subarray(16384, 20480).every((b) => b === 0));
    assert.ok(h.engine.calls.every((c) => isBounce(c.iov[0])));
  });

  it('moves requests larger than a bounce slot in slot-sized chunks, both ways', async () => {
    const h = harness(direct(512), undefined, { engineAlignment: 512, bounceSlotBytes: 4096 });
    fillPattern(h.diskBytes, 3);
    const data: Part[] = [{ addr: DATA + 3, len: 1000, write: true }, { addr: DATA + 0x2001, len: 5000, write: true }, { addr: DATA + 0x5005, len: 3216, write: true }];
    h.header(VIRTIO_BLK_T_IN, 10);
    const r = await h.run([{ addr: HDR, len: 16 }, ...data, { addr: STATUS, len: 1, write: true }]);
    assert.deepEqual(r, { status: VIRTIO_BLK_S_OK, usedLen: 9217 });
    assert.deepEqual(gather(h.g.bytes, data), h.diskBytes.subarray(5120, 5120 + 9216));
    assert.deepEqual(h.engine.calls.map((c) => [c.op, c.offset, c.bytes]), [[IO_READ, 5120, 4096], [IO_READ, 9216, 4096], [IO_READ, 13312, 1024]]);
    assert.ok(h.engine.calls.every((c) => c.iov.length === 2 && isBounce(c.iov[0]) && c.slot === 0));

    // And back: write the same guest buffers elsewhere after changing them.
    for (const p of data) fillPattern(h.g.bytes.subarray(p.addr, p.addr + p.len), 77 + p.addr);
    h.engine.calls.length = 0;
    h.header(VIRTIO_BLK_T_OUT, 100);
    const w = await h.run([{ addr: HDR, len: 16 }, ...data.map((p) => ({ ...p, write: false })), { addr: STATUS, len: 1, write: true }]);
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.diskBytes.subarray(51200, 51200 + 9216), gather(h.g.bytes, data));
    assert.deepEqual(h.engine.calls.map((c) => [c.op, c.offset, c.bytes]), [[IO_WRITE, 51200, 4096], [IO_WRITE, 55296, 4096], [IO_WRITE, 59392, 1024]]);
  });

  it('copies correctly for buffers that straddle two guest memory regions', async () => {
    const SPLIT = 0x28000;
    const h = harness(direct(512), undefined, { engineAlignment: 512, splitAt: SPLIT, bounceSlotBytes: 4096 });
    fillPattern(h.diskBytes, 4);
    const buf: Part = { addr: SPLIT - 701, len: 6144, write: true };
    h.header(VIRTIO_BLK_T_IN, 4);
    assert.equal((await h.run([{ addr: HDR, len: 16 }, buf, { addr: STATUS, len: 1, write: true }])).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.g.bytes.subarray(buf.addr, buf.addr + buf.len), h.diskBytes.subarray(2048, 2048 + 6144));
    fillPattern(h.g.bytes.subarray(buf.addr, buf.addr + buf.len), 99);
    h.header(VIRTIO_BLK_T_OUT, 200);
    assert.equal((await h.run([{ addr: HDR, len: 16 }, { ...buf, write: false }, { addr: STATUS, len: 1, write: true }])).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.diskBytes.subarray(102400, 102400 + 6144), h.g.bytes.subarray(buf.addr, buf.addr + buf.len));
    assert.equal(h.blk.stats.bounced, 2);
  });

  it('parks requests while every bounce slot is busy and runs them as slots free', async () => {
    const h = harness(direct(512), undefined, { engineAlignment: 512, bounceSlots: 1 });
    fillPattern(h.diskBytes, 5);
    const reqAt = (data: number, status: number, len: number): Part[] =>
      [{ addr: HDR, len: 16 }, { addr: data, len, write: true }, { addr: status, len: 1, write: true }];
    // Each request needs its own header for its own sector.
    const parts = [reqAt(DATA + 1, STATUS, 1024), reqAt(DATA + 0x4001, STATUS + 1, 2048), reqAt(DATA + 0x8000, STATUS + 2, 512)];
    const sectors = [0, 10, 20];
    [0, 1, 2].forEach((i) => { h.header(VIRTIO_BLK_T_IN, sectors[i], HDR + 0x100 * i); parts[i][0].addr = HDR + 0x100 * i; });
    const rs = await h.runBatch([{ head: 0, parts: parts[0] }, { head: 4, parts: parts[1] }, { head: 8, parts: parts[2] }]);
    assert.deepEqual(rs.map((r) => r.status), [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    parts.forEach((p, i) => assert.deepEqual(h.g.bytes.subarray(p[1].addr, p[1].addr + p[1].len),
      h.diskBytes.subarray(sectors[i] * 512, sectors[i] * 512 + p[1].len), `request ${i} data`));
    // The aligned request went ahead; the second misaligned one waited for the first's slot.
    assert.deepEqual(h.engine.calls.map((c) => c.slot), [0, 8, 4]);
    assert.equal(h.blk.stats.bounceWaits, 1);
    assert.equal(h.blk.stats.bounced, 2);
  });

  it('fails a bounced request whose chunk fails, and frees its slot', async () => {
    const h = harness(direct(512), undefined, { engineAlignment: 512, bounceSlots: 1, bounceSlotBytes: 4096 });
    h.engine.injected.push(0, -5);
    h.g.bytes.fill(0x42, DATA + 1, DATA + 1 + 8192);
    h.header(VIRTIO_BLK_T_OUT, 0);
    const parts: Part[] = [{ addr: HDR, len: 16 }, { addr: DATA + 1, len: 8192 }, { addr: STATUS, len: 1, write: true }];
    assert.equal((await h.run(parts)).status, VIRTIO_BLK_S_IOERR);
    assert.equal(h.engine.calls.length, 2);
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert.equal((await h.run(parts)).status, VIRTIO_BLK_S_OK, 'the only slot is free again');
    assert.ok(h.diskBytes.subarray(0, 8192).every((b) => b === 0x42));
  });

  it('syncs a bounced write after its last chunk in write-through mode', async () => {
    const h = harness(direct(512), { writeback: false }, { engineAlignment: 512, bounceSlotBytes: 4096 });
    h.header(VIRTIO_BLK_T_OUT, 0);
    const parts: Part[] = [{ addr: HDR, len: 16 }, { addr: DATA + 1, len: 8192 }, { addr: STATUS, len: 1, write: true }];
    assert.equal((await h.run(parts)).status, VIRTIO_BLK_S_OK);
    assert.deepEqual(h.engine.calls.map((c) => c.op), [IO_WRITE, IO_WRITE, IO_FLUSH]);
  });

  it('frees the bounce slot of a write-through write before its sync, for the next request', async () => {
    const h = harness(direct(512), { writeback: false }, { engineAlignment: 512, bounceSlots: 1 });
    const a: Part[] = [{ addr: HDR, len: 16 }, { addr: DATA + 1, len: 512 }, { addr: STATUS, len: 1, write: true }];
    const b: Part[] = [{ addr: HDR, len: 16 }, { addr: DATA + 0x1001, len: 512 }, { addr: STATUS + 1, len: 1, write: true }];
    h.header(VIRTIO_BLK_T_OUT, 0);
    const rs = await h.runBatch([{ head: 0, parts: a }, { head: 4, parts: b }]);
    assert.deepEqual(rs.map((r) => r.status), [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    assert.deepEqual(h.engine.calls.map((c) => [c.slot, c.op]), [[0, IO_WRITE], [0, IO_FLUSH], [4, IO_WRITE], [4, IO_FLUSH]]);
    assert.equal(h.engine.maxPending, 2, "the second write ran during the first one's sync");
  });

  it('allocates the pool only for direct disks and frees it on close', () => {
    const h = harness(direct(512));
    assert.equal(h.bounce.allocations, 1);
    h.blk.close();
    h.blk.close();
    assert.equal(h.bounce.freed, 1);
    const plain = harness();
    assert.equal(plain.bounce.allocations, 0);
    assert.throws(() => harness(direct(3000, 4096)), /power of two/);
  });

  it('maps a page-aligned bounce area with the native addon', function () {
    let mapBounceArea: typeof import('../../src/blk/bounce').mapBounceArea;
    try {
      require('../../src/native/addon');
      mapBounceArea = (require('../../src/blk/bounce') as typeof import('../../src/blk/bounce')).mapBounceArea;
    } catch {
      this.skip();
    }
    const size = 3 * 4096;
    const area = mapBounceArea!(size);
    assert.equal(area.hostAddr % 4096, 0);
    assert.equal(area.bytes.length, size);
    area.bytes[0] = 1;
    area.bytes[size - 1] = 2;
    assert.equal(area.bytes[0] + area.bytes[size - 1], 3);
    area.free();
    assert.equal(area.bytes.length, 0, 'detached before unmapping');
    area.free();
  });
});
