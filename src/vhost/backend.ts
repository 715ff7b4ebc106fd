// The vhost-user back-end state machine for one front-end connection: feature
// negotiation, memory table, vring setup, config space and status. It is
// device-independent; the device model supplies features, config space and
// per-queue request handlers, and a DataPlane runs the started rings.
import {
  BackendRequest as B, FrontendRequest as R, InflightPayload, LogPayload, Message, NEED_REPLY_FLAG, Payload, ProtocolError, ProtocolFeature,
  RawMessage, REPLY_FLAG, VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC, MemoryRegion, bit, decodeFrontendMessage, encodeMessage, frontendRequestName, hasBit,
} from '../../protocol';
import * as fs from 'node:fs';
import { DataPlaneControl } from '../iothread/control';
import { RegionInfo } from '../iothread/messages';
import { GuestMemory } from '../memory/guest-memory';
import { MappedRegion, mapRegion, unmapRegion } from '../memory/mapping';
import { native } from '../native/addon';
import { Endpoint } from '../transport/endpoint';
import { Logger } from '../util/log';
import { MAX_QUEUE_SIZE } from '../virtq/chain';
import { BackendChannel, BackendRequestError, DEFAULT_BACKEND_REPLY_TIMEOUT_MS } from './backend-channel';
import { VhostDeviceModel } from './device';
import { InflightArea, InflightAreaError } from './inflight-area';
import { SharedMapping, mapSharedRange } from './shared-fd';
import { VringState } from './vring';

const PAGE_SIZE = 4096;

function isSocket(fd: number): boolean {
  try {
    return fs.fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

function isEventFd(fd: number): boolean {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]';
  } catch {
    return false;
  }
}

/** Memory slots offered with CONFIGURE_MEM_SLOTS (each is one mapping). */
export const MAX_MEM_SLOTS = 32;

/** Transport features this back-end implements for every device type. */
export const TRANSPORT_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) |
  bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_F_RING_PACKED) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VHOST_F_LOG_ALL);

export const PROTOCOL_FEATURES = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) | bit(ProtocolFeature.RESET_DEVICE) |
  bit(ProtocolFeature.STATUS) | bit(ProtocolFeature.BACKEND_REQ) | bit(ProtocolFeature.INFLIGHT_SHMFD) |
  bit(ProtocolFeature.LOG_SHMFD);

/** Largest dirty log accepted: one bit per 4 KiB page covers 16 TiB of guest memory. */
const MAX_DIRTY_LOG_BYTES = 512 << 20;

/** The migration's dirty log (SET_LOG_BASE), mapped here; iothreads write to it by host address. */
interface DirtyLogArea {
  fd: number;
  mapping: SharedMapping;
  size: number;
}

export interface VhostBackendOptions {
  /** How long a back-end channel request waits for the front-end's REPLY_ACK (default 5 s; 0 waits forever). */
  backendReplyTimeoutMs?: number;
}

/**
 * What a front-end may send before SET_OWNER: feature and protocol
 * negotiation and the back-end channel, as QEMU's vhost_user_backend_init()
 * does; everything that changes the device needs an owner.
 */
const BEFORE_OWNER: ReadonlySet<number> = new Set([
  R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM, R.GET_MAX_MEM_SLOTS,
  R.SET_BACKEND_REQ_FD, R.SET_OWNER, R.RESET_OWNER,
]);

/** A request the back-end refuses; answered with a REPLY_ACK failure or by closing the connection. */
export class RequestRefused extends Error {}

function refuse(message: string): never {
  throw new RequestRefused(message);
}

const NO_REPLY = undefined;

/** A reply that carries fds (GET_INFLIGHT_FD); the back-end keeps them open, the peer gets duplicates. */
interface ReplyWithFds {
  payload: Payload;
  fds: number[];
}

