// Every property, with the number of cases the unit run gives it. The unit
// tests (test/unit/*-property.test.ts) and the fuzz runner (test/fuzz/run.ts)
// both take them from here, so the two always run the same properties.
import fc from 'fast-check';
import { backendFdsProperty } from './backend-fds';
import { blkModelProperty } from './blk-model';
import { decodersProperty, framingProperty } from './codec';
import { hostilePackedProperty } from './hostile-packed';
import { hostileQueueProperty } from './hostile-queue';

export interface PropertyEntry {
  /** Short name for --only and replay lines. */
  name: string;
  title: string;
  area: 'blk' | 'protocol' | 'vhost';
  /** Cases in the unit run: the whole property suite stays well under 30 s on a 2-core machine. */
  ciRuns: number;
  make(): fc.IRawProperty<unknown[]>;
}

export const PROPERTIES: readonly PropertyEntry[] = [
  {
    name: 'hostile-queue', title: 'survives hostile descriptor tables and available rings', area: 'blk', ciRuns: 800,
    make: () => hostileQueueProperty() as unknown as fc.IRawProperty<unknown[]>,
  },
  {
    name: 'hostile-packed', title: 'keeps a packed ring like the reference model whatever the driver writes', area: 'blk', ciRuns: 600,
    make: () => hostilePackedProperty() as unknown as fc.IRawProperty<unknown[]>,
  },
  {
    name: 'blk-model', title: 'serves well-formed requests like a byte array', area: 'blk', ciRuns: 400,
    make: () => blkModelProperty() as unknown as fc.IRawProperty<unknown[]>,
  },
  {
    name: 'decoders', title: 'decoders never throw and hand back every fd', area: 'protocol', ciRuns: 5000,
    make: () => decodersProperty() as unknown as fc.IRawProperty<unknown[]>,
  },
  {
    name: 'framing', title: 'framing over arbitrary reads never throws, hands back every fd and keeps intact messages',
    area: 'protocol', ciRuns: 3000, make: () => framingProperty() as unknown as fc.IRawProperty<unknown[]>,
  },
  {
    name: 'backend-fds', title: 'closes every fd a hostile front-end sends exactly once', area: 'vhost', ciRuns: 500,
    make: () => backendFdsProperty() as unknown as fc.IRawProperty<unknown[]>,
  },
];
