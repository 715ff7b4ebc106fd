// Endpoint.send's fdsSent callback: a caller handing fds over may close them
// only once they left with their message, or once they never will.
import { strict as assert } from 'node:assert';
import { native } from '../../src/native/addon';
import { Endpoint } from '../../src/transport/endpoint';
import { waitFor } from '../support/wait';

function endpoint(fd: number): Endpoint {
  const e = new Endpoint(fd, { message: () => undefined, protocolError: () => undefined, closed: () => undefined });
  e.start();
  return e;
}

describe('transport Endpoint: fds handed over', () => {
  let ep: Endpoint;
  let peer: number;
  const extra: number[] = [];
  beforeEach(() => {
    const [a, b] = native.socketpair();
    ep = endpoint(a);
    peer = b;
  });
  afterEach(() => {
    ep.close();
    native.close(peer);
    for (const fd of extra.splice(0)) native.close(fd);
  });

  /** Fill the socket so the next message has to wait. */
  function fill(): number {
    const big = new Uint8Array(4 << 20);
    ep.send(big);
    return big.length;
  }

  it('reports the fds sent at once, before send returns', () => {
    const efd = native.eventfd(0);
    extra.push(efd);
    let calls = 0;
    ep.send(Uint8Array.of(1, 2, 3), [efd], () => calls++);
    assert.equal(calls, 1);
    const fds: number[] = [];
    assert.equal(native.recvmsg(peer, new Uint8Array(8), 0, 8, fds), 3);
    assert.equal(fds.length, 1);
    extra.push(...fds);
  });

  it('reports queued fds only once they went out', async () => {
    const queuedBytes = fill();
    const efd = native.eventfd(0);
    extra.push(efd);
    let calls = 0;
    ep.send(Uint8Array.of(9), [efd], () => calls++);
    assert.equal(calls, 0, 'still queued behind the big message');
    const buf = new Uint8Array(1 << 16);
    const fds: number[] = [];
    let total = 0;
    await waitFor('the queued message', () => {
      for (let n = native.recvmsg(peer, buf, 0, buf.length, fds); n > 0; n = native.recvmsg(peer, buf, 0, buf.length, fds)) total += n;
      return total === queuedBytes + 1;
    });
    assert.equal(calls, 1);
    assert.equal(fds.length, 1, 'the fd arrived with its message');
    extra.push(...fds);
  });

  it('reports queued fds when the endpoint closes before sending them', () => {
    fill();
    let calls = 0;
    ep.send(Uint8Array.of(9), [0], () => calls++);
    ep.send(Uint8Array.of(10), [0], () => calls++);
    assert.equal(calls, 0);
    ep.close();
    assert.equal(calls, 2);
    ep.send(Uint8Array.of(11), [0], () => calls++);
    assert.equal(calls, 3, 'a closed endpoint sends nothing and says so at once');
  });
});
