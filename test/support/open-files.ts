// Files a test opens, closed together in its afterEach.
import * as fs from 'node:fs';

export class OpenFiles {
  private fds: number[] = [];

  open(file: string, flags: string | number): number {
    const fd = fs.openSync(file, flags);
    this.fds.push(fd);
    return fd;
  }

  closeAll(): void {
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
  }
}
