// vublk as a drop-in for qemu-storage-daemon: its command line, several
// exports sharing an iothread, and the QMP monitor (greeting, negotiation,
// commands, errors, events) driven the way a qemu-storage-daemon script does.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlkFrontend, SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { QmpClient, QmpCommandError } from '../../src/qmp/client';
import { fetchText } from '../support/http';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, VUBLK_BIN, startVublkDaemon } from '../support/servers';
import { waitFor } from '../support/wait';

const MiB = 1 << 20;

function threadNames(pid: number): string[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  });
}

async function rejectsWith(p: Promise<unknown>, errorClass: string, desc: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(e instanceof QmpCommandError, String(e));
    assert.equal(e.errorClass, errorClass);
    assert.match(e.desc, desc);
    return true;
  });
}

describe('qemu-storage-daemon compatible daemon and QMP monitor', function () {
  this.timeout(60000);
  let dir: string;
  let server: ServerProcess | undefined;
  let qmp: QmpClient | undefined;
  const frontends: BlkFrontend[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-qmp-'));
    createImage(path.join(dir, 'a.img'), 16 * MiB);
    createImage(path.join(dir, 'b.img'), 16 * MiB);
  });
  afterEach(async () => {
    for (const fe of frontends.splice(0)) await fe.disconnect().catch(() => undefined);
    qmp?.close();
    qmp = undefined;
    if (server !== undefined) assert.equal(await server.stop(), 0, server.output());
    server = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function start(extra: string[] = [], sockets = ['a.sock', 'b.sock', 'qmp.sock']): Promise<QmpClient> {
    server = await startVublkDaemon([
      '--blockdev', 'driver=file,node-name=file-a,filename=a.img',
      '--blockdev', 'driver=raw,node-name=disk-a,file=file-a',
      '--blockdev', 'file,node-name=disk-b,filename=b.img,cache.direct=off',
      '--object', 'iothread,id=io0',
      '--export', 'type=vhost-user-blk,id=ea,node-name=disk-a,addr.type=unix,addr.path=a.sock,writable=on,iothread=io0,num-queues=2',
      '--export', 'vhost-user-blk,id=eb,node-name=disk-b,addr.type=unix,addr.path=b.sock,iothread=io0',
      '--chardev', 'socket,path=qmp.sock,server=on,wait=off,id=char1',
      '--monitor', 'chardev=char1',
      ...extra,
    ], sockets, dir);
    qmp = await QmpClient.connect(path.join(dir, 'qmp.sock'));
    return qmp;
  }

  async function connect(sock: string, numQueues = 1, extra: Partial<Parameters<typeof BlkFrontend.connect>[0]> = {}): Promise<BlkFrontend> {
    const fe = await BlkFrontend.connect({ socketPath: path.join(dir, sock), numQueues, ...extra });
    frontends.push(fe);
    return fe;
  }

  it('serves two exports from one process on one shared iothread; queries describe them', async () => {
    const c = await start();
    assert.deepEqual(Object.keys(c.greeting!.QMP as object).sort(), ['capabilities', 'version']);
    for (const sock of ['a.sock', 'b.sock', 'qmp.sock']) assert.equal(fs.statSync(path.join(dir, sock)).mode & 0o777, 0o600, sock);
    assert.deepEqual(await c.execute('query-block-exports'), [
      { type: 'vhost-user-blk', id: 'ea', 'node-name': 'disk-a', 'shutting-down': false },
      { type: 'vhost-user-blk', id: 'eb', 'node-name': 'disk-b', 'shutting-down': false },
    ]);
    const nodes = (await c.execute('query-named-block-nodes')) as Array<Record<string, unknown>>;
    assert.deepEqual(nodes.map((n) => [n['node-name'], n.drv, n.ro]), [['file-a', 'file', false], ['disk-a', 'raw', false], ['disk-b', 'file', false]]);
    assert.equal((nodes[1].image as Record<string, unknown>)['virtual-size'], 16 * MiB);
    const threads = (await c.execute('query-iothreads')) as Array<Record<string, unknown>>;
    assert.equal(threads.length, 1);
    assert.equal(threads[0].id, 'io0');
    assert.equal(threads[0]['poll-max-ns'], 32768);
    assert.equal(fs.readFileSync(`/proc/${server!.proc.pid}/task/${threads[0]['thread-id'] as number}/comm`, 'utf8').trim(), 'vublk-io0');
    assert.equal(threadNames(server!.proc.pid!).filter((n) => n.startsWith('vublk-')).length, 1, 'both exports run on the one iothread');

    const a = await connect('a.sock', 2);
    const b = await connect('b.sock');
    const data = new Uint8Array(8192).fill(0x5a);
    assert.equal((await a.write(1, 8, data)).status, VIRTIO_BLK_S_OK);
    assert.deepEqual((await a.read(0, 8, 8192)).data, data);
    // eb was exported without writable=on: read-only, as in qemu-storage-daemon.
    assert.equal((await b.write(0, 0, data)).status, VIRTIO_BLK_S_IOERR);
    const onDisk = fs.readFileSync(path.join(dir, 'a.img')).subarray(8 * SECTOR_SIZE, 8 * SECTOR_SIZE + 8192);
    assert.deepEqual(new Uint8Array(onDisk), data);
  });

  it('negotiates capabilities first and answers bad input with QMP errors, keeping the connection', async () => {
    await start();
    const raw = await new Promise<import('node:net').Socket>((resolve) => {
      const s = require('node:net').createConnection(path.join(dir, 'qmp.sock'), () => resolve(s));
    });
    let text = '';
    raw.setEncoding('utf8');
    raw.on('data', (d: string) => { text += d; });
    const exchange = async (send: string, count: number): Promise<Array<Record<string, unknown>>> => {
      const before = text.split('\r\n').filter(Boolean).length;
      raw.write(send);
      await waitFor('replies', () => text.split('\r\n').filter(Boolean).length >= before + count);
      return text.split('\r\n').filter(Boolean).slice(before, before + count).map((l) => JSON.parse(l) as Record<string, unknown>);
    };
    await waitFor('greeting', () => text.includes('\r\n'));
    assert.match(text, /^\{"QMP": ?\{"version": ?\{"qemu": ?\{"micro": ?0, ?"minor": ?2, ?"major": ?7\}/);
    assert.deepEqual(await exchange('{"execute":"query-block-exports","id":1}', 1), [{ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" }, id: 1 }]);
    assert.deepEqual(await exchange('{"execute":"qmp_capabilities"}', 1), [{ return: {} }]);
    assert.deepEqual(await exchange('{"execute":"qmp_capabilities"}', 1), [{ error: { class: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' } }]);
    // Two commands in one write, split across no newline: both answered, ids echoed.
    const two = await exchange('{"execute":"nope","id":"x"}{"execute":"blockdev-del","arguments":{},"id":2}', 2);
    assert.deepEqual(two, [
      { error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: 'x' },
      { error: { class: 'GenericError', desc: "Parameter 'node-name' is missing" }, id: 2 },
    ]);
    const more = await exchange('{"execute": "query-block-exports", "arguments": {"x": 1}}[1]{"exec":1}{"execute":"quit",', 3);
    assert.deepEqual(more[0], { error: { class: 'GenericError', desc: "Parameter 'x' is unexpected" } });
    assert.deepEqual(more[1], { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    assert.deepEqual(more[2], { error: { class: 'GenericError', desc: "QMP input member 'exec' is unexpected" } });
    raw.destroy();
    // The monitor still serves other clients, and the server is alive.
    qmp = await QmpClient.connect(path.join(dir, 'qmp.sock'));
    assert.equal(((await qmp.execute('query-block-exports')) as unknown[]).length, 2);
  });

  it('adds and deletes nodes, iothreads and exports at runtime, with BLOCK_EXPORT_DELETED', async () => {
    const c = await start();
    await c.execute('object-add', { 'qom-type': 'iothread', id: 'io1', 'poll-max-ns': 0 });
    createImage(path.join(dir, 'c.img'), 4 * MiB);
    await c.execute('blockdev-add', { driver: 'file', 'node-name': 'disk-c', filename: path.join(dir, 'c.img') });
    await rejectsWith(c.execute('blockdev-add', { driver: 'file', 'node-name': 'disk-c', filename: path.join(dir, 'c.img') }), 'GenericError', /Duplicate nodes with node-name='disk-c'/);
    await rejectsWith(c.execute('blockdev-add', { driver: 'file', 'node-name': 'disk-d', filename: path.join(dir, 'missing.img') }), 'GenericError', /missing\.img: no such file or directory/);
    await rejectsWith(c.execute('block-export-add', { type: 'vhost-user-blk', id: 'ec', 'node-name': 'nope', addr: { type: 'unix', path: path.join(dir, 'c.sock') } }), 'GenericError', /node-name='nope'/);
    await rejectsWith(c.execute('block-export-add', { type: 'vhost-user-blk', id: 'ea', 'node-name': 'disk-c', addr: { type: 'unix', path: path.join(dir, 'c.sock') } }), 'GenericError', /Block export id 'ea' is already in use/);
    await c.execute('block-export-add', {
      type: 'vhost-user-blk', id: 'ec', 'node-name': 'disk-c', addr: { type: 'unix', path: path.join(dir, 'c.sock') }, writable: true, iothread: 'io1', 'logical-block-size': 4096,
    });
    const fe = await connect('c.sock');
    assert.equal(fe.config.blkSize, 4096);
    assert.equal(fe.config.capacity, (4 * MiB) / SECTOR_SIZE);
    assert.equal((await fe.write(0, 0, new Uint8Array(4096).fill(7))).status, VIRTIO_BLK_S_OK);
    await rejectsWith(c.execute('blockdev-del', { 'node-name': 'disk-c' }), 'GenericError', /Node 'disk-c' is busy: in use by ec/);
    await rejectsWith(c.execute('object-del', { id: 'io1' }), 'GenericError', /object 'io1' is in use/);

    await c.execute('block-export-del', { id: 'ec' });
    const ev = await c.waitEvent('BLOCK_EXPORT_DELETED', (d) => d.id === 'ec');
    assert.deepEqual(ev.data, { id: 'ec' });
    assert.ok(ev.timestamp.seconds > 0);
    await waitFor('front-end disconnected', () => fe.client.isClosed);
    assert.equal(fs.existsSync(path.join(dir, 'c.sock')), false, 'socket removed');
    await rejectsWith(c.execute('block-export-del', { id: 'ec' }), 'GenericError', /Export 'ec' is not found/);
    await c.execute('blockdev-del', { 'node-name': 'disk-c' });
    await c.execute('object-del', { id: 'io1' });
    assert.deepEqual(((await c.execute('query-iothreads')) as Array<{ id: string }>).map((t) => t.id), ['io0']);
    // The other exports never noticed.
    const a = await connect('a.sock', 2);
    assert.equal((await a.read(0, 0, 512)).status, VIRTIO_BLK_S_OK);
  });

  it('block_resize grows the image and tells the connected driver through the back-end channel', async () => {
    const c = await start();
    const changes: number[] = [];
    const fe = await connect('a.sock', 2, { backendChannel: true, onConfigChange: (cfg) => changes.push(cfg.capacity) });
    const oldSectors = (16 * MiB) / SECTOR_SIZE;
    assert.equal(fe.config.capacity, oldSectors);
    assert.equal((await fe.read(0, oldSectors, 512)).status, VIRTIO_BLK_S_IOERR, 'beyond the end before the resize');
    await c.execute('block_resize', { 'node-name': 'disk-a', size: 32 * MiB });
    await waitFor('config change', () => changes.length > 0);
    assert.deepEqual(changes, [(32 * MiB) / SECTOR_SIZE]);
    assert.equal(fs.statSync(path.join(dir, 'a.img')).size, 32 * MiB);
    const data = new Uint8Array(4096).fill(0xc3);
    assert.equal((await fe.write(1, oldSectors + 8, data)).status, VIRTIO_BLK_S_OK, 'the new space is usable at once');
    assert.deepEqual((await fe.read(0, oldSectors + 8, 4096)).data, data);
    const nodes = (await c.execute('query-named-block-nodes')) as Array<{ 'node-name': string; image: { 'virtual-size': number } }>;
    assert.equal(nodes.find((n) => n['node-name'] === 'file-a')!.image['virtual-size'], 32 * MiB);
    await rejectsWith(c.execute('block_resize', { 'node-name': 'nope', size: MiB }), 'DeviceNotFound', /nope/);
  });

  it('quit ends the process with status 0 and removes its sockets', async () => {
    const c = await start();
    await c.execute('quit');
    const code = await server!.stop();
    server = undefined;
    assert.equal(code, 0);
    for (const sock of ['a.sock', 'b.sock', 'qmp.sock']) assert.equal(fs.existsSync(path.join(dir, sock)), false, sock);
  });

  it('coalesces interrupts as x-vublk-coalescing says at start, and as x-vublk-set-coalescing changes it', async () => {
    // 400 ms makes the wait plain to see against a request's own few milliseconds, even on a busy machine.
    const c = await start(['--export', 'vhost-user-blk,id=ec,node-name=disk-b,addr.type=unix,addr.path=c.sock,x-vublk-coalescing.delay-us=400000'],
      ['a.sock', 'b.sock', 'c.sock', 'qmp.sock']);
    const fe = await connect('c.sock');
    const q = fe.queues[0];
    const timedBurst = async (n: number): Promise<{ ms: number; interrupts: number }> => {
      const before = q.interrupts;
      const t0 = performance.now();
      const rs = await Promise.all(Array.from({ length: n }, (_, i) => fe.read(0, i * 8, 4096)));
      for (const r of rs) assert.equal(r.status, VIRTIO_BLK_S_OK);
      return { ms: performance.now() - t0, interrupts: q.interrupts - before };
    };
    let burst = await timedBurst(16);
    assert.ok(burst.ms >= 350, `the interrupt waited for the delay (${burst.ms.toFixed(0)} ms)`);
    assert.equal(burst.interrupts, 1, 'one interrupt for the burst');

    await c.execute('x-vublk-set-coalescing', { id: 'ec', 'delay-us': 0 });
    burst = await timedBurst(16);
    assert.ok(burst.ms < 350, `no delay once switched off (${burst.ms.toFixed(0)} ms)`);
    await c.execute('x-vublk-set-coalescing', { id: 'ec', 'delay-us': 400000, 'iops-threshold': 0 });
    burst = await timedBurst(4);
    assert.ok(burst.ms >= 350, `delayed again (${burst.ms.toFixed(0)} ms)`);
    // A threshold the guest stays under: interrupts go out at once.
    await c.execute('x-vublk-set-coalescing', { id: 'ec', 'delay-us': 400000, 'iops-threshold': 1000000000 });
    await new Promise((r) => setTimeout(r, 20)); // a new rate window
    burst = await timedBurst(4);
    assert.ok(burst.ms < 350, `under the threshold (${burst.ms.toFixed(0)} ms)`);

    await rejectsWith(c.execute('x-vublk-set-coalescing', { id: 'nope', 'delay-us': 1 }), 'GenericError', /Export 'nope' is not found/);
    await rejectsWith(c.execute('x-vublk-set-coalescing', { id: 'ec', 'delay-us': -1 }), 'GenericError', /delay-us/);
    // Only the export asked for: ea signals at once.
    const a = await connect('a.sock', 2);
    const t0 = performance.now();
    assert.equal((await a.read(0, 0, 4096)).status, VIRTIO_BLK_S_OK);
    assert.ok(performance.now() - t0 < 350);
  });

  it('holds I/O limits set at start and changed by block_set_io_throttle, across two iothreads; requests wait, never fail', async () => {
    const c = await start([
      '--object', 'iothread,id=io1',
      '--export', 'vhost-user-blk,id=et,node-name=disk-b,addr.type=unix,addr.path=t.sock,num-queues=2,iothread.0=io0,iothread.1=io1,' +
        'x-vublk-throttling.iops-total=200',
    ], ['a.sock', 'b.sock', 't.sock', 'qmp.sock']);
    const fe = await connect('t.sock', 2);
    /** Reads of `bytes` at queue depth 8 on both queues for `ms`; what completed, all OK. */
    const load = async (ms: number, bytes: number): Promise<{ ops: number; bytes: number; seconds: number }> => {
      let ops = 0;
      const t0 = performance.now();
      const worker = async (q: number, i: number): Promise<void> => {
        for (let n = 0; performance.now() - t0 < ms; n++) {
          const r = await fe.read(q, ((i * 64 + n) % 2048) * 8, bytes);
          assert.equal(r.status, VIRTIO_BLK_S_OK);
          ops++;
        }
      };
      await Promise.all(Array.from({ length: 16 }, (_, i) => worker(i % 2, i)));
      return { ops, bytes: ops * bytes, seconds: (performance.now() - t0) / 1000 };
    };
    // 200/s, plus a tenth of a second's burst up front, plus requests admitted before the end and finished after it.
    let r = await load(1500, 4096);
    console.log(`      iops-total=200: ${(r.ops / r.seconds).toFixed(0)} IOPS over ${r.seconds.toFixed(2)} s`);
    assert.ok(r.ops >= 0.9 * 200 * 1.5 && r.ops <= 200 * r.seconds + 20 + 16, `${r.ops} reads in ${r.seconds.toFixed(2)} s`);

    await c.execute('block_set_io_throttle', { id: 'et', bps: 0, bps_rd: MiB, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 });
    r = await load(1500, 64 << 10);
    console.log(`      bps_rd=1 MiB/s: ${(r.bytes / r.seconds / MiB).toFixed(2)} MiB/s`);
    assert.ok(r.bytes >= 0.9 * MiB * 1.5 && r.bytes <= MiB * r.seconds + MiB / 10 + 16 * (64 << 10), `${r.bytes} bytes in ${r.seconds.toFixed(2)} s`);

    await c.execute('block_set_io_throttle', { id: 'et', bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 });
    r = await load(500, 4096);
    console.log(`      no limits: ${(r.ops / r.seconds).toFixed(0)} IOPS`);
    assert.ok(r.ops / r.seconds > 3 * 200, `unthrottled: ${(r.ops / r.seconds).toFixed(0)} IOPS`);

    await rejectsWith(c.execute('block_set_io_throttle', { id: 'nope', bps: 0, bps_rd: 0, bps_wr: 0, iops: 1, iops_rd: 0, iops_wr: 0 }),
      'DeviceNotFound', /Device 'nope' not found/);
    await rejectsWith(c.execute('block_set_io_throttle', { id: 'et', bps: 0, bps_rd: 0, bps_wr: 0, iops: 10, iops_rd: 5, iops_wr: 0 }),
      'GenericError', /iops-total cannot be combined with iops-read/);
    await rejectsWith(c.execute('block_set_io_throttle', { id: 'et', bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0 }), 'GenericError', /iops_wr/);
  });

  it('vublk qmp and vublk stats talk to the monitor', async () => {
    await start();
    const fe = await connect('a.sock', 2);
    for (let i = 0; i < 20; i++) await fe.read(i % 2, i * 8, 4096);
    const run = (args: string[]) => spawnSync(process.execPath, [VUBLK_BIN, ...args], { cwd: dir, encoding: 'utf8' });
    const q = run(['qmp', 'qmp.sock', 'query-block-exports']);
    assert.equal(q.status, 0, q.stderr);
    assert.deepEqual((JSON.parse(q.stdout) as Array<{ id: string }>).map((e) => e.id), ['ea', 'eb']);
    const bad = run(['qmp', 'qmp.sock', 'blockdev-del', '{"node-name":"disk-a"}']);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^vublk: qmp: blockdev-del: GenericError: Node 'disk-a' is busy/);
    const stats = spawnSync(process.execPath, [VUBLK_BIN, 'stats', 'qmp.sock', '--interval', '0.3', '--count', '1'], { cwd: dir, encoding: 'utf8' });
    assert.equal(stats.status, 0, stats.stderr);
    assert.match(stats.stdout, /export +queue +iothread +r\/s +w\/s/);
    assert.match(stats.stdout, /ea +0 +io0 /);
  });

  it('exports Prometheus metrics per export and queue', async () => {
    await start(['--metrics', '127.0.0.1:0']);
    await waitFor('metrics port', () => server!.findLogs('metrics listening').length > 0);
    const port = server!.findLogs('metrics listening')[0].port as number;
    const fe = await connect('a.sock', 2);
    for (let i = 0; i < 10; i++) await fe.read(1, 0, 4096);
    await fe.write(0, 0, new Uint8Array(8192));
    await fe.read(0, (16 * MiB) / SECTOR_SIZE, 512);
    const text = await fetchText(`http://127.0.0.1:${port}/metrics`);
    assert.match(text, /vublk_requests_total\{export="ea",queue="1",type="read"\} 10\b/);
    assert.match(text, /vublk_requests_total\{export="ea",queue="0",type="write"\} 1\b/);
    assert.match(text, /vublk_bytes_total\{export="ea",queue="1",direction="read"\} 40960\b/);
    assert.match(text, /vublk_bytes_total\{export="ea",queue="0",direction="write"\} 8192\b/);
    assert.match(text, /vublk_request_errors_total\{export="ea",queue="0",status="ioerr"\} 1\b/);
    assert.match(text, /vublk_requests_in_flight\{export="ea",queue="0"\} 0\b/);
    assert.match(text, /# TYPE vublk_request_duration_seconds histogram/);
    assert.match(text, /vublk_request_duration_seconds_bucket\{export="ea",queue="1",le="\+Inf"\} 10\b/);
    assert.match(text, /vublk_request_duration_seconds_count\{export="ea",queue="1"\} 10\b/);
    assert.match(text, /vublk_iothread_busy_seconds_total\{iothread="io0"\} [\d.e-]+/);
    assert.match(text, /vublk_process_cpu_seconds_total/);
  });

  it('runs from a JSON config file', async () => {
    fs.writeFileSync(path.join(dir, 'vublk.json'), JSON.stringify({
      blockdevs: [{ driver: 'file', 'node-name': 'disk', filename: 'a.img' }],
      exports: [{ type: 'vhost-user-blk', id: 'e0', 'node-name': 'disk', addr: { type: 'unix', path: 'e0.sock' }, writable: true }],
      chardevs: [{ backend: 'socket', id: 'm', path: 'm.sock', server: true }],
      monitors: [{ chardev: 'm' }],
    }));
    server = await startVublkDaemon(['--config', 'vublk.json'], ['e0.sock', 'm.sock'], dir);
    qmp = await QmpClient.connect(path.join(dir, 'm.sock'));
    assert.deepEqual(((await qmp.execute('query-block-exports')) as Array<{ id: string }>).map((e) => e.id), ['e0']);
    const fe = await connect('e0.sock');
    assert.equal((await fe.read(0, 0, 4096)).status, VIRTIO_BLK_S_OK);
  });

  it('gives export sockets the mode, owner and group asked for, QMP 0600; replaces stale sockets, refuses live ones', async () => {
    const NOBODY = 65534;
    const root = process.getuid?.() === 0;
    const access = root ? ',x-vublk-socket-mode=0660,x-vublk-socket-owner=nobody,x-vublk-socket-group=65534' : ',x-vublk-socket-mode=0660';
    const args = (exportSock: string) => [
      '--blockdev', 'driver=file,node-name=d,filename=a.img',
      '--export', `type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=${exportSock},writable=on${access}`,
      '--chardev', 'socket,id=m,path=qmp.sock,server=on,wait=off', '--monitor', 'chardev=m',
    ];
    const first = await startVublkDaemon(args('e.sock'), ['e.sock', 'qmp.sock'], dir);
    server = first;
    const st = fs.statSync(path.join(dir, 'e.sock'));
    assert.deepEqual([st.mode & 0o777, st.uid, st.gid], [0o660, root ? NOBODY : process.getuid!(), root ? NOBODY : process.getgid!()]);
    assert.equal(fs.statSync(path.join(dir, 'qmp.sock')).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.join(dir, 'qmp.sock')).uid, process.getuid!());

    // Live sockets: a second process may take neither, and leaves nothing behind.
    const before = fs.readdirSync(dir).sort();
    for (const [exportSock, pattern] of [
      ['e.sock', /^vublk: socket e\.sock: is in use by another server$/],
      ['f.sock', /^vublk: chardev 'm': socket qmp\.sock: is in use by another server$/],
    ] as Array<[string, RegExp]>) {
      const r = spawnSync(process.execPath, [VUBLK_BIN, ...args(exportSock)], { cwd: dir, encoding: 'utf8' });
      assert.equal(r.status, 2, r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.match(lines[lines.length - 1], pattern);
      assert.equal(lines.filter((l) => !l.startsWith('{')).length, 1, r.stderr);
      assert.deepEqual(fs.readdirSync(dir).sort(), before);
    }

    // A crash leaves both socket files; the next run replaces them and serves.
    first.proc.kill('SIGKILL');
    assert.equal(await first.stop(), 'SIGKILL');
    server = undefined;
    assert.ok(fs.statSync(path.join(dir, 'e.sock')).isSocket() && fs.statSync(path.join(dir, 'qmp.sock')).isSocket());
    server = await startVublkDaemon(args('e.sock'), [], dir);
    await waitFor('the QMP monitor', () => server!.findLogs('QMP monitor listening').length > 0, 10000);
    qmp = await QmpClient.connect(path.join(dir, 'qmp.sock'));
    assert.deepEqual(((await qmp.execute('query-block-exports')) as Array<{ id: string }>).map((e) => e.id), ['e']);
    const fe = await connect('e.sock');
    assert.equal((await fe.read(0, 0, 4096)).status, VIRTIO_BLK_S_OK);
    assert.equal(fs.statSync(path.join(dir, 'e.sock')).mode & 0o777, 0o660);
  });

  for (const [why, args, pattern] of [
    ['an unknown key', ['--export', 'type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=e.sock,colour=red'], /^vublk: --export: unknown key 'colour'$/],
    ['a missing node', ['--export', 'type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=e.sock'], /^vublk: configuration: exports\[0\]\.node-name: no block node named 'd'$/],
    ['a missing image', ['--blockdev', 'driver=file,node-name=d,filename=nope.img', '--export', 'type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=e.sock'], /^vublk: nope\.img: no such file or directory \(ENOENT\)$/],
    ['a second export failing after the first listens', [
      '--blockdev', 'driver=file,node-name=d,filename=a.img',
      '--chardev', 'socket,id=m,path=m.sock,server=on,wait=off', '--monitor', 'chardev=m',
      '--export', 'type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=e.sock',
      '--export', 'type=vhost-user-blk,id=f,node-name=d,addr.type=unix,addr.path=no/such/dir/f.sock',
      '--pidfile', 'vublk.pid',
    ], /^vublk: socket no\/such\/dir\/f\.sock: .*(ENOENT|No such file)/],
    ['a duplicate iothread id', ['--object', 'iothread,id=x', '--object', 'iothread,id=x'], /^vublk: configuration: objects\[1\]\.id: duplicate id 'x'$/],
  ] as Array<[string, string[], RegExp]>) {
    it(`refuses ${why} with one line, status 2, and leaves nothing behind`, () => {
      const before = fs.readdirSync(dir).sort();
      const r = spawnSync(process.execPath, [VUBLK_BIN, ...args], { cwd: dir, encoding: 'utf8' });
      assert.equal(r.status, 2, r.stderr);
      // Log records of what had started (and was undone) may precede it; the error is the one plain line, last.
      const lines = r.stderr.trim().split('\n');
      assert.match(lines[lines.length - 1], pattern);
      assert.equal(lines.filter((l) => !l.startsWith('{')).length, 1, r.stderr);
      assert.deepEqual(fs.readdirSync(dir).sort(), before);
    });
  }
});
