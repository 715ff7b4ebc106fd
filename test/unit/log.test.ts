import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import {
  LOG_FORMAT_ENV, LOG_LEVEL_ENV, LOG_LEVEL_VALUES, Level, LogFormat, Logger, configureLogging, log, logConfig, setLogSink,
} from '../../src/util/log';
import { findLogs, parseLogRecords } from '../support/logs';

/** The compiled module, for child processes and workers. */
const LOG_MODULE = path.resolve(__dirname, '..', '..', 'src', 'util', 'log.js');

/** Run a script (with `L` = the log module) in a fresh node; stderr is a pipe, not a TTY. */
function runNode(script: string, env: Record<string, string | undefined> = {}): { status: number | null; signal: string | null; stderr: string } {
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  delete childEnv[LOG_LEVEL_ENV];
  delete childEnv[LOG_FORMAT_ENV];
  delete childEnv.NO_COLOR;
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete childEnv[k];
    else childEnv[k] = v;
  }
  const r = spawnSync(process.execPath, ['-e', `const L = require(${JSON.stringify(LOG_MODULE)});\n${script}`], {
    env: childEnv, encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stderr: r.stderr };
}

/** Every non-empty line of `text` must be one JSON record; returns them. */
function jsonLines(text: string): Array<Record<string, unknown>> {
  const lines = text.split('\n').filter((l) => l !== '');
  return lines.map((l) => {
    const r = JSON.parse(l) as Record<string, unknown>;
    assert.equal(typeof r, 'object', l);
    return r;
  });
}

