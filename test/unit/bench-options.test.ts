import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isDiskFs, pickDiskDir } from '../../src/bench/images';
import { displayCommand, serverArgs, serverDef, workloads } from '../../src/bench/matrix';
import { Invocation, Plan, estimateSeconds, parseArgs, serversFor } from '../../src/bench/options';
import { gitHead } from '../../src/bench/versions';

function plan(argv: string[]): Plan {
  const inv: Invocation = parseArgs(argv, 'make bench');
  assert.equal(inv.kind, 'run');
  return (inv as { kind: 'run'; plan: Plan }).plan;
}

describe('bench: options', () => {
  it('the full matrix by default, and it fits in half an hour', () => {
    const p = plan([]);
    assert.deepEqual(p.layers, ['driver', 'scaling', 'coalescing', 'limits', 'guest', 'host']);
    assert.deepEqual(p.storages, ['tmpfs', 'disk', 'disk-direct']);
    assert.deepEqual(p.servers, ['vublk', 'qsd', 'qsd-io_uring']);
    assert.deepEqual([p.ops, p.qds, p.queues], [['randread', 'randwrite'], [1, 32, 128], [1, 4]]);
    assert.equal(p.rounds, 2);
    assert.equal(p.queueSize, 512, 'QD 128 in 3-descriptor chains');
    const e = estimateSeconds(p);
    assert.ok(e.total > 15 * 60 && e.total < 30 * 60, `full run estimated at ${e.total} s`);
    assert.ok(Math.abs(e.total - (e.images + e.driver + e.host + e.guest)) < 1e-6);
  });

  it('--quick shortens everything, explicit durations win wherever they stand', () => {
    const q = plan(['--duration', '2', '--quick']);
    assert.equal(q.rounds, 1);
    assert.equal(q.driver.durationSec, 2);
    assert.equal(q.driver.warmupSec, 0.5);
    assert.ok(estimateSeconds(q).total < estimateSeconds(plan([])).total / 3);
    assert.equal(plan(['--quick', '--rounds', '3']).rounds, 3);
  });

  it('subsets: layers, storage, servers, workloads', () => {
    const p = plan(['--layers', 'driver', '--storage', 'tmpfs', '--ops', 'randread', '--qd', '1,32', '--queues', '1', '--servers', 'vublk,qsd']);
    assert.deepEqual([p.layers, p.storages, p.servers, p.ops, p.qds, p.queues], [['driver'], ['tmpfs'], ['vublk', 'qsd'], ['randread'], [1, 32], [1]]);
    assert.equal(p.queueSize, 128);
    const e = estimateSeconds(p);
    assert.equal(e.guest + e.host + e.images, 0);
  });

  it('refuses what it cannot run', () => {
    assert.throws(() => parseArgs(['--storage', 'nvme'], ''), /--storage: unknown 'nvme'/);
    assert.throws(() => parseArgs(['--servers', 'qsd'], ''), /keep it/);
    assert.throws(() => parseArgs(['--servers', 'vublk'], ''), /at least one qsd/);
    assert.throws(() => parseArgs(['--qd', '400'], ''), /at most 341/);
    assert.throws(() => parseArgs(['--rounds'], ''), /missing value/);
    assert.throws(() => parseArgs(['--duration', 'x'], ''), /expected a number/);
    assert.throws(() => parseArgs(['--frobnicate', '1'], ''), /unknown option/);
  });

  it('--render, --help and --dry-run', () => {
    assert.deepEqual(parseArgs(['--render'], ''), { kind: 'render', json: 'docs/benchmarks.json' });
    assert.deepEqual(parseArgs(['--render', 'x.json'], ''), { kind: 'render', json: 'x.json' });
    assert.deepEqual(parseArgs(['--help'], ''), { kind: 'help' });
    assert.equal(plan(['--dry-run']).dryRun, true);
  });

  it('aio=native runs only where cache.direct=on', () => {
    const p = plan(['--servers', 'vublk,qsd,qsd-io_uring,qsd-native']);
    assert.deepEqual(serversFor(p, 'tmpfs'), ['vublk', 'qsd', 'qsd-io_uring']);
    assert.deepEqual(serversFor(p, 'disk-direct'), ['vublk', 'qsd', 'qsd-io_uring', 'qsd-native']);
    assert.ok(estimateSeconds(p).driver > estimateSeconds(plan([])).driver);
  });
});

