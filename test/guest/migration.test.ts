// Live migration under a real guest (issue 7's "Done means"): two QEMU processes
// under TCG on this machine, each attached to its own vublk export of the same
// image (shared storage). The guest runs fio write+verify (verifying as it goes),
// and a reader job that reads random data the host put on the disk, so the
// device keeps writing fresh data into guest RAM; meanwhile the source
// QEMU is told to `migrate` to the destination. During the migration QEMU hands
// the source vublk a dirty log (SET_LOG_BASE) and turns VHOST_F_LOG_ALL on; vublk
// marks every guest page it writes, QEMU sends those pages again, and at the end
// stops the source's rings (GET_VRING_BASE) and starts the destination's from
// the migrated ring state. The destination is held (-S) once the migration
// completed, and its guest RAM is compared with the paused source's, byte for
// byte: a page vublk wrote and did not log would differ. Then the guest
// finishes fio on the destination, whose verify reads back every block intact;
// the image on the host is checked too.
import { strict as assert } from 'node:assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QmpClient } from '../../src/qmp/client';
import { FioJob, VERIFY_GLOBAL, assertDiskHolds, assertFio, fioJobFile, numbered, runFio } from '../support/fio';
import {
  GuestOptions, RING_VARIANTS, assertGuestImage, guestArgv, parseConsole, runQemu, variantDisk, variantTag, writeInitrd,
} from '../support/guest';
import { logsAtLeast } from '../support/logs';
import { ServerProcess, startVublk } from '../support/servers';
import { sleep, waitFor } from '../support/wait';

const MiB = 1024 * 1024;
/** fio's bytes per job (one per queue): long enough under TCG that the migration happens while it runs. */
const FIO_BYTES = (Number(process.env.VUBLK_MIGRATION_FIO_MIB) || 96) * MiB;
/** How long fio runs on the source before the migration starts. */
const BEFORE_MIGRATION_MS = 2000;
/** Random bytes the reader job reads, after the writers' ranges. */
const RANDOM_BYTES = 32 * MiB;
/**
 * Migration bandwidth: slow enough that a pass over guest RAM takes seconds,
 * so that many reads land in pages already sent (they must be sent again).
 */
const MAX_BANDWIDTH = 96 * MiB;

/** The memfd behind a QEMU's guest RAM (memory-backend-memfd id=mem), opened through /proc. */
function guestRamPath(pid: number): string {
  const dir = `/proc/${pid}/fd`;
  const fd = fs.readdirSync(dir).find((n) => {
    try {
      return fs.readlinkSync(path.join(dir, n)).startsWith('/memfd:memory-backend-memfd');
    } catch {
      return false;
    }
  });
  if (fd === undefined) throw new Error(`no guest RAM memfd among QEMU ${pid}'s fds`);
  return path.join(dir, fd);
}

