# SPDX-License-Identifier: Apache-2.0
"""A real browser through the relay: Debian's Chromium, headless, in the client namespace.

The fake microphone plays a sentence made with espeak-ng (looped, so that the
part spoken before ICE connects is heard again on the next pass). The page is
the one the transceiver serves (transceiver/static/index.html), loaded through
the lab's signaling URL; the call's media goes through relay 1's XDP program.
The test asserts the page's text and leaves a screenshot in artifacts/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from lab.browser import Chromium, ChromiumError, find_chromium

pytestmark = [pytest.mark.netns, pytest.mark.root]

SENTENCE = "what is the weather like today"
# The grammar phrase "what is the weather [like] [today | tomorrow]": its
# fixed part; the optional tail is sometimes lost after an ICE restart.
KEY_WORDS = ("what is the weather",)
ARTIFACTS = Path("artifacts")


async def test_chromium_drives_page_in_namespace(tmp_path: Path) -> None:
    """The driver itself: a page served inside a fresh namespace, loaded by the
    browser in it, its fake microphone granted, a screenshot taken."""
    import secrets
    import subprocess
    import sys

    from lab.demo import speak
    from lab.netns import create_netns, delete_netns
    from orchestrator.netlink import popen_in_netns

    if find_chromium() is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it (apt: chromium)")
    ns = f"vxr-chr-{secrets.token_hex(3)}"
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(
        "<html><body><h1>served in the namespace</h1><p id=mic>waiting</p><script>"
        "navigator.mediaDevices.getUserMedia({audio: true})"
        ".then(s => { document.getElementById('mic').textContent = 'mic: ' + s.getAudioTracks()[0].label; })"
        ".catch(e => { document.getElementById('mic').textContent = 'mic error: ' + e; });"
        "</script></body></html>"
    )
    wav = speak("testing the microphone", tmp_path / "mic.wav")
    server = None
    try:
        # pyroute2's sync API runs its own event loop: keep it off ours.
        await asyncio.to_thread(create_netns, ns)
        server = popen_in_netns(
            ns, [sys.executable, "-m", "http.server", "8099", "--bind", "127.0.0.1", "-d", str(www)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        async with Chromium(netns=ns, fake_audio=wav) as browser:
            for _ in range(50):  # the server needs a moment to bind
                try:
                    await browser.navigate("http://127.0.0.1:8099/")
                    break
                except ChromiumError:
                    await asyncio.sleep(0.1)
            mic = await browser.wait_for(
                "document.getElementById('mic').textContent.startsWith('mic') && "
                "document.getElementById('mic').textContent", timeout=15)
            text = await browser.text()
            shot = await browser.screenshot(ARTIFACTS / "browser-driver.png")
        assert "served in the namespace" in text
        assert mic.startswith("mic: "), mic
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=5)
        await asyncio.to_thread(delete_netns, ns)


def pad_with_silence(path: Path, seconds: float) -> Path:
    """Append silence to a WAV: Chromium loops the fake microphone's file, and
    without a pause after the sentence the model's VAD never sees the turn end."""
    import wave

    with wave.open(str(path), "rb") as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    pad = b"\0" * (int(params.framerate * seconds) * params.sampwidth * params.nchannels)
    with wave.open(str(path), "wb") as w:
        w.setparams(params)
        w.writeframes(frames + pad)
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab():
    from lab.stack import StackOptions, start_stack

    async with start_stack(StackOptions(relays=1)) as running:
        yield running


@pytest.mark.asyncio(loop_scope="module")
async def test_browser_call_through_relay(lab, tmp_path: Path) -> None:
    from lab.demo import speak

    if find_chromium() is None:
        pytest.fail("chromium is not installed; scripts/setup.sh installs it (apt: chromium)")
    wav = pad_with_silence(speak(SENTENCE, tmp_path / "mic.wav"), seconds=2.0)
    before = lab.relay_stats(0)
    shot = ARTIFACTS / "browser-call.png"
    async with Chromium(netns=lab.client_ns, fake_audio=wav,
                        secure_origins=(lab.signaling_url,)) as browser:
        try:
            # As a person would: the page's token field (here ?token=) holds a
            # client secret that the application's backend minted.
            secret = await lab.client_secret()
            await browser.navigate(f"{lab.signaling_url}/?token={secret['value']}")
            assert "voxrelay" in await browser.text()
            await browser.evaluate("document.getElementById('call').click()")
            try:
                await browser.wait_for(
                    "document.getElementById('status').textContent === 'connected'", timeout=20
                )
            except ChromiumError as exc:
                status = await browser.evaluate("document.getElementById('status').textContent")
                raise AssertionError(f"page status {status!r}: {exc}\n{lab.logs()}") from None
            transcript = await browser.wait_for(
                "(() => { const t = document.getElementById('transcript').textContent;"
                f" return !t.endsWith('\u2026') && {list(KEY_WORDS)!r}.every(w => t.toLowerCase().includes(w)) && t; }})()",
                timeout=40,
            )
            reply = await browser.wait_for(
                "document.getElementById('reply').textContent", timeout=20
            )
            page = await browser.text()
        finally:
            await browser.screenshot(shot)
    after = lab.relay_stats(0)

    for word in KEY_WORDS:
        assert word in transcript.lower()
    assert reply.strip()
    assert f"Transcript: {transcript}" in page
    assert shot.stat().st_size > 1000
    # The browser's media went through the XDP program, both ways.
    assert after.get("fwd_new_flow", 0) > before.get("fwd_new_flow", 0)
    assert after.get("fwd_to_transceiver", 0) - before.get("fwd_to_transceiver", 0) > 100
    assert after.get("fwd_to_client", 0) - before.get("fwd_to_client", 0) > 100
