// A small QMP client: connect, read the greeting, negotiate capabilities,
// run commands (replies matched by id) and collect events. Used by
// `vublk qmp`, `vublk stats` and the tests; it works against
// qemu-storage-daemon's monitor just as well.
import * as net from 'node:net';
import { JsonStreamSplitter } from './json-stream';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** An error reply; `errorClass` is QMP's class (GenericError, CommandNotFound, ...). */
export class QmpCommandError extends Error {
  constructor(readonly errorClass: string, readonly desc: string) {
    super(`${errorClass}: ${desc}`);
  }
}

export class QmpClient {
  readonly events: QmpEvent[] = [];
  greeting: Record<string, unknown> | undefined;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private readonly eventWaiters: Array<() => void> = [];
  private closedError: Error | undefined;

  private constructor(private readonly socket: net.Socket) {}

  /** Connect and negotiate capabilities. */
  static async connect(path: string): Promise<QmpClient> {
    const socket = net.createConnection(path);
    const c = new QmpClient(socket);
    const greeted = new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      const splitter = new JsonStreamSplitter();
      socket.on('data', (chunk) => {
        for (const item of splitter.push(chunk)) {
          if ('error' in item) continue;
          const msg = item.value as Record<string, unknown>;
          if (c.greeting === undefined && 'QMP' in msg) {
            c.greeting = msg;
            socket.off('error', reject);
            resolve();
          } else {
            c.dispatch(msg);
          }
        }
      });
    });
    socket.on('close', () => c.fail(new Error('QMP connection closed')));
    socket.on('error', (e) => c.fail(e));
    await greeted;
    await c.execute('qmp_capabilities');
    return c;
  }

  private fail(e: Error): void {
    this.closedError ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    for (const w of this.eventWaiters.splice(0)) w();
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      this.events.push(msg as unknown as QmpEvent);
      for (const w of this.eventWaiters.splice(0)) w();
      return;
    }
    const p = this.pending.get(msg.id as number);
    if (p === undefined) return;
    this.pending.delete(msg.id as number);
    if ('error' in msg) {
      const err = msg.error as { class: string; desc: string };
      p.reject(new QmpCommandError(err.class, err.desc));
    } else {
      p.resolve(msg.return);
    }
  }

  /** Run a command; resolves to its `return`, rejects with QmpCommandError. */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id }));
    });
  }

  /** Wait for an event (already received ones count), up to `timeoutMs`. */
  async waitEvent(name: string, match: (data: Record<string, unknown>) => boolean = () => true, timeoutMs = 10_000): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find((e) => e.event === name && match(e.data));
      if (found !== undefined) return found;
      if (this.closedError !== undefined) throw this.closedError;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${name} event within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.eventWaiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
