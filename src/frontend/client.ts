// vhost-user front-end connection (the role QEMU plays): one request at a
// time, replies matched by request number, REPLY_ACK when negotiated. Every
// failure — a refusal, a malformed reply, a hang-up — rejects the pending call
// with a VhostUserError, so tests can assert on how the back-end reacted.
import {
  FrontendRequest as R, InflightPayload, MemoryRegion, Message, NEED_REPLY_FLAG, Payload, ProtocolError, ProtocolFeature, RawMessage,
  VringAddrPayload, decodeReply, encodeMessage, frontendRequestName, hasBit,
} from '../../protocol';
import { native } from '../native/addon';
import { Endpoint } from '../transport/endpoint';
import { BackendRequestHandlers, BackendRequestServer } from './backend-requests';

export type VhostUserErrorCode =
  | 'closed' // the connection is gone (back-end hung up, or we closed it)
  | 'nack' // REPLY_ACK with a non-zero value
  | 'protocol' // the back-end sent something malformed or unexpected
  | 'timeout'; // no reply in time; the connection is closed

export class VhostUserError extends Error {
  constructor(message: string, readonly code: VhostUserErrorCode, readonly request?: number) {
    super(message);
    this.name = 'VhostUserError';
  }
}

/** How a request is answered. */
export type ReplyKind = 'reply' | 'ack' | 'none';

export interface RequestOptions {
  fds?: number[];
  /** Set NEED_REPLY and wait for the ack; defaults to "REPLY_ACK negotiated and the request has no reply of its own". */
  needReply?: boolean;
  /** Hand `fds` over: the client closes them once they are sent (or cannot be any more). */
  transferFds?: boolean;
  /** Keep the fds of the reply (in the returned message) instead of closing them; the caller owns them. */
  keepReplyFds?: boolean;
}

export interface ClientOptions {
  /** Give up on a reply after this long and close the connection; 0 waits forever. */
  timeoutMs?: number;
}

export interface VringAddr {
  descUserAddr: number;
  usedUserAddr: number;
  availUserAddr: number;
  flags?: number;
  logGuestAddr?: number;
}

interface Waiter {
  request: number;
  resolve(raw: RawMessage): void;
  reject(error: VhostUserError): void;
}

const DEFAULT_TIMEOUT_MS = 30_000;

export class VhostUserClient {
  private readonly endpoint: Endpoint;
  private waiter: Waiter | undefined;
  /** Serialises requests: each waits for the previous one's reply. */
  private lock: Promise<unknown> = Promise.resolve();
  private closeReason: string | undefined;
  private closedLocally = false;
  private resolveClosed!: (reason: string) => void;
  /** Resolves with the reason once the connection is gone, whoever closed it. */
  readonly closed: Promise<string>;
  /** REPLY_ACK is in the acknowledged protocol features. */
  replyAck = false;
  private backendServer: BackendRequestServer | undefined;
  private readonly timeoutMs: number;

