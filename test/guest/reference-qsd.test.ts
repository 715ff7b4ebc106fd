// Proves the guest harness and the shared disk scenario against QEMU's own
// vhost-user-blk server (qemu-storage-daemon), so harness bugs and vublk bugs
// can be told apart.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { assertImageHoldsPatterns, assertReadWriteOutput, createImage, readWriteScript } from '../support/disk-scenario';
import { assertGuestImage, assertGuestSucceeded, runGuest } from '../support/guest';
import { ServerProcess, startQemuStorageDaemon } from '../support/servers';

describe('guest harness with qemu-storage-daemon (reference server)', function () {
  let tmp = '';
  let img = '';
  let server: ServerProcess | undefined;

  before(async function () {
    // Fail, not skip: a missing guest would otherwise hide every guest test.
    assertGuestImage();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-qsd-'));
    img = path.join(tmp, 'disk.img');
    createImage(img);
    server = await startQemuStorageDaemon({ image: img, socketPath: path.join(tmp, 'qsd.sock'), numQueues: 2 });
  });

  after(async function () {
    await server?.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('writes and reads back patterns with O_DIRECT over two queues, bytes land in the image', async function () {
    const result = await runGuest({ disks: [{ socketPath: server!.socketPath, numQueues: 2 }], cpus: 2, script: readWriteScript() });
    console.log(`      guest booted in ${result.bootMs} ms`);
    if (result.exitStatus !== 0) console.log(`qemu-storage-daemon said:\n${server!.output()}`);
    assertGuestSucceeded(result);
    assertReadWriteOutput(result.scriptOutput, 2);
    assertImageHoldsPatterns(img);
  });
});
