// vublk command line entry point: `vublk serve` (the short form, also the
// vhost-user back-end program form), the qemu-storage-daemon compatible
// form (--blockdev/--object/--export/--monitor or --config), and the
// clients `vublk qmp` and `vublk stats`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkConfig } from '../config/check';
import { DAEMON_OPTIONS, DAEMON_USAGE, parseDaemonArgs } from '../config/cli';
import { VublkConfig } from '../config/model';
import { ConfigError } from '../config/schema';
import { activatedSocketFor, takeListenFds } from '../daemon/systemd';
import { createSparseImage } from '../storage/target';
import { log } from '../util/log';
import { daemonize } from './daemonize';
import { qmpCommand, statsCommand } from './qmp-commands';
import { fail, runDaemon } from './run-daemon';
import { DEFAULT_IMAGE, SERVE_USAGE, ServeOptions, UsageError, parseServeArgs } from './serve-args';
import { SERVE_EXPORT_ID, serveConfig } from './serve-config';

const USAGE = `usage: vublk serve [options] [IMAGE]          one export (vublk serve --help)
       vublk --blockdev ... --export ... [--object iothread,...] [--chardev ... --monitor ...]
                                             qemu-storage-daemon compatible (vublk --help)
       vublk --config FILE                   the same from a JSON file
       vublk qmp SOCKET COMMAND [ARGS-JSON]  send a QMP command to a running vublk
       vublk stats SOCKET                    live per-queue statistics over QMP`;
const DEFAULT_IMAGE_SIZE = 1 << 30;

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

function serve(o: ServeOptions): void {
  let imagePath = o.imagePath;
  let createdImage = false;
  if (imagePath === undefined) {
    imagePath = DEFAULT_IMAGE;
    createdImage = createSparseImage(imagePath, DEFAULT_IMAGE_SIZE);
  } else if (!fs.existsSync(imagePath)) {
    fail(`${imagePath}: no such image file`);
  }
  // Socket activation: systemd's socket for this export replaces --socket.
  const listenFd = o.listenFd ?? activatedSocketFor(SERVE_EXPORT_ID, takeListenFds());
  const image = imagePath;
  void runDaemon(serveConfig(o, image, listenFd), {
    // Leave nothing behind: a default image made for this run goes too.
    onStartFailure: () => { if (createdImage) fs.rmSync(image, { force: true }); },
    // The export's socket keys are this command's --socket-* options.
    describeError: (m) => m.replace(/\bx-vublk-socket-(mode|owner|group)\b/g, '--socket-$1'),
    announce: () => {
      if (createdImage) log.info('created sparse 1 GiB default image', { image });
      const where = listenFd !== undefined ? `inherited socket fd ${listenFd}` : path.resolve(o.socketPath);
      const line = `serving ${image} on ${where}`;
      process.stdout.write(`vublk: ${line}\nAttach a guest with:\n  ${qemuAttachLine(o.socketPath)}\n`);
      return line;
    },
  });
}

/** The qemu-storage-daemon compatible form. */
function serveConfigured(argv: string[]): void {
  let config: VublkConfig;
  let help: boolean;
  let version: boolean;
  try {
    ({ config, help, version } = parseDaemonArgs(argv));
    if (!help && !version) checkConfig(config, 'configuration');
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    throw e;
  }
  if (help) {
    process.stdout.write(`${DAEMON_USAGE}\n`);
    process.exit(0);
  }
  if (version) {
    process.stdout.write('vublk version 0.1.0 (qemu-storage-daemon 7.2 compatible command line and QMP)\n');
    process.exit(0);
  }
  if (config.exports.length === 0 && config.monitors.length === 0) fail('nothing to serve: give --export or --monitor');
  if (config.daemonize === true) {
    daemonize(argv, path.resolve(__dirname, '..', '..', '..', 'bin', 'vublk'));
    return;
  }
  void runDaemon(config, {
    announce: (d) => `serving ${[...d.exports.keys()].join(', ') || 'no exports'}${config.monitors.length > 0 ? ', QMP monitor ready' : ''}`,
  });
}

/** What --print-capabilities reports (QEMU docs/interop/vhost-user.json, VHostUserBackendCapabilities). */
export const CAPABILITIES = { type: 'block', features: ['read-only', 'blk-file'] };

export function main(argv: string[]): void {
  if (argv.some((a) => DAEMON_OPTIONS.includes(a.split('=')[0]))) return serveConfigured(argv);
  // A back-end program started by QEMU tooling gets options only, no subcommand.
  const [command, ...rest] = argv[0]?.startsWith('--') && argv[0] !== '--help' ? ['serve', ...argv] : argv;
  if (command === undefined || command === '--help' || command === '-h') {
    process.stdout.write(`${USAGE}\n`);
    process.exit(command === undefined ? 2 : 0);
  }
  if (command === 'qmp') return void qmpCommand(rest);
  if (command === 'stats') return void statsCommand(rest);
  if (command !== 'serve') fail(`${command}: unknown command (vublk --help lists them)`);
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
  serve(o);
}
