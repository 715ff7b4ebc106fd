// Closed-loop load over a connected BlkFrontend: exactly `qd` requests in
// flight per queue, each completion immediately replaced by a new request.
//
// Every slot owns fixed buffers in guest RAM (header, data, status); a request
// only rewrites the 16-byte header and the status byte. Two drivers:
// * 'ring' takes the queues over from the frontend's promise layer and walks
//   the DriverQueue itself on call-fd wakeups: no promise, no guest-RAM
//   allocation and no data copy per request. This is what the benchmark uses.
// * 'promise' goes through BlkFrontend.submit(), a promise and a copy of the
//   writable buffers per request: shows the ceiling of the frontend's API.
import { performance } from 'node:perf_hooks';
import {
  BlkFrontend, DriverBuffer, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
} from '../frontend';
import { POLL_READABLE, Watcher, native } from '../native/addon';
import { SampleRecorder } from './stats';

export type Op = 'randread' | 'randwrite' | 'randrw' | 'getid';
export type DriverKind = 'ring' | 'promise';

export interface Workload {
  op: Op;
  /** Bytes per request; a multiple of 512. */
  blockSize: number;
  /** Requests in flight per queue. */
  qd: number;
  /** Share of writes for randrw, 0..100. */
  writePercent: number;
  /** Device size in 512-byte sectors (requests stay inside it). */
  capacity: number;
}

/** What the streams of one run share: phase flags and the counters of the measured interval. */
export class Measure {
  recording = false;
  stopping = false;
  ios = 0;
  errors = 0;
  /** Interrupts received while recording (ring driver only). */
  interrupts = 0;
  readonly latencyUs = new SampleRecorder();

  done(startMs: number, status: number): void {
    if (status !== VIRTIO_BLK_S_OK) this.errors++;
    if (!this.recording) return;
    this.ios++;
    this.latencyUs.add((performance.now() - startMs) * 1000);
  }
}

const ID_BYTES = 20;

/** The fixed buffers of one queue's slots and the per-request header update. */
class Slots {
  private readonly hdr: number[] = [];
  readonly status: number[] = [];
  private readonly chains: DriverBuffer[][][] = [];
  private readonly blocks: number;

  constructor(private readonly fe: BlkFrontend, private readonly w: Workload) {
    const ram = fe.ram;
    this.blocks = Math.floor(w.capacity / (w.blockSize / 512));
    if (this.blocks < 1) throw new Error('the device is smaller than one block');
    for (let s = 0; s < w.qd; s++) {
      const hdr = ram.alloc(16, 16);
      const data = ram.alloc(w.blockSize, 4096);
      const status = ram.alloc(1);
      const h = { addr: hdr, len: 16, writable: false };
      const st = { addr: status, len: 1, writable: true };
      this.hdr.push(hdr);
      this.status.push(status);
      // Indexed by request type: read, write, get-id.
      this.chains.push([
        [h, { addr: data, len: w.blockSize, writable: true }, st],
        [h, { addr: data, len: w.blockSize, writable: false }, st],
        [h, { addr: data, len: ID_BYTES, writable: true }, st],
      ]);
    }
  }

  /** Write a fresh header for slot `s`; returns the chain to submit. */
  prepare(s: number): DriverBuffer[] {
    const w = this.w;
    let kind: number;
    let type: number;
    if (w.op === 'getid') [kind, type] = [2, VIRTIO_BLK_T_GET_ID];
    else if (w.op === 'randwrite' || (w.op === 'randrw' && Math.random() * 100 < w.writePercent)) [kind, type] = [1, VIRTIO_BLK_T_OUT];
    else [kind, type] = [0, VIRTIO_BLK_T_IN];
    const sector = type === VIRTIO_BLK_T_GET_ID ? 0 : Math.floor(Math.random() * this.blocks) * (w.blockSize / 512);
    const v = this.fe.ram.view;
    const h = this.hdr[s];
    v.setUint32(h, type, true);
    v.setUint32(h + 4, 0, true);
    v.setUint32(h + 8, sector % 0x1_0000_0000, true);
    v.setUint32(h + 12, Math.floor(sector / 0x1_0000_0000), true);
    this.fe.ram.bytes[this.status[s]] = 0xff;
    return this.chains[s][kind];
  }
}

export interface Stream {
  /** Resolves once `stopping` is set and nothing is in flight any more. */
  readonly drained: Promise<void>;
}

/** Ring driver for one queue: reap on the call fd, resubmit, publish, kick once per batch. */
function ringStream(fe: BlkFrontend, qi: number, w: Workload, m: Measure): Stream {
  const rq = fe.queue(qi);
  // Take the queue away from the promise layer: stops its call-fd watcher.
  rq.close(new Error('queue driven by the benchmark'));
  const ring = rq.ring;
  const bytes = fe.ram.bytes;
  const slots = new Slots(fe, w);
  const headSlot = new Int32Array(ring.size).fill(-1);
  const started = new Float64Array(w.qd);
  let inFlight = 0;
  let finish!: () => void;
  const drained = new Promise<void>((r) => { finish = r; });

  const submit = (s: number): void => {
    const head = ring.add(slots.prepare(s));
    if (head < 0) throw new Error(`queue ${qi}: no free descriptors (queue too small for qd ${w.qd})`);
    headSlot[head] = s;
    started[s] = performance.now();
    inFlight++;
  };

  let watcher: Watcher | undefined;
  const onCall = (events: number): void => {
    if (events < 0) throw new Error(`call fd of queue ${qi} failed (errno ${-events})`);
    const signals = native.eventfdRead(rq.callFd);
    if (m.recording) m.interrupts += signals;
    do {
      for (let e = ring.reap(); e !== undefined; e = ring.reap()) {
        const s = e.known ? headSlot[e.id] : -1;
        if (s < 0) throw new Error(`queue ${qi}: device returned unknown head ${e.id}`);
        inFlight--;
        m.done(started[s], bytes[slots.status[s]]);
        if (!m.stopping) submit(s);
      }
      ring.kick();
    } while (ring.enableInterrupts());
    if (m.stopping && inFlight === 0) {
      watcher?.stop();
      watcher = undefined;
      finish();
    }
  };

  ring.enableInterrupts();
  watcher = native.watch(rq.callFd, POLL_READABLE, onCall);
  for (let s = 0; s < w.qd; s++) submit(s);
  ring.kick();
  return { drained };
}

/** Promise driver for one queue: one async loop per slot over BlkFrontend.submit(). */
function promiseStream(fe: BlkFrontend, qi: number, w: Workload, m: Measure): Stream {
  const slots = new Slots(fe, w);
  const loop = async (s: number): Promise<void> => {
    while (!m.stopping) {
      const chain = slots.prepare(s);
      const t0 = performance.now();
      const c = await fe.submit(qi, chain);
      m.done(t0, c.status);
    }
  };
  return { drained: Promise.all(Array.from({ length: w.qd }, (_, s) => loop(s))).then(() => undefined) };
}

/** Start `qd` requests on each of the frontend's queues. */
export function startLoad(kind: DriverKind, fe: BlkFrontend, w: Workload, m: Measure): Stream[] {
  return fe.queues.map((_, qi) => (kind === 'ring' ? ringStream : promiseStream)(fe, qi, w, m));
}
