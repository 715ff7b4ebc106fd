// A hostile or broken front-end: every kind of bad message gets a clear answer
// (a REPLY_ACK failure, or the connection closed where the spec allows it), a
// log line, and leaks nothing, while the server keeps serving its other export.
// Then connect/disconnect cycles: nothing accumulates, and a second front-end
// on an attached export is refused with a log line.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  FrontendRequest as R, NEED_REPLY_FLAG, ProtocolFeature, VIRTIO_F_VERSION_1, bit, encodeMessage,
} from '../../protocol';
import { BlkFrontend, GuestRam, VIRTIO_BLK_S_OK, VhostUserClient, VhostUserError } from '../../src/frontend';
import { native } from '../../src/native/addon';
import { createImage } from '../support/disk-scenario';
import { ServerProcess, startVublkDaemon } from '../support/servers';
import { sleep, waitFor } from '../support/wait';

const MiB = 1 << 20;
const PROTO = bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.MQ) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS);

type Outcome = 'nack' | 'closed';

/** What the server did with a request: acked it (a failure of the test), refused it, or hung up. */
async function outcome(p: Promise<unknown>, client: VhostUserClient): Promise<Outcome | 'ok'> {
  try {
    await p;
  } catch (e) {
    if (e instanceof VhostUserError && e.code === 'nack') return 'nack';
    if (e instanceof VhostUserError && (e.code === 'closed' || e.code === 'protocol')) return 'closed';
    throw e;
  }
  // A message without a reply of its own: closed shortly after, or nothing.
  await sleep(50);
  return client.isClosed ? 'closed' : 'ok';
}

function serverFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** Mappings of front-end memory (memfds) in the server. */
function memfdMappings(pid: number): number {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:vublk-frontend')).length;
}

interface Case {
  name: string;
  /** Set up before the bad message: 'none' (just connected), 'owner' (negotiated, SET_OWNER), 'memory' (and a memory table). */
  stage: 'none' | 'owner' | 'memory';
  run(c: VhostUserClient, ram: GuestRam): Promise<unknown>;
  expect: Outcome;
  /** What the server's log says about it. */
  log: RegExp;
}

const efd = (): number => native.eventfd(0);
/** A header exactly as given (encodeHeader would normalise the version bits). */
function header(request: number, flags: number, size: number): Uint8Array {
  const out = new Uint8Array(12);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  return out;
}
const raw = (request: number, flags: number, body: Uint8Array): Uint8Array => {
  const out = new Uint8Array(12 + body.length);
  out.set(header(request, flags, body.length));
  out.set(body, 12);
  return out;
};

