// Which storage engine an iothread uses: io_uring where the kernel allows it,
// the thread pool otherwise. Decided once per thread (a probe ring costs a few
// syscalls), logged once per selection when falling back.
import * as fs from 'node:fs';
import { native } from '../native/addon';
import { Logger } from '../util/log';
import { EngineFactory, StorageEngine } from './engine';
import { threadPoolEngineFactory } from './threadpool';
import { submissionTable, UringEngine, UringOptions } from './uring';

export type AioChoice = 'io_uring' | 'threads' | 'auto';

export type UringAvailability = { ok: true } | { ok: false; reason: string };

export const IO_URING_SYSCTL = '/proc/sys/kernel/io_uring_disabled';

/**
 * Can this thread use io_uring? Reads kernel.io_uring_disabled (6.6+: 0 = allowed, 1 = only for
 * io_uring_group members and CAP_SYS_ADMIN, 2 = nobody), then sets up and tears down a small
 * ring: seccomp filters, missing opcodes and memory limits only show there.
 */
export function probeUring(sysctlPath = IO_URING_SYSCTL): UringAvailability {
  let disabled = '0';
  try {
    disabled = fs.readFileSync(sysctlPath, 'utf8').trim();
  } catch (err) {
    // Kernels before 6.6 have no such switch; the probe ring decides.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      return { ok: false, reason: `cannot read ${sysctlPath}: ${(err as Error).message}` };
    }
  }
  if (disabled === '2') return { ok: false, reason: 'disabled by sysctl kernel.io_uring_disabled=2' };
  try {
    const h = native.uringEngineCreate(1, 1, 1, new Float64Array(2), submissionTable(1), () => undefined);
    native.uringEngineDestroy(h);
    return { ok: true };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = disabled === '1' && e.code === 'EPERM'
      ? ' (kernel.io_uring_disabled=1 and this process is not in io_uring_group)'
      : '';
    return { ok: false, reason: `probe ring failed: ${e.message}${hint}` };
  }
}

// Per thread: every worker_thread loads its own copy of this module.
let cached: UringAvailability | undefined;

export interface SelectOptions {
  /** Availability check; tests substitute one. Default: probeUring(), cached per thread. */
  probe?: () => UringAvailability;
  uring?: UringOptions;
}

/**
 * The engine factory for `aio`. 'threads' is taken as asked; 'auto' and 'io_uring' use io_uring
 * when the probe succeeds and otherwise fall back to the thread pool with one log line saying
 * why (warn when io_uring was asked for explicitly, info for 'auto'). Should creating a ring fail
 * later anyway (e.g. out of locked memory), that engine falls back too, with a warning.
 */
export function selectEngine(aio: AioChoice, log: Logger, options: SelectOptions = {}): EngineFactory {
  if (aio === 'threads') return threadPoolEngineFactory;
  const probe = options.probe ?? ((): UringAvailability => (cached ??= probeUring()));
  const availability = probe();
  if (!availability.ok) {
    const level = aio === 'io_uring' ? 'warn' : 'info';
    log.log(level, 'io_uring unavailable, using the thread-pool engine', { aio, reason: availability.reason });
    return threadPoolEngineFactory;
  }
  return (slots, onComplete, onRoundEnd): StorageEngine => {
    try {
      return new UringEngine(slots, onComplete, options.uring, onRoundEnd);
    } catch (err) {
      log.warn('io_uring engine creation failed, using the thread-pool engine', { aio, reason: err as Error });
      return threadPoolEngineFactory(slots, onComplete, onRoundEnd);
    }
  };
}
