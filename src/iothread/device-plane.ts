// The data plane of one device spread over iothreads: each queue belongs to
// one iothread (the queue map), memory tables and device state go to all of
// them. This is what the vhost-user back-end of a worker-backed export talks to.
import { CoalescingSettings } from '../dataplane/coalescing';
import { RingConfig } from '../dataplane/dataplane';
import { Logger } from '../util/log';
import { DataPlaneControl } from './control';
import { Iothread } from './iothread';
import { DeviceRequest, DeviceSpec, DeviceState, DirtyLogInfo, RegionInfo } from './messages';

/** Round-robin queue → iothread mapping (QEMU's default iothread-vq-mapping). */
export function roundRobinQueueMap(queues: number, iothreads: number): number[] {
  return Array.from({ length: queues }, (_, q) => q % iothreads);
}

let nextDeviceId = 1;

export class DevicePlane implements DataPlaneControl {
  /** Process-unique id under which the iothreads know this device. */
  readonly deviceId = nextDeviceId++;
  private readonly attached: Iothread[] = [];

  /**
   * @param threads the iothreads this device may use
   * @param queueMap queueMap[q] = index into `threads` of the owner of queue q
   */
  private constructor(private readonly threads: Iothread[], readonly queueMap: number[], private readonly log: Logger) {}

  /** Attach the device to every iothread that owns one of its queues. */
  static async attach(spec: Omit<DeviceSpec, 'lanes'>, threads: Iothread[], queueMap: number[], log: Logger): Promise<DevicePlane> {
    const plane = new DevicePlane(threads, queueMap, log);
    try {
      const engines: string[] = [];
      for (let i = 0; i < threads.length; i++) {
        const lanes = queueMap.filter((t) => t === i).length;
        if (lanes === 0) continue;
        engines.push(await threads[i].attach(plane.deviceId, { ...spec, lanes } as DeviceSpec));
        plane.attached.push(threads[i]);
      }
      log.info('iothreads attached', { iothreads: plane.attached.map((t) => t.id).join(','), engine: engines[0] });
    } catch (e) {
      await plane.detach();
      throw e;
    }
    return plane;
  }

  /** The iothreads this device runs on. */
  get iothreads(): readonly Iothread[] { return this.attached; }

  private owner(index: number): Iothread {
    return this.threads[this.queueMap[index] ?? 0];
  }

  private request(t: Iothread, req: DeviceRequest): Promise<string | number | undefined> {
    return t.deviceRequest(this.deviceId, req);
  }

  /** Fire-and-forget requests still go through request(): their order relative to others matters, their answer does not. */
  private post(t: Iothread, req: DeviceRequest): void {
    this.request(t, req).catch((e: Error) => this.log.error('iothread request failed', { request: req.type, error: e }));
  }

  async setMemory(regions: RegionInfo[]): Promise<void> {
    await Promise.all(this.attached.map((t) => this.request(t, { type: 'memory', regions })));
  }

  async startRing(ring: RingConfig): Promise<string | undefined> {
    return (await this.request(this.owner(ring.index), { type: 'start', ring })) as string | undefined;
  }

  async stopRing(index: number): Promise<number | undefined> {
    return (await this.request(this.owner(index), { type: 'stop', index })) as number | undefined;
  }

  setEnabled(index: number, on: boolean): void { this.post(this.owner(index), { type: 'enable', index, on }); }
  async setKickFd(index: number, fd: number): Promise<void> { await this.request(this.owner(index), { type: 'kick-fd', index, fd }); }
  async setCallFd(index: number, fd: number): Promise<void> { await this.request(this.owner(index), { type: 'call-fd', index, fd }); }
  async setErrFd(index: number, fd: number): Promise<void> { await this.request(this.owner(index), { type: 'err-fd', index, fd }); }
  setDeviceState(state: DeviceState): void {
    for (const t of this.attached) this.post(t, { type: 'state', state });
  }

  async setDirtyLog(log: DirtyLogInfo | undefined): Promise<void> {
    await Promise.all(this.attached.map((t) => this.request(t, { type: 'dirty-log', log })));
  }

  /** Interrupt coalescing for the device's rings on every iothread, running or started later. */
  setCoalescing(settings: CoalescingSettings): void {
    for (const t of this.attached) this.post(t, { type: 'coalescing', settings });
  }

  /** Stop the device's rings on every iothread (in-flight requests complete) and release its engines there. */
  async detach(): Promise<void> {
    const threads = this.attached.splice(0);
    await Promise.all(threads.map((t) => t.detach(this.deviceId).catch((e: Error) => this.log.error('detaching from iothread failed', { iothread: t.id, error: e }))));
  }
}