const CASES: Case[] = [
  // The codec refuses these: the message cannot be trusted, so the connection goes.
  { name: 'SET_FEATURES with a 4-byte body', stage: 'owner', expect: 'closed', log: /bad-size|size/,
    run: (c) => c.sendRaw(raw(R.SET_FEATURES, 1 | NEED_REPLY_FLAG, new Uint8Array(4)), [], { expectReply: true }) },
  { name: 'GET_FEATURES with an fd attached', stage: 'none', expect: 'closed', log: /fd/,
    run: (c) => c.sendRaw(encodeMessage(R.GET_FEATURES, 1, { kind: 'none' }), [efd()], { expectReply: true }) },
  { name: 'SET_VRING_KICK without an fd and without the no-fd flag', stage: 'owner', expect: 'closed', log: /fd/,
    run: (c) => c.sendRaw(encodeMessage(R.SET_VRING_KICK, 1 | NEED_REPLY_FLAG, { kind: 'vringFd', index: 0, noFd: false }), [], { expectReply: true }) },
  { name: 'SET_MEM_TABLE with two regions and one fd', stage: 'owner', expect: 'closed', log: /fd/,
    run: (c, ram) => c.sendRaw(encodeMessage(R.SET_MEM_TABLE, 1 | NEED_REPLY_FLAG, {
      kind: 'memoryTable', regions: [ram.region(), { ...ram.region(), guestPhysAddr: 1 << 30 }],
    }), [ram.fd], { expectReply: true }) },
  { name: 'a header with version 2', stage: 'none', expect: 'closed', log: /version/,
    run: (c) => c.sendRaw(raw(R.GET_FEATURES, 2, new Uint8Array(0)), [], { expectReply: true }) },
  { name: 'an unknown request number', stage: 'owner', expect: 'closed', log: /unknown|not supported/,
    run: (c) => c.sendRaw(raw(999, 1 | NEED_REPLY_FLAG, new Uint8Array(0)), [], { expectReply: true }) },
  { name: 'a payload size beyond any message', stage: 'owner', expect: 'closed', log: /size|large/,
    run: (c) => c.sendRaw(header(R.SET_CONFIG, 1 | NEED_REPLY_FLAG, 0x10000), [], { expectReply: true }) },
  // Well-formed but wrong: refused with REPLY_ACK, the connection stays.
  { name: 'SET_FEATURES with bits never offered', stage: 'owner', expect: 'nack', log: /never offered/,
    run: (c) => c.setFeatures(bit(VIRTIO_F_VERSION_1) | bit(55), { needReply: true }) },
  { name: 'SET_PROTOCOL_FEATURES with bits never offered', stage: 'owner', expect: 'nack', log: /never offered/,
    run: (c) => c.setProtocolFeatures(PROTO | bit(60), { needReply: true }) },
  { name: 'SET_VRING_NUM for queue 999', stage: 'owner', expect: 'nack', log: /queue index 999 out of range/,
    run: (c) => c.setVringNum(999, 128, { needReply: true }) },
  { name: 'SET_VRING_CALL for queue 200 (its fd is closed)', stage: 'owner', expect: 'nack', log: /queue index 200 out of range/,
    run: (c) => c.setVringCall(200, efd(), { needReply: true, transferFds: true }) },
  { name: 'overlapping memory regions', stage: 'owner', expect: 'nack', log: /overlap/,
    run: (c, ram) => c.setMemTable([ram.region(), { ...ram.region(), guestPhysAddr: 4096 }], [ram.fd, ram.fd], { needReply: true }) },
  { name: 'a region larger than its fd', stage: 'owner', expect: 'nack', log: /past the end of its fd/,
    run: (c, ram) => c.setMemTable([{ ...ram.region(), size: ram.size * 2 }], [ram.fd], { needReply: true }) },
  { name: 'a region at the top of the address space', stage: 'owner', expect: 'nack', log: /runs past 2\^53/,
    run: (c, ram) => c.setMemTable([{ ...ram.region(), guestPhysAddr: Number.MAX_SAFE_INTEGER - 4095 }], [ram.fd], { needReply: true }) },
  { name: 'a zero-size region', stage: 'owner', expect: 'nack', log: /size 0/,
    run: (c, ram) => c.addMemReg({ ...ram.region(), size: 0 }, ram.fd, { needReply: true }) },
  { name: 'ring addresses outside the memory table', stage: 'memory', expect: 'nack', log: /outside the memory table/,
    run: async (c, ram) => {
      await c.setVringNum(0, 64);
      await c.setVringAddr(0, { descUserAddr: ram.hostAddr + ram.size + 4096, availUserAddr: ram.hostAddr, usedUserAddr: ram.hostAddr + 8192 }, { needReply: true });
    } },
  { name: 'a kick before the ring has addresses', stage: 'memory', expect: 'nack', log: /kick before size and addresses/,
    run: (c) => c.setVringKick(0, efd(), { needReply: true, transferFds: true }) },
  { name: 'SET_VRING_ENABLE with 2', stage: 'owner', expect: 'nack', log: /neither 0 nor 1/,
    run: (c) => c.request(R.SET_VRING_ENABLE, { kind: 'vringState', index: 0, num: 2 }, 'none', { needReply: true }) },
  { name: 'SET_CONFIG outside the writable config field', stage: 'owner', expect: 'nack', log: /config write/,
    run: (c) => c.setConfig(0, new Uint8Array(8), 0, { needReply: true }) },
  { name: 'SET_MEM_TABLE before SET_OWNER', stage: 'none', expect: 'nack', log: /SET_MEM_TABLE before SET_OWNER/,
    run: async (c, ram) => {
      await c.setProtocolFeatures(PROTO);
      await c.setMemTable([ram.region()], [ram.fd], { needReply: true });
    } },
  { name: 'a refused request without REPLY_ACK', stage: 'owner', expect: 'closed', log: /SET_VRING_NUM failed|request refused/,
    run: (c) => c.setVringNum(999, 128, { needReply: false }) },
];

