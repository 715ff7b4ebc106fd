// Structured logging with pino: one JSON record per line on stderr, so journald,
// jq and grep all read it; human-readable (pino-pretty) when stderr is a TTY.
//
// A record: {"level":30,"time":1718000000000,"pid":1234,"export":"vublk0","conn":1,"msg":"front-end connected"}
// (pino's numeric levels: debug 20, info 30, warn 40, error 50; time in ms since
// the epoch; the bindings of child() loggers, then the call's fields, then msg).
// Error values become their message, bigints a 0x hex string, so a record stays
// one line in either format.
//
// Writes are synchronous (fs.writeSync on fd 2, pino-pretty as an in-thread
// stream, never a transport worker): nothing is lost when the process exits or
// is killed. Kept cheap when a level is off; the data path logs only on failures.
//
// Iothreads are worker_threads that load this module too. A worker gets a copy
// of process.env when it is created, so configureLogging() records the choice
// in VUBLK_LOG_LEVEL and VUBLK_LOG_FORMAT, which this module reads at load:
// workers (and child processes) started afterwards log the same way.
import * as tty from 'node:tty';
import { isMainThread } from 'node:worker_threads';
import pino from 'pino';
import type { DestinationStream, Logger as PinoLogger } from 'pino';

export type Level = 'debug' | 'info' | 'warn' | 'error';
/** `auto`: pretty when stderr is a TTY, else JSON. */
export type LogFormat = 'auto' | 'json' | 'pretty';
export interface LogOptions {
  level?: Level;
  format?: LogFormat;
}

export const LOG_LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];
export const LOG_FORMATS: readonly LogFormat[] = ['auto', 'json', 'pretty'];
export const LOG_LEVEL_ENV = 'VUBLK_LOG_LEVEL';
export const LOG_FORMAT_ENV = 'VUBLK_LOG_FORMAT';
/** pino's numeric level of each of ours, as it appears in a record's `level`. */
export const LOG_LEVEL_VALUES: Readonly<Record<Level, number>> = { debug: 20, info: 30, warn: 40, error: 50 };

const isLevel = (v: unknown): v is Level => typeof v === 'string' && (LOG_LEVELS as readonly string[]).includes(v);
const isFormat = (v: unknown): v is LogFormat => typeof v === 'string' && (LOG_FORMATS as readonly string[]).includes(v);

// --- where records go ---------------------------------------------------------------------

let jsonOut: DestinationStream | undefined;
let prettyOut: DestinationStream | undefined;

/** fd 2, written with writeSync. One per thread, kept for the thread's life (never closed: it is stderr). */
function stderrDestination(): DestinationStream {
  jsonOut ??= pino.destination({ fd: 2, sync: true });
  return jsonOut;
}

/** pino-pretty as a synchronous stream in this thread, onto the same fd 2 destination. Loaded only when used. */
function prettyDestination(): DestinationStream {
  if (prettyOut === undefined) {
    const { PinoPretty } = require('pino-pretty') as typeof import('pino-pretty');
    prettyOut = PinoPretty({
      destination: stderrDestination(), sync: true,
      colorize: tty.isatty(2) && process.env.NO_COLOR === undefined,
      singleLine: true, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l', ignore: 'pid,hostname',
      // Our `error` fields are messages: keep them in the one line with the other fields.
      errorLikeObjectKeys: [],
    });
  }
  return prettyOut;
}

// --- configuration --------------------------------------------------------------------------

const envLevel = process.env[LOG_LEVEL_ENV];
const envFormat = process.env[LOG_FORMAT_ENV];
let level: Level = isLevel(envLevel) ? envLevel : 'info';
let format: LogFormat = isFormat(envFormat) ? envFormat : 'auto';
let threshold = LOG_LEVEL_VALUES[level];
let pretty = false;

function resolveFormat(): void {
  pretty = format === 'pretty' || (format === 'auto' && tty.isatty(2));
}
resolveFormat();

/** The default sink: a JSON line to stderr as it is, or prettified. */
function writeStderr(line: string): void {
  (pretty ? prettyDestination() : stderrDestination()).write(line + '\n');
}
let sink: (line: string) => void = writeStderr;

/**
 * Set the level and/or the format (what is not given stays). Also recorded in
 * VUBLK_LOG_LEVEL / VUBLK_LOG_FORMAT so that iothreads (worker_threads) and child
 * processes started afterwards follow. Throws on a value it does not know.
 */
