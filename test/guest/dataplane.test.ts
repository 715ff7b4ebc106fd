// The data plane under a real Linux guest, with fio writing and verifying inside it:
// multiqueue I/O spread over iothreads (io_uring and thread-pool engines), a host
// block device (loop) as the backing store, discard and write-zeroes, and
// cache=none with guest buffers that O_DIRECT on the host cannot take as they are.
// After each run the host checks the bytes fio left behind: with verify=crc32c every
// verify block carries a header naming its own offset and job, and checksums of
// header and data, so every byte of every job's range is checked, not just sampled.
//
// Facts about the guest these tests rely on (Debian 6.1 cloud kernel + busybox):
// - fio comes from the fio archive (fio: true) at /usr/bin/fio, outside the init's PATH.
// - busybox has blkdiscard (BLKDISCARD) but nothing that issues WRITE_ZEROES (its
//   fallocate only does mode 0, which block devices refuse). util-linux fallocate does:
//   on a block device, -z (FALLOC_FL_ZERO_RANGE) becomes REQ_OP_WRITE_ZEROES with
//   REQ_NOUNMAP and -p (PUNCH_HOLE|KEEP_SIZE) one without it, so the device sees both
//   values of VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP. The tests copy the host's binary
//   into the guest with the libraries ldd lists for it (libc and the loader).
// - The guest kernel accepts O_DIRECT buffers aligned to 512 bytes (virtio-blk's
//   dma_alignment) even when the logical block size is 4096: fio's mem_align=512
//   puts every buffer at page offset 512, so each 4 KiB piece reaches the device as
//   a 3584- and a 512-byte segment.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LOG_LEVEL_VALUES } from '../../src/util/log';
import { FioJob, VERIFY_GLOBAL, assertDiskHolds, assertFio, assertZero, fioJobFile, numbered, runFio } from '../support/fio';
import { GuestResult, assertGuestImage, assertGuestSucceeded, runGuest } from '../support/guest';
import { logsAtLeast } from '../support/logs';
import { ExportSpec, ServerProcess, startVublk, startVublkDaemon } from '../support/servers';

const KiB = 1024;
const MiB = 1024 * KiB;

// --- host commands --------------------------------------------------------------------

interface CommandResult { ok: boolean; stdout: string; why: string }

function run(cmd: string, args: string[]): CommandResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return { ok: false, stdout: '', why: `${cmd}: ${r.error.message}` };
  const why = `${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim()}`;
  return { ok: r.status === 0, stdout: r.stdout, why };
}

function mustRun(cmd: string, args: string[]): string {
  const r = run(cmd, args);
  if (!r.ok) throw new Error(r.why);
  return r.stdout;
}

/** Thrown by set-up steps that need something this machine lacks; the test skips with the reason. */
class Unavailable extends Error {}

function skipBecause(ctx: Mocha.Context, why: string): never {
  console.log(`      skipped: ${why}`);
  ctx.skip();
  throw new Error('unreachable');
}

const GUEST_FALLOCATE = '/opt/util-linux/fallocate';

/**
 * util-linux fallocate and the shared libraries it loads (libc and the dynamic loader,
 * at the paths ldd names), as guest files; throws Unavailable when the host has none.
 */
function utilLinuxFallocate(): Record<string, Buffer> {
  const which = run('sh', ['-c', 'command -v fallocate']);
  if (!which.ok) throw new Unavailable('no fallocate on the host (util-linux) to issue WRITE_ZEROES from the guest');
  const bin = which.stdout.trim();
  const version = run(bin, ['--version']);
  if (!version.stdout.includes('util-linux')) throw new Unavailable(`${bin} is not util-linux fallocate: ${version.stdout.trim()}`);
  const ldd = run('ldd', [bin]);
  if (!ldd.ok) throw new Unavailable(`cannot list the libraries of ${bin}: ${ldd.why}`);
  const files: Record<string, Buffer> = { [GUEST_FALLOCATE]: fs.readFileSync(bin) };
  // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
  for (const m of ldd.stdout.matchAll(/^\s*(?:\S+ => )?(\/\S+) \(0x[0-9a-f]+\)$/gm)) files[m[1]] = fs.readFileSync(m[1]);
  return files;
}

// Non-zero fill for images that must show what changed: 16-byte lines naming the 4 KiB block.
function fillRange(start: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let pos = start; pos < start + length;) {
    const block = pos - (pos % 4096);
    const line = `fill@${block.toString(16).padStart(10, '0')}\n`;
    const lineAt = pos % 16;
    const n = Math.min(16 - lineAt, start + length - pos);
    out.write(line.slice(lineAt, lineAt + n), pos - start, 'latin1');
    pos += n;
  }
  return out;
}

function writeFilledImage(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = 4 * MiB;
    for (let pos = 0; pos < bytes; pos += chunk) fs.writeSync(fd, fillRange(pos, Math.min(chunk, bytes - pos)), 0, Math.min(chunk, bytes - pos), pos);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function assertFill(data: Buffer, start: number, length: number, what: string): void {
  const want = fillRange(start, length);
  const got = data.subarray(start, start + length);
  if (got.equals(want)) return;
  let i = 0;
  while (got[i] === want[i]) i++;
  assert.fail(`${what}: byte at ${start + i} changed (${got[i]}, fill is ${want[i]}); bytes there: ${JSON.stringify(got.subarray(i - (i % 16), i - (i % 16) + 16).toString('latin1'))}`);
}

function createSparse(file: string, bytes: number): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, bytes);
}

