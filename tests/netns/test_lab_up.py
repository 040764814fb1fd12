# SPDX-License-Identifier: Apache-2.0
"""``voxrelay lab up`` / ``status`` / ``down``, as a user on this host runs them.

``lab up`` is run as a command (its own process; the stack stays up in a
background process after it returns). From what it prints, and nothing
else, the test takes the HTTPS URL, the client secret and the certificate's
SPKI pin; headless Chromium in the *host* namespace (not a lab namespace:
that is the point of ``lab up``) opens the URL, trusts only that
certificate, and places a call with the secret: the model must answer
(transcript and reply events, reply audio), over the relay's VIP on UDP,
counted by the XDP program. ``lab status --json`` must show every service
running. ``lab down`` must leave nothing: no namespace, host link, route,
pin, process or state directory (asserted by name from the lab's record,
and by the module's leak check).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.browser import BrowserCallResult, browser_call, find_chromium, speech_wav
from lab.labctl import process_alive, read_record, service_alive
from lab.netns import link_exists, list_netns
from lab.stack import read_relay_stats

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"


def voxrelay(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voxrelay.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd="/", check=False)


def printed(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"lab up did not print {pattern!r}:\n{text}"
    return found.group(1)


def heard_reply(result: BrowserCallResult) -> bool:
    return (bool(result.events_of("transcript", final=True)) and bool(result.events_of("reply"))
            and result.inbound.packets > 0 and result.inbound.total_audio_energy > 0)


def host_routes_via(link: str) -> str:
    out = subprocess.run(["ip", "-4", "route", "show", "dev", link], capture_output=True,
                         text=True, check=False)
    return out.stdout.strip()


def test_lab_up_call_from_host_browser_then_down_leaves_nothing(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it (apt: chromium)")
    state = tmp_path / "lab"
    up = voxrelay("lab", "up", "--state-dir", str(state))
    record = read_record(state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert record is not None and record.state == "up"
        url = printed(r"^\s*call page\s+(https://\S+)$", up.stdout)
        secret = printed(r"^\s*client secret\s+(ek_\S+)", up.stdout)
        spki = printed(r"--ignore-certificate-errors-spki-list=(\S+)$", up.stdout)
        vip = printed(r"^\s*relay VIP\s+(\S+)/udp", up.stdout)
        assert url == record.url and vip == record.vip
        # Nothing of the lab is written into the checkout (or the cwd).
        assert record.certificate.startswith(str(state)) and record.api_key_file.startswith(str(state))

        status = voxrelay("lab", "status", "--state-dir", str(state), "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["state"] == "up" and info["pid_alive"] and info["host_link_present"], info
        assert set(info["services"]) == {"orchestrator-1", "model", "transceiver", "signaling-front"}
        assert all(s["alive"] for s in info["services"].values()), info["services"]
        assert all(info["namespaces"].values()), info["namespaces"]

        # A second lab up is refused in one line, and leaves the first running.
        twice = voxrelay("lab", "up", "--state-dir", str(state), timeout=30)
        assert twice.returncode == 1, twice.stdout + twice.stderr
        assert twice.stderr.startswith("Error: a lab is already up") and \
            len(twice.stderr.strip().splitlines()) == 1, twice.stderr
        assert read_record(state) == record

        before = read_relay_stats(record.relay_names[0])
        wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
        result = asyncio.run(browser_call(
            None, url, audio_wav=wav, bearer=secret, hold_seconds=30, until=heard_reply,
            timeout=60, browser_flags=(f"--ignore-certificate-errors-spki-list={spki}",)))
        after = read_relay_stats(record.relay_names[0])
        assert result.signaling is not None and result.signaling.ok, result.describe()
        assert result.connected and heard_reply(result), result.describe()
        assert result.events_of("reply")[0]["text"].strip(), result.events
        pair = result.pair
        assert pair is not None and pair.remote is not None, result.describe()
        assert pair.remote.endpoint == vip and pair.remote.protocol == "udp", pair
        assert after.get("fwd_to_transceiver", 0) - before.get("fwd_to_transceiver", 0) > 50
        assert after.get("fwd_to_client", 0) - before.get("fwd_to_client", 0) > 50
        assert result.hangup_status == 204, result.describe()
    finally:
        down = voxrelay("lab", "down", "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert record is not None
    present = set(list_netns())
    assert not [n for n in record.namespaces if n in present]
    assert not link_exists(record.host_link, None) and not host_routes_via(record.host_link)
    assert not [p for p in record.pin_dirs if Path(p).exists()]
    assert not process_alive(record.pid, "lab.labctl")
    assert not [pid for pid in record.services.values() if service_alive(pid)]
    assert not state.exists()
    # A second down is harmless and says so.
    again = voxrelay("lab", "down", "--state-dir", str(state))
    assert again.returncode == 0 and "no lab is up" in again.stdout
