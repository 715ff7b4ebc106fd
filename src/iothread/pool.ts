// Iothreads as worker_threads: each has its own event loop and engine and owns
// a fixed set of queues (the queue map). The main thread keeps only the
// control plane and forwards ring and memory changes here.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { RingConfig } from '../dataplane/dataplane';
import { Logger } from '../util/log';
import { DataPlaneControl } from './control';
import { DeviceSpec, DeviceState, IothreadInit, IothreadReply, IothreadRequest, RegionInfo } from './messages';

export interface IothreadPoolOptions {
  /** Prefix of the thread names ("vublk-io" → vublk-io0, vublk-io1, ...). */
  name: string;
  count: number;
  /** queueMap[q] = iothread that owns queue q. */
  queueMap: number[];
  /** cpus[i] = CPUs iothread i is pinned to (missing or empty: not pinned). */
  cpus: number[][];
  pollMaxNs: number;
}

interface Thread {
  worker: Worker;
  name: string;
  pending: Map<number, { resolve: (v: string | number | undefined) => void; reject: (e: Error) => void }>;
  nextId: number;
  exited: Promise<void>;
  dead: string | undefined;
}

/** Round-robin queue → iothread mapping (QEMU's default iothread-vq-mapping). */
export function roundRobinQueueMap(queues: number, iothreads: number): number[] {
  return Array.from({ length: queues }, (_, q) => q % iothreads);
}

export class IothreadPool implements DataPlaneControl {
  private readonly threads: Thread[] = [];

  private constructor(private readonly o: IothreadPoolOptions, private readonly log: Logger) {}

  /** Start the workers and wait until each has its engine. */
  static async start(spec: Omit<DeviceSpec, 'lanes'>, o: IothreadPoolOptions, log: Logger): Promise<IothreadPool> {
    const pool = new IothreadPool(o, log);
    const ready: Array<Promise<string | number | undefined>> = [];
    for (let i = 0; i < o.count; i++) {
      const lanes = Math.max(1, o.queueMap.filter((t) => t === i).length);
      const init: IothreadInit = { name: `${o.name}${i}`, spec: { ...spec, lanes } as DeviceSpec, cpus: o.cpus[i] ?? [], pollMaxNs: o.pollMaxNs };
      ready.push(pool.spawn(init));
    }
    try {
      const engines = await Promise.all(ready);
      log.info('iothreads started', { count: o.count, engine: engines[0] });
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  }

  private spawn(init: IothreadInit): Promise<string | number | undefined> {
    const worker = new Worker(path.join(__dirname, 'worker-main.js'), { workerData: init, name: init.name });
    const t: Thread = {
      worker, name: init.name, pending: new Map(), nextId: 1, dead: undefined,
      exited: new Promise((resolve) => worker.once('exit', () => resolve())),
    };
    this.threads.push(t);
    const started = new Promise<string | number | undefined>((resolve, reject) => t.pending.set(0, { resolve, reject }));
    worker.on('message', (reply: IothreadReply) => {
      const p = t.pending.get(reply.id);
      if (p === undefined) return;
      t.pending.delete(reply.id);
      if (reply.error !== undefined) p.reject(new Error(`${t.name}: ${reply.error}`));
      else p.resolve(reply.value);
    });
    const fail = (why: string): void => {
      if (t.dead === undefined) t.dead = why;
      for (const p of t.pending.values()) p.reject(new Error(`${t.name}: ${why}`));
      t.pending.clear();
    };
    worker.on('error', (e) => {
      this.log.error('iothread failed', { iothread: t.name, error: e });
      fail(`failed: ${e.message}`);
    });
    worker.on('exit', (code) => fail(`exited with code ${code}`));
    return started;
  }

  private request(t: Thread, req: IothreadRequest): Promise<string | number | undefined> {
    if (t.dead !== undefined) return Promise.reject(new Error(`${t.name} ${t.dead}`));
    const id = t.nextId++;
    return new Promise((resolve, reject) => {
      t.pending.set(id, { resolve, reject });
      t.worker.postMessage({ id, req });
    });
  }

  /** Fire-and-forget requests still go through request(): their order relative to others matters, their answer does not. */
  private post(t: Thread, req: IothreadRequest): void {
    this.request(t, req).catch((e: Error) => this.log.error('iothread request failed', { request: req.type, error: e }));
  }

  private owner(index: number): Thread {
    return this.threads[this.o.queueMap[index] ?? 0];
  }

  /** Which iothread owns each queue. */
  get queueMap(): readonly number[] { return this.o.queueMap; }

  async setMemory(regions: RegionInfo[]): Promise<void> {
    await Promise.all(this.threads.map((t) => this.request(t, { type: 'memory', regions })));
  }

  async startRing(ring: RingConfig): Promise<string | undefined> {
    return (await this.request(this.owner(ring.index), { type: 'start', ring })) as string | undefined;
  }

  async stopRing(index: number): Promise<number | undefined> {
    return (await this.request(this.owner(index), { type: 'stop', index })) as number | undefined;
  }

  setEnabled(index: number, on: boolean): void { this.post(this.owner(index), { type: 'enable', index, on }); }
  async setKickFd(index: number, fd: number): Promise<void> {
    await this.request(this.owner(index), { type: 'kick-fd', index, fd });
  }
  async setCallFd(index: number, fd: number): Promise<void> { await this.request(this.owner(index), { type: 'call-fd', index, fd }); }
  async setErrFd(index: number, fd: number): Promise<void> { await this.request(this.owner(index), { type: 'err-fd', index, fd }); }
  setDeviceState(state: DeviceState): void {
    for (const t of this.threads) this.post(t, { type: 'state', state });
  }

  /** Stop every ring, release engines and end the workers. */
  async close(): Promise<void> {
    await Promise.all(this.threads.map(async (t) => {
      if (t.dead === undefined) await this.request(t, { type: 'shutdown' }).catch(() => undefined);
      await t.exited;
    }));
  }
}
