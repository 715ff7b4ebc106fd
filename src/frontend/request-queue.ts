// One started virtqueue of the front-end: buffers in guest RAM, the driver
// ring, the kick and call eventfds. submit() returns a promise per chain;
// chains submitted in the same turn of the event loop are published together
// with at most one kick, so Promise.all() over many submits pipelines them.
import { POLL_READABLE, Watcher, native } from '../native/addon';
import { DriverBuffer, DriverQueue, DriverRing, UsedElement } from './driver-queue';
import { GuestRam } from './guest-ram';

export type RequestPart =
  /** A device-readable buffer holding these bytes. */
  | { readable: Uint8Array }
  /** A device-writable buffer of `writable` bytes, pre-filled with `fill` (default 0). */
  | { writable: number; fill?: number }
  /** A buffer the caller placed (or a bogus address): used as is, never freed. */
  | { addr: number; len: number; writable: boolean };

export interface SubmitOptions {
  /** Put the chain in an indirect table (needs VIRTIO_F_INDIRECT_DESC). */
  indirect?: boolean;
}

export interface Completion {
  head: number;
  /** used.len as the device reported it. */
  usedLen: number;
  /** Contents of every device-writable part after completion, in chain order. */
  writable: Uint8Array[];
  /** Last byte of the last non-empty writable part (virtio-blk's status); -1 if there is none. */
  status: number;
}

interface Pending {
  buffers: DriverBuffer[];
  /** Addresses we allocated for this request and free on completion. */
  owned: number[];
  indirect: boolean;
  resolve(c: Completion): void;
  reject(e: Error): void;
}

export class RequestQueue {
  private readonly pending = new Map<number, Pending>();
  /** Requests waiting for free descriptors, in submission order. */
  private readonly backlog: Pending[] = [];
  private watcher: Watcher | undefined;
  private kickScheduled = false;
  private failure: Error | undefined;
  /** Used elements naming heads we never submitted (device bugs or raw-mode leftovers). */
  readonly unknownUsed: UsedElement[] = [];
  completed = 0;
  /** Interrupts the device sent (eventfd writes; several read at once count each). */
  interrupts = 0;

  constructor(readonly index: number, readonly ring: DriverRing, readonly ram: GuestRam,
              public kickFd: number, readonly callFd: number) {}

  /** The ring as a split ring, for tests that play with split-ring internals. */
  get split(): DriverQueue {
    if (!(this.ring instanceof DriverQueue)) throw new Error(`queue ${this.index} is not a split ring`);
    return this.ring;
  }

  /** Ask for interrupts and start reaping on the call eventfd. */
  start(): void {
    this.ring.enableInterrupts();
    this.watcher = native.watch(this.callFd, POLL_READABLE, (events) => this.onCall(events));
  }

  /** Requests submitted and not completed (in the ring or waiting for descriptors). */
  get inFlight(): number { return this.pending.size + this.backlog.length; }

  submit(parts: readonly RequestPart[], opts: SubmitOptions = {}): Promise<Completion> {
    return new Promise<Completion>((resolve, reject) => {
      if (this.failure !== undefined) return reject(this.failure);
      const owned: number[] = [];
      let buffers: DriverBuffer[];
      try {
        buffers = parts.map((p) => this.place(p, owned));
      } catch (e) {
        for (const a of owned) this.ram.free(a);
        return reject(e as Error);
      }
      const p: Pending = { buffers, owned, indirect: opts.indirect === true, resolve, reject };
      if (this.backlog.length > 0 || !this.enqueue(p)) this.backlog.push(p);
    });
  }

  /** Reap whatever the device has published, without waiting for an interrupt. */
  poll(): number {
    let n = 0;
    do {
      for (let e = this.ring.reap(); e !== undefined; e = this.ring.reap()) {
        this.complete(e);
        n++;
      }
      // Re-arming and re-checking closes the race with a completion published meanwhile.
    } while (this.ring.enableInterrupts());
    this.drainBacklog();
    return n;
  }

  /** Reject everything outstanding and refuse new submissions. */
  fail(error: Error): void {
    if (this.failure === undefined) this.failure = error;
    for (const p of [...this.pending.values(), ...this.backlog]) this.settle(p, undefined, error);
    this.pending.clear();
    this.backlog.length = 0;
  }

  /** Stop watching the call fd; does not close the fds (the owner does). */
  close(error: Error): void {
    this.watcher?.stop();
    this.watcher = undefined;
    this.fail(error);
  }

  private place(part: RequestPart, owned: number[]): DriverBuffer {
    if ('addr' in part) return { addr: part.addr, len: part.len, writable: part.writable };
    const len = 'readable' in part ? part.readable.length : part.writable;
    if (len === 0) return { addr: 0, len: 0, writable: !('readable' in part) };
    const addr = this.ram.alloc(len);
    owned.push(addr);
    if ('readable' in part) {
      this.ram.write(addr, part.readable);
      return { addr, len, writable: false };
    }
    this.ram.fill(addr, len, part.fill ?? 0);
    return { addr, len, writable: true };
  }

  private enqueue(p: Pending): boolean {
    const head = this.ring.add(p.buffers, { indirect: p.indirect });
    if (head < 0) return false;
    this.pending.set(head, p);
    this.scheduleKick();
    return true;
  }

  private drainBacklog(): void {
    while (this.backlog.length > 0 && this.enqueue(this.backlog[0])) this.backlog.shift();
  }

  private scheduleKick(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    queueMicrotask(() => {
      this.kickScheduled = false;
      this.ring.kick();
    });
  }

  private onCall(events: number): void {
    if (events < 0) {
      this.fail(new Error(`call eventfd of queue ${this.index} failed (errno ${-events})`));
      return;
    }
    this.interrupts += native.eventfdRead(this.callFd);
    this.poll();
  }

  private complete(e: UsedElement): void {
    const p = e.known ? this.pending.get(e.id) : undefined;
    if (p === undefined) {
      this.unknownUsed.push(e);
      return;
    }
    this.pending.delete(e.id);
    this.completed++;
    const writable: Uint8Array[] = [];
    let status = -1;
    for (const b of p.buffers) {
      if (!b.writable) continue;
      const bytes = b.len > 0 && b.addr + b.len <= this.ram.size ? this.ram.read(b.addr, b.len) : new Uint8Array(0);
      writable.push(bytes);
      if (bytes.length > 0) status = bytes[bytes.length - 1];
    }
    this.settle(p, { head: e.id, usedLen: e.len, writable, status });
  }

  private settle(p: Pending, c: Completion | undefined, error?: Error): void {
    for (const a of p.owned) this.ram.free(a);
    p.owned.length = 0;
    if (c !== undefined) p.resolve(c);
    else p.reject(error as Error);
  }
}
