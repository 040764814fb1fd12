#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One-step, idempotent setup for voxrelay on Debian 12 (run as root).
#
#  1. apt: bcc (python3-bpfcc), kernel headers, iproute2, nftables, espeak-ng, redis...
#  2. /lib/modules/$(uname -r)/{build,source} -> Debian's header trees, since
#     bcc compiles the XDP program against them and custom kernels ship none.
#  3. .venv that sees Debian's bcc (bcc is only packaged for Debian's python;
#     it is pure Python over libbcc.so, so a symlink into the venv is enough).
#  4. pip install -e .[test,bench] into .venv, skipped when pyproject.toml and the
#     extras are unchanged ([bench]: matplotlib, for make bench's plots).
#
# Safe to run twice: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VOXRELAY_VENV:-$ROOT/.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (it installs Debian packages and loads BPF programs)" >&2
  exit 1
fi

APT_PACKAGES=(
  python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool
  iproute2 nftables ethtool tcpdump
  espeak-ng sox redis-server
  gcc coturn   # bench/: gcc builds the load generator; coturn is a baseline
  chromium     # lab/browser.py (tests/netns/test_browser*.py): a real WebRTC client
  debootstrap  # tests/bpf/test_ansible_apply.py: a real Debian root to apply the roles to
  # make image, tests/netns/test_image.py: import and run the images. runc, not
  # crun: crun 1.8 refuses a host with cgroup v1 plus a unified v2 mount (hybrid).
  podman runc containernetworking-plugins
  # Recommends that matter here, named because we install without recommends:
  netbase                                      # nftables: service names
  gnupg debian-archive-keyring arch-test       # debootstrap: verify the archive
  fonts-dejavu-core                            # chromium: legible screenshots
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages present"
fi

# bcc looks for headers under /lib/modules/$(uname -r); a kernel without modules
# has no such directory, so point it at Debian's newest amd64 header tree.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
HDR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
COMMON=${HDR%-amd64}-common
if [ -z "$HDR" ] || [ ! -d "$COMMON" ]; then
  echo "setup: no Debian kernel headers under /usr/src (is linux-headers-amd64 installed?)" >&2
  exit 1
fi
mkdir -p "$MODDIR"
[ -e "$MODDIR/build" ] || { ln -sfn "$HDR" "$MODDIR/build"; log "linked $MODDIR/build -> $HDR"; }
[ -e "$MODDIR/source" ] || { ln -sfn "$COMMON" "$MODDIR/source"; log "linked $MODDIR/source -> $COMMON"; }

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

PY=${VOXRELAY_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$SITE/bcc" ] || ln -sfn /usr/lib/python3/dist-packages/bcc "$SITE/bcc"

STAMP=$VENV/.voxrelay-installed
EXTRAS=test,bench
WANT=$( { cat pyproject.toml; echo "$EXTRAS"; } | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  log "pip install -e .[$EXTRAS] (progress in $VENV/pip.log)"
  "$VENV/bin/pip" install -q --upgrade pip >"$VENV/pip.log" 2>&1
  "$VENV/bin/pip" install -e ".[$EXTRAS]" >>"$VENV/pip.log" 2>&1 || { tail -30 "$VENV/pip.log" >&2; exit 1; }
  echo "$WANT" >"$STAMP"
else
  log "python packages up to date"
fi
"$VENV/bin/python" -c 'import bcc' || { echo "setup: .venv cannot import bcc" >&2; exit 1; }
log "ready: $VENV/bin/voxrelay"
