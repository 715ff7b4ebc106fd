// The front-end's side of the back-end channel (BACKEND_REQ): reads requests
// the back-end sends on its end of our socketpair, handles them one at a time
// and answers REPLY_ACK where NEED_REPLY asks for it, as QEMU's slave_read()
// does: 0 on success, 1 on failure or for requests we do not handle.
import {
  BackendRequest as B, Message, NEED_REPLY_FLAG, ProtocolError, RawMessage, decodeBackendMessage, encodeReplyAck,
} from '../../protocol';
import { native } from '../native/addon';
import { Endpoint } from '../transport/endpoint';

export interface BackendRequestHandlers {
  /**
   * CONFIG_CHANGE_MSG: the device config space changed. A requested reply waits
   * for the returned promise (QEMU answers after its GET_CONFIG); a rejection
   * answers failure.
   */
  configChange?(): void | Promise<void>;
}

export class BackendRequestServer {
  private readonly endpoint: Endpoint;
  /** Requests are handled strictly in order, so their replies leave in order. */
  private queue: Promise<void> = Promise.resolve();
  private closeReason: string | undefined;
  private resolveClosed!: (reason: string) => void;
  /** Resolves with the reason once the channel is gone, whoever closed it. */
  readonly closed: Promise<string>;
  /** Every well-formed request received, oldest first (for tests and diagnostics). */
  readonly received: Message[] = [];

  /** Takes ownership of `fd`, our end of the channel. */
  constructor(fd: number, private readonly handlers: BackendRequestHandlers) {
    this.closed = new Promise((r) => { this.resolveClosed = r; });
    this.endpoint = new Endpoint(fd, {
      message: (raw) => this.onMessage(raw),
      protocolError: () => undefined, // the close reason names it
      closed: (reason) => {
        this.closeReason = reason;
        this.resolveClosed(reason);
      },
    });
    this.endpoint.start();
  }

  get isClosed(): boolean { return this.closeReason !== undefined; }
  get closedReason(): string | undefined { return this.closeReason; }

  close(reason = 'closed by the front-end'): void {
    this.endpoint.close(reason);
  }

  private onMessage(raw: RawMessage): void {
    const msg = decodeBackendMessage(raw);
    if (msg instanceof ProtocolError) {
      for (const fd of msg.fds) native.close(fd);
      this.endpoint.close(`malformed back-end request: ${msg.message}`);
      return;
    }
    // No request we handle takes an fd (VRING_HOST_NOTIFIER_MSG would); do not leak it.
    for (const fd of msg.fds) native.close(fd);
    this.received.push(msg);
    this.queue = this.queue.then(() => this.handle(msg));
  }

  private async handle(msg: Message): Promise<void> {
    let ok = false;
    try {
      if (msg.request === B.CONFIG_CHANGE_MSG) {
        await this.handlers.configChange?.();
        ok = true;
      }
    } catch {
      ok = false;
    }
    if ((msg.flags & NEED_REPLY_FLAG) !== 0) this.endpoint.send(encodeReplyAck(msg.request, ok ? 0n : 1n));
  }
}