describe('hostile front-end', function () {
  this.timeout(60000);
  let dir: string;
  let server: ServerProcess;
  let bystander: BlkFrontend;
  let ram: GuestRam;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-hostile-fe-'));
    createImage(path.join(dir, 'a.img'), 16 * MiB);
    createImage(path.join(dir, 'b.img'), 16 * MiB);
    server = await startVublkDaemon([
      '--blockdev', 'driver=file,node-name=a,filename=a.img', '--blockdev', 'driver=file,node-name=b,filename=b.img',
      '--export', 'type=vhost-user-blk,id=ea,node-name=a,addr.type=unix,addr.path=a.sock,writable=on,num-queues=2',
      '--export', 'type=vhost-user-blk,id=eb,node-name=b,addr.type=unix,addr.path=b.sock,writable=on',
    ], ['a.sock', 'b.sock'], dir);
    bystander = await BlkFrontend.connect({ socketPath: path.join(dir, 'b.sock'), numQueues: 1 });
    ram = GuestRam.create(4 * MiB);
  });
  after(async () => {
    await bystander?.disconnect();
    ram?.close();
    if (server !== undefined) assert.equal(await server.stop(), 0, server.output());
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function connect(stage: Case['stage']): Promise<VhostUserClient> {
    // The previous hostile session may still be tearing down; the export takes one front-end at a time.
    for (let i = 0; ; i++) {
      const c = await VhostUserClient.connect(path.join(dir, 'a.sock'), { timeoutMs: 5000 });
      try {
        await c.getFeatures();
        if (stage !== 'none') {
          await c.setProtocolFeatures(PROTO);
          await c.setOwner();
        }
        if (stage === 'memory') await c.setMemTable([ram.region()], [ram.fd]);
        return c;
      } catch (e) {
        c.close();
        if (i > 50) throw e;
        await sleep(20);
      }
    }
  }

  it('answers every bad message as the spec allows, logs it, leaks nothing, and keeps serving', async () => {
    const pid = server.proc.pid!;
    let n = 0;
    const baselineFds = serverFds(pid);
    const baselineMaps = memfdMappings(pid);
    for (const k of CASES) {
      const before = server.logs().length;
      const c = await connect(k.stage);
      let got: Outcome | 'ok';
      try {
        got = await outcome(k.run(c, ram), c);
      } finally {
        c.close();
      }
      assert.equal(got, k.expect, `${k.name}: expected ${k.expect}, got ${got}`);
      await waitFor(`${k.name}: a log line`, () => server.logs().slice(before).some((r) => (r.level as number) >= 40 && k.log.test(JSON.stringify(r))), 3000)
        .catch(() => assert.fail(`${k.name}: no warning or error log matching ${k.log}:\n${JSON.stringify(server.logs().slice(before), null, 1)}`));
      // The other export never noticed.
      const data = new Uint8Array(4096).fill(++n);
      assert.equal((await bystander.write(0, n * 8, data)).status, VIRTIO_BLK_S_OK, k.name);
      assert.deepEqual((await bystander.read(0, n * 8, 4096)).data, data, k.name);
    }
    // Every fd received with a bad message was closed, every mapping of a refused table undone.
    await waitFor('fds back to the baseline', () => serverFds(pid) === baselineFds, 5000)
      .catch(() => assert.fail(`server fds ${serverFds(pid)} vs ${baselineFds} before`));
    assert.equal(memfdMappings(pid), baselineMaps);
    // And the attacked export still serves a well-behaved front-end.
    const fe = await BlkFrontend.connect({ socketPath: path.join(dir, 'a.sock'), numQueues: 2 });
    assert.equal((await fe.read(1, 0, 4096)).status, VIRTIO_BLK_S_OK);
    await fe.disconnect();
  });

  it('tears down cleanly over 100 connect/disconnect cycles, orderly and abrupt: no fds, mappings or threads accumulate', async () => {
    const pid = server.proc.pid!;
    const threads = (): number => fs.readdirSync(`/proc/${pid}/task`).length;
    // Settle what the previous test left, then take the baseline.
    await sleep(200);
    const fds0 = serverFds(pid);
    const maps0 = memfdMappings(pid);
    const threads0 = threads();
    for (let i = 0; i < 100; i++) {
      let fe: BlkFrontend | undefined;
      for (let attempt = 0; fe === undefined; attempt++) {
        try {
          fe = await BlkFrontend.connect({ socketPath: path.join(dir, 'a.sock'), numQueues: 2, backendChannel: i % 3 === 0 });
        } catch (e) {
          // The previous session may still be tearing down.
          if (attempt > 100) throw e;
          await sleep(10);
        }
      }
      const io = [fe.write(i % 2, (i % 64) * 8, new Uint8Array(4096).fill(i)), fe.read((i + 1) % 2, 0, 4096)];
      if (i % 2 === 0) {
        await Promise.all(io);
        await fe.disconnect();
      } else {
        // Hang up with requests in flight, without GET_VRING_BASE.
        fe.client.close();
        await Promise.allSettled(io);
        await fe.disconnect().catch(() => undefined);
      }
    }
    await waitFor('fds back to the baseline', () => serverFds(pid) === fds0, 10_000)
      .catch(() => assert.fail(`server fds ${serverFds(pid)} vs ${fds0} before`));
    await waitFor('mappings back to the baseline', () => memfdMappings(pid) === maps0, 5000)
      .catch(() => assert.fail(`memfd mappings ${memfdMappings(pid)} vs ${maps0} before`));
    assert.equal(threads(), threads0, 'no thread was left behind');
    assert.equal(server.findLogs(/internal error|teardown failed/).length, 0, 'no internal error');
  });

  it('refuses a second front-end while one is attached, with a log line', async () => {
    const first = await BlkFrontend.connect({ socketPath: path.join(dir, 'a.sock'), numQueues: 1 });
    try {
      const before = server.findLogs('refusing a second front-end while one is attached').length;
      await assert.rejects(BlkFrontend.connect({ socketPath: path.join(dir, 'a.sock'), numQueues: 1, timeoutMs: 5000 }), VhostUserError);
      await waitFor('the log line', () => server.findLogs('refusing a second front-end while one is attached').length === before + 1);
      assert.equal((await first.read(0, 0, 512)).status, VIRTIO_BLK_S_OK, 'the first one is undisturbed');
    } finally {
      await first.disconnect();
    }
  });
});