/** Guest-physical addresses of the 4 KiB pages whose contents differ between the two QEMUs' RAM. */
function compareGuestRam(a: number, b: number): number[] {
  const [fa, fb] = [guestRamPath(a), guestRamPath(b)].map((p) => fs.openSync(p, 'r'));
  try {
    const size = fs.fstatSync(fa).size;
    assert.equal(fs.fstatSync(fb).size, size, 'both guests have the same RAM size');
    const chunk = 4 * MiB;
    const [ba, bb] = [Buffer.alloc(chunk), Buffer.alloc(chunk)];
    const differing: number[] = [];
    for (let off = 0; off < size; off += chunk) {
      fs.readSync(fa, ba, 0, chunk, off);
      fs.readSync(fb, bb, 0, chunk, off);
      if (ba.equals(bb)) continue;
      for (let p = 0; p < chunk; p += 4096) if (!ba.subarray(p, p + 4096).equals(bb.subarray(p, p + 4096))) differing.push(off + p);
    }
    return differing;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

interface MigrationStatus { status: string; 'total-time'?: number; downtime?: number; ram?: { transferred: number; 'dirty-sync-count': number } }

describe('live migration of a guest running fio between two vublk exports of one image', function () {
  let tmp = '';
  let cleanups: Array<() => Promise<unknown> | void> = [];

  before(() => {
    // Fail, not skip: a missing guest would otherwise hide the test.
    assertGuestImage();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-migration-'));
  });
  afterEach(async () => {
    for (const undo of cleanups.reverse()) await undo();
    cleanups = [];
  });
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  for (const variant of RING_VARIANTS) {
    it(`${variant.name}: migrate while fio writes and verifies; the guest finishes on the destination, data intact`, async function () {
      const tag = variantTag(variant);
      const image = path.join(tmp, `${tag}.img`);
      const jobBytes = FIO_BYTES;
      const randomAt = variant.queues * jobBytes + MiB;
      const random = crypto.randomBytes(RANDOM_BYTES);
      fs.writeFileSync(image, '');
      fs.truncateSync(image, randomAt + RANDOM_BYTES + MiB);
      const fd = fs.openSync(image, 'r+');
      fs.writeSync(fd, random, 0, RANDOM_BYTES, randomAt);
      fs.closeSync(fd);
      const serve = async (side: string): Promise<ServerProcess> => {
        const s = await startVublk({
          image, socketPath: path.join(tmp, `${tag}-${side}.sock`), numQueues: variant.queues, args: ['--iothreads', String(variant.iothreads)],
        });
        cleanups.push(() => s.stop());
        return s;
      };
      const [source, destination] = [await serve('src'), await serve('dst')];

      const jobs: FioJob[] = Array.from({ length: variant.queues }, (_, i) => ({
        name: `m${i}`, filename: '/dev/vda', offset: i * jobBytes, size: jobBytes, cpu: i, opts: ['bsrange=4k-64k'],
      }));
      // Verify every 16 blocks as fio goes; the reader (last, so the writers keep
      // their thread numbers in the verify headers) reads until they are done.
      const global = [...VERIFY_GLOBAL, 'verify_backlog=16'];
      const reader: FioJob = {
        name: 'reader', filename: '/dev/vda', offset: randomAt, size: RANDOM_BYTES, cpu: 0,
        opts: ['rw=randread', 'bs=16k', 'verify=0', 'do_verify=0', `io_size=${4 * jobBytes}`],
      };
      const guest: GuestOptions = {
        disks: [], cpus: variant.cpus, memoryMiB: 512, fio: true, timeoutMs: 240_000,
        files: { '/etc/vublk/migrate.fio': fioJobFile(global, [...jobs, reader]) },
        script: `export PATH=/bin:/usr/bin
echo VUBLK-FIO-START
${runFio('migrate.fio', 'migrate')}
echo "io-errors: $(dmesg | grep -c 'I/O error')"
`,
      };
      const initrd = writeInitrd(guest, fs.mkdtempSync(path.join(tmp, `${tag}-initrd-`)));
      const qmpPath = (side: string): string => path.join(tmp, `${tag}-${side}.qmp`);
      const migrationSocket = path.join(tmp, `${tag}-migration.sock`);
      const argv = (server: ServerProcess, side: string, extra: string[]): string[] => guestArgv({
        ...guest, disks: [variantDisk(variant, server.socketPath)],
        extraArgs: ['-qmp', `unix:${qmpPath(side)},server=on,wait=off`, ...extra],
      }, initrd);

      // The destination waits for the incoming migration; it attaches to its vublk at once.
      const pids = new Map<string, number>();
      // A failed check must not leave the QEMUs running (the source waits paused after a migration).
      cleanups.push(() => {
        for (const pid of pids.values()) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      });
      const dst = runQemu(argv(destination, 'dst', ['-S', '-incoming', `unix:${migrationSocket}`]), { ...guest, spawned: (pid) => pids.set('dst', pid) });
      let fioStarted: () => void = () => undefined;
      const fioStart = new Promise<void>((r) => { fioStarted = r; });
      const src = runQemu(argv(source, 'src', []), {
        ...guest, spawned: (pid) => pids.set('src', pid), log: (line) => { if (line === 'VUBLK-FIO-START') fioStarted(); },
      });

      await Promise.race([fioStart, src.then(() => { throw new Error('the source guest ended before fio started'); })]);
      await sleep(BEFORE_MIGRATION_MS);
      const qmp = await QmpClient.connect(qmpPath('src'));
      await qmp.execute('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH });
      const started = Date.now();
      await qmp.execute('migrate', { uri: `unix:${migrationSocket}` });
      let status: MigrationStatus = { status: 'setup' };
      for (const deadline = Date.now() + 120_000; status.status !== 'completed' && status.status !== 'failed'; await sleep(200)) {
        if (Date.now() > deadline) throw new Error(`migration still ${status.status} after 120 s`);
        status = (await qmp.execute('query-migrate')) as MigrationStatus;
      }
      console.log(`      migration ${status.status} in ${Date.now() - started} ms (QEMU: total ${status['total-time']} ms, downtime ${status.downtime} ms, ` +
        `${((status.ram?.transferred ?? 0) / MiB).toFixed(1)} MiB sent, ${status.ram?.['dirty-sync-count']} dirty syncs)`);
      assert.equal(status.status, 'completed', `migration failed:\n${source.output()}`);
      // Both paused now: the source for good, the destination (-S) until told to go on.
      const differing = compareGuestRam(pids.get('src')!, pids.get('dst')!);
      assert.deepEqual(differing, [], `guest RAM differs after the migration (pages at ${differing.slice(0, 8).map((p) => `0x${p.toString(16)}`).join(', ')}...)`);
      const dstQmp = await QmpClient.connect(qmpPath('dst'));
      await dstQmp.execute('cont');
      dstQmp.close();
      await qmp.execute('quit').catch(() => undefined);
      qmp.close();
      const [s, d] = await Promise.all([src, dst]);

      // The console went on from the source's output to the destination's.
      const console_ = parseConsole(s.output + '\n' + d.output);
      assert.equal(console_.exitStatus, 0, `guest script failed; destination console:\n${d.output.split('\n').slice(-30).join('\n')}\n${d.stderr}`);
      const out = console_.scriptOutput;
      assert.ok(!/fio-status migrate/.test(s.output), 'fio ended before the migration: the test proved nothing');
      assert.match(d.output, /fio-status migrate: 0/, 'fio ended on the destination');
      assertFio(out, 'migrate', jobs);
      assert.match(out, /^io-errors: 0$/m, `guest kernel logged I/O errors:\n${out}`);

      // The source logged dirty pages for the migration, then stopped; the destination served the rest.
      assert.ok(source.findLogs('dirty logging started').length > 0, `the source never logged dirty pages:\n${source.output()}`);
      assert.ok(source.findLogs('dirty log set').length > 0);
      await waitFor('the destination to see its guest go', () => destination.findLogs('front-end disconnected').length > 0, 20_000);
      for (const srv of [source, destination]) assert.deepEqual(logsAtLeast(srv.logs(), 'error'), [], `vublk logged an error:\n${srv.output()}`);
      for (const srv of [source, destination]) assert.equal(await srv.stop(), 0, `vublk did not exit cleanly:\n${srv.output()}`);
      const disk = fs.readFileSync(image);
      assertDiskHolds(disk, numbered(jobs), `${variant.name} image`, (start, length) => {
        for (let at = start; at < start + length; at += MiB) {
          const end = Math.min(at + MiB, start + length);
          const inRandom = at >= randomAt && end <= randomAt + RANDOM_BYTES;
          const want = inRandom ? random.subarray(at - randomAt, end - randomAt) : Buffer.alloc(end - at);
          assert.ok(disk.subarray(at, end).equals(want), `${variant.name} image: bytes at ${at} changed`);
        }
      });
    });
  }
});
