// Crash recovery with the in-flight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD):
// our front-end keeps two queues full of writes while the server is killed
// with SIGKILL, restarted on the same socket and reconnected with the region
// the front-end kept, as QEMU does with reconnect=1. Every write acknowledged
// before a kill must be in the image at once; every write still outstanding
// must complete after the reconnect, exactly once (one used element per
// available entry, no completion for a head not outstanding), and the server
// must resubmit exactly the requests the region marks as in flight.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProtocolFeature, hasBit } from '../../protocol';
import { BlkFrontend, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { native } from '../../src/native/addon';
import { PackedDriverQueue } from '../../src/frontend/packed-driver-queue';
import { inflightBytesFor } from '../../src/virtq/make-queue';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublkWithArgs } from '../support/servers';
import { sleep, waitFor } from '../support/wait';

const BLOCK = 64 * 1024;
const BLOCKS = 512;
const IMAGE_SIZE = BLOCKS * BLOCK;
const QUEUES = 2;
const DEPTH = 48;
const ROUNDS = 4;

/** Block `b`, generation `gen`: 16-byte lines naming both, so a stale or torn block shows. Cheap to make: the load must outpace the server. */
function blockData(b: number, gen: number): Buffer {
  const line = Buffer.alloc(16);
  line.writeUInt32LE(b, 0);
  line.writeUInt32LE(gen, 4);
  line.writeUInt32LE(~b >>> 0, 8);
  line.writeUInt32LE(0x5eed5eed, 12);
  return Buffer.alloc(BLOCK, line);
}

/** Generation a block of the image holds (0: never written), or -1 if it is not one whole generation. */
function generationIn(image: Buffer, b: number): number {
  const at = b * BLOCK;
  const gen = image.readUInt32LE(at + 4);
  if (gen === 0 && image.subarray(at, at + BLOCK).every((x) => x === 0)) return 0;
  return image.subarray(at, at + BLOCK).equals(blockData(b, gen)) ? gen : -1;
}

/** Requests the region marks as in flight, per queue (read through a mapping of our own). */
function markedInRegion(fd: number, numQueues: number, queueSize: number, packed: boolean): number[] {
  const stride = inflightBytesFor(packed, queueSize);
  // The in-flight byte of each descriptor state: split 16 + 16 i, packed 32 + 32 i.
  const entry = packed ? 32 : 16;
  const size = numQueues * stride;
  const addr = native.mmap(fd, size, 0, false);
  const buf = native.arrayBuffer(addr, size);
  try {
    const bytes = new Uint8Array(buf);
    return Array.from({ length: numQueues }, (_, q) => {
      let n = 0;
      for (let i = 0; i < queueSize; i++) if (bytes[q * stride + entry + entry * i] !== 0) n++;
      return n;
    });
  } finally {
    native.detach(buf);
    native.munmap(addr, size);
  }
}

/** Keeps DEPTH writes outstanding per queue, one at a time per block, and remembers what was acknowledged. */
class WriteLoad {
  readonly latest = new Uint32Array(BLOCKS);
  readonly acked = new Uint32Array(BLOCKS);
  readonly busy = new Uint8Array(BLOCKS);
  submitted = 0;
  completed = 0;
  failures: string[] = [];
  private running = true;
  private next = 0;
  private readonly done: Array<Promise<void>> = [];

  constructor(private readonly fe: BlkFrontend) {
    for (let q = 0; q < QUEUES; q++) for (let i = 0; i < DEPTH; i++) this.done.push(this.worker(q));
  }

  private pick(): number {
    for (;;) {
      const b = this.next;
      this.next = (this.next + 1) % BLOCKS;
      if (this.busy[b] === 0) return b;
    }
  }

  private async worker(queue: number): Promise<void> {
    while (this.running) {
      const b = this.pick();
      const gen = this.latest[b] + 1;
      this.latest[b] = gen;
      this.busy[b] = 1;
      this.submitted++;
      try {
        const r = await this.fe.write(queue, (b * BLOCK) / 512, blockData(b, gen));
        if (r.status !== VIRTIO_BLK_S_OK) this.failures.push(`block ${b} gen ${gen}: status ${r.status}`);
        else this.acked[b] = gen;
      } catch (e) {
        this.failures.push(`block ${b} gen ${gen}: ${(e as Error).message}`);
      }
      this.busy[b] = 0;
      this.completed++;
    }
  }

  /** Stop issuing; resolves once every write issued has completed. */
  async finish(): Promise<void> {
    this.running = false;
    await Promise.all(this.done);
  }
}

