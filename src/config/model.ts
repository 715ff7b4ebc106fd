// The configuration of a vublk process, in qemu-storage-daemon's terms: QAPI
// objects with QEMU's key names, so a command line or QMP script written for
// qemu-storage-daemon means the same here. The command line (--blockdev,
// --object, --export, ...), the JSON config file and QMP commands all produce
// these shapes; schema.ts validates them.

export type AioOption = 'threads' | 'native' | 'io_uring';

/** --blockdev / blockdev-add: a block node. */
export interface BlockdevOptions {
  driver: 'file' | 'host_device' | 'raw';
  'node-name': string;
  /** file, host_device: the image or device. */
  filename?: string;
  /** raw: the protocol node below, by node name or inline. */
  file?: string | BlockdevOptions;
  'read-only'?: boolean;
  cache?: { direct?: boolean };
  aio?: AioOption;
  /** QEMU default 'ignore': guest discards are not passed down (the feature is not offered). */
  discard?: 'ignore' | 'unmap';
  /** Accepted for compatibility; vublk has no image locking or auto-read-only fallback. */
  'auto-read-only'?: boolean;
  'force-share'?: boolean;
  locking?: 'auto' | 'on' | 'off';
  'detect-zeroes'?: 'off';
}

/** --object iothread / object-add. */
export interface IothreadObjectOptions {
  'qom-type': 'iothread';
  id: string;
  'poll-max-ns'?: number;
  'poll-grow'?: number;
  'poll-shrink'?: number;
  'aio-max-batch'?: number;
  /** vublk extension: CPUs to pin the thread to. */
  'x-vublk-cpu-affinity'?: number[];
}

export type SocketAddress = { type: 'unix'; path: string } | { type: 'fd'; str: string };

/** One iothread and the queues it serves (QEMU's IOThreadVirtQueueMapping). */
export interface IothreadVqMapping {
  iothread: string;
  vqs?: number[];
}

/** --export type=vhost-user-blk / block-export-add. */
export interface ExportOptions {
  type: 'vhost-user-blk';
  id: string;
  'node-name': string;
  addr: SocketAddress;
  writable?: boolean;
  writethrough?: boolean;
  'num-queues'?: number;
  'logical-block-size'?: number;
  /** One iothread, or (QEMU 9 syntax) a list the queues are spread over round-robin. */
  iothread?: string | string[];
  'fixed-iothread'?: boolean;
  /** vublk extension: explicit queue → iothread placement. */
  'x-vublk-iothread-vq-mapping'?: IothreadVqMapping[];
  /** vublk extensions: serial for GET_ID; the socket file's mode (octal string), owner and group (names or numeric ids). */
  'x-vublk-serial'?: string;
  /**
   * vublk extension: storage wear answered to VIRTIO_BLK_T_GET_LIFETIME (offered as
   * VIRTIO_BLK_F_LIFETIME when given); the estimates are 0 (undefined) to 11 (exceeded).
   */
  'x-vublk-lifetime'?: { 'pre-eol-info'?: 'undefined' | 'normal' | 'warning' | 'urgent'; 'typ-a'?: number; 'typ-b'?: number };
  /**
   * vublk extension, like SPDK's vhost_controller_set_coalescing: while a queue takes more
   * than iops-threshold requests per second (0: always), its interrupts wait up to delay-us.
   */
  'x-vublk-coalescing'?: { 'delay-us'?: number; 'iops-threshold'?: number };
  /**
   * vublk extension, QEMU's throttling.* group for an export: iops-total, iops-read,
   * iops-write, bps-total, bps-read, bps-write (0: no limit), each with -max (burst
   * rate) and -max-length (burst seconds), and iops-size; changed at runtime with
   * block_set_io_throttle.
   */
  'x-vublk-throttling'?: Record<string, number>;
  'x-vublk-socket-mode'?: string;
  'x-vublk-socket-owner'?: string;
  'x-vublk-socket-group'?: string;
}

/** --chardev socket: where the QMP monitor listens. */
export interface ChardevOptions {
  backend: 'socket';
  id: string;
  path?: string;
  fd?: string;
  server?: boolean;
  wait?: boolean;
}

/** --monitor: a QMP monitor on a chardev. */
export interface MonitorOptions {
  chardev: string;
  mode?: 'control';
  pretty?: boolean;
}

export interface VublkConfig {
  blockdevs: BlockdevOptions[];
  objects: IothreadObjectOptions[];
  exports: ExportOptions[];
  chardevs: ChardevOptions[];
  monitors: MonitorOptions[];
  pidfile?: string;
  daemonize?: boolean;
  /** vublk: Prometheus metrics endpoint, "ADDR:PORT". */
  metrics?: string;
  'log-level'?: 'debug' | 'info' | 'warn' | 'error';
  'log-format'?: 'auto' | 'json' | 'pretty';
}

export function emptyConfig(): VublkConfig {
  return { blockdevs: [], objects: [], exports: [], chardevs: [], monitors: [] };
}
