// JSON schemas for the configuration objects (model.ts) and their validation
// with ajv. The same schemas check the JSON config file, options parsed from
// the command line (after keyval strings are given their types by coerce())
// and QMP command arguments. Errors are one line and name the key.
import Ajv, { ErrorObject, ValidateFunction } from 'ajv';
import { BUCKETS } from '../blk/throttle';

export type Schema = Record<string, unknown>;

const id = { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z][A-Za-z0-9._-]*$' };
const bool = { type: 'boolean' };
const uint = (max: number): Schema => ({ type: 'integer', minimum: 0, maximum: max });
/** An I/O limit: operations or bytes per second, 0 for none (QEMU takes up to 1e15). */
const limit: Schema = { type: 'integer', minimum: 0, maximum: 1e15 };
/** A size in bytes: on the command line it may carry a k/M/G/T suffix (QEMU's size type). */
const size = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, 'x-size': true };
const principal = { type: 'string', minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9_.][A-Za-z0-9_.-]*\\$?$' };
const when = (key: string, value: string, then: Schema): Schema => ({ if: { properties: { [key]: { const: value } }, required: [key] }, then });

export const blockdevSchema: Schema = {
  $id: 'blockdev',
  type: 'object',
  properties: {
    driver: { enum: ['file', 'host_device', 'raw'] },
    'node-name': id,
    filename: { type: 'string', minLength: 1 },
    file: { anyOf: [{ type: 'string', minLength: 1 }, { $ref: 'blockdev' }] },
    'read-only': bool,
    cache: { type: 'object', properties: { direct: bool }, additionalProperties: false },
    aio: { enum: ['threads', 'native', 'io_uring'] },
    discard: { enum: ['ignore', 'unmap'] },
    'auto-read-only': bool,
    'force-share': bool,
    locking: { enum: ['auto', 'on', 'off'] },
    'detect-zeroes': { enum: ['off'] },
  },
  required: ['driver'],
  additionalProperties: false,
  allOf: [
    when('driver', 'file', { required: ['filename'], not: { required: ['file'] } }),
    when('driver', 'host_device', { required: ['filename'], not: { required: ['file'] } }),
    when('driver', 'raw', { required: ['file'], not: { required: ['filename'] } }),
  ],
};

export const iothreadSchema: Schema = {
  $id: 'iothread',
  type: 'object',
  properties: {
    'qom-type': { const: 'iothread' },
    id,
    'poll-max-ns': uint(1_000_000_000),
    'poll-grow': uint(1_000_000_000),
    'poll-shrink': uint(1_000_000_000),
    'aio-max-batch': uint(1_000_000_000),
    'x-vublk-cpu-affinity': { type: 'array', items: uint(4095), minItems: 1 },
  },
  required: ['qom-type', 'id'],
  additionalProperties: false,
};

/** Interrupt coalescing of an export (x-vublk-coalescing, x-vublk-set-coalescing): at most a second of delay. */
export const coalescingSchema: Schema = {
  type: 'object',
  properties: { 'delay-us': uint(1_000_000), 'iops-threshold': uint(1_000_000_000) },
  additionalProperties: false,
};

/** I/O limits of an export (x-vublk-throttling): QEMU's throttling.* keys. */
export const throttlingSchema: Schema = {
  type: 'object',
  properties: Object.fromEntries([
    ...BUCKETS.flatMap((b) => [[b, limit], [`${b}-max`, limit], [`${b}-max-length`, { type: 'integer', minimum: 1, maximum: 86400 }]]),
    ['iops-size', uint(1 << 30)],
  ]),
  additionalProperties: false,
};

