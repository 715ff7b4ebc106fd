// Observability of a running vublk: per-export, per-queue counters read from
// the iothreads' shared counters (blk/queue-metrics.ts), as a snapshot for
// QMP (x-vublk-query-stats, which `vublk stats` polls) and as Prometheus
// metrics over HTTP (prom-client registry, collected on scrape).
import * as fs from 'node:fs';
import * as http from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import {
  KIND_NAMES, LATENCY_BOUNDS, M_BYTES_READ, M_BYTES_WRITTEN, M_IN_FLIGHT, M_IOERR, M_LATENCY_BUCKETS, M_LATENCY_SUM,
  M_REQUESTS, M_STORAGE_ERRORS, M_UNSUPP, STORAGE_ERROR_SLOTS, queueMetrics, storageErrorName,
} from '../blk/queue-metrics';
import { CLK_TCK, parseProcStat } from '../util/proc-stats';
import { Logger } from '../util/log';
import { Daemon } from './daemon';

export interface QueueStats {
  queue: number;
  iothread: string;
  requests: Record<(typeof KIND_NAMES)[number], number>;
  'bytes-read': number;
  'bytes-written': number;
  'io-errors': number;
  /** The io-errors the backing store caused, by errno name ("ENOSPC"), "short" (short transfer) or "other"; only causes seen. */
  'storage-errors': Record<string, number>;
  unsupported: number;
  'in-flight': number;
  'latency-sum-seconds': number;
  /** Counts per LATENCY_BOUNDS bucket (not cumulative), the last one +Inf. */
  'latency-buckets': number[];
}

export interface ExportStats {
  id: string;
  'node-name': string;
  queues: QueueStats[];
}

export interface IothreadStats {
  id: string;
  'thread-id': number;
  'cpu-seconds': number;
}

export interface DaemonStats {
  exports: ExportStats[];
  iothreads: IothreadStats[];
}

