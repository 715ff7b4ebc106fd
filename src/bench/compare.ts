// vublk against qemu-storage-daemon for one workload: qsd runs with several aio
// engines, and each of vublk's figures is compared with the better qsd figure
// of that kind (the higher IOPS, the lower CPU per I/O, the lower p99), which
// is the harder comparison for vublk. Pure.
import { ServerId } from './matrix';

export type Better = 'higher' | 'lower';

export interface Candidate {
  server: ServerId;
  value: number;
}

/** The better finite value; on a tie the earlier candidate (qsd's default engine comes first). */
export function betterOf(candidates: readonly Candidate[], better: Better): Candidate | undefined {
  let best: Candidate | undefined;
  for (const c of candidates) {
    if (!Number.isFinite(c.value)) continue;
    if (best === undefined || (better === 'higher' ? c.value > best.value : c.value < best.value)) best = c;
  }
  return best;
}

export interface Ratio {
  vublk: number;
  /** The qsd figure compared with, and whose it is; undefined when qsd has none. */
  against?: Candidate;
  /** vublk ÷ qsd; NaN when either side is missing or qsd's is not positive. */
  ratio: number;
}

export function ratioTo(vublk: number, candidates: readonly Candidate[], better: Better): Ratio {
  const against = betterOf(candidates, better);
  const ratio = against !== undefined && Number.isFinite(vublk) && against.value > 0 ? vublk / against.value : NaN;
  return { vublk, against, ratio };
}

/** What the figures of one workload say about vublk; p99 only where the queue depth is 1 (deeper, it is just IOPS again). */
export interface Comparison {
  iops: Ratio;
  cpu: Ratio;
  p99?: Ratio;
}

export interface ServerFigures {
  server: ServerId;
  iops: number;
  serverCpuUsPerIo: number;
  p99Us: number;
}

export function compareWorkload(vublk: ServerFigures, qsd: readonly ServerFigures[], qd: number): Comparison {
  const pick = (k: 'iops' | 'serverCpuUsPerIo' | 'p99Us'): Candidate[] => qsd.map((q) => ({ server: q.server, value: q[k] }));
  return {
    iops: ratioTo(vublk.iops, pick('iops'), 'higher'),
    cpu: ratioTo(vublk.serverCpuUsPerIo, pick('serverCpuUsPerIo'), 'lower'),
    p99: qd === 1 ? ratioTo(vublk.p99Us, pick('p99Us'), 'lower') : undefined,
  };
}
