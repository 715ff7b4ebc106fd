// Driving a VhostBackend in-process: a stand-in for its control connection
// that records what it sends, and raw messages as the framing layer hands them up.
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { Message, MessageReader, Payload, ProtocolError, RawMessage, decodeReply, encodeMessage } from '../../protocol';

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

/**
 * Hand one control message to a back-end driven through `ep`, let it run, and
 * decode the reply it sent, if any (with the fds that came with it).
 */
export async function exchange(backend: { receive(raw: RawMessage): void }, ep: FakeEndpoint, request: number, payload: Payload,
                               fds: number[] = [], flags = 0): Promise<Message | undefined> {
  const before = ep.sent.length;
  backend.receive(raw(request, payload, fds, flags));
  await settle();
  if (ep.sent.length === before) return undefined;
  const bytes = ep.sent[ep.sent.length - 1];
  const reader = new MessageReader();
  let r = reader.feed(bytes.subarray(0, 12), ep.sentFds[ep.sentFds.length - 1]);
  if (r.type === 'more' && bytes.length > 12) r = reader.feed(bytes.subarray(12));
  const m = decodeReply(request, (r as { raw: RawMessage }).raw);
  assert.ok(!(m instanceof ProtocolError), `bad reply: ${(m as Error).message}`);
  return m as Message;
}
