# SPDX-License-Identifier: Apache-2.0
"""The ``oai-events`` data channel: the call's events in OpenAI Realtime's names.

A client that opens a data channel labelled ``oai-events`` (as OpenAI's
Realtime WebRTC pages open theirs) gets the call's events translated, and may
send the two client events the model acts on:

| the call's event (``events``) | Realtime server event |
|---|---|
| speech started / stopped (VAD) | ``input_audio_buffer.speech_started`` / ``_stopped`` |
| transcript, partial | ``conversation.item.input_audio_transcription.delta`` |
| transcript, final | ``conversation.item.input_audio_transcription.completed`` |
| reply | ``response.output_audio_transcript.delta`` |
| turn_end | ``response.done`` (status ``cancelled`` after a barge-in) |
| error | ``error`` |

| Realtime client event | what it does |
|---|---|
| ``session.update`` | instructions and turn_detection.silence_duration_ms to the model |
|  | (voice.proto ``SessionUpdate``); answered by ``session.updated`` |
| ``response.cancel`` | stops the playing reply, as a barge-in |

Anything else is answered with an ``error`` event naming it. Parsing is
pure: ``parse_client_event`` raises ``ValueError`` with an exact message, a
wrong type too (a bad client event is one kind of error, as in
voxrelay/directory/).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transceiver.model import voice_pb2

OAI_EVENTS_LABEL = "oai-events"
MAX_SILENCE_MS = 5000


@dataclass(frozen=True)
class SessionUpdate:
    instructions: str | None = None
    silence_duration_ms: int | None = None


@dataclass(frozen=True)
class Cancel:
    pass


ClientEvent = SessionUpdate | Cancel


def parse_client_event(text: str) -> tuple[str, ClientEvent]:
    """(event_id, what to do) for one client message; ValueError with the reason."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("client event is not JSON") from None
    if not isinstance(msg, dict):
        raise ValueError("client event must be a JSON object")
    event_id = msg.get("event_id", "")
    if not isinstance(event_id, str):
        raise ValueError("event_id must be a string")
    kind = msg.get("type")
    if kind == "response.cancel":
        return event_id, Cancel()
    if kind != "session.update":
        raise ValueError(f"unsupported client event type {kind!r}; "
                         "supported: session.update, response.cancel")
    session = msg.get("session", {})
    if not isinstance(session, dict):
        raise ValueError("session.update: session must be an object")
    instructions = session.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ValueError("session.update: session.instructions must be a string")
    silence: int | None = None
    td = session.get("turn_detection")
    if td is not None:
        if not isinstance(td, dict):
            raise ValueError("session.update: session.turn_detection must be an object")
        raw = td.get("silence_duration_ms")
        if raw is not None:
            if isinstance(raw, bool) or not isinstance(raw, int) or not 20 <= raw <= MAX_SILENCE_MS:
                raise ValueError("session.update: turn_detection.silence_duration_ms must be "
                                 f"an integer 20..{MAX_SILENCE_MS}")
            silence = raw
    return event_id, SessionUpdate(instructions, silence)


class OaiEvents:
    """Translate one call's events for its ``oai-events`` channel.

    ``send`` puts a JSON text on the channel; ``to_model`` hands a
    ``SessionUpdate`` to the model link; ``cancel`` stops the playing reply.
    """

    def __init__(self, send: Callable[[str], None],
                 to_model: Callable[[voice_pb2.SessionUpdate], bool],
                 cancel: Callable[[], None]) -> None:
        self._send = send
        self._to_model = to_model
        self._cancel = cancel
        self._ids = itertools.count(1)
        self._partial: dict[int, str] = {}
        self._cancelled: set[int] = set()
        self.session: dict[str, Any] = {"object": "realtime.session",
                                        "turn_detection": {"type": "server_vad"}}

    def _event(self, kind: str, **fields: Any) -> None:
        self._send(json.dumps({"event_id": f"event_{next(self._ids)}", "type": kind, **fields}))

    @staticmethod
    def _item(turn: int) -> str:
        return f"item_turn{turn}"

    def forward(self, event: dict[str, Any]) -> None:
        """One event of the call (as sent on ``events``), in Realtime's names."""
        kind = event.get("type")
        turn = int(event.get("turn", 0) or 0)
        item = self._item(turn)
        if kind == "speech":
            if event.get("started"):
                self._event("input_audio_buffer.speech_started", item_id=item,
                            audio_start_ms=int(event.get("audio_ms", 0)))
            else:
                self._event("input_audio_buffer.speech_stopped", item_id=item,
                            audio_end_ms=int(event.get("audio_ms", 0)))
        elif kind == "transcript":
            text = str(event.get("text", ""))
            if event.get("final"):
                self._partial.pop(turn, None)
                self._event("conversation.item.input_audio_transcription.completed",
                            item_id=item, content_index=0, transcript=text)
            else:
                before = self._partial.get(turn, "")
                delta = text.removeprefix(before)
                self._partial[turn] = text
                if delta:
                    self._event("conversation.item.input_audio_transcription.delta",
                                item_id=item, content_index=0, delta=delta)
        elif kind == "reply":
            self._event("response.output_audio_transcript.delta", response_id=f"resp_{turn}",
                        item_id=f"item_resp{turn}", output_index=0, content_index=0,
                        delta=str(event.get("text", "")))
        elif kind == "barge_in":
            self._cancelled.add(turn)
        elif kind == "turn_end":
            status = "cancelled" if self._cancelled else "completed"
            self._cancelled.clear()
            self._event("response.done", response={
                "object": "realtime.response", "id": f"resp_{turn}", "status": status})
        elif kind == "error":
            self._event("error", error={"type": "server_error", "code": event.get("code", ""),
                                        "message": event.get("message", "")})

    def on_client_message(self, text: object) -> None:
        """A message the client sent on the channel."""
        if not isinstance(text, str):
            self._event("error", error={"type": "invalid_request_error", "code": "bad_event",
                                        "message": "client events are JSON text"})
            return
        try:
            event_id, action = parse_client_event(text)
        except ValueError as exc:
            self._event("error", error={"type": "invalid_request_error", "code": "bad_event",
                                        "message": str(exc)})
            return
        if isinstance(action, Cancel):
            self._cancelled.add(0)
            self._cancel()
            return
        update = voice_pb2.SessionUpdate()
        if action.instructions is not None:
            update.instructions = action.instructions
            self.session["instructions"] = action.instructions
        if action.silence_duration_ms is not None:
            update.silence_duration_ms = action.silence_duration_ms
            self.session["turn_detection"]["silence_duration_ms"] = action.silence_duration_ms
        if not self._to_model(update):
            self._event("error", error={
                "type": "server_error", "code": "model_unavailable", "event_id": event_id,
                "message": "session.update not applied: the voice model is not connected"})
            return
        self._event("session.updated", session=self.session)