interface FileExtent { start: number; end: number; flags: string }

/** The file's extents (byte ranges) per filefrag -v (FIEMAP, after syncing the file); undefined without filefrag. */
function fileExtents(file: string): FileExtent[] | undefined {
  const r = run('filefrag', ['-s', '-v', file]);
  if (!r.ok) return undefined;
  const unit = /blocks of (\d+) bytes/.exec(r.stdout);
  assert.ok(unit, `unexpected filefrag output:\n${r.stdout}`);
  const bs = Number(unit[1]);
  const extents: FileExtent[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*\d+\.\.\s*\d+:\s*\d+:\s*(?:\d+:)?\s*(\S*)\s*$/.exec(line);
    if (m) extents.push({ start: Number(m[1]) * bs, end: (Number(m[2]) + 1) * bs, flags: m[3] });
  }
  return extents;
}

/** The whole filesystem blocks inside [start, start+length). */
function innerBlocks(start: number, length: number, block: number): [number, number] {
  return [Math.ceil(start / block) * block, Math.floor((start + length) / block) * block];
}

function overlapping(extents: FileExtent[], lo: number, hi: number): FileExtent[] {
  return extents.filter((e) => e.start < hi && e.end > lo);
}

// --- the server side ---------------------------------------------------------------------

/** Last "queue stopped" debug record per queue: which iothread ran it and how many requests the guest made available. */
function queueStops(s: ServerProcess): Map<number, { iothread: string; next: number }> {
  const stops = new Map<number, { iothread: string; next: number }>();
  for (const r of s.findLogs('queue stopped')) {
    if (r.level === LOG_LEVEL_VALUES.debug) stops.set(Number(r.queue), { iothread: String(r.iothread), next: Number(r.next) });
  }
  return stops;
}

/** Resident KiB of the server's cache=none bounce areas (memfds named vublk-bounce, touched only when used). */
function bounceRss(pid: number): { mappings: number; kib: number } {
  let mappings = 0;
  let kib = 0;
  let inBounce = false;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      inBounce = line.includes('vublk-bounce');
      if (inBounce) mappings++;
    } else if (inBounce) {
      const m = /^Rss:\s+(\d+) kB/.exec(line);
      if (m) kib += Number(m[1]);
    }
  }
  return { mappings, kib };
}

/** open() flags of the server's descriptor for `target` (from /proc/PID/fdinfo). */
function openFlags(pid: number, target: string): number {
  const real = fs.realpathSync(target);
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let link: string;
    try {
      link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (link !== real) continue;
    const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
    if (m) return parseInt(m[1], 8);
  }
  throw new Error(`vublk (pid ${pid}) has no descriptor for ${target}`);
}
const O_DIRECT = fs.constants.O_DIRECT;

