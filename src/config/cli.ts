// qemu-storage-daemon's command line (--blockdev, --object, --export,
// --chardev, --monitor, --pidfile, --daemonize) plus vublk's own options
// (--config, --metrics, --log-level, --log-format), turned into a
// VublkConfig. Pure: returns the configuration or throws a one-line error.
import * as fs from 'node:fs';
import { KeyvalError, parseOptionArgument } from './keyval';
import { VublkConfig, emptyConfig } from './model';
import {
  ConfigError, blockdevSchema, chardevSchema, coerce, configSchema, exportSchema, iothreadSchema, monitorSchema, validate,
} from './schema';

export interface DaemonArgs {
  config: VublkConfig;
  help: boolean;
  version: boolean;
}

/** Options that only the qemu-storage-daemon style command line has; one of them selects it. */
export const DAEMON_OPTIONS = ['--blockdev', '--object', '--export', '--chardev', '--monitor', '--config', '--nbd-server', '--trace', '-T', '--version', '-V', '--metrics'];

export const DAEMON_USAGE = `usage: vublk [options]   (qemu-storage-daemon compatible)
  --blockdev [driver=]file|host_device|raw,node-name=N[,filename=F][,file=NODE]
             [,cache.direct=on|off][,aio=threads|native|io_uring][,read-only=on|off]
             [,discard=ignore|unmap]
  --object iothread,id=I[,poll-max-ns=NS][,x-vublk-cpu-affinity.0=CPU...]
  --export [type=]vhost-user-blk,id=E,node-name=N,addr.type=unix,addr.path=P
           | ...,addr.type=fd,addr.str=FD
           [,writable=on|off][,writethrough=on|off][,num-queues=Q][,logical-block-size=B]
           [,iothread=I | iothread.0=I0,iothread.1=I1...]
           [,x-vublk-iothread-vq-mapping.0.iothread=I,x-vublk-iothread-vq-mapping.0.vqs.0=Q...]
           [,x-vublk-serial=S][,x-vublk-socket-mode=0600]
           [,x-vublk-socket-owner=USER][,x-vublk-socket-group=GROUP]
           [,x-vublk-coalescing.delay-us=US][,x-vublk-coalescing.iops-threshold=IOPS]
           [,x-vublk-lifetime.pre-eol-info=normal|warning|urgent]
           [,x-vublk-lifetime.typ-a=0..11][,x-vublk-lifetime.typ-b=0..11]
  --chardev socket,id=C,path=P,server=on[,wait=off]  |  socket,id=C,fd=FD,server=on
  --monitor [chardev=]C[,mode=control][,pretty=on|off]
  --pidfile FILE   --daemonize
  --config FILE          the same configuration as a JSON file
  --metrics ADDR:PORT    Prometheus metrics over HTTP
  --log-level debug|info|warn|error   --log-format auto|json|pretty
  -h, --help   -V, --version
Every option argument may also be given as JSON, e.g. --blockdev '{"driver":"file",...}'.`;

/**
 * Legacy QemuOpts flags on --chardev ("server", "nowait") that keyval does not
 * know; QEMU 7.2 still takes them (deprecated), so do we.
 */
function expandChardevFlags(text: string): string {
  if (text.trimStart().startsWith('{')) return text;
  return text.split(/,(?!,)/).map((p) => (p === 'server' ? 'server=on' : p === 'nowait' ? 'wait=off' : p === 'wait' ? 'wait=on' : p)).join(',');
}

function parseObject(flag: string, text: string, implied: string, schema: Record<string, unknown>): Record<string, unknown> {
  let raw: Record<string, unknown>;
  try {
    raw = parseOptionArgument(text, implied);
  } catch (e) {
    if (e instanceof KeyvalError) throw new ConfigError(`${flag}: ${e.message}`);
    throw e;
  }
  // JSON arguments are typed already; keyval ones are all strings.
  const typed = text.trimStart().startsWith('{') ? raw : coerce(raw, schema, flag);
  return validate(schema, typed, flag);
}

/** A JSON config file, validated; errors name the path inside the file. */
export function readConfigFile(file: string): VublkConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`--config ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  const c = validate<Partial<VublkConfig>>(configSchema, value, file);
  return { ...emptyConfig(), ...c };
}

/** Append b's objects to a's; b's scalars win. */
function merge(a: VublkConfig, b: VublkConfig): VublkConfig {
  return {
    ...a, ...b,
    blockdevs: [...a.blockdevs, ...b.blockdevs],
    objects: [...a.objects, ...b.objects],
    exports: [...a.exports, ...b.exports],
    chardevs: [...a.chardevs, ...b.chardevs],
    monitors: [...a.monitors, ...b.monitors],
  };
}

export function parseDaemonArgs(argv: string[]): DaemonArgs {
  let config = emptyConfig();
  const out: DaemonArgs = { config, help: false, version: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const take = (): string => {
      if (eq > 0) return a.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) throw new ConfigError(`${flag}: missing argument`);
      return v;
    };
    const noValue = (): void => {
      if (eq > 0) throw new ConfigError(`${flag}: takes no value`);
    };
    switch (flag) {
      case '-h':
      case '--help':
        out.help = true;
        break;
      case '-V':
      case '--version':
        out.version = true;
        break;
      case '--blockdev':
        config.blockdevs.push(parseObject(flag, take(), 'driver', blockdevSchema) as never);
        break;
      case '--object': {
        const text = take();
        const kind = /^(?:qom-type=)?([^,=]*)(,|$)/.exec(text)?.[1];
        if (!text.trimStart().startsWith('{') && kind !== 'iothread') {
          throw new ConfigError(`--object: object type '${kind}' is not supported by vublk (only iothread)`);
        }
        config.objects.push(parseObject(flag, text, 'qom-type', iothreadSchema) as never);
        break;
      }
      case '--export':
        config.exports.push(parseObject(flag, take(), 'type', exportSchema) as never);
        break;
      case '--chardev':
        config.chardevs.push(parseObject(flag, expandChardevFlags(take()), 'backend', chardevSchema) as never);
        break;
      case '--monitor':
        config.monitors.push(parseObject(flag, take(), 'chardev', monitorSchema) as never);
        break;
      case '--pidfile':
        config.pidfile = take();
        if (config.pidfile === '') throw new ConfigError(`${flag}: empty path`);
        break;
      case '--daemonize':
        noValue();
        config.daemonize = true;
        break;
      case '--config':
        config = merge(config, readConfigFile(take()));
        out.config = config;
        break;
      case '--metrics': {
        const v = take();
        if (!/^.+:\d+$/.test(v)) throw new ConfigError(`--metrics: expected ADDR:PORT, got '${v}'`);
        config.metrics = v;
        break;
      }
      case '--log-level': {
        const v = take();
        if (!['debug', 'info', 'warn', 'error'].includes(v)) throw new ConfigError(`--log-level: expected debug, info, warn or error, got '${v}'`);
        config['log-level'] = v as VublkConfig['log-level'];
        break;
      }
      case '--log-format': {
        const v = take();
        if (!['auto', 'json', 'pretty'].includes(v)) throw new ConfigError(`--log-format: expected auto, json or pretty, got '${v}'`);
        config['log-format'] = v as VublkConfig['log-format'];
        break;
      }
      case '--nbd-server':
      case '-T':
      case '--trace':
        throw new ConfigError(`${flag}: not supported by vublk (it serves vhost-user-blk exports only)`);
      default:
        throw new ConfigError(`${flag}: unknown option`);
    }
  }
  return out;
}
