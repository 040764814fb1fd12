# SPDX-License-Identifier: Apache-2.0
"""Chromium places a call through the XDP relay with the lab.browser harness.

Debian's Chromium, headless, in the lab's client namespace, opens the page
the signaling front serves (same origin) and calls through
``window.voxrelay.call()``. Its fake microphone speaks a sentence; the
model's reply must come back as audio (inbound RTP packets and non-zero
audio energy), an event must arrive on the "events" data channel, and the
selected candidate pair must be the relay's VIP:3478 over UDP. After the
hang-up (DELETE from the page) the transceiver holds no call.

The page uses an ephemeral client secret, minted the way an application
backend mints one (POST /v1/realtime/client_secrets with the API key, from
the client namespace). The cross-origin path (``serve_static``: the same page
from 127.0.0.1:8099 in the client namespace, an origin the lab's
``cors_origins`` lists) calls with such a secret and is answered; the API key
itself is refused from the page's origin, so is an expired secret (401),
and a page from an origin that is not listed (port 8098) is refused before
anything is allocated.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
import pytest_asyncio

from lab.browser import BrowserCallResult, browser_call, find_chromium, serve_static, speech_wav
from tests.support import until

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"
PAGE_ORIGIN = "http://127.0.0.1:8099"
"""The cross-origin page's origin (``serve_static``'s default), listed in cors_origins."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    if find_chromium() is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it (apt: chromium)")
    async with start_stack(StackOptions(relays=1, cors_origins=(PAGE_ORIGIN,))) as running:
        yield running


def healthz(lab) -> dict:
    def get() -> dict:
        with urllib.request.urlopen(lab.signaling_url + "/healthz", timeout=5) as response:
            return json.loads(response.read())

    return lab.run_in_client(get)


def heard_reply(result: BrowserCallResult) -> bool:
    """A final transcript and a reply event, and reply audio that is not silence."""
    return (bool(result.events_of("transcript", final=True)) and bool(result.events_of("reply"))
            and result.inbound.packets > 0 and result.inbound.total_audio_energy > 0)


@pytest.mark.asyncio(loop_scope="module")
async def test_browser_call_through_relay(lab, tmp_path: Path) -> None:
    wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
    relay = lab.relays[0]
    before = lab.relay_stats(0)

    secret = await lab.client_secret()
    result = await browser_call(lab.client_ns, lab.signaling_url + "/", audio_wav=wav,
                                bearer=secret["value"], hold_seconds=30, until=heard_reply,
                                timeout=50)
    after = lab.relay_stats(0)

    assert result.signaling is not None and result.signaling.ok, result.describe()
    assert result.connected, result.describe() + "\n" + lab.logs()
    assert heard_reply(result), result.describe()
    assert result.inbound.packets > 0 and result.inbound.total_audio_energy > 0
    # The words are the model's business (tests/netns/test_browser.py checks
    # them on a later pass of the looping microphone; the first pass starts
    # mid-sentence, before ICE is up): here, that its events reach the page.
    transcripts = result.events_of("transcript", final=True)
    assert transcripts[0]["text"].strip(), transcripts
    assert result.events_of("reply")[0]["text"].strip(), result.events
    # The browser's selected pair is the relay's VIP over UDP: nothing else was offered.
    pair = result.pair
    assert pair is not None and pair.remote is not None and pair.local is not None, result.describe()
    assert pair.remote.endpoint == f"{relay.public_address}:{relay.public_port}", pair
    assert pair.remote.protocol == "udp" and pair.local.protocol == "udp", pair
    # The media went through the XDP program, both ways.
    assert after.get("fwd_new_flow", 0) > before.get("fwd_new_flow", 0)
    assert after.get("fwd_to_client", 0) - before.get("fwd_to_client", 0) > 50
    assert after.get("fwd_to_transceiver", 0) - before.get("fwd_to_transceiver", 0) > 50
    # Hung up from the page: 204, and the transceiver holds no call.
    assert result.hangup_status == 204, result.describe()
    until(lambda: healthz(lab)["calls"] == 0, timeout=5, interval=0.2,
          what="the transceiver to drop the call after DELETE")


