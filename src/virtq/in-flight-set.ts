// Which requests of a queue are taken and not yet returned, by id (a split
// ring's head, a packed ring's buffer id), and who waits for them: the part of
// ring bookkeeping both layouts share.

export class InFlightSet {
  /** Requests taken from the ring and not yet returned. */
  count = 0;
  /** 1 for each id taken and not yet returned: a driver may not offer it again meanwhile. */
  private readonly ids: Uint8Array;
  /** Callers waiting for the requests that were in flight when they asked (see whenDone). */
  private waiters: Array<{ ids: Uint8Array; count: number; done: () => void }> = [];

  constructor(size: number) {
    this.ids = new Uint8Array(size);
  }

  has(id: number): boolean { return this.ids[id] !== 0; }

  add(id: number): void {
    this.ids[id] = 1;
    this.count++;
  }

  remove(id: number): void {
    this.ids[id] = 0;
    this.count--;
    if (this.waiters.length === 0) return;
    for (const w of this.waiters) {
      if (w.ids[id] === 0) continue;
      w.ids[id] = 0;
      if (--w.count === 0) w.done();
    }
    this.waiters = this.waiters.filter((w) => w.count > 0);
  }

  /** Call `done` once every request in flight now has been returned (at once if none is). */
  whenDone(done: () => void): void {
    if (this.count === 0) return done();
    this.waiters.push({ ids: this.ids.slice(), count: this.count, done });
  }
}
