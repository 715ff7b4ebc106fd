// Dirty-page logging for live migration (VHOST_F_LOG_ALL, LOG_SHMFD): the real
// server, driven by our front-end the way QEMU drives it during a migration
// (SET_LOG_BASE with a memfd, then SET_FEATURES with LOG_ALL while the rings
// run). Checked in the log itself: the pages the device wrote (data read into
// the guest, status bytes, used rings) are marked, pages it only read are not,
// nothing is marked while LOG_ALL is off, and a log switched under load loses
// no mark and gets none after the switch was acknowledged.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProtocolFeature, VHOST_F_LOG_ALL, bit, hasBit } from '../../protocol';
import { BlkFrontend, FRONTEND_PROTOCOL_FEATURES, VIRTIO_BLK_S_OK, encodeBlkHeader } from '../../src/frontend';
import { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../src/frontend/blk-spec';
import { native } from '../../src/native/addon';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublkWithArgs } from '../support/servers';

const PAGE = 4096;
/** 64 MiB of guest RAM (the front-end's default) at one bit per page. */
const LOG_BYTES = (64 << 20) / PAGE / 8;

interface Log { fd: number; bytes: Uint8Array; close(): void }

function makeLog(): Log {
  const fd = native.memfdCreate('test-dirty-log');
  fs.ftruncateSync(fd, LOG_BYTES);
  const addr = native.mmap(fd, LOG_BYTES, 0, true);
  const buffer = native.arrayBuffer(addr, LOG_BYTES);
  return {
    fd, bytes: new Uint8Array(buffer),
    close() { native.detach(buffer); native.munmap(addr, LOG_BYTES); native.close(fd); },
  };
}

const dirty = (log: Log, gpa: number): boolean => (log.bytes[Math.floor(gpa / PAGE / 8)] & (1 << (Math.floor(gpa / PAGE) % 8))) !== 0;
const marks = (log: Log): number => log.bytes.reduce((n, b) => n + popcount(b), 0);
function popcount(b: number): number { let n = 0; for (; b !== 0; b &= b - 1) n++; return n; }

describe('dirty-page logging for live migration', function () {
  this.timeout(60000);
  let dir: string;
  let server: ServerProcess | undefined;
  let fe: BlkFrontend | undefined;
  const logs: Log[] = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-dirty-'));
    const image = path.join(dir, 'disk.img');
    const socketPath = path.join(dir, 'vublk.sock');
    createImage(image, 8 << 20);
    server = await startVublkWithArgs(['serve', '--socket', socketPath, '--num-queues', '2', '--iothreads', '2', image], socketPath);
    fe = await BlkFrontend.connect({
      socketPath, numQueues: 2, protocolFeatures: FRONTEND_PROTOCOL_FEATURES | bit(ProtocolFeature.LOG_SHMFD),
    });
  });
  after(async () => {
    await fe?.disconnect();
    await server?.stop();
    for (const l of logs) l.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A read of `len` bytes from `sector` into a buffer at `data`, status byte at `status`. */
  async function readInto(queue: number, sector: number, data: number, len: number, status: number): Promise<void> {
    const c = await fe!.submit(queue, [
      { readable: encodeBlkHeader(VIRTIO_BLK_T_IN, sector) }, { addr: data, len, writable: true }, { addr: status, len: 1, writable: true },
    ]);
    assert.equal(fe!.ram.read(status, 1)[0], VIRTIO_BLK_S_OK, `status ${c.status}`);
  }

  const page = (): number => fe!.ram.alloc(PAGE, PAGE);

  it('marks the pages the device writes (data, status, used ring) while LOG_ALL is on, and nothing else', async () => {
    const f = fe!;
    assert.ok(hasBit(f.protocolFeatures, ProtocolFeature.LOG_SHMFD), 'LOG_SHMFD offered and negotiated');
    const log = makeLog();
    logs.push(log);
    await f.client.setLogBase(log.fd, LOG_BYTES);
    const [data, status, source, untouched] = [0, 0, 0, 0].map(page);
    const big = f.ram.alloc(4 * PAGE, PAGE);

    await readInto(0, 0, data, 512, status);
    assert.equal(marks(log), 0, 'nothing is logged before VHOST_F_LOG_ALL');

    await f.client.setFeatures(f.negotiatedFeatures | bit(VHOST_F_LOG_ALL));
    await readInto(0, 8, big, 4 * PAGE, status);
    for (let p = 0; p < 4; p++) assert.ok(dirty(log, big + p * PAGE), `data page ${p} of the read`);
    assert.ok(dirty(log, status), 'status byte');
    assert.ok(dirty(log, f.queue(0).ring.layout.usedAddr), 'used ring of queue 0');
    // A write: the device reads its data and writes only the status byte.
    f.ram.write(source, new Uint8Array(512).fill(7));
    const w = await f.submit(1, [{ readable: encodeBlkHeader(VIRTIO_BLK_T_OUT, 64) }, { addr: source, len: 512, writable: false }, { writable: 1 }]);
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    assert.ok(dirty(log, f.queue(1).ring.layout.usedAddr), 'used ring of queue 1');
    assert.ok(!dirty(log, source), 'a page the device only read');
    assert.ok(!dirty(log, untouched), 'a page nobody wrote');

    await f.client.setFeatures(f.negotiatedFeatures);
    log.bytes.fill(0);
    await readInto(0, 16, data, 512, status);
    assert.equal(marks(log), 0, 'nothing is logged once VHOST_F_LOG_ALL is off again');
  });

  it('switches to a new log under load across two iothreads: no mark lost, none in the old log after the switch', async () => {
    const f = fe!;
    const [a, b] = [makeLog(), makeLog()];
    logs.push(a, b);
    await f.client.setLogBase(a.fd, LOG_BYTES);
    await f.client.setFeatures(f.negotiatedFeatures | bit(VHOST_F_LOG_ALL));
    const statusPages = [page(), page()];
    const wave = (n: number): { pages: number[]; done: Promise<void[]> } => {
      const pages = Array.from({ length: n }, page);
      return { pages, done: Promise.all(pages.map((p, i) => readInto(i % 2, 8 * i, p, 2048, statusPages[i % 2] + (i % 2048)))) };
    };
    const first = wave(150);
    // Switch while the first wave is in flight on both queues.
    await new Promise((r) => setImmediate(r));
    await f.client.setLogBase(b.fd, LOG_BYTES);
    const frozen = a.bytes.slice();
    const second = wave(150);
    await Promise.all([first.done, second.done]);
    for (const p of first.pages) assert.ok(dirty(a, p) || dirty(b, p), `page 0x${p.toString(16)} of the first wave is marked in one log`);
    for (const p of second.pages) assert.ok(dirty(b, p), `page 0x${p.toString(16)} of the second wave is in the new log`);
    assert.deepEqual(a.bytes, frozen, 'the old log is not written after the switch was acknowledged');
    await f.client.setFeatures(f.negotiatedFeatures);
  });
});
