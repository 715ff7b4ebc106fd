// A data plane on the calling thread, driven through the same runtime as an
// iothread worker. Used where a worker would only get in the way (unit tests).
import { RingConfig } from '../dataplane/dataplane';
import { Logger } from '../util/log';
import { DataPlaneControl } from './control';
import { EngineSelector } from './device-runtime';
import { DeviceSpec, DeviceState, DirtyLogInfo, RegionInfo } from './messages';
import { IothreadDevice } from './iothread-device';

export class LocalDataPlane implements DataPlaneControl {
  private readonly runtime: IothreadDevice;

  constructor(spec: DeviceSpec, log: Logger, selectEngine?: EngineSelector) {
    this.runtime = new IothreadDevice(spec, log, selectEngine);
  }

  async setMemory(regions: RegionInfo[]): Promise<void> { await this.runtime.handle({ type: 'memory', regions }); }
  async startRing(ring: RingConfig): Promise<string | undefined> {
    return (await this.runtime.handle({ type: 'start', ring })) as string | undefined;
  }
  async stopRing(index: number): Promise<number | undefined> {
    return (await this.runtime.handle({ type: 'stop', index })) as number | undefined;
  }
  setEnabled(index: number, on: boolean): void { void this.runtime.handle({ type: 'enable', index, on }); }
  async setKickFd(index: number, fd: number): Promise<void> { await this.runtime.handle({ type: 'kick-fd', index, fd }); }
  async setCallFd(index: number, fd: number): Promise<void> { await this.runtime.handle({ type: 'call-fd', index, fd }); }
  async setErrFd(index: number, fd: number): Promise<void> { await this.runtime.handle({ type: 'err-fd', index, fd }); }
  setDeviceState(state: DeviceState): void { void this.runtime.handle({ type: 'state', state }); }
  async setDirtyLog(log: DirtyLogInfo | undefined): Promise<void> { await this.runtime.handle({ type: 'dirty-log', log }); }
  shutdown(): Promise<void> { return this.runtime.shutdown(); }
}
