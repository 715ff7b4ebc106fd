// The vhost-user spec's "back-end program conventions": how QEMU tooling and
// libvirt start a back-end (--socket-path / --fd, --print-capabilities,
// --blk-file, --read-only) and discover it (the JSON description).
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlkFrontend, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { native } from '../../src/native/addon';
import { createImage } from '../support/disk-scenario';
import { VUBLK_BIN, startVublkWithArgs } from '../support/servers';

const REPO = path.resolve(__dirname, '..', '..', '..');

describe('vhost-user back-end program conventions', function () {
  this.timeout(30000);
  let dir: string;
  let image: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-conv-'));
    image = path.join(dir, 'disk.img');
    createImage(image, 4 << 20);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('prints its capabilities as JSON', () => {
    const r = spawnSync(process.execPath, [VUBLK_BIN, '--print-capabilities'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { type: 'block', features: ['read-only', 'blk-file'] });
  });

  it('serves --blk-file on --socket-path, read-only with --read-only', async () => {
    const sock = path.join(dir, 's.sock');
    const s = await startVublkWithArgs(['--socket-path', sock, '--blk-file', image, '--read-only'], sock);
    const fe = await BlkFrontend.connect({ socketPath: sock, numQueues: 1 });
    try {
      assert.ok(fe.negotiatedFeatures & (1n << BigInt(VIRTIO_BLK_F_RO)));
      assert.equal((await fe.read(0, 0, 4096)).status, VIRTIO_BLK_S_OK);
      assert.equal((await fe.write(0, 0, new Uint8Array(4096).fill(1))).status, VIRTIO_BLK_S_IOERR);
    } finally {
      await fe.disconnect();
      assert.equal(await s.stop(), 0);
    }
  });

  it('serves on an inherited listening socket given with --fd, and leaves its path alone', async () => {
    const sock = path.join(dir, 'inherited.sock');
    const listenFd = native.unixListen(sock, 4);
    const proc = spawn(process.execPath, [VUBLK_BIN, '--fd', '3', '--blk-file', image], { stdio: ['ignore', 'pipe', 'pipe', listenFd] });
    native.close(listenFd); // the child has its own copy
    let out = '';
    proc.stdout!.on('data', (d) => { out += d; });
    proc.stderr!.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    for (let i = 0; i < 200 && !out.includes('vublk: serving'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.match(out, /serving .* on inherited socket fd 3/);
    const fe = await BlkFrontend.connect({ socketPath: sock, numQueues: 1 });
    assert.equal((await fe.write(0, 8, new Uint8Array(512).fill(7))).status, VIRTIO_BLK_S_OK);
    await fe.disconnect();
    proc.kill('SIGTERM');
    assert.equal(await exited, 0, out);
    assert.ok(fs.existsSync(sock), 'the socket file belongs to whoever made it');
    assert.equal(fs.readFileSync(image)[4096], 7);
  });

  it('refuses --fd together with --socket-path, and --fd that is not a socket', () => {
    let r = spawnSync(process.execPath, [VUBLK_BIN, '--fd', '3', '--socket-path', 'x.sock', '--blk-file', image], { encoding: 'utf8', cwd: dir });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^vublk: --fd: cannot be combined with --socket-path/);
    r = spawnSync(process.execPath, [VUBLK_BIN, '--fd', '0', '--blk-file', image], { encoding: 'utf8', cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--fd 0: not a socket/);
  });

  it('installs a JSON description that names the binary and the block type', () => {
    const dest = path.join(dir, 'vhost-user');
    const r = spawnSync(path.join(REPO, 'scripts', 'vhost-user', 'install-description.sh'), [dest], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const desc = JSON.parse(fs.readFileSync(path.join(dest, '50-vublk.json'), 'utf8'));
    assert.equal(desc.type, 'block');
    assert.equal(desc.binary, fs.realpathSync(VUBLK_BIN));
    const caps = spawnSync(desc.binary, ['--print-capabilities'], { encoding: 'utf8' });
    assert.equal(JSON.parse(caps.stdout).type, 'block');
  });
});
