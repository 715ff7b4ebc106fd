// Cross-object checks of a configuration that the schema cannot express:
// unique ids, and references (exports → nodes and iothreads, raw nodes →
// file nodes, monitors → chardevs) that must resolve. Done before anything
// starts, so a bad configuration leaves nothing behind.
import { BlockdevOptions, VublkConfig } from './model';
import { ConfigError } from './schema';

export function checkConfig(c: VublkConfig, where: string): void {
  const nodes = new Set<string>();
  const addNode = (b: BlockdevOptions, key: string): void => {
    const name = b['node-name'];
    if (name === undefined) return;
    if (nodes.has(name)) throw new ConfigError(`${where}: ${key}: duplicate node-name '${name}'`);
    nodes.add(name);
  };
  c.blockdevs.forEach((b, i) => {
    if (b['node-name'] === undefined) throw new ConfigError(`${where}: blockdevs[${i}]: missing key 'node-name'`);
    if (typeof b.file === 'string' && !nodes.has(b.file)) {
      throw new ConfigError(`${where}: blockdevs[${i}].file: no block node named '${b.file}' (define it before this one)`);
    }
    if (typeof b.file === 'object') addNode(b.file, `blockdevs[${i}].file.node-name`);
    addNode(b, `blockdevs[${i}].node-name`);
  });
  const iothreads = new Set<string>();
  c.objects.forEach((o, i) => {
    if (iothreads.has(o.id)) throw new ConfigError(`${where}: objects[${i}].id: duplicate id '${o.id}'`);
    iothreads.add(o.id);
  });
  const exportIds = new Set<string>();
  const sockets = new Set<string>();
  c.exports.forEach((e, i) => {
    if (exportIds.has(e.id)) throw new ConfigError(`${where}: exports[${i}].id: duplicate id '${e.id}'`);
    exportIds.add(e.id);
    if (!nodes.has(e['node-name'])) throw new ConfigError(`${where}: exports[${i}].node-name: no block node named '${e['node-name']}'`);
    const threads = e['x-vublk-iothread-vq-mapping']?.map((m) => m.iothread) ?? (e.iothread === undefined ? [] : ([] as string[]).concat(e.iothread));
    for (const t of threads) {
      if (!iothreads.has(t)) throw new ConfigError(`${where}: exports[${i}].iothread: no iothread object with id '${t}'`);
    }
    const socket = e.addr.type === 'unix' ? e.addr.path : `fd:${e.addr.str}`;
    if (sockets.has(socket)) throw new ConfigError(`${where}: exports[${i}].addr: socket '${socket}' is used by another export`);
    sockets.add(socket);
  });
  const chardevs = new Set<string>();
  c.chardevs.forEach((d, i) => {
    if (chardevs.has(d.id)) throw new ConfigError(`${where}: chardevs[${i}].id: duplicate id '${d.id}'`);
    chardevs.add(d.id);
  });
  c.monitors.forEach((m, i) => {
    if (!chardevs.has(m.chardev)) throw new ConfigError(`${where}: monitors[${i}].chardev: no chardev with id '${m.chardev}'`);
  });
}
