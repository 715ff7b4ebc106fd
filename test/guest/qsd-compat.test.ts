// vublk as a drop-in for qemu-storage-daemon under a real guest: the
// vhost-user-blk command line from qemu-storage-daemon(1) with only the binary
// name changed serves a guest, and QMP changes the export while the guest
// runs: block_resize (the guest sees the new capacity without a reboot),
// block-export-del (BLOCK_EXPORT_DELETED) and block-export-add (QEMU
// reconnects, the guest reads on).
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { field } from '../support/disk-scenario';
import { assertGuestImage, assertGuestSucceeded, runGuest } from '../support/guest';
import { QmpClient } from '../../src/qmp/client';
import { ServerProcess, startVublkDaemon } from '../support/servers';
import { waitFor } from '../support/wait';

const MiB = 1 << 20;
const SECTORS = (bytes: number): number => bytes / 512;

function md5(b: Buffer): string {
  return createHash('md5').update(b).digest('hex');
}

describe('real guest on a qemu-storage-daemon command line', function () {
  let tmp = '';
  let server: ServerProcess | undefined;

  before(() => {
    assertGuestImage();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-qsd-'));
  });
  after(async () => {
    if (server !== undefined) assert.equal(await server.stop(), 0, server.output());
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('serves the documented line; QMP resize, export del and add work under the running guest', async () => {
    const image = path.join(tmp, 'disk.img');
    const first = Buffer.alloc(4 * MiB);
    for (let i = 0; i < first.length; i += 4096) first.write(`block ${i / 4096} `, i);
    fs.writeFileSync(image, first);
    fs.truncateSync(image, 64 * MiB);
    // qemu-storage-daemon(1), "Export a qcow2 image file disk.qcow2 as a vhost-user-blk device",
    // with the raw format in place of qcow2 (vublk serves raw images), and its QMP monitor example.
    const args = [
      '--blockdev', 'driver=file,node-name=file,filename=disk.img',
      '--blockdev', 'driver=raw,node-name=raw,file=file',
      '--export', 'type=vhost-user-blk,id=export,addr.type=unix,addr.path=vhost-user-blk.sock,node-name=raw',
      '--chardev', 'socket,path=qmp.sock,server=on,wait=off,id=char1',
      '--monitor', 'chardev=char1',
    ];
    server = await startVublkDaemon(args, ['vhost-user-blk.sock', 'qmp.sock'], tmp);
    const qmp = await QmpClient.connect(path.join(tmp, 'qmp.sock'));
    const steps: string[] = [];
    let stepFailure: Error | undefined;
    const step = (name: string, fn: () => Promise<void>): void => {
      steps.push(name);
      fn().catch((e: Error) => { stepFailure ??= e; });
    };
    const grown = Buffer.alloc(MiB, 0x6b);
    const script = `
size() { cat /sys/block/vda/size; }
wait_change() { i=0; while [ "$(size)" = "$1" ]; do i=$((i + 1)); [ $i -gt 900 ] && return 1; usleep 100000; done; }
echo "size0: $(size)"
echo "ro: $(cat /sys/block/vda/ro)"
echo "md5: $(dd if=/dev/vda bs=1048576 count=4 iflag=direct status=none | md5sum | cut -d' ' -f1)"
s=$(size); echo "step: resize"
wait_change $s || { echo "no resize seen"; exit 1; }
echo "size1: $(size)"
s=$(size); echo "step: reconnect"
wait_change $s || { echo "no change after reconnect"; exit 1; }
echo "size2: $(size)"
echo "md5new: $(dd if=/dev/vda bs=1048576 count=1 skip=64 iflag=direct status=none | md5sum | cut -d' ' -f1)"
`;
    const result = await runGuest({
      disks: [{ socketPath: path.join(tmp, 'vhost-user-blk.sock'), numQueues: 1, chardevExtra: 'reconnect=1' }],
      cpus: 1,
      script,
      log: (line) => {
        if (line === 'step: resize') {
          step('resize', async () => { await qmp.execute('block_resize', { 'node-name': 'raw', size: 96 * MiB }); });
        } else if (line === 'step: reconnect') {
          step('reconnect', async () => {
            await qmp.execute('block-export-del', { id: 'export' });
            await qmp.waitEvent('BLOCK_EXPORT_DELETED', (d) => d.id === 'export');
            // New data where the disk grows next; the guest reads it after QEMU reconnects.
            const fd = fs.openSync(image, 'r+');
            fs.writeSync(fd, grown, 0, grown.length, 64 * MiB);
            fs.closeSync(fd);
            await qmp.execute('block-export-add', {
              type: 'vhost-user-blk', id: 'export', 'node-name': 'raw', addr: { type: 'unix', path: 'vhost-user-blk.sock' },
            });
            // QEMU (reconnect=1) comes back within a second. It reads config space only at
            // realize and on CONFIG_CHANGE_MSG, so the size changes once it is attached.
            await waitFor('QEMU to reconnect', () => server!.findLogs('front-end connected').length === 2, 20_000);
            await qmp.execute('block_resize', { 'node-name': 'raw', size: 128 * MiB });
          });
        }
      },
    });
    qmp.close();
    if (stepFailure !== undefined) throw stepFailure;
    console.log(`      guest booted in ${result.bootMs} ms`);
    if (result.exitStatus !== 0) console.log(`vublk said:\n${server.output()}`);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assert.deepEqual(steps, ['resize', 'reconnect']);
    assert.equal(field(out, /^size0: (\d+)$/m), String(SECTORS(64 * MiB)));
    assert.equal(field(out, /^ro: (\d)$/m), '1', 'no writable=on: read-only, as with qemu-storage-daemon');
    assert.equal(field(out, /^md5: (\w+)$/m), md5(first));
    assert.equal(field(out, /^size1: (\d+)$/m), String(SECTORS(96 * MiB)), 'the guest saw block_resize without a reboot');
    assert.equal(field(out, /^size2: (\d+)$/m), String(SECTORS(128 * MiB)), 'the re-added export serves the reconnected guest');
    assert.equal(field(out, /^md5new: (\w+)$/m), md5(grown));
    assert.equal(fs.statSync(image).size, 128 * MiB);
  });
});
