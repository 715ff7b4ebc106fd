// Property test of the vhost-user back-end against a hostile front-end
// (test/property/backend-fds.ts). Fixed seed and case count here; `make fuzz`
// runs the same property for longer from random seeds.
import fc from 'fast-check';
import { setLogSink } from '../../src/util/log';
import { ciParameters } from '../property/params';
import { PROPERTIES } from '../property/registry';

describe('vhost-user back-end properties', function () {
  this.timeout(120_000);
  let restore: (l: string) => void;
  // Refused requests are logged; hundreds of cases would flood the output.
  beforeEach(() => { restore = setLogSink(() => {}); });
  afterEach(() => setLogSink(restore));

  for (const p of PROPERTIES.filter((x) => x.area === 'vhost')) {
    it(`${p.title} (${p.name})`, async () => {
      await fc.assert(p.make(), ciParameters(p.ciRuns));
    });
  }
});
