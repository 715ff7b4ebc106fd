import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import {
  native, IoEngineHandle, Watcher, POLL_READABLE, IO_READ, IO_WRITE, IO_FLUSH,
} from '../../src/native/addon';
import { sleep } from '../support/wait';

const ERRNO = os.constants.errno;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
// The compiled addon wrapper, for workers that must load it themselves.
const ADDON_JS = path.join(__dirname, '..', '..', 'src', 'native', 'addon.js');

/** File status flags as the kernel reports them, including the close-on-exec bit. */
function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m, `no flags for fd ${fd}`);
  return parseInt(m[1], 8);
}

/**
 * Ping-pong over an eventfd with a watcher, proving callbacks land on the loop of
 * the thread that created the watcher. Self-contained: workers get its source.
 */
function pingPong(addon: typeof native, rounds: number): Promise<number> {
  return new Promise((resolve) => {
    const efd = addon.eventfd(0);
    let sum = 0;
    let n = 0;
    const w = addon.watch(efd, 1, () => {
      sum += addon.eventfdRead(efd);
      if (++n === rounds) {
        w.stop();
        addon.close(efd);
        resolve(sum);
      } else {
        addon.eventfdWrite(efd, n + 1);
      }
    });
    addon.eventfdWrite(efd, 1);
  });
}

v8.setFlagsFromString('--expose-gc');
const forceGc = vm.runInNewContext('gc') as () => void;

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}


async function waitFor(what: string, pred: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function assertErrno(fn: () => unknown, code: string, syscall?: string): void {
  assert.throws(fn, (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, code);
    assert.equal(err.errno, (ERRNO as Record<string, number>)[code]);
    if (syscall !== undefined) {
      assert.equal(err.syscall, syscall);
      assert.match(err.message, new RegExp(`^${syscall}: `));
    }
    return true;
  });
}

