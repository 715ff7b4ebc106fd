// Crash recovery under a real guest (issue 5's "Done means"): fio writes and
// verifies (crc32c, queue depth 16) inside a QEMU guest attached with
// reconnect=1, while the host kills vublk with SIGKILL and starts it again on
// the same socket, several times, seconds apart. QEMU hands each new process the
// in-flight region it kept (SET_INFLIGHT_FD), the new process resubmits what the
// old one had taken and not returned, and the guest only sees a stall: fio
// reports no error, its verify pass reads every block back intact, and the
// image on the host holds exactly the verify blocks fio wrote.
//
// What QEMU 7.2 does meanwhile: on each hang-up it logs "Unexpected end-of-file
// before all data were read", "Failed to set msg fds." and, per queue, "vhost VQ
// N ring restore failed: -22" (GET_VRING_BASE cannot be asked, so it takes the
// used ring's idx as the ring base). The guest's requests stay pending; QEMU
// retries the socket every second and on reconnection sends SET_INFLIGHT_FD with
// the region it kept and SET_VRING_BASE with that used index, which the region
// overrides (virtq/split.ts trackInflight).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FioJob, VERIFY_GLOBAL, assertDiskHolds, assertFio, fioJobFile, numbered, runFio } from '../support/fio';
import { RING_VARIANTS, assertGuestImage, assertGuestSucceeded, runGuest, variantDisk, variantTag } from '../support/guest';
import { logsAtLeast } from '../support/logs';
import { ServerProcess, startVublk } from '../support/servers';
import { sleep, waitFor } from '../support/wait';

const MiB = 1024 * 1024;
/**
 * Bytes fio writes and verifies in all (split over the jobs): under TCG fio moves
 * about 12 MB/s here, so this keeps it busy for 30-60 s with the kills' stalls.
 */
const FIO_BYTES = (Number(process.env.VUBLK_CRASH_FIO_MIB) || 640) * MiB;
const KILLS = 5;
/** Pause between a reconnect and the next kill: 1 to 3 s, random, so kills land at different points. */
const PAUSE_MS = 2000;
/** Untouched space after each job's range, checked to stay zero. */
const GAP_BYTES = MiB;

function field(out: string, re: RegExp): string {
  const m = re.exec(out);
  assert.ok(m, `guest output lacks ${re}:\n${out}`);
  return m[1];
}

