// Splits the QMP byte stream into JSON values, like QEMU's json-streamer: the
// client sends objects back to back, with or without newlines, and a socket
// read may end anywhere, even inside a UTF-8 sequence. Pure: bytes in, items out.
//
// It works on bytes: every byte that matters for splitting ({ } [ ] " \ and
// whitespace) is ASCII, and UTF-8 never uses ASCII bytes inside a multi-byte
// sequence, so a value's bytes are only decoded once the value is complete.
//
// Resynchronisation. After an error inside a value the splitter must find
// where the next value starts:
// - Over-long or over-deep value: one error, then the rest of that value is
//   skipped without being stored (string and nesting state are still tracked)
//   until its nesting returns to zero; the next value is read normally.
// - A control byte other than tab, CR and LF, or 0xFE / 0xFF, anywhere (these
//   are never valid in JSON text): whatever value was being read is dropped
//   with an error (no error if nothing was pending) and the splitter starts
//   afresh. QEMU's lexer treats these bytes the same way, and the QMP
//   specification tells clients to send one to force the server's parser
//   back into a known state.
//
// Not supported: QEMU's single-quoted strings, an extension to JSON.

import { TextDecoder } from 'node:util';

export type JsonStreamItem = { value: unknown } | { error: string };

export interface JsonStreamOptions {
  /** Largest value, in bytes; default 1 MiB. */
  maxBytes?: number;
  /** Deepest nesting of objects and arrays; default 1024 (QEMU's MAX_NESTING). */
  maxDepth?: number;
}

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;

type Mode =
  | 'idle' // between values
  | 'value' // inside an object or array, storing its bytes
  | 'skip' // inside a value that already produced an error
  | 'scalar'; // a top-level scalar, to be reported once it ends

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

/** Bytes never valid in JSON text, used as "start afresh" markers. */
function isReset(b: number): boolean {
  return (b < 0x20 && !isSpace(b)) || b >= 0xfe;
}

/** Where a bare top-level scalar (number, keyword, junk) ends. */
function endsScalar(b: number): boolean {
  return (
    isSpace(b) || isReset(b) || b === OPEN_BRACE || b === OPEN_BRACKET || b === CLOSE_BRACE ||
    b === CLOSE_BRACKET || b === QUOTE || b === COMMA || b === COLON
  );
}

const SCALAR_ERROR = 'JSON scalar outside an object or array';

export class JsonStreamSplitter {
  readonly maxBytes: number;
  readonly maxDepth: number;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  private mode: Mode = 'idle';
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** The current value's bytes from earlier chunks. */
  private parts: Buffer[] = [];
  private length = 0;

  constructor(options: JsonStreamOptions = {}) {
    this.maxBytes = options.maxBytes ?? 1 << 20;
    this.maxDepth = options.maxDepth ?? 1024;
    // The smallest values, "{}" and "[]", need 2 bytes and 1 level.
    if (!Number.isInteger(this.maxBytes) || this.maxBytes < 2) throw new RangeError(`bad maxBytes ${this.maxBytes}`);
    if (!Number.isInteger(this.maxDepth) || this.maxDepth < 1) throw new RangeError(`bad maxDepth ${this.maxDepth}`);
  }

