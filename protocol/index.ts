// Public API of the vhost-user wire codec. Pure: no I/O, no Node-specific APIs.
export * from './errors';
export * from './requests';
export * from './features';
export * from './header';
export * from './payloads';
export * from './messages';
export * from './framing';
