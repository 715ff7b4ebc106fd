// An iothread: one worker_thread with its own event loop, named and
// optionally pinned. It hosts the queues of any number of devices (exports
// may share an iothread, as with qemu-storage-daemon's iothread objects);
// the control plane talks to it only through ordered request messages.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Logger } from '../util/log';
import { DeviceRequest, DeviceSpec, IothreadInit, IothreadReply, IothreadRequest } from './messages';

export interface IothreadOptions {
  /** Management id (QMP query-iothreads). */
  id: string;
  /** Thread name as ps/top show it (Linux keeps 15 bytes). */
  threadName: string;
  /** CPUs to pin the thread to (empty: not pinned). */
  cpus: number[];
  pollMaxNs: number;
}

type Answer = string | number | undefined;

export class Iothread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (v: Answer) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private dead: string | undefined;
  private readonly exited: Promise<void>;
  /** Linux thread id, known once started. */
  threadId = 0;
  /** Devices attached now (the thread is in use while this is non-zero). */
  attached = 0;

  private constructor(readonly o: IothreadOptions, private readonly log: Logger) {
    const init: IothreadInit = { name: o.threadName.slice(0, 15), cpus: o.cpus, pollMaxNs: o.pollMaxNs };
    this.worker = new Worker(path.join(__dirname, 'worker-main.js'), { workerData: init, name: init.name });
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('message', (reply: IothreadReply) => {
      const p = this.pending.get(reply.id);
      if (p === undefined) return;
      this.pending.delete(reply.id);
      if (reply.error !== undefined) p.reject(new Error(`iothread ${o.id}: ${reply.error}`));
      else p.resolve(reply.value);
    });
    this.worker.on('error', (e) => {
      this.log.error('iothread failed', { iothread: o.id, error: e });
      this.fail(`failed: ${e.message}`);
    });
    this.worker.on('exit', (code) => this.fail(`exited with code ${code}`));
  }

  /** Start the worker and wait until it runs. */
  static async start(o: IothreadOptions, log: Logger): Promise<Iothread> {
    const t = new Iothread(o, log);
    const started = new Promise<Answer>((resolve, reject) => t.pending.set(0, { resolve, reject }));
    try {
      t.threadId = (await started) as number;
    } catch (e) {
      await t.close();
      throw e;
    }
    return t;
  }

  get id(): string { return this.o.id; }

  private fail(why: string): void {
    if (this.dead === undefined) this.dead = why;
    for (const p of this.pending.values()) p.reject(new Error(`iothread ${this.o.id} ${why}`));
    this.pending.clear();
  }

  private request(req: IothreadRequest): Promise<Answer> {
    if (this.dead !== undefined) return Promise.reject(new Error(`iothread ${this.o.id} ${this.dead}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, req });
    });
  }

  /** Host a device here; resolves to the name of the engine it got. */
  async attach(device: number, spec: DeviceSpec): Promise<string> {
    const engine = (await this.request({ type: 'attach', device, spec })) as string;
    this.attached++;
    return engine;
  }

  /** Stop the device's rings here (in-flight requests complete first) and forget it. */
  async detach(device: number): Promise<void> {
    try {
      await this.request({ type: 'detach', device });
    } finally {
      this.attached--;
    }
  }

  deviceRequest(device: number, req: DeviceRequest): Promise<Answer> {
    return this.request({ type: 'device', device, req });
  }

  /** End the thread (detaching whatever is still attached). */
  async close(): Promise<void> {
    if (this.dead === undefined) await this.request({ type: 'exit' }).catch(() => undefined);
    await this.exited;
  }
}