  /** Feed the next bytes; returns the values (or errors) completed by them, in order. */
  push(chunk: Buffer | string): JsonStreamItem[] {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    const out: JsonStreamItem[] = [];
    /** Start in `buf` of the current value's bytes, while mode is 'value'. */
    let start = 0;

    for (let i = 0; i < buf.length; i++) {
      const b = buf[i];

      if (isReset(b)) {
        if (this.mode === 'value' || this.mode === 'scalar') {
          out.push({ error: `invalid byte 0x${b.toString(16).padStart(2, '0')} in JSON input; value discarded` });
        }
        this.reset();
        continue;
      }

      switch (this.mode) {
        case 'idle':
          if (isSpace(b)) break;
          if (b === OPEN_BRACE || b === OPEN_BRACKET) {
            this.mode = 'value';
            this.depth = 1;
            this.length = 1;
            start = i;
          } else if (b === CLOSE_BRACE || b === CLOSE_BRACKET || b === COMMA || b === COLON) {
            // Reported at once: waiting for more input would only delay it.
            out.push({ error: `unexpected '${String.fromCharCode(b)}' outside an object or array` });
          } else {
            this.mode = 'scalar';
            this.inString = b === QUOTE;
          }
          break;

        case 'scalar':
          if (this.inString) {
            if (this.scanString(b)) break;
            out.push({ error: SCALAR_ERROR });
            this.mode = 'idle';
            this.inString = false;
          } else if (endsScalar(b)) {
            out.push({ error: SCALAR_ERROR });
            this.mode = 'idle';
            i--; // this byte starts whatever comes next
          }
          break;

        case 'value':
          if (++this.length > this.maxBytes) {
            this.fail(out, `JSON value longer than ${this.maxBytes} bytes`);
            i--; // let skip mode track this byte's string and nesting state
            break;
          }
          if (!this.track(b)) break;
          if (this.depth > this.maxDepth) {
            this.fail(out, `JSON value nested deeper than ${this.maxDepth} levels`);
          } else if (this.depth === 0) {
            this.parts.push(buf.subarray(start, i + 1));
            out.push(this.finish());
          }
          break;

        case 'skip':
          if (this.track(b) && this.depth === 0) this.mode = 'idle';
          break;
      }
    }

    if (this.mode === 'value') {
      // Copy: the caller may reuse its read buffer.
      this.parts.push(Buffer.from(buf.subarray(start)));
    }
    return out;
  }

  /**
   * The stream has ended: report an unfinished value or scalar, if any, and
   * start afresh.
   */
  end(): JsonStreamItem[] {
    const out: JsonStreamItem[] = [];
    if (this.mode === 'value') out.push({ error: 'JSON value incomplete at end of input' });
    // A bare scalar may simply not have seen its terminator yet.
    if (this.mode === 'scalar') out.push({ error: SCALAR_ERROR });
    this.reset();
    return out;
  }

  /** Drop any partial value and start afresh. */
  reset(): void {
    this.mode = 'idle';
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    this.parts = [];
    this.length = 0;
  }

  /**
   * Update string and nesting state for byte `b` of a value; returns whether
   * the depth changed.
   */
  private track(b: number): boolean {
    if (this.inString) {
      this.inString = this.scanString(b);
      return false;
    }
    if (b === QUOTE) {
      this.inString = true;
    } else if (b === OPEN_BRACE || b === OPEN_BRACKET) {
      this.depth++;
      return true;
    } else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
      // A single count, as mismatched pairs ("{]") are left for JSON.parse to reject.
      this.depth--;
      return true;
    }
    return false;
  }

  /** Byte `b` inside a string; returns whether the string goes on. */
  private scanString(b: number): boolean {
    if (this.escaped) {
      this.escaped = false;
    } else if (b === BACKSLASH) {
      this.escaped = true;
    } else if (b === QUOTE) {
      return false;
    }
    return true;
  }

  /** Report an error for the current value and skip the rest of it. */
  private fail(out: JsonStreamItem[], error: string): void {
    out.push({ error });
    this.mode = 'skip';
    this.parts = [];
    this.length = 0;
  }

  private finish(): JsonStreamItem {
    const bytes = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
    this.reset();
    let text: string;
    try {
      text = this.decoder.decode(bytes);
    } catch {
      return { error: 'invalid UTF-8 in JSON value' };
    }
    try {
      return { value: JSON.parse(text) };
    } catch (err) {
      // V8 quotes the input in some messages; keep the error on one line.
      return { error: `invalid JSON: ${(err as Error).message.replace(/\s+/g, ' ')}` };
    }
  }
}