export const exportSchema: Schema = {
  $id: 'export',
  type: 'object',
  properties: {
    type: { const: 'vhost-user-blk' },
    id,
    'node-name': id,
    addr: {
      type: 'object',
      properties: { type: { enum: ['unix', 'fd'] }, path: { type: 'string', minLength: 1 }, str: { type: 'string', pattern: '^[0-9]+$' } },
      required: ['type'],
      additionalProperties: false,
      allOf: [
        when('type', 'unix', { required: ['path'], not: { required: ['str'] } }),
        when('type', 'fd', { required: ['str'], not: { required: ['path'] } }),
      ],
    },
    writable: bool,
    writethrough: bool,
    'num-queues': { type: 'integer', minimum: 1, maximum: 256 },
    'logical-block-size': { ...size, enum: [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] },
    iothread: { anyOf: [id, { type: 'array', items: id, minItems: 1 }] },
    'fixed-iothread': bool,
    'x-vublk-iothread-vq-mapping': {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        properties: { iothread: id, vqs: { type: 'array', items: uint(255) } },
        required: ['iothread'],
        additionalProperties: false,
      },
    },
    'x-vublk-serial': { type: 'string', maxLength: 20, pattern: '^[\\x20-\\x7e]*$' },
    'x-vublk-coalescing': coalescingSchema,
    'x-vublk-throttling': throttlingSchema,
    'x-vublk-lifetime': {
      type: 'object',
      properties: {
        'pre-eol-info': { enum: ['undefined', 'normal', 'warning', 'urgent'] },
        'typ-a': uint(11),
        'typ-b': uint(11),
      },
      additionalProperties: false,
    },
    'x-vublk-socket-mode': { type: 'string', pattern: '^0?[0-7]{3}$' },
    // Names as useradd/groupadd accept them (a trailing $ for machine accounts), or numeric ids.
    'x-vublk-socket-owner': principal,
    'x-vublk-socket-group': principal,
  },
  required: ['type', 'id', 'node-name', 'addr'],
  additionalProperties: false,
};

export const chardevSchema: Schema = {
  $id: 'chardev',
  type: 'object',
  properties: {
    backend: { const: 'socket' },
    id,
    path: { type: 'string', minLength: 1 },
    fd: { type: 'string', pattern: '^[0-9]+$' },
    server: { const: true },
    wait: bool,
  },
  required: ['backend', 'id', 'server'],
  additionalProperties: false,
  oneOf: [{ required: ['path'] }, { required: ['fd'] }],
};

export const monitorSchema: Schema = {
  $id: 'monitor',
  type: 'object',
  properties: { chardev: id, mode: { const: 'control' }, pretty: bool },
  required: ['chardev'],
  additionalProperties: false,
};

export const configSchema: Schema = {
  type: 'object',
  properties: {
    blockdevs: { type: 'array', items: { $ref: 'blockdev' } },
    objects: { type: 'array', items: { $ref: 'iothread' } },
    exports: { type: 'array', items: { $ref: 'export' } },
    chardevs: { type: 'array', items: { $ref: 'chardev' } },
    monitors: { type: 'array', items: { $ref: 'monitor' } },
    pidfile: { type: 'string', minLength: 1 },
    daemonize: bool,
    metrics: { type: 'string', pattern: '^.+:[0-9]+$' },
    'log-level': { enum: ['debug', 'info', 'warn', 'error'] },
    'log-format': { enum: ['auto', 'json', 'pretty'] },
  },
  additionalProperties: false,
};

/** Invalid configuration; the message is one line and names the key. */
export class ConfigError extends Error {}

// strictRequired is off: "not: { required: [...] }" (keys that exclude each other) is meant.
const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false });
ajv.addVocabulary(['x-size']);
const named: Record<string, Schema> = { blockdev: blockdevSchema, iothread: iothreadSchema, export: exportSchema, chardev: chardevSchema, monitor: monitorSchema };
for (const schema of Object.values(named)) ajv.addSchema(schema);
const compiled = new Map<Schema, ValidateFunction>();

/** "/exports/0/addr" + "path" → "exports[0].addr.path" */
function keyPath(instancePath: string, key?: string): string {
  const parts = instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (key !== undefined) parts.push(key);
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc === '' ? p : `${acc}.${p}`), '');
}

function describe(e: ErrorObject): string {
  const at = keyPath(e.instancePath);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': return `unknown key '${keyPath(e.instancePath, p.additionalProperty as string)}'`;
    case 'required': return `missing key '${keyPath(e.instancePath, p.missingProperty as string)}'`;
    case 'not': return `key '${at}': conflicting keys given together`;
    case 'enum': return `key '${at}': expected one of ${(p.allowedValues as unknown[]).join(', ')}`;
    case 'const': return `key '${at}': expected ${JSON.stringify(p.allowedValue)}`;
    case 'oneOf': return at === '' ? 'give exactly one of path and fd' : `key '${at}': give exactly one of path and fd`;
    default: return `key '${at}': ${e.message ?? e.keyword}`;
  }
}

const ERROR_RANK: Record<string, number> = { additionalProperties: 0, const: 1, enum: 1, type: 1, required: 4, not: 5, oneOf: 5 };

