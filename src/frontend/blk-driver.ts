// BlkFrontend: a virtio-blk driver over vhost-user, doing what QEMU and a guest
// kernel do together. connect() runs QEMU's setup sequence; read/write/flush/
// getId build request chains in our own guest RAM and resolve with the status
// byte the device wrote.
import {
  InflightPayload, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC, bit, hasBit,
} from '../../protocol';
import { native } from '../native/addon';
import {
  BLK_CONFIG_SIZE, BLK_ID_BYTES, BLK_LIFETIME_BYTES, BlkConfig, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_LIFETIME, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, decodeBlkConfig, encodeBlkHeader,
} from './blk-spec';
import { VhostUserClient } from './client';
import { DriverQueue, DriverRing, allocateRing } from './driver-queue';
import { PackedDriverQueue, allocatePackedRing } from './packed-driver-queue';
import { GuestRam } from './guest-ram';
import { Completion, RequestPart, RequestQueue, SubmitOptions } from './request-queue';

/** Virtio features this driver understands; a device offering more gets only these. */
export const DRIVER_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX) |
  bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VIRTIO_BLK_F_SIZE_MAX) | bit(VIRTIO_BLK_F_SEG_MAX) |
  bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_CONFIG_WCE) |
  bit(VIRTIO_BLK_F_MQ) | bit(VIRTIO_BLK_F_RO) | bit(VIRTIO_BLK_F_LIFETIME);

/** Protocol features this front-end implements. */
export const FRONTEND_PROTOCOL_FEATURES = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) | bit(ProtocolFeature.RESET_DEVICE) |
  bit(ProtocolFeature.STATUS);

const BASE_STATUS = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

export interface BlkConnectOptions {
  socketPath: string;
  numQueues: number;
  queueSize?: number;
  memoryBytes?: number;
  /** Virtio features the driver asks for; the device's offer is intersected with them. */
  features?: bigint;
  /** Ask for VIRTIO_F_RING_PACKED too (QEMU's packed=on) and drive packed rings when the device offers it. */
  packed?: boolean;
  /** Protocol features to acknowledge (intersected with the offer); e.g. drop CONFIGURE_MEM_SLOTS to get SET_MEM_TABLE. */
  protocolFeatures?: bigint;
  /** Reply timeout of the control connection. */
  timeoutMs?: number;
  /**
   * Negotiate BACKEND_REQ and set up the back-end channel, as QEMU does. A
   * CONFIG_CHANGE_MSG then makes the driver re-read config space (`config`) and
   * call `onConfigChange`, before the back-end gets its ack.
   */
  backendChannel?: boolean;
  onConfigChange?: (config: BlkConfig) => void;
  /**
   * Negotiate INFLIGHT_SHMFD and set up an in-flight region as QEMU's
   * vhost-user-blk does (GET_INFLIGHT_FD, then SET_INFLIGHT_FD before the rings
   * start); reconnect() hands it to the next back-end.
   */
  inflight?: boolean;
  /** Keep requests outstanding when the back-end hangs up, for reconnect(), as a guest behind QEMU's reconnect=1 waits. */
  survivesDisconnect?: boolean;
}

export interface BlkStatusResult {
  status: number;
  usedLen: number;
}

export interface BlkReadResult extends BlkStatusResult {
  data: Uint8Array;
}

export interface BlkIdResult extends BlkStatusResult {
  /** The serial up to its first NUL. */
  id: string;
  bytes: Uint8Array;
}

/** struct virtio_blk_lifetime as the device wrote it. */
export interface BlkLifetimeResult extends BlkStatusResult {
  preEolInfo: number;
  estTypA: number;
  estTypB: number;
}

export interface BlkRequestOptions extends SubmitOptions {
  /** Split the data into this many descriptors (scatter-gather). */
  segments?: number;
}

/** Pre-fill of writable buffers, so a device that never wrote them is visible. */
export const UNTOUCHED = 0xa5;
/** Pre-fill of the status byte: not a status value a device may write. */
export const STATUS_UNSET = 0xff;

/** The in-flight region a front-end keeps across back-end restarts (GET_INFLIGHT_FD's answer and memfd). */
export interface InflightRegion {
  area: InflightPayload;
  fd: number;
}

/** What negotiation settled, for one connection. */
interface Negotiated {
  offered: bigint;
  features: bigint;
  proto: bigint;
  maxQueues: number;
  config: BlkConfig | undefined;
}

