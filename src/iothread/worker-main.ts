// Entry point of an iothread worker: its own event loop, and the devices the
// control plane attaches to it, each with its own engine and rings. Requests
// are handled strictly in order.
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../native/addon';
import { log as rootLog } from '../util/log';
import { IothreadDevice } from './iothread-device';
import { IothreadInit, IothreadReply, IothreadRequest } from './messages';

const init = workerData as IothreadInit;
const log = rootLog.child({ iothread: init.name });
native.setThreadName(init.name);
if (init.cpus.length > 0) native.setThreadAffinity(init.cpus);
const devices = new Map<number, IothreadDevice>();
log.debug('iothread started', { tid: native.gettid() });

async function handle(req: IothreadRequest): Promise<string | number | undefined> {
  switch (req.type) {
    case 'attach': {
      if (devices.has(req.device)) throw new Error(`device ${req.device} is already attached`);
      // The export id when the control plane gave it; the internal device number otherwise.
      const device = new IothreadDevice(req.spec, log.child(req.spec.logContext ?? { device: req.device }), undefined, init.pollMaxNs);
      devices.set(req.device, device);
      return device.engineName;
    }
    case 'device': {
      const device = devices.get(req.device);
      if (device === undefined) throw new Error(`device ${req.device} is not attached`);
      return device.handle(req.req);
    }
    case 'detach': {
      const device = devices.get(req.device);
      devices.delete(req.device);
      await device?.shutdown();
      return undefined;
    }
    case 'exit':
      for (const [id, device] of devices) {
        devices.delete(id);
        await device.shutdown();
      }
      return undefined;
  }
}

let chain: Promise<void> = Promise.resolve();
parentPort!.on('message', (msg: { id: number; req: IothreadRequest }) => {
  chain = chain.then(async () => {
    const reply: IothreadReply = { id: msg.id };
    try {
      reply.value = await handle(msg.req);
    } catch (e) {
      reply.error = (e as Error).message;
    }
    parentPort!.postMessage(reply);
    if (msg.req.type === 'exit') parentPort!.close();
  });
});
parentPort!.postMessage({ id: 0, value: native.gettid() } satisfies IothreadReply);
