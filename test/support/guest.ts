// Boots a throw-away QEMU guest (built by scripts/build-guest.sh) against
// vhost-user-blk sockets, runs a shell script inside it and returns what it printed.
//
// The guest's /init (see build-guest.sh) prints these markers around /test.sh so the
// script's output can be cut out of the kernel/firmware noise on the serial console.

import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export interface GuestDisk {
  /** Unix socket of the vhost-user-blk backend (QEMU is the client). */
  socketPath: string;
  /** Virtqueue count; when omitted QEMU picks one per vCPU. */
  numQueues?: number;
  /** Appended verbatim to the -device option, e.g. "queue-size=256". */
  extra?: string;
  /** Appended verbatim to the -chardev option, e.g. "reconnect=1". */
  chardevExtra?: string;
}

export interface GuestOptions {
  disks: GuestDisk[];
  /** Body of /test.sh, run by busybox sh; its exit status becomes GuestResult.exitStatus. */
  script: string;
  /** Include fio (and the libraries it needs) in the guest; needs more guest memory (512 MiB). */
  fio?: boolean;
  /** Extra files for the guest, keyed by absolute or root-relative path. */
  files?: Record<string, string | Buffer>;
  cpus?: number;
  memoryMiB?: number;
  timeoutMs?: number;
  /** QEMU -accel value; defaults to $VUBLK_ACCEL or "tcg,thread=multi". */
  accel?: string;
  /** Extra kernel command-line words. */
  kernelArgs?: string;
  /** Called with every complete console line (escape sequences and CRs removed). */
  log?: (line: string) => void;
  /** More QEMU arguments, appended (a QMP socket, -incoming, ...). */
  extraArgs?: string[];
  /** Told QEMU's pid once it is spawned. */
  spawned?: (pid: number) => void;
}

export interface GuestResult {
  /** Status of /test.sh, or null if the guest never reported one (QEMU died early). */
  exitStatus: number | null;
  /** Whole serial console, CRLF folded to LF and terminal escapes removed. */
  output: string;
  /** Only what /test.sh printed (stdout and stderr interleaved). */
  scriptOutput: string;
  /** Milliseconds from spawning QEMU until /test.sh started; -1 if it never did. */
  bootMs: number;
  qemuExitCode: number | null;
  /** QEMU's own stderr (connection errors to the backend end up here). */
  stderr: string;
  argv: string[];
}

export interface QemuCommandOptions {
  disks: GuestDisk[];
  kernel: string;
  initrd: string;
  cpus?: number;
  memoryMiB?: number;
  accel?: string;
  kernelArgs?: string;
  extraArgs?: string[];
}

const MARK_BEGIN = 'VUBLK-SCRIPT-BEGIN';
const MARK_END = 'VUBLK-SCRIPT-END';
const EXIT_RE = /^VUBLK-GUEST-EXIT=(\d+)$/gm;
const DEFAULT_TIMEOUT_MS = 120_000;
const TAIL_LINES = 40;

/** Mirrors the cache location computed by scripts/build-guest.sh; keep them in sync. */
export function guestCacheDir(): string {
  // Empty variables count as unset, as with ${VAR:-default} in the script.
  const explicit = process.env.VUBLK_CACHE;
  if (explicit) return path.join(explicit, 'guest');
  const xdg = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(xdg, 'vublk', 'guest');
}

export function guestImagePaths(): { kernel: string; initramfs: string; fio: string } {
  const dir = guestCacheDir();
  return { kernel: path.join(dir, 'vmlinuz'), initramfs: path.join(dir, 'initramfs.cpio.gz'), fio: path.join(dir, 'fio.cpio') };
}

/** Null when the guest image is ready, otherwise a message telling how to build it. */
export function guestImageProblem(): string | null {
  const paths = guestImagePaths();
  const missing = [paths.kernel, paths.initramfs, paths.fio].filter((p) => !fs.existsSync(p));
  if (missing.length === 0) return null;
  return `test guest image missing (${missing.join(', ')}); run scripts/build-guest.sh (or make guest) first`;
}

