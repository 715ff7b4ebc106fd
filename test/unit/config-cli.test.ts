// The qemu-storage-daemon compatible command line and the JSON config file:
// lines from qemu-storage-daemon's documentation parse to the same
// configuration, and every mistake is one line that names the key.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkConfig } from '../../src/config/check';
import { parseDaemonArgs, readConfigFile } from '../../src/config/cli';
import { VublkConfig } from '../../src/config/model';
import { ConfigError } from '../../src/config/schema';
import { lifetimeOf } from '../../src/daemon/daemon';

function parse(line: string[]): VublkConfig {
  const { config } = parseDaemonArgs(line);
  checkConfig(config, 'configuration');
  return config;
}

function rejects(line: string[], pattern: RegExp): void {
  assert.throws(() => parse(line), (e: Error) => {
    assert.ok(e instanceof ConfigError, `not a ConfigError: ${e.stack}`);
    assert.match(e.message, pattern);
    assert.doesNotMatch(e.message, /\n/);
    return true;
  });
}

describe('qemu-storage-daemon command line', () => {
  it('parses the vhost-user-blk line of qemu-storage-daemon(1), raw over file', () => {
    const c = parse([
      '--blockdev', 'driver=file,node-name=file,filename=disk.img',
      '--blockdev', 'driver=raw,node-name=raw,file=file',
      '--export', 'type=vhost-user-blk,id=export,addr.type=unix,addr.path=vhost-user-blk.sock,node-name=raw',
    ]);
    assert.deepEqual(c.blockdevs, [
      { driver: 'file', 'node-name': 'file', filename: 'disk.img' },
      { driver: 'raw', 'node-name': 'raw', file: 'file' },
    ]);
    assert.deepEqual(c.exports, [{ type: 'vhost-user-blk', id: 'export', addr: { type: 'unix', path: 'vhost-user-blk.sock' }, 'node-name': 'raw' }]);
  });

  it('parses the --help synopsis forms: implied keys, fd addresses, typed values', () => {
    const c = parse([
      '--blockdev', 'file,node-name=disk,filename=a,,b.img,cache.direct=on,aio=native,read-only=off,discard=unmap',
      '--object', 'iothread,id=io0,poll-max-ns=0,x-vublk-cpu-affinity.0=1',
      '--export', 'vhost-user-blk,id=e0,node-name=disk,addr.type=fd,addr.str=3,writable=on,num-queues=4,logical-block-size=4k,iothread=io0',
      '--chardev', 'socket,path=qmp.sock,server=on,wait=off,id=char1',
      '--monitor', 'chardev=char1',
      '--pidfile', 'vublk.pid',
      '--daemonize',
    ]);
    assert.deepEqual(c.blockdevs[0], { driver: 'file', 'node-name': 'disk', filename: 'a,b.img', cache: { direct: true }, aio: 'native', 'read-only': false, discard: 'unmap' });
    assert.deepEqual(c.objects[0], { 'qom-type': 'iothread', id: 'io0', 'poll-max-ns': 0, 'x-vublk-cpu-affinity': [1] });
    assert.deepEqual(c.exports[0], {
      type: 'vhost-user-blk', id: 'e0', 'node-name': 'disk', addr: { type: 'fd', str: '3' }, writable: true, 'num-queues': 4, 'logical-block-size': 4096, iothread: 'io0',
    });
    assert.deepEqual(c.chardevs[0], { backend: 'socket', path: 'qmp.sock', server: true, wait: false, id: 'char1' });
    assert.deepEqual(c.monitors[0], { chardev: 'char1' });
    assert.equal(c.pidfile, 'vublk.pid');
    assert.equal(c.daemonize, true);
  });

  it('takes JSON option arguments, several exports, iothread lists and explicit queue mapping', () => {
    const c = parse([
      '--blockdev', '{"driver":"file","node-name":"a","filename":"a.img"}',
      '--blockdev', 'driver=host_device,node-name=b,filename=/dev/loop0',
      '--object', 'iothread,id=io0', '--object', 'iothread,id=io1',
      '--export', 'type=vhost-user-blk,id=ea,node-name=a,addr.type=unix,addr.path=a.sock,iothread.0=io0,iothread.1=io1,num-queues=4',
      '--export', '{"type":"vhost-user-blk","id":"eb","node-name":"b","addr":{"type":"unix","path":"b.sock"},"x-vublk-iothread-vq-mapping":[{"iothread":"io0","vqs":[1]},{"iothread":"io1","vqs":[0]}],"num-queues":2}',
    ]);
    assert.deepEqual(c.exports[0].iothread, ['io0', 'io1']);
    assert.deepEqual(c.exports[1]['x-vublk-iothread-vq-mapping'], [{ iothread: 'io0', vqs: [1] }, { iothread: 'io1', vqs: [0] }]);
  });

  it('takes the socket mode, owner and group of an export (names or numeric ids)', () => {
    const c = parse(['--blockdev', 'file,node-name=d,filename=x', '--export',
      'vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=s,x-vublk-socket-mode=0660,x-vublk-socket-owner=qemu,x-vublk-socket-group=107']);
    assert.deepEqual([c.exports[0]['x-vublk-socket-mode'], c.exports[0]['x-vublk-socket-owner'], c.exports[0]['x-vublk-socket-group']], ['0660', 'qemu', '107']);
  });

  it('takes the lifetime figures GET_LIFETIME answers with', () => {
    const c = parse(['--blockdev', 'file,node-name=d,filename=x', '--export',
      'vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=s,x-vublk-lifetime.pre-eol-info=urgent,x-vublk-lifetime.typ-b=10']);
    assert.deepEqual(c.exports[0]['x-vublk-lifetime'], { 'pre-eol-info': 'urgent', 'typ-b': 10 });
    assert.deepEqual(lifetimeOf(c.exports[0]['x-vublk-lifetime']), { preEolInfo: 3, estTypA: 0, estTypB: 10 });
    assert.equal(lifetimeOf(undefined), undefined);
  });

  it('accepts the legacy chardev flags "server" and "nowait"', () => {
    const c = parse(['--chardev', 'socket,id=m,path=m.sock,server,nowait', '--monitor', 'm']);
    assert.deepEqual(c.chardevs[0], { backend: 'socket', id: 'm', path: 'm.sock', server: true, wait: false });
  });

  for (const [line, pattern] of [
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,bogus=1'], /^--export: unknown key 'bogus'$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.paht=s'], /^--export: unknown key 'addr\.paht'$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix'], /^--export: missing key 'addr\.path'$/],
    [['--export', 'type=nbd,id=e,node-name=n'], /^--export: key 'type': expected "vhost-user-blk"$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,writable=maybe'], /^--export: key 'writable': expected 'on' or 'off', got 'maybe'$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,num-queues=lots'], /^--export: key 'num-queues': expected an integer, got 'lots'$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,logical-block-size=1000'], /^--export: key 'logical-block-size': expected one of 512/],
    [['--blockdev', 'driver=qcow2,node-name=q,file=f'], /^--blockdev: key 'driver': expected one of file, host_device, raw$/],
    [['--blockdev', 'driver=file,node-name=d'], /^--blockdev: missing key 'filename'$/],
    [['--blockdev', 'driver=file,node-name=d,filename=x,filename=y'], /^--blockdev: .*'filename' is set twice/],
    [['--blockdev', 'driver=file,node-name=d,filename=x,cache.no-flush=on'], /^--blockdev: unknown key 'cache\.no-flush'$/],
    [['--blockdev', '{"driver":"file",'], /^--blockdev: Invalid JSON option/],
    [['--object', 'secret,id=s,data=x'], /^--object: object type 'secret' is not supported by vublk \(only iothread\)$/],
    [['--object', 'iothread,id=io0,poll-max-ns=-1'], /^--object: key 'poll-max-ns': expected an integer, got '-1'$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,x-vublk-socket-owner=a:b'], /^--export: key 'x-vublk-socket-owner': must match pattern/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,x-vublk-socket-group='], /^--export: key 'x-vublk-socket-group': must NOT have fewer than 1 characters$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,x-vublk-lifetime.typ-a=12'], /^--export: key 'x-vublk-lifetime\.typ-a': /],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,x-vublk-lifetime.pre-eol-info=worn'], /^--export: key 'x-vublk-lifetime\.pre-eol-info': /],
    [['--export', 'type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=s,x-vublk-lifetime.typ-c=1'], /^--export: unknown key 'x-vublk-lifetime\.typ-c'$/],
    [['--nbd-server', 'addr.type=unix,addr.path=n.sock'], /^--nbd-server: not supported by vublk/],
    [['--bogus'], /^--bogus: unknown option$/],
    [['--blockdev'], /^--blockdev: missing argument$/],
    [['--blockdev', 'driver=file,node-name=d,filename=x', '--blockdev', 'driver=file,node-name=d,filename=y'], /^configuration: blockdevs\[1\]\.node-name: duplicate node-name 'd'$/],
    [['--object', 'iothread,id=io0', '--object', 'iothread,id=io0'], /^configuration: objects\[1\]\.id: duplicate id 'io0'$/],
    [['--export', 'type=vhost-user-blk,id=e,node-name=nope,addr.type=unix,addr.path=s'], /^configuration: exports\[0\]\.node-name: no block node named 'nope'$/],
    [['--blockdev', 'driver=file,node-name=d,filename=x', '--export', 'type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=s,iothread=io9'], /^configuration: exports\[0\]\.iothread: no iothread object with id 'io9'$/],
    [['--blockdev', 'driver=file,node-name=d,filename=x', '--export', 'vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=s', '--export', 'vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=t'], /^configuration: exports\[1\]\.id: duplicate id 'e'$/],
    [['--blockdev', 'driver=file,node-name=d,filename=x', '--export', 'vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=s', '--export', 'vhost-user-blk,id=f,node-name=d,addr.type=unix,addr.path=s'], /^configuration: exports\[1\]\.addr: socket 's' is used by another export$/],
    [['--monitor', 'chardev=none'], /^configuration: monitors\[0\]\.chardev: no chardev with id 'none'$/],
    [['--blockdev', 'driver=raw,node-name=r,file=later', '--blockdev', 'driver=file,node-name=later,filename=x'], /^configuration: blockdevs\[0\]\.file: no block node named 'later'/],
  ] as Array<[string[], RegExp]>) {
    it(`rejects ${line.join(' ')}`, () => rejects(line, pattern));
  }
});