export class VhostBackend {
  private readonly mem = new GuestMemory();
  private readonly mapped: MappedRegion[] = [];
  private readonly vrings: VringState[];
  private features = 0n;
  private protocolFeatures = 0n;
  private status = 0;
  private owned = false;
  /** Control messages are handled strictly one after another, even the ones that wait (GET_VRING_BASE). */
  private queue: Promise<void> = Promise.resolve();
  private torndown = false;
  /** Set by SET_BACKEND_REQ_FD; kept across device resets, closed on teardown. */
  private backendChannel: BackendChannel | undefined;
  /** The config changed while the front-end was still setting up; notify once a ring runs. */
  private configChangePending = false;
  /** Why the last back-end channel closed, for the error of a later request. */
  private backendChannelClosed: string | undefined;
  private readonly backendReplyTimeoutMs: number;
  /** The in-flight region (GET/SET_INFLIGHT_FD); rings started while it is set track their requests in it. */
  private inflight: InflightArea | undefined;
  /** The dirty log of a migration (SET_LOG_BASE); written to while VHOST_F_LOG_ALL is negotiated. */
  private dirtyLog: DirtyLogArea | undefined;
  /** The log the iothreads write to now (its host address), or undefined while they log nothing. */
  private loggingTo: number | undefined;
  /** SET_LOG_FD's eventfd; kept for the front-end, which QEMU does not ask to be signalled. */
  private logEventFd = -1;

  constructor(private readonly endpoint: Endpoint, private readonly device: VhostDeviceModel,
              private readonly dataPlane: DataPlaneControl, private readonly log: Logger, options: VhostBackendOptions = {}) {
    this.vrings = Array.from({ length: device.maxQueues }, (_, i) => new VringState(i));
    this.backendReplyTimeoutMs = options.backendReplyTimeoutMs ?? DEFAULT_BACKEND_REPLY_TIMEOUT_MS;
  }

  /** The driver chose packed rings (QEMU sets features before it asks for the in-flight region or sets up rings). */
  private get packed(): boolean { return hasBit(this.features, VIRTIO_F_RING_PACKED); }

  get offeredFeatures(): bigint { return this.device.deviceFeatures() | TRANSPORT_FEATURES; }

  /** Entry point for each raw message from the endpoint. */
  receive(raw: RawMessage): void {
    const decoded = decodeFrontendMessage(raw);
    if (decoded instanceof ProtocolError) {
      for (const fd of decoded.fds) native.close(fd);
      this.log.error('malformed message; closing connection', {
        request: frontendRequestName(raw.request), kind: decoded.kind, reason: decoded.message,
      });
      this.endpoint.close('malformed message');
      return;
    }
    this.queue = this.queue.then(() => this.dispatch(decoded));
  }

  private async dispatch(msg: Message): Promise<void> {
    if (this.torndown || this.endpoint.closed) {
      for (const fd of msg.fds) native.close(fd);
      return;
    }
    const name = frontendRequestName(msg.request);
    this.log.debug('request', { request: name });
    let reply: Payload | ReplyWithFds | undefined;
    let failure: string | undefined;
    try {
      reply = await this.handle(msg);
    } catch (e) {
      if (!(e instanceof RequestRefused)) this.log.error('internal error handling request', { request: name, error: e as Error });
      failure = (e as Error).message;
    }
    if (reply !== undefined) {
      if ('fds' in reply) this.endpoint.send(encodeMessage(msg.request, REPLY_FLAG, reply.payload), reply.fds);
      else this.endpoint.send(encodeMessage(msg.request, REPLY_FLAG, reply));
      return;
    }
    const ackWanted = (msg.flags & NEED_REPLY_FLAG) !== 0 && hasBit(this.protocolFeatures, ProtocolFeature.REPLY_ACK);
    if (failure !== undefined) {
      this.log.error('request refused', { request: name, reason: failure });
      if (!ackWanted) {
        // Without an ack channel the front-end cannot learn of the failure; a silent
        // failure would leave the guest hanging, so hang up instead (the spec allows it).
        this.endpoint.close(`${name} failed`);
        return;
      }
    }
    if (ackWanted) {
      this.endpoint.send(encodeMessage(msg.request, REPLY_FLAG, { kind: 'u64', value: failure === undefined ? 0n : 1n }));
    }
  }

  private vring(index: number): VringState {
    if (!(index >= 0 && index < this.vrings.length)) refuse(`queue index ${index} out of range (${this.vrings.length} queues)`);
    return this.vrings[index];
  }

  private u64(value: bigint | number): Payload {
    return { kind: 'u64', value: BigInt(value) };
  }