export function assertGuestImage(): void {
  const problem = guestImageProblem();
  if (problem !== null) throw new Error(problem);
}

export function qemuBinary(): string {
  return process.env.VUBLK_QEMU || 'qemu-system-x86_64';
}

export function defaultAccel(): string {
  // TCG by default: on the project's machines /dev/kvm exists but stock guest kernels hang under it.
  return process.env.VUBLK_ACCEL || 'tcg,thread=multi';
}

/**
 * Guest RAM must be a shared file-backed mapping so the vhost-user backend can
 * mmap it from the fds QEMU passes; anonymous memory makes QEMU refuse the device.
 */
export function sharedMemoryArgs(memoryMiB: number): string[] {
  return ['-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`, '-m', `${memoryMiB}M`];
}

export function vhostUserBlkArgs(disks: GuestDisk[]): string[] {
  const args: string[] = [];
  disks.forEach((disk, i) => {
    const id = `vu${i}`;
    // QEMU's option parser splits on commas; doubling them is its escape.
    const sock = disk.socketPath.replace(/,/g, ',,');
    args.push('-chardev', `socket,id=${id},path=${sock}${disk.chardevExtra ? ',' + disk.chardevExtra : ''}`);
    let dev = `vhost-user-blk-pci,chardev=${id}`;
    if (disk.numQueues !== undefined) dev += `,num-queues=${disk.numQueues}`;
    if (disk.extra) dev += `,${disk.extra}`;
    args.push('-device', dev);
  });
  return args;
}

/** Full argv (argv[0] is the QEMU binary) for booting the test guest. */
export function qemuCommandLine(opts: QemuCommandOptions): string[] {
  const memoryMiB = opts.memoryMiB ?? 256;
  const append = ['console=ttyS0', 'quiet', 'panic=-1', `vublk.disks=${opts.disks.length}`];
  if (opts.kernelArgs) append.push(opts.kernelArgs);
  return [
    qemuBinary(),
    '-machine', 'q35,memory-backend=mem',
    ...sharedMemoryArgs(memoryMiB),
    '-smp', String(opts.cpus ?? 1),
    '-accel', opts.accel ?? defaultAccel(),
    // -nodefaults drops the NIC (and its iPXE ROM) and VGA; the serial port then has to be named.
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
    // panic=-1 and poweroff both become a QEMU exit instead of a reboot loop.
    '-no-reboot',
    '-kernel', opts.kernel,
    '-initrd', opts.initrd,
    '-append', append.join(' '),
    ...vhostUserBlkArgs(opts.disks),
    ...(opts.extraArgs ?? []),
  ];
}

/** Shell-quoted form, for printing a command line a person can paste. */
export function formatCommandLine(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** Full st_mode including the file type bits (0o100000 file, 0o040000 directory). */
  mode: number;
  data?: Buffer;
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Writes an SVR4 "newc" cpio archive, the only format the kernel's initramfs unpacker reads. */
export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const all = [...entries, { name: 'TRAILER!!!', mode: 0 }];
  all.forEach((entry, i) => {
    const data = entry.data ?? Buffer.alloc(0);
    const name = Buffer.from(entry.name + '\0');
    const fields = [
      // Inode numbers only matter for hard links (nlink > 1), which we never create;
      // starting high keeps them clear of the base archive's anyway.
      entry.name === 'TRAILER!!!' ? 0 : 0x10000 + i,
      entry.mode,
      0, // uid
      0, // gid
      (entry.mode & 0o170000) === 0o040000 ? 2 : 1,
      0, // mtime
      data.length,
      0, 0, 0, 0, // dev and rdev major/minor
      name.length,
      0, // checksum, unused by newc
    ];
    const header = '070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join('');
    parts.push(Buffer.from(header, 'ascii'), name, Buffer.alloc(pad4(header.length + name.length)));
    parts.push(data, Buffer.alloc(pad4(data.length)));
  });
  return Buffer.concat(parts);
}

/** The per-test archive: /test.sh plus any extra files and the directories they need. */
function overlayArchive(script: string, files: Record<string, string | Buffer>): Buffer {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const add = (name: string, data: Buffer, mode: number): void => {
    const clean = path.posix.normalize(name).replace(/^\/+/, '');
    if (clean === '' || clean.startsWith('..')) throw new Error(`bad guest path: ${name}`);
    const parent = path.posix.dirname(clean);
    const chain: string[] = [];
    for (let d = parent; d !== '.' && !dirs.has(d); d = path.posix.dirname(d)) chain.unshift(d);
    for (const d of chain) {
      dirs.add(d);
      entries.push({ name: d, mode: 0o040755 });
    }
    entries.push({ name: clean, mode, data });
  };
  add('test.sh', Buffer.from(script), 0o100755);
  for (const [name, content] of Object.entries(files)) {
    add(name, typeof content === 'string' ? Buffer.from(content) : content, 0o100755);
  }
  return newcArchive(entries);
}

/**
 * The kernel only looks for another archive after a compressed one at a 4-byte
 * aligned offset (init/initramfs.c), skipping zero bytes; unaligned, it reports
 * "invalid magic at start of compressed archive" and ignores the rest.
 */
/** Archives one after another, each starting at a 4-byte boundary (the kernel looks for the next one there). */
function writeCombinedInitrd(parts: Buffer[], dest: string): void {
  const out: Buffer[] = [];
  let length = 0;
  for (const p of parts) {
    const pad = Buffer.alloc(pad4(length));
    out.push(pad, p);
    length += pad.length + p.length;
  }
  fs.writeFileSync(dest, Buffer.concat(out));
}

// SeaBIOS clears the screen with escape sequences and leaves no newline before
// the kernel's first output; strip them so markers are easy to find.
const ESCAPES = /\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-_a-z])/g;

