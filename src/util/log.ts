// Line-oriented logging to stderr: one event per line, `key=value` fields, so
// journald and grep both read it. Kept tiny on purpose; the data path logs only
// on failures.
export type Level = 'debug' | 'info' | 'warn' | 'error';
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold = order[(process.env.VUBLK_LOG_LEVEL as Level) in order ? (process.env.VUBLK_LOG_LEVEL as Level) : 'info'];
let sink: (line: string) => void = (line) => process.stderr.write(line + '\n');

export function setLogLevel(level: Level): void { threshold = order[level]; }
/** Redirect log lines (tests capture them). Returns the previous sink. */
export function setLogSink(fn: (line: string) => void): (line: string) => void {
  const prev = sink;
  sink = fn;
  return prev;
}

function format(value: unknown): string {
  if (typeof value === 'string') return /^[\w./:@+-]*$/.test(value) && value !== '' ? value : JSON.stringify(value);
  if (typeof value === 'bigint') return '0x' + value.toString(16);
  if (value instanceof Error) return JSON.stringify(value.message);
  return String(value);
}

export class Logger {
  constructor(private readonly fields: Record<string, unknown> = {}) {}

  child(fields: Record<string, unknown>): Logger {
    return new Logger({ ...this.fields, ...fields });
  }

  log(level: Level, msg: string, fields?: Record<string, unknown>): void {
    if (order[level] < threshold) return;
    let line = `${new Date().toISOString()} ${level.toUpperCase()} ${msg}`;
    for (const [k, v] of Object.entries(this.fields)) line += ` ${k}=${format(v)}`;
    if (fields) for (const [k, v] of Object.entries(fields)) line += ` ${k}=${format(v)}`;
    sink(line);
  }

  debug(msg: string, fields?: Record<string, unknown>): void { this.log('debug', msg, fields); }
  info(msg: string, fields?: Record<string, unknown>): void { this.log('info', msg, fields); }
  warn(msg: string, fields?: Record<string, unknown>): void { this.log('warn', msg, fields); }
  error(msg: string, fields?: Record<string, unknown>): void { this.log('error', msg, fields); }
}

export const log = new Logger();
