import { strict as assert } from 'node:assert';
import { KeyvalError, parseKeyval, parseOptionArgument } from '../../src/config/keyval';

/** Asserts that parsing fails with a KeyvalError whose one-line message matches `message`. */
function rejects(text: string, message: RegExp, impliedKey?: string): void {
  assert.throws(
    () => parseKeyval(text, impliedKey),
    (err: unknown) => {
      assert.ok(err instanceof KeyvalError, `not a KeyvalError: ${String(err)}`);
      assert.equal(err.name, 'KeyvalError');
      assert.match(err.message, message);
      assert.ok(!err.message.includes('\n'), 'message is one line');
      return true;
    },
  );
}

describe('keyval: qemu-storage-daemon man page examples', () => {
  it('--blockdev driver=file,node-name=disk,filename=disk.img', () => {
    assert.deepEqual(parseKeyval('driver=file,node-name=disk,filename=disk.img', 'driver'), {
      driver: 'file',
      'node-name': 'disk',
      filename: 'disk.img',
    });
  });

  it('--blockdev with the driver as implied key', () => {
    assert.deepEqual(parseKeyval('qcow2,node-name=qcow2,file=file', 'driver'), {
      driver: 'qcow2',
      'node-name': 'qcow2',
      file: 'file',
    });
  });

  it('--export type=vhost-user-blk with a nested addr', () => {
    const text = 'type=vhost-user-blk,id=export,addr.type=unix,addr.path=vhost-user-blk.sock,node-name=qcow2';
    assert.deepEqual(parseKeyval(text, 'type'), {
      type: 'vhost-user-blk',
      id: 'export',
      addr: { type: 'unix', path: 'vhost-user-blk.sock' },
      'node-name': 'qcow2',
    });
  });

  it('--chardev socket,... with implied backend', () => {
    assert.deepEqual(parseKeyval('socket,path=qmp.sock,server=on,wait=off,id=char1', 'backend'), {
      backend: 'socket',
      path: 'qmp.sock',
      server: 'on',
      wait: 'off',
      id: 'char1',
    });
  });

  it('--monitor chardev=char1 and its short form char1', () => {
    assert.deepEqual(parseKeyval('chardev=char1', 'chardev'), { chardev: 'char1' });
    assert.deepEqual(parseKeyval('char1', 'chardev'), { chardev: 'char1' });
  });

  it('--object iothread,id=io0 with implied qom-type', () => {
    assert.deepEqual(parseKeyval('iothread,id=io0', 'qom-type'), { 'qom-type': 'iothread', id: 'io0' });
  });
});

describe('keyval: values', () => {
  it('",," is a literal comma', () => {
    assert.deepEqual(parseKeyval('driver=file,filename=a,,b,,,,c.img,node-name=n'), {
      driver: 'file',
      filename: 'a,b,,c.img',
      'node-name': 'n',
    });
    assert.deepEqual(parseKeyval('filename=a,,'), { filename: 'a,' });
    assert.deepEqual(parseKeyval('filename=a,,,'), { filename: 'a,' });
    // What looks like a next pair after ',,' is still the value.
    assert.deepEqual(parseKeyval('a=1,,b=2'), { a: '1,b=2' });
    assert.deepEqual(parseKeyval('a=1,,,b=2'), { a: '1,', b: '2' });
  });

  it("'=' and other characters in a value are literal; a value may be empty", () => {
    assert.deepEqual(parseKeyval('a=b=c,path=/tmp/x y.sock,e='), { a: 'b=c', path: '/tmp/x y.sock', e: '' });
  });

  it('an empty text gives an empty object, with or without implied key', () => {
    assert.deepEqual(parseKeyval(''), {});
    assert.deepEqual(parseKeyval('', 'driver'), {});
  });

  it('one trailing comma is accepted, as in QEMU', () => {
    assert.deepEqual(parseKeyval('a=1,'), { a: '1' });
    assert.deepEqual(parseKeyval('file,', 'driver'), { driver: 'file' });
  });

  it('names like "constructor" are ordinary keys', () => {
    const v = parseKeyval('constructor=1,toString=2');
    assert.deepEqual(v, { constructor: '1', toString: '2' });
    assert.equal(Object.getPrototypeOf(v), Object.prototype);
  });
});

describe('keyval: nested keys and lists', () => {
  it('dotted keys make nested objects', () => {
    assert.deepEqual(parseKeyval('a.b=1,a.c=2,x.y.z=3'), { a: { b: '1', c: '2' }, x: { y: { z: '3' } } });
  });

  it('decimal indices make lists', () => {
    assert.deepEqual(parseKeyval('iothread.0=a,iothread.1=b'), { iothread: ['a', 'b'] });
  });

  it('indices may come in any order', () => {
    assert.deepEqual(parseKeyval('l.2=c,l.0=a,l.1=b'), { l: ['a', 'b', 'c'] });
  });

  it('lists of objects holding lists', () => {
    assert.deepEqual(parseKeyval('m.0.iothread=a,m.0.vqs.0=0,m.0.vqs.1=2,m.1.iothread=b,m.1.vqs.0=1'), {
      m: [
        { iothread: 'a', vqs: ['0', '2'] },
        { iothread: 'b', vqs: ['1'] },
      ],
    });
  });

  it('lists of lists', () => {
    assert.deepEqual(parseKeyval('a.0.0=x,a.0.1=y,a.1.0=z'), { a: [['x', 'y'], ['z']] });
  });

  it('leading zeros name the same index', () => {
    assert.deepEqual(parseKeyval('l.00=a,l.01=b'), { l: ['a', 'b'] });
  });
});

