// Feature bit numbers. Feature sets are bigint because virtio features span
// 64 bits; this is control-plane code, so bigint's cost does not matter.

// Device-independent virtio feature bits (virtio spec "Reserved Feature Bits").
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VIRTIO_F_ANY_LAYOUT = 27;
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Older name of VIRTIO_F_ACCESS_PLATFORM, used throughout the vhost-user spec. */
export const VIRTIO_F_IOMMU_PLATFORM = VIRTIO_F_ACCESS_PLATFORM;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;
export const VIRTIO_F_ORDER_PLATFORM = 36;
export const VIRTIO_F_SR_IOV = 37;
export const VIRTIO_F_NOTIFICATION_DATA = 38;
export const VIRTIO_F_NOTIF_CONFIG_DATA = 39;
export const VIRTIO_F_RING_RESET = 40;
export const VIRTIO_F_ADMIN_VQ = 41;

// vhost reuses otherwise unused virtio bits for its own negotiation.
export const VHOST_F_LOG_ALL = 26;
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** VHOST_USER_PROTOCOL_F_* bit numbers. */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5, // formerly SLAVE_REQ
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10, // formerly SLAVE_SEND_FD
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;

export type ProtocolFeatureName = keyof typeof ProtocolFeature;

export function bit(n: number): bigint {
  if (!Number.isInteger(n) || n < 0 || n > 63) throw new RangeError(`feature bit ${n} is not in 0..63`);
  return 1n << BigInt(n);
}

export function hasBit(set: bigint, n: number): boolean {
  return (set & bit(n)) !== 0n;
}
