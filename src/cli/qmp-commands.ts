// `vublk qmp SOCKET COMMAND [ARGS-JSON]` and `vublk stats SOCKET`: small
// clients of a running vublk's QMP monitor (the first works against
// qemu-storage-daemon too).
import { QueueStats } from '../daemon/metrics';
import type { DaemonStats } from '../daemon/metrics';
import { QmpClient, QmpCommandError } from '../qmp/client';
import { KIND_NAMES } from '../blk/queue-metrics';

export const QMP_USAGE = 'usage: vublk qmp SOCKET COMMAND [ARGS-JSON]   e.g. vublk qmp qmp.sock block_resize \'{"node-name":"disk","size":2147483648}\'';
export const STATS_USAGE = 'usage: vublk stats SOCKET [--interval SECONDS] [--count N]';

function die(message: string, status: number): never {
  process.stderr.write(`vublk: ${message}\n`);
  process.exit(status);
}

export async function qmpCommand(argv: string[]): Promise<void> {
  const [socket, command, argsJson, ...extra] = argv;
  if (socket === undefined || command === undefined || extra.length > 0) die(QMP_USAGE, 2);
  let args: Record<string, unknown> | undefined;
  if (argsJson !== undefined) {
    try {
      args = JSON.parse(argsJson) as Record<string, unknown>;
    } catch (e) {
      die(`qmp: ARGS-JSON is not valid JSON: ${(e as Error).message}`, 2);
    }
    if (args === null || typeof args !== 'object' || Array.isArray(args)) die('qmp: ARGS-JSON must be a JSON object', 2);
  }
  let client: QmpClient;
  try {
    client = await QmpClient.connect(socket);
  } catch (e) {
    die(`qmp: cannot connect to ${socket}: ${(e as Error).message}`, 1);
  }
  try {
    const result = await client.execute(command, args);
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } catch (e) {
    if (e instanceof QmpCommandError) die(`qmp: ${command}: ${e.errorClass}: ${e.desc}`, 1);
    // quit: the server may close the connection right after its reply.
    if (command !== 'quit') die(`qmp: ${command}: ${(e as Error).message}`, 1);
  } finally {
    client.close();
  }
}

const sumRequests = (q: QueueStats): number => KIND_NAMES.reduce((n, k) => n + q.requests[k], 0);
const latencyCount = (q: QueueStats): number => q['latency-buckets'].reduce((a, b) => a + b, 0);

/** One table of per-queue rates between two snapshots `seconds` apart, like iostat. */
export function formatStatsTable(prev: DaemonStats, cur: DaemonStats, seconds: number): string {
  const rows: string[][] = [['export', 'queue', 'iothread', 'r/s', 'w/s', 'other/s', 'rMB/s', 'wMB/s', 'inflight', 'avg-ms', 'errors']];
  for (const e of cur.exports) {
    const before = prev.exports.find((p) => p.id === e.id);
    for (const q of e.queues) {
      const b = before?.queues[q.queue];
      const d = (f: (x: QueueStats) => number): number => f(q) - (b === undefined ? 0 : f(b));
      const reads = d((x) => x.requests.read);
      const writes = d((x) => x.requests.write);
      const all = d(sumRequests);
      const done = d(latencyCount);
      if (sumRequests(q) === 0 && q['in-flight'] === 0) continue;
      rows.push([
        e.id, String(q.queue), q.iothread,
        (reads / seconds).toFixed(0), (writes / seconds).toFixed(0), ((all - reads - writes) / seconds).toFixed(0),
        (d((x) => x['bytes-read']) / seconds / 1e6).toFixed(2), (d((x) => x['bytes-written']) / seconds / 1e6).toFixed(2),
        String(q['in-flight']),
        done > 0 ? ((d((x) => x['latency-sum-seconds']) / done) * 1000).toFixed(3) : '-',
        String(d((x) => x['io-errors'] + x.unsupported)),
      ]);
    }
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (c < 3 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ')).join('\n');
}

export async function statsCommand(argv: string[]): Promise<void> {
  let socket: string | undefined;
  let interval = 1;
  let count = Infinity;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--interval') interval = Number(argv[++i]);
    else if (argv[i] === '--count') count = Number(argv[++i]);
    else if (socket === undefined && !argv[i].startsWith('-')) socket = argv[i];
    else die(`stats: ${argv[i]}: unknown option\n${STATS_USAGE}`, 2);
  }
  if (socket === undefined || !(interval > 0) || !(count > 0)) die(STATS_USAGE, 2);
  let client: QmpClient;
  try {
    client = await QmpClient.connect(socket);
  } catch (e) {
    die(`stats: cannot connect to ${socket}: ${(e as Error).message}`, 1);
  }
  const query = async (): Promise<DaemonStats> => {
    try {
      return (await client.execute('x-vublk-query-stats')) as DaemonStats;
    } catch (e) {
      die(`stats: ${(e as Error).message}`, 1);
    }
  };
  let prev = await query();
  let prevAt = Date.now();
  for (let n = 0; n < count; n++) {
    await new Promise((r) => setTimeout(r, interval * 1000));
    const cur = await query();
    const now = Date.now();
    process.stdout.write(`${new Date(now).toISOString()}\n${formatStatsTable(prev, cur, (now - prevAt) / 1000)}\n\n`);
    prev = cur;
    prevAt = now;
  }
  client.close();
}
