// The io_uring engine (native/uring.c, src/storage/uring.ts), engine selection
// (src/storage/select.ts), and the data-path contract both engines share.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import {
  IO_FLUSH, IO_READ, IO_WRITE, IoEngineHandle, native, URING_SETUP_COOP_TASKRUN,
  URING_SETUP_DEFER_TASKRUN, URING_SETUP_SINGLE_ISSUER, URING_SETUP_TASKRUN_FLAG, UringEngineHandle,
} from '../../src/native/addon';
import { CompletionHandler, StorageEngine } from '../../src/storage/engine';
import { probeUring, selectEngine, UringAvailability } from '../../src/storage/select';
import { InlineEngine } from '../../src/storage/inline';
import { ThreadPoolEngine } from '../../src/storage/threadpool';
import { stageSubmission, submissionTable, TABLE_COUNT, TABLE_END, TABLE_FIRST, UringEngine } from '../../src/storage/uring';
import { LOG_LEVEL_VALUES, Logger, setLogSink } from '../../src/util/log';
import { OpenFiles } from '../support/open-files';
import { findLogs, parseLogRecords } from '../support/logs';
import { sleep, waitFor } from '../support/wait';

const ERRNO = os.constants.errno;
// Compiled modules, for workers that must load them themselves.
const ADDON_JS = path.join(__dirname, '..', '..', 'src', 'native', 'addon.js');

v8.setFlagsFromString('--expose-gc');
const forceGc = vm.runInNewContext('gc') as () => void;


function assertCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, code);
    return true;
  });
}

/** Guest RAM stand-in: a memfd mapped into this process, as the server maps QEMU's. */
class GuestMemory {
  readonly fd: number;
  readonly base: number;
  readonly bytes: Uint8Array;
  private readonly ab: ArrayBuffer;

  constructor(readonly size: number) {
    this.fd = native.memfdCreate('guest');
    fs.ftruncateSync(this.fd, size);
    this.base = native.mmap(this.fd, size, 0, true);
    this.ab = native.arrayBuffer(this.base, size);
    this.bytes = new Uint8Array(this.ab);
  }

  slice(offset: number, length: number): Buffer {
    return Buffer.from(this.bytes.subarray(offset, offset + length));
  }

  close(): void {
    native.detach(this.ab);
    native.munmap(this.base, this.size);
    native.close(this.fd);
  }
}

/** Routes completions to promises per slot; fails loudly on unexpected ones. */
class Completions {
  private readonly waiters = new Map<number, (r: number) => void>();
  readonly onComplete: CompletionHandler = (slot, result) => {
    const w = this.waiters.get(slot);
    this.waiters.delete(slot);
    assert.ok(w, `unexpected completion for slot ${slot}`);
    w(result);
  };

  expect(slot: number): Promise<number> {
    assert.ok(!this.waiters.has(slot), `slot ${slot} already awaited`);
    return new Promise((resolve) => this.waiters.set(slot, resolve));
  }
}

type EngineMaker = (slots: number, onComplete: CompletionHandler) => StorageEngine;
const ENGINES: Array<[string, EngineMaker]> = [
  ['threads', (slots, cb) => new ThreadPoolEngine(slots, cb)],
  ['io_uring', (slots, cb) => new UringEngine(slots, cb)],
  ['inline', (slots, cb) => new InlineEngine(slots, cb)],
];

const GUEST_SIZE = 256 * 1024;

