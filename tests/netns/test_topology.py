# SPDX-License-Identifier: Apache-2.0
"""The lab itself: two relays into one private LAN, and teardown when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab import stun
from lab.netns import list_netns, set_threaded_napi
from lab.topology import Lab
from orchestrator import loader, pins
from voxrelay import token

ROOT = Path(__file__).resolve().parents[2]


def test_second_relay_reaches_the_same_transceiver() -> None:
    with Lab(relays=2, threaded_napi=True) as lab:
        assert lab.relay2 is not None
        assert lab.relay2.public.address == "198.51.100.1"
        # The redirect peers run XDP, so their NAPI exists and can be threaded.
        assert set_threaded_napi(lab.relay2.lan_port, lab.transceiver) is True

        lab.load_relay(1)
        maps = loader.open_maps(lab.relay2.name)
        key = token.new_key()
        maps.set_key(1, key)
        maps.set_transceiver(5, lab.transceiver_lan.address)
        server = lab.socket(lab.transceiver)
        client = lab.socket(lab.client)
        try:
            server.bind((lab.transceiver_lan.address, 41000))
            server.settimeout(2)
            client.settimeout(2)
            request = stun.binding_request(token.mint(key, key_id=1, transceiver_id=5, port=41000))
            client.sendto(request, lab.relay2.vip)
            data, peer = server.recvfrom(4096)
            assert data == request
            assert peer[0] == lab.relay2.private.address == "10.77.0.3"
            server.sendto(b"reply", peer)
            assert client.recvfrom(4096) == (b"reply", lab.relay2.vip)
        finally:
            server.close()
            client.close()
        stats = maps.stats()
        assert stats["STAT_FWD_NEW_FLOW"] == 1
        assert stats["STAT_FWD_TO_CLIENT"] == 1
        # relay 1 was never loaded: nothing of it is pinned.
        assert not pins.pin_dir_for(lab.relay.name).exists()


# The child takes Ctrl-C as a terminal would deliver it, even when this run was
# started in the background of a non-interactive shell (which leaves SIGINT
# ignored in every process below it).
_CHILD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from lab.topology import Lab
    with Lab() as lab:
        print(lab.suffix, flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_lab_is_removed_when_interrupted(signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert child.stdout is not None
        suffix = child.stdout.readline().strip()
        assert suffix, "the lab did not come up"
        mine = {n for n in list_netns() if n.endswith(suffix)}
        assert len(mine) == 4
        child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not {n for n in list_netns() if n.endswith(suffix)}