export class BlkFrontend {
  private stopped = false;
  private disconnected = false;
  private currentClient: VhostUserClient;
  private inflightRegion: InflightRegion | undefined;

  private constructor(
    client: VhostUserClient,
    private readonly o: BlkConnectOptions,
    readonly ram: GuestRam,
    readonly queues: RequestQueue[],
    private n: Negotiated,
    inflight: InflightRegion | undefined,
  ) {
    this.currentClient = client;
    this.inflightRegion = inflight;
    this.watchClient(client);
  }

  /** The current control connection (a new one after reconnect()). */
  get client(): VhostUserClient { return this.currentClient; }
  get offeredFeatures(): bigint { return this.n.offered; }
  get negotiatedFeatures(): bigint { return this.n.features; }
  get protocolFeatures(): bigint { return this.n.proto; }
  /** GET_QUEUE_NUM (1 without MQ). */
  get maxQueues(): number { return this.n.maxQueues; }
  /** The in-flight region, when one was set up (`inflight` option and a back-end that offers it). */
  get inflight(): InflightRegion | undefined { return this.inflightRegion; }

  /** The device's config space as read at connect or after the last config change (needs the CONFIG protocol feature). */
  get config(): BlkConfig {
    if (this.n.config === undefined) throw new Error('config space unavailable: CONFIG protocol feature not negotiated');
    return this.n.config;
  }

  /** GET_CONFIG again, as QEMU does on CONFIG_CHANGE_MSG; `config` then shows the result. */
  async refreshConfig(): Promise<BlkConfig> {
    const config = decodeBlkConfig(await this.client.getConfig(0, BLK_CONFIG_SIZE));
    this.n.config = config;
    return config;
  }

  /**
   * A back-end that hangs up leaves requests that will never complete: fail them
   * loudly, unless the driver waits for a reconnect (survivesDisconnect), as a
   * guest behind QEMU's reconnect=1 does.
   */
  private watchClient(client: VhostUserClient): void {
    void client.closed.then((reason) => {
      if (client !== this.currentClient || this.o.survivesDisconnect === true) return;
      const err = new Error(`vhost-user connection closed (${reason}); request abandoned`);
      for (const q of this.queues) q.fail(err);
    });
  }

  /** The QEMU-like setup sequence, up to enabled rings. */
  static async connect(o: BlkConnectOptions): Promise<BlkFrontend> {
    const queueSize = o.queueSize ?? 128;
    const client = await VhostUserClient.connect(o.socketPath, { timeoutMs: o.timeoutMs });
    // Config changes can only be acted on once the driver exists; one arriving during
    // setup is acked as is, since setup reads config space after it anyway.
    let fe: BlkFrontend | undefined;
    let ram: GuestRam | undefined;
    const fds: number[] = [];
    const queues: RequestQueue[] = [];
    let inflight: InflightRegion | undefined;
    try {
      const n = await BlkFrontend.negotiate(client, o, () => fe);
      ram = GuestRam.create(o.memoryBytes ?? 64 << 20);
      await BlkFrontend.sendMemory(client, n, ram);
      inflight = await BlkFrontend.setInflight(client, o, n, undefined, queueSize);
      const eventIdx = hasBit(n.features, VIRTIO_RING_F_EVENT_IDX);
      const packed = hasBit(n.features, VIRTIO_F_RING_PACKED);
      for (let i = 0; i < o.numQueues; i++) {
        const kickFd = native.eventfd(0);
        fds.push(kickFd);
        const callFd = native.eventfd(0);
        fds.push(callFd);
        // The kick fd may be replaced later (replaceKickFd), so notify reads it from the queue.
        const ringOptions = { eventIdx, allocator: ram.allocator, notify: () => native.eventfdWrite(q.kickFd, 1) };
        const ring: DriverRing = packed
          ? new PackedDriverQueue(ram.buffer, allocatePackedRing(queueSize, ram.allocator), ringOptions)
          : new DriverQueue(ram.buffer, allocateRing(queueSize, ram.allocator), ringOptions);
        ring.clearRings();
        const q: RequestQueue = new RequestQueue(i, ring, ram, kickFd, callFd);
        queues.push(q);
        // A fresh ring: split starts at avail index 0; packed at position 0 with both wrap counters 1, as QEMU sends it.
        await BlkFrontend.startRing(client, n, q, ring.resumeBase(), () => q.start());
      }
      await BlkFrontend.driverOk(client, n);
      fe = new BlkFrontend(client, o, ram, queues, n, inflight);
      return fe;
    } catch (e) {
      client.close();
      for (const q of queues) q.close(new Error('connect failed'));
      for (const fd of fds) native.close(fd);
      if (inflight !== undefined && inflight.fd >= 0) native.close(inflight.fd);
      ram?.close();
      throw e;
    }
  }