/** QMP's wording for bad command arguments (qobject input visitor). */
function describeQmp(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  const at = keyPath(e.instancePath);
  switch (e.keyword) {
    case 'additionalProperties': return `Parameter '${keyPath(e.instancePath, p.additionalProperty as string)}' is unexpected`;
    case 'required': return `Parameter '${keyPath(e.instancePath, p.missingProperty as string)}' is missing`;
    case 'type': return `Invalid parameter type for '${at}', expected: ${p.type as string}`;
    case 'enum':
    case 'const': return `Parameter '${at}' does not accept this value`;
    default: return `Parameter '${at}': ${e.message ?? e.keyword}`;
  }
}

/** Validate against a schema; throws ConfigError("<where>: <what>"), or QMP's wording when where is undefined. */
export function validate<T>(schema: Schema, value: unknown, where: string | undefined): T {
  let fn = compiled.get(schema);
  if (fn === undefined) {
    fn = typeof schema.$id === 'string' ? ajv.getSchema(schema.$id)! : ajv.compile(schema);
    compiled.set(schema, fn);
  }
  if (fn(value)) return value as T;
  // Report the most telling error: a misspelt key before a wrong value before a
  // missing key (a misspelt key usually also leaves one missing). "if" and "anyOf"
  // only say that their branches failed; the branch errors say why.
  const rank = (e: ErrorObject): number => ERROR_RANK[e.keyword] ?? 3;
  const errors = (fn.errors ?? []).filter((e) => e.keyword !== 'if' && e.keyword !== 'anyOf').sort((a, b) => rank(a) - rank(b));
  const first = errors[0] ?? fn.errors?.[0];
  if (where === undefined) throw new ConfigError(first === undefined ? 'Invalid parameters' : describeQmp(first));
  throw new ConfigError(`${where}: ${first === undefined ? 'invalid' : describe(first)}`);
}

function resolve(s: Schema): Schema {
  return typeof s.$ref === 'string' ? named[s.$ref] : s;
}

const SIZE_SUFFIX: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

function coerceScalar(value: string, s: Schema, key: string, where: string): unknown {
  const types = new Set<string>();
  const collect = (x: Schema): void => {
    if (typeof x.type === 'string') types.add(x.type);
    if (x.const !== undefined) types.add(typeof x.const);
    if (Array.isArray(x.enum)) for (const v of x.enum) types.add(typeof v);
    if (Array.isArray(x.anyOf)) for (const b of x.anyOf as Schema[]) collect(b);
  };
  collect(s);
  if (types.has('string')) return value;
  if (types.has('boolean')) {
    if (/^(on|yes|true|y)$/.test(value)) return true;
    if (/^(off|no|false|n)$/.test(value)) return false;
    throw new ConfigError(`${where}: key '${key}': expected 'on' or 'off', got '${value}'`);
  }
  if (types.has('integer') || types.has('number')) {
    const m = s['x-size'] === true ? /^(\d+)([bkmgt]?)$/i.exec(value) : /^(\d+)()$/.exec(value);
    if (m !== null) {
      const n = Number(m[1]) * SIZE_SUFFIX[m[2].toLowerCase()];
      if (Number.isSafeInteger(n)) return n;
    }
    throw new ConfigError(`${where}: key '${key}': expected ${s['x-size'] === true ? 'a size' : 'an integer'}, got '${value}'`);
  }
  return value;
}

/**
 * Give keyval strings their types by the schema ('on' → true, '4k' → 4096),
 * the way QEMU's keyval input visitor does. Unknown keys are left for
 * validate() to report.
 */
export function coerce(value: unknown, s: Schema, where: string, key = ''): unknown {
  s = resolve(s);
  if (typeof value === 'string') return coerceScalar(value, s, key, where);
  const branches = Array.isArray(s.anyOf) ? (s.anyOf as Schema[]).map(resolve) : [s];
  if (Array.isArray(value)) {
    const arr = branches.find((b) => b.type === 'array');
    if (arr === undefined) return value;
    return value.map((v, i) => coerce(v, arr.items as Schema, where, `${key}.${i}`));
  }
  if (value !== null && typeof value === 'object') {
    const obj = branches.find((b) => b.type === 'object');
    const props = (obj?.properties ?? {}) as Record<string, Schema>;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      const sub = props[k];
      out[k] = sub === undefined ? v : coerce(v, sub, where, key === '' ? k : `${key}.${k}`);
    }
    return out;
  }
  return value;
}
