// `vublk serve` socket options: parsed, checked, and carried into the export's
// configuration under the qemu-storage-daemon style keys.
import { strict as assert } from 'node:assert';
import { UsageError, parseServeArgs } from '../../src/cli/serve-args';
import { serveConfig } from '../../src/cli/serve-config';

function rejects(argv: string[], pattern: RegExp): void {
  assert.throws(() => parseServeArgs(argv), (e: Error) => {
    assert.ok(e instanceof UsageError, String(e));
    assert.match(e.message, pattern);
    return true;
  });
}

describe('vublk serve socket options', () => {
  it('parses --socket-mode, --socket-owner and --socket-group into the export configuration', () => {
    const o = parseServeArgs(['--socket', 'vm.sock', '--socket-mode', '0660', '--socket-owner', 'qemu', '--socket-group=65534', 'disk.img']);
    assert.deepEqual([o.socketMode, o.socketOwner, o.socketGroup], ['0660', 'qemu', '65534']);
    const e = serveConfig(o, 'disk.img', undefined).exports[0];
    assert.deepEqual([e['x-vublk-socket-mode'], e['x-vublk-socket-owner'], e['x-vublk-socket-group']], ['0660', 'qemu', '65534']);
    const plain = serveConfig(parseServeArgs(['disk.img']), 'disk.img', undefined).exports[0];
    assert.equal('x-vublk-socket-mode' in plain || 'x-vublk-socket-owner' in plain || 'x-vublk-socket-group' in plain, false);
  });

  for (const [argv, pattern] of [
    [['--socket-mode', '0999'], /^--socket-mode: expected an octal mode like 0660, got '0999'$/],
    [['--socket-mode', 'u+rw'], /^--socket-mode: expected an octal mode/],
    [['--socket-owner', 'a:b'], /^--socket-owner: expected a user name or numeric id, got 'a:b'$/],
    [['--socket-group', '-x'], /^--socket-group: expected a group name or numeric id, got '-x'$/],
    [['--socket-owner'], /^--socket-owner: missing value$/],
    [['--socket-group', 'bad name'], /^--socket-group: expected a group name or numeric id/],
    [['--fd', '3', '--socket-owner', 'nobody'], /^--socket-owner: cannot be combined with --fd/],
  ] as Array<[string[], RegExp]>) {
    it(`rejects ${argv.join(' ')}`, () => rejects(argv, pattern));
  }
});
