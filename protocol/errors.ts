// Errors for malformed input. Decoders return these instead of throwing so a
// hostile or buggy peer can never crash the server; the caller closes the
// connection and the fds carried here.

export type ProtocolErrorKind =
  | 'bad-version' // header version bits are not 1
  | 'reserved-flags' // header flag bits beyond NEED_REPLY are set
  | 'bad-reply-flag' // REPLY set on a request, or missing/extra flags on a reply
  | 'payload-too-large' // header size exceeds the reader's limit
  | 'bad-size' // payload length does not match the request's layout
  | 'bad-fd-count' // wrong number of fds for the request
  | 'too-many-fds' // more fds than the reader accepts per message
  | 'too-many-regions' // SET_MEM_TABLE with more than 8 regions
  | 'unknown-request' // request number not in the spec (or not valid here)
  | 'unexpected-reply' // reply for a different request than the one awaited
  | 'out-of-range' // a u64 that must be a JS number is >= 2^53
  | 'reserved-bits' // a payload sets bits the spec reserves
  | 'fds-mid-message' // fds arrived with body bytes, not with the header
  | 'reader-closed'; // input after the reader already failed

export interface ProtocolErrorOptions {
  request?: number;
  fds?: readonly number[];
}

export class ProtocolError extends Error {
  readonly kind: ProtocolErrorKind;
  readonly request?: number;
  /** Fds that came with the bad message; ownership passes to whoever handles the error. */
  readonly fds: number[];

  constructor(kind: ProtocolErrorKind, message: string, options: ProtocolErrorOptions = {}) {
    super(message);
    this.name = 'ProtocolError';
    this.kind = kind;
    if (options.request !== undefined) this.request = options.request;
    this.fds = options.fds ? [...options.fds] : [];
  }
}
