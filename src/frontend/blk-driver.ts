// BlkFrontend: a virtio-blk driver over vhost-user, doing what QEMU and a guest
// kernel do together. connect() runs QEMU's setup sequence; read/write/flush/
// getId build request chains in our own guest RAM and resolve with the status
// byte the device wrote.
import {
  ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC, bit, hasBit,
} from '../../protocol';
import { native } from '../native/addon';
import {
  BLK_CONFIG_SIZE, BLK_ID_BYTES, BlkConfig, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, decodeBlkConfig, encodeBlkHeader,
} from './blk-spec';
import { VhostUserClient } from './client';
import { DriverQueue, allocateRing } from './driver-queue';
import { GuestRam } from './guest-ram';
import { Completion, RequestPart, RequestQueue, SubmitOptions } from './request-queue';

/** Virtio features this driver understands; a device offering more gets only these. */
export const DRIVER_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX) |
  bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VIRTIO_BLK_F_SIZE_MAX) | bit(VIRTIO_BLK_F_SEG_MAX) |
  bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_CONFIG_WCE) |
  bit(VIRTIO_BLK_F_MQ) | bit(VIRTIO_BLK_F_RO);

/** Protocol features this front-end implements. */
export const FRONTEND_PROTOCOL_FEATURES = bit(ProtocolFeature.MQ) | bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.CONFIG) | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) | bit(ProtocolFeature.RESET_DEVICE) |
  bit(ProtocolFeature.STATUS);

export interface BlkConnectOptions {
  socketPath: string;
  numQueues: number;
  queueSize?: number;
  memoryBytes?: number;
  /** Virtio features the driver asks for; the device's offer is intersected with them. */
  features?: bigint;
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

export interface BlkRequestOptions extends SubmitOptions {
  /** Split the data into this many descriptors (scatter-gather). */
  segments?: number;
}

/** Pre-fill of writable buffers, so a device that never wrote them is visible. */
export const UNTOUCHED = 0xa5;
/** Pre-fill of the status byte: not a status value a device may write. */
export const STATUS_UNSET = 0xff;

export class BlkFrontend {
  private stopped = false;
  private disconnected = false;

  private constructor(
    readonly client: VhostUserClient,
    readonly ram: GuestRam,
    readonly queues: RequestQueue[],
    readonly offeredFeatures: bigint,
    readonly negotiatedFeatures: bigint,
    readonly protocolFeatures: bigint,
    /** GET_QUEUE_NUM (1 without MQ). */
    readonly maxQueues: number,
    private blkConfig: BlkConfig | undefined,
  ) {
    // A back-end that hangs up leaves requests that will never complete: fail them loudly.
    void client.closed.then((reason) => {
      const err = new Error(`vhost-user connection closed (${reason}); request abandoned`);
      for (const q of this.queues) q.fail(err);
    });
  }

  /** The device's config space as read at connect or after the last config change (needs the CONFIG protocol feature). */
  get config(): BlkConfig {
    if (this.blkConfig === undefined) throw new Error('config space unavailable: CONFIG protocol feature not negotiated');
    return this.blkConfig;
  }

  /** GET_CONFIG again, as QEMU does on CONFIG_CHANGE_MSG; `config` then shows the result. */
  async refreshConfig(): Promise<BlkConfig> {
    const config = decodeBlkConfig(await this.client.getConfig(0, BLK_CONFIG_SIZE));
    this.blkConfig = config;
    return config;
  }

  /** The QEMU-like setup sequence, up to enabled rings. */
  static async connect(o: BlkConnectOptions): Promise<BlkFrontend> {
    const queueSize = o.queueSize ?? 128;
    const client = await VhostUserClient.connect(o.socketPath, { timeoutMs: o.timeoutMs });
    // Config changes can only be acted on once the driver exists; one arriving during
    // setup is acked as is, since setup reads config space after it anyway.
    let fe: BlkFrontend | undefined;
    const onConfigChange = async (): Promise<void> => {
      if (fe === undefined || fe.blkConfig === undefined) return;
      const config = await fe.refreshConfig();
      o.onConfigChange?.(config);
    };
    let ram: GuestRam | undefined;
    const fds: number[] = [];
    const queues: RequestQueue[] = [];
    try {
      const offered = await client.getFeatures();
      let proto = 0n;
      if (hasBit(offered, VHOST_USER_F_PROTOCOL_FEATURES)) {
        const wanted = (o.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES) | (o.backendChannel === true ? bit(ProtocolFeature.BACKEND_REQ) : 0n);
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
      const features = offered & (o.features ?? DRIVER_FEATURES);
      await client.setFeatures(features);
      const hasStatus = hasBit(proto, ProtocolFeature.STATUS);
      const baseStatus = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
      if (hasStatus) await client.setStatus(baseStatus);

      ram = GuestRam.create(o.memoryBytes ?? 64 << 20);
      if (memSlots) await client.addMemReg(ram.region(), ram.fd);
      else await client.setMemTable([ram.region()], [ram.fd]);

      const eventIdx = hasBit(features, VIRTIO_RING_F_EVENT_IDX);
      for (let i = 0; i < o.numQueues; i++) {
        const kickFd = native.eventfd(0);
        fds.push(kickFd);
        const callFd = native.eventfd(0);
        fds.push(callFd);
        const layout = allocateRing(queueSize, ram.allocator);
        // The kick fd may be replaced later (replaceKickFd), so notify reads it from the queue.
        const ring: DriverQueue = new DriverQueue(ram.buffer, layout, {
          eventIdx, allocator: ram.allocator, notify: () => native.eventfdWrite(q.kickFd, 1),
        });
        ring.clearRings();
        const q: RequestQueue = new RequestQueue(i, ring, ram, kickFd, callFd);
        queues.push(q);
        await client.setVringNum(i, queueSize);
        await client.setVringBase(i, 0);
        await client.setVringAddr(i, {
          descUserAddr: ram.userAddr(layout.descAddr), availUserAddr: ram.userAddr(layout.availAddr),
          usedUserAddr: ram.userAddr(layout.usedAddr),
        });
        await client.setVringCall(i, callFd);
        q.start();
        await client.setVringKick(i, kickFd);
        if (hasBit(features, VHOST_USER_F_PROTOCOL_FEATURES)) await client.setVringEnable(i, true);
      }
      if (hasStatus) await client.setStatus(baseStatus | VIRTIO_CONFIG_S_DRIVER_OK);
      fe = new BlkFrontend(client, ram, queues, offered, features, proto, maxQueues, config);
      return fe;
    } catch (e) {
      client.close();
      for (const q of queues) q.close(new Error('connect failed'));
      for (const fd of fds) native.close(fd);
      ram?.close();
      throw e;
    }
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
