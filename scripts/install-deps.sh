#!/usr/bin/env bash
# Ensure the system packages that vublk's tests and test guest need; with
# --bench also what `make bench` needs on top (gnuplot for its plot).
# Idempotent: when everything is present it only asks dpkg (well under a second)
# and never touches apt, so it is safe to run on every `make`.
set -euo pipefail

bench=0
for arg in "$@"; do
  case $arg in
    --bench) bench=1 ;;
    *) printf 'usage: %s [--bench]\n' "$0" >&2; exit 2 ;;
  esac
done

# qemu-system-x86 pulls in qemu-system-common, which is where Debian 12 ships
# qemu-storage-daemon (the reference vhost-user-blk server the tests compare against).
# busybox-static provides both the guest userland and, via its cpio/xz applets,
# everything scripts/build-guest.sh needs to pack the initramfs.
PACKAGES=(qemu-system-x86 qemu-utils fio busybox-static xz-utils)
# Commands checked after installing, because a package being "installed" is not
# proof that the binary we rely on lives in it (that changed across Debian releases).
COMMANDS=(qemu-system-x86_64 qemu-storage-daemon qemu-img fio busybox xz)
if ((bench)); then
  # gnuplot-nox: gnuplot without X11, still with the PNG terminals the plot uses.
  PACKAGES+=(gnuplot-nox)
  COMMANDS+=(gnuplot)
fi

log() { printf 'install-deps: %s\n' "$*"; }

missing=()
# One dpkg-query for all packages keeps the no-op path fast.
status_lines=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for pkg in "${PACKAGES[@]}"; do
  if ! grep -qE "^${pkg} ii" <<<"$status_lines"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  log "all system packages present (${PACKAGES[*]})"
else
  SUDO=()
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null 2>&1; then
      log "missing packages: ${missing[*]}, and not root and no sudo; install them by hand" >&2
      exit 1
    fi
    SUDO=(sudo)
  fi
  log "missing packages: ${missing[*]}"
  log "running: apt-get update"
  "${SUDO[@]}" apt-get update
  log "running: apt-get install -y --no-install-recommends ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

absent=()
for cmd in "${COMMANDS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || absent+=("$cmd")
done
if ((${#absent[@]} > 0)); then
  log "packages are installed but these commands are still missing: ${absent[*]}" >&2
  exit 1
fi

# The guest needs a statically linked busybox; the dynamic `busybox` package
# would leave the initramfs without a loader.
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
  log "$(command -v busybox) is dynamically linked; install busybox-static" >&2
  exit 1
fi