  /** Handle one message; returns the reply payload for requests that have one. */
  private async handle(msg: Message): Promise<Payload | ReplyWithFds | undefined> {
    const p = msg.payload;
    if (!this.owned && !BEFORE_OWNER.has(msg.request)) {
      for (const fd of msg.fds) native.close(fd);
      refuse(`${frontendRequestName(msg.request)} before SET_OWNER`);
    }
    switch (msg.request) {
      case R.GET_FEATURES:
        return this.u64(this.offeredFeatures);
      case R.SET_FEATURES: {
        const value = (p as { value: bigint }).value;
        const unknown = value & ~this.offeredFeatures;
        if (unknown !== 0n) refuse(`features 0x${unknown.toString(16)} were never offered`);
        this.features = value;
        this.device.negotiated(value);
        this.dataPlane.setDeviceState(this.device.state());
        // QEMU starts and ends a migration's dirty logging by setting VHOST_F_LOG_ALL, with the rings running.
        await this.applyDirtyLog();
        return NO_REPLY;
      }
      case R.GET_PROTOCOL_FEATURES:
        return this.u64(PROTOCOL_FEATURES);
      case R.SET_PROTOCOL_FEATURES: {
        const value = (p as { value: bigint }).value;
        const unknown = value & ~PROTOCOL_FEATURES;
        if (unknown !== 0n) refuse(`protocol features 0x${unknown.toString(16)} were never offered`);
        this.protocolFeatures = value;
        return NO_REPLY;
      }
      case R.SET_OWNER:
        this.owned = true;
        return NO_REPLY;
      case R.RESET_OWNER:
        // The front-end gives the session up; it must SET_OWNER again before changing anything.
        await this.resetDevice();
        this.owned = false;
        return NO_REPLY;
      case R.RESET_DEVICE:
        await this.resetDevice();
        return NO_REPLY;
      case R.GET_QUEUE_NUM:
        return this.u64(this.device.maxQueues);
      case R.GET_MAX_MEM_SLOTS:
        return this.u64(MAX_MEM_SLOTS);
      case R.SET_MEM_TABLE:
        await this.setMemTable((p as { regions: MemoryRegion[] }).regions, msg.fds);
        return NO_REPLY;
      case R.ADD_MEM_REG:
        await this.addMemRegion((p as { region: MemoryRegion }).region, msg.fds);
        return NO_REPLY;
      case R.REM_MEM_REG:
        for (const fd of msg.fds) native.close(fd);
        await this.removeMemRegion((p as { region: MemoryRegion }).region);
        return NO_REPLY;
      case R.SET_VRING_NUM: {
        const { index, num } = p as { index: number; num: number };
        const vr = this.vring(index);
        if (!(num >= 1 && num <= MAX_QUEUE_SIZE && (num & (num - 1)) === 0)) refuse(`queue size ${num} is not a power of two in 1..${MAX_QUEUE_SIZE}`);
        if (vr.started) refuse(`queue ${index} is running`);
        vr.size = num;
        return NO_REPLY;
      }
      case R.SET_VRING_ADDR:
        this.setVringAddr(p as { index: number; descUserAddr: number; usedUserAddr: number; availUserAddr: number });
        return NO_REPLY;
      case R.SET_VRING_BASE: {
        const { index, num } = p as { index: number; num: number };
        const vr = this.vring(index);
        if (vr.started) refuse(`queue ${index} is running`);
        // A packed ring's base carries both positions with their wrap counters (bit 15 of each half).
        if (num > 0xffff && !this.packed) refuse(`base index ${num} does not fit a split ring`);
        vr.base = num;
        return NO_REPLY;
      }
      case R.GET_VRING_BASE: {
        const { index } = p as { index: number };
        const vr = this.vring(index);
        const next = await this.stopRing(vr);
        return { kind: 'vringState', index, num: next };
      }
      case R.SET_VRING_KICK:
        await this.setVringKick(p as { index: number; noFd: boolean }, msg.fds);
        return NO_REPLY;
      case R.SET_VRING_CALL: {
        const vr = this.vringFdTarget(p as { index: number; noFd: boolean }, msg.fds);
        const fd = this.fdOf(p as { noFd: boolean }, msg.fds);
        // The old fd is closed only once the iothread stopped using it.
        if (vr.started) await this.dataPlane.setCallFd(vr.index, fd);
        vr.callFd = VringState.swapFd(vr.callFd, fd);
        return NO_REPLY;
      }
      case R.SET_VRING_ERR: {
        const vr = this.vringFdTarget(p as { index: number; noFd: boolean }, msg.fds);
        const fd = this.fdOf(p as { noFd: boolean }, msg.fds);
        if (vr.started) await this.dataPlane.setErrFd(vr.index, fd);
        vr.errFd = VringState.swapFd(vr.errFd, fd);
        return NO_REPLY;
      }
      case R.SET_VRING_ENABLE: {
        const { index, num } = p as { index: number; num: number };
        const vr = this.vring(index);
        if (num > 1) refuse(`SET_VRING_ENABLE value ${num} is neither 0 nor 1`);
        vr.enabled = num === 1;
        this.dataPlane.setEnabled(index, vr.enabled);
        return NO_REPLY;
      }
      case R.GET_CONFIG: {
        const c = p as { offset: number; size: number; flags: number };
        return { kind: 'config', offset: c.offset, size: c.size, flags: c.flags, data: this.device.readConfig(c.offset, c.size) };
      }
      case R.SET_CONFIG: {
        const c = p as { offset: number; data: Uint8Array };
        if (!this.device.writeConfig(c.offset, c.data)) refuse(`config write of ${c.data.length} bytes at offset ${c.offset} refused`);
        this.dataPlane.setDeviceState(this.device.state());
        return NO_REPLY;
      }
      case R.SET_STATUS: {
        const value = (p as { value: bigint }).value;
        if (value > 0xffn) refuse(`device status 0x${value.toString(16)} does not fit a byte`);
        this.status = Number(value);
        return NO_REPLY;
      }
      case R.GET_STATUS:
        return this.u64(this.status);
      case R.SET_BACKEND_REQ_FD:
        this.setBackendReqFd(msg.fds[0]);
        return NO_REPLY;
      case R.SET_LOG_BASE:
        return this.setLogBase(p as LogPayload, msg.fds[0]);
      case R.SET_LOG_FD: {
        const fd = msg.fds[0];
        if (!isEventFd(fd)) {
          native.close(fd);
          refuse('SET_LOG_FD without an eventfd');
        }
        this.logEventFd = VringState.swapFd(this.logEventFd, fd);
        return NO_REPLY;
      }
      case R.GET_INFLIGHT_FD:
        return this.getInflightFd(p as InflightPayload);
      case R.SET_INFLIGHT_FD:
        this.setInflightFd(p as InflightPayload, msg.fds[0]);
        return NO_REPLY;
      default:
        for (const fd of msg.fds) native.close(fd);
        refuse(`${frontendRequestName(msg.request)} is not supported`);
    }
  }

