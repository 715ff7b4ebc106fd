// Who may connect to a listening socket: mode, owner and group set between
// bind and listen, stale sockets replaced, live ones and other files refused,
// and names resolved to ids with errors that name the option.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ExportOptions } from '../../src/config/model';
import { listenReplacingStale } from '../../src/daemon/listener';
import { exportSocketAccess } from '../../src/daemon/socket-access';
import { native } from '../../src/native/addon';

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;

const exportWith = (extra: Partial<ExportOptions>): ExportOptions => ({
  type: 'vhost-user-blk', id: 'e', 'node-name': 'n', addr: { type: 'unix', path: 's.sock' }, ...extra,
});

describe('socket access', () => {
  let dir = '';
  const fds: number[] = [];
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-access-')); });
  afterEach(() => {
    for (const fd of fds.splice(0)) native.close(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const listen = (p: string, access?: Parameters<typeof listenReplacingStale>[1]): number => {
    const fd = listenReplacingStale(p, access);
    fds.push(fd);
    return fd;
  };

  it('creates the socket 0600 by default, or with the mode given, and it accepts', () => {
    const a = path.join(dir, 'a.sock');
    listen(a);
    assert.equal(fs.statSync(a).mode & 0o777, 0o600);
    const b = path.join(dir, 'b.sock');
    const fd = listen(b, { mode: 0o660 });
    assert.equal(fs.statSync(b).mode & 0o777, 0o660);
    fds.push(native.unixConnect(b));
    const accepted = native.accept(fd);
    assert.ok(accepted >= 0);
    fds.push(accepted);
  });

  it('gives the socket to the owner and group asked for', function () {
    if (!isRoot) this.skip();
    const p = path.join(dir, 'o.sock');
    listen(p, { mode: 0o660, uid: NOBODY, gid: NOBODY });
    const st = fs.statSync(p);
    assert.deepEqual([st.mode & 0o777, st.uid, st.gid], [0o660, NOBODY, NOBODY]);
    const g = path.join(dir, 'g.sock');
    listen(g, { gid: NOBODY });
    assert.deepEqual([fs.statSync(g).uid, fs.statSync(g).gid], [0, NOBODY], 'only the group changes');
  });

  it('replaces a stale socket, refuses a live one, a regular file and a directory', () => {
    const p = path.join(dir, 's.sock');
    native.close(native.unixListen(p, 1)); // a crashed run's leftover: nobody listens
    listen(p);
    assert.throws(() => listen(p), /^Error: is in use by another server$/);
    const file = path.join(dir, 'file');
    fs.writeFileSync(file, 'keep');
    assert.throws(() => listen(file), /^Error: exists and is not a socket$/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep', 'left alone');
    fs.mkdirSync(path.join(dir, 'd'));
    assert.throws(() => listen(path.join(dir, 'd')), /is a directory, not a socket/);
    assert.throws(() => listen(path.join(dir, 'missing', 's.sock')), /^Error: bind: No such file or directory \(ENOENT\)$/);
  });

  it('removes the socket and names the setting when applying it fails', () => {
    // Only root (CAP_CHOWN) may give a file away: as root, try it as nobody in a child process.
    const p = path.join(dir, 'x.sock');
    const attempt = `
      const { listenReplacingStale } = require(${JSON.stringify(require.resolve('../../src/daemon/listener'))});
      try { listenReplacingStale(${JSON.stringify(p)}, { uid: 0, labels: { owner: 'x-vublk-socket-owner=root' } }); console.log('no error'); }
      catch (e) { console.log(String(e)); }`;
    if (isRoot) fs.chmodSync(dir, 0o777);
    const r = spawnSync(process.execPath, ['-e', attempt], { encoding: 'utf8', ...(isRoot ? { uid: NOBODY, gid: NOBODY } : {}) });
    assert.equal(r.status, 0, r.stderr);
    const out = r.stdout.trim();
    assert.equal(out, 'Error: x-vublk-socket-owner=root: chown: operation not permitted (EPERM)');
    assert.equal(fs.existsSync(p), false, 'the socket file is removed again');
  });

  it('resolves names and numeric ids; unknown names and bad ids are one line naming the option', () => {
    assert.deepEqual(exportSocketAccess(exportWith({})), { labels: {} });
    const a = exportSocketAccess(exportWith({ 'x-vublk-socket-mode': '0660', 'x-vublk-socket-owner': 'root', 'x-vublk-socket-group': '65534' }));
    assert.deepEqual(a, {
      mode: 0o660, uid: 0, gid: NOBODY,
      labels: { mode: 'x-vublk-socket-mode=0660', owner: 'x-vublk-socket-owner=root', group: 'x-vublk-socket-group=65534' },
    });
    assert.equal(exportSocketAccess(exportWith({ 'x-vublk-socket-mode': '640' })).mode, 0o640);
    assert.throws(() => exportSocketAccess(exportWith({ 'x-vublk-socket-owner': 'vublk-no-such-user' })),
      /^Error: x-vublk-socket-owner: no user named 'vublk-no-such-user'$/);
    assert.throws(() => exportSocketAccess(exportWith({ 'x-vublk-socket-group': 'vublk-no-such-group' })),
      /^Error: x-vublk-socket-group: no group named 'vublk-no-such-group'$/);
    assert.throws(() => exportSocketAccess(exportWith({ 'x-vublk-socket-owner': '4294967295' })),
      /^Error: x-vublk-socket-owner: user id 4294967295 is out of range$/);
  });
});
