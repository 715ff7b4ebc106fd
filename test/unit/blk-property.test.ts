// Property tests of the virtio-blk data path against a hostile guest and a disk
// model (test/property/). Fixed seed and case counts here; `make fuzz` runs the
// same properties for longer from random seeds.
import fc from 'fast-check';
import { setLogSink } from '../../src/util/log';
import { ciParameters } from '../property/params';
import { PROPERTIES } from '../property/registry';

describe('virtio-blk data path properties', function () {
  this.timeout(120_000);
  let restore: (l: string) => void;
  // Malformed requests are logged; thousands of cases would flood the output.
  beforeEach(() => { restore = setLogSink(() => {}); });
  afterEach(() => setLogSink(restore));

  for (const p of PROPERTIES.filter((x) => x.area === 'blk')) {
    it(`${p.title} (${p.name})`, async () => {
      await fc.assert(p.make(), ciParameters(p.ciRuns));
    });
  }
});
