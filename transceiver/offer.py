# SPDX-License-Identifier: Apache-2.0
"""Checking an SDP offer before anything is allocated for it.

A pure function: text in, ``Offer`` out, or ``ValueError`` with the exact
message the HTTP API returns (tests assert these messages).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import sdp

MAX_OFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Offer:
    text: str
    ice_ufrag: str
    ice_pwd: str
    kinds: tuple[str, ...]
    has_events_channel_section: bool


def parse_offer(text: str) -> Offer:
    """Validate an offer for a transceiver call; see module docstring."""
    if not text.strip():
        raise ValueError("SDP offer is empty")
    if len(text) > MAX_OFFER_BYTES:
        raise ValueError(f"SDP offer is larger than {MAX_OFFER_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise ValueError("SDP offer must start with v=0")
    try:
        description = sdp.SessionDescription.parse(text)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises whatever it trips on
        # str(): an exception object is always truthy, and some of aiortc's carry no message.
        raise ValueError(f"SDP offer does not parse: {str(exc) or type(exc).__name__}") from None
    if not description.media:
        raise ValueError("SDP offer has no m-line")
    kinds = tuple(m.kind for m in description.media)
    if "audio" not in kinds:
        raise ValueError("SDP offer has no audio m-line")
    credentials: list[tuple[str, str]] = []
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video", "application"):
            raise ValueError(f"SDP offer m-line {index} has unsupported kind {media.kind!r}")
        ice = media.ice
        if ice is None or not ice.usernameFragment or not ice.password:
            raise ValueError(f"SDP offer m-line {index} ({media.kind}) lacks ice-ufrag or ice-pwd")
        credentials.append((ice.usernameFragment, ice.password))
        if media.dtls is None or not media.dtls.fingerprints:
            raise ValueError(f"SDP offer m-line {index} ({media.kind}) lacks a DTLS fingerprint")
        if media.kind in ("audio", "video") and not media.rtcp_mux:
            raise ValueError(f"SDP offer m-line {index} ({media.kind}) lacks a=rtcp-mux")
    audio = next(m for m in description.media if m.kind == "audio")
    if not any(c.mimeType.lower() == "audio/opus" for c in audio.rtp.codecs):
        raise ValueError("SDP offer's audio m-line does not offer opus")
    # One call is one UDP port (it is in the routing token), so every m-line
    # must share one transport.
    mids = [m.rtp.muxId for m in description.media]
    bundle = next((g for g in description.group if g.semantic == "BUNDLE"), None)
    if len(mids) > 1 and (bundle is None or set(bundle.items) != set(mids)):
        raise ValueError("SDP offer must BUNDLE all m-lines (a=group:BUNDLE)")
    # Bundled: the first m-line's credentials are the transport's.
    ice_ufrag, ice_pwd = credentials[0]
    return Offer(
        text=text,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        kinds=kinds,
        has_events_channel_section="application" in kinds,
    )
