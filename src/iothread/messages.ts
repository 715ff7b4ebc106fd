// Messages between the control plane (main thread) and an iothread. They are
// few and explicit; guest memory travels as host addresses, never as buffers
// (structured clone would copy them).
import { BlkDisk } from '../blk/disk';
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
}
export type DeviceSpec = BlkDeviceSpec;

/** Runtime-changeable device state (virtio-blk: the write cache mode). */
export interface DeviceState {
  writeback: boolean;
}

/** A mapped guest memory region, by the host address of its mapping in this process. */
export interface RegionInfo {
  guestPhysAddr: number;
  size: number;
  userAddr: number;
  hostAddr: number;
}

export type IothreadRequest =
  | { type: 'memory'; regions: RegionInfo[] }
  | { type: 'start'; ring: RingConfig }
  | { type: 'stop'; index: number }
  | { type: 'enable'; index: number; on: boolean }
  | { type: 'kick-fd'; index: number; fd: number }
  | { type: 'call-fd'; index: number; fd: number }
  | { type: 'err-fd'; index: number; fd: number }
  | { type: 'state'; state: DeviceState }
  | { type: 'shutdown' };

/** Reply to a request: `value` is the start error (string | undefined) or the stopped ring's next index. */
export interface IothreadReply {
  id: number;
  value?: string | number;
  error?: string;
}

export interface IothreadInit {
  name: string;
  spec: DeviceSpec;
  /** CPUs to pin this iothread to (empty: no pinning). */
  cpus: number[];
  pollMaxNs: number;
}
