// One device's share of an iothread: its view of guest memory, the rings of
// it that this thread owns and the device runtime that handles their
// requests. An iothread hosts one of these per device it serves (several
// exports may share an iothread). The same class serves a worker_thread
// (through worker-main.ts) and the in-thread data plane used in unit tests,
// so both paths run identical code.
import { DataPlane } from '../dataplane/dataplane';
import { GuestMemory, GuestRegion } from '../memory/guest-memory';
import { detachWindows, makeWindows } from '../memory/mapping';
import { Logger } from '../util/log';
import { DeviceRuntime, EngineSelector, createDeviceRuntime } from './device-runtime';
import { DirtyLog } from '../memory/dirty-log';
import { native } from '../native/addon';
import { DeviceRequest, DeviceSpec, DirtyLogInfo, RegionInfo } from './messages';

const regionKey = (r: RegionInfo): string => `${r.guestPhysAddr}:${r.size}:${r.hostAddr}`;

export class IothreadDevice {
  private readonly mem = new GuestMemory();
  private readonly regions = new Map<string, GuestRegion>();
  private readonly device: DeviceRuntime;
  private readonly dataPlane: DataPlane;
  /** The dirty log's memory while a migration logs (detached when switched). */
  private logBuffer: ArrayBuffer | undefined;

  constructor(spec: DeviceSpec, private readonly log: Logger, selectEngine?: EngineSelector, pollMaxNs = 0) {
    this.device = createDeviceRuntime(spec, log, selectEngine);
    this.dataPlane = new DataPlane(this.mem, this.device.queueHandlers, log, pollMaxNs, this.device.completionRound, spec.coalescing);
  }

  get engineName(): string { return this.device.engineName; }

  /** Handle one request; the result is what the control plane waits for (if anything). */
  async handle(req: DeviceRequest): Promise<string | number | undefined> {
    switch (req.type) {
      case 'memory':
        await this.setMemory(req.regions);
        return undefined;
      case 'start':
        return this.dataPlane.startRing(req.ring);
      case 'stop':
        return this.dataPlane.stopRing(req.index);
      case 'enable':
        this.dataPlane.setEnabled(req.index, req.on);
        return undefined;
      case 'kick-fd':
        this.dataPlane.setKickFd(req.index, req.fd);
        return undefined;
      case 'call-fd':
        this.dataPlane.setCallFd(req.index, req.fd);
        return undefined;
      case 'err-fd':
        this.dataPlane.setErrFd(req.index, req.fd);
        return undefined;
      case 'state':
        this.device.setState(req.state);
        return undefined;
      case 'coalescing':
        this.dataPlane.setCoalescing(req.settings);
        return undefined;
      case 'dirty-log':
        this.setDirtyLog(req.log);
        return undefined;
      case 'shutdown':
        await this.shutdown();
        return undefined;
    }
  }

  /**
   * Adopt a new memory table. We answer only once nothing here can touch a
   * region that left it: requests in flight at the change may still be doing
   * I/O into it (the control plane unmaps it after our answer, and the address
   * range could be mapped again for new memory), so wait for them, then detach.
   */
  private async setMemory(regions: RegionInfo[]): Promise<void> {
    const wanted = new Map(regions.map((r) => [regionKey(r), r]));
    const dropped: GuestRegion[] = [];
    for (const [key, region] of this.regions) {
      if (wanted.has(key)) continue;
      this.mem.remove(region.guestPhysAddr, region.size);
      this.regions.delete(key);
      dropped.push(region);
    }
    for (const [key, r] of wanted) {
      if (this.regions.has(key)) continue;
      const region: GuestRegion = { ...r, windows: makeWindows(r.hostAddr, r.size) };
      if (!this.mem.add(region)) {
        // The control plane validated the table; an overlap here is a bug, not guest input.
        detachWindows(region.windows);
        throw new Error(`iothread: region at 0x${r.guestPhysAddr.toString(16)} overlaps another`);
      }
      this.regions.set(key, region);
    }
    this.dataPlane.memoryChanged();
    if (dropped.length === 0) return;
    await this.dataPlane.whenInFlightDone();
    for (const region of dropped) detachWindows(region.windows);
  }

  /**
   * Switch the dirty log. This thread marks pages synchronously inside its
   * event-loop turns, so once this returns (and the control plane hears so) no
   * mark can go to the old log any more: every earlier one is already in it.
   */
  private setDirtyLog(info: DirtyLogInfo | undefined): void {
    const old = this.logBuffer;
    this.logBuffer = info === undefined ? undefined : native.arrayBuffer(info.hostAddr, info.size);
    this.mem.dirtyLog = this.logBuffer === undefined ? undefined : new DirtyLog(this.logBuffer);
    if (old !== undefined) native.detach(old);
  }

  async shutdown(): Promise<void> {
    await this.dataPlane.stopAll();
    this.setDirtyLog(undefined);
    await this.setMemory([]);
    this.device.close();
    this.log.debug('device detached from iothread');
  }
}
