// Builds the device-specific part of an iothread from a plain, cloneable spec:
// its storage engine and the factory for per-queue request handlers.
import { BlkQueue } from '../blk/request';
import { BlkCacheState } from '../blk/disk';
import { QueueContext, QueueHandler, QueueHandlerFactory } from '../dataplane/dataplane';
import { EngineFactory } from '../storage/engine';
import { EngineHub } from '../storage/engine-hub';
import { threadPoolEngineFactory } from '../storage/threadpool';
import { Logger } from '../util/log';
import { DeviceSpec, DeviceState } from './messages';

export interface DeviceRuntime {
  readonly queueHandlers: QueueHandlerFactory;
  readonly engineName: string;
  setState(state: DeviceState): void;
  close(): void;
}

/** How an iothread gets its engine factory; tests substitute in-memory engines. */
export type EngineSelector = (spec: DeviceSpec, log: Logger) => EngineFactory;

export const defaultEngineSelector: EngineSelector = () => threadPoolEngineFactory;

export function createDeviceRuntime(spec: DeviceSpec, log: Logger, selectEngine: EngineSelector = defaultEngineSelector): DeviceRuntime {
  const hub = new EngineHub(selectEngine(spec, log), spec.lanes);
  const cache: BlkCacheState = { writeback: spec.writeback };
  // One lane of the shared engine per started queue; the lane is released when the queue stops.
  const blkQueue = (ctx: QueueContext): QueueHandler => {
    const sink = { blk: undefined as BlkQueue | undefined, ioComplete(head: number, result: number) { this.blk!.ioComplete(head, result); } };
    const slotBase = hub.attach(sink);
    const blk = new BlkQueue({
      queue: ctx.queue, mem: ctx.mem, disk: spec.disk, cache, engine: hub.engine, slotBase,
      onCompleted: ctx.onCompleted, log: ctx.log,
    });
    sink.blk = blk;
    return { handle: (head) => blk.handle(head), endBatch: () => blk.endBatch(), close: () => hub.detach(slotBase) };
  };
  return {
    queueHandlers: blkQueue,
    engineName: hub.engine.name,
    setState: (state) => { cache.writeback = state.writeback; },
    close: () => hub.close(),
  };
}
