// Block nodes (--blockdev, QMP blockdev-add): an opened image or block
// device under a node name, as qemu-storage-daemon has them. Exports refer to
// nodes by name; a raw format node passes through to its file node.
import { BlkDisk } from '../blk/disk';
import { BlockdevOptions } from '../config/model';
import { AioMode } from '../iothread/messages';
import { DiskGeometry, StorageTarget, exportDisk, openTarget, resizeTarget } from '../storage/target';

export class BlockNode {
  /** Users that keep the node from being deleted: export ids and parent node names. */
  readonly users = new Set<string>();
  readonly readOnly: boolean;
  readonly direct: boolean;
  readonly aio: AioMode;
  readonly discard: boolean;

  private constructor(
    readonly name: string,
    readonly options: BlockdevOptions,
    private readonly target: StorageTarget | undefined,
    /** raw: the node below. */
    readonly child: BlockNode | undefined,
  ) {
    this.readOnly = options['read-only'] === true;
    this.direct = child?.direct ?? options.cache?.direct === true;
    this.aio = child?.aio ?? (options.aio === undefined ? 'auto' : options.aio === 'threads' ? 'threads' : 'io_uring');
    // QEMU's default is discard=ignore: a guest's discards do not reach the image.
    this.discard = options.discard === 'unmap' && (child?.discard ?? true);
  }

  /**
   * Open a node. `lookup` finds a child given by name; an inline child is
   * opened here and named by `anonymousName`.
   */
  static open(o: BlockdevOptions, lookup: (name: string) => BlockNode | undefined, anonymousName: () => string): BlockNode {
    const name = o['node-name'] ?? anonymousName();
    if (o.driver === 'raw') {
      let child: BlockNode;
      if (typeof o.file === 'string') {
        const found = lookup(o.file);
        if (found === undefined) throw new Error(`Cannot find device='' nor node-name='${o.file}'`);
        child = found;
      } else {
        child = BlockNode.open(o.file!, lookup, anonymousName);
      }
      if (child.readOnly && o['read-only'] !== true) {
        throw new Error(`Block node '${name}': its file node '${child.name}' is read-only; add read-only=on`);
      }
      child.users.add(name);
      return new BlockNode(name, o, undefined, child);
    }
    const target = openTarget(o.filename!, { readOnly: o['read-only'] === true, direct: o.cache?.direct === true, serial: '' });
    if (o.driver === 'host_device' && target.disk.kind !== 'block') {
      target.close();
      throw new Error(`'${o.filename}' is not a block device (use driver=file)`);
    }
    return new BlockNode(name, o, target, undefined);
  }

  /** The protocol node (file or host_device) that holds the data. */
  get protocolNode(): BlockNode { return this.child?.protocolNode ?? this; }
  get driver(): string { return this.options.driver; }
  get filename(): string { return this.protocolNode.options.filename!; }
  get sizeBytes(): number { return this.protocolNode.target!.details.sizeBytes; }

  /** The disk an export of this node sees. */
  diskFor(g: DiskGeometry): BlkDisk {
    return exportDisk(this.protocolNode.target!, { ...g, readOnly: g.readOnly === true || this.readOnly, discard: this.discard });
  }

  resize(sizeBytes: number): void {
    if (this.readOnly) throw new Error(`Block node '${this.name}' is read-only`);
    resizeTarget(this.protocolNode.target!, sizeBytes);
  }

  /** An inline child (file={...}) belongs to this node; a named one lives on. */
  private get ownsChild(): boolean { return this.child !== undefined && typeof this.options.file !== 'string'; }

  /** Close the image; a raw node releases its child, and closes it if it was given inline. */
  close(): void {
    this.target?.close();
    this.child?.users.delete(this.name);
    if (this.ownsChild) this.child!.close();
  }
}