  /**
   * QEMU sends this right after SET_PROTOCOL_FEATURES, before SET_FEATURES, so
   * only the protocol feature can be checked. A refused fd is closed.
   */
  private setBackendReqFd(fd: number): void {
    const bad = !hasBit(this.protocolFeatures, ProtocolFeature.BACKEND_REQ) ? 'the BACKEND_REQ protocol feature was not negotiated'
      : !isSocket(fd) ? 'the back-end channel fd is not a socket' : undefined;
    if (bad !== undefined) {
      native.close(fd);
      refuse(bad);
    }
    // Requests still waiting on an old channel fail with it.
    this.backendChannel?.close('replaced by a new SET_BACKEND_REQ_FD');
    const channel: BackendChannel = new BackendChannel(fd, this.backendReplyTimeoutMs, this.log.child({ channel: 'backend' }), (reason) => {
      if (this.backendChannel !== channel) return;
      this.backendChannel = undefined;
      this.backendChannelClosed = reason;
      this.log.info('back-end channel closed', { reason });
    });
    this.backendChannel = channel;
    this.backendChannelClosed = undefined;
  }

  /** Why the in-flight region cannot be replaced now; undefined when it can. */
  private inflightBlocked(): string | undefined {
    if (!hasBit(this.protocolFeatures, ProtocolFeature.INFLIGHT_SHMFD)) return 'the INFLIGHT_SHMFD protocol feature was not negotiated';
    // Running rings have the current region mapped on their iothreads; QEMU only sends these with every ring stopped.
    const running = this.vrings.filter((v) => v.started).map((v) => v.index);
    if (running.length > 0) return `queues ${running.join(',')} are running`;
    return undefined;
  }

  /**
   * GET_INFLIGHT_FD: a fresh, zeroed region for the front-end to keep. A failure
   * is answered as libvhost-user does, with mmap_size 0 (QEMU then runs
   * without in-flight tracking), and logged.
   */
  private getInflightFd(req: InflightPayload): Payload | ReplyWithFds {
    const blocked = this.inflightBlocked();
    let area: InflightArea | undefined;
    let why = blocked;
    if (blocked === undefined) {
      try {
        area = InflightArea.create(req.numQueues, req.queueSize, this.vrings.length, this.packed);
      } catch (e) {
        if (!(e instanceof InflightAreaError)) throw e;
        why = e.message;
      }
    }
    if (area === undefined) {
      this.log.error('cannot provide an in-flight region; the front-end goes without', { reason: why, numQueues: req.numQueues, queueSize: req.queueSize });
      return { kind: 'inflight', mmapSize: 0, mmapOffset: 0, numQueues: req.numQueues, queueSize: req.queueSize };
    }
    this.replaceInflight(area);
    this.log.debug('in-flight region created', { numQueues: area.numQueues, queueSize: area.queueSize, bytes: area.mmapSize });
    return { payload: area.payload(), fds: [area.fd] };
  }

