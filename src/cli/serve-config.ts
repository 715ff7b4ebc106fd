// `vublk serve` (and the vhost-user back-end program form) is the short form
// of one export: its options become the same configuration a
// qemu-storage-daemon style command line would give.
import { ExportOptions, IothreadObjectOptions, VublkConfig, emptyConfig } from '../config/model';
import { ServeOptions } from './serve-args';

/** The one export of `vublk serve`; also the name systemd socket activation matches. */
export const SERVE_EXPORT_ID = 'vublk0';

export function serveConfig(o: ServeOptions, imagePath: string, listenFd: number | undefined): VublkConfig {
  const c = emptyConfig();
  const ids: string[] = [];
  for (let i = 0; i < o.iothreads; i++) {
    const t: IothreadObjectOptions = { 'qom-type': 'iothread', id: `io${i}`, 'poll-max-ns': o.pollMaxNs };
    const cpus = o.iothreadCpus[i];
    if (cpus !== undefined && cpus.length > 0) t['x-vublk-cpu-affinity'] = cpus;
    c.objects.push(t);
    ids.push(t.id);
  }
  c.blockdevs.push({
    driver: 'file', 'node-name': SERVE_EXPORT_ID, filename: imagePath, 'read-only': o.readOnly, cache: { direct: o.direct },
    ...(o.aio === 'auto' ? {} : { aio: o.aio }),
    // The short form passes guest discards down (qemu-storage-daemon's default is to ignore them).
    discard: 'unmap',
  });
  const e: ExportOptions = {
    type: 'vhost-user-blk', id: SERVE_EXPORT_ID, 'node-name': SERVE_EXPORT_ID,
    addr: listenFd !== undefined ? { type: 'fd', str: String(listenFd) } : { type: 'unix', path: o.socketPath },
    writable: !o.readOnly, writethrough: !o.writeback, 'num-queues': o.numQueues, 'x-vublk-serial': o.serial,
  };
  if (o.logicalBlockSize !== undefined) e['logical-block-size'] = o.logicalBlockSize;
  if (o.socketMode !== undefined) e['x-vublk-socket-mode'] = o.socketMode;
  if (o.socketOwner !== undefined) e['x-vublk-socket-owner'] = o.socketOwner;
  if (o.socketGroup !== undefined) e['x-vublk-socket-group'] = o.socketGroup;
  if (o.queueMap !== undefined) {
    e['x-vublk-iothread-vq-mapping'] = ids.map((iothread, t) => ({ iothread, vqs: o.queueMap!.flatMap((owner, q) => (owner === t ? [q] : [])) }));
  } else {
    e.iothread = ids;
  }
  c.exports.push(e);
  if (o.pidfile !== undefined) c.pidfile = o.pidfile;
  if (o.logLevel !== undefined) c['log-level'] = o.logLevel;
  if (o.logFormat !== undefined) c['log-format'] = o.logFormat;
  return c;
}
