// vublk under systemd's conventions, without systemd: the test plays systemd's
// part (a NOTIFY_SOCKET datagram receiver, LISTEN_FDS socket activation).
import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlkFrontend, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { native } from '../../src/native/addon';
import { createImage } from '../support/disk-scenario';
import { VUBLK_BIN } from '../support/servers';

/** A datagram socket that records what is sent to it (python3: Node has no Unix datagram sockets). */
function notifyReceiver(socketPath: string): { proc: ChildProcess; messages: () => string[] } {
  const script = [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    `s.bind(${JSON.stringify(socketPath)})`,
    'print("bound", flush=True)',
    'while True:',
    '    data = s.recv(4096)',
    '    print(data.decode().replace("\\n", "|"), flush=True)',
  ].join('\n');
  const proc = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.on('data', (d) => { out += d; });
  return { proc, messages: () => out.split('\n').filter((l) => l !== '' && l !== 'bound') };
}

async function until(what: string, pred: () => boolean, ms = 10000): Promise<void> {
  for (const end = Date.now() + ms; !pred(); await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
  }
}

describe('systemd integration (notify, socket activation)', function () {
  this.timeout(30000);
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-systemd-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('serves an activated socket and reports READY=1, STATUS and STOPPING=1 on NOTIFY_SOCKET', async () => {
    const image = path.join(dir, 'disk.img');
    createImage(image, 4 << 20);
    const notify = notifyReceiver(path.join(dir, 'notify'));
    await until('receiver', () => fs.existsSync(path.join(dir, 'notify')));
    const sock = path.join(dir, 'activated.sock');
    const listenFd = native.unixListen(sock, 4);
    // LISTEN_PID must be the server's own pid: let the shell exec into it.
    const proc = spawn('sh', ['-c', `LISTEN_PID=$$ exec "${process.execPath}" "${VUBLK_BIN}" serve "${image}"`], {
      cwd: dir, stdio: ['ignore', 'pipe', 'pipe', listenFd],
      env: { ...process.env, NOTIFY_SOCKET: path.join(dir, 'notify'), LISTEN_FDS: '1', LISTEN_FDNAMES: 'vublk0' },
    });
    native.close(listenFd);
    let out = '';
    proc.stdout!.on('data', (d) => { out += d; });
    proc.stderr!.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    try {
      await until('READY=1', () => notify.messages().some((m) => m.startsWith('READY=1')));
      const ready = notify.messages().find((m) => m.startsWith('READY=1'))!;
      assert.match(ready, /STATUS=serving .*disk\.img on inherited socket fd 3/);
      assert.match(ready, new RegExp(`MAINPID=${proc.pid}`));
      assert.equal(fs.existsSync(path.join(dir, 'vublk.sock')), false, 'no socket of its own: the activated one is used');
      const fe = await BlkFrontend.connect({ socketPath: sock, numQueues: 1 });
      assert.equal((await fe.read(0, 0, 4096)).status, VIRTIO_BLK_S_OK);
      await fe.disconnect();
      proc.kill('SIGTERM');
      assert.equal(await exited, 0, out);
      await until('STOPPING=1', () => notify.messages().some((m) => m.startsWith('STOPPING=1')));
    } finally {
      notify.proc.kill();
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
  });

  it('matches activated sockets to exports by name and reports READY=1 once every export listens (qemu-storage-daemon form)', async () => {
    createImage(path.join(dir, 'a.img'), 1 << 20);
    createImage(path.join(dir, 'b.img'), 1 << 20);
    const notify = notifyReceiver(path.join(dir, 'notify'));
    await until('receiver', () => fs.existsSync(path.join(dir, 'notify')));
    // systemd passes them in unit order; names decide which export gets which.
    const fdB = native.unixListen(path.join(dir, 'sd-b.sock'), 4);
    const fdA = native.unixListen(path.join(dir, 'sd-a.sock'), 4);
    const args = [
      '--blockdev', 'driver=file,node-name=a,filename=a.img', '--blockdev', 'driver=file,node-name=b,filename=b.img',
      '--export', 'type=vhost-user-blk,id=ea,node-name=a,addr.type=unix,addr.path=own-a.sock,writable=on',
      '--export', 'type=vhost-user-blk,id=eb,node-name=b,addr.type=unix,addr.path=own-b.sock',
    ].map((a) => `'${a}'`).join(' ');
    const proc = spawn('sh', ['-c', `LISTEN_PID=$$ exec "${process.execPath}" "${VUBLK_BIN}" ${args}`], {
      cwd: dir, stdio: ['ignore', 'pipe', 'pipe', fdB, fdA],
      env: { ...process.env, NOTIFY_SOCKET: path.join(dir, 'notify'), LISTEN_FDS: '2', LISTEN_FDNAMES: 'eb:ea' },
    });
    native.close(fdA);
    native.close(fdB);
    let out = '';
    proc.stderr!.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    try {
      await until('READY=1', () => notify.messages().some((m) => m.startsWith('READY=1')));
      assert.match(notify.messages().find((m) => m.startsWith('READY=1'))!, /STATUS=serving ea, eb/);
      assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('own-')), [], 'the activated sockets are used instead');
      // The socket named ea serves a.img.
      const fe = await BlkFrontend.connect({ socketPath: path.join(dir, 'sd-a.sock'), numQueues: 1 });
      const data = new Uint8Array(4096).fill(0xa1);
      assert.equal((await fe.write(0, 0, data)).status, VIRTIO_BLK_S_OK);
      await fe.disconnect();
      assert.equal(fs.readFileSync(path.join(dir, 'a.img'))[0], 0xa1);
      assert.equal(fs.readFileSync(path.join(dir, 'b.img'))[0], 0);
      proc.kill('SIGTERM');
      assert.equal(await exited, 0, out);
    } finally {
      notify.proc.kill();
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
  });

  it('ignores LISTEN_FDS meant for another process', async () => {
    const image = path.join(dir, 'disk.img');
    createImage(image, 1 << 20);
    const proc = spawn(process.execPath, [VUBLK_BIN, 'serve', '--socket', 'own.sock', image], {
      cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LISTEN_PID: '1', LISTEN_FDS: '1' },
    });
    let out = '';
    proc.stdout!.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    await until('serving', () => out.includes('vublk: serving'));
    assert.match(out, /serving .* on .*own\.sock/);
    proc.kill('SIGTERM');
    assert.equal(await exited, 0);
  });

  it('ships unit files with notify readiness, socket activation and hardening', () => {
    const unitDir = path.resolve(__dirname, '..', '..', '..', 'scripts', 'systemd');
    const service = fs.readFileSync(path.join(unitDir, 'vublk@.service'), 'utf8');
    const socket = fs.readFileSync(path.join(unitDir, 'vublk@.socket'), 'utf8');
    assert.match(service, /^Type=notify$/m);
    for (const opt of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes', 'DevicePolicy=closed']) assert.ok(service.includes(opt), opt);
    assert.doesNotMatch(service, /^MemoryDenyWriteExecute=yes/m);
    assert.match(socket, /^ListenStream=\/run\/vublk\/%i\.sock$/m);
    assert.match(socket, /^FileDescriptorName=vublk0$/m);
  });
});