for (const [engineName, makeEngine] of ENGINES) {
  describe(`storage engine contract: ${engineName}`, () => {
    let dir = '';
    let guest: GuestMemory;
    let done: Completions;
    let engine: StorageEngine;
    const files = new OpenFiles();
    const open = (file: string, flags: string | number): number => files.open(file, flags);

    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-engine-'));
      guest = new GuestMemory(GUEST_SIZE);
      done = new Completions();
      engine = makeEngine(8, done.onComplete);
      assert.equal(engine.name, engineName);
    });

    afterEach(async () => {
      await waitFor('requests to drain', () => engine.inFlight() === 0);
      engine.close();
      files.closeAll();
      guest.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    /** One request through the StorageEngine interface, batch closed with flush(). */
    function run(slot: number, op: number, fd: number, offset: number, iov: number[]): Promise<number> {
      const p = done.expect(slot);
      engine.submit(slot, op, fd, offset, Float64Array.from(iov), iov.length / 2);
      engine.flush();
      return p;
    }

    function makeFile(size: number): { file: string; data: Buffer } {
      const file = path.join(dir, 'disk.img');
      const data = randomBytes(size);
      fs.writeFileSync(file, data);
      return { file, data };
    }

    it('reads a file into three iovecs of guest memory', async () => {
      const { file, data } = makeFile(200000);
      guest.bytes.fill(0xee);
      const fd = open(file, 'r');
      const b = guest.base;
      assert.equal(await run(3, IO_READ, fd, 4097, [b + 100, 1000, b + 50000, 70000, b + 200000, 2500]), 73500);
      assert.ok(guest.slice(100, 1000).equals(data.subarray(4097, 5097)));
      assert.ok(guest.slice(50000, 70000).equals(data.subarray(5097, 75097)));
      assert.ok(guest.slice(200000, 2500).equals(data.subarray(75097, 77597)));
      for (const i of [99, 1100, 49999, 120000, 199999, 202500]) assert.equal(guest.bytes[i], 0xee, `byte ${i} untouched`);
    });

    it('writes three iovecs of guest memory into a file', async () => {
      const fd = open(path.join(dir, 'out.img'), 'w+');
      guest.bytes.set(randomBytes(GUEST_SIZE));
      const b = guest.base;
      assert.equal(await run(0, IO_WRITE, fd, 5000, [b + 300, 700, b + 9000, 100000, b + 240000, 10]), 100710);
      const disk = fs.readFileSync(path.join(dir, 'out.img'));
      assert.equal(disk.length, 105710);
      assert.ok(disk.subarray(0, 5000).equals(Buffer.alloc(5000)));
      assert.ok(disk.subarray(5000, 5700).equals(guest.slice(300, 700)));
      assert.ok(disk.subarray(5700, 105700).equals(guest.slice(9000, 100000)));
      assert.ok(disk.subarray(105700).equals(guest.slice(240000, 10)));
    });

    it('skips empty iovecs and treats an empty request as a 0-byte transfer', async () => {
      const fd = open(path.join(dir, 'out.img'), 'w+');
      guest.bytes.set(randomBytes(64), 0);
      const b = guest.base;
      assert.equal(await run(1, IO_WRITE, fd, 0, [b, 0, b + 8, 0]), 0);
      assert.equal(await run(1, IO_WRITE, fd, 10, [b, 0, b + 1, 3, b + 9, 0, b + 20, 2]), 5);
      assert.equal(fs.fstatSync(fd).size, 15);
      const disk = fs.readFileSync(path.join(dir, 'out.img'));
      assert.ok(disk.subarray(10, 13).equals(guest.slice(1, 3)));
      assert.ok(disk.subarray(13, 15).equals(guest.slice(20, 2)));
    });

    it('stops at end of file with a short count', async () => {
      const { file, data } = makeFile(10000);
      const fd = open(file, 'r');
      guest.bytes.fill(0);
      const b = guest.base;
      assert.equal(await run(1, IO_READ, fd, 9000, [b, 0, b + 8192, 600, b + 16384, 4096]), 1000);
      assert.ok(guest.slice(8192, 600).equals(data.subarray(9000, 9600)));
      assert.ok(guest.slice(16384, 400).equals(data.subarray(9600, 10000)));
      assert.equal(guest.bytes[16784], 0);
      assert.equal(await run(2, IO_READ, fd, 10000, [b, 4096]), 0, 'at end of file');
      assert.equal(await run(2, IO_READ, fd, 2 ** 40, [b, 4096]), 0, 'far beyond end of file');
    });

    it('reports failures as negative errno results', async () => {
      const stale = native.eventfd(0);
      native.close(stale);
      const b = guest.base;
      assert.equal(await run(0, IO_READ, stale, 0, [b, 512]), -ERRNO.EBADF);
      assert.equal(await run(1, IO_WRITE, -1, 0, [b, 512]), -ERRNO.EBADF);
      assert.equal(await run(2, IO_FLUSH, stale, 0, []), -ERRNO.EBADF);
      assert.equal(await run(3, IO_READ, stale, 0, []), -ERRNO.EBADF, 'even an empty request checks the fd');
      const { file } = makeFile(4096);
      const ro = open(file, 'r');
      assert.equal(await run(0, IO_WRITE, ro, 0, [b, 512]), -ERRNO.EBADF, 'write to a read-only fd');
      assert.equal(await run(0, IO_READ, ro, 0, [4096, 512]), -ERRNO.EFAULT, 'bad guest address is EFAULT, not a crash');
      const dirFd = open(dir, 'r');
      assert.equal(await run(4, IO_READ, dirFd, 0, [b, 512]), -ERRNO.EISDIR);
    });

    it('flushes with fdatasync', async () => {
      const fd = open(path.join(dir, 'out.img'), 'w+');
      guest.bytes.fill(0x5a, 0, 4096);
      assert.equal(await run(0, IO_WRITE, fd, 0, [guest.base, 4096]), 4096);
      assert.equal(await run(0, IO_FLUSH, fd, 0, []), 0);
      assert.equal(await run(0, IO_FLUSH, fd, 123, [guest.base, 1]), 0, 'offset and iov are ignored');
      assert.ok(fs.readFileSync(path.join(dir, 'out.img')).equals(Buffer.alloc(4096, 0x5a)));
    });

    it('refuses a busy slot and closing with requests in flight', async () => {
      const { file } = makeFile(4096);
      const fd = open(file, 'r');
      const iov = Float64Array.of(guest.base, 512);
      const p = done.expect(5);
      engine.submit(5, IO_READ, fd, 0, iov, 1);
      assert.equal(engine.inFlight(), 1);
      assertCode(() => engine.submit(5, IO_READ, fd, 0, iov, 1), 'EBUSY');
      assertCode(() => engine.close(), 'EBUSY');
      engine.flush();
      assert.equal(await p, 512);
      assert.equal(engine.inFlight(), 0);
    });
  });
}

/**
 * The completions array, a submission table and onCompletions for uringEngineCreate: the addon
 * hands completions over in batches; these tests mostly want one call per request.
 */
function perRequest(slots: number, cb: CompletionHandler): [Float64Array, Float64Array, (count: number) => void] {
  const done = new Float64Array(2 * slots);
  return [done, submissionTable(slots), (count) => { for (let i = 0; i < 2 * count; i += 2) cb(done[i], done[i + 1]); }];
}