function cleanConsole(raw: string): string {
  return raw.replace(ESCAPES, '').replace(/\r+\n/g, '\n');
}

export function parseConsole(output: string): { exitStatus: number | null; scriptOutput: string } {
  const begin = output.indexOf(MARK_BEGIN + '\n');
  let scriptOutput = '';
  let tailFrom = 0;
  if (begin >= 0) {
    const start = begin + MARK_BEGIN.length + 1;
    const end = output.indexOf('\n' + MARK_END + '\n', start);
    if (end >= 0) {
      scriptOutput = output.slice(start, end);
      tailFrom = end;
    } else {
      scriptOutput = output.slice(start);
      tailFrom = output.length;
    }
  }
  let exitStatus: number | null = null;
  // The last match after the script counts, so a script echoing the marker cannot fake it.
  for (const m of output.slice(tailFrom).matchAll(EXIT_RE)) exitStatus = Number(m[1]);
  return { exitStatus, scriptOutput };
}

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n');
}

export async function runGuest(opts: GuestOptions): Promise<GuestResult> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-guest-'));
  try {
    return await runQemu(guestArgv(opts, writeInitrd(opts, tmp)), opts);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The guest's initrd (base image, fio if asked for, /test.sh and files) written into `dir`; returns its path. */
export function writeInitrd(opts: GuestOptions, dir: string): string {
  assertGuestImage();
  const image = guestImagePaths();
  const initrd = path.join(dir, 'initrd.img');
  const parts: Buffer[] = [fs.readFileSync(image.initramfs)];
  if (opts.fio) parts.push(fs.readFileSync(image.fio));
  parts.push(overlayArchive(opts.script, opts.files ?? {}));
  writeCombinedInitrd(parts, initrd);
  return initrd;
}

/** QEMU's argv for the guest of `opts` with this initrd. */
export function guestArgv(opts: GuestOptions, initrd: string): string[] {
  return qemuCommandLine({
    disks: opts.disks,
    kernel: guestImagePaths().kernel,
    initrd,
    cpus: opts.cpus,
    memoryMiB: opts.memoryMiB,
    accel: opts.accel,
    kernelArgs: opts.kernelArgs,
    extraArgs: opts.extraArgs,
  });
}

/** Run one QEMU until it exits; several may run at once (the two ends of a migration). */
export function runQemu(argv: string[], opts: GuestOptions): Promise<GuestResult> {
  const timeoutMs = opts.timeoutMs ?? (Number(process.env.VUBLK_GUEST_TIMEOUT_MS) || DEFAULT_TIMEOUT_MS);
  const log = opts.log ?? (process.env.VUBLK_GUEST_VERBOSE ? (l: string) => process.stderr.write(`[guest] ${l}\n`) : undefined);

  return new Promise<GuestResult>((resolve, reject) => {
    const started = Date.now();
    // stdin must not be a terminal: QEMU would put it in raw mode and forward keystrokes.
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid !== undefined) opts.spawned?.(child.pid);
    let raw = '';
    let pending = '';
    let stderr = '';
    let bootMs = -1;
    let timedOut = false;

    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      raw += chunk;
      pending += chunk;
      const lines = cleanConsole(pending).split('\n');
      // Keep the unfinished last line (raw, so an escape split across chunks survives).
      const cut = pending.lastIndexOf('\n');
      pending = cut >= 0 ? pending.slice(cut + 1) : pending;
      lines.pop();
      for (const line of lines) {
        if (bootMs < 0 && line.endsWith(MARK_BEGIN)) bootMs = Date.now() - started;
        log?.(line);
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk;
    });

    let settled = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);

    // A failed spawn may emit 'error' without a usable 'close', so either can settle.
    child.on('error', (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`could not run ${argv[0]}: ${err.message}`));
    });
    child.on('close', (code) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (pending !== '') log?.(cleanConsole(pending));
      const output = cleanConsole(raw);
      if (timedOut) {
        reject(
          new Error(
            `guest timed out after ${timeoutMs} ms; last console lines:\n${tail(output, TAIL_LINES)}` +
              (stderr ? `\nqemu stderr:\n${tail(stderr, 10)}` : ''),
          ),
        );
        return;
      }
      const { exitStatus, scriptOutput } = parseConsole(output);
      resolve({ exitStatus, output, scriptOutput, bootMs, qemuExitCode: code, stderr, argv });
    });
  });
}

