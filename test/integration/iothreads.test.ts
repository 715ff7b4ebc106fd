// Iothreads as the data plane: the thread layout of the process, queues spread
// over iothreads, and GET_VRING_BASE under load.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlkFrontend, VIRTIO_BLK_S_OK } from '../../src/frontend';
import { DriverQueue } from '../../src/frontend/driver-queue';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublk } from '../support/servers';

/** Names of the threads of a process, from /proc. */
function threadNames(pid: number): string[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim());
}

/** CPU time (utime + stime, in clock ticks) of each named thread. */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.set(name, (out.get(name) ?? 0) + Number(fields[11]) + Number(fields[12]));
  }
  return out;
}

describe('iothreads', function () {
  this.timeout(60000);
  let dir: string;
  let server: ServerProcess | undefined;
  let fe: BlkFrontend | undefined;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-iot-')); });
  afterEach(async () => {
    await fe?.disconnect().catch(() => undefined);
    fe = undefined;
    if (server !== undefined) assert.equal(await server.stop(), 0, server.output());
    server = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function serve(args: string[], numQueues = 4): Promise<ServerProcess> {
    const image = path.join(dir, 'disk.img');
    createImage(image, 16 << 20);
    server = await startVublk({ image, socketPath: path.join(dir, 's.sock'), numQueues, args });
    return server;
  }

  it('runs exactly one named thread per iothread', async () => {
    for (const n of [1, 3]) {
      const s = await serve(['--iothreads', String(n)]);
      const io = threadNames(s.proc.pid!).filter((t) => t.startsWith('vublk-io')).sort();
      assert.deepEqual(io, Array.from({ length: n }, (_, i) => `vublk-io${i}`));
      assert.equal(await s.stop(), 0);
      server = undefined;
    }
  });

  it('pins iothreads to the CPUs given', async () => {
    const s = await serve(['--iothreads', '2', '--iothread-cpus', '0:1,1:0+1']);
    const allowed = new Map<string, string>();
    for (const tid of fs.readdirSync(`/proc/${s.proc.pid}/task`)) {
      const status = fs.readFileSync(`/proc/${s.proc.pid}/task/${tid}/status`, 'utf8');
      const name = /^Name:\s*(.*)$/m.exec(status)![1];
      allowed.set(name, /^Cpus_allowed_list:\s*(.*)$/m.exec(status)![1]);
    }
    assert.equal(allowed.get('vublk-io0'), '1');
    assert.equal(allowed.get('vublk-io1'), '0-1');
  });

  it('processes each queue on the iothread the queue map gives it', async () => {
    // Queues 0 and 1 on iothread 1, queues 2 and 3 on iothread 0.
    const s = await serve(['--iothreads', '2', '--queue-map', '0:1,1:1,2:0,3:0']);
    fe = await BlkFrontend.connect({ socketPath: s.socketPath, numQueues: 4 });
    const before = threadCpu(s.proc.pid!);
    const data = new Uint8Array(4096).fill(7);
    for (let round = 0; round < 600; round++) {
      const rs = await Promise.all(Array.from({ length: 32 }, (_, i) => fe!.write(i % 2, (i * 8) % 30000, data)));
      for (const r of rs) assert.equal(r.status, VIRTIO_BLK_S_OK);
    }
    const after = threadCpu(s.proc.pid!);
    const busy1 = after.get('vublk-io1')! - before.get('vublk-io1')!;
    const busy0 = after.get('vublk-io0')! - before.get('vublk-io0')!;
    assert.ok(busy1 >= 5 && busy0 * 4 < busy1, `iothread 1 should do the work: io0=${busy0} io1=${busy1} ticks`);
  });

  it('uses no CPU while idle, with polling enabled', async () => {
    const s = await serve(['--iothreads', '2', '--poll-max-ns', '32768'], 2);
    fe = await BlkFrontend.connect({ socketPath: s.socketPath, numQueues: 2 });
    // Busy first, so the poll windows have grown.
    for (let round = 0; round < 200; round++) {
      await Promise.all(Array.from({ length: 8 }, (_, i) => fe!.read(i % 2, i * 8, 4096)));
    }
    await new Promise((r) => setTimeout(r, 200));
    const before = threadCpu(s.proc.pid!);
    await new Promise((r) => setTimeout(r, 3000));
    const after = threadCpu(s.proc.pid!);
    let ticks = 0;
    for (const [name, t] of after) ticks += t - (before.get(name) ?? 0);
    // 1 % of a core over 3 s is 3 ticks of 10 ms.
    assert.ok(ticks < 3, `idle server used ${ticks} ticks in 3 s`);
  });

  it('answers GET_VRING_BASE only after every request in flight is completed and published', async () => {
    const s = await serve(['--iothreads', '2'], 2);
    fe = await BlkFrontend.connect({ socketPath: s.socketPath, numQueues: 2, queueSize: 256 });
    const data = new Uint8Array(65536).fill(9);
    for (let round = 0; round < 5; round++) {
      // Indirect chains: all 200 fit the 256-entry ring at once, so all are made available.
      const inflight = Array.from({ length: 200 }, (_, i) => fe!.write(0, i * 128, data, { indirect: true }));
      // Requests are made available at the end of this turn; let them reach the ring first.
      await new Promise((r) => setImmediate(r));
      const ring: DriverQueue = fe!.queue(0).split;
      const avail: number = ring.publishedAvailIdx;
      assert.equal(avail, 200 * (round + 1) % 65536 - 200 * round);
      const next: number = await fe!.client.getVringBase(0);
      // A drain takes 64 requests per turn, so the stop may come before the last ones
      // were taken: they stay in the ring for whoever starts it next, at `next`.
      assert.ok(next >= 64 && next <= avail, `next avail index ${next} of ${avail}`);
      assert.equal(ring.deviceUsedIdx, next, 'every request taken is in the used ring when the reply arrives');
      await fe.disconnect();
      const results = await Promise.allSettled(inflight);
      results.forEach((r, i) => {
        if (i < next) assert.ok(r.status === 'fulfilled' && r.value.status === VIRTIO_BLK_S_OK, `request ${i} completed`);
        else assert.equal(r.status, 'rejected', `request ${i} was never taken`);
      });
      fe = await BlkFrontend.connect({ socketPath: s.socketPath, numQueues: 2, queueSize: 256 });
    }
  });
});
