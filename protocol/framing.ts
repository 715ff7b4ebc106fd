// Incremental framing over a stream socket. SCM_RIGHTS fds ride on the first
// bytes of the sendmsg() that carried them, so fds are only legal while the
// header is being read. `needed` tells the transport how much to read next so
// one read never spans two messages and fds are never attributed to the wrong
// one.
import { ProtocolError } from './errors';
import { HEADER_SIZE, decodeHeader, type Header } from './header';

export interface RawMessage {
  request: number;
  flags: number;
  size: number;
  body: Uint8Array;
  fds: number[];
}

export type FeedResult =
  | { type: 'more' }
  | { type: 'message'; raw: RawMessage }
  | { type: 'error'; error: ProtocolError };

export interface MessageReaderOptions {
  /** Largest body accepted; bigger messages fail as soon as their header is read. */
  maxPayloadSize?: number;
  /** Most fds accepted with one message. */
  maxFds?: number;
}

const MORE: FeedResult = { type: 'more' };

export class MessageReader {
  private readonly maxPayloadSize: number;
  private readonly maxFds: number;
  private readonly headerBytes = new Uint8Array(HEADER_SIZE);
  private headerFill = 0;
  private header: Header | undefined;
  private body = new Uint8Array(0);
  private bodyFill = 0;
  private fds: number[] = [];
  private failed = false;

  constructor(options: MessageReaderOptions = {}) {
    this.maxPayloadSize = options.maxPayloadSize ?? 4096;
    this.maxFds = options.maxFds ?? 32;
    for (const [name, value] of [['maxPayloadSize', this.maxPayloadSize], ['maxFds', this.maxFds]] as const) {
      if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer`);
    }
  }

  /** Bytes to read next; 0 once the reader has failed. */
  get needed(): number {
    if (this.failed) return 0;
    return this.header === undefined ? HEADER_SIZE - this.headerFill : this.header.size - this.bodyFill;
  }

  /**
   * Give up on the stream (the connection is closing): returns the fds held for
   * a message that never completed, for the caller to close.
   */
  dispose(): number[] {
    const fds = this.fds;
    this.fds = [];
    this.failed = true;
    return fds;
  }

  /** True between messages, i.e. EOF here is a clean close rather than a truncated message. */
  get idle(): boolean {
    return !this.failed && this.header === undefined && this.headerFill === 0 && this.fds.length === 0;
  }

  /**
   * `chunk` may be a view into a buffer the caller reuses; the reader copies
   * what it keeps. Ownership of `fds` passes to the reader, which hands them
   * on in the message or the error.
   */
  feed(chunk: Uint8Array, fds: readonly number[] = []): FeedResult {
    if (this.failed) {
      return this.error(new ProtocolError('reader-closed', 'input after a protocol error', { fds }));
    }
    if (chunk.length > this.needed) {
      throw new RangeError(`fed ${chunk.length} bytes but only ${this.needed} were asked for`);
    }
    if (this.header === undefined) return this.feedHeader(chunk, fds);
    return this.feedBody(chunk, fds);
  }

  private feedHeader(chunk: Uint8Array, fds: readonly number[]): FeedResult {
    this.fds.push(...fds);
    if (this.fds.length > this.maxFds) {
      return this.fail('too-many-fds', `${this.fds.length} fds with one message, at most ${this.maxFds} allowed`);
    }
    this.headerBytes.set(chunk, this.headerFill);
    this.headerFill += chunk.length;
    if (this.headerFill < HEADER_SIZE) return MORE;

    const header = decodeHeader(this.headerBytes);
    if (header instanceof ProtocolError) {
      return this.error(new ProtocolError(header.kind, header.message, { request: header.request, fds: this.takeFds() }));
    }
    if (header.size > this.maxPayloadSize) {
      return this.fail(
        'payload-too-large',
        `payload of ${header.size} bytes exceeds the limit of ${this.maxPayloadSize}`,
        header.request,
      );
    }
    this.header = header;
    this.body = new Uint8Array(header.size);
    this.bodyFill = 0;
    return header.size === 0 ? this.complete() : MORE;
  }

  private feedBody(chunk: Uint8Array, fds: readonly number[]): FeedResult {
    if (fds.length > 0) {
      this.fds.push(...fds);
      return this.fail('fds-mid-message', `${fds.length} fds arrived with payload bytes`, this.header?.request);
    }
    this.body.set(chunk, this.bodyFill);
    this.bodyFill += chunk.length;
    return this.bodyFill === this.body.length ? this.complete() : MORE;
  }

  private complete(): FeedResult {
    const header = this.header as Header;
    const raw: RawMessage = { ...header, body: this.body, fds: this.takeFds() };
    this.header = undefined;
    this.headerFill = 0;
    this.body = new Uint8Array(0);
    this.bodyFill = 0;
    return { type: 'message', raw };
  }

  private takeFds(): number[] {
    const fds = this.fds;
    this.fds = [];
    return fds;
  }

  private fail(kind: ProtocolError['kind'], message: string, request?: number): FeedResult {
    const options = request === undefined ? { fds: this.takeFds() } : { request, fds: this.takeFds() };
    return this.error(new ProtocolError(kind, message, options));
  }

  private error(error: ProtocolError): FeedResult {
    this.failed = true;
    this.header = undefined;
    this.body = new Uint8Array(0);
    return { type: 'error', error };
  }
}
