#!/usr/bin/env bash
# `make fresh-check`: the README's promise on a machine that has none of
# lorad's packages. Builds a minimal Debian (debootstrap --variant=minbase,
# the suite of this machine) in FRESH_ROOT, clones this repository's HEAD
# into it, installs only `make`, and runs `make run` then `make stop` there.
# Needs root and the Debian mirror; takes 15-25 minutes (the packages).
# FRESH_ROOT=DIR reuses a root made before (then only the clone is new).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "fresh-check: needs root (debootstrap, chroot, mounts)"; exit 1; }
ROOT=${FRESH_ROOT:-/var/tmp/lorad-fresh}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
if [ ! -x "$ROOT/bin/bash" ]; then
  echo "== debootstrap $SUITE (minbase) into $ROOT"
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >/tmp/fresh-debootstrap.log 2>&1 ||
    { tail -5 /tmp/fresh-debootstrap.log; exit 1; }
fi
cleanup() { for d in dev/pts dev sys proc; do umount -l "$ROOT/$d" 2>/dev/null || true; done; }
trap cleanup EXIT
for d in proc sys dev dev/pts; do mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"; done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's sources and any local CA (a proxy's) so the chroot reaches the
# same registries as this machine does.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/"
  rm -f "$ROOT/etc/apt/sources.list" # debootstrap's, the same mirror again
fi
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
rm -rf "$ROOT/work/main"
mkdir -p "$ROOT/work"
git clone -q "$PWD" "$ROOT/work/main"
echo "== in the fresh root: apt-get install make; make run; make stop"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
  NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt /bin/bash -c '
  set -e
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq make ca-certificates >/dev/null
  update-ca-certificates >/dev/null 2>&1 || true
  cd /work/main
  make run
  make stop'
echo "fresh-check: make run worked on a fresh $SUITE"
