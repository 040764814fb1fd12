# SPDX-License-Identifier: Apache-2.0
"""``voxrelay demo --client chromium --transport tcp``: options and what it prints.

The call itself runs in tests/netns/test_ice_tcp.py (``browser_demo_call`` on
its lab); here only what needs no root.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from click.testing import CliRunner

from lab.demo import BrowserDemoResult, demo, print_browser_result


def test_tcp_needs_the_chromium_client() -> None:
    out = CliRunner().invoke(demo, ["--transport", "tcp"])
    assert out.exit_code == 2
    assert ("--transport tcp needs --client chromium: aioice (the aiortc client's ICE) has no "
            "ICE-TCP") in out.output


def test_help_names_the_client_and_transport_options() -> None:
    out = CliRunner().invoke(demo, ["--help"])
    assert out.exit_code == 0
    for text in ("--client [aiortc|chromium]", "--transport [udp|tcp]", "ICE-TCP"):
        assert text in out.output, text


def test_browser_result_printed_and_as_json(capsys) -> None:  # type: ignore[no-untyped-def]
    result = BrowserDemoResult(
        transport="tcp", transcript="what is the weather like today",
        reply="You said: what is the weather like today",
        pair={"local": {"type": "prflx", "protocol": "tcp", "address": "10.77.0.1",
                        "port": 61000, "tcp_type": "active"},
              "remote": {"type": "host", "protocol": "tcp", "address": "192.0.2.1",
                         "port": 443, "tcp_type": "passive"}},
        reply_packets=156, reply_audio_energy=0.013, udp_dropped=12,
        tcpfront={"established": 1, "frames_to_transceiver": 180, "frames_to_client": 187},
        relay_counters={}, hangup_status=204)
    print_browser_result(result)
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "reply:  You said: what is the weather like today" in lines
    assert ("selected pair  TCP 10.77.0.1:61000 (prflx active) -> 192.0.2.1:443 (host passive)"
            in lines)
    assert "client's UDP   12 packets dropped by nftables in its namespace" in lines
    assert ("ICE-TCP front  1 connection(s) established, 180 frames to the transceiver, "
            "187 to the client") in lines
    assert "relay (XDP)    0 new UDP flows, 0 packets to the client" in lines

    assert json.loads(json.dumps(asdict(result)))["pair"]["remote"]["port"] == 443
