// A QMP monitor (QEMU Machine Protocol) on a Unix socket: greeting,
// capabilities negotiation, one JSON command per object with replies that
// echo its id, errors with class and desc, and events to every negotiated
// client. Clients written for qemu-storage-daemon's monitor work unchanged.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { ChardevOptions } from '../config/model';
import { listenReplacingStale } from '../daemon/listener';
import { native } from '../native/addon';
import { Logger } from '../util/log';
import { CommandContext, QmpError, runCommand } from './commands';
import { JsonStreamSplitter } from './json-stream';

export const QMP_GREETING = {
  QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'vublk' }, capabilities: [] as string[] },
};

interface Client {
  socket: net.Socket;
  negotiated: boolean;
  /** Commands run one at a time per client, replies in order. */
  queue: Promise<void>;
}

function errorReply(e: QmpError): Record<string, unknown> {
  return { error: { class: e.errorClass, desc: e.message } };
}

export class QmpServer {
  private readonly server: net.Server;
  private readonly clients = new Set<Client>();
  private readonly path: string | undefined;

  private constructor(private readonly ctx: CommandContext, private readonly pretty: boolean, private readonly log: Logger, chardev: ChardevOptions) {
    this.path = chardev.fd === undefined ? chardev.path : undefined;
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Listen on the chardev's socket (a path, or an inherited listening fd). */
  static async listen(chardev: ChardevOptions, pretty: boolean, ctx: CommandContext, log: Logger): Promise<QmpServer> {
    const qmp = new QmpServer(ctx, pretty, log.child({ monitor: chardev.id }), chardev);
    let fd: number;
    if (chardev.fd !== undefined) {
      fd = Number(chardev.fd);
    } else {
      try {
        // Only the owner may talk to the monitor: it can add and delete exports, and quit.
        fd = listenReplacingStale(chardev.path!, { mode: 0o600 });
      } catch (e) {
        throw new Error(`chardev '${chardev.id}': socket ${chardev.path}: ${(e as Error).message}`);
      }
    }
    await new Promise<void>((resolve, reject) => {
      qmp.server.once('error', reject);
      qmp.server.listen({ fd }, () => {
        qmp.server.off('error', reject);
        resolve();
      });
    }).catch((e: Error) => {
      if (chardev.fd === undefined) {
        native.close(fd);
        fs.rmSync(chardev.path!, { force: true });
      }
      throw new Error(`chardev '${chardev.id}': ${e.message}`);
    });
    qmp.log.info('QMP monitor listening', { socket: chardev.path ?? `fd ${chardev.fd}` });
    return qmp;
  }

  private send(c: Client, msg: unknown): void {
    if (c.socket.destroyed) return;
    c.socket.write(`${JSON.stringify(msg, null, this.pretty ? 4 : undefined)}\r\n`);
  }

  private accept(socket: net.Socket): void {
    const c: Client = { socket, negotiated: false, queue: Promise.resolve() };
    this.clients.add(c);
    const splitter = new JsonStreamSplitter();
    socket.on('data', (chunk) => {
      for (const item of splitter.push(chunk)) {
        c.queue = c.queue.then(() => ('error' in item
          ? this.send(c, errorReply(new QmpError('GenericError', `JSON parse error, ${item.error}`)))
          : this.handle(c, item.value)));
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.clients.delete(c));
    this.send(c, QMP_GREETING);
  }

  private async handle(c: Client, msg: unknown): Promise<void> {
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      return this.send(c, errorReply(new QmpError('GenericError', 'QMP input must be a JSON object')));
    }
    const m = msg as Record<string, unknown>;
    const id = m.id;
    const reply = (r: Record<string, unknown>): void => this.send(c, id === undefined ? r : { ...r, id });
    for (const key of Object.keys(m)) {
      if (key !== 'execute' && key !== 'arguments' && key !== 'id') {
        return reply(errorReply(new QmpError('GenericError', `QMP input member '${key}' is unexpected`)));
      }
    }
    if (typeof m.execute !== 'string') return reply(errorReply(new QmpError('GenericError', "QMP input lacks member 'execute'")));
    if (m.arguments !== undefined && (m.arguments === null || typeof m.arguments !== 'object' || Array.isArray(m.arguments))) {
      return reply(errorReply(new QmpError('GenericError', "QMP input member 'arguments' must be an object")));
    }
    if (m.execute === 'qmp_capabilities') {
      if (c.negotiated) return reply(errorReply(new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored')));
      c.negotiated = true;
      return reply({ return: {} });
    }
    if (!c.negotiated) return reply(errorReply(new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'")));
    try {
      reply({ return: await runCommand(this.ctx, m.execute, m.arguments) });
    } catch (e) {
      const err = e instanceof QmpError ? e : new QmpError('GenericError', (e as Error).message);
      this.log.info('QMP command failed', { command: m.execute, error: err.message });
      reply(errorReply(err));
    }
  }

  /** Send an event to every client past capabilities negotiation. */
  event(name: string, data: Record<string, unknown>): void {
    const now = Date.now();
    const msg = { event: name, data, timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
    for (const c of this.clients) if (c.negotiated) this.send(c, msg);
  }

  /** Stop listening; clients get their pending replies, then the socket closes. */
  async close(): Promise<void> {
    await Promise.all([...this.clients].map((c) => c.queue.then(() => new Promise<void>((r) => c.socket.end(r)))));
    await new Promise<void>((r) => this.server.close(() => r()));
    if (this.path !== undefined) fs.rmSync(this.path, { force: true });
  }
}
