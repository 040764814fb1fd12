# SPDX-License-Identifier: Apache-2.0
"""Reply policies: what the assistant says back to a final transcript.

``echo`` (the default) repeats what it heard, which makes the whole voice path
testable offline. An http(s) URL sends the conversation to an OpenAI-compatible
chat endpoint (``POST {url}/v1/chat/completions``); any server speaking that
API plugs in (a local llama.cpp or vLLM, or a hosted one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

SYSTEM_PROMPT = (
    "You are a voice assistant. Answer in one or two short spoken sentences, "
    "with no lists, markup or emoji."
)
MAX_HISTORY_TURNS = 8
"""Earlier turns sent with each request; older ones are dropped to bound the request."""


class ReplyError(RuntimeError):
    """The reply policy could not produce a reply; the message says why."""


@dataclass
class Conversation:
    """One call's turns, oldest first, as chat messages."""

    messages: list[dict[str, str]] = field(default_factory=list)
    instructions: str = ""
    """The client's system prompt (session.update); "" keeps the policy's own."""

    def add(self, role: str, text: str) -> None:
        self.messages.append({"role": role, "content": text})
        del self.messages[: max(0, len(self.messages) - 2 * MAX_HISTORY_TURNS)]


class ReplyPolicy(Protocol):
    name: str

    async def reply(self, transcript: str, conversation: Conversation) -> str:
        """The reply text for ``transcript`` ("" for no reply)."""

    async def close(self) -> None:
        """Release sessions or connections."""


class EchoReply:
    name = "echo"

    async def reply(self, transcript: str, conversation: Conversation) -> str:
        if not transcript.strip():
            return "Sorry, I did not catch that."
        return f"You said: {transcript}"

    async def close(self) -> None:
        return None


class ChatReply:
    """An OpenAI-compatible chat completions endpoint.

    ``url`` is the server's base (``http://host:8000``) or its ``/v1`` or full
    ``/v1/chat/completions`` address. The API key, if any, comes from
    ``$VOXRELAY_CHAT_API_KEY`` so it never appears on a command line.
    """

    def __init__(self, url: str, model: str = "default", timeout_s: float = 20.0,
                 api_key: str | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"chat endpoint {url!r} must be an http:// or https:// URL")
        base = url.rstrip("/")
        if base.endswith("/chat/completions"):
            self.endpoint = base
        elif base.endswith("/v1"):
            self.endpoint = base + "/chat/completions"
        else:
            self.endpoint = base + "/v1/chat/completions"
        self.name = f"chat:{self.endpoint}"
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        if api_key is None:
            api_key = os.environ.get("VOXRELAY_CHAT_API_KEY", "")
        self.api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    async def reply(self, transcript: str, conversation: Conversation) -> str:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        system = conversation.instructions or SYSTEM_PROMPT
        messages = [{"role": "system", "content": system}, *conversation.messages,
                    {"role": "user", "content": transcript}]
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": messages, "stream": False}
        try:
            async with self._session.post(self.endpoint, json=body, headers=headers) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200]
                    raise ReplyError(
                        f"chat endpoint {self.endpoint} answered {resp.status}: {detail}")
                data: Any = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise ReplyError(f"chat endpoint {self.endpoint} unreachable: {exc}") from None
        except TimeoutError:
            raise ReplyError(f"chat endpoint {self.endpoint} timed out after "
                             f"{self.timeout.total:.0f} s") from None
        return parse_chat_completion(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_chat_completion(data: Any) -> str:
    """The first choice's message text from a chat completions response body."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("chat completion has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise ValueError("chat completion content is not a string")  # noqa: TRY004 (parsers raise ValueError)
    return content.strip()


def make_reply_policy(spec: str, model: str = "default") -> ReplyPolicy:
    """"echo", or an http(s) URL of an OpenAI-compatible chat endpoint."""
    if spec == "echo":
        return EchoReply()
    if spec.startswith(("http://", "https://")):
        return ChatReply(spec, model=model)
    raise ValueError(
        f"unknown reply policy {spec!r}: use 'echo' or an http(s):// chat endpoint URL")
