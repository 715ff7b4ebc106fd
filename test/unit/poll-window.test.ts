import { strict as assert } from 'node:assert';
import { PollWindow } from '../../src/dataplane/queue-runner';

describe('adaptive poll window', () => {
  it('never polls when disabled', () => {
    const w = new PollWindow(0);
    w.idleSince = 1000;
    w.kicked(2000);
    assert.equal(w.ns, 0);
  });

  it('grows when kicks come soon after polling stopped, up to the maximum', () => {
    const w = new PollWindow(12000);
    const seen: number[] = [];
    for (let t = 0; t < 5; t++) {
      w.idleSince = 1_000_000 * (t + 1);
      w.kicked(w.idleSince + 10_000); // 10 µs later: a longer window would have caught it
      seen.push(w.ns);
    }
    assert.deepEqual(seen, [4000, 8000, 12000, 12000, 12000]);
  });

  it('does not grow past what the idle gap needed and drops to zero after a long idle', () => {
    const w = new PollWindow(32768);
    w.ns = 16000;
    w.idleSince = 1000;
    w.kicked(1000 + 10_000); // caught within the current window size: keep it
    assert.equal(w.ns, 16000);
    w.idleSince = 5000;
    w.kicked(5000 + 1_000_000); // idle for 1 ms: polling would only have burnt CPU
    assert.equal(w.ns, 0);
  });

  it('only learns from kicks that follow a poll window', () => {
    const w = new PollWindow(32768);
    w.kicked(123456); // no window ended before this kick
    assert.equal(w.ns, 0);
  });
});
