// How many cases each property runs where. The unit run (CI) uses a fixed seed
// and small counts so it is repeatable and quick; `make fuzz` (test/fuzz/run.ts)
// runs the same properties for a time budget from a random seed.
//
// VUBLK_FC_SEED and VUBLK_FC_RUNS override the unit run's seed and counts, and
// VUBLK_FC_PATH replays one case, e.g. to reproduce what `make fuzz` reported.
import fc from 'fast-check';

/** Seed of the unit run. */
export const CI_SEED = 0x76626c6b; // "vblk"

export function ciParameters<T>(numRuns: number): fc.Parameters<T> {
  const env = process.env;
  const seed = env.VUBLK_FC_SEED !== undefined ? Number(env.VUBLK_FC_SEED) : CI_SEED;
  const runs = env.VUBLK_FC_RUNS !== undefined ? Number(env.VUBLK_FC_RUNS) : numRuns;
  const p: fc.Parameters<T> = { seed, numRuns: runs };
  if (env.VUBLK_FC_PATH !== undefined) p.path = env.VUBLK_FC_PATH;
  return p;
}
