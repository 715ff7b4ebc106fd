// Numbers for the benchmark: a growable sample buffer (no allocation per
// sample), nearest-rank percentiles and medians. Pure, unit-tested.

/** Latency samples in a Float64Array that doubles when full. */
export class SampleRecorder {
  private buf = new Float64Array(1 << 16);
  count = 0;

  add(v: number): void {
    if (this.count === this.buf.length) {
      const bigger = new Float64Array(this.buf.length * 2);
      bigger.set(this.buf);
      this.buf = bigger;
    }
    this.buf[this.count++] = v;
  }

  /** A sorted copy of the samples. */
  sorted(): Float64Array {
    return this.buf.slice(0, this.count).sort();
  }

  clear(): void {
    this.count = 0;
  }
}

/** Nearest-rank percentile (p in 0..100) of ascending `sorted`; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const rank = Math.ceil((p / 100) * n);
  return sorted[Math.min(n - 1, Math.max(0, rank - 1))];
}

/** Median of the values (mean of the middle two for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  const n = v.length;
  if (n === 0) return NaN;
  return n % 2 === 1 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/** Runs grouped by the configuration (cell) they measured, in the order cells were first seen. */
export class RunsByCell<C, R> {
  private readonly groups = new Map<string, { cell: C; runs: R[] }>();

  constructor(private readonly keyOf: (cell: C) => string) {}

  add(cell: C, run: R): void {
    const k = this.keyOf(cell);
    const g = this.groups.get(k);
    if (g === undefined) this.groups.set(k, { cell, runs: [run] });
    else g.runs.push(run);
  }

  all(): Array<{ cell: C; runs: R[] }> {
    return [...this.groups.values()];
  }
}