  /**
   * Connect again after the back-end went away (crashed, or restarted), as QEMU
   * does with reconnect=1: the same guest RAM, rings, eventfds and in-flight
   * region, each ring resumed at the index QEMU 7.2 sends then: the used ring's
   * idx (GET_VRING_BASE could not be asked). Requests outstanding stay
   * outstanding; the back-end completes them from the in-flight region.
   */
  async reconnect(socketPath = this.o.socketPath): Promise<void> {
    if (this.disconnected) throw new Error('front-end disconnected');
    this.currentClient.close();
    await this.currentClient.closed;
    const client = await VhostUserClient.connect(socketPath, { timeoutMs: this.o.timeoutMs });
    try {
      const n = await BlkFrontend.negotiate(client, this.o, () => this);
      if (n.features !== this.n.features) throw new Error(`features changed across the reconnect: 0x${n.features.toString(16)}, were 0x${this.n.features.toString(16)}`);
      await BlkFrontend.sendMemory(client, n, this.ram);
      this.inflightRegion = await BlkFrontend.setInflight(client, this.o, n, this.inflightRegion, this.queues[0]?.ring.size ?? 128);
      for (const q of this.queues) await BlkFrontend.startRing(client, n, q, q.ring.resumeBase());
      await BlkFrontend.driverOk(client, n);
      this.n = n;
    } catch (e) {
      client.close();
      throw e;
    }
    this.currentClient = client;
    this.watchClient(client);
  }

  /** Features, protocol features, queue count, back-end channel, owner, config: vhost_dev_init() and the device's realize. */
  private static async negotiate(client: VhostUserClient, o: BlkConnectOptions, driver: () => BlkFrontend | undefined): Promise<Negotiated> {
    const onConfigChange = async (): Promise<void> => {
      const fe = driver();
      if (fe === undefined || fe.n.config === undefined) return;
      const config = await fe.refreshConfig();
      o.onConfigChange?.(config);
    };
    const offered = await client.getFeatures();
    let proto = 0n;
    if (hasBit(offered, VHOST_USER_F_PROTOCOL_FEATURES)) {
      const wanted = (o.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES) | (o.backendChannel === true ? bit(ProtocolFeature.BACKEND_REQ) : 0n) |
        (o.inflight === true ? bit(ProtocolFeature.INFLIGHT_SHMFD) : 0n);
      proto = (await client.getProtocolFeatures()) & wanted;
      await client.setProtocolFeatures(proto);
    }
    const maxQueues = hasBit(proto, ProtocolFeature.MQ) ? await client.getQueueNum() : 1;
    if (!(o.numQueues >= 1 && o.numQueues <= maxQueues)) throw new Error(`${o.numQueues} queues wanted, the back-end has ${maxQueues}`);
    const memSlots = hasBit(proto, ProtocolFeature.CONFIGURE_MEM_SLOTS);
    if (memSlots && (await client.getMaxMemSlots()) < 1) throw new Error('the back-end offers no memory slots');
    if (o.backendChannel === true && !hasBit(proto, ProtocolFeature.BACKEND_REQ)) throw new Error('the back-end does not offer BACKEND_REQ');
    // QEMU's vhost_user_backend_init() ends with the channel, before SET_OWNER.
    if (hasBit(proto, ProtocolFeature.BACKEND_REQ)) await client.setBackendReqFd({ configChange: onConfigChange });
    await client.setOwner();
    const config = hasBit(proto, ProtocolFeature.CONFIG) ? decodeBlkConfig(await client.getConfig(0, BLK_CONFIG_SIZE)) : undefined;
    const features = offered & ((o.features ?? DRIVER_FEATURES) | (o.packed === true ? bit(VIRTIO_F_RING_PACKED) : 0n));
    await client.setFeatures(features);
    if (hasBit(proto, ProtocolFeature.STATUS)) await client.setStatus(BASE_STATUS);
    return { offered, features, proto, maxQueues, config };
  }

