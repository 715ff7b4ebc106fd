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
  private readonly members: RoundMember[] = [];

  get open(): boolean { return this.isOpen; }

  /** Completions are being delivered (idempotent within a round). */
  begin(): void {
    this.isOpen = true;
  }

  /** Called by a member with something to publish, at most once per round (the member keeps a flag). */
  join(member: RoundMember): void {
    this.members.push(member);
  }

  /** The engine delivered the round's last completion. */
  end(): void {
    // Closed first: what members complete while publishing is not this round's (and
    // cannot join it), so the list does not change under the walk.
    this.isOpen = false;
    const members = this.members;
    for (let i = 0; i < members.length; i++) members[i].roundEnded();
    members.length = 0;
  }
}
