# SPDX-License-Identifier: Apache-2.0
"""The CLI under ``ip netns exec``, which remounts /sys without the bpf filesystem.

Issue 17: right after a load, ``ip netns exec RELAY_NS voxrelay relay status``
said "not loaded" (the pins were hidden) and ``relay load`` printed a
traceback. The CLI now reaches the host's bpffs through a process still in
the host's mount namespace (``pins.ensure_bpffs``), says so in one line on
stderr, and sees the same pins: status says loaded, ``maps stats`` reads the
counters the XDP program keeps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab.stack import read_relay_stats

pytestmark = [pytest.mark.netns, pytest.mark.root]


def netns_exec(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "voxrelay.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_relay_status_and_maps_stats_under_ip_netns_exec(loaded_relay) -> None:
    lab = loaded_relay.lab
    # The premise: ip netns exec hides /sys/fs/bpf (so the test tests the fix, not luck).
    hidden = subprocess.run(["ip", "netns", "exec", lab.relay.netns, "ls", "/sys/fs/bpf/voxrelay"],
                            capture_output=True, text=True, timeout=10, check=False)
    assert hidden.returncode != 0, hidden.stdout

    status = netns_exec(lab.relay.netns, "relay", "status", "--name", lab.relay.name, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["loaded"] is True
    notes = status.stderr.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: /sys/fs/bpf is hidden"), status.stderr

    with lab.socket(lab.client) as sock:
        sock.sendto(b"not stun", lab.relay.vip)
    stats = netns_exec(lab.relay.netns, "maps", "stats", "--name", lab.relay.name, "--json")
    assert stats.returncode == 0, stats.stderr
    seen_inside = json.loads(stats.stdout)["counters"]["rx_total"]
    # The same map the host namespace reads (nothing else sends to this lab's relay).
    assert seen_inside >= 1 and seen_inside == read_relay_stats(lab.relay.name)["rx_total"]
    assert "Traceback" not in stats.stderr