async function waitFor(what: string, ready: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function assertNoServerErrors(s: ServerProcess): void {
  assert.deepEqual(logsAtLeast(s.logs(), 'warn'), [], `vublk logged a problem:\n${s.output()}`);
}

const GUEST_PATH = 'export PATH=/bin:/usr/bin\n';

// Interrupts of a virtio device's request queues (one MSI-X vector per queue), printed with a prefix.
function irqLines(prefix: string, device = 'virtio0'): string {
  return `grep "${device}-req" /proc/interrupts | sed 's/^/${prefix} /'\n`;
}

function irqCounts(out: string, prefix: string, device = 'virtio0'): Map<number, number> {
  const counts = new Map<number, number>();
  const re = new RegExp(`^\\S+\\s+\\d+:((?:\\s+\\d+)+)\\s.*${device}-req\\.(\\d+)\\s*$`);
  for (const line of out.split('\n')) {
    if (!line.startsWith(prefix + ' ')) continue;
    const m = re.exec(line);
    if (m) counts.set(Number(m[2]), m[1].trim().split(/\s+/).reduce((a, b) => a + Number(b), 0));
  }
  return counts;
}

function field(out: string, re: RegExp): string {
  const m = re.exec(out);
  assert.ok(m, `guest output lacks ${re}:\n${out}`);
  return m[1];
}

describe('guest data plane: iothreads, block devices, discard/write-zeroes, cache=none', function () {
  let tmp = '';
  /** Undone in reverse order after each test, all of them even when one fails. */
  let cleanups: Array<() => void | Promise<void>> = [];
  let servers: ServerProcess[] = [];
  let started = 0;

  before(() => {
    // Fail, not skip: a missing guest would otherwise hide every guest test.
    assertGuestImage();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-dataplane-'));
  });
  beforeEach(() => {
    started = Date.now();
  });
  afterEach(async function () {
    const errors: unknown[] = [];
    for (const undo of cleanups.reverse()) {
      try {
        await undo();
      } catch (e) {
        errors.push(e);
      }
    }
    cleanups = [];
    servers = [];
    console.log(`      (${this.currentTest?.title.split(':')[0]}: ${Date.now() - started} ms in all)`);
    if (errors.length > 0) throw errors[0];
  });
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** Start vublk; `debug` logs queue starts and stops (with their iothread), which the tests read. */
  async function serve(spec: ExportSpec, debug = false): Promise<ServerProcess> {
    const saved = process.env.VUBLK_LOG_LEVEL;
    if (debug) process.env.VUBLK_LOG_LEVEL = 'debug';
    let s: ServerProcess;
    try {
      s = await startVublk(spec);
    } finally {
      if (saved === undefined) delete process.env.VUBLK_LOG_LEVEL;
      else process.env.VUBLK_LOG_LEVEL = saved;
    }
    servers.push(s);
    cleanups.push(async () => {
      const code = await s.stop();
      assert.equal(code, 0, `vublk did not exit cleanly:\n${s.output()}`);
    });
    return s;
  }

  /** Stop a server now (e.g. so a block device's page cache is written back), checking its exit status. */
  async function stopServer(s: ServerProcess): Promise<void> {
    const code = await s.stop();
    assert.equal(code, 0, `vublk did not exit cleanly:\n${s.output()}`);
  }

  function attachLoop(file: string, sectorSize?: number): string {
    const args = ['-f', '--show', ...(sectorSize !== undefined ? ['--sector-size', String(sectorSize)] : []), file];
    const r = run('losetup', args);
    if (!r.ok) throw new Unavailable(`cannot attach a loop device (${r.why})`);
    const dev = r.stdout.trim();
    cleanups.push(() => {
      mustRun('losetup', ['-d', dev]);
    });
    return dev;
  }

  function report(result: GuestResult): void {
    console.log(`      guest booted in ${result.bootMs} ms`);
    if (result.exitStatus !== 0) {
      for (const s of servers) console.log(`vublk (${s.socketPath}) said:\n${s.output()}`);
    }
  }

  // --- 1 and 5: multiqueue on iothreads -------------------------------------------------

  for (const aio of ['io_uring', 'threads'] as const) {
    it(`multiqueue on iothreads (--aio ${aio}): 4 vCPUs write and verify over 4 queues on 2 iothreads`, async function () {
      const image = path.join(tmp, `mq-${aio}.img`);
      const size = 128 * MiB;
      createSparse(image, size);
      const server = await serve({
        image, socketPath: path.join(tmp, `mq-${aio}.sock`), numQueues: 4, args: ['--iothreads', '2', '--aio', aio],
      }, true);
      const noUring = server.findLogs(/^io_uring unavailable/)[0];
      if (noUring) skipBecause(this, `this host cannot run the io_uring engine: ${noUring.msg} (${String(noUring.reason)})`);
      assert.equal(server.findLogs('iothreads attached', { iothreads: 'io0,io1', engine: aio }).length, 1, `engine in use:\n${server.output()}`);
      // One job per vCPU, so blk-mq sends each job's requests down that vCPU's queue.
      const jobs: FioJob[] = [0, 1, 2, 3].map((i) => ({
        name: `j${i}`, filename: '/dev/vda', offset: i * 32 * MiB, size: 16 * MiB, cpu: i, opts: ['bsrange=4k-64k'],
      }));
      const result = await runGuest({
        disks: [{ socketPath: server.socketPath, numQueues: 4 }], cpus: 4, memoryMiB: 512, fio: true,
        files: { '/etc/vublk/mq.fio': fioJobFile(VERIFY_GLOBAL, jobs) },
        script: GUEST_PATH + `
echo "mq: $(ls /sys/block/vda/mq | tr '\\n' ' ')"
for q in /sys/block/vda/mq/*; do echo "cpus \${q##*/}: $(cat $q/cpu_list)"; done
${irqLines('irq-before')}
${runFio('mq.fio', 'mq')}
${irqLines('irq-after')}
`,
      });
      report(result);
      assertGuestSucceeded(result);
      const out = result.scriptOutput;
      assert.deepEqual(field(out, /^mq: (.*)$/m).trim().split(/\s+/), ['0', '1', '2', '3'], 'guest sees 4 queues');
      for (let q = 0; q < 4; q++) assert.equal(field(out, new RegExp(`^cpus ${q}: (.*)$`, 'm')).trim(), String(q), `queue ${q} serves vCPU ${q}`);
      assertFio(out, 'mq', jobs);
      // Completions came back on every queue's own interrupt while fio ran.
      const before = irqCounts(out, 'irq-before');
      const after = irqCounts(out, 'irq-after');
      for (let q = 0; q < 4; q++) {
        assert.ok((after.get(q) ?? 0) > (before.get(q) ?? 0), `no interrupts on request queue ${q} during fio (before ${before.get(q)}, after ${after.get(q)}):\n${out}`);
      }
      // Server side: the queues ran on both iothreads (round-robin) and each carried fio's requests.
      await waitFor('the server to log the disconnect', () => server.findLogs('front-end disconnected').length > 0);
      const stops = queueStops(server);
      console.log(`      requests per queue (avail index at stop): ${[0, 1, 2, 3].map((q) => `${q}:${stops.get(q)?.next}@${stops.get(q)?.iothread}`).join(' ')}`);
      for (let q = 0; q < 4; q++) {
        const st = stops.get(q);
        assert.ok(st, `no "queue stopped" line for queue ${q}:\n${server.output()}`);
        assert.equal(st.iothread, `vublk-io${q % 2}`, `queue ${q} ran on ${st.iothread}`);
        // At least 16 MiB / 64 KiB writes plus as many verify reads.
        assert.ok(st.next >= 2 * (16 * MiB) / (64 * KiB), `queue ${q} only saw ${st.next} requests`);
      }
      assertNoServerErrors(server);
      await stopServer(server);
      assertDiskHolds(fs.readFileSync(image), numbered(jobs), 'image');
    });
  }

  // --- packed virtqueues (VIRTIO_F_RING_PACKED) ---------------------------------------------

  it('packed virtqueues: packed=on, with and without indirect descriptors, 2 vCPUs write and verify over 2 queues on 2 iothreads; data intact', async function () {
    // vda: the kernel puts every multi-buffer request in an indirect table; vdb
    // (indirect_desc=off): chains of descriptors in the ring itself, across its wrap.
    const disks = ['vda', 'vdb'] as const;
    const servers = await Promise.all(disks.map(async (d) => {
      const image = path.join(tmp, `packed-${d}.img`);
      createSparse(image, 64 * MiB);
      return { image, server: await serve({ image, socketPath: path.join(tmp, `packed-${d}.sock`), numQueues: 2, args: ['--iothreads', '2'] }, true) };
    }));
    const jobs = (dev: string): FioJob[] => [0, 1].map((i) => ({
      name: `${dev}-${i}`, filename: `/dev/${dev}`, offset: i * 32 * MiB, size: 8 * MiB, cpu: i, opts: ['bsrange=512-256k'],
    }));
    const result = await runGuest({
      disks: [
        { socketPath: servers[0].server.socketPath, numQueues: 2, extra: 'packed=on' },
        { socketPath: servers[1].server.socketPath, numQueues: 2, extra: 'packed=on,indirect_desc=off' },
      ],
      cpus: 2, memoryMiB: 512, fio: true,
      files: Object.fromEntries(disks.map((d) => [`/etc/vublk/${d}.fio`, fioJobFile(VERIFY_GLOBAL, jobs(d))])),
      script: GUEST_PATH + disks.map((d) => `
echo "features ${d}: $(cat /sys/block/${d}/device/features)"
${runFio(`${d}.fio`, d)}
`).join(''),
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    for (const [i, d] of disks.entries()) {
      // The guest's negotiated feature bits, bit 0 first: 28 is VIRTIO_RING_F_INDIRECT_DESC, 34 VIRTIO_F_RING_PACKED.
      const features = field(out, new RegExp(`^features ${d}: ([01]+)$`, 'm'));
      assert.equal(features[34], '1', `${d}: the guest did not negotiate packed rings:\n${out}`);
      assert.equal(features[28], i === 0 ? '1' : '0', `${d}: indirect descriptors`);
      assertFio(out, d, jobs(d));
      const { server, image } = servers[i];
      // SeaBIOS drives queue 0 with a split ring first; the kernel then resets and negotiates packed rings.
      for (const q of [0, 1]) {
        assert.ok(server.findLogs('queue started', { queue: q, packed: true }).length > 0, `${d}: queue ${q} never ran packed:\n${server.output()}`);
      }
      assertNoServerErrors(server);
      await stopServer(server);
      assertDiskHolds(fs.readFileSync(image), numbered(jobs(d)), image);
    }
  });

  // --- interrupt coalescing (x-vublk-coalescing) ---------------------------------------------

  it('interrupt coalescing: the same fio write+verify on a disk with and one without; fewer interrupts per request, data intact', async function () {
    const images = ['plain', 'coalesced'].map((n) => path.join(tmp, `irq-${n}.img`));
    for (const image of images) createSparse(image, 64 * MiB);
    const plain = await serve({ image: images[0], socketPath: path.join(tmp, 'irq-plain.sock'), numQueues: 1 });
    const socket = path.join(tmp, 'irq-coalesced.sock');
    // 2 ms: far above a TCG guest's time between completions, so the difference is plain.
    const coalesced = await startVublkDaemon([
      '--blockdev', `driver=file,node-name=d,filename=${images[1]}`,
      '--export', `type=vhost-user-blk,id=co,node-name=d,addr.type=unix,addr.path=${socket},writable=on,x-vublk-coalescing.delay-us=2000`,
    ], [socket]);
    servers.push(coalesced);
    cleanups.push(async () => {
      assert.equal(await coalesced.stop(), 0, `vublk did not exit cleanly:\n${coalesced.output()}`);
    });
    const jobs = (dev: string): FioJob[] => [{ name: 'irq', filename: dev, offset: 0, size: 8 * MiB, cpu: 0, opts: ['bs=4k'] }];
    const result = await runGuest({
      disks: [{ socketPath: plain.socketPath, numQueues: 1 }, { socketPath: socket, numQueues: 1 }],
      cpus: 1, memoryMiB: 512, fio: true,
      files: { '/etc/vublk/plain.fio': fioJobFile(VERIFY_GLOBAL, jobs('/dev/vda')), '/etc/vublk/coalesced.fio': fioJobFile(VERIFY_GLOBAL, jobs('/dev/vdb')) },
      script: GUEST_PATH + `
echo "vda: $(basename $(readlink /sys/block/vda/device))"
echo "vdb: $(basename $(readlink /sys/block/vdb/device))"
${irqLines('irq-a-before', '$(basename $(readlink /sys/block/vda/device))')}
${runFio('plain.fio', 'plain')}
${irqLines('irq-a-after', '$(basename $(readlink /sys/block/vda/device))')}
${irqLines('irq-b-before', '$(basename $(readlink /sys/block/vdb/device))')}
${runFio('coalesced.fio', 'coalesced')}
${irqLines('irq-b-after', '$(basename $(readlink /sys/block/vdb/device))')}
`,
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assertFio(out, 'plain', jobs('/dev/vda'));
    assertFio(out, 'coalesced', jobs('/dev/vdb'));
    const interrupts = (disk: 'vda' | 'vdb', tag: string): number => {
      const device = field(out, new RegExp(`^${disk}: (virtio\\d+)$`, 'm'));
      const n = (irqCounts(out, `irq-${tag}-after`, device).get(0) ?? 0) - (irqCounts(out, `irq-${tag}-before`, device).get(0) ?? 0);
      assert.ok(n > 0, `no interrupts counted for ${disk} (${device}):\n${out}`);
      return n;
    };
    // 8 MiB of 4K writes, then as many verify reads: 4096 requests on each disk.
    const requests = 2 * (8 * MiB) / 4096;
    const plainPerIo = interrupts('vda', 'a') / requests;
    const coalescedPerIo = interrupts('vdb', 'b') / requests;
    console.log(`      interrupts per request: ${plainPerIo.toFixed(3)} without coalescing, ${coalescedPerIo.toFixed(3)} with 2 ms`);
    assert.ok(coalescedPerIo < plainPerIo / 2, `coalescing did not halve the interrupts (${coalescedPerIo} against ${plainPerIo})`);
    assertNoServerErrors(plain);
    assertNoServerErrors(coalesced);
    for (const s of [plain, coalesced]) await stopServer(s);
    for (const [i, image] of images.entries()) assertDiskHolds(fs.readFileSync(image), numbered(jobs(i === 0 ? '/dev/vda' : '/dev/vdb')), image);
  });

  // --- 2: a loop device as the backing store ------------------------------------------------

  it('block device: iothreads serve /dev/loopN; fio verifies, discard and write-zeroes reach the backing file', async function () {
    const backing = path.join(tmp, 'loop-backing.img');
    const size = 128 * MiB;
    writeFilledImage(backing, size);
    let fallocateFiles: Record<string, Buffer>;
    let dev: string;
    try {
      fallocateFiles = utilLinuxFallocate();
      dev = attachLoop(backing);
    } catch (e) {
      if (e instanceof Unavailable) skipBecause(this, e.message);
      throw e;
    }
    const server = await serve({ image: dev, socketPath: path.join(tmp, 'loop.sock'), numQueues: 2, args: ['--iothreads', '2'] }, true);
    const jobs: FioJob[] = [
      { name: 'j0', filename: '/dev/vda', offset: 0, size: 16 * MiB, cpu: 0, opts: ['bsrange=4k-64k'] },
      { name: 'j1', filename: '/dev/vda', offset: 32 * MiB, size: 16 * MiB, cpu: 1, opts: ['bsrange=4k-128k'] },
    ];
    const discard = { offset: 64 * MiB, length: 1 * MiB };
    const zeroes = { offset: 72 * MiB, length: 1 * MiB };
    const result = await runGuest({
      disks: [{ socketPath: server.socketPath, numQueues: 2 }], cpus: 2, memoryMiB: 512, fio: true,
      files: { '/etc/vublk/loop.fio': fioJobFile(VERIFY_GLOBAL, jobs), ...fallocateFiles },
      script: GUEST_PATH + `
echo "mq: $(ls /sys/block/vda/mq | tr '\\n' ' ')"
echo "sectors: $(cat /sys/block/vda/size)"
echo "discard_max_bytes: $(cat /sys/block/vda/queue/discard_max_bytes)"
echo "write_zeroes_max_bytes: $(cat /sys/block/vda/queue/write_zeroes_max_bytes)"
${runFio('loop.fio', 'loop')}
blkdiscard -o ${discard.offset} -l ${discard.length} /dev/vda; echo "discard-status: $?"
${GUEST_FALLOCATE} -z -o ${zeroes.offset} -l ${zeroes.length} /dev/vda; echo "zeroes-status: $?"
zero=$(head -c ${MiB} /dev/zero | md5sum)
for off in ${discard.offset} ${zeroes.offset}; do
  got=$(dd if=/dev/vda bs=${MiB} count=1 skip=$off iflag=direct,skip_bytes status=none | md5sum)
  if [ "$got" = "$zero" ]; then echo "zero $off: yes"; else echo "zero $off: no"; fi
done
echo "io-errors: $(dmesg | grep -c 'I/O error')"
`,
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assert.equal(field(out, /^mq: (.*)$/m).trim(), '0 1');
    assert.equal(Number(field(out, /^sectors: (\d+)$/m)), size / 512);
    assertFio(out, 'loop', jobs);
    assert.ok(Number(field(out, /^discard_max_bytes: (\d+)$/m)) > 0, 'guest sees no discard support');
    assert.ok(Number(field(out, /^write_zeroes_max_bytes: (\d+)$/m)) > 0, 'guest sees no write-zeroes support');
    assert.equal(field(out, /^discard-status: (\d+)$/m), '0', `blkdiscard failed:\n${out}`);
    assert.equal(field(out, /^zeroes-status: (\d+)$/m), '0', `fallocate -z failed:\n${out}`);
    assert.equal(field(out, new RegExp(`^zero ${discard.offset}: (\\w+)$`, 'm')), 'yes', 'guest reads zeros where it discarded');
    assert.equal(field(out, new RegExp(`^zero ${zeroes.offset}: (\\w+)$`, 'm')), 'yes', 'guest reads zeros where it wrote zeroes');
    assert.equal(field(out, /^io-errors: (\d+)$/m), '0', `guest kernel logged I/O errors:\n${result.output}`);
    await waitFor('the server to log the disconnect', () => server.findLogs('front-end disconnected').length > 0);
    const stops = queueStops(server);
    for (let q = 0; q < 2; q++) assert.equal(stops.get(q)?.iothread, `vublk-io${q}`, `queue ${q} on its own iothread:\n${server.output()}`);
    assertNoServerErrors(server);
    // Closing the device writes back its page cache (the export is cache=writeback).
    await stopServer(server);

    // Through the backing file: fio's blocks, zeros where the guest discarded or wrote
    // zeroes, and the original fill everywhere else.
    const data = fs.readFileSync(backing);
    const cleared = [discard, zeroes];
    assertDiskHolds(data, numbered(jobs), 'backing file', (start, length) => {
      let pos = start;
      for (const c of cleared.filter((r) => r.offset >= start && r.offset + r.length <= start + length)) {
        assertFill(data, pos, c.offset - pos, 'backing file');
        assertZero(data, 0, c.offset, c.length, 'backing file');
        pos = c.offset + c.length;
      }
      assertFill(data, pos, start + length - pos, 'backing file');
    });
    // The loop driver punches a hole in its backing file for BLKDISCARD.
    const extents = fileExtents(backing);
    if (extents === undefined) console.log('      (filefrag unavailable: not checking for holes)');
    else assert.deepEqual(overlapping(extents, discard.offset, discard.offset + discard.length), [], 'discarded range is still allocated in the backing file');
  });

  // --- 3: discard and write-zeroes on an image file ----------------------------------------

  it('discard and write-zeroes: ranges read back as zeros and become holes (or unwritten), neighbours untouched', async function () {
    // The hole and unwritten-extent checks below assume the usual filesystems (ext4, xfs) under os.tmpdir().
    const image = path.join(tmp, 'dwz.img');
    const size = 64 * MiB;
    writeFilledImage(image, size);
    let fallocateFiles: Record<string, Buffer>;
    try {
      fallocateFiles = utilLinuxFallocate();
    } catch (e) {
      if (e instanceof Unavailable) skipBecause(this, e.message);
      throw e;
    }
    const blocksBefore = fs.statSync(image).blocks;
    const fsBlock = fs.statSync(image).blksize;
    type Op = 'discard' | 'zero-nounmap' | 'zero-unmap';
    const ranges: Array<{ op: Op; offset: number; length: number }> = [
      { op: 'discard', offset: 1 * MiB, length: 1 * MiB },
      { op: 'discard', offset: 4 * MiB + 4 * KiB, length: 60 * KiB },
      // Not aligned to the filesystem block: the partial blocks are zeroed, the whole one freed.
      { op: 'discard', offset: 8 * MiB + 512, length: 7680 },
      { op: 'zero-nounmap', offset: 16 * MiB, length: 1 * MiB },
      { op: 'zero-nounmap', offset: 24 * MiB + 1536, length: 6656 },
      { op: 'zero-unmap', offset: 32 * MiB, length: 256 * KiB },
      { op: 'zero-unmap', offset: 40 * MiB + 3584, length: 8704 },
    ];
    const command = (r: { op: Op; offset: number; length: number }): string =>
      r.op === 'discard' ? `blkdiscard -o ${r.offset} -l ${r.length} /dev/vda`
        // -z: FALLOC_FL_ZERO_RANGE, WRITE_ZEROES with REQ_NOUNMAP (unmap flag clear).
        : r.op === 'zero-nounmap' ? `${GUEST_FALLOCATE} -z -o ${r.offset} -l ${r.length} /dev/vda`
          // -p: PUNCH_HOLE|KEEP_SIZE, WRITE_ZEROES with the unmap flag and no fallback to writing zeros.
          : `${GUEST_FALLOCATE} -p -o ${r.offset} -l ${r.length} /dev/vda`;
    const server = await serve({ image, socketPath: path.join(tmp, 'dwz.sock'), numQueues: 1 });
    const result = await runGuest({
      disks: [{ socketPath: server.socketPath, numQueues: 1 }], cpus: 1,
      files: fallocateFiles,
      script: GUEST_PATH + `
q=/sys/block/vda/queue
echo "discard: max=$(cat $q/discard_max_bytes) granularity=$(cat $q/discard_granularity)"
echo "write_zeroes_max_bytes: $(cat $q/write_zeroes_max_bytes)"
${ranges.map((r) => `${command(r)}; echo "status ${r.offset}: $?"`).join('\n')}
# Read each range back, past the page cache; busybox dd keeps O_DIRECT only with bs >= 4096.
${ranges.map((r) => {
  const lo = r.offset - (r.offset % 4096);
  const len = Math.ceil((r.offset + r.length) / 4096) * 4096 - lo;
  return `dd if=/dev/vda bs=${len} count=1 skip=${lo} iflag=direct,skip_bytes status=none | md5sum | sed 's/^/read ${r.offset}: /'`;
}).join('\n')}
echo "io-errors: $(dmesg | grep -c 'I/O error')"
`,
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assert.ok(Number(field(out, /^discard: max=(\d+)/m)) > 0, 'guest sees no discard support');
    assert.equal(field(out, /granularity=(\d+)$/m), '512', 'discard granularity is the logical block size');
    assert.ok(Number(field(out, /^write_zeroes_max_bytes: (\d+)$/m)) > 0, 'guest sees no write-zeroes support');
    for (const r of ranges) assert.equal(field(out, new RegExp(`^status ${r.offset}: (\\d+)$`, 'm')), '0', `${command(r)} failed:\n${out}`);
    assert.equal(field(out, /^io-errors: (\d+)$/m), '0', `guest kernel logged I/O errors:\n${result.output}`);
    assertNoServerErrors(server);
    await stopServer(server);

    // The image: zeros in every range, the fill everywhere else (so also just outside each range).
    const data = fs.readFileSync(image);
    let pos = 0;
    for (const r of ranges) {
      assertFill(data, pos, r.offset - pos, `image before the ${r.op} at ${r.offset}`);
      assertZero(data, 0, r.offset, r.length, `image, ${r.op} at ${r.offset}`);
      pos = r.offset + r.length;
    }
    assertFill(data, pos, size - pos, 'image after the last range');
    // What the guest read matches: zeros inside, the fill in the rest of the 4 KiB blocks.
    for (const r of ranges) {
      const lo = r.offset - (r.offset % 4096);
      const hi = Math.ceil((r.offset + r.length) / 4096) * 4096;
      const md5 = createHash('md5').update(data.subarray(lo, hi)).digest('hex');
      assert.equal(field(out, new RegExp(`^read ${r.offset}: (\\w+)`, 'm')), md5, `guest read of the ${r.op} at ${r.offset} differs from the image`);
    }

    // Allocation: discards and unmapping write-zeroes free their whole filesystem blocks;
    // write-zeroes without unmap leave no written data behind (unwritten extents or holes),
    // which writing zero pages (the guest's fallback when the device fails) would.
    let freed = 0;
    for (const r of ranges) {
      if (r.op !== 'zero-nounmap') {
        const [lo, hi] = innerBlocks(r.offset, r.length, fsBlock);
        freed += hi - lo;
      }
    }
    // Splitting the file's extents can cost ext4 an extent-tree block or two; allow 64 KiB of that.
    const blocksAfter = fs.statSync(image).blocks;
    const slack = (64 * KiB) / 512;
    assert.ok(blocksBefore - blocksAfter >= freed / 512 - slack,
      `st_blocks went from ${blocksBefore} to ${blocksAfter}, expected about ${freed / 512} fewer (at least ${freed / 512 - slack})`);
    const extents = fileExtents(image);
    if (extents === undefined) {
      console.log('      (filefrag unavailable: not checking holes and unwritten extents)');
      return;
    }
    for (const r of ranges) {
      const [lo, hi] = innerBlocks(r.offset, r.length, fsBlock);
      if (hi <= lo) continue;
      const inside = overlapping(extents, lo, hi);
      if (r.op === 'zero-nounmap') {
        assert.deepEqual(inside.filter((e) => !e.flags.includes('unwritten')), [], `write-zeroes at ${r.offset} left written extents (zeros written as data?)`);
      } else {
        assert.deepEqual(inside, [], `${r.op} at ${r.offset} left the range allocated`);
      }
    }
  });

  // --- 4: cache=none with guest buffers O_DIRECT cannot use as they are -----------------------

  it('cache=none on 4K-sector storage: 512-aligned guest buffers are bounced, data intact (block device and ext4 image)', async function () {
    // Both backing stores have 4 KiB logical blocks, so vublk takes 4096 as their O_DIRECT
    // alignment and must bounce the guest's buffers at page offset 512: vda is a loop
    // device with 4 KiB sectors, vdb an image on an ext4 filesystem made on another one.
    // Linux 6.18 itself accepts such buffers there (memory only needs dma_alignment,
    // 512), older kernels want every segment a multiple of the block size; so that the
    // test cannot pass without bouncing, it watches the bounce areas fill.
    const size = 64 * MiB;
    const backing = path.join(tmp, 'c4-backing.img');
    const fsImage = path.join(tmp, 'c4-fs.img');
    const mnt = path.join(tmp, 'c4-mnt');
    createSparse(backing, size);
    createSparse(fsImage, 96 * MiB);
    let devA: string;
    let devB: string;
    try {
      devA = attachLoop(backing, 4096);
      devB = attachLoop(fsImage, 4096);
      const mkfs = run('mkfs.ext4', ['-q', '-F', devB]);
      if (!mkfs.ok) throw new Unavailable(`cannot make an ext4 filesystem (${mkfs.why})`);
      fs.mkdirSync(mnt);
      const mount = run('mount', [devB, mnt]);
      if (!mount.ok) throw new Unavailable(`cannot mount (${mount.why})`);
      cleanups.push(() => {
        mustRun('umount', [mnt]);
      });
    } catch (e) {
      if (e instanceof Unavailable) skipBecause(this, e.message);
      throw e;
    }
    for (const dev of [devA, devB]) {
      assert.equal(fs.readFileSync(`/sys/block/${path.basename(dev)}/queue/logical_block_size`, 'utf8').trim(), '4096', `${dev} sector size`);
    }
    const image = path.join(mnt, 'disk.img');
    createSparse(image, size);
    const a = await serve({ image: devA, socketPath: path.join(tmp, 'c4a.sock'), numQueues: 2, args: ['--cache', 'none', '--iothreads', '2'] });
    const b = await serve({ image, socketPath: path.join(tmp, 'c4b.sock'), numQueues: 2, args: ['--cache', 'none', '--aio', 'threads'] });
    assert.ok(openFlags(a.proc.pid!, devA) & O_DIRECT, 'vublk opened the device without O_DIRECT');
    assert.ok(openFlags(b.proc.pid!, image) & O_DIRECT, 'vublk opened the image without O_DIRECT');

    // Phase "aligned": fio's usual page-aligned buffers, nothing to bounce. Phase
    // "misaligned": mem_align=512. bs=2m requests exceed a bounce slot (1 MiB) and go in chunks.
    const jobs = (phase: string, base: number): FioJob[] => [
      { name: `a_${phase}0`, filename: '/dev/vda', offset: base, size: 8 * MiB, cpu: 0, opts: ['bsrange=4k-64k'] },
      { name: `a_${phase}1`, filename: '/dev/vda', offset: base + 8 * MiB, size: 8 * MiB, cpu: 1, opts: ['bs=2m'] },
      { name: `b_${phase}0`, filename: '/dev/vdb', offset: base, size: 8 * MiB, cpu: 0, opts: ['bsrange=4k-64k'] },
      { name: `b_${phase}1`, filename: '/dev/vdb', offset: base + 8 * MiB, size: 8 * MiB, cpu: 1, opts: ['bs=2m'] },
    ];
    const aligned = jobs('al', 0);
    const misaligned = jobs('mis', 16 * MiB);
    const global = [...VERIFY_GLOBAL.filter((o) => !o.startsWith('iodepth')), 'iodepth=4'];
    // Snapshots of the bounce areas, taken while the guest sleeps after printing a marker.
    const rss: Record<string, Array<{ mappings: number; kib: number }>> = {};
    const result = await runGuest({
      disks: [{ socketPath: a.socketPath, numQueues: 2 }, { socketPath: b.socketPath, numQueues: 2 }],
      cpus: 2, memoryMiB: 512, fio: true,
      files: {
        '/etc/vublk/aligned.fio': fioJobFile(global, aligned),
        '/etc/vublk/misaligned.fio': fioJobFile([...global, 'mem_align=512'], misaligned),
      },
      log: (line) => {
        const m = /VUBLK-SNAP (\w+)\s*$/.exec(line);
        if (m) rss[m[1]] = [a, b].map((s) => bounceRss(s.proc.pid!));
      },
      script: GUEST_PATH + `
for d in vda vdb; do echo "lbs $d: $(cat /sys/block/$d/queue/logical_block_size)"; done
${runFio('aligned.fio', 'aligned')}
echo "VUBLK-SNAP aligned"; sleep 2
${runFio('misaligned.fio', 'misaligned')}
echo "VUBLK-SNAP misaligned"; sleep 2
echo "io-errors: $(dmesg | grep -c 'I/O error')"
`,
    });
    report(result);
    assertGuestSucceeded(result);
    const out = result.scriptOutput;
    assert.equal(field(out, /^lbs vda: (\d+)$/m), '4096');
    assert.equal(field(out, /^lbs vdb: (\d+)$/m), '4096');
    assertFio(out, 'aligned', aligned);
    assertFio(out, 'misaligned', misaligned);
    assert.equal(field(out, /^io-errors: (\d+)$/m), '0', `guest kernel logged I/O errors:\n${result.output}`);
    // The bounce areas exist (one per queue), stayed untouched while buffers were
    // aligned, and were used once they were not.
    assert.ok(rss.aligned && rss.misaligned, `missing bounce snapshots (${JSON.stringify(rss)})`);
    console.log(`      bounce areas resident (KiB): after aligned ${rss.aligned?.map((r) => r.kib)}, after misaligned ${rss.misaligned?.map((r) => r.kib)}`);
    ['vda (loop device)', 'vdb (ext4 image)'].forEach((name, i) => {
      assert.ok(rss.aligned[i].mappings >= 2, `${name}: no vublk-bounce mappings in the server (${JSON.stringify(rss.aligned[i])})`);
      assert.equal(rss.aligned[i].kib, 0, `${name}: aligned guest buffers were bounced`);
      assert.ok(rss.misaligned[i].kib > 0, `${name}: misaligned guest buffers were not bounced`);
    });
    for (const s of [a, b]) assertNoServerErrors(s);
    await stopServer(a);
    await stopServer(b);
    // vda's jobs come first in each job file, vdb's after them.
    assertDiskHolds(fs.readFileSync(backing), [...numbered(aligned).slice(0, 2), ...numbered(misaligned).slice(0, 2)], 'loop backing file');
    assertDiskHolds(fs.readFileSync(image), [...numbered(aligned).slice(2), ...numbered(misaligned).slice(2)], 'ext4 image');
  });
});