describe('io_uring engine', () => {
  let dir = '';
  let guest: GuestMemory;
  let handles: UringEngineHandle[] = [];
  const tables = new Map<UringEngineHandle, Float64Array>();
  const files = new OpenFiles();
  const open = (file: string, flags: string | number): number => files.open(file, flags);
  const create = (slots: number, maxIov: number, entries: number, cb: CompletionHandler, flags?: number): UringEngineHandle => {
    const args = perRequest(slots, cb);
    const h = native.uringEngineCreate(slots, maxIov, entries, ...args, flags);
    handles.push(h);
    tables.set(h, args[1]);
    return h;
  };
  /** Stage one request in the engine's submission table (it must have room). */
  const stage = (h: UringEngineHandle, slot: number, op: number, fd: number, offset: number, iov: Float64Array): void => {
    assert.ok(stageSubmission(tables.get(h)!, slot, op, fd, offset, iov, iov.length / 2), 'room in the table');
  };

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-uring-'));
    guest = new GuestMemory(GUEST_SIZE);
  });

  afterEach(async () => {
    for (const h of handles) {
      await waitFor('requests to drain', () => native.uringEngineInFlight(h) === 0);
      native.uringEngineDestroy(h);
    }
    handles = [];
    tables.clear();
    files.closeAll();
    guest.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function blockFile(blocks: number, blockSize: number): string {
    // Block i holds the 32-bit value i repeated: any misplaced byte shows.
    const data = Buffer.alloc(blocks * blockSize);
    for (let i = 0; i < blocks; i++) {
      for (let o = 0; o < blockSize; o += 4) data.writeUInt32LE(i, i * blockSize + o);
    }
    const file = path.join(dir, 'blocks.img');
    fs.writeFileSync(file, data);
    return file;
  }

  it('sizes the rings and reports the setup it runs with', () => {
    const h = create(1000, 4, 5, () => undefined);
    const st = native.uringEngineStats(h);
    assert.equal(st.sqEntries, 8, 'SQ rounded up to a power of two');
    assert.ok(st.cqEntries >= 1000, `CQ of ${st.cqEntries} must hold a CQE per slot`);
    assert.equal(st.enters, 0);
    assert.equal(st.queued, 0);
    // Default flags on a kernel that takes them (6.0+; this project's CI runs 6.18).
    const want = URING_SETUP_SINGLE_ISSUER | URING_SETUP_COOP_TASKRUN;
    assert.equal(st.setupFlags & want, want, `setup flags 0x${st.setupFlags.toString(16)}`);
    assert.equal(st.setupFlags & URING_SETUP_DEFER_TASKRUN, 0);
  });

  it('validates its arguments', () => {
    const noop = (): void => undefined;
    assert.throws(() => native.uringEngineCreate(0, 1, 8, ...perRequest(0, noop)), RangeError);
    assert.throws(() => native.uringEngineCreate(65537, 1, 8, ...perRequest(65537, noop)), RangeError);
    assert.throws(() => native.uringEngineCreate(1, 1025, 8, ...perRequest(1, noop)), RangeError);
    assert.throws(() => native.uringEngineCreate(1, 1, 0, ...perRequest(1, noop)), RangeError);
    assert.throws(() => native.uringEngineCreate(1, 1, 32769, ...perRequest(1, noop)), RangeError);
    assert.throws(() => native.uringEngineCreate(1, 1, 8, new Float64Array(2), submissionTable(1), null as unknown as () => void), TypeError);
    assert.throws(() => native.uringEngineCreate(2, 1, 8, new Float64Array(3), submissionTable(2), noop), RangeError, 'room for a pair per slot');
    assert.throws(() => native.uringEngineCreate(1, 1, 8, new Uint32Array(4) as unknown as Float64Array, submissionTable(1), noop), TypeError);
    assert.throws(() => native.uringEngineCreate(1, 1, 8, new Float64Array(2), new Float64Array(6), noop), RangeError, 'room for one record');
    assert.throws(() => native.uringEngineCreate(1, 1, 8, new Float64Array(2), [] as unknown as Float64Array, noop), TypeError);
    assert.throws(() => native.uringEngineCreate(1, 1, 8, ...perRequest(1, noop), 1 /* IOPOLL */), RangeError);
    // DEFER_TASKRUN needs SINGLE_ISSUER: the kernel's EINVAL comes through, no silent fallback.
    assertCode(() => native.uringEngineCreate(1, 1, 8, ...perRequest(1, noop), URING_SETUP_DEFER_TASKRUN), 'EINVAL');

    const fd = open(__filename, 'r');
    const h = create(4, 2, 8, noop);
    const iov = Float64Array.of(guest.base, 512);
    assert.throws(() => native.uringEngineSubmit(h, 4, IO_READ, fd, 0, iov, 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, -1, IO_READ, fd, 0, iov, 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, 3, fd, 0, iov, 1), RangeError, 'range ops go through submitRange');
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, -1, iov, 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0.5, iov, 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 2 ** 53 + 2, iov, 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0, iov, 2), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0, new Float64Array(10), 3), RangeError, 'maxIov');
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0, Float64Array.of(guest.base, -1), 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0, Float64Array.of(0.5, 1), 1), RangeError);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0, [guest.base, 1] as unknown as Float64Array, 1), TypeError);
    assert.throws(() => native.uringEngineSubmitRange(h, 0, IO_READ, fd, 0, 1), RangeError);
    // Handles are type-tagged: a thread-pool engine is not an io_uring engine, nor the reverse.
    const pool = native.ioEngineCreate(1, 1, noop);
    assert.throws(() => native.uringEngineSubmit(pool as unknown as UringEngineHandle, 0, IO_READ, fd, 0, iov, 1), TypeError);
    assert.throws(() => native.ioEngineInFlight(h as unknown as IoEngineHandle), TypeError);
    assert.throws(() => native.uringEngineStats({} as UringEngineHandle), TypeError);
    native.ioEngineDestroy(pool);
    assert.equal(native.uringEngineInFlight(h), 0, 'failed submissions leave nothing in flight');
    assert.equal(native.uringEngineStats(h).queued, 0);
  });

  it('issues a batch with one io_uring_enter, and only when flushed', async () => {
    const N = 16;
    const file = blockFile(N, 4096);
    const fd = open(file, 'r');
    const results: Array<[number, number]> = [];
    const h = create(N, 1, 32, (slot, r) => results.push([slot, r]));
    for (let i = 0; i < N; i++) {
      native.uringEngineSubmit(h, i, IO_READ, fd, (N - 1 - i) * 4096, Float64Array.of(guest.base + i * 4096, 4096), 1);
    }
    let st = native.uringEngineStats(h);
    assert.equal(st.enters, 0, 'nothing issued before the flush');
    assert.equal(st.queued, N);
    assert.equal(native.uringEngineInFlight(h), N);
    await sleep(30);
    assert.equal(results.length, 0, 'queued requests do not complete on their own');

    assert.equal(h.flush(), 0, 'nothing collected without asking');
    st = native.uringEngineStats(h);
    assert.equal(st.enters, 1, 'one syscall for the whole batch');
    assert.equal(st.submitted, N);
    assert.equal(st.queued, 0);
    // Without `collect`, even reads the page cache served inside the enter come from the loop.
    assert.equal(results.length, 0);
    assert.equal(st.flushDeliveries, 0);
    h.flush();
    assert.equal(native.uringEngineStats(h).enters, 1, 'an empty flush makes no syscall');

    await waitFor('all completions', () => results.length === N);
    assert.deepEqual(results.map(([s]) => s).sort((a, b) => a - b), [...Array(N).keys()]);
    for (const [, r] of results) assert.equal(r, 4096);
    const view = new DataView(guest.bytes.buffer);
    for (let i = 0; i < N; i++) assert.equal(view.getUint32(i * 4096 + 2048, true), N - 1 - i, `slot ${i} data`);
    st = native.uringEngineStats(h);
    assert.equal(st.cqes, N);
    assert.equal(st.completed, N);
    assert.equal(native.uringEngineInFlight(h), 0);
  });

  it('takes staged requests at flush and returns those that completed inside the enter', () => {
    // /dev/zero reads never wait, so the kernel completes them while they are submitted
    // (as it does for reads the page cache serves).
    const fd = open('/dev/zero', 'r');
    guest.bytes.fill(0xee, 0, 5 * 512);
    let callbacks = 0;
    const [done, table, onCompletions] = perRequest(4, () => { callbacks++; });
    const h = native.uringEngineCreate(4, 2, 4, done, table, onCompletions);
    handles.push(h);
    for (let i = 0; i < 3; i++) assert.ok(stageSubmission(table, i, IO_READ, fd, 0, Float64Array.of(guest.base + i * 512, 512), 1));
    // Records of any size; the pairs of a flush record are skipped.
    assert.ok(stageSubmission(table, 3, IO_READ, fd, 0, Float64Array.of(guest.base + 3 * 512, 256, guest.base + 4 * 512, 256), 2));
    assert.equal(table[TABLE_COUNT], 4);
    assert.equal(native.uringEngineInFlight(h), 4, 'staged requests count as in flight');
    assert.equal(native.uringEngineStats(h).queued, 4);
    assertCode(() => native.uringEngineDestroy(h), 'EBUSY');
    assert.equal(native.uringEngineStats(h).enters, 0, 'staging makes no call');

    assert.equal(h.flush(true), 4);
    assert.deepEqual([table[TABLE_COUNT], table[TABLE_END]], [0, TABLE_FIRST], 'the table is empty again');
    const pairs = [0, 1, 2, 3].map((i) => [done[2 * i], done[2 * i + 1]]).sort((a, b) => a[0] - b[0]);
    assert.deepEqual(pairs, [[0, 512], [1, 512], [2, 512], [3, 512]]);
    assert.equal(callbacks, 0, 'returned, not called back');
    assert.ok(guest.bytes.subarray(0, 3 * 512 + 256).every((b) => b === 0));
    assert.ok(guest.bytes.subarray(4 * 512, 4 * 512 + 256).every((b) => b === 0));
    assert.ok(guest.bytes.subarray(3 * 512 + 256, 4 * 512).every((b) => b === 0xee), 'only the iovecs given');
    const st = native.uringEngineStats(h);
    assert.equal(st.enters, 1);
    assert.equal(st.flushDeliveries, 1);
    assert.equal(st.wakeups, 0, 'no loop wakeup was needed');
    assert.equal(native.uringEngineInFlight(h), 0);
  });

  it('checks staged records when it takes them: bad fields fail that request, bad slots and layouts throw', async () => {
    const fd = open('/dev/zero', 'r');
    const results: Array<[number, number]> = [];
    const [done, table, onCompletions] = perRequest(4, (slot, r) => results.push([slot, r]));
    const h = native.uringEngineCreate(4, 2, 4, done, table, onCompletions);
    handles.push(h);
    const iov = Float64Array.of(guest.base, 512);
    // A free slot with a bad field: that request completes with -EINVAL (from the loop), the others run.
    const failing: Array<[string, () => void]> = [
      ['op', () => stageSubmission(table, 1, 3, fd, 0, iov, 1)],
      ['fd', () => stageSubmission(table, 1, IO_READ, 2 ** 31, 0, iov, 1)],
      ['offset', () => stageSubmission(table, 1, IO_READ, fd, 0.5, iov, 1)],
      ['offset', () => stageSubmission(table, 1, IO_READ, fd, 2 ** 53 + 2, iov, 1)],
      ['iovec', () => stageSubmission(table, 1, IO_READ, fd, 0, Float64Array.of(guest.base, -1), 1)],
    ];
    for (const [what, stageBad] of failing) {
      results.length = 0;
      assert.ok(stageSubmission(table, 0, IO_READ, fd, 0, iov, 1));
      stageBad();
      assert.ok(stageSubmission(table, 2, IO_READ, fd, 0, iov, 1), 'a record after the bad one');
      const n = h.flush(true);
      assert.deepEqual([table[TABLE_COUNT], table[TABLE_END]], [0, TABLE_FIRST], `${what}: the table is emptied`);
      const inline = [...Array(n).keys()].map((k) => [done[2 * k], done[2 * k + 1]]).sort((a, b) => a[0] - b[0]);
      assert.deepEqual(inline, [[0, 512], [2, 512]], `${what}: the good records ran`);
      await waitFor(`${what}: the bad record's completion`, () => results.length === 1);
      assert.deepEqual(results, [[1, -ERRNO.EINVAL]], what);
      assert.equal(native.uringEngineInFlight(h), 0, `${what}: nothing left behind`);
    }
    // A record naming no slot, or one too long to find the next by: flush throws; the good record before it ran.
    const throwing: Array<[string, () => void, RegExp]> = [
      ['slot', () => stageSubmission(table, 4, IO_READ, fd, 0, iov, 1), /record 1 has a bad slot/],
      ['iovCount', () => stageSubmission(table, 1, IO_READ, fd, 0, new Float64Array(6), 3), /record 1 runs past the end or has a bad iovCount/],
      ['count', () => { table[TABLE_COUNT] = 2; }, /record 1 runs past the end/],
    ];
    for (const [what, stageBad, message] of throwing) {
      assert.ok(stageSubmission(table, 0, IO_READ, fd, 0, iov, 1));
      stageBad();
      assert.throws(() => h.flush(true), (err: Error) => err instanceof RangeError && message.test(err.message), what);
      assert.deepEqual([table[TABLE_COUNT], table[TABLE_END]], [0, TABLE_FIRST], `${what}: the table is emptied`);
      assert.equal(h.flush(true), 1, what);
      assert.deepEqual([done[0], done[1]], [0, 512]);
      assert.equal(native.uringEngineInFlight(h), 0, `${what}: nothing left behind`);
    }
    // A header that does not fit the table: nothing is taken.
    assert.ok(stageSubmission(table, 0, IO_READ, fd, 0, iov, 1));
    table[TABLE_END] = table.length + 1;
    assert.throws(() => h.flush(true), /do not fit/);
    assert.equal(native.uringEngineInFlight(h), 0);
    // A slot staged twice: the second record finds it busy and is skipped; the records around it run.
    assert.ok(stageSubmission(table, 2, IO_READ, fd, 0, iov, 1));
    assert.ok(stageSubmission(table, 2, IO_READ, fd, 0, iov, 1));
    assert.ok(stageSubmission(table, 3, IO_READ, fd, 0, iov, 1));
    assertCode(() => h.flush(), 'EBUSY');
    assert.equal(h.flush(true), 2);
    assert.throws(() => h.flush(1 as unknown as boolean), TypeError);
  });

  it('flushes by itself when the SQ is full', () => {
    const fd = open(blockFile(16, 512), 'r');
    const h = create(16, 1, 4, () => undefined);
    for (let i = 0; i < 10; i++) native.uringEngineSubmit(h, i, IO_READ, fd, i * 512, Float64Array.of(guest.base + i * 512, 512), 1);
    const st = native.uringEngineStats(h);
    assert.equal(st.autoFlushes, 2, 'the 5th and 9th submit found 4 queued');
    assert.equal(st.submitted, 8);
    assert.equal(st.queued, 2);
    h.flush();
    assert.equal(native.uringEngineStats(h).submitted, 10);
  });

  it('runs 10000 requests through a 64-slot engine with an 8-entry SQ', async function () {
    this.timeout(20000);
    const BLOCKS = 10000, BS = 512, SLOTS = 64;
    const fd = open(blockFile(BLOCKS, BS), 'r');
    const view = new DataView(guest.bytes.buffer);
    const block = new Int32Array(SLOTS);
    let next = 0;
    let completed = 0;
    let bad = '';
    const iov = new Float64Array(2);
    const issue = (slot: number): void => {
      block[slot] = next++;
      iov[0] = guest.base + slot * BS;
      iov[1] = BS;
      stage(h, slot, IO_READ, fd, block[slot] * BS, iov);
    };
    const h = create(SLOTS, 1, 8, (slot, r) => {
      completed++;
      const got = view.getUint32(slot * BS + BS - 4, true);
      if (!bad && (r !== BS || got !== block[slot])) bad = `slot ${slot}: result ${r}, block ${got}, want ${block[slot]}`;
      if (next < BLOCKS) issue(slot); // staged, not flushed: the engine takes it when the handover returns
    });
    for (let s = 0; s < SLOTS; s++) issue(s);
    h.flush();
    // Page-cache reads complete while being submitted, so there is always more
    // to do; the engine must still let the rest of the loop run in between.
    let ticks = 0;
    const tick = (): void => { if (completed < BLOCKS) { ticks++; setImmediate(tick); } };
    setImmediate(tick);
    await waitFor('10000 completions', () => completed === BLOCKS, 15000);
    assert.equal(bad, '');
    assert.ok(ticks >= 5, `other callbacks ran ${ticks} times meanwhile`);
    const st = native.uringEngineStats(h);
    assert.equal(st.submitted, BLOCKS);
    assert.equal(st.completed, BLOCKS);
    assert.ok(st.autoFlushes >= 7, `auto flushes: ${st.autoFlushes}`);
    assert.ok(st.enters < BLOCKS / 4, `io_uring_enter calls: ${st.enters} (batched, not one per request)`);
  });

  it('resubmits the remainder of a short read', async () => {
    // A FIFO hands out what it has: the first read returns short, the engine
    // must go on at the right iovec and offset, and complete only when full.
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const rfd = open(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const wfd = open(fifo, fs.constants.O_WRONLY);
    const results: number[] = [];
    const h = create(1, 4, 4, (_slot, r) => results.push(r));
    const data = randomBytes(300);
    guest.bytes.fill(0xee, 0, 4096);
    fs.writeSync(wfd, data, 0, 100);
    const b = guest.base;
    native.uringEngineSubmit(h, 0, IO_READ, rfd, 0, Float64Array.of(b, 60, b + 1000, 0, b + 2000, 140, b + 3000, 100), 4);
    h.flush();
    await waitFor('the short read', () => native.uringEngineStats(h).requeues >= 1);
    await sleep(20);
    assert.equal(results.length, 0, 'no completion while data is missing');
    fs.writeSync(wfd, data, 100, 200);
    await waitFor('completion', () => results.length === 1);
    assert.deepEqual(results, [300]);
    assert.ok(guest.slice(0, 60).equals(data.subarray(0, 60)));
    assert.ok(guest.slice(2000, 140).equals(data.subarray(60, 200)));
    assert.ok(guest.slice(3000, 100).equals(data.subarray(200, 300)));
    for (const i of [60, 1000, 1999, 2140, 2999, 3100]) assert.equal(guest.bytes[i], 0xee, `byte ${i} untouched`);
  });

  it('refuses to be destroyed with requests queued or in flight, then lets go', async () => {
    // An empty FIFO: the read stays on the ring until something is written
    // (a file read would complete inside the flush).
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const fd = open(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const wfd = open(fifo, fs.constants.O_WRONLY);
    let result: number | undefined;
    const h = native.uringEngineCreate(2, 1, 4, ...perRequest(2, (_s, r) => { result = r; }));
    native.uringEngineSubmit(h, 1, IO_READ, fd, 0, Float64Array.of(guest.base, 4096), 1);
    assertCode(() => native.uringEngineDestroy(h), 'EBUSY'); // queued, not issued
    h.flush();
    assertCode(() => native.uringEngineDestroy(h), 'EBUSY'); // on the ring
    fs.writeSync(wfd, Buffer.alloc(4096, 7));
    await waitFor('completion', () => result !== undefined);
    assert.equal(result, 4096);
    native.uringEngineDestroy(h);
    native.uringEngineDestroy(h);
    assert.equal(native.uringEngineInFlight(h), 0);
    assert.throws(() => native.uringEngineSubmit(h, 0, IO_READ, fd, 0, Float64Array.of(guest.base, 1), 1), /destroyed/);
    assert.throws(() => h.flush(), /destroyed/);
  });

  it('binds flush to its engine: called without the handle, it still flushes that engine', () => {
    const fd = open('/dev/zero', 'r');
    const [done, table, onCompletions] = perRequest(2, () => assert.fail('returned, not called back'));
    const h = native.uringEngineCreate(2, 1, 2, done, table, onCompletions);
    handles.push(h);
    const flush = h.flush; // carries its engine: no receiver needed
    assert.ok(stageSubmission(table, 1, IO_READ, fd, 0, Float64Array.of(guest.base, 512), 1));
    assert.equal(flush(false), 0, 'issued, nothing collected without asking');
    assert.ok(stageSubmission(table, 0, IO_READ, fd, 0, Float64Array.of(guest.base + 512, 512), 1));
    assert.equal(flush(true), 2, 'both reads are complete after this enter');
    assert.deepEqual([[done[0], done[1]], [done[2], done[3]]].sort((a, b) => a[0] - b[0]), [[0, 512], [1, 512]]);
    assert.throws(() => flush(1 as unknown as boolean), TypeError);
    assert.equal(native.uringEngineStats(h).enters, 2);
  });

  it('completes a batch the kernel refuses with -errno instead of throwing', async () => {
    // Make io_uring_enter fail: close the ring's fd under the engine (its
    // mappings keep the ring itself alive), then flush.
    const ringFds = (): Set<number> => new Set(fs.readdirSync('/proc/self/fd').map(Number).filter((fd) => {
      try { return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[io_uring]'; } catch { return false; }
    }));
    const before = ringFds();
    const results = new Map<number, number>();
    const h = native.uringEngineCreate(4, 1, 4, ...perRequest(4, (slot, r) => results.set(slot, r)));
    const ringFd = [...ringFds()].filter((fd) => !before.has(fd));
    assert.equal(ringFd.length, 1, 'found the new ring fd');
    // The loop watches the ring fd; let it register it with epoll before the fd goes
    // (libuv aborts on an fd that is closed before it could be added).
    await new Promise((resolve) => setImmediate(resolve));
    const fd = open(blockFile(4, 512), 'r');
    native.close(ringFd[0]);
    let filler = -1;
    try {
      for (let i = 0; i < 3; i++) native.uringEngineSubmit(h, i, IO_READ, fd, i * 512, Float64Array.of(guest.base + i * 512, 512), 1);
      assert.equal(h.flush(), 0, 'nothing was issued');
      assert.equal(results.size, 0, 'no completion inside flush()');
      assert.equal(native.uringEngineStats(h).queued, 0, 'the failed batch left the SQ');
      await waitFor('the failed requests', () => results.size === 3);
      assert.deepEqual([...results.values()], [-ERRNO.EBADF, -ERRNO.EBADF, -ERRNO.EBADF]);
      assert.equal(native.uringEngineInFlight(h), 0);
    } finally {
      // Destroy closes the ring's fd number again: hand it something harmless first.
      filler = native.eventfd(0);
      if (filler === ringFd[0]) native.uringEngineDestroy(h);
      else native.close(filler); // the engine leaks instead of closing someone else's fd
    }
  });

  it('keeps delivering completions after the handle is dropped', async () => {
    const fd = open(blockFile(1, 4096), 'r');
    let result: number | undefined;
    (() => {
      const h = native.uringEngineCreate(1, 1, 1, ...perRequest(1, (_s, r) => { result = r; }));
      native.uringEngineSubmit(h, 0, IO_READ, fd, 0, Float64Array.of(guest.base, 100), 1);
      h.flush();
    })();
    forceGc();
    await waitFor('completion', () => result !== undefined);
    assert.equal(result, 100);
  });

  it('lets the UringEngine class issue its batch on flush()', async () => {
    const fd = open(blockFile(2, 4096), 'r');
    const results: number[] = [];
    const e = new UringEngine(4, (_s, r) => results.push(r), { entries: 2 });
    e.submit(0, IO_READ, fd, 4096, Float64Array.of(guest.base, 4096), 1);
    e.submitRange(1, 3 /* IO_PUNCH_HOLE */, open(path.join(dir, 'blocks.img'), 'r+'), 0, 4096);
    assert.equal(e.stats()!.queued, 2);
    e.flush();
    assert.equal(e.stats()!.queued, 0);
    await waitFor('completions', () => results.length === 2);
    assert.deepEqual(results.sort(), [0, 4096]);
    e.close();
    e.close();
    assert.equal(e.inFlight(), 0);
    assert.equal(e.stats(), undefined);
  });

  it('issues what a completion delivered by flush() submits, the table or not (a range operation)', async () => {
    // /dev/zero completes inside the enter, so its completion runs within flush(); the punch
    // hole it starts goes to the SQ directly and must not wait for a flush that may never come.
    const zero = open('/dev/zero', 'r');
    const file = open(path.join(dir, 'holes.img'), 'w+');
    fs.ftruncateSync(file, 8192);
    const results: Array<[number, number]> = [];
    const e: UringEngine = new UringEngine(4, (slot, r) => {
      results.push([slot, r]);
      if (slot === 0) e.submitRange(1, 3 /* IO_PUNCH_HOLE */, file, 0, 4096);
    }, { entries: 4 });
    e.submit(0, IO_READ, zero, 0, Float64Array.of(guest.base, 512), 1);
    e.flush();
    assert.deepEqual(results[0], [0, 512], 'delivered inside flush()');
    assert.equal(e.stats()!.queued, 0, 'the range operation was issued before flush() returned');
    await waitFor('the punch hole', () => results.length === 2);
    assert.deepEqual(results[1], [1, 0]);
    e.close();
  });

  it('delivers completions with DEFER_TASKRUN when asked for', async () => {
    const fd = open(blockFile(64, 4096), 'r');
    let completed = 0;
    const h = create(64, 1, 64, (_s, r) => { assert.equal(r, 4096); completed++; },
      URING_SETUP_SINGLE_ISSUER | URING_SETUP_DEFER_TASKRUN);
    const flags = native.uringEngineStats(h).setupFlags;
    assert.ok(flags & URING_SETUP_TASKRUN_FLAG, 'DEFER_TASKRUN brings TASKRUN_FLAG');
    // O_DIRECT reads complete from the disk's interrupt, through deferred task work.
    let dfd = -1;
    try {
      dfd = open(path.join(dir, 'blocks.img'), fs.constants.O_RDONLY | fs.constants.O_DIRECT);
    } catch { dfd = fd; }
    for (let i = 0; i < 64; i++) native.uringEngineSubmit(h, i, IO_READ, i % 2 ? dfd : fd, i * 4096, Float64Array.of(guest.base + i * 4096, 4096), 1);
    h.flush();
    await waitFor('64 completions', () => completed === 64);
  });
});

describe('io_uring engine in worker threads', function () {
  this.timeout(15000);
  let dir = '';
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-uring-w-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const run = (code: string, data: unknown): Worker => new Worker(code, { eval: true, workerData: data });

  it('runs an engine on the worker loop that created it', async () => {
    const file = path.join(dir, 'w.img');
    const data = randomBytes(8192);
    fs.writeFileSync(file, data);
    const worker = run(`
      const fs = require('node:fs');
      const { parentPort, workerData } = require('node:worker_threads');
      const { native } = require(workerData.addon);
      const mfd = native.memfdCreate('w');
      fs.ftruncateSync(mfd, 65536);
      const base = native.mmap(mfd, 65536, 0, true);
      const mem = new Uint8Array(native.arrayBuffer(base, 65536));
      const fd = fs.openSync(workerData.file, 'r+');
      const tid = native.gettid();
      const seen = [];
      const done = new Float64Array(4);
      const h = native.uringEngineCreate(2, 2, 2, done, new Float64Array(16), (n) => { for (let i = 0; i < n; i++) onComplete(done[2 * i], done[2 * i + 1]); });
      function onComplete(slot, r) {
        seen.push([slot, r, native.gettid() === tid]);
        if (slot === 0) {
          // Read back what was read, written elsewhere in the file.
          native.uringEngineSubmit(h, 1, 1, fd, 8192, Float64Array.of(base + 100, 4096, base + 5000, 4096), 2);
          h.flush();
        } else {
          native.uringEngineDestroy(h);
          parentPort.postMessage({ seen, tid, head: Buffer.from(mem.subarray(100, 110)).toString('hex') });
        }
      }
      native.uringEngineSubmit(h, 0, 0, fd, 0, Float64Array.of(base + 100, 4096, base + 5000, 4096), 2);
      h.flush();`, { addon: ADDON_JS, file });
    // Listen for the exit now: a worker's last message and its exit can arrive in one go.
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    const msg = await new Promise<{ seen: Array<[number, number, boolean]>; tid: number; head: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.deepEqual(msg.seen, [[0, 8192, true], [1, 8192, true]]);
    assert.notEqual(msg.tid, native.gettid(), 'the worker is another thread');
    assert.equal(msg.head, data.subarray(0, 10).toString('hex'));
    const disk = fs.readFileSync(file);
    assert.ok(disk.subarray(8192).equals(data), 'the write landed');
    assert.equal(await exited, 0, 'an idle engine does not keep the worker alive');
  });

  it('lets a worker exit with requests queued and in flight', async () => {
    const shm = fs.mkdtempSync('/dev/shm/vublk-uring-');
    const file = path.join(shm, 'sparse.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 64 << 20);
    try {
      const worker = run(`
        const fs = require('node:fs');
        const { workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        const SIZE = 64 << 20;
        const mfd = native.memfdCreate('w');
        fs.ftruncateSync(mfd, SIZE);
        const base = native.mmap(mfd, SIZE, 0, true);
        // A file in tmpfs: io_uring hands the read to a kernel worker, so it is still in
        // flight when flush() returns (reads that cannot wait would complete inside it).
        const src = fs.openSync(workerData.file, 'r');
        const h = native.uringEngineCreate(4, 1, 4, new Float64Array(8), new Float64Array(16), () => { throw new Error('must not run at teardown'); });
        native.uringEngineSubmit(h, 0, 0, src, 0, Float64Array.of(base, SIZE), 1);
        h.flush();
        native.uringEngineSubmit(h, 1, 0, src, 0, Float64Array.of(base, SIZE), 1);
        native.uringEngineSubmitRange(h, 2, 5, src, 0, 512); // BLKDISCARD on the pool: ENOTTY
        process.exit(3);`, { addon: ADDON_JS, file });
      const errors: unknown[] = [];
      worker.on('error', (err) => errors.push(err));
      const code = await new Promise<number>((resolve) => worker.once('exit', resolve));
      assert.equal(code, 3);
      assert.deepEqual(errors, []);
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  });

  it('waits at worker exit for requests the kernel still holds', async () => {
    // A FIFO read completes only when the main thread writes: until then the
    // exiting worker must not be gone (the request could still write guest memory).
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const writer = fs.openSync(fifo, 'r+'); // O_RDWR: never blocks, keeps the FIFO open
    try {
      const worker = run(`
        const fs = require('node:fs');
        const { parentPort, workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        const mfd = native.memfdCreate('w');
        fs.ftruncateSync(mfd, 4096);
        const base = native.mmap(mfd, 4096, 0, true);
        const rfd = fs.openSync(workerData.fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
        const h = native.uringEngineCreate(2, 1, 2, new Float64Array(4), new Float64Array(16), () => { throw new Error('must not run at teardown'); });
        native.uringEngineSubmit(h, 0, 0, rfd, 0, Float64Array.of(base, 100), 1);
        h.flush();
        native.uringEngineSubmit(h, 1, 0, rfd, 0, Float64Array.of(base, 100), 1); // never issued: dropped
        parentPort.postMessage('submitted');
        process.exit(3);`, { addon: ADDON_JS, fifo });
      let exitCode: number | undefined;
      const exited = new Promise<number>((resolve) => worker.once('exit', (code) => { exitCode = code; resolve(code); }));
      const errors: unknown[] = [];
      worker.on('error', (err) => errors.push(err));
      await new Promise((resolve) => worker.once('message', resolve));
      await sleep(200);
      assert.equal(exitCode, undefined, 'the worker waits for its read');
      fs.writeSync(writer, Buffer.alloc(100, 1));
      assert.equal(await exited, 3);
      assert.deepEqual(errors, []);
    } finally {
      fs.closeSync(writer);
    }
  });

  it('lets terminate() stop a worker whose engine keeps it busy', async () => {
    const file = path.join(dir, 'w.img');
    fs.writeFileSync(file, randomBytes(4096));
    const worker = run(`
      const fs = require('node:fs');
      const { parentPort, workerData } = require('node:worker_threads');
      const { native } = require(workerData.addon);
      const mfd = native.memfdCreate('w');
      fs.ftruncateSync(mfd, 4096);
      const base = native.mmap(mfd, 4096, 0, true);
      const fd = fs.openSync(workerData.file, 'r');
      let n = 0;
      const iov = Float64Array.of(base, 4096);
      const done = new Float64Array(2);
      const h = native.uringEngineCreate(1, 1, 1, done, new Float64Array(16), () => {
        if (++n === 100) parentPort.postMessage('busy');
        native.uringEngineSubmit(h, done[0], 0, fd, 0, iov, 1);
      });
      native.uringEngineSubmit(h, 0, 0, fd, 0, iov, 1);
      h.flush();`, { addon: ADDON_JS, file });
    await new Promise((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject); });
    assert.equal(await worker.terminate(), 1);
  });

  it('turns an exception thrown by onComplete into the worker error', async () => {
    const worker = run(`
      const fs = require('node:fs');
      const { workerData } = require('node:worker_threads');
      const { native } = require(workerData.addon);
      const mfd = native.memfdCreate('w');
      fs.ftruncateSync(mfd, 4096);
      const base = native.mmap(mfd, 4096, 0, true);
      const h = native.uringEngineCreate(1, 1, 1, new Float64Array(2), new Float64Array(16), () => { throw new Error('boom from onComplete'); });
      native.uringEngineSubmit(h, 0, 0, fs.openSync('/dev/zero', 'r'), 0, Float64Array.of(base, 10), 1);
      h.flush();`, { addon: ADDON_JS });
    const exited = new Promise((resolve) => worker.once('exit', resolve));
    const err = await new Promise<Error>((resolve) => worker.once('error', resolve));
    assert.equal(err.message, 'boom from onComplete');
    assert.equal(await exited, 1);
  });
});

describe('engine selection', () => {
  let lines: string[] = [];
  let prevSink: (line: string) => void;
  const log = new Logger({ component: 'test' });
  beforeEach(() => {
    lines = [];
    prevSink = setLogSink((line) => lines.push(line));
  });
  afterEach(() => { setLogSink(prevSink); });
  const omitTime = (r: Record<string, unknown>): Record<string, unknown> => {
    assert.equal(typeof r.time, 'number');
    const { time: _time, ...rest } = r;
    return rest;
  };

  const unavailable = (): UringAvailability => ({ ok: false, reason: 'disabled by sysctl kernel.io_uring_disabled=2' });
  const make = (aio: 'auto' | 'io_uring' | 'threads', probe?: () => UringAvailability): StorageEngine => {
    const e = selectEngine(aio, log, { probe })(4, () => undefined);
    e.close();
    return e;
  };

  it('finds io_uring usable here (io_uring_disabled = 0)', function () {
    const sysctl = fs.existsSync('/proc/sys/kernel/io_uring_disabled')
      ? fs.readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim() : '0';
    if (sysctl !== '0') this.skip();
    assert.deepEqual(probeUring(), { ok: true });
    assert.equal(make('auto').name, 'io_uring');
    assert.equal(make('io_uring').name, 'io_uring');
    assert.deepEqual(lines, []);
  });

  it('takes the thread pool when asked, without probing or logging', () => {
    let probed = false;
    assert.equal(make('threads', () => { probed = true; return { ok: true }; }).name, 'threads');
    assert.equal(probed, false);
    assert.deepEqual(lines, []);
  });

  it('falls back with one info line for auto and one warning when io_uring was asked for', () => {
    assert.equal(make('auto', unavailable).name, 'threads');
    assert.equal(lines.length, 1);
    assert.deepEqual(omitTime(JSON.parse(lines[0])), {
      level: LOG_LEVEL_VALUES.info, pid: process.pid, component: 'test', aio: 'auto',
      reason: 'disabled by sysctl kernel.io_uring_disabled=2', msg: 'io_uring unavailable, using the thread-pool engine',
    });
    lines = [];
    assert.equal(make('io_uring', unavailable).name, 'threads');
    assert.equal(lines.length, 1);
    assert.equal(findLogs(parseLogRecords(lines), 'io_uring unavailable, using the thread-pool engine', { level: LOG_LEVEL_VALUES.warn, aio: 'io_uring' }).length, 1);
  });

  it('reads kernel.io_uring_disabled before trying a ring', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-sysctl-'));
    try {
      const f = path.join(dir, 'io_uring_disabled');
      fs.writeFileSync(f, '2\n');
      assert.deepEqual(probeUring(f), { ok: false, reason: 'disabled by sysctl kernel.io_uring_disabled=2' });
      assert.deepEqual(probeUring(path.join(dir, 'absent')), { ok: true }, 'older kernels have no switch: the ring decides');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('falls back per engine when a ring cannot be created after a good probe', () => {
    // DEFER_TASKRUN without SINGLE_ISSUER is refused by the kernel (EINVAL).
    const factory = selectEngine('io_uring', log, { probe: () => ({ ok: true }), uring: { setupFlags: URING_SETUP_DEFER_TASKRUN } });
    const e = factory(4, () => undefined);
    assert.equal(e.name, 'threads');
    e.close();
    assert.equal(lines.length, 1);
    assert.equal(findLogs(parseLogRecords(lines), 'io_uring engine creation failed, using the thread-pool engine',
      { level: LOG_LEVEL_VALUES.warn, aio: 'io_uring', reason: 'io_uring_setup: Invalid argument' }).length, 1, lines[0]);
  });
});
