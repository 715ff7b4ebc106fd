// A round of completions delivered by a storage engine from the event loop
// (an io_uring wakeup, a thread-pool completion). Queues that complete requests
// during a round publish them when it ends, together, instead of each
// scheduling a turn of the loop of its own: no setImmediate per round, no extra
// loop iteration (and its epoll_wait), the guest sees the batch sooner.

export interface RoundMember {
  /** The round ended: publish what completed during it. */
  roundEnded(): void;
}

export class CompletionRound {
  private isOpen = false;
  /** members[0, count) joined this round; slots are reused (no array resize per round). */
  private readonly members: Array<RoundMember | undefined> = [];
  private count = 0;

  get open(): boolean { return this.isOpen; }

  /** Completions are being delivered (idempotent within a round). */
  begin(): void {
    this.isOpen = true;
  }

  /** Called by a member with something to publish, at most once per round (the member keeps a flag). */
  join(member: RoundMember): void {
    this.members[this.count++] = member;
  }

  /** The engine delivered the round's last completion. */
  end(): void {
    // Closed first: what members complete while publishing is not this round's (and
    // cannot join it), so the list does not change under the walk.
    this.isOpen = false;
    // Setting an array's length is a runtime call, and end() runs once per delivery round.
    const members = this.members;
    const n = this.count;
    this.count = 0;
    for (let i = 0; i < n; i++) {
      const member = members[i]!;
      members[i] = undefined; // a queue stopped later is not kept alive from here
      member.roundEnded();
    }
  }
}
