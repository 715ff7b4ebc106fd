// Public API of the vhost-user front-end library (tests, benchmarks, tools).
export * from './allocator';
export * from './guest-ram';
export * from './driver-queue';
export * from './client';
export * from './backend-requests';
export * from './request-queue';
export * from './blk-spec';
export * from './blk-driver';
