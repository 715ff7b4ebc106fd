// Builds the device-specific part of an iothread from a plain, cloneable spec:
// its storage engine and the factory for per-queue request handlers.
import { createBlkQueueHandler } from '../blk/queue-handler';
import { queueMetrics } from '../blk/queue-metrics';
import { BlkCacheState, BlkDisk } from '../blk/disk';
import { SharedThrottle } from '../blk/throttle';
import { CompletionRound } from '../dataplane/completion-round';
import { QueueHandlerFactory } from '../dataplane/dataplane';
import { EngineFactory } from '../storage/engine';
import { EngineHub } from '../storage/engine-hub';
import { inlineEngineFactory } from '../storage/inline';
import { selectEngine } from '../storage/select';
import { Logger } from '../util/log';
import { MAX_QUEUE_SIZE } from '../virtq/split';
import { DeviceSpec, DeviceState } from './messages';

export interface DeviceRuntime {
  readonly queueHandlers: QueueHandlerFactory;
  /** The engine's rounds of completions, which the device's queues publish at the end of. */
  readonly completionRound: CompletionRound;
  readonly engineName: string;
  setState(state: DeviceState): void;
  close(): void;
}

/** How an iothread gets its engine factory; tests substitute in-memory engines. */
export type EngineSelector = (spec: DeviceSpec, log: Logger) => EngineFactory;

/**
 * io_uring (or the thread pool) as asked; but a memory-backed image with aio left
 * to us ('auto') runs inline on the iothread, which costs the least CPU there.
 */
export const defaultEngineSelector: EngineSelector = (spec, log) => {
  if (spec.aio === 'auto' && spec.disk.memoryBacked === true) {
    log.debug('memory-backed image: I/O runs inline on the iothread');
    return inlineEngineFactory;
  }
  return selectEngine(spec.aio, log);
};

export function createDeviceRuntime(spec: DeviceSpec, log: Logger, selectEngine: EngineSelector = defaultEngineSelector): DeviceRuntime {
  // Room for every queue this iothread owns at the largest queue size, within the engine's limit.
  const completionRound = new CompletionRound();
  const hub = new EngineHub(selectEngine(spec, log), spec.lanes * MAX_QUEUE_SIZE, completionRound);
  const cache: BlkCacheState = { writeback: spec.writeback };
  // Our own copy: a resize changes its size while queues run (spec.disk may be the control plane's object).
  const disk: BlkDisk = { ...spec.disk };
  // One view of the export's limiter per thread; its state is shared with every other.
  const throttle = spec.throttle === undefined ? undefined : new SharedThrottle(spec.throttle);
  return {
    queueHandlers: (ctx) => createBlkQueueHandler(ctx, disk, cache, hub, spec.metrics === undefined ? undefined : queueMetrics(spec.metrics, ctx.index), throttle),
    completionRound,
    engineName: hub.engine.name,
    setState: (state) => {
      cache.writeback = state.writeback;
      disk.sizeBytes = state.sizeBytes;
    },
    close: () => hub.close(),
  };
}