@pytest.mark.asyncio(loop_scope="module")
async def test_cross_origin_page_calls_with_an_ephemeral_secret_only(lab, tmp_path: Path) -> None:
    wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
    # Minted first, with the shortest lifetime allowed, to expire during the rest.
    short = await lab.client_secret(seconds=10)
    secret = await lab.client_secret()
    async with serve_static(lab.client_ns) as page_url:
        assert page_url.rstrip("/") == PAGE_ORIGIN and not page_url.startswith(lab.signaling_url)
        # The API key from the page's origin: refused, and nothing allocated.
        refused = await browser_call(lab.client_ns, page_url, audio_wav=wav,
                                     signaling_url=lab.signaling_url, bearer=lab.api_key,
                                     hold_seconds=0, timeout=30)
        assert refused.signaling is not None and refused.signaling.status == 403, refused.describe()
        assert "api_key_from_browser" in refused.signaling.body, refused.signaling
        assert not refused.connected and healthz(lab)["calls"] == 0
        # The ephemeral secret: the call is answered across origins and the model replies.
        result = await browser_call(lab.client_ns, page_url, audio_wav=wav,
                                    signaling_url=lab.signaling_url, bearer=secret["value"],
                                    hold_seconds=30, until=heard_reply, timeout=50)
        assert result.signaling is not None and result.signaling.ok, result.describe()
        assert result.connected and heard_reply(result), result.describe() + "\n" + lab.logs()
        assert result.hangup_status == 204, result.describe()
        # The short secret has expired by now (or will in a moment): 401, nothing allocated.
        await asyncio.sleep(max(0.0, short["expires_at"] + 0.5 - time.time()))
        expired = await browser_call(lab.client_ns, page_url, audio_wav=wav,
                                     signaling_url=lab.signaling_url, bearer=short["value"],
                                     hold_seconds=0, timeout=30)
        assert expired.signaling is not None and expired.signaling.status == 401, \
            expired.describe()
        assert "expired_credential" in expired.signaling.body, expired.signaling
    until(lambda: healthz(lab)["calls"] == 0, timeout=5, interval=0.2,
          what="no call left after the cross-origin calls")


@pytest.mark.asyncio(loop_scope="module")
async def test_page_from_an_origin_not_listed_places_no_call(lab, tmp_path: Path) -> None:
    wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
    secret = await lab.client_secret()
    async with serve_static(lab.client_ns, port=8098) as page_url:
        result = await browser_call(lab.client_ns, page_url, audio_wav=wav,
                                    signaling_url=lab.signaling_url, bearer=secret["value"],
                                    hold_seconds=0, timeout=30)
    # Status 0: the browser's preflight got a 403 without CORS headers, so the
    # fetch fails in the page; signaling allocated nothing.
    assert result.signaling is not None, result.describe()
    assert not result.signaling.ok and result.signaling.status == 0, result.describe()
    assert "Failed to fetch" in result.signaling.body, result.signaling
    assert not result.connected
    assert result.hangup_status is None
    assert healthz(lab)["calls"] == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_refused_post_reports_status_and_body(lab, tmp_path: Path) -> None:
    """An HTTP refusal comes back with its status and body: here the static
    page server itself as the "signaling URL", which has no /v1/calls."""
    wav = speech_wav(SENTENCE, tmp_path / "mic.wav")
    async with serve_static(lab.client_ns) as page_url:
        result = await browser_call(lab.client_ns, page_url, audio_wav=wav,
                                    signaling_url=page_url, hold_seconds=0, timeout=30)
    assert result.signaling is not None, result.describe()
    assert (result.signaling.ok, result.signaling.status) == (False, 404), result.signaling
    assert "Not Found" in result.signaling.body, result.signaling
    assert any(e.startswith("POST /v1/calls: 404") for e in result.errors), result.errors
    assert not result.connected
