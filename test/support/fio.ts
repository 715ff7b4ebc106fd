// fio inside the test guest and what it leaves on the disk: job files, running
// them with terse output, checking fio's results, and checking on the host that
// the image holds exactly the verify blocks fio wrote (with verify=crc32c every
// block carries a header naming its own offset and job, and checksums).
import { strict as assert } from 'node:assert';

const KiB = 1024;

export interface FioJob {
  name: string;
  filename: string;
  offset: number;
  size: number;
  cpu: number;
  /** Block size options, e.g. ['bsrange=4k-64k'] or ['bs=2m']. */
  opts: string[];
}

/** Write with O_DIRECT at random offsets (every block exactly once), then read everything back and check it. */
export const VERIFY_GLOBAL = ['direct=1', 'ioengine=libaio', 'iodepth=8', 'rw=randwrite', 'verify=crc32c', 'verify_fatal=1'];

export function fioJobFile(global: string[], jobs: FioJob[]): string {
  const lines = ['[global]', ...global];
  for (const j of jobs) {
    lines.push('', `[${j.name}]`, `filename=${j.filename}`, `offset=${j.offset}`, `size=${j.size}`, `cpus_allowed=${j.cpu}`, ...j.opts);
  }
  return lines.join('\n') + '\n';
}

/** Shell lines that run one job file (given to the guest under /etc/vublk) and print its terse results. */
export function runFio(file: string, label: string): string {
  return `
fio --output-format=terse /etc/vublk/${file} > /tmp/${label}.out 2>&1
echo "fio-status ${label}: $?"
cat /tmp/${label}.out
`;
}

export interface FioJobResult { error: number; readKiB: number; writeKiB: number }

/** Terse version 3: field 4 is the job's error, 5 its read KiB, 46 its written KiB. */
export function fioResults(out: string): Map<string, FioJobResult> {
  const results = new Map<string, FioJobResult>();
  for (const line of out.split('\n')) {
    if (!line.startsWith('3;fio-')) continue;
    const f = line.split(';');
    results.set(f[2], { error: Number(f[4]), readKiB: Number(f[5]), writeKiB: Number(f[46]) });
  }
  return results;
}

/** Guest output with fio's terse lines (over 1 KiB each) cut short, for failure messages. */
export function brief(out: string): string {
  return out.split('\n').map((l) => (l.startsWith('3;fio-') && l.length > 100 ? l.slice(0, 100) + '...' : l)).join('\n');
}

/** fio exited 0 for `label`, and every job wrote its whole range and read all of it back for verification. */
export function assertFio(fullOut: string, label: string, jobs: FioJob[]): void {
  const out = brief(fullOut);
  const status = new RegExp(`^fio-status ${label}: (\\d+)$`, 'm').exec(out);
  assert.ok(status, `fio (${label}) did not run:\n${out}`);
  assert.equal(status[1], '0', `fio (${label}) failed:\n${out}`);
  const results = fioResults(fullOut);
  for (const j of jobs) {
    const r = results.get(j.name);
    assert.ok(r, `no fio result for job ${j.name}:\n${out}`);
    assert.equal(r.error, 0, `fio job ${j.name} reported error ${r.error}`);
    assert.equal(r.writeKiB, j.size / KiB, `fio job ${j.name} wrote ${r.writeKiB} KiB`);
    assert.equal(r.readKiB, j.size / KiB, `fio job ${j.name} verified ${r.readKiB} KiB`);
  }
  assert.doesNotMatch(out, /verify: bad|bad magic|crc32c: verify failed/, `fio reported a verify failure:\n${out}`);
}

// --- what fio left on the disk ---------------------------------------------------------

const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC32C as fio stores it: initial value ~0 and no final inversion. */
export function fioCrc32c(b: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = (CRC32C_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8)) >>> 0;
  return c >>> 0;
}

// struct verify_header (fio verify.h): magic u16, verify_type u16, len u32, rand_seed u64,
// offset u64, time_sec u32, time_nsec u32, thread u16, numberio u16, crc32 u32; then
// for verify=crc32c the data checksum (u32) over the rest of the verify block.
const VERIFY_MAGIC = 0xacca;
const VERIFY_TYPE_CRC32C = 5;
const VERIFY_HDR_CRC_AT = 36;
const VERIFY_HDR_BYTES = 44;

/**
 * [start, start+length) of the disk (data[0] is disk offset `base`) holds exactly what
 * fio job number `thread` (1-based, in job-file order) wrote with verify=crc32c: verify
 * blocks back to back, each naming its own offset and the job, with valid checksums.
 */
export function assertFioData(data: Buffer, base: number, start: number, length: number, thread: number, what: string): void {
  let pos = start;
  while (pos < start + length) {
    const at = pos - base;
    const h = data.subarray(at, at + VERIFY_HDR_BYTES);
    const where = `${what}: verify block at ${pos} (job range ${start}+${length})`;
    assert.equal(h.readUInt16LE(0), VERIFY_MAGIC, `${where}: no fio verify header (first bytes ${h.subarray(0, 16).toString('hex')})`);
    assert.equal(h.readUInt16LE(2), VERIFY_TYPE_CRC32C, `${where}: verify type`);
    const len = h.readUInt32LE(4);
    assert.ok(len >= VERIFY_HDR_BYTES && pos + len <= start + length, `${where}: bad block length ${len}`);
    assert.equal(Number(h.readBigUInt64LE(16)), pos, `${where}: the block says it belongs elsewhere`);
    assert.equal(h.readUInt16LE(32), thread, `${where}: written by job ${h.readUInt16LE(32)}, expected ${thread}`);
    assert.equal(h.readUInt32LE(VERIFY_HDR_CRC_AT), fioCrc32c(h.subarray(0, VERIFY_HDR_CRC_AT)), `${where}: header checksum`);
    assert.equal(h.readUInt32LE(40), fioCrc32c(data.subarray(at + VERIFY_HDR_BYTES, at + len)), `${where}: data checksum`);
    pos += len;
  }
}

export function assertZero(data: Buffer, base: number, start: number, length: number, what: string): void {
  const slice = data.subarray(start - base, start - base + length);
  const nz = slice.findIndex((b) => b !== 0);
  assert.equal(nz, -1, `${what}: byte at ${start + nz} is ${slice[nz]}, expected zero`);
}

export interface NumberedJob { job: FioJob; thread: number }

/** fio numbers the jobs of one run 1, 2, ... in job-file order; verify headers carry that number. */
export function numbered(jobs: FioJob[]): NumberedJob[] {
  return jobs.map((job, i) => ({ job, thread: i + 1 }));
}

/** Every job's range holds its verify blocks and everything else on the disk is `other` (zeros by default). */
export function assertDiskHolds(data: Buffer, jobs: NumberedJob[], what: string, other?: (start: number, length: number) => void): void {
  const rest = other ?? ((s: number, l: number) => assertZero(data, 0, s, l, `${what}: outside the jobs`));
  let pos = 0;
  for (const { job, thread } of [...jobs].sort((x, y) => x.job.offset - y.job.offset)) {
    if (job.offset > pos) rest(pos, job.offset - pos);
    assertFioData(data, 0, job.offset, job.size, thread, `${what} job ${job.name}`);
    pos = job.offset + job.size;
  }
  if (data.length > pos) rest(pos, data.length - pos);
}