export function configureLogging(o: LogOptions): void {
  if (o.level !== undefined) {
    if (!isLevel(o.level)) throw new RangeError(`unknown log level ${JSON.stringify(o.level)} (${LOG_LEVELS.join(', ')})`);
    level = o.level;
    threshold = LOG_LEVEL_VALUES[level];
  }
  if (o.format !== undefined) {
    if (!isFormat(o.format)) throw new RangeError(`unknown log format ${JSON.stringify(o.format)} (${LOG_FORMATS.join(', ')})`);
    format = o.format;
    resolveFormat();
  }
  process.env[LOG_LEVEL_ENV] = level;
  process.env[LOG_FORMAT_ENV] = format;
}

/** The current configuration; `pretty` is what `format` resolved to in this thread. */
export function logConfig(): { level: Level; format: LogFormat; pretty: boolean } {
  return { level, format, pretty };
}

/** Same as configureLogging({ level }). */
export function setLogLevel(l: Level): void { configureLogging({ level: l }); }

/**
 * Redirect log records (tests capture them): the sink gets each record as one
 * JSON line without its newline, whatever the format. Returns the previous sink.
 */
export function setLogSink(fn: (line: string) => void): (line: string) => void {
  const prev = sink;
  sink = fn;
  return prev;
}

// All loggers write through the current sink; levels are filtered before pino is called.
const root: PinoLogger = pino(
  { level: 'debug', base: { pid: process.pid } },
  { write: (chunk: string) => sink(chunk.endsWith('\n') ? chunk.slice(0, -1) : chunk) },
);

/** Keys of pino's own: a field of that name is renamed with a trailing `_` (level → level_). */
const RESERVED = new Set(['level', 'time', 'pid', 'hostname', 'msg']);

/** Fields as JSON should carry them: Error → its message, bigint → 0x hex, no reserved keys. Copies only if needed. */
function plain(fields: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  const keys = Object.keys(fields);
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i];
    const v = fields[k];
    const reserved = RESERVED.has(k);
    if (!reserved && !(v instanceof Error) && typeof v !== 'bigint' && out === undefined) continue;
    if (out === undefined) {
      out = {};
      for (let j = 0; j < i; j++) out[keys[j]] = fields[keys[j]];
    }
    out[reserved ? `${k}_` : k] = v instanceof Error ? v.message : typeof v === 'bigint' ? `0x${v.toString(16)}` : v;
  }
  return out ?? fields;
}

// --- the API the code calls -----------------------------------------------------------------

export class Logger {
  private pinoLogger: PinoLogger | undefined;

  constructor(private readonly fields: Record<string, unknown> = {}) {}

  /** A logger whose records carry these fields too (later ones win on the same key). */
  child(fields: Record<string, unknown>): Logger {
    return new Logger({ ...this.fields, ...fields });
  }

  isEnabled(l: Level): boolean { return LOG_LEVEL_VALUES[l] >= threshold; }

  log(l: Level, msg: string, fields?: Record<string, unknown>): void {
    if (LOG_LEVEL_VALUES[l] < threshold) return;
    // The pino child is made on first use: most loggers (one per queue, per connection) never log.
    this.pinoLogger ??= Object.keys(this.fields).length === 0 ? root : root.child(plain(this.fields));
    // Messages are plain text, never printf formats: pass them as the one argument after the fields.
    this.pinoLogger[l](fields === undefined ? {} : plain(fields), '%s', msg);
  }

  debug(msg: string, fields?: Record<string, unknown>): void { this.log('debug', msg, fields); }
  info(msg: string, fields?: Record<string, unknown>): void { this.log('info', msg, fields); }
  warn(msg: string, fields?: Record<string, unknown>): void { this.log('warn', msg, fields); }
  error(msg: string, fields?: Record<string, unknown>): void { this.log('error', msg, fields); }
}

export const log = new Logger();

// A value this module does not know is ignored, said once (by the main thread, not each iothread); empty counts as unset.
if (isMainThread) {
  if (envLevel && envLevel !== level) log.warn(`ignoring ${LOG_LEVEL_ENV}`, { value: envLevel, expected: LOG_LEVELS.join('|') });
  if (envFormat && envFormat !== format) log.warn(`ignoring ${LOG_FORMAT_ENV}`, { value: envFormat, expected: LOG_FORMATS.join('|') });
}