/** Throws with the useful part of the console unless /test.sh exited 0. */
export function assertGuestSucceeded(result: GuestResult): void {
  if (result.exitStatus === 0) return;
  const why =
    result.exitStatus === null
      ? `guest did not report an exit status (qemu exit code ${result.qemuExitCode})`
      : `guest script exited with status ${result.exitStatus}`;
  throw new Error(
    `${why}; last console lines:\n${tail(result.output, TAIL_LINES)}` +
      (result.stderr ? `\nqemu stderr:\n${tail(result.stderr, 10)}` : ''),
  );
}

/** A guest shape the data-path guest tests (crash recovery, migration) run each: queues, iothreads, vCPUs, ring layout. */
export interface RingVariant { name: string; queues: number; iothreads: number; cpus: number; packed?: boolean }

export const RING_VARIANTS: readonly RingVariant[] = [
  { name: '1 queue', queues: 1, iothreads: 1, cpus: 1 },
  { name: '2 queues on 2 iothreads', queues: 2, iothreads: 2, cpus: 2 },
  // Packed rings: their state crosses in SET_VRING_BASE (both positions, each with its wrap
  // counter) and their in-flight region keeps copies of the descriptors taken.
  { name: '1 queue, packed ring', queues: 1, iothreads: 1, cpus: 1, packed: true },
];

/** Short name for files of a variant. */
export const variantTag = (v: RingVariant): string => `q${v.queues}${v.packed === true ? 'p' : ''}`;

/** The variant's vhost-user-blk disk on `socketPath`. */
export function variantDisk(v: RingVariant, socketPath: string, chardevExtra?: string): GuestDisk {
  return {
    socketPath, numQueues: v.queues, ...(chardevExtra === undefined ? {} : { chardevExtra }), ...(v.packed === true ? { extra: 'packed=on' } : {}),
  };
}
