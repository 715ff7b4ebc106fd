// The back-end channel end to end: the server runs in-process (a Daemon with
// one export, as `vublk serve` builds it) so the test can call
// notifyConfigChange() on the active session itself; our BlkFrontend plays
// QEMU: SET_BACKEND_REQ_FD at setup, GET_CONFIG on CONFIG_CHANGE_MSG, then the ack.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProtocolFeature, hasBit } from '../../protocol';
import { BlkExport } from '../../src/daemon/blk-export';
import { Daemon } from '../../src/daemon/daemon';
import { BlkConfig, BlkFrontend, SECTOR_SIZE, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { setLogSink } from '../../src/util/log';
import { BackendRequestError } from '../../src/vhost/backend-channel';
import { createImage } from '../support/disk-scenario';
import { waitFor } from '../support/wait';

const IMAGE_SIZE = 8 << 20;

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

describe('back-end channel: config change notification (in-process server)', function () {
  this.timeout(60000);
  let dir: string;
  let image: string;
  let daemon: Daemon;
  let exp: BlkExport;
  let socketPath: string;
  let fe: BlkFrontend | undefined;
  let lines: string[];
  let restore: (l: string) => void;

  before(async () => {
    lines = [];
    restore = setLogSink((l) => lines.push(l));
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-bch-'));
    image = path.join(dir, 'disk.img');
    createImage(image, IMAGE_SIZE);
    socketPath = path.join(dir, 'vublk.sock');
    daemon = new Daemon();
    daemon.addBlockdev({ driver: 'file', 'node-name': 'disk', filename: image, aio: 'threads' });
    await daemon.addExport({ type: 'vhost-user-blk', id: 'vublk0', 'node-name': 'disk', addr: { type: 'unix', path: socketPath }, writable: true, 'num-queues': 2 });
    exp = daemon.exports.get('vublk0')!.exp;
  });
  after(async () => {
    await fe?.disconnect();
    await daemon?.close();
    setLogSink(restore);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    await fe?.disconnect();
    fe = undefined;
    // The next test connects only once the server let go of this session.
    await waitFor('the session to end', () => exp.activeSession === undefined);
  });

  /** What block_resize does before it notifies: grow the image, and the size the device and its iothreads use. */
  function grow(bytes: number): void {
    fs.truncateSync(image, bytes);
    exp.resized(bytes);
  }

  it('the front-end gets CONFIG_CHANGE_MSG and reads the new capacity before it acks', async () => {
    const seen: BlkConfig[] = [];
    fe = await BlkFrontend.connect({ socketPath: socketPath, numQueues: 2, backendChannel: true, onConfigChange: (c) => seen.push(c) });
    assert.ok(hasBit(fe.protocolFeatures, ProtocolFeature.BACKEND_REQ));
    assert.ok(exp.activeSession!.state.backendChannel);
    assert.equal(fe.config.capacity, IMAGE_SIZE / SECTOR_SIZE);

    grow(2 * IMAGE_SIZE);
    await exp.activeSession!.notifyConfigChange();
    // Resolved on the ack, and the ack came after GET_CONFIG: the new size is already known.
    assert.equal(fe.config.capacity, 2 * IMAGE_SIZE / SECTOR_SIZE);
    assert.deepEqual(seen.map((c) => c.capacity), [2 * IMAGE_SIZE / SECTOR_SIZE]);
    assert.equal(fe.client.backendChannel?.received.length, 1);

    // Several at once: each resolves on its own ack; I/O goes on meanwhile.
    grow(3 * IMAGE_SIZE);
    const io = fe.read(0, 0, 4096);
    await Promise.all([0, 1, 2].map(() => exp.activeSession!.notifyConfigChange()));
    assert.equal((await io).status, VIRTIO_BLK_S_OK);
    assert.equal(seen.length, 4);
    assert.equal(fe.config.capacity, 3 * IMAGE_SIZE / SECTOR_SIZE);
    assert.doesNotMatch(lines.join('\n'), /ERROR/);
  });

  it('without the option the front-end sets up no channel, and notifyConfigChange says so', async () => {
    fe = await BlkFrontend.connect({ socketPath: socketPath, numQueues: 1 });
    assert.ok(!hasBit(fe.protocolFeatures, ProtocolFeature.BACKEND_REQ));
    await assert.rejects(exp.activeSession!.notifyConfigChange(), (e: unknown) =>
      e instanceof BackendRequestError && e.code === 'no-channel' && /front-end did not set up the back-end channel/.test(e.message));
  });

  it('a disconnect closes both ends of the channel: no fd outlives the session', async () => {
    const before = openFds();
    fe = await BlkFrontend.connect({ socketPath: socketPath, numQueues: 2, backendChannel: true });
    const session = exp.activeSession!;
    const channel = fe.client.backendChannel!;
    await session.notifyConfigChange();
    await fe.disconnect();
    fe = undefined;
    assert.match(await channel.closed, /closed/);
    await waitFor('the session to end', () => exp.activeSession === undefined);
    await assert.rejects(session.notifyConfigChange(), (e: unknown) => e instanceof BackendRequestError && e.code === 'no-channel');
    await waitFor('every fd of the session to be closed', () => openFds() === before);
  });
});
