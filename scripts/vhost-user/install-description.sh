#!/usr/bin/env bash
# Install the JSON description QEMU/libvirt tooling uses to discover vhost-user
# back-ends (QEMU docs/interop/vhost-user.json, "VhostUserBackend"): type
# "block" and the absolute path of this checkout's bin/vublk.
# Usage: install-description.sh [DESTDIR]   (default /usr/share/qemu/vhost-user)
set -euo pipefail
dest=${1:-/usr/share/qemu/vhost-user}
binary=$(readlink -f "$(dirname "$0")/../../bin/vublk")
mkdir -p "$dest"
cat >"$dest/50-vublk.json" <<JSON
{
  "description": "vublk: vhost-user-blk back-end in TypeScript",
  "type": "block",
  "binary": "$binary"
}
JSON
echo "installed $dest/50-vublk.json (binary $binary)"
