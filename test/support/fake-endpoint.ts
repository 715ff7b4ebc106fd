// Driving a VhostBackend in-process: a stand-in for its control connection
// that records what it sends, and raw messages as the framing layer hands them up.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { MessageReader, Payload, RawMessage, encodeMessage } from '../../protocol';

/** Records what the back-end sends instead of writing to a socket. */
export class FakeEndpoint {
  sent: Uint8Array[] = [];
  /** The fds sent with each message (the sender keeps them open). */
  sentFds: number[][] = [];
  closedReason: string | undefined;
  get closed(): boolean { return this.closedReason !== undefined; }
  send(bytes: Uint8Array, fds: number[] | null = null): void {
    this.sent.push(bytes);
    this.sentFds.push(fds ?? []);
  }
  close(reason = 'closed'): void { this.closedReason ??= reason; }
}

/** A message as the framing layer hands it to the back-end, with `fds` attached. */
export function raw(request: number, payload: Payload, fds: number[] = [], flags = 0): RawMessage {
  const bytes = encodeMessage(request, flags, payload);
  const reader = new MessageReader();
  let r = reader.feed(bytes.subarray(0, 12), fds);
  if (r.type === 'more') r = reader.feed(bytes.subarray(12));
  assert.equal(r.type, 'message');
  return (r as { raw: RawMessage }).raw;
}

/** Let queued promise callbacks and immediates run. */
export const settle = async (): Promise<void> => { for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r)); };

export function isOpen(fd: number): boolean {
  try { fs.fstatSync(fd); return true; } catch { return false; }
}
