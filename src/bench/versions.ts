// The machine and the versions a report was made with.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BenchReport } from './report';

function firstLine(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0].trim();
  } catch {
    return `${cmd} unknown`;
  }
}

/**
 * The checked-out commit, read from the repository's files (a worktree's .git
 * is a file naming its git directory) rather than by running git.
 */
export function gitHead(repo: string): string {
  try {
    let gitDir = path.join(repo, '.git');
    if (fs.statSync(gitDir).isFile()) {
      const m = /^gitdir: (.*)$/m.exec(fs.readFileSync(gitDir, 'utf8'));
      if (m === null) return 'unknown';
      gitDir = path.resolve(repo, m[1].trim());
    }
    const head = fs.readFileSync(path.join(gitDir, 'HEAD'), 'utf8').trim();
    const ref = /^ref: (.*)$/.exec(head)?.[1];
    if (ref === undefined) return head.slice(0, 7);
    const commonFile = path.join(gitDir, 'commondir');
    const common = fs.existsSync(commonFile) ? path.resolve(gitDir, fs.readFileSync(commonFile, 'utf8').trim()) : gitDir;
    for (const dir of [gitDir, common]) {
      const f = path.join(dir, ref);
      if (fs.existsSync(f)) return fs.readFileSync(f, 'utf8').trim().slice(0, 7);
    }
    const packed = fs.readFileSync(path.join(common, 'packed-refs'), 'utf8').split('\n').find((l) => l.endsWith(` ${ref}`));
    return packed?.slice(0, 7) ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function machine(): BenchReport['machine'] {
  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  return { nproc: os.cpus().length, cpuModel, kernel: os.release(), memoryGiB: os.totalmem() / 2 ** 30 };
}

export function versions(repo: string): BenchReport['versions'] {
  return {
    node: process.version,
    qemuStorageDaemon: firstLine('qemu-storage-daemon', ['--version']),
    qemu: firstLine('qemu-system-x86_64', ['--version']),
    fio: firstLine('fio', ['--version']),
    vublkCommit: gitHead(repo),
  };
}
