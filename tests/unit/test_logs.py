# SPDX-License-Identifier: Apache-2.0
"""voxrelay/logs.py: one format (time, level, service, logger, message) for every service."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from voxrelay.logs import LOG_FORMAT_ENV, json_requested, setup_logging

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<service>\S+) "
    r"(?P<logger>\S+): (?P<message>.*)$"
)


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored to its handlers and level afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_text_line_has_time_level_service_logger_message(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging(logging.INFO, "orchestrator", json_lines=False, stream=out)
    logging.getLogger("orchestrator.sync").info("wrote %d transceivers", 2)
    line = out.getvalue().rstrip("\n")
    match = TEXT_LINE.match(line)
    assert match, line
    assert match.groupdict() == {"level": "INFO", "service": "orchestrator",
                                 "logger": "orchestrator.sync", "message": "wrote 2 transceivers"}


def test_level_filters(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("WARNING", "model", json_lines=False, stream=out)
    logging.getLogger("transceiver.model.server").info("not shown")
    logging.getLogger("transceiver.model.server").warning("shown")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" WARNING model transceiver.model.server: shown")


def test_json_lines_carry_the_same_fields(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging(logging.DEBUG, "transceiver", json_lines=True, stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("transceiver.call").exception("call %s failed", "c1")
    record = json.loads(out.getvalue())
    assert set(record) == {"time", "level", "service", "logger", "message", "exc"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert (record["level"], record["service"], record["logger"], record["message"]) == (
        "ERROR", "transceiver", "transceiver.call", "call c1 failed")
    assert record["exc"].startswith("Traceback") and "RuntimeError: boom" in record["exc"]


def test_env_selects_json(root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    out = io.StringIO()
    setup_logging(logging.INFO, "lab", stream=out)
    logging.getLogger("lab.stack").info("up")
    assert json.loads(out.getvalue())["service"] == "lab"


def test_env_values() -> None:
    assert json_requested({}) is False
    assert json_requested({LOG_FORMAT_ENV: "text"}) is False
    assert json_requested({LOG_FORMAT_ENV: " JSON "}) is True
    with pytest.raises(ValueError) as info:
        json_requested({LOG_FORMAT_ENV: "yaml"})
    assert str(info.value) == "VOXRELAY_LOG_FORMAT='yaml': expected 'json' or 'text'"


def test_second_call_replaces_its_own_handler_only(root_logger: logging.Logger) -> None:
    foreign = logging.NullHandler()
    root_logger.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging(logging.INFO, "orchestrator", json_lines=False, stream=first)
    setup_logging(logging.INFO, "orchestrator", json_lines=False, stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert foreign in root_logger.handlers
