// Property: whatever a hostile front-end sends, every fd it passes to the
// vhost-user back-end is closed exactly once by the time the connection is
// torn down, and the back-end closes no fd it was not given.
//
// A case is a sequence of control messages (often after a valid setup that
// starts a ring), each with real fds of a right or wrong kind (eventfd, memfd,
// socket, /dev/null), sometimes one fd too many or too few, with and without
// NEED_REPLY, plus raw garbage. native.close is wrapped to count closes: an fd
// left open leaks for the life of the server, and a second close of a number
// (by then perhaps reused) closes somebody else's file.
import fc from 'fast-check';
import * as fs from 'node:fs';
import { FrontendRequest as R, NEED_REPLY_FLAG, Payload, RawMessage, encodeMessage } from '../../protocol';
import { BlkDevice } from '../../src/blk/device';
import { LocalDataPlane } from '../../src/iothread/local';
import { Endpoint } from '../../src/transport/endpoint';
import { Logger } from '../../src/util/log';
import { PROTOCOL_FEATURES, VhostBackend } from '../../src/vhost/backend';
import { FakeEndpoint, settle } from '../support/fake-endpoint';
import { MemoryEngine } from '../support/memory-engine';
import { testDisk } from './blk-harness';

// The module object itself rather than an import binding, so that its `native` can be swapped.
// eslint-disable-next-line @typescript-eslint/no-var-requires
const addon = require('../../src/native/addon') as { native: typeof import('../../src/native/addon').native };

type FdKind = 'eventfd' | 'memfd' | 'socket' | 'null';

const MEMFD_BYTES = 1 << 20;
const SLOT_BYTES = 1 << 24;
const USER_BASE = 0x7f0000000000;
const QUEUES = 2;

interface RegionSpec { slot: number; pages: number; bad: 'none' | 'unaligned' | 'past-fd' }

type Step =
  | { m: 'features'; offered: boolean; value: bigint }
  | { m: 'protocol'; all: boolean; value: bigint }
  | { m: 'simple'; request: number }
  | { m: 'memTable'; regions: RegionSpec[]; kinds: FdKind[] }
  | { m: 'addMem'; region: RegionSpec; kind: FdKind }
  | { m: 'remMem'; region: RegionSpec; withFd: boolean; kind: FdKind }
  | { m: 'vringNum'; index: number; num: number }
  | { m: 'vringAddr'; index: number; slot: number }
  | { m: 'vringBase'; index: number; num: number }
  | { m: 'vringFd'; request: number; index: number; noFd: boolean; kind: FdKind }
  | { m: 'enable'; index: number; on: number }
  | { m: 'getBase'; index: number }
  | { m: 'backendReq'; kind: FdKind }
  | { m: 'fdRequest'; request: number; kind: FdKind }
  | { m: 'garbage'; request: number; flags: number; body: Uint8Array; nfds: number; kind: FdKind };

interface Sent { step: Step; needReply: boolean; fdDelta: number }

export interface BackendCase { setup: boolean; steps: Sent[] }

const fdKind = (): fc.Arbitrary<FdKind> => fc.oneof(
  { weight: 4, arbitrary: fc.constant<FdKind>('eventfd') },
  { weight: 1, arbitrary: fc.constantFrom<FdKind>('memfd', 'socket', 'null') },
);
const index = (): fc.Arbitrary<number> => fc.oneof({ weight: 5, arbitrary: fc.nat(QUEUES - 1) }, { weight: 1, arbitrary: fc.nat(255) });
const regionArb = (): fc.Arbitrary<RegionSpec> => fc.record({
  slot: fc.nat(3), pages: fc.integer({ min: 1, max: MEMFD_BYTES / 4096 }),
  bad: fc.oneof({ weight: 6, arbitrary: fc.constant('none' as const) }, { weight: 1, arbitrary: fc.constantFrom('unaligned' as const, 'past-fd' as const) }),
});

