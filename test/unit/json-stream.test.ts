import { strict as assert } from 'node:assert';
import { JsonStreamSplitter, type JsonStreamItem } from '../../src/qmp/json-stream';

/** Feeds `chunks` in order and collects every item. */
function feed(splitter: JsonStreamSplitter, ...chunks: (Buffer | string)[]): JsonStreamItem[] {
  return chunks.flatMap((c) => splitter.push(c));
}

function values(items: JsonStreamItem[]): unknown[] {
  return items.map((it) => {
    assert.ok('value' in it, `expected a value, got ${JSON.stringify(it)}`);
    return it.value;
  });
}

function isError(it: JsonStreamItem | undefined, message?: RegExp): void {
  assert.ok(it && 'error' in it, `expected an error, got ${JSON.stringify(it)}`);
  assert.ok(!it.error.includes('\n'), 'one-line error');
  if (message) assert.match(it.error, message);
}

const CAPS = { execute: 'qmp_capabilities' };
const ADD = {
  execute: 'blockdev-add',
  arguments: { driver: 'file', 'node-name': 'disk', filename: 'a "{[disk]}" \\ b.img' },
};

describe('json-stream: splitting', () => {
  it('several objects in one chunk, with and without separators', () => {
    const text = `${JSON.stringify(CAPS)}${JSON.stringify(ADD)}\n  ${JSON.stringify(CAPS)}\r\n\t[1,2]`;
    assert.deepEqual(values(feed(new JsonStreamSplitter(), text)), [CAPS, ADD, CAPS, [1, 2]]);
  });

  it('whitespace alone produces nothing', () => {
    assert.deepEqual(feed(new JsonStreamSplitter(), ' \n\r\t', '\n'), []);
  });

  it('one object split at every byte offset, and fed byte by byte', () => {
    const bytes = Buffer.from(`${JSON.stringify(ADD)} ${JSON.stringify(CAPS)}`);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const s = new JsonStreamSplitter();
      const items = feed(s, bytes.subarray(0, cut), bytes.subarray(cut));
      assert.deepEqual(values(items), [ADD, CAPS], `cut at ${cut}`);
    }
    const s = new JsonStreamSplitter();
    const items: JsonStreamItem[] = [];
    for (let i = 0; i < bytes.length; i++) items.push(...s.push(bytes.subarray(i, i + 1)));
    assert.deepEqual(values(items), [ADD, CAPS]);
  });

  it('an object is reported by the push that completes it', () => {
    const s = new JsonStreamSplitter();
    assert.deepEqual(s.push('{"execute":'), []);
    assert.deepEqual(s.push(' "qmp_capabilities"'), []);
    assert.deepEqual(s.push('}{"a"'), [{ value: CAPS }]);
    assert.deepEqual(s.push(':1}'), [{ value: { a: 1 } }]);
  });

  it('strings containing braces, brackets, escaped quotes and backslashes', () => {
    const tricky = [
      { s: '}' },
      { s: '{{[[' },
      { s: 'say "}" now' },
      { s: 'back\\' },
      { s: '\\"}' },
      { '}': ']' },
    ];
    const text = tricky.map((v) => JSON.stringify(v)).join('');
    assert.deepEqual(values(feed(new JsonStreamSplitter(), text)), tricky);
  });

  it('the splitter keeps no reference to the caller\'s buffer', () => {
    const s = new JsonStreamSplitter();
    const buf = Buffer.from('{"a":"xy');
    assert.deepEqual(s.push(buf), []);
    buf.fill(0x20); // the caller reuses its read buffer
    assert.deepEqual(s.push('z"}'), [{ value: { a: 'xyz' } }]);
  });
});

