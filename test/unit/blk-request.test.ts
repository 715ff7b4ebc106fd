import { strict as assert } from 'node:assert';
import { BlkQueue } from '../../src/blk/request';
import { BlkCacheState, BlkDisk } from '../../src/blk/disk';
import {
  VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
} from '../../src/blk/constants';
import { IO_FLUSH, IO_WRITE } from '../../src/storage/engine';
import { Logger, setLogSink } from '../../src/util/log';
import { SplitQueue, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE } from '../../src/virtq/split';
import { fakeGuest, makeAvailable, writeDesc } from '../support/fake-memory';
import { MemoryEngine } from '../support/memory-engine';

const SIZE = 16;
const DESC = 0x1000, AVAIL = 0x2000, USED = 0x3000;
const HDR = 0x10000, DATA = 0x20000, STATUS = 0x30000;
const DISK_BYTES = 1 << 20;

interface Part { addr: number; len: number; write?: boolean }

function harness(diskOpts: Partial<BlkDisk> = {}, cache: BlkCacheState = { writeback: true }) {
  const g = fakeGuest(1 << 20);
  const diskBytes = new Uint8Array(DISK_BYTES);
  const queue = new SplitQueue(g.mem, { size: SIZE, descAddr: DESC, availAddr: AVAIL, usedAddr: USED }, 0, { eventIdx: false, indirect: true });
  let completions = 0;
  const disk: BlkDisk = {
    fd: 99, kind: 'file', sizeBytes: DISK_BYTES, readOnly: false, logicalBlockSize: 512, physicalBlockSize: 512,
    minIoSize: 0, optIoSize: 0, direct: false, directAlignment: 512, discard: true, writeZeroes: true,
    serial: 'test-serial', ...diskOpts,
  };
  let blk!: BlkQueue;
  const engine = new MemoryEngine(diskBytes, g.bytes, (slot, result) => blk.ioComplete(slot, result));
  blk = new BlkQueue({ queue, mem: g.mem, disk, cache, engine, slotBase: 0, onCompleted: () => completions++, log: new Logger() });

  /** Submit one chain made of `parts` as head 0 and wait until it is used. */
  async function run(parts: Part[], head = 0): Promise<{ status: number; usedLen: number }> {
    parts.forEach((p, i) => writeDesc(g.view, DESC, head + i, p.addr, p.len, (p.write ? WRITE : 0) | (i < parts.length - 1 ? NEXT : 0), head + i + 1));
    makeAvailable(g.view, AVAIL, SIZE, [head]);
    const before = queue.usedIdx;
    blk.handle(queue.pop());
    for (let i = 0; i < 10 && queue.usedIdx === before; i++) await new Promise((r) => setImmediate(r));
    assert.notEqual(queue.usedIdx, before, 'request was never completed');
    queue.publish();
    const slot = (queue.usedIdx - 1) & (SIZE - 1);
    assert.equal(g.view.getUint32(USED + 4 + 8 * slot, true), head);
    return { status: g.bytes[STATUS], usedLen: g.view.getUint32(USED + 8 + 8 * slot, true) };
  }

  function header(type: number, sector: number): void {
    g.view.setUint32(HDR, type, true);
    g.view.setUint32(HDR + 4, 0, true);
    g.view.setUint32(HDR + 8, sector % 2 ** 32, true);
    g.view.setUint32(HDR + 12, Math.floor(sector / 2 ** 32), true);
    g.bytes[STATUS] = 0xff;
  }
  return { g, diskBytes, engine, blk, queue, run, header, completions: () => completions };
}

const req = (dataLen: number, dataWritable: boolean): Part[] => [
  { addr: HDR, len: 16 },
  { addr: DATA, len: dataLen, write: dataWritable },
  { addr: STATUS, len: 1, write: true },
];

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
    assert.ok(lines.some((l) => /malformed request/.test(l)));
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
    assert.ok(lines.some((l) => /errno=5/.test(l)));
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
