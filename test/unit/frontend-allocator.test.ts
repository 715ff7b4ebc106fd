import { strict as assert } from 'node:assert';
import { RangeAllocator } from '../../src/frontend/allocator';

describe('frontend RangeAllocator', () => {
  it('aligns, stays inside its range and reports exhaustion', () => {
    const a = new RangeAllocator(4096, 8192);
    const x = a.alloc(10);
    assert.equal(x, 4096);
    const y = a.alloc(100, 256);
    assert.equal(y % 256, 0);
    assert.ok(y >= x + 16);
    assert.equal(a.tryAlloc(8192), -1);
    assert.throws(() => a.alloc(8192), /out of guest memory/);
    assert.throws(() => a.alloc(0), /positive/);
    assert.throws(() => a.alloc(8, 3), /power of two/);
  });

  it('coalesces freed blocks so the whole range is usable again', () => {
    const a = new RangeAllocator(0, 4096);
    const blocks = Array.from({ length: 16 }, () => a.alloc(256));
    assert.equal(a.freeBytes, 0);
    for (const i of [3, 1, 2, 0, 15, 8, 9, 4, 5, 6, 7, 10, 12, 11, 14, 13]) a.free(blocks[i]);
    assert.equal(a.freeBytes, 4096);
    assert.equal(a.alloc(4096), 0);
  });

  it('rejects double and foreign frees', () => {
    const a = new RangeAllocator(0, 4096);
    const x = a.alloc(64);
    a.free(x);
    assert.throws(() => a.free(x), /not allocated/);
    assert.throws(() => a.free(12345), /not allocated/);
  });
});
