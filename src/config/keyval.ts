// QEMU's "keyval" option syntax (util/keyval.c), as qemu-storage-daemon parses
// --blockdev, --export, --object, --chardev and --monitor. Pure: text in, a
// tree of strings, objects and arrays out, or a one-line KeyvalError.
//
//   key-vals     = [ key-val-1st { ',' key-val } [ ',' ] ]
//   key-val-1st  = val-no-key | key-val      (val-no-key only with an implied key)
//   key-val      = key '=' val
//   key          = fragment { '.' fragment }
//   fragment     = / [A-Za-z][A-Za-z0-9_-]* / | / [0-9]+ /   (no index at the top level)
//   val          = { / [^,] / | ',,' }       (',,' is a literal ',')
//   val-no-key   = / [^=,]+ /
//
// Choices, and where they differ from QEMU 7.2:
// - Like QEMU: "" gives {}; one trailing ',' is accepted ("a=1," is {a:'1'});
//   an empty value is allowed ("a=" is {a:''}); '=' inside a value is literal;
//   a leading-zero index means the same element ("a.01" is "a.1").
// - Unlike QEMU, setting a key twice is an error: QEMU silently keeps the last
//   value, which hides typos in long command lines. With an implied key,
//   "file,driver=x" sets 'driver' twice.
// - Not supported: QAPI vendor names ("__com.example_x"), and "help" / "?"
//   help requests (with an implied key "help" is just a value; callers that
//   want help can look for it).

export type KeyvalValue = string | KeyvalObject | KeyvalValue[];
export interface KeyvalObject {
  [key: string]: KeyvalValue;
}

export class KeyvalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyvalError';
  }
}

/** QEMU's limit, kept so that command lines valid here are valid there. */
const MAX_FRAGMENT_LENGTH = 127;
const NAME = /^[A-Za-z][A-Za-z0-9_-]*$/;
const INDEX = /^[0-9]+$/;

/** Parse tree before arrays are made: a Map, so "constructor" & co. are plain keys. */
type Node = string | Branch;
type Branch = Map<string, Node>;

interface KeyPath {
  /** As written, for error messages. */
  written: string[];
  /** Indices without leading zeros, so "01" and "1" are one element. */
  canonical: string[];
}

export function parseKeyval(text: string, impliedKey?: string): KeyvalObject {
  const root: Branch = new Map();
  let pos = 0;
  while (pos < text.length) {
    pos = parseOne(root, text, pos, pos === 0 ? impliedKey : undefined);
  }
  return listify(root, []) as KeyvalObject;
}

/**
 * qemu-storage-daemon also takes these options as JSON, told apart by a
 * leading '{'. Values keep their JSON types; keyval values are all strings.
 */
export function parseOptionArgument(text: string, impliedKey?: string): Record<string, unknown> {
  if (!/^\s*\{/.test(text)) return parseKeyval(text, impliedKey);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    // V8 quotes the input in some messages; keep the error on one line.
    throw new KeyvalError(`Invalid JSON option: ${(err as Error).message.replace(/\s+/g, ' ')}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new KeyvalError('Invalid JSON option: not an object');
  }
  return value as Record<string, unknown>;
}

/** Parse the element starting at `pos` into `root`; returns where the next one starts. */
function parseOne(root: Branch, text: string, pos: number, impliedKey: string | undefined): number {
  let keyEnd = pos;
  while (keyEnd < text.length && text[keyEnd] !== '=' && text[keyEnd] !== ',') keyEnd++;
  const rawKey = text.slice(pos, keyEnd);

  if (text[keyEnd] !== '=') {
    // No '=': only the first element may be a bare value, and only when
    // nonempty (QEMU's val-no-key); it can't contain ',' or '='.
    if (impliedKey !== undefined && rawKey !== '') {
      put(root, parseKey(impliedKey), rawKey);
      return keyEnd + 1; // past the ',' (or one past the end)
    }
    if (rawKey === '') throw new KeyvalError("Invalid parameter '': empty key");
    throw new KeyvalError(`Expected '=' after parameter '${rawKey}'`);
  }

  const path = parseKey(rawKey);
  let value = '';
  let i = keyEnd + 1;
  for (; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] !== ',') {
        i++;
        break;
      }
      i++; // ',,' is one literal ','
    }
    value += text[i];
  }
  put(root, path, value);
  return i;
}

function parseKey(key: string): KeyPath {
  if (key === '') throw new KeyvalError("Invalid parameter '': empty key");
  const written = key.split('.');
  const canonical = written.map((frag, i) => {
    if (frag === '') throw new KeyvalError(`Invalid parameter '${key}': empty key fragment`);
    if (frag.length > MAX_FRAGMENT_LENGTH) {
      throw new KeyvalError(`Invalid parameter '${key}': key fragment longer than ${MAX_FRAGMENT_LENGTH} characters`);
    }
    if (NAME.test(frag)) return frag;
    if (!INDEX.test(frag)) {
      throw new KeyvalError(`Invalid parameter '${key}': key fragment '${frag}' is neither a name nor a list index`);
    }
    // The root is always an object (the option's own members).
    if (i === 0) throw new KeyvalError(`Invalid parameter '${key}': a top-level key can't be a list index`);
    return frag.replace(/^0+(?=[0-9])/, '');
  });
  return { written, canonical };
}

function put(root: Branch, path: KeyPath, value: string): void {
  const last = path.canonical.length - 1;
  let cur = root;
  for (let i = 0; i < last; i++) {
    const frag = path.canonical[i];
    const next = cur.get(frag);
    if (typeof next === 'string') throw inconsistent(path.written.slice(0, i + 1));
    if (next) {
      cur = next;
    } else {
      const branch: Branch = new Map();
      cur.set(frag, branch);
      cur = branch;
    }
  }
  const old = cur.get(path.canonical[last]);
  if (old instanceof Map) throw inconsistent(path.written);
  if (old !== undefined) throw new KeyvalError(`Parameter '${path.written.join('.')}' is set twice`);
  cur.set(path.canonical[last], value);
}

function inconsistent(written: string[]): KeyvalError {
  return new KeyvalError(`Parameter '${written.join('.')}' used inconsistently: both a value and an object`);
}

/** Turn branches whose keys are all indices into arrays, 0..n-1 without gaps. */
function listify(branch: Branch, path: string[]): KeyvalObject | KeyvalValue[] {
  let indices = 0;
  for (const key of branch.keys()) if (INDEX.test(key)) indices++;
  if (indices > 0 && indices < branch.size) {
    throw new KeyvalError(`Parameter '${path.join('.')}' used inconsistently: list indices mixed with member names`);
  }
  const convert = (key: string, node: Node): KeyvalValue =>
    typeof node === 'string' ? node : listify(node, [...path, key]);

  if (indices === 0) {
    const obj: KeyvalObject = {};
    for (const [key, node] of branch) obj[key] = convert(key, node);
    return obj;
  }
  const list: KeyvalValue[] = [];
  for (let i = 0; i < branch.size; i++) {
    const node = branch.get(String(i));
    if (node === undefined) {
      throw new KeyvalError(`Parameter '${[...path, i].join('.')}' missing: list indices must count from 0 without gaps`);
    }
    list.push(convert(String(i), node));
  }
  return list;
}
