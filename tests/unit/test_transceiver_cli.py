# SPDX-License-Identifier: Apache-2.0
"""The ``voxrelay transceiver`` CLI: help and clear errors, no tracebacks."""

from __future__ import annotations

from click.testing import CliRunner

from voxrelay.cli import cli


def test_help_names_the_run_command() -> None:
    result = CliRunner().invoke(cli, ["transceiver", "--help"])
    assert result.exit_code == 0
    assert "run" in result.output
    result = CliRunner().invoke(cli, ["transceiver", "run", "--help"])
    assert result.exit_code == 0
    assert "--directory" in result.output


def test_bad_relay_spec_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[transceiver]\nlisten = "127.0.0.1:0"\nrelays = ["203.0.113.1"]\n')
    result = CliRunner().invoke(cli, ["transceiver", "run", "--config", str(path),
                                      "--directory", "memory"])
    assert result.exit_code == 1
    assert "Error: [transceiver] relays: relay '203.0.113.1' must be ADDR:PORT" in result.output
    assert "Traceback" not in result.output


def test_bad_port_range_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[transceiver]\nport_min = 50000\nport_max = 40000\n")
    result = CliRunner().invoke(cli, ["transceiver", "run", "--config", str(path)])
    assert result.exit_code == 1
    assert ("[transceiver] port range 50000..40000 must satisfy 1024 <= min <= max <= 65535"
            in result.output)
