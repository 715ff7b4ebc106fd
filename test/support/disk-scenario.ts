// The guest-side disk workload shared by the guest tests of vublk and of the
// reference server: write known patterns at several offsets with O_DIRECT from
// chosen vCPUs (so blk-mq spreads them over the queues), read them back twice,
// and report what the guest saw; then check the same bytes in the image on the host.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';

export const IMAGE_BYTES = 64 * 1024 * 1024;

export interface Extent {
  offset: number;
  length: number;
  /** vCPU the guest issues it from. */
  cpu: number;
}

// Offsets only need 512-byte alignment for O_DIRECT; one deliberately is not
// 4 KiB-aligned, and one is the last block of the disk.
export const EXTENTS: Extent[] = [
  { offset: 0, length: 4096, cpu: 0 },
  { offset: 12288, length: 4096, cpu: 1 },
  { offset: 1024 * 1024 + 512, length: 4096, cpu: 0 },
  { offset: 16 * 1024 * 1024, length: 65536, cpu: 1 },
  { offset: 33 * 1024 * 1024 + 3584, length: 4096, cpu: 0 },
  { offset: IMAGE_BYTES - 4096, length: 4096, cpu: 1 },
];
export const HOLE = { offset: 4096, length: 8192 };

/** Same bytes as the guest's `pattern` function: 16-byte lines naming the offset. */
export function pattern(offset: number, length: number): Buffer {
  const line = `VUBLK@${offset.toString(16).padStart(9, '0')}\n`;
  return Buffer.from(line.repeat(Math.ceil(length / line.length)).slice(0, length));
}

/** Shell helpers every guest script may use. */
export const GUEST_HELPERS = `
pattern() { yes "$(printf 'VUBLK@%09x' "$1")" | head -c "$2"; }
stat_field() { n=$1; set -- $(cat /sys/block/vda/stat); eval echo "\\\${$n}"; }
`;

// busybox 1.35 dd opens with O_DIRECT for iflag/oflag=direct, but if a read or
// write then fails with EINVAL (buffer or offset misaligned) it silently clears
// O_DIRECT and retries buffered. Its buffer is page-aligned only when bs >= 4096,
// so every transfer here uses bs >= 4096. To prove no page cache was involved the
// script holds /dev/vda open (so dd's close does not flush and drop the cache) and
// reports the sector counters of /sys/block/vda/stat: buffered writes would still
// be dirty in the cache, and the second of two buffered reads would be a cache hit.
// `cpus` limits which vCPUs are used (a 1-CPU guest has only cpu 0).
export function readWriteScript(cpus = 2): string {
  const extents = EXTENTS.map((e) => `${e.offset}:${e.length}:${e.cpu % cpus}`).join(' ');
  return `
set -e
dev=/dev/vda
${GUEST_HELPERS}
echo "mq: $(ls /sys/block/vda/mq | tr '\\n' ' ')"
echo "sectors: $(cat /sys/block/vda/size)"
fail=0
exec 3<$dev
r0=$(stat_field 3); w0=$(stat_field 7)
for e in ${extents}; do
  set -- $(echo "$e" | tr : ' '); off=$1; len=$2; cpu=$3
  pattern "$off" "$len" > /tmp/want.$off
  taskset -c "$cpu" dd if=/tmp/want.$off of=$dev bs="$len" count=1 seek="$off" \\
    oflag=direct,seek_bytes conv=notrunc status=none
done
r1=$(stat_field 3); w1=$(stat_field 7)
for e in ${extents}; do
  set -- $(echo "$e" | tr : ' '); off=$1; len=$2; cpu=$3
  want=$(md5sum < /tmp/want.$off)
  for pass in 1 2; do
    got=$(taskset -c "$cpu" dd if=$dev bs="$len" count=1 skip="$off" iflag=direct,skip_bytes status=none | md5sum)
    if [ "$got" = "$want" ]; then echo "ok $off"; else echo "MISMATCH $off pass $pass"; fail=1; fi
  done
done
r2=$(stat_field 3)
hole=$(dd if=$dev bs=${HOLE.length} count=1 skip=${HOLE.offset} iflag=direct,skip_bytes status=none | md5sum)
zero=$(head -c ${HOLE.length} /dev/zero | md5sum)
if [ "$hole" = "$zero" ]; then echo "ok hole"; else echo "MISMATCH hole"; fail=1; fi
echo "write-phase: read-sectors=$((r1 - r0)) written-sectors=$((w1 - w0))"
echo "read-phase: read-sectors=$((r2 - r1))"
exit $fail
`;
}

export function field(output: string, re: RegExp): string {
  const m = re.exec(output);
  assert.ok(m, `guest output lacks ${re}:\n${output}`);
  return m[1];
}

/** Check what readWriteScript printed: every extent read back twice from the device, `queues` blk-mq queues. */
export function assertReadWriteOutput(out: string, queues: number): void {
  assert.deepEqual(field(out, /^mq: (.*)$/m).trim().split(/\s+/), Array.from({ length: queues }, (_, i) => String(i)));
  assert.equal(Number(field(out, /^sectors: (\d+)$/m)), IMAGE_BYTES / 512);
  for (const e of EXTENTS) assert.match(out, new RegExp(`^ok ${e.offset}$`, 'm'));
  assert.match(out, /^ok hole$/m);
  const total = EXTENTS.reduce((n, e) => n + e.length, 0) / 512;
  // Each extent is read twice; buffered reads would hit the page cache the second time.
  assert.equal(Number(field(out, /^read-phase: read-sectors=(\d+)$/m)), 2 * total);
  assert.equal(Number(field(out, /^write-phase: read-sectors=(\d+)/m)), 0);
  assert.equal(Number(field(out, /written-sectors=(\d+)$/m)), total);
}

function readImage(image: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(image, 'r');
  try {
    const buf = Buffer.alloc(length);
    assert.equal(fs.readSync(fd, buf, 0, length, offset), length);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** The patterns the guest wrote are in the image file, and the hole is still zero. */
export function assertImageHoldsPatterns(image: string): void {
  for (const e of EXTENTS) {
    assert.ok(readImage(image, e.offset, e.length).equals(pattern(e.offset, e.length)), `image bytes differ at ${e.offset}`);
  }
  assert.ok(readImage(image, HOLE.offset, HOLE.length).equals(Buffer.alloc(HOLE.length)), 'hole is not zero');
}

export function createImage(image: string, bytes = IMAGE_BYTES): void {
  fs.writeFileSync(image, '');
  fs.truncateSync(image, bytes);
}
