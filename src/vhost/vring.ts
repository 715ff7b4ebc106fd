// Control-plane record of one vring: what the front-end has told us so far.
import { native } from '../native/addon';

export class VringState {
  size = 0;
  /** Guest physical addresses, translated from the front-end's user addresses. */
  descAddr = -1;
  availAddr = -1;
  usedAddr = -1;
  base = 0;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  enabled = false;
  /** Kick fd received and not stopped since (the spec's "started"). */
  started = false;

  constructor(readonly index: number) {}

  get addressed(): boolean { return this.descAddr >= 0; }

  /** Replace an fd slot, closing what it held. */
  static swapFd(old: number, fd: number): number {
    if (old >= 0 && old !== fd) native.close(old);
    return fd;
  }

  closeFds(): void {
    this.kickFd = VringState.swapFd(this.kickFd, -1);
    this.callFd = VringState.swapFd(this.callFd, -1);
    this.errFd = VringState.swapFd(this.errFd, -1);
  }
}
