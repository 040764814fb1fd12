#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# make image: OCI images of voxrelay, built here from Debian packages and the
# project's wheel; nothing is pulled from a container registry.
#
#   scripts/image.sh [--save DIR] [relay|transceiver|model ...]   (default: all three)
#
# Each image is built in three steps, the first two cached under
# $VOXRELAY_IMAGE_CACHE (default /var/cache/voxrelay/images), outside the checkout:
#   1. base root: debootstrap --variant=minbase of Debian bookworm with the image's
#      packages (deploy/images/<image>.packages), kept as a tarball keyed by the
#      list (and this script), the .debs in a shared debootstrap cache;
#   2. venv root: the base root plus /opt/voxrelay, a venv (seeing Debian's bcc)
#      with the project's dependencies from a local wheelhouse, keyed by the base
#      and pyproject.toml;
#   3. the venv root imported once (`podman import`) as voxrelay-<image>-deps:<key>,
#      and the project's own wheel, built from this checkout, installed on top of
#      it as a second layer (podman create, mount, chroot pip, commit):
#      voxrelay-<image>:<version>.
# An image whose inputs (base, dependencies, sources) are unchanged is not
# rebuilt: the image carries their hash as label io.voxrelay.inputs.
# --save DIR also writes each image as an OCI archive, DIR/voxrelay-<image>-<version>.oci.tar
# (`podman load -i`, `ctr images import`, `skopeo copy oci-archive:...`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${VOXRELAY_IMAGE_CACHE:-/var/cache/voxrelay/images}
MIRROR=${VOXRELAY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
VENV=${VOXRELAY_VENV:-$ROOT/.venv}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
ALL_IMAGES=(relay transceiver model)
START=$SECONDS
log() { printf '[image %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf 'image: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '3,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
SAVE_DIR=
images=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --save) [ $# -ge 2 ] || die "--save needs a directory"; SAVE_DIR=$2; shift 2 ;;
    relay|transceiver|model) images+=("$1"); shift ;;
    *) die "unknown image or option '$1' (images: ${ALL_IMAGES[*]}; see --help)" ;;
  esac
