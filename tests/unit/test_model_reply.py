# SPDX-License-Identifier: Apache-2.0
"""Reply policies: echo, and an OpenAI-compatible chat endpoint (a fake on loopback)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from transceiver.model.reply import (
    ChatReply,
    Conversation,
    EchoReply,
    ReplyError,
    make_reply_policy,
    parse_chat_completion,
)


class FakeChat:
    """A tiny /v1/chat/completions that records requests and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.answer = "It is sunny."

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.Response(status=self.status, text="model overloaded")
        return web.json_response({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": f" {self.answer} "},
                         "finish_reason": "stop"}]})


@pytest.fixture
async def fake_chat() -> AsyncIterator[tuple[FakeChat, str]]:
    fake = FakeChat()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_echo() -> None:
    echo = EchoReply()
    assert await echo.reply("turn on the lights", Conversation()) == "You said: turn on the lights"
    assert await echo.reply("", Conversation()) == "Sorry, I did not catch that."


async def test_chat_sends_history_and_returns_content(fake_chat) -> None:
    fake, base = fake_chat
    policy = ChatReply(base, model="tiny", api_key="sekret")
    conv = Conversation()
    conv.add("user", "hello")
    conv.add("assistant", "hi")
    try:
        assert await policy.reply("what is the weather today", conv) == "It is sunny."
    finally:
        await policy.close()
    body = fake.requests[0]
    assert body["model"] == "tiny"
    assert body["stream"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "what is the weather today"
    assert fake.headers[0]["Authorization"] == "Bearer sekret"


async def test_chat_error_status_is_reply_error(fake_chat) -> None:
    fake, base = fake_chat
    fake.status = 503
    policy = ChatReply(base + "/v1", api_key="")
    try:
        with pytest.raises(ReplyError) as exc:
            await policy.reply("hello", Conversation())
    finally:
        await policy.close()
    assert str(exc.value) == (
        f"chat endpoint {base}/v1/chat/completions answered 503: model overloaded")
    assert "Authorization" not in fake.headers[0]


async def test_chat_unreachable_is_reply_error(unused_tcp_port) -> None:
    policy = ChatReply(f"http://127.0.0.1:{unused_tcp_port}/v1/chat/completions", api_key="")
    try:
        with pytest.raises(ReplyError, match="unreachable"):
            await policy.reply("hello", Conversation())
    finally:
        await policy.close()


def test_endpoint_forms() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert ChatReply(url).endpoint == "http://h:1/v1/chat/completions"


def test_make_reply_policy() -> None:
    assert isinstance(make_reply_policy("echo"), EchoReply)
    assert isinstance(make_reply_policy("https://example.invalid"), ChatReply)
    message = "unknown reply policy 'gpt': use 'echo' or an http(s):// chat endpoint URL"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_reply_policy("gpt")


@pytest.mark.parametrize(("body", "message"), [
    ({}, "chat completion has no choices[0].message.content"),
    ({"choices": []}, "chat completion has no choices[0].message.content"),
    ({"choices": [{"message": {"content": None}}]}, "chat completion content is not a string"),
    ("not json object", "chat completion has no choices[0].message.content"),
])
def test_parse_chat_completion_errors(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_chat_completion(json.loads(json.dumps(body)))


def test_conversation_is_bounded() -> None:
    conv = Conversation()
    for i in range(100):
        conv.add("user", str(i))
    assert len(conv.messages) == 16
    assert conv.messages[-1]["content"] == "99"
