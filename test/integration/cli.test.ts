// The command line as a user meets it: defaults, errors, signals.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VUBLK_BIN, startVublkWithArgs } from '../support/servers';

describe('vublk command line', function () {
  this.timeout(20000);
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-cli-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const run = (args: string[]) => spawnSync(process.execPath, [VUBLK_BIN, ...args], { cwd: dir, encoding: 'utf8' });

  for (const [args, pattern] of [
    [['serve', '--num-queues', '0'], /^vublk: --num-queues: expected an integer/],
    [['serve', '--num-queues'], /^vublk: --num-queues: missing value/],
    [['serve', '--logical-block-size', '1024'], /^vublk: --logical-block-size: expected 512 or 4096/],
    [['serve', '--bogus'], /^vublk: --bogus: unknown option/],
    [['serve', 'a.img', 'b.img'], /^vublk: b.img: only one IMAGE/],
    [['serve', 'missing.img'], /^vublk: missing.img: no such image file/],
    [['serve', '--serial', 'x'.repeat(21)], /^vublk: --serial:/],
    [['frobnicate'], /^vublk: frobnicate: unknown command/],
    [['serve', '--iothreads', '0'], /^vublk: --iothreads: expected an integer in 1\.\.64/],
    [['serve', '--num-queues', '2', '--queue-map', '5:0'], /^vublk: --queue-map: queue 5 does not exist/],
    [['serve', '--iothreads', '2', '--queue-map', '0:2'], /^vublk: --queue-map: iothread 2 does not exist/],
    [['serve', '--queue-map', '0-1'], /^vublk: --queue-map: expected N:M items/],
    [['serve', '--iothread-cpus', '3:0'], /^vublk: --iothread-cpus: iothread 3 does not exist/],
    [['serve', '--cache', 'bogus'], /^vublk: --cache: expected one of none, writeback, writethrough, directsync/],
    [['serve', '--aio', 'posix'], /^vublk: --aio: expected io_uring or threads/],
    [['serve', '--poll-max-ns', '-1'], /^vublk: --poll-max-ns: (missing value|expected an integer)/],
    [['serve', '--socket', '/nonexistent-dir/s.sock'], /^vublk: .*ENOENT|no such file/i],
    [['serve', '--socket-mode', '8'], /^vublk: --socket-mode: expected an octal mode like 0660, got '8'/],
    [['serve', '--socket-owner', 'vublk-no-such-user'], /^vublk: --socket-owner: no user named 'vublk-no-such-user'/],
    [['serve', '--socket-group', 'vublk-no-such-group'], /^vublk: --socket-group: no group named 'vublk-no-such-group'/],
  ] as Array<[string[], RegExp]>) {
    it(`rejects ${args.join(' ')} with one line and status 2, leaving nothing behind`, () => {
      const r = run(args);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, pattern);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.deepEqual(fs.readdirSync(dir), []);
    });
  }

  it('serves a default sparse 1 GiB image on ./vublk.sock, prints the QEMU line, and cleans up on SIGTERM', async () => {
    const s = await startVublkWithArgs(['serve'], path.join(dir, 'vublk.sock'), dir);
    const img = path.join(dir, 'vublk-default.img');
    const sock = path.join(dir, 'vublk.sock');
    assert.equal(fs.statSync(img).size, 1 << 30);
    assert.ok(fs.statSync(img).blocks * 512 < 1 << 20, 'image is sparse');
    assert.ok(fs.statSync(sock).isSocket());
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
    assert.match(s.output(), new RegExp(`-chardev socket,id=vublk0,path=${sock}`));
    assert.match(s.output(), /-device vhost-user-blk-pci,chardev=vublk0/);
    assert.match(s.output(), /memory-backend-memfd,id=mem,size=1G,share=on/);
    assert.equal(await s.stop(), 0);
    assert.equal(fs.existsSync(sock), false, 'socket removed');
    assert.equal(fs.existsSync(img), true, 'image kept');
    // A second run reuses the image.
    fs.writeFileSync(img, 'x', { flag: 'r+' });
    const again = await startVublkWithArgs(['serve'], path.join(dir, 'vublk.sock'), dir);
    assert.equal(fs.readFileSync(img).subarray(0, 1).toString(), 'x');
    again.proc.kill('SIGINT');
    assert.equal(await again.stop(), 0);
  });

  it('replaces a stale socket but refuses one a live server holds', async () => {
    fs.writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(1 << 20));
    const sock = path.join(dir, 's.sock');
    const first = await startVublkWithArgs(['serve', '--socket', 's.sock', 'disk.img'], sock, dir);
    const r = run(['serve', '--socket', 's.sock', 'disk.img']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /in use by another server/);
    first.proc.kill('SIGKILL'); // leaves a stale socket file behind
    assert.equal(await first.stop(), 'SIGKILL');
    assert.ok(fs.existsSync(sock));
    const second = await startVublkWithArgs(['serve', '--socket', 's.sock', 'disk.img'], sock, dir);
    assert.equal(await second.stop(), 0);
  });
});

