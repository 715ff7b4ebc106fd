// Small waiting helpers shared by tests.
import * as fs from 'node:fs';
import { parseProcStat } from '../../src/util/proc-stats';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll `pred` every 2 ms until it holds; fail naming `what` after `timeoutMs`. */
export async function waitFor(what: string, pred: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Whether every thread of process `pid` is stopped (SIGSTOP took effect everywhere). */
export function processStopped(pid: number): boolean {
  return fs.readdirSync(`/proc/${pid}/task`).every((tid) => {
    try {
      return parseProcStat(fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')).state === 'T';
    } catch {
      return true; // the thread is gone
    }
  });
}
