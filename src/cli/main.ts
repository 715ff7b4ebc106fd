// vublk command line entry point.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkExport } from '../daemon/blk-export';
import { createSparseImage } from '../storage/target';
import { log } from '../util/log';
import { activatedSocketFor, sdNotify, takeListenFds } from '../daemon/systemd';
import { daemonize, removePidfile, reportReady, reportStartupError, writePidfile } from './daemonize';
import { DEFAULT_IMAGE, SERVE_USAGE, ServeOptions, UsageError, parseServeArgs } from './serve-args';

const USAGE = `usage: vublk serve [options] [IMAGE]   (vublk serve --help for options)`;
const DEFAULT_IMAGE_SIZE = 1 << 30;
/** The one export of `vublk serve`; also the name systemd socket activation matches. */
const EXPORT_ID = 'vublk0';

function fail(message: string): never {
  process.stderr.write(`vublk: ${message}\n`);
  reportStartupError(`vublk: ${message}\n`);
  process.exit(2);
}

/** The QEMU options that attach a guest to this export. */
export function qemuAttachLine(socketPath: string): string {
  return [
    'qemu-system-x86_64 -m 1G -smp 2',
    '-object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem',
    `-chardev socket,id=vublk0,path=${path.resolve(socketPath)}`,
    '-device vhost-user-blk-pci,chardev=vublk0',
    '... (your kernel or boot disk options)',
  ].join(' \\\n    ');
}

async function serve(o: ServeOptions): Promise<void> {
  let imagePath = o.imagePath;
  let createdImage = false;
  if (imagePath === undefined) {
    imagePath = DEFAULT_IMAGE;
    createdImage = createSparseImage(imagePath, DEFAULT_IMAGE_SIZE);
  } else if (!fs.existsSync(imagePath)) {
    fail(`${imagePath}: no such image file`);
  }
  // Socket activation: systemd's socket for this export replaces --socket.
  const listenFd = o.listenFd ?? activatedSocketFor(EXPORT_ID, takeListenFds());
  let exp: BlkExport;
  try {
    exp = await BlkExport.open({
      id: EXPORT_ID, socketPath: o.socketPath, listenFd, imagePath, readOnly: o.readOnly, numQueues: o.numQueues,
      logicalBlockSize: o.logicalBlockSize, serial: o.serial, writeback: o.writeback, direct: o.direct,
      iothreads: o.iothreads, queueMap: o.queueMap, iothreadCpus: o.iothreadCpus, aio: o.aio, pollMaxNs: o.pollMaxNs,
    });
  } catch (e) {
    // Leave nothing behind: a default image made for this run goes too.
    if (createdImage) fs.rmSync(imagePath, { force: true });
    fail((e as Error).message);
  }
  if (createdImage) log.info('created sparse 1 GiB default image', { image: imagePath });
  if (o.pidfile !== undefined) {
    try {
      writePidfile(o.pidfile);
    } catch (e) {
      await exp.close();
      fail(`--pidfile ${o.pidfile}: ${(e as Error).message}`);
    }
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal });
    sdNotify('STOPPING=1\nSTATUS=finishing requests in flight');
    exp.close().then(() => {
      removePidfile(o.pidfile);
      process.exit(0);
    }, (e) => {
      log.error('shutdown failed', { error: e as Error });
      process.exit(1);
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  // Announce only once signals are handled: a supervisor may stop us right after.
  const where = listenFd !== undefined ? `inherited socket fd ${listenFd}` : path.resolve(o.socketPath);
  process.stdout.write(`vublk: serving ${imagePath} on ${where}\nAttach a guest with:\n  ${qemuAttachLine(o.socketPath)}\n`);
  reportReady();
  sdNotify(`READY=1\nSTATUS=serving ${imagePath} on ${where}\nMAINPID=${process.pid}`);
}

/** What --print-capabilities reports (QEMU docs/interop/vhost-user.json, VHostUserBackendCapabilities). */
export const CAPABILITIES = { type: 'block', features: ['read-only', 'blk-file'] };

export function main(argv: string[]): void {
  // A back-end program started by QEMU tooling gets options only, no subcommand.
  const [command, ...rest] = argv[0]?.startsWith('--') && argv[0] !== '--help' ? ['serve', ...argv] : argv;
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(`${USAGE}\n`);
    process.exit(command === undefined ? 2 : 0);
  }
  if (command !== 'serve') fail(`${command}: unknown command (${USAGE})`);
  if (rest.includes('--help')) {
    process.stdout.write(`${SERVE_USAGE}\n`);
    process.exit(0);
  }
  let o: ServeOptions;
  try {
    o = parseServeArgs(rest);
  } catch (e) {
    if (e instanceof UsageError) fail(e.message);
    throw e;
  }
  if (o.daemonize) {
    // The parent only waits for the detached server's start report, then exits.
    daemonize(argv, path.resolve(__dirname, '..', '..', '..', 'bin', 'vublk'));
    return;
  }
  if (o.printCapabilities) {
    process.stdout.write(`${JSON.stringify(CAPABILITIES, null, 2)}\n`);
    process.exit(0);
  }
  void serve(o);
}