describe('vublk serve socket access', function () {
  this.timeout(20000);
  const NOBODY = 65534;
  const isRoot = process.getuid?.() === 0;
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-sock-'));
    fs.writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(1 << 20));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const run = (args: string[], opts: { uid?: number; gid?: number } = {}) =>
    spawnSync(process.execPath, [VUBLK_BIN, ...args], { cwd: dir, encoding: 'utf8', timeout: 15000, ...opts });

  /** Status 2, one line matching `pattern`, and the directory as it was. */
  function refuses(r: ReturnType<typeof run>, pattern: RegExp, before: string[]): void {
    assert.equal(r.status, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.filter((l) => !l.startsWith('{')).length, 1, r.stderr);
    assert.match(lines[lines.length - 1], pattern);
    assert.deepEqual(fs.readdirSync(dir).sort(), before);
  }

  it('gives the socket the mode, owner and group asked for (numeric or by name)', async function () {
    if (!isRoot) this.skip();
    const sock = path.join(dir, 's.sock');
    const s = await startVublkWithArgs(['serve', '--socket', 's.sock', '--socket-mode', '0660', '--socket-owner', String(NOBODY),
      '--socket-group', String(NOBODY), 'disk.img'], sock, dir);
    const st = fs.statSync(sock);
    assert.deepEqual([st.mode & 0o777, st.uid, st.gid], [0o660, NOBODY, NOBODY]);
    assert.equal(await s.stop(), 0);
    assert.equal(fs.existsSync(sock), false);
    const byName = await startVublkWithArgs(['serve', '--socket', 's.sock', '--socket-owner', 'nobody', 'disk.img'], sock, dir);
    assert.deepEqual([fs.statSync(sock).mode & 0o777, fs.statSync(sock).uid, fs.statSync(sock).gid], [0o600, NOBODY, 0]);
    assert.equal(await byName.stop(), 0);
  });

  it('refuses a socket path that is a regular file or a directory, leaving it alone', () => {
    fs.writeFileSync(path.join(dir, 'file.sock'), 'not a socket');
    fs.mkdirSync(path.join(dir, 'dir.sock'));
    const before = fs.readdirSync(dir).sort();
    refuses(run(['serve', '--socket', 'file.sock', 'disk.img']), /^vublk: socket file\.sock: exists and is not a socket$/, before);
    assert.equal(fs.readFileSync(path.join(dir, 'file.sock'), 'utf8'), 'not a socket');
    refuses(run(['serve', '--socket', 'dir.sock', 'disk.img']), /^vublk: socket dir\.sock: exists and is a directory, not a socket$/, before);
  });

  it('refuses a directory it may not write to, and an owner it may not give the socket to', function () {
    // Root may write anywhere and chown anything: run as nobody to see the refusals.
    if (!isRoot) this.skip();
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(path.join(dir, 'disk.img'), 0o644);
    fs.mkdirSync(path.join(dir, 'ro'), { mode: 0o755 });
    const before = fs.readdirSync(dir).sort();
    const asNobody = { uid: NOBODY, gid: NOBODY };
    refuses(run(['serve', '--readonly', '--socket', 'ro/s.sock', 'disk.img'], asNobody),
      /^vublk: socket ro\/s\.sock: bind: Permission denied \(EACCES\)$/, before);
    fs.chmodSync(dir, 0o777);
    refuses(run(['serve', '--readonly', '--socket', 's.sock', '--socket-owner', 'root', 'disk.img'], asNobody),
      /^vublk: socket s\.sock: --socket-owner=root: chown: operation not permitted \(EPERM\)$/, before);
    refuses(run(['serve', '--readonly', '--socket', 's.sock', '--socket-group', '0', 'disk.img'], asNobody),
      /^vublk: socket s\.sock: --socket-group=0: chown: operation not permitted \(EPERM\)$/, before);
  });
});

describe('vublk --daemonize and --pidfile', function () {
  this.timeout(20000);
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-daemon-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it('returns once the detached server listens, with its pid in the pidfile; SIGTERM removes socket and pidfile', async () => {
    fs.writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(1 << 20));
    const r = spawnSync(process.execPath, [VUBLK_BIN, 'serve', '--daemonize', '--pidfile', 'vublk.pid', '--socket', 's.sock', 'disk.img'],
      { cwd: dir, encoding: 'utf8', timeout: 15000 });
    assert.equal(r.status, 0, r.stderr);
    const pid = Number(fs.readFileSync(path.join(dir, 'vublk.pid'), 'utf8'));
    assert.ok(pid > 0 && pid !== r.pid && alive(pid), 'a detached server runs');
    assert.ok(fs.statSync(path.join(dir, 's.sock')).isSocket(), 'and listens');
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 250 && alive(pid); i++) await new Promise((res) => setTimeout(res, 20));
    assert.equal(alive(pid), false);
    assert.equal(fs.existsSync(path.join(dir, 'vublk.pid')), false);
    assert.equal(fs.existsSync(path.join(dir, 's.sock')), false);
  });

  it('reports a startup failure of the detached server and exits 2', () => {
    const r = spawnSync(process.execPath, [VUBLK_BIN, 'serve', '--daemonize', '--socket', '/nonexistent-dir/s.sock', 'missing.img'],
      { cwd: dir, encoding: 'utf8', timeout: 15000 });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^vublk: missing.img: no such image file/);
  });
});