describe('crash recovery with the in-flight region (SIGKILL under load)', function () {
  this.timeout(60000);
  let dir: string;
  let server: ServerProcess | undefined;
  let fe: BlkFrontend | undefined;

  const savedLevel = process.env.VUBLK_LOG_LEVEL;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-crash-'));
    // Debug logs say when each queue started (and where it resumed).
    process.env.VUBLK_LOG_LEVEL = 'debug';
  });
  after(async () => {
    if (savedLevel === undefined) delete process.env.VUBLK_LOG_LEVEL;
    else process.env.VUBLK_LOG_LEVEL = savedLevel;
    await fe?.disconnect();
    await server?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const packed of [false, true]) it(`loses no acknowledged write and completes every outstanding one exactly once, over repeated kills (${packed ? 'packed' : 'split'} rings)`, async () => {
    const image = path.join(dir, 'disk.img');
    const socketPath = path.join(dir, 'vublk.sock');
    createImage(image, IMAGE_SIZE);
    // Two iothreads, so each queue's region is written from its own thread. Write-through
    // (a data sync per write) keeps the server slower than our front-end, so that a
    // kill finds requests in flight; with write-back it is mostly idle, waiting for us.
    const args = ['serve', '--socket', socketPath, '--num-queues', String(QUEUES), '--iothreads', '2', '--cache', 'writethrough', image];
    const logs: string[] = [];
    // The previous variant's server and front-end, if any, go first.
    await fe?.disconnect();
    await server?.stop();
    server = await startVublkWithArgs(args, socketPath);
    fe = await BlkFrontend.connect({ socketPath, numQueues: QUEUES, queueSize: 128, inflight: true, survivesDisconnect: true, packed });
    assert.ok(hasBit(fe.protocolFeatures, ProtocolFeature.INFLIGHT_SHMFD), 'INFLIGHT_SHMFD negotiated');
    const region = fe.inflight;
    assert.ok(region !== undefined && region.fd >= 0, 'the back-end handed out an in-flight region');
    assert.deepEqual(region.area, { kind: 'inflight', mmapSize: 2 * (packed ? 4160 : 2112), mmapOffset: 0, numQueues: 2, queueSize: 128 });

    const load = new WriteLoad(fe);
    let marked = 0;
    let resubmitted = 0;
    for (let round = 0; round < ROUNDS; round++) {
      await sleep(150 + 100 * round);
      const s = server;
      const exited = new Promise((r) => s.proc.once('exit', r));
      s.proc.kill('SIGKILL');
      await exited;
      logs.push(s.output());
      const ackedAtKill = load.acked.slice();
      const busyAtKill = load.busy.slice();

      // Acknowledged means written: the image has it now, before any recovery.
      const img = fs.readFileSync(image);
      for (let b = 0; b < BLOCKS; b++) {
        if (busyAtKill[b] !== 0) continue;
        assert.equal(generationIn(img, b), ackedAtKill[b], `round ${round}: block ${b} lost an acknowledged write`);
      }
      const perQueue = markedInRegion(region.fd, QUEUES, 128, packed);
      marked += perQueue.reduce((a, n) => a + n, 0);

      server = await startVublkWithArgs(args, socketPath);
      await fe.reconnect();
      // The restarted server resubmits what the region marks, once per queue start.
      await waitFor('queues started', () => server!.findLogs('queue started').length === QUEUES, 10000);
      // A kill between publishing a batch and clearing its marks leaves marks on completed requests:
      // recovery clears those (fixedUpMarked) instead of resubmitting them.
      for (const r of server.findLogs('resubmitting requests left in flight')) resubmitted += Number(r.resubmit) + Number(r.fixedUpMarked);
      assert.deepEqual(server.findLogs(/in-flight region unusable/), [], server.output());
      console.log(`      round ${round}: ${load.completed}/${load.submitted} writes done, in flight at the kill per queue ${perQueue.join('+')}`);
    }
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${load.submitted - load.completed} writes never completed:\n${server!.output()}`)), 20000);
    });
    await Promise.race([load.finish(), stuck]).finally(() => clearTimeout(timer));
    assert.deepEqual(load.failures, []);
    assert.ok(marked > 0, 'no kill caught a request in flight: the test proved nothing');
    assert.equal(resubmitted, marked, 'the server resubmits exactly the marked requests (or clears those already completed)');
    for (const q of fe.queues) {
      await waitFor(`queue ${q.index} drained`, () => q.inFlight === 0);
      if (packed) assert.equal((q.ring as PackedDriverQueue).outstanding, 0, `queue ${q.index}: every chain came back`);
      else assert.equal(q.split.deviceUsedIdx, q.split.publishedAvailIdx, `queue ${q.index}: one used element per available entry`);
      assert.deepEqual(q.unknownUsed, [], `queue ${q.index}: completions for heads not outstanding`);
    }
    assert.equal(load.completed, load.submitted);
    const img = fs.readFileSync(image);
    for (let b = 0; b < BLOCKS; b++) assert.equal(generationIn(img, b), load.latest[b], `block ${b} after recovery`);
    assert.deepEqual(markedInRegion(region.fd, QUEUES, 128, packed), [0, 0], 'nothing left marked');
    logs.push(server.output());
    assert.doesNotMatch(logs.join('\n'), /"level":50/, 'no errors logged');
  });
});