describe('native addon', () => {
  // Every fd a test opens goes here so a failing assertion does not leak it.
  let fds: number[] = [];
  const track = (fd: number): number => { fds.push(fd); return fd; };
  const closeTracked = (fd: number): void => {
    fds = fds.filter((f) => f !== fd);
    native.close(fd);
  };
  afterEach(() => {
    for (const fd of fds) {
      try { native.close(fd); } catch { /* already closed by the test */ }
    }
    fds = [];
  });

  describe('sockets', () => {
    it('socketpair gives non-blocking, close-on-exec stream sockets', () => {
      const [a, b] = native.socketpair().map(track);
      for (const fd of [a, b]) {
        assert.ok(fdFlags(fd) & O_NONBLOCK);
        assert.ok(fdFlags(fd) & O_CLOEXEC);
      }
    });

    it('sends bytes without fds, honouring offset and length on both sides', () => {
      const [a, b] = native.socketpair().map(track);
      const out = Buffer.from('xxhello worldyy');
      assert.equal(native.sendmsg(a, out, 2, 11, null), 11);
      const got = new Uint8Array(100).fill(0x2a);
      const received = [999];
      assert.equal(native.recvmsg(b, got, 5, 95, received), 11);
      assert.equal(Buffer.from(got.subarray(5, 16)).toString(), 'hello world');
      assert.equal(got[4], 0x2a);
      assert.equal(got[16], 0x2a);
      assert.deepEqual(received, [999], 'no fds are appended when none were sent');
    });

    it('passes one fd as a new descriptor for the same eventfd', () => {
      const [a, b] = native.socketpair().map(track);
      const efd = track(native.eventfd(0));
      assert.equal(native.sendmsg(a, Uint8Array.of(7), 0, 1, [efd]), 1);
      const received: number[] = [];
      const buf = new Uint8Array(16);
      assert.equal(native.recvmsg(b, buf, 0, 16, received), 1);
      assert.equal(buf[0], 7);
      assert.equal(received.length, 1);
      const copy = track(received[0]);
      assert.notEqual(copy, efd);
      assert.ok(fdFlags(copy) & O_CLOEXEC, 'received fds must be close-on-exec');
      native.eventfdWrite(efd, 41);
      assert.equal(native.eventfdRead(copy), 41);
    });

    it('passes three memfds, appended after existing entries', () => {
      const [a, b] = native.socketpair().map(track);
      const names = ['one', 'two', 'three'];
      const originals = names.map((n) => {
        const fd = track(native.memfdCreate(n));
        fs.writeSync(fd, n, 0);
        return fd;
      });
      assert.equal(native.sendmsg(a, Buffer.from('abc'), 0, 3, originals), 3);
      const received = [-5];
      const buf = Buffer.alloc(8);
      assert.equal(native.recvmsg(b, buf, 0, 8, received), 3);
      assert.equal(received.length, 4);
      assert.equal(received[0], -5);
      const got = received.slice(1).map(track);
      got.forEach((fd, i) => {
        assert.ok(!originals.includes(fd));
        const text = Buffer.alloc(10);
        const n = fs.readSync(fd, text, 0, 10, 0);
        assert.equal(text.subarray(0, n).toString(), names[i]);
      });
    });

    it('recvmsg returns -1 on EAGAIN and 0 on EOF; sendmsg -1 when full, EPIPE after close', () => {
      const [a, b] = native.socketpair().map(track);
      const buf = new Uint8Array(64);
      assert.equal(native.recvmsg(b, buf, 0, 64, []), -1);
      const chunk = new Uint8Array(65536);
      let sent = 0;
      let r = 0;
      for (let i = 0; i < 1000 && (r = native.sendmsg(a, chunk, 0, chunk.length, null)) > 0; i++) sent += r;
      assert.equal(r, -1, 'the socket buffer should fill up');
      assert.ok(sent > 0);
      closeTracked(b);
      assertErrno(() => native.sendmsg(a, chunk, 0, 1, null), 'EPIPE', 'sendmsg');
      const [c, d] = native.socketpair().map(track);
      closeTracked(c);
      assert.equal(native.recvmsg(d, buf, 0, 64, []), 0);
    });

    it('validates arguments', () => {
      const [a, b] = native.socketpair().map(track);
      const many = Array.from({ length: 33 }, () => a);
      assert.throws(() => native.sendmsg(a, Buffer.from('x'), 0, 1, many), RangeError);
      assert.equal(native.recvmsg(b, new Uint8Array(4), 0, 4, []), -1, 'nothing may be sent');
      assert.throws(() => native.sendmsg(a, Buffer.from('x'), 0, 0, [a]), RangeError);
      assert.throws(() => native.sendmsg(a, Buffer.from('x'), 1, 1, null), RangeError);
      assert.throws(() => native.sendmsg(a, Buffer.from('x'), 0, 1, ['3' as unknown as number]), TypeError);
      assert.throws(() => native.recvmsg(b, new Uint8Array(4), 0, 0, []), RangeError);
      assert.throws(() => native.recvmsg(b, new Uint8Array(4), 2, 3, []), RangeError);
      assert.throws(() => native.recvmsg(b, new Uint16Array(4) as unknown as Uint8Array, 0, 4, []), TypeError);
      assert.throws(() => native.recvmsg(b, new Uint8Array(4), 0, 4, null as unknown as number[]), TypeError);
      assert.throws(() => native.recvmsg('x' as unknown as number, new Uint8Array(4), 0, 4, []), TypeError);
      assertErrno(() => native.recvmsg(-1, new Uint8Array(4), 0, 4, []), 'EBADF', 'recvmsg');
      assertErrno(() => native.close(-1), 'EBADF', 'close');
    });

    describe('over a path', () => {
      let dir = '';
      beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-native-')); });
      afterEach(() => { fs.rmSync(dir, { recursive: true, force: true }); });

      it('listens, connects and accepts; a second listen is EADDRINUSE', () => {
        const sock = path.join(dir, 's.sock');
        const lfd = track(native.unixListen(sock, 8));
        assert.ok(fdFlags(lfd) & O_NONBLOCK);
        assert.ok(fdFlags(lfd) & O_CLOEXEC);
        assert.equal(native.accept(lfd), -1);
        assertErrno(() => native.unixListen(sock, 8), 'EADDRINUSE', 'bind');
        assert.ok(fs.existsSync(sock), 'a failed listen must not remove the path');

        const cfd = track(native.unixConnect(sock));
        assert.ok(fdFlags(cfd) & O_NONBLOCK);
        assert.ok(fdFlags(cfd) & O_CLOEXEC);
        const sfd = track(native.accept(lfd));
        assert.ok(sfd >= 0);
        assert.ok(fdFlags(sfd) & O_NONBLOCK);
        assert.ok(fdFlags(sfd) & O_CLOEXEC);
        assert.equal(native.accept(lfd), -1);

        assert.equal(native.sendmsg(cfd, Buffer.from('ping'), 0, 4, null), 4);
        const buf = Buffer.alloc(8);
        assert.equal(native.recvmsg(sfd, buf, 0, 8, []), 4);
        assert.equal(buf.subarray(0, 4).toString(), 'ping');
      });

      it('binds without listening: connections are refused until listen()', () => {
        const sock = path.join(dir, 'b.sock');
        const fd = track(native.unixBind(sock));
        assert.ok(fdFlags(fd) & O_NONBLOCK);
        assert.ok(fdFlags(fd) & O_CLOEXEC);
        assert.ok(fs.statSync(sock).isSocket());
        assertErrno(() => native.unixConnect(sock), 'ECONNREFUSED', 'connect');
        assertErrno(() => native.unixBind(sock), 'EADDRINUSE', 'bind');
        native.listen(fd, 4);
        const cfd = track(native.unixConnect(sock));
        assert.ok(track(native.accept(fd)) >= 0);
        assert.ok(cfd >= 0);
        assertErrno(() => native.listen(-1, 1), 'EBADF', 'listen');
        assertErrno(() => native.unixBind(path.join(dir, 'no', 'such.sock')), 'ENOENT', 'bind');
      });

      it('reports ENOENT, ECONNREFUSED and ENAMETOOLONG', () => {
        assertErrno(() => native.unixConnect(path.join(dir, 'missing')), 'ENOENT', 'connect');
        const stale = path.join(dir, 'stale.sock');
        closeTracked(track(native.unixListen(stale, 1)));
        assertErrno(() => native.unixConnect(stale), 'ECONNREFUSED', 'connect');
        const long = path.join(dir, 'x'.repeat(120));
        assertErrno(() => native.unixListen(long, 1), 'ENAMETOOLONG');
        assertErrno(() => native.unixConnect(long), 'ENAMETOOLONG');
        assert.throws(() => native.unixListen(`${dir}/a\0b`, 1), TypeError);
      });

      it('looks up users and groups by name through NSS, -1 when there is none', () => {
        assert.equal(native.userId('root'), 0);
        assert.equal(native.groupId('root'), 0);
        assert.equal(native.userId('vublk-no-such-user'), -1);
        assert.equal(native.groupId('vublk-no-such-group'), -1);
        assert.equal(native.userId(''), -1);
        assert.throws(() => native.userId('a\0b'), TypeError);
      });

      it('closes every received fd and throws ECTRUNC when more than 32 fds arrive', function () {
        // Node cannot send 40 fds itself; python3 is present wherever node-gyp works.
        this.timeout(10000);
        const sock = path.join(dir, 'trunc.sock');
        const lfd = track(native.unixListen(sock, 1));
        const py = spawnSync('python3', ['-c', [
          'import os, socket, sys',
          's = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
          's.connect(sys.argv[1])',
          'fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(40)]',
          'socket.send_fds(s, [b"x"], fds)',
        ].join('\n'), sock]);
        if (py.error || py.status !== 0) this.skip();
        const sfd = track(native.accept(lfd));
        const before = openFdCount();
        const received: number[] = [];
        assert.throws(() => native.recvmsg(sfd, Buffer.alloc(4), 0, 4, received),
          (err: NodeJS.ErrnoException) => err.code === 'ECTRUNC');
        assert.deepEqual(received, []);
        assert.equal(openFdCount(), before, 'truncated fds must all be closed');
      });
    });
  });

  describe('memory', () => {
    const SIZE = 3 * 4096;

    it('views of one mapping see writes made through another mapping and through the fd', () => {
      const mfd = track(native.memfdCreate('vublk-test'));
      fs.ftruncateSync(mfd, SIZE);
      const a = native.mmap(mfd, SIZE, 0, true);
      const b = native.mmap(mfd, SIZE, 0, true);
      const tail = native.mmap(mfd, 4096, 8192, false);
      try {
        assert.notEqual(a, b);
        assert.equal(a % 4096, 0);
        const va = new Uint8Array(native.arrayBuffer(a, SIZE));
        const vb = new Uint8Array(native.arrayBuffer(b, SIZE));
        const vb2 = new Uint8Array(native.arrayBuffer(b, SIZE)); // same address twice is fine
        const vt = new Uint8Array(native.arrayBuffer(tail, 4096));
        assert.equal(va.byteLength, SIZE);
        va.set([1, 2, 3], 100);
        va[8192 + 5] = 0xab;
        assert.deepEqual([...vb.subarray(100, 103)], [1, 2, 3]);
        assert.deepEqual([...vb2.subarray(100, 103)], [1, 2, 3]);
        assert.equal(vt[5], 0xab, 'an offset mapping sees the right page');
        fs.writeSync(mfd, Buffer.from('via fd'), 0, 6, 4000);
        assert.equal(Buffer.from(va.subarray(4000, 4006)).toString(), 'via fd');
        const back = Buffer.alloc(3);
        fs.readSync(mfd, back, 0, 3, 100);
        assert.deepEqual([...back], [1, 2, 3]);
      } finally {
        native.munmap(a, SIZE);
        native.munmap(b, SIZE);
        native.munmap(tail, 4096);
      }
    });

    it('detach() empties the buffer and its views', () => {
      const mfd = track(native.memfdCreate('vublk-detach'));
      fs.ftruncateSync(mfd, 4096);
      const addr = native.mmap(mfd, 4096, 0, true);
      const ab = native.arrayBuffer(addr, 4096);
      const view = new Uint8Array(ab);
      view[0] = 9;
      native.detach(ab);
      assert.equal(ab.byteLength, 0);
      assert.equal(view.length, 0);
      assert.equal(view[0], undefined);
      native.munmap(addr, 4096);
      assert.throws(() => native.detach(new Uint8Array(4) as unknown as ArrayBuffer), TypeError);
    });

    it('validates arguments and reports mmap errors', () => {
      assert.throws(() => native.arrayBuffer(4096, 0), RangeError);
      assert.throws(() => native.arrayBuffer(4096, 2 ** 32 + 1), RangeError);
      assert.throws(() => native.arrayBuffer(0, 16), RangeError);
      assert.throws(() => native.mmap(0, 4096, 0.5, true), RangeError);
      assert.throws(() => native.mmap(0, 4096, 0, 1 as unknown as boolean), TypeError);
      assertErrno(() => native.mmap(-1, 4096, 0, true), 'EBADF', 'mmap');
      const mfd = track(native.memfdCreate('x'));
      assertErrno(() => native.mmap(mfd, 4096, 1, false), 'EINVAL', 'mmap');
      assert.ok(fdFlags(mfd) & O_CLOEXEC);
      assertErrno(() => native.memfdCreate('n'.repeat(300)), 'EINVAL', 'memfd_create');
    });
  });

  describe('eventfd', () => {
    it('reads and resets the counter; writes add to it', () => {
      const efd = track(native.eventfd(3));
      assert.ok(fdFlags(efd) & O_NONBLOCK);
      assert.ok(fdFlags(efd) & O_CLOEXEC);
      assert.equal(native.eventfdRead(efd), 3);
      assert.equal(native.eventfdRead(efd), 0);
      native.eventfdWrite(efd, 2);
      native.eventfdWrite(efd, 5);
      assert.equal(native.eventfdRead(efd), 7);
      native.eventfdWrite(efd, 2 ** 40);
      assert.equal(native.eventfdRead(efd), 2 ** 40);
      assertErrno(() => native.eventfdRead(-1), 'EBADF', 'read');
      assert.throws(() => native.eventfdWrite(efd, -1), RangeError);
    });
  });

  describe('watch', () => {
    it('fires on an eventfd write and stops firing after stop()', async () => {
      const efd = track(native.eventfd(0));
      const seen: number[] = [];
      let self: unknown;
      const w = native.watch(efd, POLL_READABLE, function (this: unknown, events: number) {
        self = this;
        seen.push(events);
        native.eventfdRead(efd); // drain, or level-triggered polling fires forever
      });
      await sleep(20);
      assert.deepEqual(seen, [], 'nothing is readable yet');
      native.eventfdWrite(efd, 1);
      await waitFor('first event', () => seen.length === 1);
      assert.equal(seen[0], POLL_READABLE);
      assert.equal(self, w, 'the callback is invoked with the watcher as this');
      native.eventfdWrite(efd, 1);
      await waitFor('second event', () => seen.length === 2);
      w.stop();
      w.stop();
      native.eventfdWrite(efd, 1);
      await sleep(50);
      assert.equal(seen.length, 2);
      assert.equal(native.eventfdRead(efd), 1, 'the counter was left alone after stop()');
    });

    it('allows stop() from inside the callback and a new watch on the same fd afterwards', async () => {
      const efd = track(native.eventfd(1));
      let calls = 0;
      const w: Watcher = native.watch(efd, POLL_READABLE, () => { calls++; w.stop(); });
      await waitFor('event', () => calls > 0);
      await sleep(30);
      assert.equal(calls, 1, 'stop() inside the callback is immediate');
      let again = 0;
      const w2 = native.watch(efd, POLL_READABLE, () => { again++; native.eventfdRead(efd); });
      await waitFor('event on the new watcher', () => again > 0);
      w2.stop();
    });

    it('runs promise jobs queued by a callback before the next I/O callback', async () => {
      // Both fds are readable up front, so both callbacks come out of one poll;
      // only a proper callback scope drains the first one's microtasks in between.
      const order: string[] = [];
      for (const name of ['A', 'B']) {
        const efd = track(native.eventfd(1));
        const w = native.watch(efd, POLL_READABLE, () => {
          native.eventfdRead(efd);
          order.push(name);
          void Promise.resolve().then(() => order.push(`${name}-micro`));
          w.stop();
        });
      }
      await waitFor('both callbacks', () => order.length === 4);
      assert.deepEqual(order, [order[0], `${order[0]}-micro`, order[2], `${order[2]}-micro`]);
      assert.notEqual(order[0], order[2]);
    });

    it('runs promise jobs and nextTicks a watchEventfd callback queues in the same iteration, before immediates', async () => {
      // watchEventfd calls back without a callback scope (the data plane's wakeups); the
      // check phase's scope runs the queues before the iteration's immediates.
      const order: string[] = [];
      const efd = track(native.eventfd(1));
      const w = native.watchEventfd(efd, () => {
        w.stop();
        order.push('callback');
        setImmediate(() => order.push('immediate'));
        process.nextTick(() => order.push('tick'));
        void Promise.resolve().then(() => order.push('micro'));
      });
      await waitFor('the immediate', () => order.includes('immediate'));
      assert.deepEqual(order, ['callback', 'tick', 'micro', 'immediate']);
    });

    it('turns an exception thrown by a watchEventfd callback into an uncaught exception', async () => {
      const efd = track(native.eventfd(1));
      const mochas = process.listeners('uncaughtException');
      process.removeAllListeners('uncaughtException');
      try {
        const caught = new Promise<Error>((resolve) => process.once('uncaughtException', resolve));
        const w = native.watchEventfd(efd, () => {
          w.stop();
          throw new Error('from the kick');
        });
        assert.equal((await caught).message, 'from the kick');
      } finally {
        for (const l of mochas) process.on('uncaughtException', l);
      }
    });

    it('resets an eventfd itself before calling back with watchEventfd', async () => {
      const efd = track(native.eventfd(0));
      const seen: number[] = [];
      const w = native.watchEventfd(efd, (events) => seen.push(events));
      await sleep(20);
      assert.deepEqual(seen, [], 'nothing is readable yet');
      native.eventfdWrite(efd, 3);
      await waitFor('first event', () => seen.length === 1);
      await sleep(30);
      assert.deepEqual(seen, [POLL_READABLE], 'one callback: the counter was reset, so it did not fire again');
      assert.equal(native.eventfdRead(efd), 0);
      native.eventfdWrite(efd, 1);
      await waitFor('second event', () => seen.length === 2);
      w.stop();
      // Not an eventfd: the read fails and the callback hears -EINVAL (once stopped, never again).
      const [a, b] = native.socketpair();
      track(a);
      track(b);
      const errors: number[] = [];
      const bad: Watcher = native.watchEventfd(a, (events) => { errors.push(events); bad.stop(); });
      native.sendmsg(b, Buffer.from('hello'), 0, 5, null);
      await waitFor('the error', () => errors.length === 1);
      assert.deepEqual(errors, [-os.constants.errno.EINVAL]);
      assert.throws(() => native.watchEventfd(-1, () => undefined), RangeError);
      assert.throws(() => native.watchEventfd(efd, null as unknown as () => void), TypeError);
    });

    it('runs a timerfd with sub-millisecond delays through watchEventfd; 0 disarms it', async () => {
      const tfd = track(native.timerfd());
      const fired: number[] = [];
      const w = native.watchEventfd(tfd, () => fired.push(performance.now()));
      const t0 = performance.now();
      native.timerfdArm(tfd, 300_000); // 0.3 ms
      await waitFor('expiry', () => fired.length === 1);
      assert.ok(fired[0] - t0 >= 0.3, `fired after ${(fired[0] - t0).toFixed(3)} ms`);
      native.timerfdArm(tfd, 20e6);
      native.timerfdArm(tfd, 0);
      await sleep(40);
      assert.equal(fired.length, 1, 'disarmed: no second expiry');
      w.stop();
      assert.throws(() => native.timerfdArm(tfd, -1), RangeError);
      assert.throws(() => native.timerfdArm(tfd, 0.5), RangeError);
    });

    it('validates arguments', () => {
      const efd = track(native.eventfd(0));
      assert.throws(() => native.watch(efd, 0, () => undefined), RangeError);
      assert.throws(() => native.watch(efd, 8, () => undefined), RangeError);
      assert.throws(() => native.watch(efd, POLL_READABLE, null as unknown as () => void), TypeError);
      assert.throws(() => native.watch(-1, POLL_READABLE, () => undefined), RangeError);
      const live = native.watch(efd, POLL_READABLE, () => undefined);
      assert.throws(() => live.stop.call({}), TypeError);
      assertErrno(() => native.watch(efd, POLL_READABLE, () => undefined), 'EEXIST', 'uv_poll_init');
      live.stop();
      native.watch(efd, POLL_READABLE, () => undefined).stop();
      const stale = track(native.eventfd(0));
      closeTracked(stale);
      assertErrno(() => native.watch(stale, POLL_READABLE, () => undefined), 'EBADF');
    });

    it('keeps an active watcher alive after its object is dropped', async () => {
      const efd = track(native.eventfd(0));
      let calls = 0;
      (() => {
        native.watch(efd, POLL_READABLE, function (this: Watcher) {
          native.eventfdRead(efd);
          if (++calls === 2) this.stop();
        });
      })();
      forceGc();
      await sleep(10);
      native.eventfdWrite(efd, 1);
      await waitFor('first event', () => calls === 1);
      forceGc();
      await sleep(10);
      native.eventfdWrite(efd, 1);
      await waitFor('second event', () => calls === 2);
      native.eventfdWrite(efd, 1);
      await sleep(30);
      assert.equal(calls, 2);
    });
  });

  describe('I/O engine', () => {
    const GUEST = 64 * 1024;
    let dir = '';
    let mfd = -1;
    let base = 0;
    let guest = new Uint8Array(0);
    let ab = new ArrayBuffer(0);
    let engine: IoEngineHandle | null = null;
    let waiters = new Map<number, (r: number) => void>();

    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-native-'));
      mfd = native.memfdCreate('guest');
      fs.ftruncateSync(mfd, GUEST);
      base = native.mmap(mfd, GUEST, 0, true);
      ab = native.arrayBuffer(base, GUEST);
      guest = new Uint8Array(ab);
      waiters = new Map();
      engine = native.ioEngineCreate(4, 4, (slot, result) => {
        const w = waiters.get(slot);
        waiters.delete(slot);
        assert.ok(w, `unexpected completion for slot ${slot}`);
        w(result);
      });
    });

    afterEach(async () => {
      if (engine) {
        await waitFor('requests to drain', () => native.ioEngineInFlight(engine!) === 0);
        native.ioEngineDestroy(engine);
        engine = null;
      }
      native.detach(ab);
      native.munmap(base, GUEST);
      native.close(mfd);
      fs.rmSync(dir, { recursive: true, force: true });
    });

    function submit(slot: number, op: number, fd: number, offset: number, iov: number[]): Promise<number> {
      return new Promise((resolve) => {
        native.ioEngineSubmit(engine!, slot, op, fd, offset, Float64Array.from(iov), iov.length / 2);
        waiters.set(slot, resolve);
      });
    }

    function makeFile(size: number): { file: string; data: Buffer } {
      const file = path.join(dir, 'disk.img');
      const data = randomBytes(size);
      fs.writeFileSync(file, data);
      return { file, data };
    }

    it('reads a file into three iovecs of guest memory', async () => {
      const { file, data } = makeFile(20000);
      guest.fill(0xee);
      const fd = track(fs.openSync(file, 'r'));
      const r = await submit(2, IO_READ, fd, 123, [base + 100, 1000, base + 5000, 3000, base + 20000, 2500]);
      assert.equal(r, 6500);
      assert.ok(Buffer.from(guest.subarray(100, 1100)).equals(data.subarray(123, 1123)));
      assert.ok(Buffer.from(guest.subarray(5000, 8000)).equals(data.subarray(1123, 4123)));
      assert.ok(Buffer.from(guest.subarray(20000, 22500)).equals(data.subarray(4123, 6623)));
      for (const i of [99, 1100, 4999, 8000, 19999, 22500]) assert.equal(guest[i], 0xee, `byte ${i} untouched`);
    });

    it('writes three iovecs of guest memory into a file', async () => {
      const file = path.join(dir, 'out.img');
      const fd = track(fs.openSync(file, 'w+'));
      guest.set(randomBytes(GUEST));
      const r = await submit(0, IO_WRITE, fd, 5000, [base + 300, 700, base + 9000, 1500, base + 40000, 10]);
      assert.equal(r, 2210);
      const disk = fs.readFileSync(file);
      assert.equal(disk.length, 7210);
      assert.ok(disk.subarray(0, 5000).equals(Buffer.alloc(5000)));
      assert.ok(disk.subarray(5000, 5700).equals(Buffer.from(guest.subarray(300, 1000))));
      assert.ok(disk.subarray(5700, 7200).equals(Buffer.from(guest.subarray(9000, 10500))));
      assert.ok(disk.subarray(7200, 7210).equals(Buffer.from(guest.subarray(40000, 40010))));
      assert.equal(await submit(0, IO_FLUSH, fd, 0, []), 0);
      // Zero-length iovecs must not look like a write that made no progress.
      assert.equal(await submit(1, IO_WRITE, fd, 0, [base, 0, base + 8, 0]), 0);
      assert.equal(await submit(1, IO_WRITE, fd, 7210, [base, 0, base + 1, 3, base + 9, 0]), 3);
      assert.equal(fs.fstatSync(fd).size, 7213);
    });

    it('stops at end of file with a short count, and skips empty iovecs', async () => {
      const { file, data } = makeFile(10000);
      const fd = track(fs.openSync(file, 'r'));
      guest.fill(0);
      const r = await submit(1, IO_READ, fd, 9000, [base, 0, base + 8192, 600, base + 16384, 4096]);
      assert.equal(r, 1000);
      assert.ok(Buffer.from(guest.subarray(8192, 8792)).equals(data.subarray(9000, 9600)));
      assert.ok(Buffer.from(guest.subarray(16384, 16784)).equals(data.subarray(9600, 10000)));
      assert.equal(guest[16784], 0);
      assert.equal(await submit(1, IO_READ, fd, 20000, [base, 4096]), 0);
    });

    it('reports errors as negative errno results', async () => {
      const stale = native.eventfd(0);
      native.close(stale);
      assert.equal(await submit(0, IO_READ, stale, 0, [base, 512]), -ERRNO.EBADF);
      assert.equal(await submit(1, IO_WRITE, -1, 0, [base, 512]), -ERRNO.EBADF);
      assert.equal(await submit(2, IO_FLUSH, stale, 0, []), -ERRNO.EBADF);
      assert.equal(await submit(3, IO_READ, stale, 0, []), -ERRNO.EBADF, 'even an empty request checks the fd');
      const { file } = makeFile(4096);
      const fd = track(fs.openSync(file, 'r'));
      assert.equal(await submit(0, IO_WRITE, fd, 0, [base, 512]), -ERRNO.EBADF);
      assert.equal(await submit(0, IO_READ, fd, 0, [4096, 512]), -ERRNO.EFAULT, 'bad guest address is EFAULT, not a crash');
    });

    it('validates submissions and refuses to destroy with requests in flight', async () => {
      const { file } = makeFile(4096);
      const fd = track(fs.openSync(file, 'r'));
      const e = engine!;
      const iov = Float64Array.of(base, 512);
      assert.throws(() => native.ioEngineSubmit(e, 4, IO_READ, fd, 0, iov, 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, -1, IO_READ, fd, 0, iov, 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, 3, fd, 0, iov, 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, -1, iov, 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0.5, iov, 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 2 ** 53 + 2, iov, 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, iov, 2), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, new Float64Array(10), 5), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, Float64Array.of(base, -1), 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, Float64Array.of(base, 1.5), 1), RangeError);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, [base, 1] as unknown as Float64Array, 1), TypeError);
      assert.throws(() => native.ioEngineSubmit({} as IoEngineHandle, 0, IO_READ, fd, 0, iov, 1), TypeError);
      const w = native.watch(track(native.eventfd(0)), POLL_READABLE, () => undefined);
      assert.throws(() => native.ioEngineInFlight(w as unknown as IoEngineHandle), TypeError);
      w.stop();
      assert.equal(native.ioEngineInFlight(e), 0, 'failed submissions leave nothing in flight');

      const done = submit(0, IO_READ, fd, 0, [base, 512]);
      assert.equal(native.ioEngineInFlight(e), 1);
      assertErrno(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, iov, 1), 'EBUSY');
      assertErrno(() => native.ioEngineDestroy(e), 'EBUSY');
      assert.equal(await done, 512);
      assert.equal(native.ioEngineInFlight(e), 0);
      native.ioEngineDestroy(e);
      native.ioEngineDestroy(e);
      assert.throws(() => native.ioEngineSubmit(e, 0, IO_READ, fd, 0, iov, 1), /destroyed/);
      engine = null;
    });

    it('lets a completion resubmit its own slot', async () => {
      const { file, data } = makeFile(4 * 4096);
      const fd = track(fs.openSync(file, 'r'));
      const results: number[] = [];
      const e = native.ioEngineCreate(1, 1, (slot, result) => {
        results.push(result);
        if (results.length < 4) {
          const next = results.length;
          native.ioEngineSubmit(e, slot, IO_READ, fd, next * 4096, Float64Array.of(base + next * 4096, 4096), 1);
        }
      });
      native.ioEngineSubmit(e, 0, IO_READ, fd, 0, Float64Array.of(base, 4096), 1);
      await waitFor('four completions', () => results.length === 4);
      assert.deepEqual(results, [4096, 4096, 4096, 4096]);
      assert.ok(Buffer.from(guest.subarray(0, 4 * 4096)).equals(data));
      native.ioEngineDestroy(e);
    });

    it('keeps delivering completions after the handle is dropped', async () => {
      const { file } = makeFile(4096);
      const fd = track(fs.openSync(file, 'r'));
      let result: number | undefined;
      (() => {
        const e = native.ioEngineCreate(1, 1, (_slot, r) => { result = r; });
        native.ioEngineSubmit(e, 0, IO_READ, fd, 0, Float64Array.of(base, 100), 1);
      })();
      forceGc();
      await waitFor('completion', () => result !== undefined);
      assert.equal(result, 100);
    });
  });

  describe('worker threads', function () {
    this.timeout(10000); // worker start-up is slow on a loaded machine
    function runWorker(code: string, data: unknown): Worker {
      return new Worker(code, { eval: true, workerData: data });
    }

    it('loads and works in a Worker while the main thread uses it too', async () => {
      const worker = runWorker(`
        const { parentPort, workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        ${pingPong.toString()}
        pingPong(native, 200).then((sum) => parentPort.postMessage(sum));`, { addon: ADDON_JS });
      const fromWorker = new Promise<number>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      const [w, m] = await Promise.all([fromWorker, pingPong(native, 300)]);
      assert.equal(w, (200 * 201) / 2);
      assert.equal(m, (300 * 301) / 2);
      await worker.terminate();
    });

    it('lets a worker exit with a live watcher and a request in flight', async () => {
      const worker = runWorker(`
        const fs = require('node:fs');
        const { workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        const SIZE = 64 << 20;
        const mfd = native.memfdCreate('w');
        fs.ftruncateSync(mfd, SIZE);
        const base = native.mmap(mfd, SIZE, 0, true);
        const zero = fs.openSync('/dev/zero', 'r');
        const e = native.ioEngineCreate(1, 1, () => { throw new Error('must not run at teardown'); });
        native.ioEngineSubmit(e, 0, 0, zero, 0, Float64Array.of(base, SIZE), 1);
        const efd = native.eventfd(1);
        native.watch(efd, 1, () => {});
        process.exit(3);`, { addon: ADDON_JS });
      const errors: unknown[] = [];
      worker.on('error', (err) => errors.push(err));
      const code = await new Promise<number>((resolve) => worker.once('exit', resolve));
      assert.equal(code, 3);
      assert.deepEqual(errors, []);
    });

    it('lets terminate() stop a worker that is busy with watcher callbacks', async () => {
      const worker = runWorker(`
        const { parentPort, workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        const efd = native.eventfd(1);
        let n = 0;
        native.watch(efd, 1, () => { if (++n === 10) parentPort.postMessage('busy'); });`, { addon: ADDON_JS });
      await new Promise((resolve) => worker.once('message', resolve));
      assert.equal(await worker.terminate(), 1);
    });

    it('turns an exception thrown by a callback into an uncaught exception', async () => {
      const worker = runWorker(`
        const { workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        const efd = native.eventfd(1);
        native.watch(efd, 1, () => { throw new Error('boom from watch callback'); });`, { addon: ADDON_JS });
      const err = await new Promise<Error>((resolve) => worker.once('error', resolve));
      assert.equal(err.message, 'boom from watch callback');
      await new Promise((resolve) => worker.once('exit', resolve));
    });

    it('lets an uncaughtException handler recover from a throwing callback', async () => {
      const worker = runWorker(`
        const { parentPort, workerData } = require('node:worker_threads');
        const { native } = require(workerData.addon);
        const seen = [];
        process.on('uncaughtException', (err) => seen.push(err.message));
        const efd = native.eventfd(1);
        let n = 0;
        const w = native.watch(efd, 1, () => {
          if (++n < 3) throw new Error('e' + n);
          w.stop();
          parentPort.postMessage(seen);
        });`, { addon: ADDON_JS });
      const seen = await new Promise((resolve) => worker.once('message', resolve));
      assert.deepEqual(seen, ['e1', 'e2']);
      await worker.terminate();
    });
  });
});