const stepArb = (): fc.Arbitrary<Step> => fc.oneof(
  fc.record({ m: fc.constant('features' as const), offered: fc.boolean(), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  fc.record({ m: fc.constant('protocol' as const), all: fc.boolean(), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  fc.record({ m: fc.constant('simple' as const), request: fc.constantFrom(R.GET_FEATURES, R.SET_OWNER, R.GET_QUEUE_NUM, R.RESET_DEVICE, R.RESET_OWNER, R.GET_STATUS, R.GET_MAX_MEM_SLOTS) }),
  fc.array(fc.tuple(regionArb(), fdKind()), { maxLength: 3 }).map((rs) => ({ m: 'memTable' as const, regions: rs.map(([r]) => r), kinds: rs.map(([, k]) => k) })),
  fc.record({ m: fc.constant('addMem' as const), region: regionArb(), kind: fdKind() }),
  fc.record({ m: fc.constant('remMem' as const), region: regionArb(), withFd: fc.boolean(), kind: fdKind() }),
  fc.record({ m: fc.constant('vringNum' as const), index: index(), num: fc.oneof(fc.constantFrom(8, 64, 256), fc.nat(2048)) }),
  fc.record({ m: fc.constant('vringAddr' as const), index: index(), slot: fc.nat(3) }),
  fc.record({ m: fc.constant('vringBase' as const), index: index(), num: fc.oneof(fc.nat(16), fc.nat({ max: 0xffffffff })) }),
  fc.record({ m: fc.constant('vringFd' as const), request: fc.constantFrom(R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR), index: index(), noFd: fc.boolean(), kind: fdKind() }),
  fc.record({ m: fc.constant('enable' as const), index: index(), on: fc.nat(2) }),
  fc.record({ m: fc.constant('getBase' as const), index: index() }),
  fc.record({ m: fc.constant('backendReq' as const), kind: fc.constantFrom<FdKind>('socket', 'eventfd') }),
  fc.record({ m: fc.constant('fdRequest' as const), request: fc.constantFrom(R.SET_LOG_BASE, R.SET_LOG_FD, R.SET_INFLIGHT_FD, R.GPU_SET_SOCKET, R.SET_DEVICE_STATE_FD), kind: fdKind() }),
  fc.record({ m: fc.constant('garbage' as const), request: fc.nat(50), flags: fc.constantFrom(0, 1, 9, 5, 0x11), body: fc.uint8Array({ maxLength: 48 }), nfds: fc.nat(3), kind: fdKind() }),
);

export const backendCaseArb = (): fc.Arbitrary<BackendCase> => fc.record({
  setup: fc.oneof({ weight: 2, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  steps: fc.array(fc.record({
    step: stepArb(),
    needReply: fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    fdDelta: fc.oneof({ weight: 10, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(-1, 1) }),
  }), { maxLength: 10 }),
});

/** A valid start, as QEMU does it: ring 0 running over one region. */
const SETUP: Step[] = [
  { m: 'protocol', all: true, value: 0n },
  { m: 'features', offered: true, value: 0n },
  { m: 'memTable', regions: [{ slot: 0, pages: 16, bad: 'none' }], kinds: ['memfd'] },
  { m: 'vringNum', index: 0, num: 64 },
  { m: 'vringAddr', index: 0, slot: 0 },
  { m: 'vringBase', index: 0, num: 0 },
  { m: 'vringFd', request: R.SET_VRING_CALL, index: 0, noFd: false, kind: 'eventfd' },
  { m: 'vringFd', request: R.SET_VRING_KICK, index: 0, noFd: false, kind: 'eventfd' },
  { m: 'enable', index: 0, on: 1 },
];

function regionPayload(r: RegionSpec) {
  return {
    guestPhysAddr: r.slot * SLOT_BYTES + (r.bad === 'unaligned' ? 512 : 0),
    size: r.bad === 'past-fd' ? 2 * MEMFD_BYTES : r.pages * 4096,
    userAddr: USER_BASE + r.slot * SLOT_BYTES,
    mmapOffset: 0,
  };
}

/** The message for a step and the fd kinds it carries (before fdDelta). */
function messageOf(s: Step, offered: bigint): { request: number; payload: Payload; kinds: FdKind[] } | { raw: Omit<RawMessage, 'fds'>; kinds: FdKind[] } {
  switch (s.m) {
    case 'features': return { request: R.SET_FEATURES, payload: { kind: 'u64', value: s.offered ? offered : s.value }, kinds: [] };
    case 'protocol': return { request: R.SET_PROTOCOL_FEATURES, payload: { kind: 'u64', value: s.all ? PROTOCOL_FEATURES : s.value & PROTOCOL_FEATURES }, kinds: [] };
    case 'simple': return { request: s.request, payload: { kind: 'none' }, kinds: [] };
    case 'memTable': return { request: R.SET_MEM_TABLE, payload: { kind: 'memoryTable', regions: s.regions.map(regionPayload) }, kinds: s.kinds };
    case 'addMem': return { request: R.ADD_MEM_REG, payload: { kind: 'memoryRegion', region: regionPayload(s.region) }, kinds: [s.kind] };
    case 'remMem': return { request: R.REM_MEM_REG, payload: { kind: 'memoryRegion', region: regionPayload(s.region) }, kinds: s.withFd ? [s.kind] : [] };
    case 'vringNum': return { request: R.SET_VRING_NUM, payload: { kind: 'vringState', index: s.index, num: s.num }, kinds: [] };
    case 'vringAddr': {
      const base = USER_BASE + s.slot * SLOT_BYTES;
      return {
        request: R.SET_VRING_ADDR, kinds: [],
        payload: { kind: 'vringAddr', index: s.index, flags: 0, descUserAddr: base + 0x1000, availUserAddr: base + 0x2000, usedUserAddr: base + 0x3000, logGuestAddr: 0 },
      };
    }
    case 'vringBase': return { request: R.SET_VRING_BASE, payload: { kind: 'vringState', index: s.index, num: s.num }, kinds: [] };
    case 'vringFd': return { request: s.request, payload: { kind: 'vringFd', index: s.index, noFd: s.noFd }, kinds: s.noFd ? [] : [s.kind] };
    case 'enable': return { request: R.SET_VRING_ENABLE, payload: { kind: 'vringState', index: s.index, num: s.on }, kinds: [] };
    case 'getBase': return { request: R.GET_VRING_BASE, payload: { kind: 'vringState', index: s.index, num: 0 }, kinds: [] };
    case 'backendReq': return { request: R.SET_BACKEND_REQ_FD, payload: { kind: 'none' }, kinds: [s.kind] };
    case 'fdRequest': {
      const payload: Payload = s.request === R.SET_LOG_BASE ? { kind: 'log', mmapSize: 4096, mmapOffset: 0 }
        : s.request === R.SET_INFLIGHT_FD ? { kind: 'inflight', mmapSize: 4096, mmapOffset: 0, numQueues: 1, queueSize: 64 }
          : s.request === R.SET_DEVICE_STATE_FD ? { kind: 'deviceState', direction: 0, phase: 0 } : { kind: 'none' };
      return { request: s.request, payload, kinds: [s.kind] };
    }
    case 'garbage':
      return { raw: { request: s.request, flags: s.flags, size: s.body.length, body: s.body }, kinds: Array(s.nfds).fill(s.kind) };
  }
}

/** What the back-end got to, for coverage statistics. */
export interface BackendOutcome { closed: string; started: number; regions: number; replies: number }

export async function runBackendCase(c: BackendCase): Promise<BackendOutcome> {
  const orig = addon.native;
  const given = new Set<number>();
  const foreign: string[] = [];
  const ours: number[] = [];
  // Calls through addon.native look the property up each time, so this wrapper sees every close.
  addon.native = {
    ...orig,
    close: (fd: number) => {
      if (given.has(fd)) given.delete(fd);
      else foreign.push(`fd ${fd}`);
      orig.close(fd);
    },
  };
  const make = (kind: FdKind): number => {
    switch (kind) {
      case 'eventfd': return orig.eventfd(0);
      case 'memfd': {
        const fd = orig.memfdCreate('vublk-fuzz');
        fs.ftruncateSync(fd, MEMFD_BYTES);
        return fd;
      }
      case 'socket': {
        const [a, b] = orig.socketpair();
        ours.push(b);
        return a;
      }
      case 'null': return fs.openSync('/dev/null', 'r');
    }
  };

  const ep = new FakeEndpoint();
  const disk = testDisk({ fd: -1, sizeBytes: 1 << 20, discard: false, writeZeroes: false });
  const device = new BlkDevice({ disk, maxQueues: QUEUES, writeback: true });
  const dataPlane = new LocalDataPlane({ type: 'blk', disk, writeback: true, aio: 'threads', lanes: QUEUES }, new Logger(),
    () => (_n, done, onRoundEnd) => new MemoryEngine(new Uint8Array(1 << 20), new Uint8Array(1), done, { onRoundEnd }));
  const backend = new VhostBackend(ep as unknown as Endpoint, device, dataPlane, new Logger());
  const offered = backend.offeredFeatures;
  let outcome: BackendOutcome = { closed: '', started: 0, regions: 0, replies: 0 };
  try {
    const steps: Sent[] = [...(c.setup ? SETUP.map((step) => ({ step, needReply: true, fdDelta: 0 })) : []), ...c.steps];
    for (const s of steps) {
      const m = messageOf(s.step, offered);
      const kinds = [...m.kinds];
      if (s.fdDelta > 0) kinds.push('eventfd');
      const dropped = s.fdDelta < 0 ? kinds.pop() : undefined;
      const fds = kinds.map(make);
      if (dropped !== undefined) ours.push(make(dropped));
      for (const fd of fds) given.add(fd);
      const flags = s.needReply ? NEED_REPLY_FLAG : 0;
      const raw: RawMessage = 'raw' in m ? { ...m.raw, fds } : (() => {
        const bytes = encodeMessage(m.request, flags, m.payload);
        return { request: m.request, flags: bytes[4] | (bytes[5] << 8), size: bytes.length - 12, body: bytes.subarray(12), fds };
      })();
      backend.receive(raw);
      await settle();
    }
    await settle();
    outcome = { closed: ep.closedReason ?? '', started: backend.state.started.length, regions: backend.state.regions, replies: ep.sent.length };
    await backend.teardown();
    await dataPlane.shutdown();
  } finally {
    addon.native = orig;
    for (const fd of ours) orig.close(fd);
  }
  if (given.size > 0) throw new Error(`fds never closed: ${[...given].join(', ')}`);
  if (foreign.length > 0) throw new Error(`closed fds it was not given (or twice): ${foreign.join(', ')}`);
  return outcome;
}

export const backendFdsProperty = (): fc.IAsyncPropertyWithHooks<[BackendCase]> =>
  fc.asyncProperty(backendCaseArb(), async (c) => { await runBackendCase(c); });