describe('json-stream: UTF-8', () => {
  it('multi-byte characters split across chunks at every offset', () => {
    const v = { execute: 'x', arguments: { s: 'é€😀 ok' } };
    const bytes = Buffer.from(JSON.stringify(v));
    for (let cut = 0; cut <= bytes.length; cut++) {
      for (let cut2 = cut; cut2 <= bytes.length; cut2++) {
        const items = feed(new JsonStreamSplitter(), bytes.subarray(0, cut), bytes.subarray(cut, cut2), bytes.subarray(cut2));
        assert.deepEqual(values(items), [v], `cuts at ${cut}, ${cut2}`);
      }
    }
  });

  it('string chunks are encoded as UTF-8', () => {
    assert.deepEqual(values(feed(new JsonStreamSplitter(), '{"s":"', 'ü€', '"}')), [{ s: 'ü€' }]);
  });

  it('invalid UTF-8 is an error, and the next value is read', () => {
    const bad = Buffer.concat([Buffer.from('{"s":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
    const items = feed(new JsonStreamSplitter(), bad, JSON.stringify(CAPS));
    assert.equal(items.length, 2);
    isError(items[0], /^invalid UTF-8 in JSON value$/);
    assert.deepEqual(items[1], { value: CAPS });
  });
});

describe('json-stream: errors and resynchronisation', () => {
  it('invalid JSON followed by a valid object', () => {
    const items = feed(new JsonStreamSplitter(), '{"execute": oops}', JSON.stringify(CAPS));
    assert.equal(items.length, 2);
    isError(items[0], /^invalid JSON: /);
    assert.deepEqual(items[1], { value: CAPS });
  });

  it('mismatched brackets are invalid JSON', () => {
    const items = feed(new JsonStreamSplitter(), '{"a":1]', '{"b":[}]', '{}');
    assert.equal(items.length, 3);
    isError(items[0], /^invalid JSON: /);
    isError(items[1], /^invalid JSON: /);
    assert.deepEqual(items[2], { value: {} });
  });

  it('top-level scalars are errors, one each', () => {
    const s = new JsonStreamSplitter();
    const items = feed(s, '42 true "str{" null{"a":1}"x"[', '1]-1.5e3 ');
    assert.equal(items.length, 8);
    for (const i of [0, 1, 2, 3, 5, 7]) isError(items[i], /^JSON scalar outside an object or array$/);
    assert.deepEqual(items[4], { value: { a: 1 } });
    assert.deepEqual(items[6], { value: [1] });
  });

  it('a bare scalar ends at the next structural byte, even in a later chunk', () => {
    const s = new JsonStreamSplitter();
    assert.deepEqual(s.push('12'), []);
    const items = s.push('3{}');
    assert.equal(items.length, 2);
    isError(items[0], /scalar/);
    assert.deepEqual(items[1], { value: {} });
  });

  it('stray closers, commas and colons are errors, one per byte', () => {
    const items = feed(new JsonStreamSplitter(), '{"a":1}}],:{}');
    assert.equal(items.length, 6);
    assert.deepEqual(items[0], { value: { a: 1 } });
    isError(items[1], /^unexpected '\}' outside an object or array$/);
    isError(items[2], /^unexpected '\]'/);
    isError(items[3], /^unexpected ','/);
    isError(items[4], /^unexpected ':'/);
    assert.deepEqual(items[5], { value: {} });
  });

  it('an over-long value gives one error; the rest of it is skipped', () => {
    const s = new JsonStreamSplitter({ maxBytes: 64 });
    const long = JSON.stringify({ execute: 'x', arguments: { s: '}'.repeat(100), l: [[1], { a: '[' }] } });
    const ok = JSON.stringify({ execute: 'y', arguments: { s: 'z'.repeat(26) } }); // 62 bytes
    assert.ok(ok.length <= 64);
    const items = feed(s, long.slice(0, 50), long.slice(50), ok);
    assert.equal(items.length, 2);
    isError(items[0], /^JSON value longer than 64 bytes$/);
    assert.deepEqual(items[1], { value: JSON.parse(ok) });
  });

  it('a value of exactly maxBytes is accepted', () => {
    const text = JSON.stringify({ s: 'x'.repeat(10) });
    const s = new JsonStreamSplitter({ maxBytes: text.length });
    assert.deepEqual(values(feed(s, text)), [{ s: 'x'.repeat(10) }]);
    const items = new JsonStreamSplitter({ maxBytes: text.length - 1 }).push(text);
    assert.equal(items.length, 1);
    isError(items[0], /longer than/);
  });

  it('the default size limit is 1 MiB', () => {
    const s = new JsonStreamSplitter();
    assert.equal(s.maxBytes, 1 << 20);
    const items = feed(s, `{"s":"${'x'.repeat(1 << 20)}"}`, '{}');
    assert.equal(items.length, 2);
    isError(items[0], /^JSON value longer than 1048576 bytes$/);
    assert.deepEqual(items[1], { value: {} });
  });

  it('an over-deep value gives one error; the rest of it is skipped', () => {
    const s = new JsonStreamSplitter({ maxDepth: 4 });
    const ok = '{"a":[[{"b":"[[[["}]]}'; // 4 levels
    const deep = '{"a":[[{"b":[]}]]}'; // 5 levels
    const items = feed(s, ok, deep, ok);
    assert.equal(items.length, 3);
    assert.deepEqual(items[0], { value: { a: [[{ b: '[[[[' }]] } });
    isError(items[1], /^JSON value nested deeper than 4 levels$/);
    assert.deepEqual(items[2], items[0]);
  });

  it('the default depth limit is 1024, as in QEMU', () => {
    const s = new JsonStreamSplitter();
    assert.equal(s.maxDepth, 1024);
    const nested = (n: number): string => '['.repeat(n) + ']'.repeat(n);
    const items = feed(s, nested(1024), nested(1025), nested(1));
    assert.equal(items.length, 3);
    assert.ok('value' in items[0]);
    isError(items[1], /^JSON value nested deeper than 1024 levels$/);
    assert.deepEqual(items[2], { value: [] });
  });

  it('an unterminated value is cut off by a control byte or 0xFF, then input resumes', () => {
    const s = new JsonStreamSplitter();
    const items = feed(s, '{"execute": "x", "arguments": {', Buffer.from([0xff]), JSON.stringify(CAPS));
    assert.equal(items.length, 2);
    isError(items[0], /^invalid byte 0xff in JSON input; value discarded$/);
    assert.deepEqual(items[1], { value: CAPS });
    // Between values such a byte is silently ignored.
    assert.deepEqual(feed(s, '\x00', Buffer.from([0xfe]), '\x1b{}'), [{ value: {} }]);
  });

  it('a control byte also ends skipping after a limit error', () => {
    const s = new JsonStreamSplitter({ maxDepth: 1 });
    const items = feed(s, '[[', '\x04', '{}');
    assert.equal(items.length, 2);
    isError(items[0], /deeper than 1 levels/);
    assert.deepEqual(items[1], { value: {} });
  });

  it('end() reports an unfinished value or scalar and resets', () => {
    const s = new JsonStreamSplitter();
    assert.deepEqual(s.push('{"a":'), []);
    const items = s.end();
    assert.equal(items.length, 1);
    isError(items[0], /^JSON value incomplete at end of input$/);
    assert.deepEqual(s.push('{}'), [{ value: {} }]);
    assert.deepEqual(s.end(), []);
    s.push('42');
    isError(s.end()[0], /scalar/);
  });

  it('rejects nonsensical limits', () => {
    assert.throws(() => new JsonStreamSplitter({ maxBytes: 1 }), RangeError);
    assert.throws(() => new JsonStreamSplitter({ maxDepth: 0 }), RangeError);
    assert.throws(() => new JsonStreamSplitter({ maxBytes: 1.5 }), RangeError);
  });
});
