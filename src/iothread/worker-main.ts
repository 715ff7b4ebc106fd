// Entry point of an iothread worker: its own event loop, its own engine, the
// rings the control plane gives it. Requests are handled strictly in order.
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../native/addon';
import { log as rootLog } from '../util/log';
import { IothreadInit, IothreadReply, IothreadRequest } from './messages';
import { IothreadRuntime } from './runtime';

const init = workerData as IothreadInit;
const log = rootLog.child({ iothread: init.name });
native.setThreadName(init.name);
if (init.cpus.length > 0) native.setThreadAffinity(init.cpus);
const runtime = new IothreadRuntime(init.spec, log, undefined, init.pollMaxNs);
log.debug('iothread started', { engine: runtime.engineName, tid: native.gettid() });

let chain: Promise<void> = Promise.resolve();
parentPort!.on('message', (msg: { id: number; req: IothreadRequest }) => {
  chain = chain.then(async () => {
    const reply: IothreadReply = { id: msg.id };
    try {
      reply.value = await runtime.handle(msg.req);
    } catch (e) {
      reply.error = (e as Error).message;
    }
    parentPort!.postMessage(reply);
    if (msg.req.type === 'shutdown') parentPort!.close();
  });
});
parentPort!.postMessage({ id: 0, value: runtime.engineName } satisfies IothreadReply);
