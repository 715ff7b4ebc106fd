// One end of a vhost-user socket: reads exactly one header (with its fds) and
// then exactly its body, hands complete raw messages up, and sends messages
// with fds. Owns the socket fd and every fd received until it is handed up.
import { MessageReader, ProtocolError, RawMessage } from '../../protocol';
import { POLL_READABLE, POLL_WRITABLE, Watcher, native } from '../native/addon';

export interface EndpointEvents {
  message(raw: RawMessage): void;
  /** Malformed input; the endpoint closes right after. The error's fds are already closed. */
  protocolError(error: ProtocolError): void;
  /** The peer hung up or the socket failed; called once. */
  closed(reason: string): void;
}

const READ_BUFFER_SIZE = 4096;

export class Endpoint {
  private readonly reader: MessageReader;
  private readonly buf = new Uint8Array(READ_BUFFER_SIZE);
  private readonly fds: number[] = [];
  private watcher: Watcher | undefined;
  private pendingOut: Array<{ bytes: Uint8Array; fds: number[] | null; fdsSent?: () => void }> = [];
  private isClosed = false;

  constructor(readonly fd: number, private readonly events: EndpointEvents, maxPayloadSize = 4096) {
    this.reader = new MessageReader({ maxPayloadSize });
  }

  get closed(): boolean { return this.isClosed; }

  start(): void {
    this.watcher = native.watch(this.fd, POLL_READABLE, (ev) => this.onReady(ev));
  }

  private onReady(events: number): void {
    if (this.isClosed) return;
    if (events < 0) return this.close(`socket error errno=${-events}`);
    if (events & POLL_WRITABLE) this.flushOut();
    if (events & POLL_READABLE) this.readAvailable();
  }

  private readAvailable(): void {
    while (!this.isClosed) {
      const want = Math.min(this.reader.needed, READ_BUFFER_SIZE);
      if (want === 0) return this.close('message reader stopped');
      let n: number;
      this.fds.length = 0;
      try {
        n = native.recvmsg(this.fd, this.buf, 0, want, this.fds);
      } catch (e) {
        return this.close(`recvmsg failed: ${(e as Error).message}`);
      }
      if (n < 0) return;
      if (n === 0) {
        for (const fd of this.fds) native.close(fd);
        return this.close(this.reader.idle ? 'peer closed the connection' : 'peer closed the connection mid-message');
      }
      const r = this.reader.feed(this.buf.subarray(0, n), this.fds);
      if (r.type === 'error') {
        for (const fd of r.error.fds) native.close(fd);
        this.events.protocolError(r.error);
        return this.close(`protocol error: ${r.error.message}`);
      }
      if (r.type === 'message') this.events.message(r.raw);
    }
  }

  /**
   * Send one encoded message; fds are duplicated into the peer, the caller keeps its own.
   * A message may wait for the socket to drain, and its fds must stay open until then:
   * `fdsSent` is called once they went out (with the first bytes) or never will
   * (the endpoint closed), so a caller handing fds over knows when to close them.
   */
  send(bytes: Uint8Array, fds: number[] | null = null, fdsSent?: () => void): void {
    if (this.isClosed) {
      fdsSent?.();
      return;
    }
    if (this.pendingOut.length > 0) {
      this.pendingOut.push({ bytes, fds, fdsSent });
      return;
    }
    this.trySend(bytes, fds, fdsSent);
  }

  private trySend(bytes: Uint8Array, fds: number[] | null, fdsSent?: () => void): void {
    let off = 0;
    while (off < bytes.length) {
      let n: number;
      try {
        n = native.sendmsg(this.fd, bytes, off, bytes.length - off, off === 0 ? fds : null);
      } catch (e) {
        this.close(`sendmsg failed: ${(e as Error).message}`);
        fdsSent?.();
        return;
      }
      if (n < 0) {
        // Socket buffer full: keep the rest and wait until writable.
        this.pendingOut.unshift(off === 0 ? { bytes, fds, fdsSent } : { bytes: bytes.subarray(off), fds: null });
        this.rewatch(POLL_READABLE | POLL_WRITABLE);
        return;
      }
      if (off === 0) fdsSent?.();
      off += n;
    }
  }

  private flushOut(): void {
    const queue = this.pendingOut;
    this.pendingOut = [];
    this.rewatch(POLL_READABLE);
    for (let i = 0; i < queue.length; i++) {
      this.trySend(queue[i].bytes, queue[i].fds, queue[i].fdsSent);
      if (this.isClosed) {
        for (const p of queue.slice(i + 1)) p.fdsSent?.();
        return;
      }
      if (this.pendingOut.length > 0) {
        this.pendingOut.push(...queue.slice(i + 1));
        return;
      }
    }
  }

  private rewatch(events: number): void {
    if (this.isClosed) return;
    this.watcher?.stop();
    this.watcher = native.watch(this.fd, events, (ev) => this.onReady(ev));
  }

  close(reason = 'closed locally'): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.watcher?.stop();
    this.watcher = undefined;
    for (const p of this.pendingOut.splice(0)) p.fdsSent?.();
    for (const fd of this.reader.dispose()) native.close(fd);
    native.close(this.fd);
    this.events.closed(reason);
  }
}