describe('keyval: errors', () => {
  it('a list index gap names the missing key', () => {
    rejects('a.1=x', /^Parameter 'a\.0' missing/);
    rejects('a.0=x,a.2=y', /^Parameter 'a\.1' missing/);
    rejects('m.0.vqs.0=0,m.0.vqs.2=1', /^Parameter 'm\.0\.vqs\.1' missing/);
  });

  it('index and name keys mixed at one level', () => {
    rejects('a.0=x,a.b=y', /^Parameter 'a' used inconsistently: list indices mixed with member names$/);
    rejects('a.b=y,a.0=x', /^Parameter 'a' used inconsistently/);
  });

  it('a top-level key cannot be an index', () => {
    rejects('0=x', /^Invalid parameter '0': a top-level key can't be a list index$/);
  });

  it('bare value with implied key anywhere but first', () => {
    rejects('id=x,file', /^Expected '=' after parameter 'file'$/, 'driver');
    rejects('file,qcow2', /^Expected '=' after parameter 'qcow2'$/, 'driver');
  });

  it('bare value without implied key', () => {
    rejects('file', /^Expected '=' after parameter 'file'$/);
    rejects('a=1,b', /^Expected '=' after parameter 'b'$/);
  });

  it('an implied-key value cannot use ",," (QEMU: it cannot contain commas)', () => {
    rejects('a,,b', /^Invalid parameter '': empty key$/, 'driver');
  });

  it('a key set twice', () => {
    rejects('a=1,a=2', /^Parameter 'a' is set twice$/);
    rejects('a.b=1,c=0,a.b=2', /^Parameter 'a\.b' is set twice$/);
    rejects('l.0=1,l.00=2', /^Parameter 'l\.00' is set twice$/);
    rejects('file,driver=raw', /^Parameter 'driver' is set twice$/, 'driver');
  });

  it('a key both a value and an object', () => {
    rejects('a=1,a.b=2', /^Parameter 'a' used inconsistently: both a value and an object$/);
    rejects('a.b=2,a=1', /^Parameter 'a' used inconsistently: both a value and an object$/);
    rejects('a.b.c=1,a.b.c.d=2', /^Parameter 'a\.b\.c' used inconsistently/);
    rejects('l.0=x,l.0.y=z', /^Parameter 'l\.0' used inconsistently/);
  });

  it('empty keys and empty fragments', () => {
    rejects('=x', /^Invalid parameter '': empty key$/);
    rejects(',', /^Invalid parameter '': empty key$/);
    rejects(',a=1', /^Invalid parameter '': empty key$/, 'driver');
    rejects('a..b=1', /^Invalid parameter 'a\.\.b': empty key fragment$/);
    rejects('a.=1', /^Invalid parameter 'a\.': empty key fragment$/);
    rejects('.a=1', /^Invalid parameter '\.a': empty key fragment$/);
  });

  it('bad key fragments', () => {
    rejects('1a=x', /^Invalid parameter '1a': key fragment '1a' is neither a name nor a list index$/);
    rejects('a.b c=x', /^Invalid parameter 'a\.b c': key fragment 'b c'/);
    rejects('_x=1', /^Invalid parameter '_x'/);
    rejects('a.-1=1', /^Invalid parameter 'a\.-1'/);
    rejects(`${'k'.repeat(128)}=1`, /key fragment longer than 127 characters$/);
    assert.deepEqual(parseKeyval(`${'k'.repeat(127)}=1`), { ['k'.repeat(127)]: '1' });
  });
});

describe('keyval: JSON option arguments', () => {
  it('a leading "{" selects JSON, keeping JSON types', () => {
    const text = '{"driver":"file","node-name":"disk","filename":"disk.img","read-only":true,"n":[1,{"x":null}]}';
    assert.deepEqual(parseOptionArgument(text, 'driver'), {
      driver: 'file',
      'node-name': 'disk',
      filename: 'disk.img',
      'read-only': true,
      n: [1, { x: null }],
    });
    assert.deepEqual(parseOptionArgument('  \n{"qom-type":"iothread","id":"io0"}', 'qom-type'), {
      'qom-type': 'iothread',
      id: 'io0',
    });
  });

  it('anything else is keyval', () => {
    assert.deepEqual(parseOptionArgument('iothread,id=io0', 'qom-type'), { 'qom-type': 'iothread', id: 'io0' });
    assert.deepEqual(parseOptionArgument(''), {});
  });

  it('bad JSON is a one-line KeyvalError', () => {
    for (const text of ['{"driver":', '{driver: "file"}', '{"a":1}\n{"b":2}', '{"a":1} x']) {
      assert.throws(
        () => parseOptionArgument(text),
        (err: unknown) =>
          err instanceof KeyvalError && /^Invalid JSON option: /.test(err.message) && !err.message.includes('\n'),
      );
    }
  });

  it('keyval errors still apply to non-JSON text', () => {
    assert.throws(() => parseOptionArgument('[1]'), KeyvalError);
    assert.throws(() => parseOptionArgument('a=1,a=2'), /set twice/);
  });
});