done
[ ${#images[@]} -gt 0 ] || images=("${ALL_IMAGES[@]}")
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and podman's root storage)"
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || die "$tool is not installed (make setup installs it)"
done
[ -n "$VERSION" ] || die "no version in pyproject.toml"

mkdir -p "$CACHE"/{roots,wheels,debs}
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# run_logged LABEL LOG CMD...: runs CMD with its output in LOG, saying every 20 s
# that it still runs (debootstrap and pip are quiet for minutes), and showing
# the log's tail if it fails.
run_logged() {
  local label=$1 logfile=$2; shift 2
  "$@" >"$logfile" 2>&1 &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1; waited=$((waited + 1))
    if [ $((waited % 20)) = 0 ]; then
      log "  $label: ${waited} s, $(tail -n 1 "$logfile" | cut -c1-90)"
    fi
  done
  if ! wait "$pid"; then
    tail -n 30 "$logfile" >&2
    die "$label failed (whole log: $logfile)"
  fi
}

# in_root ROOTFS CMD...: CMD chrooted into ROOTFS with /proc and /dev mounted in
# a private mount namespace, so that the mounts end with the command however it ends.
in_root() {
  local rootfs=$1; shift
  unshare --mount --propagation private -- sh -c '
    r=$1; shift
    mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && exec chroot "$r" "$@"
  ' in_root "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"
}

packages_of() {  # the package list of an image, comments and blanks removed
  sed -e 's/#.*//' -e 's/[[:space:]]//g' "deploy/images/$1.packages" | grep -v '^$' | sort -u
}

hash_of() { sha256sum | cut -c1-16; }

# Step 1: the debootstrapped base root of an image, cached by its package list.
base_root() {
  local image=$1 key tarball
  key=$( { packages_of "$image"; echo "$SUITE"; sed -n '/^base_root()/,/^}/p' "$0"; } | hash_of)
  tarball=$CACHE/roots/base-$image-$key.tar
  if [ ! -f "$tarball" ]; then
    local rootfs=$WORK/base-$image
    log "$image: debootstrap $SUITE (minbase + $(packages_of "$image" | tr '\n' ' '))"
    run_logged "debootstrap $image" "$WORK/debootstrap-$image.log" \
      debootstrap --variant=minbase --cache-dir="$CACHE/debs" \
        --include="$(packages_of "$image" | paste -sd,)" "$SUITE" "$rootfs" "$MIRROR"
    # No package lists or downloaded .debs in the image; the apt sources stay,
    # so that an operator can still apt-get inside a debugging copy.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
      "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
    # The unprivileged user the transceiver and model manifests run as.
    in_root "$rootfs" groupadd --gid 10001 voxrelay
    in_root "$rootfs" useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin voxrelay
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    log "$image: base root cached as $tarball ($(du -h "$tarball" | cut -f1))"
  else
    log "$image: base root from cache ($tarball)"
  fi
  BASE_KEY=$key BASE_TAR=$tarball
}

PROJECT_WHEEL=
project_wheel() {
  [ -z "$PROJECT_WHEEL" ] || return 0
  [ -x "$VENV/bin/pip" ] || die "no $VENV/bin/pip: run make setup first"
  mkdir -p "$WORK/project"
  log "building the voxrelay wheel from this checkout"
  run_logged "pip wheel voxrelay" "$WORK/wheel-project.log" \
    "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation --wheel-dir "$WORK/project" .
  PROJECT_WHEEL=$(ls "$WORK"/project/voxrelay-*.whl)
}

# The project's dependencies as wheels, cached by pyproject.toml. pip runs
# inside a copy of a base root, so that the environment markers are the
# image's (Debian's python 3.11.2, not whichever python the host's venv has).
WHEELS=
wheelhouse() {
  [ -z "$WHEELS" ] || return 0
  local key dir rootfs
  key=$( { cat pyproject.toml; echo "$SUITE"; sed -n '/^wheelhouse()/,/^}/p' "$0"; } | hash_of)
  dir=$CACHE/wheels/$key
  if [ ! -f "$dir/.complete" ]; then
    project_wheel
    rm -rf "$dir"; mkdir -p "$dir"
    rootfs=$WORK/wheelhouse-root
    mkdir -p "$rootfs"
    tar -C "$rootfs" -xf "$BASE_TAR"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    # The host's CA bundle (this copy of the root is thrown away): a host that
    # reaches PyPI through a TLS-inspecting proxy trusts that proxy's CA there.
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs/tmp/host-ca.crt"
    cp "$PROJECT_WHEEL" "$rootfs/tmp/"
    log "wheelhouse: pip wheel of the dependencies (from PyPI) into $dir"
    run_logged "pip wheel" "$WORK/wheel-deps.log" in_root "$rootfs" sh -c \
      'python3 -m venv /tmp/pip && /tmp/pip/bin/pip wheel --cert /tmp/host-ca.crt --progress-bar off \
         --wheel-dir /tmp/wheels /tmp/voxrelay-*.whl'
    rm -f "$rootfs"/tmp/wheels/voxrelay-*.whl   # the project's own wheel is built fresh every time
    mv "$rootfs"/tmp/wheels/*.whl "$dir/"
    rm -rf "$rootfs"
    touch "$dir/.complete"
    log "wheelhouse: $(ls "$dir"/*.whl | wc -l) wheels ($(du -sh "$dir" | cut -f1))"
  else
    log "wheelhouse from cache ($dir, $(ls "$dir"/*.whl | wc -l) wheels)"
  fi
  WHEEL_KEY=$key WHEELS=$dir
}

# Step 2: base root + /opt/voxrelay with every dependency, cached.
venv_root() {
  local image=$1 key tarball rootfs
  key=$( { echo "$BASE_KEY $WHEEL_KEY"; sed -n '/^venv_root()/,/^}/p' "$0"; } | hash_of)
  tarball=$CACHE/roots/venv-$image-$key.tar
  if [ ! -f "$tarball" ]; then
    rootfs=$WORK/venv-$image
    mkdir -p "$rootfs"
    tar -C "$rootfs" -xf "$BASE_TAR"
    mkdir -p "$rootfs/tmp/wheels"
    cp "$WHEELS"/*.whl "$rootfs/tmp/wheels/"
    log "$image: venv /opt/voxrelay with the dependencies"
    # --system-site-packages: bcc is Debian's python3-bpfcc (PyPI's "bcc" is unrelated).
    in_root "$rootfs" python3 -m venv --system-site-packages /opt/voxrelay
    run_logged "pip install $image" "$WORK/pip-$image.log" in_root "$rootfs" \
      sh -c '/opt/voxrelay/bin/pip install -q --no-index --no-compile --find-links /tmp/wheels /tmp/wheels/*.whl &&
             /opt/voxrelay/bin/python -m compileall -q /opt/voxrelay >/dev/null'
    rm -rf "$rootfs/tmp/wheels" "$rootfs/root/.cache"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    log "$image: venv root cached as $tarball ($(du -h "$tarball" | cut -f1))"
  else
    log "$image: venv root from cache ($tarball)"
  fi
  VENV_KEY=$key VENV_TAR=$tarball
}

# What goes into the project's wheel: a change to any of it rebuilds the images.
SOURCE_KEY=$( { find voxrelay orchestrator transceiver lab bpf -type f \
                  ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
                sha256sum pyproject.toml README.md LICENSE; } | hash_of)

# Per image: its command, user and ports (the k8s manifests set their own commands).
image_changes() {
  case $1 in
    relay) printf '%s\n' 'USER 0' \
        'CMD ["voxrelay", "orchestrator", "run", "--config", "/etc/voxrelay/voxrelay.toml"]' ;;
    transceiver) printf '%s\n' 'USER 10001' 'EXPOSE 8080/tcp' \
        'CMD ["voxrelay", "transceiver", "run", "--config", "/etc/voxrelay/voxrelay.toml"]' ;;
    model) printf '%s\n' 'USER 10001' 'EXPOSE 50051/tcp' \
        'CMD ["voxrelay", "model", "serve", "--listen", "0.0.0.0:50051"]' ;;
  esac
}


for image in "${images[@]}"; do
  name=voxrelay-$image:$VERSION
  base_root "$image"
  wheelhouse
  venv_root "$image"
  inputs=$( { echo "$VENV_KEY $SOURCE_KEY"; image_changes "$image"; sed -n '/^for image in/,$p' "$0"; } \
            | hash_of)
  have=$(podman image inspect --format '{{index .Labels "io.voxrelay.inputs"}}' "$name" 2>/dev/null || true)
  if [ "$have" = "$inputs" ]; then
    log "$name: up to date (inputs $inputs)"
  else
    changes=(--change 'ENV PATH=/opt/voxrelay/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
             --change 'ENV LC_ALL=C.UTF-8' --change 'WORKDIR /'
             --change "LABEL org.opencontainers.image.title=voxrelay-$image"
             --change "LABEL org.opencontainers.image.version=$VERSION")
    while IFS= read -r change; do changes+=(--change "$change"); done < <(image_changes "$image")
    # The venv root as its own image (one ~1 GB layer, imported once per
    # VENV_KEY); the project's wheel goes on top as a small second layer, so
    # a source change costs seconds instead of another import.
    deps=voxrelay-$image-deps:$VENV_KEY
    if ! podman image exists "$deps"; then
      log "$image: podman import of the venv root as $deps"
      run_logged "podman import $image" "$WORK/import-$image.log" \
        podman import -q "${changes[@]}" "$VENV_TAR" "$deps"
      # Older dependency layers of this image, unless an image still uses them.
      podman images --format '{{.Repository}}:{{.Tag}}' | grep "^localhost/voxrelay-$image-deps:" \
        | grep -v ":$VENV_KEY\$" | xargs -r podman rmi >/dev/null 2>&1 || true
    fi
    project_wheel
    BUILD_CTR=voxrelay-image-build-$image-$$
    podman create -q --name "$BUILD_CTR" "$deps" /bin/true >/dev/null
    trap 'podman rm -f "$BUILD_CTR" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
    rootfs=$(podman mount "$BUILD_CTR")
    cp "$PROJECT_WHEEL" "$rootfs/tmp/"
    log "$image: installing $(basename "$PROJECT_WHEEL")"
    in_root "$rootfs" /opt/voxrelay/bin/pip install -q --no-index --no-deps --no-compile \
      "/tmp/$(basename "$PROJECT_WHEEL")"
    in_root "$rootfs" /opt/voxrelay/bin/python -m compileall -q /opt/voxrelay/lib >/dev/null
    in_root "$rootfs" /opt/voxrelay/bin/voxrelay --help >/dev/null \
      || die "$image: voxrelay --help fails inside the image"
    rm -rf "$rootfs"/tmp/* "$rootfs/root/.cache"
    podman unmount "$BUILD_CTR" >/dev/null
    log "$image: podman commit as $name"
    old=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
    podman commit -q "${changes[@]}" --change "LABEL io.voxrelay.inputs=$inputs" \
      "$BUILD_CTR" "$name" >/dev/null
    podman rm "$BUILD_CTR" >/dev/null
    # The replaced image (its own small layer) goes, unless a container uses it.
    [ -z "$old" ] || podman rmi "$old" >/dev/null 2>&1 || true
    log "$name: built ($(podman image inspect --format '{{.Size}}' "$name" | numfmt --to=iec))"
  fi
  if [ -n "$SAVE_DIR" ]; then
    mkdir -p "$SAVE_DIR"
    out=$SAVE_DIR/voxrelay-$image-$VERSION.oci.tar
    log "$name: saving as $out"
    rm -f "$out"
    podman save -q --format oci-archive -o "$out" "$name"
  fi
done
log "done: $(printf 'voxrelay-%s:'"$VERSION"' ' "${images[@]}")"
