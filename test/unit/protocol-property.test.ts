// Property tests of the vhost-user codec on random and damaged messages
// (test/property/codec.ts). Fixed seed and case counts here; `make fuzz` runs
// the same properties for longer from random seeds.
import fc from 'fast-check';
import { ciParameters } from '../property/params';
import { PROPERTIES } from '../property/registry';

describe('protocol codec properties', function () {
  this.timeout(60_000);

  for (const p of PROPERTIES.filter((x) => x.area === 'protocol')) {
    it(`${p.title} (${p.name})`, async () => {
      await fc.assert(p.make(), ciParameters(p.ciRuns));
    });
  }
});