  /** SET_INFLIGHT_FD: adopt the region the front-end kept (after a reconnect it holds the previous process's requests). */
  private setInflightFd(p: InflightPayload, fd: number): void {
    const blocked = this.inflightBlocked();
    if (blocked !== undefined) {
      native.close(fd);
      refuse(`in-flight region refused: ${blocked}`);
    }
    let area: InflightArea;
    try {
      area = InflightArea.adopt(fd, p, this.vrings.length, this.packed);
    } catch (e) {
      if (!(e instanceof InflightAreaError)) throw e;
      refuse(`in-flight region refused: ${e.message}`);
    }
    this.replaceInflight(area);
    this.log.debug('in-flight region set', { numQueues: area.numQueues, queueSize: area.queueSize, mmapSize: p.mmapSize, mmapOffset: p.mmapOffset });
  }

  private replaceInflight(area: InflightArea | undefined): void {
    this.inflight?.close();
    this.inflight = area;
  }

  /**
   * Tell the front-end that the device config space changed (a resized disk), so
   * that it reads it again with GET_CONFIG and interrupts the guest. With
   * REPLY_ACK negotiated this resolves on the front-end's ack — QEMU answers after
   * its own GET_CONFIG, which this back-end serves meanwhile — otherwise once the
   * message is sent. Rejects with a BackendRequestError.
   */
  notifyConfigChange(): Promise<void> {
    const channel = this.backendChannel;
    if (channel === undefined && this.backendChannelClosed === undefined && !this.vrings.some((v) => v.started)) {
      // Still setting up (QEMU reconnecting, say): the channel and the device's start are
      // yet to come, and QEMU does not read config space again on its own. Tell it once a ring runs.
      this.configChangePending = true;
      return Promise.resolve();
    }
    if (channel === undefined) {
      const why = this.backendChannelClosed === undefined
        ? 'the front-end did not set up the back-end channel (SET_BACKEND_REQ_FD)'
        : `the back-end channel is closed (${this.backendChannelClosed})`;
      return Promise.reject(new BackendRequestError(`cannot notify the front-end of a config change: ${why}`, 'no-channel'));
    }
    if (!hasBit(this.protocolFeatures, ProtocolFeature.CONFIG)) {
      // The spec sends CONFIG_CHANGE_MSG only with CONFIG: without it the front-end cannot read the new config.
      return Promise.reject(new BackendRequestError(
        'cannot notify the front-end of a config change: the CONFIG protocol feature was not negotiated', 'not-negotiated'));
    }
    const needReply = hasBit(this.protocolFeatures, ProtocolFeature.REPLY_ACK);
    return channel.request(B.CONFIG_CHANGE_MSG, { kind: 'none' }, needReply);
  }

  /**
   * The vring of a KICK/CALL/ERR message, after checking its fd: it must be an
   * eventfd (anything else fails on first use, on an iothread). A refused
   * message must not leak the fd.
   */
  private vringFdTarget(p: { index: number }, fds: number[]): VringState {
    const bad = !(p.index >= 0 && p.index < this.vrings.length) ? `queue index ${p.index} out of range (${this.vrings.length} queues)`
      : fds.length > 0 && !isEventFd(fds[0]) ? 'the fd is not an eventfd' : undefined;
    if (bad !== undefined) {
      for (const fd of fds) native.close(fd);
      refuse(bad);
    }
    return this.vrings[p.index];
  }

  /** The fd a KICK/CALL/ERR message carries, or -1 for "no fd" (the codec checked they agree). */
  private fdOf(p: { noFd: boolean }, fds: number[]): number {
    return p.noFd ? -1 : fds[0];
  }