describe('logging (pino)', () => {
  let lines: string[];
  let restoreSink: (l: string) => void;
  let saved: { level: Level; format: LogFormat };
  let savedEnv: Array<string | undefined>;

  beforeEach(() => {
    lines = [];
    restoreSink = setLogSink((l) => lines.push(l));
    saved = logConfig();
    savedEnv = [process.env[LOG_LEVEL_ENV], process.env[LOG_FORMAT_ENV]];
    configureLogging({ level: 'info' });
  });
  afterEach(() => {
    setLogSink(restoreSink);
    configureLogging(saved);
    const names = [LOG_LEVEL_ENV, LOG_FORMAT_ENV];
    savedEnv.forEach((v, i) => {
      if (v === undefined) delete process.env[names[i]];
      else process.env[names[i]] = v;
    });
  });

  it('writes one-line JSON records: level, time, pid, bindings, fields, msg', () => {
    const before = Date.now();
    log.child({ export: 'vublk0' }).child({ conn: 3 }).info('front-end connected', { queues: 2, readonly: false, image: '/tmp/a b.img' });
    assert.equal(lines.length, 1);
    assert.doesNotMatch(lines[0], /\n/);
    const r = JSON.parse(lines[0]) as Record<string, unknown>;
    assert.ok(typeof r.time === 'number' && r.time >= before && r.time <= Date.now(), `time ${r.time}`);
    assert.deepEqual(r, {
      level: 30, time: r.time, pid: process.pid, export: 'vublk0', conn: 3, queues: 2, readonly: false, image: '/tmp/a b.img',
      msg: 'front-end connected',
    });
    // pino's order: level, time, pid, bindings, the call's fields, msg last.
    assert.deepEqual(Object.keys(r), ['level', 'time', 'pid', 'export', 'conn', 'queues', 'readonly', 'image', 'msg']);
  });

  it('maps the four levels to pino numbers and drops what is below the threshold', () => {
    const l = new Logger({ c: 1 });
    const all = (): void => { l.debug('d'); l.info('i'); l.warn('w'); l.error('e'); };
    all();
    assert.deepEqual(parseLogRecords(lines).map((r) => [r.level, r.msg]), [[30, 'i'], [40, 'w'], [50, 'e']]);
    lines.length = 0;
    configureLogging({ level: 'debug' });
    all();
    assert.deepEqual(parseLogRecords(lines).map((r) => r.level), [20, 30, 40, 50]);
    assert.equal(l.isEnabled('debug'), true);
    lines.length = 0;
    configureLogging({ level: 'error' });
    all();
    assert.deepEqual(parseLogRecords(lines).map((r) => r.msg), ['e']);
    assert.equal(l.isEnabled('warn'), false);
    assert.deepEqual(LOG_LEVEL_VALUES, { debug: 20, info: 30, warn: 40, error: 50 });
  });

  it('applies a new level to loggers made before it (children included)', () => {
    const q = log.child({ iothread: 'vublk-io0' }).child({ queue: 1 });
    q.debug('queue started');
    assert.equal(lines.length, 0);
    configureLogging({ level: 'debug' });
    q.debug('queue stopped', { next: 42 });
    assert.deepEqual(findLogs(parseLogRecords(lines), 'queue stopped', { level: 20, iothread: 'vublk-io0', queue: 1, next: 42 }).length, 1);
  });

  it('child bindings: later keys win, the parent is unchanged', () => {
    const parent = log.child({ export: 'a', conn: 1 });
    const child = parent.child({ conn: 2, queue: 0 });
    child.warn('x');
    parent.warn('y');
    const [x, y] = parseLogRecords(lines);
    assert.deepEqual([x.export, x.conn, x.queue], ['a', 2, 0]);
    assert.deepEqual([y.export, y.conn, 'queue' in y], ['a', 1, false]);
    assert.equal(lines[0].match(/"conn"/g)?.length, 1, 'no duplicate key');
  });

  it('serialises an Error as its message, on one line; bigints as hex; pino keys are not overwritten', () => {
    const e = new Error('first line\nsecond line');
    log.child({ cause: new Error('bound') }).error('shutdown failed', { error: e, base: 0x7f00_0000_1000n, msg: 'mine', level: 'x' });
    assert.equal(lines.length, 1);
    assert.doesNotMatch(lines[0], /\n/);
    assert.doesNotMatch(lines[0], /at .*log\.test/, 'no stack');
    const r = JSON.parse(lines[0]) as Record<string, unknown>;
    assert.equal(r.error, 'first line\nsecond line');
    assert.equal(r.cause, 'bound');
    assert.equal(r.base, '0x7f0000001000');
    assert.deepEqual([r.level, r.msg, r.msg_, r.level_], [50, 'shutdown failed', 'mine', 'x']);
  });

  it('takes the message as text, never as a format string', () => {
    log.info('100% %s %d %j %o', { n: 1 });
    assert.equal(parseLogRecords(lines)[0].msg, '100% %s %d %j %o');
  });

  it('records the configuration in the environment and rejects unknown values', () => {
    configureLogging({ level: 'warn', format: 'json' });
    assert.equal(process.env[LOG_LEVEL_ENV], 'warn');
    assert.equal(process.env[LOG_FORMAT_ENV], 'json');
    configureLogging({ format: 'pretty' });
    assert.deepEqual(logConfig(), { level: 'warn', format: 'pretty', pretty: true });
    assert.equal(process.env[LOG_LEVEL_ENV], 'warn', 'the level stays');
    assert.throws(() => configureLogging({ level: 'trace' as Level }), /unknown log level "trace"/);
    assert.throws(() => configureLogging({ format: 'xml' as LogFormat }), /unknown log format "xml"/);
    assert.deepEqual(logConfig(), { level: 'warn', format: 'pretty', pretty: true });
  });

  describe('in a process of its own (stderr a pipe)', function () {
    this.timeout(30_000);

    it('writes JSON lines to stderr with format auto when stderr is not a TTY', () => {
      const r = runNode(`L.log.child({ export: 'e' }).info('hello', { n: 1 }); L.log.debug('not shown');`);
      assert.equal(r.status, 0, r.stderr);
      const recs = jsonLines(r.stderr);
      assert.deepEqual(recs.map((x) => [x.level, x.msg, x.export, x.n]), [[30, 'hello', 'e', 1]]);
    });

    it('reads VUBLK_LOG_LEVEL and VUBLK_LOG_FORMAT at load, and warns about values it does not know', () => {
      let r = runNode(`L.log.debug('dbg');`, { [LOG_LEVEL_ENV]: 'debug', [LOG_FORMAT_ENV]: 'json' });
      assert.deepEqual(jsonLines(r.stderr).map((x) => [x.level, x.msg]), [[20, 'dbg']]);
      r = runNode(`L.log.info('still logs');`, { [LOG_LEVEL_ENV]: 'loud' });
      assert.deepEqual(jsonLines(r.stderr).map((x) => [x.level, x.msg, x.value]), [[40, 'ignoring VUBLK_LOG_LEVEL', 'loud'], [30, 'still logs', undefined]]);
    });

    it('writes human-readable lines when the format is pretty (no colour on a pipe)', () => {
      const r = runNode(`
        L.configureLogging({ format: 'pretty' });
        L.log.child({ export: 'vublk0' }).warn('io_uring unavailable', { aio: 'io_uring', error: new Error('a\\nb') });
        L.log.info('done');`);
      assert.equal(r.status, 0, r.stderr);
      const out = r.stderr.split('\n').filter((l) => l !== '');
      assert.equal(out.length, 2, r.stderr);
      assert.match(out[0], /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] WARN: io_uring unavailable \{"export":"vublk0","aio":"io_uring","error":"a\\nb"\}$/);
      assert.match(out[1], /^\[[^\]]+\] INFO: done$/);
      assert.throws(() => JSON.parse(out[0]));
      assert.doesNotMatch(r.stderr, /\x1b\[/, 'no colour escapes');
    });

    it('uses pretty with format auto when stderr is a TTY', function () {
      // util-linux script(1) gives the child a pseudo-terminal.
      const cmd = `${JSON.stringify(process.execPath)} -e 'require(${JSON.stringify(LOG_MODULE)}).log.info("on a tty")'`;
      const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
      delete env[LOG_FORMAT_ENV];
      delete env[LOG_LEVEL_ENV];
      const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { env, encoding: 'utf8', timeout: 20_000 });
      if (r.error || r.status !== 0) this.skip();
      assert.match(r.stdout, /^\[[^\]]+\] INFO: on a tty\r?$/m, r.stdout);
    });

    for (const format of ['json', 'pretty'] as const) {
      it(`loses nothing when the process is killed right after logging (${format})`, () => {
        const r = runNode(`
          L.configureLogging({ format: '${format}' });
          for (let i = 0; i < 2000; i++) L.log.info('line', { i, pad: 'x'.repeat(100) });
          process.kill(process.pid, 'SIGKILL');`);
        assert.equal(r.signal, 'SIGKILL');
        const out = r.stderr.split('\n').filter((l) => l !== '');
        assert.equal(out.length, 2000);
        assert.match(out[1999], /1999/);
      });
    }

    /** A script that starts a worker running `code` (with `L` = the log module) and exits when it is done. */
    const startWorker = (code: string): string => `
      const { Worker } = require('node:worker_threads');
      const w = new Worker(${JSON.stringify(`const L = require(${JSON.stringify(LOG_MODULE)});\n${code}`)}, { eval: true });
      w.on('exit', (code) => { L.log.info('worker exited', { code }); process.exit(0); });`;

    it('a worker_thread started after configureLogging({ level: debug, format: json }) logs at debug, in JSON', () => {
      // The environment says otherwise: only what configureLogging recorded can make the worker follow.
      const r = runNode(`
        L.configureLogging({ level: 'debug', format: 'json' });
        L.log.debug('main thread');
        ${startWorker(`L.log.child({ iothread: 'vublk-io0' }).debug('iothread started', { config: L.logConfig() });`)}`,
      { [LOG_LEVEL_ENV]: 'warn', [LOG_FORMAT_ENV]: 'pretty' });
      assert.equal(r.status, 0, r.stderr);
      const recs = jsonLines(r.stderr);
      assert.deepEqual(recs.map((x) => x.msg), ['main thread', 'iothread started', 'worker exited'], r.stderr);
      const w = recs[1];
      assert.deepEqual([w.level, w.iothread, w.pid], [20, 'vublk-io0', recs[0].pid]);
      assert.deepEqual(w.config, { level: 'debug', format: 'json', pretty: false });
    });

    it('without configureLogging, a worker follows the environment it was started with', () => {
      const r = runNode(startWorker(`L.log.debug('hidden'); L.log.warn('shown');`), { [LOG_LEVEL_ENV]: 'warn' });
      assert.deepEqual(jsonLines(r.stderr).map((x) => x.msg), ['shown'], r.stderr);
    });

    it('a worker_thread follows the pretty format too', () => {
      const r = runNode(`
        L.configureLogging({ level: 'debug', format: 'pretty' });
        ${startWorker(`L.log.child({ iothread: 'vublk-io1' }).debug('from the worker');`)}`);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /^\[[^\]]+\] DEBUG: from the worker \{"iothread":"vublk-io1"\}$/m, r.stderr);
    });
  });
});
