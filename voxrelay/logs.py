# SPDX-License-Identifier: Apache-2.0
"""One log format for every voxrelay service.

``orchestrator run``, ``transceiver run``, ``model serve`` and the lab stack
(which runs those commands in namespaces, each logging to its own file) all
call :func:`setup_logging` once at start, so that their lines interleave
and grep alike::

    2026-12-01T22:41:07.123Z INFO orchestrator orchestrator.sync: wrote 2 transceivers

Fields: UTC time with milliseconds, level, the service (which process wrote
the line; the logger name alone does not say, since both rooms log through
``voxrelay.directory``), the logger, the message. With ``json_lines`` (or
``VOXRELAY_LOG_FORMAT=json`` in the environment) each line is instead one
JSON object with the same fields, for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

LOG_FORMAT_ENV = "VOXRELAY_LOG_FORMAT"
"""Environment variable: ``json`` for JSON lines, ``text`` (or unset) for text."""

_HANDLER_NAME = "voxrelay"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s: %(message)s"


class _UtcFormatter(logging.Formatter):
    """``formatTime`` gives ISO 8601 UTC with milliseconds
    (``2026-01-02T03:04:05.678Z``): logging's own knobs for its default time
    format, so neither formatter overrides ``formatTime``."""

    converter = staticmethod(time.gmtime)
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


class TextFormatter(_UtcFormatter):
    """``TEXT_FORMAT`` with an ISO 8601 UTC timestamp, so hosts in different
    zones (and the lab's namespaces) produce comparable times."""

    def __init__(self, service: str) -> None:
        super().__init__(TEXT_FORMAT)
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        record.service = self.service
        return super().format(record)


class JsonFormatter(_UtcFormatter):
    """One JSON object per line: time, level, service, logger, message
    (and ``exc`` with the traceback text when there is one)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def json_requested(env: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for JSON lines (``VOXRELAY_LOG_FORMAT``).

    Raises ``ValueError`` for a value other than ``json`` or ``text``, so a
    typo does not silently fall back to text.
    """
    value = (os.environ if env is None else env).get(LOG_FORMAT_ENV, "text").strip().lower()
    if value not in ("json", "text", ""):
        raise ValueError(f"{LOG_FORMAT_ENV}={value!r}: expected 'json' or 'text'")
    return value == "json"


def setup_logging(level: int | str, service: str, *, json_lines: bool | None = None,
                  stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger for one service process; returns its handler.

    ``level`` is a logging level (``logging.INFO`` or ``"INFO"``); ``service``
    names the process (``"orchestrator"``, ``"transceiver"``, ``"model"``).
    ``json_lines=None`` follows ``VOXRELAY_LOG_FORMAT``. Calling it again
    replaces the handler it installed before, so a service never logs each
    line twice; handlers someone else installed (pytest's capture) stay.
    """
    if json_lines is None:
        json_lines = json_requested()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(service) if json_lines else TextFormatter(service))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in root.handlers[:]:
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