  private static async sendMemory(client: VhostUserClient, n: Negotiated, ram: GuestRam): Promise<void> {
    if (hasBit(n.proto, ProtocolFeature.CONFIGURE_MEM_SLOTS)) await client.addMemReg(ram.region(), ram.fd);
    else await client.setMemTable([ram.region()], [ram.fd]);
  }

  /**
   * vhost-user-blk's start: GET_INFLIGHT_FD the first time (QEMU keeps the region
   * until the guest resets the device), then SET_INFLIGHT_FD, before any ring
   * starts. QEMU sends SET without NEED_REPLY, so a refusal shows as a hang-up.
   */
  private static async setInflight(client: VhostUserClient, o: BlkConnectOptions, n: Negotiated, kept: InflightRegion | undefined,
                                   queueSize: number): Promise<InflightRegion | undefined> {
    if (o.inflight !== true || !hasBit(n.proto, ProtocolFeature.INFLIGHT_SHMFD)) return kept;
    let region = kept;
    if (region === undefined) {
      const got = await client.getInflightFd(o.numQueues, queueSize);
      if (got.area.mmapSize === 0) {
        // "No region": QEMU goes on without one (and ignores a stray fd).
        if (got.fd >= 0) native.close(got.fd);
        return undefined;
      }
      region = got;
    }
    await client.setInflightFd(region.area, region.fd, { needReply: false });
    return region;
  }

  /** vhost_virtqueue_start(): size, base, addresses, call, kick, enable. */
  private static async startRing(client: VhostUserClient, n: Negotiated, q: RequestQueue, base: number, beforeKick?: () => void): Promise<void> {
    const i = q.index;
    const ring = q.ring;
    await client.setVringNum(i, ring.size);
    await client.setVringBase(i, base);
    await client.setVringAddr(i, {
      descUserAddr: q.ram.userAddr(ring.layout.descAddr), availUserAddr: q.ram.userAddr(ring.layout.availAddr),
      usedUserAddr: q.ram.userAddr(ring.layout.usedAddr),
    });
    await client.setVringCall(i, q.callFd);
    beforeKick?.();
    await client.setVringKick(i, q.kickFd);
    if (hasBit(n.features, VHOST_USER_F_PROTOCOL_FEATURES)) await client.setVringEnable(i, true);
  }

  private static async driverOk(client: VhostUserClient, n: Negotiated): Promise<void> {
    if (hasBit(n.proto, ProtocolFeature.STATUS)) await client.setStatus(BASE_STATUS | VIRTIO_CONFIG_S_DRIVER_OK);
  }

  queue(index: number): RequestQueue {
    const q = this.queues[index];
    if (q === undefined) throw new RangeError(`queue ${index} not set up (${this.queues.length} queues)`);
    return q;
  }

  /** Submit a custom chain; resolves when the device returns it. */
  submit(queue: number, parts: readonly RequestPart[], opts: SubmitOptions = {}): Promise<Completion> {
    if (this.stopped) return Promise.reject(new Error('rings are stopped'));
    return this.queue(queue).submit(parts, opts);
  }

  async read(queue: number, sector: number, length: number, opts: BlkRequestOptions = {}): Promise<BlkReadResult> {
    const data = splitLengths(length, opts.segments).map((n): RequestPart => ({ writable: n, fill: UNTOUCHED }));
    const c = await this.submit(queue, [{ readable: encodeBlkHeader(VIRTIO_BLK_T_IN, sector) }, ...data, statusPart()], opts);
    return { status: c.status, usedLen: c.usedLen, data: concat(c.writable.slice(0, -1)) };
  }

  async write(queue: number, sector: number, data: Uint8Array, opts: BlkRequestOptions = {}): Promise<BlkStatusResult> {
    const parts: RequestPart[] = [{ readable: encodeBlkHeader(VIRTIO_BLK_T_OUT, sector) }];
    let off = 0;
    for (const n of splitLengths(data.length, opts.segments)) {
      parts.push({ readable: data.subarray(off, off + n) });
      off += n;
    }
    parts.push(statusPart());
    const c = await this.submit(queue, parts, opts);
    return { status: c.status, usedLen: c.usedLen };
  }

