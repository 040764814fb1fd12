# SPDX-License-Identifier: Apache-2.0
"""``voxrelay model``: run the default offline voice model."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from transceiver.model.asr import ASR_MODES, PocketsphinxAsr
from transceiver.model.reply import make_reply_policy
from transceiver.model.server import ModelOptions, serve_model
from voxrelay.config import ConfigError, load_config
from voxrelay.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def model() -> None:
    """The default voice model: VAD -> ASR -> reply -> TTS, offline, over gRPC.

    It serves transceiver/model/voice.proto; the transceiver connects to it as a
    client. Models come from packages (pocketsphinx, espeak-ng): nothing is
    downloaded.
    """


@model.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="voxrelay TOML config; its [model] table gives the defaults below.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="gRPC listen address (default from config: 127.0.0.1:50051).")
@click.option("--reply", default=None, metavar="echo|URL",
              help="'echo' repeats what it heard; an http(s) URL sends the transcript to "
                   "an OpenAI-compatible chat endpoint (POST <URL>/v1/chat/completions; "
                   "API key from $VOXRELAY_CHAT_API_KEY).")
@click.option("--chat-model", default="default", show_default=True,
              help="'model' field sent to the chat endpoint.")
@click.option("--asr", "asr_mode", type=click.Choice(ASR_MODES), default="grammar",
              show_default=True,
              help="grammar: assistant phrases (reliable), free-form fallback for anything "
                   "else; free: pocketsphinx's n-gram model only.")
@click.option("--max-streams", default=16, show_default=True, type=click.IntRange(1, 1000),
              help="Concurrent calls; more are refused with a 'busy' error.")
@click.option("--json", "as_json", is_flag=True, help="Print the bound address as JSON on start.")
@click.option("-v", "--verbose", is_flag=True, help="Log per-call events.")
def serve(config_path: Path | None, listen: str | None, reply: str | None, chat_model: str,
          asr_mode: str, max_streams: int, as_json: bool, verbose: bool) -> None:
    """Serve the voice model until SIGINT or SIGTERM."""
    setup_logging(logging.INFO if verbose else logging.WARNING, "model")
    try:
        cfg = load_config(config_path).model
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    listen = listen or cfg.listen
    reply = reply or cfg.reply

    try:
        policy = make_reply_policy(reply, model=chat_model)
        options = ModelOptions(asr=PocketsphinxAsr(asr_mode), reply=policy,
                               max_streams=max_streams)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with serve_model(listen, options) as addr:
                info = {"listen": addr, "asr": options.asr.name,
                        "reply": policy.name, "tts": options.tts.name}
                if as_json:
                    click.echo(json.dumps(info), nl=True)
                else:
                    click.echo(f"voice model on {addr} (asr {info['asr']}, reply {info['reply']}, "
                               f"tts {info['tts']})")
                await stop.wait()
        except (OSError, ValueError, RuntimeError) as exc:
            raise click.ClickException(f"cannot serve on {listen}: {exc}") from None

    asyncio.run(run())