describe('bench: the matrix', () => {
  it('vublk and qsd get the same arguments; qsd\'s engines differ only in aio=', () => {
    const a = serverArgs(serverDef('vublk'), '/i.img', true, 4, '/s.sock');
    assert.deepEqual(a, serverArgs(serverDef('qsd'), '/i.img', true, 4, '/s.sock'));
    assert.deepEqual(a, [
      '--blockdev', 'driver=file,node-name=disk,filename=/i.img,cache.direct=on',
      '--object', 'iothread,id=io0',
      '--export', 'type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path=/s.sock,writable=on,num-queues=4,iothread=io0',
    ]);
    assert.equal(serverArgs(serverDef('qsd-io_uring'), '/i.img', false, 1, '/s')[1], 'driver=file,node-name=disk,filename=/i.img,cache.direct=off,aio=io_uring');
    assert.match(displayCommand(serverDef('vublk'), '/i.img', false, '$QUEUES', '$SOCKET'), /^bin\/vublk --blockdev .*num-queues=\$QUEUES,/);
    assert.match(displayCommand(serverDef('qsd-native'), '/i.img', true, 1, '$SOCKET'), /^qemu-storage-daemon .*cache\.direct=on,aio=native /);
  });

  it('workloads in report order: op, queues, queue depth', () => {
    assert.deepEqual(workloads(['randread'], [1, 32], [1, 4]).map((w) => `${w.queues}/${w.qd}`), ['1/1', '1/32', '4/1', '4/32']);
  });
});

describe('bench: where the images go', () => {
  it('the first candidate on a disk-backed filesystem', () => {
    const tmpfs = { source: 'tmpfs', fstype: 'tmpfs', target: '/tmp' };
    const ext4 = { source: '/dev/vda', fstype: 'ext4', target: '/' };
    assert.deepEqual(pickDiskDir([{ dir: '/var/tmp', mount: tmpfs }, { dir: '/repo', mount: ext4 }]), { dir: '/repo', mount: ext4 });
    assert.equal(pickDiskDir([{ dir: '/var/tmp' }, { dir: '/x', mount: { ...tmpfs, fstype: 'overlay' } }]), undefined);
    assert.ok(isDiskFs('xfs') && isDiskFs('btrfs') && !isDiskFs('ramfs') && !isDiskFs('fuse.sshfs'));
  });
});

describe('bench: the commit without git', () => {
  let dir = '';
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-githead-')); });
  afterEach(() => { fs.rmSync(dir, { recursive: true, force: true }); });

  it('follows a worktree\'s .git file to the common directory\'s packed refs', () => {
    const common = path.join(dir, 'main', '.git');
    const wt = path.join(common, 'worktrees', 'wt');
    fs.mkdirSync(wt, { recursive: true });
    fs.mkdirSync(path.join(dir, 'wt'));
    fs.writeFileSync(path.join(dir, 'wt', '.git'), `gitdir: ${wt}\n`);
    fs.writeFileSync(path.join(wt, 'HEAD'), 'ref: refs/heads/bench\n');
    fs.writeFileSync(path.join(wt, 'commondir'), '../..\n');
    fs.writeFileSync(path.join(common, 'packed-refs'), '# pack-refs\n0123456789abcdef0123456789abcdef01234567 refs/heads/bench\n');
    assert.equal(gitHead(path.join(dir, 'wt')), '0123456');
    fs.mkdirSync(path.join(common, 'refs', 'heads'), { recursive: true });
    fs.writeFileSync(path.join(common, 'refs', 'heads', 'bench'), 'fedcba9876543210fedcba9876543210fedcba98\n');
    assert.equal(gitHead(path.join(dir, 'wt')), 'fedcba9');
  });

  it('a detached HEAD, and no repository at all', () => {
    fs.mkdirSync(path.join(dir, '.git'));
    fs.writeFileSync(path.join(dir, '.git', 'HEAD'), 'abcdef0123456789abcdef0123456789abcdef01\n');
    assert.equal(gitHead(dir), 'abcdef0');
    assert.equal(gitHead(path.join(dir, 'nowhere')), 'unknown');
  });
});