  private setVringAddr(a: { index: number; descUserAddr: number; usedUserAddr: number; availUserAddr: number }): void {
    const vr = this.vring(a.index);
    if (vr.size === 0) refuse(`queue ${a.index}: SET_VRING_ADDR before SET_VRING_NUM`);
    // Packed rings: "avail" and "used" are the driver and device event suppression areas.
    const desc = this.mem.userToGuest(a.descUserAddr, 16 * vr.size);
    const avail = this.mem.userToGuest(a.availUserAddr, this.packed ? 4 : 6 + 2 * vr.size);
    const used = this.mem.userToGuest(a.usedUserAddr, this.packed ? 4 : 6 + 8 * vr.size);
    if (desc < 0 || avail < 0 || used < 0) refuse(`queue ${a.index}: ring addresses outside the memory table`);
    if (vr.started) {
      // QEMU sends the addresses again to switch VHOST_VRING_F_LOG at the start and end
      // of a migration, rings running. Used-ring writes are logged by guest address
      // whenever the log is on, so only a change of address would matter, and that needs a stop.
      if (desc !== vr.descAddr || avail !== vr.availAddr || used !== vr.usedAddr) refuse(`queue ${a.index} is running`);
      return;
    }
    vr.descAddr = desc;
    vr.availAddr = avail;
    vr.usedAddr = used;
  }

  private async setVringKick(k: { index: number; noFd: boolean }, fds: number[]): Promise<void> {
    const vr = this.vringFdTarget(k, fds);
    // Without a kick fd the back-end would have to poll the ring; not offered.
    if (k.noFd) refuse(`queue ${k.index}: polling mode (kick without fd) is not supported`);
    if (vr.started) {
      await this.dataPlane.setKickFd(vr.index, fds[0]);
      vr.kickFd = VringState.swapFd(vr.kickFd, fds[0]);
      return;
    }
    vr.kickFd = VringState.swapFd(vr.kickFd, fds[0]);
    if (vr.size === 0 || !vr.addressed) refuse(`queue ${k.index}: kick before size and addresses`);
    // Without protocol features a ring is enabled when it starts; with them it waits for SET_VRING_ENABLE.
    if (!hasBit(this.features, VHOST_USER_F_PROTOCOL_FEATURES)) vr.enabled = true;
    const inflight = this.inflight?.queueRegion(vr.index);
    if (this.inflight !== undefined) {
      if (inflight === undefined) {
        this.log.warn('queue beyond the in-flight region runs untracked', { queue: vr.index, regionQueues: this.inflight.numQueues });
      } else if (vr.size > inflight.queueSize) {
        refuse(`queue ${k.index}: size ${vr.size} exceeds the ${inflight.queueSize} descriptors of the in-flight region`);
      }
    }
    const why = await this.dataPlane.startRing({
      index: vr.index, size: vr.size, descAddr: vr.descAddr, availAddr: vr.availAddr, usedAddr: vr.usedAddr,
      base: vr.base, kickFd: vr.kickFd, callFd: vr.callFd, errFd: vr.errFd, enabled: vr.enabled,
      eventIdx: hasBit(this.features, VIRTIO_RING_F_EVENT_IDX), indirect: hasBit(this.features, VIRTIO_RING_F_INDIRECT_DESC),
      packed: this.packed, ...(inflight === undefined ? {} : { inflight }),
    });
    if (why !== undefined) refuse(why);
    vr.started = true;
    if (this.configChangePending) {
      this.configChangePending = false;
      this.notifyConfigChange().catch((e: Error) => this.log.warn('cannot tell the driver about a config change made during setup', { error: e }));
    }
  }

  /** Stop a ring (waiting for its requests) and return the index to resume from. */
  private async stopRing(vr: VringState): Promise<number> {
    if (vr.started) {
      const next = await this.dataPlane.stopRing(vr.index);
      vr.started = false;
      if (next !== undefined) vr.base = next;
    }
    // The kick fd belongs to this run of the ring; the next start brings a new one.
    vr.kickFd = VringState.swapFd(vr.kickFd, -1);
    return vr.base;
  }

