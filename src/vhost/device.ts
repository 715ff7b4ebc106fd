// What a device type (virtio-blk here) supplies to the device-independent
// vhost-user back-end.
import { DeviceState } from '../iothread/messages';

export interface VhostDeviceModel {
  /** Most queues a front-end may use (GET_QUEUE_NUM). */
  readonly maxQueues: number;
  /** Device-type feature bits; the back-end adds the transport bits it implements. */
  deviceFeatures(): bigint;
  /** `size` bytes of config space from `offset`, zero beyond what the device defines. */
  readConfig(offset: number, size: number): Uint8Array;
  /** A front-end write to config space; false if the device refuses it. */
  writeConfig(offset: number, data: Uint8Array): boolean;
  /** The driver's features are known (SET_FEATURES); some device state depends on them. */
  negotiated(features: bigint): void;
  /** The front-end reset the device: forget guest-visible state (e.g. write cache mode). */
  reset(): void;
  /** State the iothreads need that the front-end can change (after SET_CONFIG or a reset). */
  state(): DeviceState;
}
