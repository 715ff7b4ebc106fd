// Messages between the control plane (main thread) and an iothread. They are
// few and explicit; guest memory travels as host addresses, never as buffers
// (structured clone would copy them).
import { BlkDisk } from '../blk/disk';
import { CoalescingSettings } from '../dataplane/coalescing';
import { RingConfig } from '../dataplane/dataplane';

export type AioMode = 'auto' | 'io_uring' | 'threads';

/** Everything an iothread needs to build request handlers for a device. */
export interface BlkDeviceSpec {
  type: 'blk';
  disk: BlkDisk;
  writeback: boolean;
  aio: AioMode;
  /** Queues this iothread may own at once (engine lanes). */
  lanes: number;
  /** Per-queue counters shared with the control plane (blk/queue-metrics.ts). */
  metrics?: SharedArrayBuffer;
  /**
   * Fields every log record of this device on the iothread carries (the export's
   * id), so a failing request's record names its export, not only the thread.
   */
  logContext?: Record<string, string>;
  /** Interrupt coalescing of the device's rings (x-vublk-coalescing); absent: off. */
  coalescing?: CoalescingSettings;
  /** The export's I/O limiter (blk/throttle.ts), shared by every iothread and changed in place by the control plane. */
  throttle?: SharedArrayBuffer;
}
export type DeviceSpec = BlkDeviceSpec;

/** Runtime-changeable device state (virtio-blk: the write cache mode and, after a resize, the size). */
export interface DeviceState {
  writeback: boolean;
  sizeBytes: number;
}

/** A mapped guest memory region, by the host address of its mapping in this process. */
export interface RegionInfo {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  hostAddr: number;
}

/** Requests for one device hosted by an iothread. */
export type DeviceRequest =
  | { type: 'memory'; regions: RegionInfo[] }
  | { type: 'start'; ring: RingConfig }
  | { type: 'stop'; index: number }
  | { type: 'enable'; index: number; on: boolean }
  | { type: 'kick-fd'; index: number; fd: number }
  | { type: 'call-fd'; index: number; fd: number }
  | { type: 'err-fd'; index: number; fd: number }
  | { type: 'state'; state: DeviceState }
  | { type: 'coalescing'; settings: CoalescingSettings }
  | { type: 'dirty-log'; log: DirtyLogInfo | undefined }
  | { type: 'shutdown' };

/** Where the migration's dirty log is mapped in this process (the control plane owns the mapping). */
export interface DirtyLogInfo {
  hostAddr: number;
  size: number;
}

/**
 * Requests for an iothread: host a device (its queues may then be started
 * here), drop one after shutting it down, or end the thread.
 */
export type IothreadRequest =
  | { type: 'attach'; device: number; spec: DeviceSpec }
  | { type: 'device'; device: number; req: DeviceRequest }
  | { type: 'detach'; device: number }
  | { type: 'exit' };

/** Reply to a request: `value` is the start error (string | undefined), the stopped ring's next index, or (id 0, at start) the thread id. */
export interface IothreadReply {
  id: number;
  value?: string | number;
  error?: string;
}

export interface IothreadInit {
  name: string;
  /** CPUs to pin this iothread to (empty: no pinning). */
  cpus: number[];
  pollMaxNs: number;
}