  private constructor(fd: number, options: ClientOptions) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.closed = new Promise((r) => { this.resolveClosed = r; });
    this.endpoint = new Endpoint(fd, {
      message: (raw) => this.onMessage(raw),
      protocolError: (err) => this.failWaiter(new VhostUserError(`malformed message from the back-end: ${err.message}`, 'protocol', err.request)),
      closed: (reason) => this.onClosed(reason),
    });
    this.endpoint.start();
  }

  static async connect(socketPath: string, options: ClientOptions = {}): Promise<VhostUserClient> {
    return new VhostUserClient(native.unixConnect(socketPath), options);
  }

  /** Adopt an already connected socket (e.g. one end of a socketpair in tests); the client owns it. */
  static fromFd(fd: number, options: ClientOptions = {}): VhostUserClient {
    return new VhostUserClient(fd, options);
  }

  get isClosed(): boolean { return this.closeReason !== undefined; }

  /** Why the connection ended (undefined while open). */
  get closedReason(): string | undefined { return this.closeReason; }

  /** Our end of the back-end channel, once setBackendReqFd() succeeded. */
  get backendChannel(): BackendRequestServer | undefined { return this.backendServer; }

  close(): void {
    if (this.isClosed) return;
    this.closedLocally = true;
    this.endpoint.close('closed by the front-end');
  }

  // ---- generic requests -------------------------------------------------------

  /**
   * Send one request. `reply` says whether the request has a reply of its own;
   * otherwise the ack is awaited when NEED_REPLY is set. Resolves to the decoded
   * reply (or undefined for ack/none).
   */
  request(request: number, payload: Payload, reply: ReplyKind, options: RequestOptions = {}): Promise<Message | undefined> {
    const needReply = options.needReply ?? (reply !== 'reply' && this.replyAck);
    const expect: ReplyKind = reply === 'reply' ? 'reply' : needReply ? 'ack' : 'none';
    const fds = options.fds ?? null;
    const fdsSent = options.transferFds === true && fds !== null ? once(() => { for (const fd of fds) native.close(fd); }) : undefined;
    return this.serialise(async () => {
      let bytes: Uint8Array;
      try {
        // Encoding inside the task: a payload the codec refuses rejects like any other failure.
        bytes = encodeMessage(request, needReply ? NEED_REPLY_FLAG : 0, payload);
      } catch (e) {
        fdsSent?.();
        throw e;
      }
      if (expect === 'none') {
        this.send(request, bytes, fds, fdsSent);
        return undefined;
      }
      const raw = await this.exchange(request, bytes, fds, fdsSent);
      const msg = decodeReply(request, raw);
      if (msg instanceof ProtocolError) {
        for (const fd of msg.fds) native.close(fd);
        this.endpoint.close('malformed reply');
        throw new VhostUserError(`bad reply to ${frontendRequestName(request)}: ${msg.message}`, 'protocol', request);
      }
      // Unless asked for, a reply's fds are not wanted; do not leak any a back-end sends.
      if (options.keepReplyFds !== true) {
        for (const fd of msg.fds) native.close(fd);
        msg.fds = [];
      }
      if (expect === 'ack') {
        const value = msg.payload.kind === 'u64' ? msg.payload.value : -1n;
        if (value !== 0n) {
          throw new VhostUserError(`${frontendRequestName(request)} refused by the back-end (ack ${value})`, 'nack', request);
        }
        return undefined;
      }
      return msg;
    });
  }

  /**
   * Send arbitrary bytes (malformed messages). With `expectReply`, resolves to the
   * next message from the back-end, undecoded; `request` only names it in errors.
   */
  sendRaw(bytes: Uint8Array, fds: number[] = [], opts: { expectReply?: boolean; request?: number } = {}): Promise<RawMessage | undefined> {
    const request = opts.request ?? -1;
    return this.serialise(async () => {
      if (opts.expectReply !== true) {
        this.send(request, bytes, fds.length > 0 ? fds : null);
        return undefined;
      }
      return this.exchange(request, bytes, fds.length > 0 ? fds : null);
    });
  }

  // ---- the front-end messages ---------------------------------------------------

  async getFeatures(): Promise<bigint> { return this.u64Reply(R.GET_FEATURES); }
  async setFeatures(features: bigint, o?: RequestOptions): Promise<void> { await this.setU64(R.SET_FEATURES, features, o); }
  async getProtocolFeatures(): Promise<bigint> { return this.u64Reply(R.GET_PROTOCOL_FEATURES); }

  async setProtocolFeatures(features: bigint, o?: RequestOptions): Promise<void> {
    await this.setU64(R.SET_PROTOCOL_FEATURES, features, o);
    this.replyAck = hasBit(features, ProtocolFeature.REPLY_ACK);
  }

  async setOwner(o?: RequestOptions): Promise<void> { await this.request(R.SET_OWNER, NONE, 'none', o); }
  async resetOwner(o?: RequestOptions): Promise<void> { await this.request(R.RESET_OWNER, NONE, 'none', o); }
  async resetDevice(o?: RequestOptions): Promise<void> { await this.request(R.RESET_DEVICE, NONE, 'none', o); }
  async getQueueNum(): Promise<number> { return Number(await this.u64Reply(R.GET_QUEUE_NUM)); }
  async getMaxMemSlots(): Promise<number> { return Number(await this.u64Reply(R.GET_MAX_MEM_SLOTS)); }

  /** One fd per region; the back-end gets duplicates, the caller keeps its fds. */
  async setMemTable(regions: MemoryRegion[], fds: number[], o?: RequestOptions): Promise<void> {
    await this.request(R.SET_MEM_TABLE, { kind: 'memoryTable', regions }, 'none', { ...o, fds });
  }

  async addMemReg(region: MemoryRegion, fd: number, o?: RequestOptions): Promise<void> {
    await this.request(R.ADD_MEM_REG, { kind: 'memoryRegion', region }, 'none', { ...o, fds: [fd] });
  }

  /** The spec sends no fd; QEMU up to 8.0 sends the region's fd, which `fd` reproduces. */
  async remMemReg(region: MemoryRegion, fd?: number, o?: RequestOptions): Promise<void> {
    await this.request(R.REM_MEM_REG, { kind: 'memoryRegion', region }, 'none', { ...o, fds: fd === undefined ? [] : [fd] });
  }

  async setVringNum(index: number, num: number, o?: RequestOptions): Promise<void> { await this.setState(R.SET_VRING_NUM, index, num, o); }
  async setVringBase(index: number, num: number, o?: RequestOptions): Promise<void> { await this.setState(R.SET_VRING_BASE, index, num, o); }

  async setVringAddr(index: number, a: VringAddr, o?: RequestOptions): Promise<void> {
    const payload: VringAddrPayload = {
      kind: 'vringAddr', index, flags: a.flags ?? 0, descUserAddr: a.descUserAddr, usedUserAddr: a.usedUserAddr,
      availUserAddr: a.availUserAddr, logGuestAddr: a.logGuestAddr ?? 0,
    };
    await this.request(R.SET_VRING_ADDR, payload, 'none', o);
  }

  /**
   * SET_LOG_BASE with LOG_SHMFD: the dirty log is `size` bytes at `offset` of
   * `fd` (the caller keeps its fd). The back-end always replies: once it has, it
   * writes only to this log.
   */
  async setLogBase(fd: number, size: number, offset = 0): Promise<void> {
    const msg = await this.request(R.SET_LOG_BASE, { kind: 'log', mmapSize: size, mmapOffset: offset }, 'reply', { fds: [fd] });
    const p = (msg as Message).payload;
    if (p.kind !== 'u64' || p.value !== 0n) throw new VhostUserError('SET_LOG_BASE failed', 'nack', R.SET_LOG_BASE);
  }

  async setLogFd(fd: number, o?: RequestOptions): Promise<void> {
    await this.request(R.SET_LOG_FD, NONE, 'none', { ...o, fds: [fd] });
  }

  /** Stops the ring; resolves to the next available index once its requests completed. */
  async getVringBase(index: number): Promise<number> {
    const msg = await this.request(R.GET_VRING_BASE, { kind: 'vringState', index, num: 0 }, 'reply');
    const p = (msg as Message).payload;
    if (p.kind !== 'vringState' || p.index !== index) {
      throw new VhostUserError(`GET_VRING_BASE reply for queue ${p.kind === 'vringState' ? p.index : '?'}, asked for ${index}`, 'protocol', R.GET_VRING_BASE);
    }
    return p.num;
  }

  /** Without `fd` the no-fd bit (polling mode) is sent. */
  async setVringKick(index: number, fd?: number, o?: RequestOptions): Promise<void> { await this.setVringFd(R.SET_VRING_KICK, index, fd, o); }
  async setVringCall(index: number, fd?: number, o?: RequestOptions): Promise<void> { await this.setVringFd(R.SET_VRING_CALL, index, fd, o); }
  async setVringErr(index: number, fd?: number, o?: RequestOptions): Promise<void> { await this.setVringFd(R.SET_VRING_ERR, index, fd, o); }

  async setVringEnable(index: number, enable: boolean, o?: RequestOptions): Promise<void> {
    await this.setState(R.SET_VRING_ENABLE, index, enable ? 1 : 0, o);
  }

  async getConfig(offset: number, size: number, flags = 0): Promise<Uint8Array> {
    const msg = await this.request(R.GET_CONFIG, { kind: 'config', offset, size, flags, data: new Uint8Array(size) }, 'reply');
    const p = (msg as Message).payload;
    // An empty reply is how a back-end says GET_CONFIG failed.
    if (p.kind !== 'config') throw new VhostUserError('GET_CONFIG failed (empty reply)', 'nack', R.GET_CONFIG);
    if (p.offset !== offset || p.size !== size) {
      throw new VhostUserError(`GET_CONFIG reply for ${p.size} bytes at ${p.offset}, asked for ${size} at ${offset}`, 'protocol', R.GET_CONFIG);
    }
    return p.data;
  }

  async setConfig(offset: number, data: Uint8Array, flags = 0, o?: RequestOptions): Promise<void> {
    await this.request(R.SET_CONFIG, { kind: 'config', offset, size: data.length, flags, data }, 'none', o);
  }

  async setStatus(status: number, o?: RequestOptions): Promise<void> { await this.setU64(R.SET_STATUS, BigInt(status), o); }

  /**
   * SET_BACKEND_REQ_FD, as QEMU sets the channel up: a socketpair, one end to
   * the back-end, back-end requests served on the other through `handlers`
   * until either side closes it or this connection ends. Needs BACKEND_REQ
   * negotiated. A previous channel is closed.
   */
  async setBackendReqFd(handlers: BackendRequestHandlers = {}, o?: RequestOptions): Promise<void> {
    const [ours, theirs] = native.socketpair();
    let server: BackendRequestServer;
    try {
      server = new BackendRequestServer(ours, handlers);
    } catch (e) {
      native.close(theirs);
      throw e;
    }
    try {
      await this.request(R.SET_BACKEND_REQ_FD, NONE, 'none', { ...o, fds: [theirs], transferFds: true });
    } catch (e) {
      server.close('SET_BACKEND_REQ_FD failed');
      throw e;
    }
    this.backendServer?.close('replaced by a new SET_BACKEND_REQ_FD');
    this.backendServer = server;
    // The connection may have ended while we waited: nothing may outlive it.
    if (this.isClosed) server.close('vhost-user connection closed');
  }
  async getStatus(): Promise<number> { return Number(await this.u64Reply(R.GET_STATUS)); }

  /**
   * GET_INFLIGHT_FD as QEMU sends it: resolves to the back-end's answer and its
   * memfd (-1 when the back-end answered mmap_size 0, i.e. no region). The caller owns the fd.
   */
  async getInflightFd(numQueues: number, queueSize: number): Promise<{ area: InflightPayload; fd: number }> {
    const msg = await this.request(R.GET_INFLIGHT_FD, { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues, queueSize },
      'reply', { keepReplyFds: true });
    const m = msg as Message;
    return { area: m.payload as InflightPayload, fd: m.fds[0] ?? -1 };
  }

  /** SET_INFLIGHT_FD with the region kept from GET_INFLIGHT_FD (of this or an earlier back-end); the caller keeps `fd`. */
  async setInflightFd(area: InflightPayload, fd: number, o?: RequestOptions): Promise<void> {
    await this.request(R.SET_INFLIGHT_FD, area, 'none', { ...o, fds: [fd] });
  }

  // ---- plumbing -------------------------------------------------------------------

  private async u64Reply(request: number): Promise<bigint> {
    const msg = await this.request(request, NONE, 'reply');
    return ((msg as Message).payload as { value: bigint }).value;
  }

  private async setU64(request: number, value: bigint, o?: RequestOptions): Promise<void> {
    await this.request(request, { kind: 'u64', value }, 'none', o);
  }

  private async setState(request: number, index: number, num: number, o?: RequestOptions): Promise<void> {
    await this.request(request, { kind: 'vringState', index, num }, 'none', o);
  }

  private async setVringFd(request: number, index: number, fd: number | undefined, o?: RequestOptions): Promise<void> {
    await this.request(request, { kind: 'vringFd', index, noFd: fd === undefined }, 'none', { ...o, fds: fd === undefined ? [] : [fd] });
  }

  private serialise<T>(task: () => Promise<T>): Promise<T> {
    const run = this.lock.then(task);
    this.lock = run.catch(() => undefined);
    return run;
  }

  private closedError(request: number, waiting: boolean): VhostUserError {
    const who = this.closedLocally ? 'closed by the front-end' : 'closed by the back-end';
    const what = waiting ? `while waiting for the reply to ${frontendRequestName(request)}` : `before ${frontendRequestName(request)} was sent`;
    return new VhostUserError(`vhost-user connection ${who} ${what} (${this.closeReason})`, 'closed', request);
  }

  private send(request: number, bytes: Uint8Array, fds: number[] | null, fdsSent?: () => void): void {
    if (this.isClosed) {
      fdsSent?.();
      throw this.closedError(request, false);
    }
    this.endpoint.send(bytes, fds, fdsSent);
    // A failed sendmsg closes the endpoint synchronously.
    if (this.isClosed) throw this.closedError(request, false);
  }

  /** Send and wait for the next message from the back-end. */
  private exchange(request: number, bytes: Uint8Array, fds: number[] | null, fdsSent?: () => void): Promise<RawMessage> {
    return new Promise<RawMessage>((resolve, reject) => {
      if (this.isClosed) {
        fdsSent?.();
        return reject(this.closedError(request, false));
      }
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        this.waiter = undefined;
      };
      this.waiter = {
        request,
        resolve: (raw) => { done(); resolve(raw); },
        reject: (err) => { done(); reject(err); },
      };
      if (this.timeoutMs > 0) {
        timer = setTimeout(() => {
          // Reject before closing: the close would otherwise reject with a less precise error.
          this.waiter?.reject(new VhostUserError(`no reply to ${frontendRequestName(request)} within ${this.timeoutMs} ms`, 'timeout', request));
          this.endpoint.close('reply timeout');
        }, this.timeoutMs);
      }
      this.endpoint.send(bytes, fds, fdsSent);
    });
  }

  private onMessage(raw: RawMessage): void {
    const w = this.waiter;
    if (w === undefined) {
      // Back-end requests travel on their own channel; anything here unasked is a protocol violation.
      for (const fd of raw.fds) native.close(fd);
      this.endpoint.close(`unsolicited message ${raw.request} from the back-end`);
      return;
    }
    w.resolve(raw);
  }

  private failWaiter(error: VhostUserError): void {
    this.waiter?.reject(error);
  }

  private onClosed(reason: string): void {
    this.closeReason = reason;
    this.backendServer?.close('vhost-user connection closed');
    const w = this.waiter;
    if (w !== undefined) w.reject(this.closedError(w.request, true));
    this.resolveClosed(reason);
  }
}

const NONE: Payload = { kind: 'none' };

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}
