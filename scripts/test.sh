#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the test tiers in order, stopping at the first that fails:
#   fast  - tests/unit and bench/tests: pure unit tests (no root, no BPF)
#   bpf   - tests/bpf: needs root and BPF: packet tables through BPF_PROG_TEST_RUN,
#           map sync on pinned maps, the Ansible apply
#   netns - tests/netns: whole chain across network namespaces
# `scripts/test.sh fast` runs only the first tier.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VOXRELAY_VENV:-.venv}/bin/python
export PYTHONUNBUFFERED=1
mkdir -p artifacts

run_tier() {
  local name=$1; shift
  echo "=== tier: $name"
  "$PY" -m pytest -q -p no:cacheprovider "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then
    echo "tier $name: no tests collected" >&2
    return 1
  fi
  return $rc
}

run_tier fast tests/unit bench/tests || exit 1
[ "${1:-all}" = fast ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tiers bpf and netns need root; run as root (CI does)" >&2
  exit 1
fi
run_tier bpf tests/bpf || exit 1
run_tier netns tests/netns || exit 1
