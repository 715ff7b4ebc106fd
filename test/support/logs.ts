// Reading vublk's logs in tests: pino JSON records, one per line (src/util/log.ts),
// possibly mixed with other output (the "serving" banner on stdout).
import { LOG_LEVEL_VALUES, Level } from '../../src/util/log';

/** A record: pino's level (number), time, pid and msg, plus bindings and fields. */
export interface LogRecord {
  level: number;
  time: number;
  pid: number;
  msg: string;
  [field: string]: unknown;
}

/** The log records in `text` (or in these lines); lines that are not records are skipped. */
export function parseLogRecords(text: string | readonly string[]): LogRecord[] {
  const lines = typeof text === 'string' ? text.split('\n') : text;
  const records: LogRecord[] = [];
  for (const line of lines) {
    if (!line.startsWith('{')) continue;
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch {
      continue;
    }
    if (typeof r === 'object' && r !== null && typeof (r as LogRecord).level === 'number' && typeof (r as LogRecord).msg === 'string') {
      records.push(r as LogRecord);
    }
  }
  return records;
}

/** A string or a RegExp matches the way findLogs() says. */
function matches(want: unknown, got: unknown): boolean {
  if (want instanceof RegExp) return typeof got === 'string' && want.test(got);
  return JSON.stringify(want) === JSON.stringify(got);
}

/**
 * The records whose msg is `msg` and whose fields have the values given: a RegExp
 * matches a string anywhere, anything else must equal the JSON value.
 */
export function findLogs(records: readonly LogRecord[], msg: string | RegExp, fields: Record<string, unknown> = {}): LogRecord[] {
  return records.filter((r) => matches(msg, r.msg) && Object.entries(fields).every(([k, v]) => matches(v, r[k])));
}

/** Records at `level` or above. */
export function logsAtLeast(records: readonly LogRecord[], level: Level): LogRecord[] {
  return records.filter((r) => r.level >= LOG_LEVEL_VALUES[level]);
}
