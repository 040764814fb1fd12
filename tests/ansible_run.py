# SPDX-License-Identifier: Apache-2.0
"""Running the Ansible tools of the venv against ansible/ (tests/unit and tests/bpf both do)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from voxrelay import config as cfg

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent

# role -> (config table dataclass, variable prefix)
ROLE_TABLES = {
    "relay": (cfg.RelayConfig, "relay_"),
    "orchestrator": (cfg.OrchestratorConfig, "orchestrator_"),
    "transceiver": (cfg.TransceiverConfig, "transceiver_"),
    "model": (cfg.ModelConfig, "model_"),
    "tcpfront": (cfg.TcpFrontConfig, "tcpfront_"),
}


def ansible_tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN} (pip install -e .[test])")
    return str(path)


def ansible_env(**extra: str) -> dict[str, str]:
    # The controller's pip settings (mirrors, find-links) mean nothing on the
    # target, whose pip the chroot connection would otherwise hand them to.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}:{env.get('PATH', '')}",
    })
    env.update(extra)
    return env
