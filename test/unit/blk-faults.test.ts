// Storage faults: whatever the backing store does wrong (EIO, ENOSPC, short
// reads and writes, failing syncs and range operations) fails that one request
// with IOERR, is counted by cause and logged with its context, and the queue
// goes on serving the requests around it.
import { strict as assert } from 'node:assert';
import { BlkCacheState, BlkDisk } from '../../src/blk/disk';
import {
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../src/blk/constants';
import {
  KIND_NAMES, M_BYTES_READ, M_BYTES_WRITTEN, M_IN_FLIGHT, M_IOERR, M_REQUESTS, M_STORAGE_ERRORS, QUEUE_METRICS_FIELDS,
  STORAGE_ERROR_SLOTS, storageErrorName, storageErrorSlot,
} from '../../src/blk/queue-metrics';
import { IO_FLUSH, IO_PUNCH_HOLE, IO_READ, IO_WRITE, IO_ZERO_RANGE } from '../../src/storage/engine';
import { errnoName } from '../../src/util/errno';
import { LOG_LEVEL_VALUES, Logger, setLogSink } from '../../src/util/log';
import { DATA, HDR, HarnessExtra, Part, SEGS, STATUS, Seg, direct, harness, writeSegs } from '../support/blk-harness';
import { EngineCall } from '../support/memory-engine';
import { LogRecord, findLogs, parseLogRecords } from '../support/logs';

const EIO = 5;
const ENOSPC = 28;
const EOPNOTSUPP = 95;

/** The context the data plane gives a queue's logger on an iothread. */
const CONTEXT = { iothread: 'io0', export: 'exp0', queue: 2 };

/** Request i of a batch: its own header, data and status bytes; head 3 * i (three descriptors each). */
interface Req { type: number; sector: number; len: number; fill?: number }

function faultHarness(diskOpts: Partial<BlkDisk> = {}, cache?: BlkCacheState, extra: HarnessExtra = {}) {
  const metrics = new Float64Array(QUEUE_METRICS_FIELDS);
  const h = harness(diskOpts, cache, { ...extra, metrics, log: new Logger(CONTEXT) });
  const headerAt = (i: number): number => HDR + 0x100 * i;
  const dataAt = (i: number): number => DATA + 0x3000 * i + (h.disk.direct ? 1 : 0); // misaligned: bounced
  const segsAt = (i: number): number => SEGS + 0x100 * i;

  function header(type: number, sector: number, at: number): void {
    h.g.view.setUint32(at, type, true);
    h.g.view.setUint32(at + 4, 0, true);
    h.g.view.setUint32(at + 8, sector, true);
    h.g.view.setUint32(at + 12, 0, true);
  }

  /** Submit the requests in one batch; returns their status bytes in order. */
  async function batch(reqs: Req[]): Promise<number[]> {
    const chains = reqs.map((r, i) => {
      header(r.type, r.sector, headerAt(i));
      const parts: Part[] = [{ addr: headerAt(i), len: 16 }];
      if (r.type === VIRTIO_BLK_T_DISCARD || r.type === VIRTIO_BLK_T_WRITE_ZEROES) {
        parts.push({ addr: segsAt(i), len: writeSegs(h.g.view, [[r.sector, r.len / 512]] as Seg[], segsAt(i)) });
      } else if (r.len > 0) {
        if (r.type === VIRTIO_BLK_T_OUT) h.g.bytes.fill(r.fill ?? 0, dataAt(i), dataAt(i) + r.len);
        else h.g.bytes.fill(0xee, dataAt(i), dataAt(i) + r.len);
        parts.push({ addr: dataAt(i), len: r.len, write: r.type === VIRTIO_BLK_T_IN });
      }
      parts.push({ addr: STATUS + i, len: 1, write: true });
      return { head: 3 * i, parts };
    });
    return (await h.runBatch(chains)).map((r) => r.status);
  }

  /** Guest bytes request i of the last batch read. */
  const readData = (i: number, len: number): Uint8Array => h.g.bytes.subarray(dataAt(i), dataAt(i) + len);
  const storageErrors = (slot: number): number => metrics[M_STORAGE_ERRORS + slot];
  return { ...h, metrics, batch, readData, storageErrors };
}

/** The fault: calls matching `when` fail with `result`. */
const failWhen = (when: (c: EngineCall) => boolean, result: number) => (c: EngineCall): number | undefined => (when(c) ? result : undefined);

const filled = (bytes: Uint8Array, value: number): boolean => bytes.every((b) => b === value);

describe('virtio-blk storage faults', () => {
  let restore: (l: string) => void;
  const lines: string[] = [];
  const records = (): LogRecord[] => parseLogRecords(lines);
  beforeEach(() => { lines.length = 0; restore = setLogSink((l) => lines.push(l)); });
  afterEach(() => setLogSink(restore));

  /** The one I/O error record, checked for the queue's context and these fields. */
  function ioErrorRecord(fields: Record<string, unknown>): LogRecord {
    const found = findLogs(records(), 'I/O error', { ...CONTEXT, ...fields });
    assert.equal(found.length, 1, lines.join('\n'));
    assert.equal(found[0].level, LOG_LEVEL_VALUES.warn);
    return found[0];
  }

  it('EIO on a read: IOERR for that read, its neighbours get their data', async () => {
    const h = faultHarness();
    for (let s = 0; s < 64; s++) h.diskBytes.fill(s, s * 512, s * 512 + 512);
    h.engine.fault = failWhen((c) => c.op === IO_READ && c.offset === 16 * 512, -EIO);
    const st = await h.batch([
      { type: VIRTIO_BLK_T_IN, sector: 8, len: 512 },
      { type: VIRTIO_BLK_T_IN, sector: 16, len: 512 },
      { type: VIRTIO_BLK_T_IN, sector: 24, len: 512 },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
    assert.ok(filled(h.readData(0, 512), 8) && filled(h.readData(2, 512), 24), 'neighbours read their sectors');
    assert.ok(filled(h.readData(1, 512), 0xee), 'nothing written to the failed read\'s buffer');
    ioErrorRecord({ request: 'read', op: 'read', sector: 16, errno: 'EIO', count: 1 });
    assert.equal(h.blk.stats.ioErrors, 1);
    assert.equal(h.blk.stats.storageErrors, 1);
    assert.equal(h.metrics[M_REQUESTS + KIND_NAMES.indexOf('read')], 3);
    assert.equal(h.metrics[M_IOERR], 1);
    assert.equal(h.storageErrors(EIO), 1);
    assert.equal(h.metrics[M_BYTES_READ], 1024, 'only what was read');
    assert.equal(h.metrics[M_IN_FLIGHT], 0);

    // The disk recovers: the same read succeeds.
    h.engine.fault = undefined;
    assert.deepEqual(await h.batch([{ type: VIRTIO_BLK_T_IN, sector: 16, len: 512 }]), [VIRTIO_BLK_S_OK]);
    assert.ok(filled(h.readData(0, 512), 16));
  });

  it('ENOSPC on a write: IOERR for that write only; the others land, reads go on', async () => {
    const h = faultHarness();
    // A full disk: nothing new can be written at or beyond 64 KiB.
    h.engine.fault = failWhen((c) => c.op === IO_WRITE && c.offset + c.bytes > 65536, -ENOSPC);
    const st = await h.batch([
      { type: VIRTIO_BLK_T_OUT, sector: 0, len: 4096, fill: 0xa1 },
      { type: VIRTIO_BLK_T_OUT, sector: 200, len: 4096, fill: 0xa2 },
      { type: VIRTIO_BLK_T_OUT, sector: 8, len: 4096, fill: 0xa3 },
      { type: VIRTIO_BLK_T_IN, sector: 200, len: 4096 },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    assert.ok(filled(h.diskBytes.subarray(0, 4096), 0xa1) && filled(h.diskBytes.subarray(4096, 8192), 0xa3));
    assert.ok(filled(h.diskBytes.subarray(200 * 512, 208 * 512), 0), 'the failed write left nothing');
    assert.ok(filled(h.readData(3, 4096), 0), 'reads of the full region still work');
    ioErrorRecord({ request: 'write', op: 'write', sector: 200, errno: 'ENOSPC' });
    assert.equal(h.storageErrors(ENOSPC), 1);
    assert.equal(h.metrics[M_IOERR], 1);
    assert.equal(h.metrics[M_BYTES_WRITTEN], 8192);
  });

  it('a short read or write is IOERR (errno "short"), with what was moved logged', async () => {
    const h = faultHarness();
    h.diskBytes.fill(0x5e, 0, 65536);
    h.engine.fault = failWhen((c) => c.offset === 32 * 512, 1024);
    const st = await h.batch([
      { type: VIRTIO_BLK_T_IN, sector: 32, len: 4096 },
      { type: VIRTIO_BLK_T_IN, sector: 40, len: 4096 },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
    assert.ok(filled(h.readData(1, 4096), 0x5e));
    ioErrorRecord({ request: 'read', op: 'read', sector: 32, errno: 'short', expected: 4096, transferred: 1024 });

    lines.length = 0;
    const sw = await h.batch([
      { type: VIRTIO_BLK_T_OUT, sector: 48, len: 2048, fill: 0x11 },
      { type: VIRTIO_BLK_T_OUT, sector: 32, len: 4096, fill: 0x22 },
    ]);
    assert.deepEqual(sw, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR]);
    assert.ok(filled(h.diskBytes.subarray(48 * 512, 52 * 512), 0x11));
    ioErrorRecord({ request: 'write', op: 'write', sector: 32, errno: 'short', expected: 4096, transferred: 1024 });
    assert.equal(h.storageErrors(0), 2);
    assert.equal(storageErrorName(0), 'short');
    assert.equal(h.metrics[M_IOERR], 2);
    assert.equal(h.blk.stats.storageErrors, 2);
  });

  it('a fault in the middle of a bounced (cache=none) multi-chunk request fails it alone and frees its slot', async () => {
    // One 4 KiB bounce slot: a 12 KiB misaligned write goes in three chunks, and the
    // next misaligned request waits for the slot.
    const h = faultHarness(direct(512), undefined, { engineAlignment: 512, bounceSlots: 1, bounceSlotBytes: 4096 });
    h.diskBytes.fill(0x33, 100 * 512, 108 * 512);
    h.engine.fault = failWhen((c) => c.op === IO_WRITE && c.offset === 4096, -EIO);
    const st = await h.batch([
      { type: VIRTIO_BLK_T_OUT, sector: 0, len: 12288, fill: 0x44 },
      { type: VIRTIO_BLK_T_IN, sector: 100, len: 4096 },
      { type: VIRTIO_BLK_T_OUT, sector: 64, len: 8192, fill: 0x55 },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    // The first chunk was written, the second failed, the third was never started.
    assert.deepEqual(h.engine.calls.filter((c) => c.slot === 0).map((c) => [c.op, c.offset]), [[IO_WRITE, 0], [IO_WRITE, 4096]]);
    assert.ok(filled(h.diskBytes.subarray(8192, 12288), 0), 'third chunk untouched');
    assert.ok(filled(h.readData(1, 4096), 0x33), 'the waiting read got its data');
    assert.ok(filled(h.diskBytes.subarray(64 * 512, 80 * 512), 0x55), 'the waiting write landed');
    assert.ok(h.blk.stats.bounceWaits >= 1, 'a neighbour waited for the failed request\'s slot');
    ioErrorRecord({ request: 'write', op: 'write', sector: 0, errno: 'EIO' });

    // A short chunk of a bounced read, and the slot is free again afterwards.
    lines.length = 0;
    h.engine.calls.length = 0;
    h.engine.fault = failWhen((c) => c.op === IO_READ && c.offset === 100 * 512 + 4096, 512);
    assert.deepEqual(await h.batch([{ type: VIRTIO_BLK_T_IN, sector: 100, len: 12288 }]), [VIRTIO_BLK_S_IOERR]);
    ioErrorRecord({ request: 'read', op: 'read', sector: 100, errno: 'short', expected: 4096, transferred: 512 });
    h.engine.fault = undefined;
    assert.deepEqual(await h.batch([{ type: VIRTIO_BLK_T_IN, sector: 100, len: 4096 }]), [VIRTIO_BLK_S_OK]);
    assert.equal(h.storageErrors(EIO), 1);
    assert.equal(h.storageErrors(0), 1);
  });

  it('a failing sync of a write-through write fails that write; the next write syncs fine', async () => {
    const h = faultHarness({}, { writeback: false });
    h.engine.fault = failWhen((c) => c.op === IO_FLUSH && c.slot === 0, -EIO);
    const st = await h.batch([
      { type: VIRTIO_BLK_T_OUT, sector: 0, len: 512, fill: 0x66 },
      { type: VIRTIO_BLK_T_OUT, sector: 8, len: 512, fill: 0x77 },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
    assert.deepEqual(h.engine.calls.map((c) => [c.slot, c.op]).sort(), [[0, IO_WRITE], [0, IO_FLUSH], [3, IO_WRITE], [3, IO_FLUSH]].sort());
    ioErrorRecord({ request: 'write', op: 'flush', sector: 0, errno: 'EIO' });
    // Its data was written but is not known durable: the guest must not count on it, and is told so.
    assert.equal(h.metrics[M_BYTES_WRITTEN], 512, 'only the completed write counts');

    // FLUSH requests fail the same way.
    lines.length = 0;
    h.engine.fault = failWhen((c) => c.op === IO_FLUSH, -EIO);
    assert.deepEqual(await h.batch([{ type: VIRTIO_BLK_T_FLUSH, sector: 0, len: 0 }, { type: VIRTIO_BLK_T_IN, sector: 0, len: 512 }]),
      [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK]);
    ioErrorRecord({ request: 'flush', op: 'flush', errno: 'EIO' });
    assert.equal(h.storageErrors(EIO), 2);
  });

  it('discard and write-zeroes failures are IOERR for that request only, also on their write-through sync', async () => {
    const h = faultHarness({}, { writeback: false });
    h.diskBytes.fill(0xaa, 0, 65536);
    // Zeroing a range allocates blocks (ENOSPC); punching a hole may be refused.
    h.engine.fault = (c) => (c.op === IO_ZERO_RANGE && c.offset === 0 ? -ENOSPC : c.op === IO_PUNCH_HOLE && c.offset === 8192 ? -EOPNOTSUPP : undefined);
    const st = await h.batch([
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 0, len: 4096 },
      { type: VIRTIO_BLK_T_DISCARD, sector: 16, len: 4096 },
      { type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 32, len: 4096 },
      { type: VIRTIO_BLK_T_DISCARD, sector: 48, len: 4096 },
    ]);
    assert.deepEqual(st, [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    assert.ok(filled(h.diskBytes.subarray(0, 4096), 0xaa) && filled(h.diskBytes.subarray(8192, 12288), 0xaa), 'failed ranges untouched');
    assert.ok(filled(h.diskBytes.subarray(16384, 20480), 0) && filled(h.diskBytes.subarray(24576, 28672), 0));
    ioErrorRecord({ request: 'write_zeroes', op: 'zero_range', sector: 0, errno: 'ENOSPC' });
    ioErrorRecord({ request: 'discard', op: 'punch_hole', sector: 16, errno: 'EOPNOTSUPP' });

    // Written zeroes are synced in write-through mode; a failing sync fails them.
    lines.length = 0;
    h.engine.fault = failWhen((c) => c.op === IO_FLUSH, -EIO);
    assert.deepEqual(await h.batch([{ type: VIRTIO_BLK_T_WRITE_ZEROES, sector: 64, len: 4096 }]), [VIRTIO_BLK_S_IOERR]);
    ioErrorRecord({ request: 'write_zeroes', op: 'flush', errno: 'EIO' });
    assert.equal(h.storageErrors(ENOSPC), 1);
    assert.equal(h.storageErrors(EOPNOTSUPP), 1);
    assert.equal(h.storageErrors(EIO), 1);
    assert.equal(h.metrics[M_IOERR], 3);
  });

  it('throttles the log of a failing disk: the first 8 records, then every power of two, with the count', async () => {
    const h = faultHarness();
    h.engine.fault = failWhen((c) => c.op === IO_READ, -EIO);
    for (let round = 0; round < 8; round++) {
      const st = await h.batch(Array.from({ length: 5 }, (_, i) => ({ type: VIRTIO_BLK_T_IN, sector: 8 * i, len: 512 })));
      assert.ok(st.every((s) => s === VIRTIO_BLK_S_IOERR));
    }
    const logged = findLogs(records(), 'I/O error', CONTEXT);
    assert.deepEqual(logged.map((r) => r.count), [1, 2, 3, 4, 5, 6, 7, 8, 16, 32]);
    assert.equal(h.storageErrors(EIO), 40, 'every failure is counted');
    assert.equal(h.blk.stats.storageErrors, 40);
  });

  it('names errnos, and counts numbers beyond the table as "other"', async () => {
    assert.equal(errnoName(5), 'EIO');
    assert.equal(errnoName(28), 'ENOSPC');
    assert.equal(errnoName(11), 'EAGAIN');
    assert.equal(errnoName(95), 'EOPNOTSUPP');
    assert.equal(errnoName(122), 'EDQUOT');
    assert.equal(errnoName(121), 'EREMOTEIO');
    assert.equal(errnoName(999), 'E999');
    assert.equal(storageErrorSlot(999), STORAGE_ERROR_SLOTS - 1);
    assert.equal(storageErrorName(STORAGE_ERROR_SLOTS - 1), 'other');
    assert.equal(storageErrorName(storageErrorSlot(ENOSPC)), 'ENOSPC');
    const h = faultHarness();
    h.engine.fault = failWhen(() => true, -999);
    assert.deepEqual(await h.batch([{ type: VIRTIO_BLK_T_IN, sector: 0, len: 512 }]), [VIRTIO_BLK_S_IOERR]);
    ioErrorRecord({ errno: 'E999' });
    assert.equal(h.storageErrors(STORAGE_ERROR_SLOTS - 1), 1);
  });

  it('counts requests refused before any I/O as IOERR but not as storage errors, and does not log them as such', async () => {
    const h = faultHarness({ readOnly: true });
    assert.deepEqual(await h.batch([
      { type: VIRTIO_BLK_T_OUT, sector: 0, len: 512 },
      { type: VIRTIO_BLK_T_IN, sector: 1 << 20, len: 512 },
    ]), [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR]);
    assert.equal(h.metrics[M_IOERR], 2);
    for (let s = 0; s < STORAGE_ERROR_SLOTS; s++) assert.equal(h.storageErrors(s), 0);
    assert.equal(findLogs(records(), 'I/O error').length, 0);
  });
});