describe('crash recovery under a real guest: fio verify while vublk is killed and restarted', function () {
  let tmp = '';
  const servers: ServerProcess[] = [];
  let current: ServerProcess | undefined;
  /** Set when a test ends, so a killer still running starts no new server. */
  let ended = false;

  before(() => {
    // Fail, not skip: a missing guest would otherwise hide the test.
    assertGuestImage();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-crash-guest-'));
  });
  beforeEach(() => { ended = false; });
  afterEach(async () => {
    ended = true;
    const s = current;
    current = undefined;
    servers.length = 0;
    if (s !== undefined) await s.stop();
  });
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  for (const variant of RING_VARIANTS) {
    it(`${variant.name}: ${KILLS} SIGKILLs during fio write+verify; no error, data intact`, async function () {
      const tag = variantTag(variant);
      const JOB_BYTES = FIO_BYTES / variant.queues;
      const image = path.join(tmp, `${tag}.img`);
      const socketPath = path.join(tmp, `${tag}.sock`);
      // Room for every job, each followed by a gap that must stay zero.
      fs.writeFileSync(image, '');
      fs.truncateSync(image, variant.queues * (JOB_BYTES + GAP_BYTES));
      const start = async (): Promise<ServerProcess> => {
        // Write-through (a data sync before each write completes) keeps requests in
        // flight long enough for a kill to find some: with write-back the server
        // finishes each write in microseconds and waits for the slow TCG guest.
        const s = await startVublk({
          image, socketPath, numQueues: variant.queues, args: ['--iothreads', String(variant.iothreads), '--cache', 'writethrough'],
        });
        servers.push(s);
        current = s;
        return s;
      };
      await start();

      // One job per vCPU: blk-mq sends each job's requests down its vCPU's queue.
      const jobs: FioJob[] = Array.from({ length: variant.queues }, (_, i) => ({
        name: `j${i}`, filename: '/dev/vda', offset: i * (JOB_BYTES + GAP_BYTES), size: JOB_BYTES, cpu: i, opts: ['bsrange=4k-64k'],
      }));
      const global = [...VERIFY_GLOBAL.filter((o) => !o.startsWith('iodepth')), 'iodepth=16', 'do_verify=1'];

      // The killer: runs once fio started, until KILLS restarts are done.
      const kills: Array<{ at: number; reconnectedMs: number }> = [];
      let fioStart = 0;
      let fioDone = 0;
      let killerError: Error | undefined;
      let killer: Promise<void> | undefined;
      const killLoop = async (): Promise<void> => {
        for (let k = 0; k < KILLS; k++) {
          await sleep(PAUSE_MS / 2 + Math.random() * PAUSE_MS);
          if (ended) return;
          if (fioDone !== 0) throw new Error(`fio finished after only ${k} kills; make FIO_BYTES larger`);
          const victim = current!;
          const exited = new Promise((r) => victim.proc.once('exit', r));
          const at = Date.now();
          victim.proc.kill('SIGKILL');
          await exited;
          const s = await start();
          // QEMU (reconnect=1) retries once a second.
          await waitFor('QEMU to reconnect', () => s.findLogs('front-end connected').length === 1, 20_000);
          kills.push({ at, reconnectedMs: Date.now() - at });
        }
      };

      const result = await runGuest({
        disks: [variantDisk(variant, socketPath, 'reconnect=1')],
        cpus: variant.cpus, memoryMiB: 512, fio: true, timeoutMs: 280_000,
        files: { '/etc/vublk/crash.fio': fioJobFile(global, jobs) },
        log: (line) => {
          if (line === 'VUBLK-FIO-START' && killer === undefined) {
            fioStart = Date.now();
            killer = killLoop().catch((e: Error) => { killerError = e; });
          } else if (line.startsWith('fio-status crash:')) {
            fioDone = Date.now();
          }
        },
        script: `export PATH=/bin:/usr/bin
echo VUBLK-FIO-START
${runFio('crash.fio', 'crash')}
echo "io-errors: $(dmesg | grep -c 'I/O error')"
`,
      });
      await killer;
      console.log(`      guest booted in ${result.bootMs} ms; fio ran ${fioDone - fioStart} ms; reconnects after kills took ${kills.map((k) => k.reconnectedMs).join(', ')} ms`);
      // What QEMU made of the hang-ups (see the header comment), one line per distinct message.
      const qemuSaid = new Map<string, number>();
      for (const l of result.stderr.split('\n').filter((x) => x !== '')) qemuSaid.set(l, (qemuSaid.get(l) ?? 0) + 1);
      for (const [l, n] of qemuSaid) console.log(`      qemu (${n}x): ${l}`);
      const everything = (): string => servers.map((s, i) => `--- vublk run ${i} ---\n${s.output()}`).join('\n') + `\n--- qemu stderr ---\n${result.stderr}`;
      if (result.exitStatus !== 0) console.log(everything());
      if (killerError !== undefined) throw killerError;
      assertGuestSucceeded(result);
      const out = result.scriptOutput;
      assert.equal(kills.length, KILLS, 'every kill happened');
      assert.ok(kills[KILLS - 1].at < fioDone, 'the kills came while fio ran');
      assertFio(out, 'crash', jobs);
      assert.equal(field(out, /^io-errors: (\d+)$/m), '0', `guest kernel logged I/O errors:\n${result.output}`);

      // Each restart took over the region QEMU kept and found requests the dead process had taken.
      let resubmitted = 0;
      for (const s of servers.slice(1)) {
        for (const r of s.findLogs('resubmitting requests left in flight')) resubmitted += Number(r.resubmit);
        assert.deepEqual(logsAtLeast(s.logs(), 'error'), [], `a restarted vublk logged an error:\n${everything()}`);
      }
      console.log(`      ${resubmitted} requests resubmitted over ${KILLS} restarts`);
      assert.ok(resubmitted > 0, `no kill caught a request in flight: the test proved nothing\n${everything()}`);

      const last = current!;
      current = undefined;
      assert.equal(await last.stop(), 0, `vublk did not exit cleanly:\n${last.output()}`);
      assertDiskHolds(fs.readFileSync(image), numbered(jobs), `${variant.name} image`);
    });
  }
});