describe('JSON config file', () => {
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-config-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  let files = 0;
  const write = (value: unknown): string => {
    const file = path.join(dir, `${++files}`, 'vublk.json');
    fs.mkdirSync(path.dirname(file));
    fs.writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value));
    return file;
  };
  const good = {
    objects: [{ 'qom-type': 'iothread', id: 'io0' }],
    blockdevs: [{ driver: 'file', 'node-name': 'disk', filename: 'disk.img', cache: { direct: true } }],
    exports: [{ type: 'vhost-user-blk', id: 'e0', 'node-name': 'disk', addr: { type: 'unix', path: 'e0.sock' }, writable: true, iothread: 'io0', 'num-queues': 2 }],
    chardevs: [{ backend: 'socket', id: 'qmp', path: 'qmp.sock', server: true, wait: false }],
    monitors: [{ chardev: 'qmp' }],
    metrics: '127.0.0.1:9100',
    'log-level': 'debug',
  };

  it('reads the same configuration the command line gives', () => {
    const fromFile = parse(['--config', write(good)]);
    const fromLine = parse([
      '--object', 'iothread,id=io0',
      '--blockdev', 'driver=file,node-name=disk,filename=disk.img,cache.direct=on',
      '--export', 'type=vhost-user-blk,id=e0,node-name=disk,addr.type=unix,addr.path=e0.sock,writable=on,iothread=io0,num-queues=2',
      '--chardev', 'socket,id=qmp,path=qmp.sock,server=on,wait=off', '--monitor', 'chardev=qmp',
      '--metrics', '127.0.0.1:9100', '--log-level', 'debug',
    ]);
    assert.deepEqual(fromFile, fromLine);
  });

  it('names the path inside the file for every mistake', () => {
    const bad = (mutate: (c: typeof good) => void): string => {
      const c = JSON.parse(JSON.stringify(good)) as typeof good;
      mutate(c);
      return write(c);
    };
    const cases: Array<[string, RegExp]> = [
      [bad((c) => { (c.exports[0].addr as Record<string, unknown>).port = 1; }), /vublk\.json: unknown key 'exports\[0\]\.addr\.port'$/],
      [bad((c) => { (c.exports[0] as Record<string, unknown>)['num-queues'] = '2'; }), /vublk\.json: key 'exports\[0\]\.num-queues': must be integer$/],
      [bad((c) => { delete (c.blockdevs[0] as Record<string, unknown>).filename; }), /vublk\.json: missing key 'blockdevs\[0\]\.filename'$/],
      [bad((c) => { (c as Record<string, unknown>).exprots = []; }), /vublk\.json: unknown key 'exprots'$/],
      [bad((c) => { c.objects[0].id = '0bad'; }), /vublk\.json: key 'objects\[0\]\.id': must match pattern/],
      [write('{"exports": ['), /vublk\.json: not valid JSON/],
    ];
    for (const [file, pattern] of cases) {
      assert.throws(() => readConfigFile(file), (e: Error) => e instanceof ConfigError && pattern.test(e.message) && !e.message.includes('\n'), file);
    }
    assert.throws(() => parse(['--config', path.join(dir, 'missing.json')]), /--config .*missing\.json: no such file/);
  });

  it('checks references across the file', () => {
    const file = write({ ...good, exports: [{ ...good.exports[0], iothread: 'io7' }] });
    assert.throws(() => parse(['--config', file]), /exports\[0\]\.iothread: no iothread object with id 'io7'/);
  });
});
