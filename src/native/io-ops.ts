// Operation codes of the addon's I/O engine. Kept apart from addon.ts so code
// that only needs the numbers does not load the native module.
export const IO_READ = 0;
export const IO_WRITE = 1;
/** fdatasync */
export const IO_FLUSH = 2;