  /** DISCARD of one range (needs VIRTIO_BLK_F_DISCARD in `features`). */
  async discard(queue: number, sector: number, sectors: number, opts: SubmitOptions = {}): Promise<BlkStatusResult> {
    const seg = new Uint8Array(16);
    const v = new DataView(seg.buffer);
    v.setUint32(0, sector % 0x1_0000_0000, true);
    v.setUint32(4, Math.floor(sector / 0x1_0000_0000), true);
    v.setUint32(8, sectors, true);
    const c = await this.submit(queue, [{ readable: encodeBlkHeader(VIRTIO_BLK_T_DISCARD, 0) }, { readable: seg }, statusPart()], opts);
    return { status: c.status, usedLen: c.usedLen };
  }

  async flush(queue: number, opts: SubmitOptions = {}): Promise<BlkStatusResult> {
    const c = await this.submit(queue, [{ readable: encodeBlkHeader(VIRTIO_BLK_T_FLUSH, 0) }, statusPart()], opts);
    return { status: c.status, usedLen: c.usedLen };
  }

  async getId(queue: number, opts: SubmitOptions = {}): Promise<BlkIdResult> {
    const c = await this.submit(queue, [
      { readable: encodeBlkHeader(VIRTIO_BLK_T_GET_ID, 0) }, { writable: BLK_ID_BYTES }, statusPart(),
    ], opts);
    const bytes = c.writable[0];
    const end = bytes.indexOf(0);
    const id = Buffer.from(bytes.subarray(0, end < 0 ? bytes.length : end)).toString('latin1');
    return { status: c.status, usedLen: c.usedLen, id, bytes };
  }

  /** VIRTIO_BLK_T_GET_LIFETIME (sent whether or not VIRTIO_BLK_F_LIFETIME was offered: tests want the answer either way). */
  async getLifetime(queue: number, opts: SubmitOptions = {}): Promise<BlkLifetimeResult> {
    const c = await this.submit(queue, [
      { readable: encodeBlkHeader(VIRTIO_BLK_T_GET_LIFETIME, 0) }, { writable: BLK_LIFETIME_BYTES }, statusPart(),
    ], opts);
    const v = new DataView(c.writable[0].buffer, c.writable[0].byteOffset, BLK_LIFETIME_BYTES);
    return { status: c.status, usedLen: c.usedLen, preEolInfo: v.getUint16(0, true), estTypA: v.getUint16(2, true), estTypB: v.getUint16(4, true) };
  }

  /** GET_VRING_BASE for every queue (stops the rings); resolves to the next avail index of each. */
  async stop(): Promise<number[]> {
    this.stopped = true;
    const bases: number[] = [];
    for (let i = 0; i < this.queues.length; i++) bases.push(await this.client.getVringBase(i));
    return bases;
  }

  /** Give a running queue a new kick eventfd (SET_VRING_KICK while started), as QEMU may. */
  async replaceKickFd(queue: number): Promise<void> {
    const q = this.queue(queue);
    const fresh = native.eventfd(0);
    try {
      await this.client.setVringKick(queue, fresh);
    } catch (e) {
      native.close(fresh);
      throw e;
    }
    const old = q.kickFd;
    q.kickFd = fresh;
    native.close(old);
  }

  /** Hang up and release everything; outstanding requests are rejected. */
  async disconnect(): Promise<void> {
    if (this.disconnected) return;
    this.disconnected = true;
    this.client.close();
    await this.client.closed;
    const err = new Error('front-end disconnected');
    for (const q of this.queues) {
      q.close(err);
      native.close(q.kickFd);
      native.close(q.callFd);
    }
    if (this.inflightRegion !== undefined && this.inflightRegion.fd >= 0) native.close(this.inflightRegion.fd);
    this.inflightRegion = undefined;
    this.ram.close();
  }
}

function statusPart(): RequestPart {
  return { writable: 1, fill: STATUS_UNSET };
}

/** `total` bytes cut into `segments` nearly equal non-empty pieces (one piece when unset). */
function splitLengths(total: number, segments = 1): number[] {
  if (total === 0) return [];
  const n = Math.max(1, Math.min(segments, total));
  const base = Math.floor(total / n);
  return Array.from({ length: n }, (_, i) => (i < n - 1 ? base : total - base * (n - 1)));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