/** CPU time a thread of this process has used (its busy time), from /proc. */
function threadCpuSeconds(tid: number): number {
  try {
    const s = parseProcStat(fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8'));
    return (s.utime + s.stime) / CLK_TCK;
  } catch {
    return 0;
  }
}

export function collectStats(daemon: Daemon): DaemonStats {
  const exports: ExportStats[] = [];
  for (const { exp, options } of daemon.exports.values()) {
    const iothreads = exp.queueIothreads;
    const queues: QueueStats[] = [];
    for (let q = 0; q < exp.device.maxQueues; q++) {
      const m = queueMetrics(exp.metrics, q);
      const requests = Object.fromEntries(KIND_NAMES.map((k, i) => [k, m[M_REQUESTS + i]])) as QueueStats['requests'];
      const storageErrors: Record<string, number> = {};
      for (let s = 0; s < STORAGE_ERROR_SLOTS; s++) if (m[M_STORAGE_ERRORS + s] > 0) storageErrors[storageErrorName(s)] = m[M_STORAGE_ERRORS + s];
      queues.push({
        queue: q,
        iothread: iothreads[q],
        requests,
        'bytes-read': m[M_BYTES_READ],
        'bytes-written': m[M_BYTES_WRITTEN],
        'io-errors': m[M_IOERR],
        'storage-errors': storageErrors,
        unsupported: m[M_UNSUPP],
        'in-flight': m[M_IN_FLIGHT],
        'latency-sum-seconds': m[M_LATENCY_SUM],
        'latency-buckets': Array.from(m.subarray(M_LATENCY_BUCKETS, M_LATENCY_BUCKETS + LATENCY_BOUNDS.length + 1)),
      });
    }
    exports.push({ id: options.id, 'node-name': options['node-name'], queues });
  }
  const iothreads = [...daemon.allIothreads()].map((t) => ({ id: t.id, 'thread-id': t.threadId, 'cpu-seconds': threadCpuSeconds(t.threadId) }));
  return { exports, iothreads };
}

type Labels = Record<string, string>;

/** A histogram whose buckets are counted elsewhere: prom-client's Histogram only observes, so this reports them itself. */
function externalHistogram(name: string, help: string, read: () => Array<{ labels: Labels; buckets: number[]; sum: number }>): unknown {
  return {
    name, help, type: 'histogram', aggregator: 'sum',
    reset: () => undefined,
    get: () => {
      const values: Array<{ metricName: string; labels: Labels; value: number }> = [];
      for (const h of read()) {
        let cumulative = 0;
        h.buckets.forEach((n, b) => {
          cumulative += n;
          values.push({ metricName: `${name}_bucket`, labels: { ...h.labels, le: b < LATENCY_BOUNDS.length ? String(LATENCY_BOUNDS[b]) : '+Inf' }, value: cumulative });
        });
        values.push({ metricName: `${name}_sum`, labels: h.labels, value: h.sum });
        values.push({ metricName: `${name}_count`, labels: h.labels, value: cumulative });
      }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  };
}

export interface DaemonRegistry {
  readonly registry: Registry;
  /** One scrape: the shared counters are read once, then every metric reports from that snapshot. */
  scrape(): Promise<string>;
}

/** The Prometheus registry of a daemon: everything is read from the shared counters at scrape time. */
export function createRegistry(daemon: Daemon): DaemonRegistry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'vublk_' });
  let snapshot: DaemonStats = { exports: [], iothreads: [] };
  const stats = (): DaemonStats => snapshot;
  const perQueue = (fn: (e: ExportStats, q: QueueStats) => void): void => { for (const e of stats().exports) for (const q of e.queues) fn(e, q); };
  const ql = (e: ExportStats, q: QueueStats): Labels => ({ export: e.id, queue: String(q.queue) });
  new Counter({
    name: 'vublk_requests_total', help: 'virtio-blk requests completed, by type', labelNames: ['export', 'queue', 'type'], registers: [registry],
    collect() {
      this.reset();
      perQueue((e, q) => { for (const k of KIND_NAMES) if (q.requests[k] > 0) this.inc({ ...ql(e, q), type: k }, q.requests[k]); });
    },
  });
  new Counter({
    name: 'vublk_bytes_total', help: 'Bytes read and written by guests', labelNames: ['export', 'queue', 'direction'], registers: [registry],
    collect() {
      this.reset();
      perQueue((e, q) => {
        this.inc({ ...ql(e, q), direction: 'read' }, q['bytes-read']);
        this.inc({ ...ql(e, q), direction: 'write' }, q['bytes-written']);
      });
    },
  });
  new Counter({
    name: 'vublk_request_errors_total', help: 'Requests completed with an error status', labelNames: ['export', 'queue', 'status'], registers: [registry],
    collect() {
      this.reset();
      perQueue((e, q) => {
        this.inc({ ...ql(e, q), status: 'ioerr' }, q['io-errors']);
        this.inc({ ...ql(e, q), status: 'unsupp' }, q.unsupported);
      });
    },
  });
  new Counter({
    // Apart from vublk_request_errors_total, which it breaks down, so that summing either never counts a request twice.
    name: 'vublk_storage_errors_total', help: 'Requests failed by the backing store (IOERR), by errno; "short": short read or write',
    labelNames: ['export', 'queue', 'errno'], registers: [registry],
    collect() {
      this.reset();
      perQueue((e, q) => { for (const [errno, n] of Object.entries(q['storage-errors'])) this.inc({ ...ql(e, q), errno }, n); });
    },
  });
  new Gauge({
    name: 'vublk_requests_in_flight', help: 'Requests taken from the ring and not yet completed', labelNames: ['export', 'queue'], registers: [registry],
    collect() {
      this.reset();
      perQueue((e, q) => this.set(ql(e, q), q['in-flight']));
    },
  });
  registry.registerMetric(externalHistogram('vublk_request_duration_seconds', 'Time from taking a request off the ring to completing it',
    () => stats().exports.flatMap((e) => e.queues.map((q) => ({ labels: ql(e, q), buckets: q['latency-buckets'], sum: q['latency-sum-seconds'] })))) as never);
  new Counter({
    name: 'vublk_iothread_busy_seconds_total', help: 'CPU time used by each iothread', labelNames: ['iothread'], registers: [registry],
    collect() {
      this.reset();
      for (const t of stats().iothreads) this.inc({ iothread: t.id }, t['cpu-seconds']);
    },
  });
  return {
    registry,
    scrape: () => {
      snapshot = collectStats(daemon);
      return registry.metrics();
    },
  };
}

/** Serve GET /metrics on ADDR:PORT; resolves to the bound port. */
export async function startMetricsServer(addr: string, daemon: Daemon, log: Logger): Promise<http.Server> {
  const colon = addr.lastIndexOf(':');
  const host = addr.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const port = Number(addr.slice(colon + 1));
  const { registry, scrape } = createRegistry(daemon);
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('try /metrics\n');
      return;
    }
    scrape().then((text) => {
      res.writeHead(200, { 'content-type': registry.contentType }).end(text);
    }, (e: Error) => {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`--metrics ${addr}: ${e.message}`)));
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  log.info('metrics listening', { address: host, port: typeof bound === 'object' && bound !== null ? bound.port : port });
  return server;
}
