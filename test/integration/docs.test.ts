// The README's commands run as written. Every line starting with "$ " in a
// ```console block runs in order in one scratch directory with bin/ on PATH
// (a json block after a line naming vublk.json is written there first), and
// must exit 0. The QEMU and libvirt snippets cannot run here; they are checked
// against what the guest tests really run.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { qemuCommandLine } from '../support/guest';
import { waitFor } from '../support/wait';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** Fenced blocks as [info string, body, text before the block]. */
function blocks(md: string): Array<{ lang: string; body: string; before: string }> {
  const out: Array<{ lang: string; body: string; before: string }> = [];
  const re = /^```(\w*)\n([\s\S]*?)^```$/gm;
  let m: RegExpExecArray | null;
  while ((m = re.exec(md)) !== null) out.push({ lang: m[1], body: m[2], before: md.slice(Math.max(0, m.index - 200), m.index) });
  return out;
}

/** "$ cmd \\\n    more" → ["cmd more"]. */
function commands(body: string): string[] {
  return body.replace(/\\\n\s*/g, '').split('\n').filter((l) => l.startsWith('$ ')).map((l) => l.slice(2));
}

describe('README commands', function () {
  this.timeout(120000);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vublk-docs-')); });
  after(() => {
    // Whatever a failed run left running.
    for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.pid'))) {
      try { process.kill(Number(fs.readFileSync(path.join(dir, f), 'utf8')), 'SIGKILL'); } catch { /* gone */ }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('runs every console command in order, each exiting 0', async () => {
    const all = blocks(README);
    const env = { ...process.env, PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}` };
    let ran = 0;
    for (const b of all) {
      if (b.lang === 'json' && /vublk\.json/.test(b.before.trimEnd().split('\n').slice(-1)[0])) {
        fs.writeFileSync(path.join(dir, 'vublk.json'), b.body);
        continue;
      }
      if (b.lang !== 'console') continue;
      for (const cmd of commands(b.body)) {
        if (cmd.startsWith('vublk serve') || cmd.startsWith('vublk --')) {
          // A server from an earlier block must be gone (its sockets are reused).
          await waitFor('the previous server to exit', () => !fs.readdirSync(dir).some((n) => n.endsWith('.pid')), 10_000);
        }
        // An image the README assumes exists.
        if (!fs.existsSync(path.join(dir, 'disk.img'))) spawnSync('truncate', ['-s', '1G', path.join(dir, 'disk.img')]);
        const r = spawnSync('sh', ['-c', cmd], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 0, `$ ${cmd}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
        ran++;
      }
    }
    await waitFor('the last server to exit', () => !fs.readdirSync(dir).some((n) => n.endsWith('.pid')), 10_000);
    assert.ok(ran >= 15, `only ${ran} commands found`);
  });

  it('the QEMU options in the README are the ones the guest tests use', () => {
    const sh = blocks(README).filter((b) => b.lang === 'sh' && b.body.includes('qemu-system-x86_64')).map((b) => b.body.replace(/\\\n\s*/g, ' '));
    assert.ok(sh.length > 0);
    const tested = qemuCommandLine({ kernel: 'k', initrd: 'i', disks: [{ socketPath: 'vm1.sock' }], memoryMiB: 1024, cpus: 4 }).join(' ');
    for (const opt of ['memory-backend-memfd', 'share=on', 'memory-backend=mem', '-chardev socket,id=', 'vhost-user-blk-pci,chardev=']) {
      assert.ok(sh[0].includes(opt), `README lacks ${opt}`);
      assert.ok(tested.includes(opt), `guest tests lack ${opt}`);
    }
  });

  it('the libvirt snippet declares shared memfd memory and a vhostuser disk on a unix socket', () => {
    const xml = blocks(README).find((b) => b.lang === 'xml')!.body;
    assert.match(xml, /<source type='memfd'\/>/);
    assert.match(xml, /<access mode='shared'\/>/);
    assert.match(xml, /<disk type='vhostuser' device='disk'>/);
    assert.match(xml, /<source type='unix' path='[^']+\.sock'>/);
    // Balanced tags.
    const opens = (xml.match(/<[a-zA-Z][^>]*[^/]>/g) ?? []).length;
    const closes = (xml.match(/<\/[a-zA-Z]+>/g) ?? []).length;
    assert.equal(opens, closes);
  });
});