  private mapOne(region: MemoryRegion, fd: number): MappedRegion {
    try {
      if (region.size === 0) refuse('memory region of size 0');
      // The codec takes values below 2^53; a region must also end below it, or its
      // addresses could not be told apart (the u64 front-end view would wrap past 2^64 long after).
      for (const [name, start] of [['guest', region.guestPhysAddr], ['user', region.userAddr], ['mmap offset', region.mmapOffset]] as const) {
        if (start + region.size > Number.MAX_SAFE_INTEGER) refuse(`memory region ${name} range 0x${start.toString(16)}+0x${region.size.toString(16)} runs past 2^53`);
      }
      // QEMU only sends page-aligned regions; ring views rely on the alignment
      // of a region's start carrying over to addresses inside it.
      for (const [name, v] of [['guest address', region.guestPhysAddr], ['user address', region.userAddr],
        ['mmap offset', region.mmapOffset], ['size', region.size]] as const) {
        if (v % PAGE_SIZE !== 0) refuse(`memory region ${name} 0x${v.toString(16)} is not page-aligned`);
      }
      // Touching a mapping beyond the end of its file raises SIGBUS and would kill
      // the server, so a region must lie within its fd.
      const st = fs.fstatSync(fd);
      if (st.isFile() && st.size < region.mmapOffset + region.size) {
        refuse(`memory region at guest 0x${region.guestPhysAddr.toString(16)} extends past the end of its fd (${st.size} bytes)`);
      }
      return mapRegion(fd, { guestPhysAddr: region.guestPhysAddr, size: region.size, userAddr: region.userAddr }, region.mmapOffset);
    } catch (e) {
      if (e instanceof RequestRefused) throw e;
      refuse(`cannot map memory region at guest 0x${region.guestPhysAddr.toString(16)}: ${(e as Error).message}`);
    } finally {
      // The mapping keeps the memory alive; the fd is not needed any more.
      native.close(fd);
    }
  }

  private async setMemTable(regions: MemoryRegion[], fds: number[]): Promise<void> {
    const fresh: MappedRegion[] = [];
    try {
      for (let i = 0; i < regions.length; i++) fresh.push(this.mapOne(regions[i], fds[i]));
    } catch (e) {
      for (let i = fresh.length + 1; i < fds.length; i++) native.close(fds[i]);
      for (const r of fresh) unmapRegion(r);
      throw e;
    }
    const table = new GuestMemory();
    for (const r of fresh) {
      if (!table.add(r)) {
        for (const f of fresh) unmapRegion(f);
        refuse('memory regions overlap');
      }
    }
    const old = this.mem.clear();
    this.mapped.length = 0;
    for (const r of fresh) {
      this.mem.add(r);
      this.mapped.push(r);
    }
    await this.publishMemory(old);
  }

  private async addMemRegion(region: MemoryRegion, fds: number[]): Promise<void> {
    if (this.mapped.length >= MAX_MEM_SLOTS) {
      native.close(fds[0]);
      refuse(`all ${MAX_MEM_SLOTS} memory slots are in use`);
    }
    const r = this.mapOne(region, fds[0]);
    if (!this.mem.add(r)) {
      unmapRegion(r);
      refuse(`memory region at guest 0x${region.guestPhysAddr.toString(16)} overlaps another`);
    }
    this.mapped.push(r);
    await this.publishMemory([]);
  }

  private async removeMemRegion(region: MemoryRegion): Promise<void> {
    const r = this.mem.remove(region.guestPhysAddr, region.size);
    if (r === undefined) refuse(`no memory region at guest 0x${region.guestPhysAddr.toString(16)} of size ${region.size}`);
    this.mapped.splice(this.mapped.indexOf(r as MappedRegion), 1);
    await this.publishMemory([r]);
  }

  /**
   * Give every iothread the current table, then unmap what left it. The reply to
   * the front-end waits for this (vhost-user: the table is in effect when acked),
   * and the iothreads have detached their views of dropped regions by then. A
   * request still in flight into a dropped region ends with EFAULT, not a crash.
   */
  private async publishMemory(dropped: readonly object[]): Promise<void> {
    const table: RegionInfo[] = this.mem.list().map((r) => ({
      guestPhysAddr: r.guestPhysAddr, size: r.size, userAddr: r.userAddr, hostAddr: r.hostAddr,
    }));
    try {
      await this.dataPlane.setMemory(table);
    } finally {
      for (const r of dropped as MappedRegion[]) unmapRegion(r);
    }
  }

