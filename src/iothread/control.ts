// The control plane's handle on the data plane: which rings run, on which
// memory. The vhost-user back-end talks only to this interface; behind it are
// iothread workers (pool.ts) or, in unit tests, a runtime on the same thread.
import { RingConfig } from '../dataplane/dataplane';
import { DeviceState, DirtyLogInfo, RegionInfo } from './messages';

export interface DataPlaneControl {
  /** Install this memory table on every iothread; resolves once none of them can touch dropped regions. */
  setMemory(regions: RegionInfo[]): Promise<void>;
  /** Start a ring on the iothread that owns it; resolves to why it could not start. */
  startRing(ring: RingConfig): Promise<string | undefined>;
  /** Stop a ring once its in-flight requests are completed and published; resolves to the next avail index. */
  stopRing(index: number): Promise<number | undefined>;
  setEnabled(index: number, on: boolean): void;
  /** Swap the kick fd of a running ring; resolves once the old one is no longer watched. */
  setKickFd(index: number, fd: number): Promise<void>;
  /** Swap the call / error fd of a running ring; resolves once the old one is no longer used. */
  setCallFd(index: number, fd: number): Promise<void>;
  setErrFd(index: number, fd: number): Promise<void>;
  setDeviceState(state: DeviceState): void;
  /**
   * Log guest writes into this dirty log from now on (undefined: stop logging);
   * resolves once no iothread can write to the previous one, so the front-end
   * may read it for the last time and the control plane unmap it.
   */
  setDirtyLog(log: DirtyLogInfo | undefined): Promise<void>;
}
