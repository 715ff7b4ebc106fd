// A stock Linux guest under QEMU uses a vublk export: bytes written with
// O_DIRECT land in the image, with one and with two queues; read-only is
// is enforced (the guest sees VIRTIO_BLK_F_RO; Linux then refuses writes and
// will not let `blockdev --setrw` lift a driver-set read-only flag, so the
// server's own refusal of OUT requests is tested with our front-end in
// test/integration).
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  GUEST_HELPERS, assertImageHoldsPatterns, assertReadWriteOutput, createImage, field, readWriteScript,
} from '../support/disk-scenario';
import { GuestResult, assertGuestImage, assertGuestSucceeded, runGuest } from '../support/guest';
import { logsAtLeast } from '../support/logs';
import { ExportSpec, ServerProcess, startVublk } from '../support/servers';

describe('real guest on vublk', function () {
  let tmp = '';
  let server: ServerProcess | undefined;

  before(() => {
    // Fail, not skip: a missing guest would otherwise hide every guest test.
    assertGuestImage();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-guest-'));
  });
  afterEach(async () => {
    const s = server;
    server = undefined;
    if (s !== undefined) assert.equal(await s.stop(), 0, `vublk did not exit cleanly:\n${s.output()}`);
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  async function serve(name: string, spec: Partial<ExportSpec> = {}): Promise<string> {
    const image = path.join(tmp, `${name}.img`);
    createImage(image);
    server = await startVublk({ image, socketPath: path.join(tmp, `${name}.sock`), ...spec });
    return image;
  }

  function report(result: GuestResult): void {
    console.log(`      guest booted in ${result.bootMs} ms`);
    if (result.exitStatus !== 0) console.log(`vublk said:\n${server?.output()}`);
  }

  for (const queues of [1, 2]) {
    it(`reads and writes with O_DIRECT over ${queues} queue(s); bytes match in the image`, async () => {
      const image = await serve(`rw${queues}`, { numQueues: queues });
      const result = await runGuest({ disks: [{ socketPath: server!.socketPath, numQueues: queues }], cpus: 2, script: readWriteScript() });
      report(result);
      assertGuestSucceeded(result);
      assertReadWriteOutput(result.scriptOutput, queues);
      assertImageHoldsPatterns(image);
      assert.deepEqual(logsAtLeast(server!.logs(), 'error'), [], `vublk logged errors:\n${server!.output()}`);
      assert.deepEqual(server!.findLogs(/malformed/), [], `vublk saw malformed input:\n${server!.output()}`);
    });
  }

  it('attaches a plain vhost-user-blk-pci (one queue per vCPU), reports serial and 4K blocks', async () => {
    await serve('plain', { serial: 'vublk-serial-42', logicalBlockSize: 4096 });
    const result = await runGuest({
      disks: [{ socketPath: server!.socketPath }], cpus: 2,
      script: `
echo "mq: $(ls /sys/block/vda/mq | tr '\\n' ' ')"
echo "serial: $(cat /sys/block/vda/serial)"
echo "lbs: $(cat /sys/block/vda/queue/logical_block_size)"
echo "wc: $(cat /sys/block/vda/queue/write_cache)"
`,
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assert.equal(field(out, /^mq: (.*)$/m).trim(), '0 1');
    assert.equal(field(out, /^serial: (.*)$/m), 'vublk-serial-42');
    assert.equal(field(out, /^lbs: (\d+)$/m), '4096');
    assert.equal(field(out, /^wc: (.*)$/m), 'write back');
  });

  it('refuses guest writes on a read-only export', async () => {
    const image = await serve('ro', { readOnly: true });
    fs.writeFileSync(image, Buffer.alloc(4096, 0x3c), { flag: 'r+' });
    const result = await runGuest({
      disks: [{ socketPath: server!.socketPath, numQueues: 1 }], cpus: 1,
      script: `
${GUEST_HELPERS}
echo "ro: $(cat /sys/block/vda/ro)"
pattern 0 4096 > /tmp/p
if dd if=/tmp/p of=/dev/vda bs=4096 count=1 oflag=direct conv=notrunc status=none 2>/dev/null; then echo "write1: accepted"; else echo "write1: refused"; fi
blockdev --setrw /dev/vda 2>/dev/null || true
if dd if=/tmp/p of=/dev/vda bs=4096 count=1 oflag=direct conv=notrunc status=none 2>/dev/null; then echo "write2: accepted"; else echo "write2: refused"; fi
echo "read: $(dd if=/dev/vda bs=4096 count=1 iflag=direct status=none | md5sum | cut -c1-8)"
`,
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assert.equal(field(out, /^ro: (\d)$/m), '1');
    assert.equal(field(out, /^write1: (\w+)$/m), 'refused');
    assert.equal(field(out, /^write2: (\w+)$/m), 'refused', 'still refused after blockdev --setrw');
    const original = createHash('md5').update(Buffer.alloc(4096, 0x3c)).digest('hex').slice(0, 8);
    assert.equal(field(out, /^read: (\w+)$/m), original, 'guest reads the original bytes');
    assert.ok(fs.readFileSync(image).subarray(0, 4096).equals(Buffer.alloc(4096, 0x3c)), 'image unchanged');
  });
});