  /**
   * SET_LOG_BASE (with LOG_SHMFD): map the new log, move the iothreads to it if
   * logging is on, and only then reply and unmap the old one: every mark made
   * before the reply is in the old log, which the front-end reads once more
   * after the reply, and every later one in the new log. Nothing is lost.
   */
  private async setLogBase(p: LogPayload, fd: number): Promise<Payload> {
    const why = !hasBit(this.protocolFeatures, ProtocolFeature.LOG_SHMFD) ? 'SET_LOG_BASE without the LOG_SHMFD protocol feature'
      : p.mmapSize === 0 || p.mmapSize > MAX_DIRTY_LOG_BYTES ? `dirty log of ${p.mmapSize} bytes (1..${MAX_DIRTY_LOG_BYTES})`
        : undefined;
    let mapping: SharedMapping | undefined;
    try {
      if (why === undefined) mapping = mapSharedRange(fd, p.mmapOffset, p.mmapSize, 'dirty log');
    } catch (e) {
      native.close(fd);
      refuse((e as Error).message);
    }
    if (mapping === undefined) {
      native.close(fd);
      refuse(why!);
    }
    const old = this.dirtyLog;
    this.dirtyLog = { fd, mapping, size: p.mmapSize };
    await this.applyDirtyLog();
    if (old !== undefined) releaseDirtyLog(old);
    this.log.info('dirty log set', { bytes: p.mmapSize, coversMiB: (p.mmapSize * 8 * 4096) / (1 << 20), logging: this.loggingTo !== undefined });
    return this.u64(0);
  }

  /** Point the iothreads at the dirty log while VHOST_F_LOG_ALL is negotiated and a log is set; stop them otherwise. */
  private async applyDirtyLog(): Promise<void> {
    const want = hasBit(this.features, VHOST_F_LOG_ALL) && this.dirtyLog !== undefined ? this.dirtyLog : undefined;
    if (want?.mapping.hostAddr === this.loggingTo) return;
    if (hasBit(this.features, VHOST_F_LOG_ALL) && want === undefined) this.log.warn('VHOST_F_LOG_ALL without a dirty log: nothing is logged');
    await this.dataPlane.setDirtyLog(want === undefined ? undefined : { hostAddr: want.mapping.hostAddr, size: want.size });
    if ((this.loggingTo === undefined) !== (want === undefined)) this.log.info(want === undefined ? 'dirty logging stopped' : 'dirty logging started');
    this.loggingTo = want?.mapping.hostAddr;
  }

  /** Stop logging and let the log go (device reset, connection gone). */
  private async dropDirtyLog(): Promise<void> {
    this.features &= ~bit(VHOST_F_LOG_ALL);
    await this.applyDirtyLog();
    if (this.dirtyLog !== undefined) releaseDirtyLog(this.dirtyLog);
    this.dirtyLog = undefined;
    this.logEventFd = VringState.swapFd(this.logEventFd, -1);
  }

  private async resetDevice(): Promise<void> {
    for (const vr of this.vrings) {
      await this.stopRing(vr);
      vr.enabled = false;
      vr.base = 0;
      vr.size = 0;
      vr.descAddr = vr.availAddr = vr.usedAddr = -1;
    }
    await this.dropDirtyLog();
    this.features = 0n;
    this.status = 0;
    // Its state describes rings that no longer exist; QEMU gets a new one before the next start.
    this.replaceInflight(undefined);
    this.device.reset();
    this.dataPlane.setDeviceState(this.device.state());
  }

  /** The connection is gone: stop rings, unmap memory, close every fd. */
  async teardown(): Promise<void> {
    if (this.torndown) return;
    this.torndown = true;
    this.backendChannel?.close('connection closed');
    await this.queue.catch(() => undefined);
    for (const vr of this.vrings) {
      if (vr.started) await this.dataPlane.stopRing(vr.index).catch((e: Error) => this.log.error('stopping ring failed', { queue: vr.index, error: e }));
      vr.started = false;
      vr.closeFds();
    }
    await this.dropDirtyLog().catch((e: Error) => this.log.error('releasing the dirty log failed', { error: e }));
    const dropped = this.mem.clear();
    this.mapped.length = 0;
    await this.publishMemory(dropped).catch((e: Error) => this.log.error('releasing guest memory failed', { error: e }));
    // The rings are stopped: no iothread holds a view of the region any more.
    this.replaceInflight(undefined);
    this.owned = false;
  }

  /** For diagnostics and tests. */
  get state(): { owned: boolean; features: bigint; protocolFeatures: bigint; regions: number; started: number[]; backendChannel: boolean } {
    return {
      owned: this.owned, features: this.features, protocolFeatures: this.protocolFeatures,
      regions: this.mem.regionCount, started: this.vrings.filter((v) => v.started).map((v) => v.index),
      backendChannel: this.backendChannel !== undefined,
    };
  }
}

function releaseDirtyLog(area: DirtyLogArea): void {
  native.munmap(area.mapping.mapAddr, area.mapping.mapLength);
  native.close(area.fd);
}
