// Start a vublk process from its configuration and run it until a signal or
// QMP quit: iothreads, block nodes, exports, monitors; readiness to systemd
// and a --daemonize parent; an orderly shutdown. A failure at start undoes
// everything begun and exits with status 2.
import * as http from 'node:http';
import { VublkConfig } from '../config/model';
import { Daemon } from '../daemon/daemon';
import { collectStats, startMetricsServer } from '../daemon/metrics';
import { sdNotify, takeListenFds } from '../daemon/systemd';
import { QmpServer } from '../qmp/server';
import { configureLogging, log } from '../util/log';
import { removePidfile, reportReady, reportStartupError, writePidfile } from './daemonize';

export function fail(message: string): never {
  process.stderr.write(`vublk: ${message}\n`);
  reportStartupError(`vublk: ${message}\n`);
  process.exit(2);
}

export interface RunHooks {
  /** Undo what the caller prepared for this run (a default image) when the start fails. */
  onStartFailure?: () => void;
  /** Say where we serve, once ready (stdout). */
  announce?: (d: Daemon) => string;
  /** Word a startup error in the caller's terms (the options it was given rather than the configuration keys). */
  describeError?: (message: string) => string;
}

export async function runDaemon(config: VublkConfig, hooks: RunHooks = {}): Promise<void> {
  // Before any iothread starts: they take the settings when they load.
  configureLogging({ level: config['log-level'], format: config['log-format'] });
  const daemon = new Daemon(takeListenFds());
  const monitors: QmpServer[] = [];
  let metrics: http.Server | undefined;
  let stopping = false;
  const shutdown = async (): Promise<void> => {
    metrics?.close();
    await Promise.all(monitors.map((m) => m.close()));
    await daemon.close();
  };
  const stop = (why: string): void => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { reason: why });
    sdNotify('STOPPING=1\nSTATUS=finishing requests in flight');
    shutdown().then(() => {
      removePidfile(config.pidfile);
      process.exit(0);
    }, (e) => {
      log.error('shutdown failed', { error: e as Error });
      process.exit(1);
    });
  };
  daemon.on('event', (name, data) => { for (const m of monitors) m.event(name, data); });
  try {
    for (const o of config.objects) await daemon.addIothread(o);
    for (const b of config.blockdevs) daemon.addBlockdev(b);
    for (const e of config.exports) await daemon.addExport(e);
    for (const m of config.monitors) {
      const chardev = config.chardevs.find((c) => c.id === m.chardev)!;
      monitors.push(await QmpServer.listen(chardev, m.pretty === true, {
        daemon, quit: () => setImmediate(() => stop('quit')), stats: () => collectStats(daemon),
      }, log));
    }
    if (config.metrics !== undefined) metrics = await startMetricsServer(config.metrics, daemon, log);
    if (config.pidfile !== undefined) {
      try {
        writePidfile(config.pidfile);
      } catch (e) {
        throw new Error(`--pidfile ${config.pidfile}: ${(e as Error).message}`);
      }
    }
  } catch (e) {
    await shutdown().catch(() => undefined);
    hooks.onStartFailure?.();
    const message = (e as Error).message;
    fail(hooks.describeError?.(message) ?? message);
  }
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGHUP', () => stop('SIGHUP'));
  // Announce only once signals are handled: a supervisor may stop us right after.
  const status = hooks.announce?.(daemon) ?? `serving ${daemon.exports.size} export(s)`;
  reportReady();
  sdNotify(`READY=1\nSTATUS=${status.split('\n')[0]}\nMAINPID=${process.pid}`);
}
