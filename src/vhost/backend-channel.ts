// The back-end channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ): a socket the
// front-end hands over with SET_BACKEND_REQ_FD, on which the back-end sends
// requests (CONFIG_CHANGE_MSG here) and the front-end answers with REPLY_ACKs
// when NEED_REPLY was set. Replies come back in request order on the stream, so
// the awaited requests form a FIFO. Whatever the front-end does on this
// channel can at worst close it: the vhost-user connection itself goes on.
import {
  Payload, ProtocolError, RawMessage, U64_SIZE, backendRequestName, decodeBackendAck, encodeBackendRequest,
} from '../../protocol';
import { native } from '../native/addon';
import { Endpoint } from '../transport/endpoint';
import { Logger } from '../util/log';

export type BackendRequestErrorCode =
  | 'no-channel' // the front-end did not set up the back-end channel (or it is gone)
  | 'not-negotiated' // a protocol feature the request depends on was not negotiated
  | 'nack' // the front-end answered with a non-zero REPLY_ACK
  | 'protocol' // the front-end answered with a malformed reply; the channel is closed
  | 'closed' // the channel closed before the reply arrived
  | 'timeout'; // no reply in time

/** Why a back-end request failed; `code` lets callers (e.g. a monitor command) tell the cases apart. */
export class BackendRequestError extends Error {
  constructor(message: string, readonly code: BackendRequestErrorCode) {
    super(message);
    this.name = 'BackendRequestError';
  }
}

/** How long a back-end request waits for the front-end's REPLY_ACK by default. */
export const DEFAULT_BACKEND_REPLY_TIMEOUT_MS = 5000;

interface Pending {
  request: number;
  /** Undefined once the caller was answered (timeout): the late reply is then only consumed. */
  settle: ((error: BackendRequestError | undefined) => void) | undefined;
}

export class BackendChannel {
  private readonly endpoint: Endpoint;
  /** Requests sent with NEED_REPLY whose reply has not arrived yet, oldest first. */
  private readonly pending: Pending[] = [];

  /**
   * Takes ownership of `fd` (already checked to be a socket). `onClosed` runs
   * once, whoever closes the channel.
   */
  constructor(fd: number, private readonly timeoutMs: number, private readonly log: Logger,
              private readonly onClosed: (reason: string) => void) {
    // QEMU creates the pair blocking; the endpoint's watcher makes our end
    // non-blocking (see native.watch), which its read-until-EAGAIN loop needs.
    // The front-end only ever sends u64 acks here; anything bigger is garbage.
    this.endpoint = new Endpoint(fd, {
      message: (raw) => this.onMessage(raw),
      protocolError: (e) => this.log.error('malformed message on the back-end channel', { kind: e.kind, reason: e.message }),
      closed: (reason) => this.onEndpointClosed(reason),
    }, U64_SIZE);
    this.endpoint.start();
  }

  get closed(): boolean { return this.endpoint.closed; }

  /**
   * Send one back-end request. With `needReply` resolves on a zero REPLY_ACK;
   * without it resolves once the message is handed to the socket.
   */
  request(request: number, payload: Payload, needReply: boolean): Promise<void> {
    const name = backendRequestName(request);
    if (this.endpoint.closed) {
      return Promise.reject(new BackendRequestError(`${name}: the back-end channel is closed`, 'no-channel'));
    }
    const bytes = encodeBackendRequest(request, payload, needReply);
    if (!needReply) {
      this.endpoint.send(bytes);
      // A failed sendmsg closes the endpoint synchronously.
      if (this.endpoint.closed) return Promise.reject(new BackendRequestError(`${name}: the back-end channel closed while sending`, 'closed'));
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const entry: Pending = {
        request,
        settle: (error) => {
          entry.settle = undefined;
          if (timer !== undefined) clearTimeout(timer);
          if (error === undefined) resolve();
          else reject(error);
        },
      };
      this.pending.push(entry);
      if (this.timeoutMs > 0) {
        // The entry stays queued so that its late reply, if any, is not taken for the next one's.
        timer = setTimeout(() => entry.settle?.(new BackendRequestError(
          `${name}: no reply from the front-end within ${this.timeoutMs} ms`, 'timeout')), this.timeoutMs);
      }
      this.endpoint.send(bytes);
    });
  }

  close(reason: string): void {
    this.endpoint.close(reason);
  }

  private onMessage(raw: RawMessage): void {
    const next = this.pending.shift();
    if (next === undefined) {
      for (const fd of raw.fds) native.close(fd);
      this.log.error('unsolicited message on the back-end channel; closing it', { request: raw.request, flags: raw.flags, size: raw.size });
      this.endpoint.close('unsolicited message from the front-end');
      return;
    }
    const name = backendRequestName(next.request);
    const value = decodeBackendAck(next.request, raw);
    if (value instanceof ProtocolError) {
      for (const fd of value.fds) native.close(fd);
      this.log.error('malformed reply on the back-end channel; closing it', { request: name, kind: value.kind, reason: value.message });
      // The entry is already off the queue: close() fails the others, this one here.
      next.settle?.(new BackendRequestError(`${name}: malformed reply from the front-end (${value.message})`, 'protocol'));
      this.endpoint.close(`malformed reply to ${name}`);
      return;
    }
    if (next.settle === undefined) {
      this.log.warn('late reply on the back-end channel', { request: name, ack: value });
      return;
    }
    next.settle(value === 0n ? undefined
      : new BackendRequestError(`${name}: the front-end reported failure (ack ${value})`, 'nack'));
  }

  private onEndpointClosed(reason: string): void {
    for (const p of this.pending.splice(0)) {
      p.settle?.(new BackendRequestError(`${backendRequestName(p.request)}: the back-end channel closed before the reply (${reason})`, 'closed'));
    }
    this.onClosed(reason);
  }
}
