# SPDX-License-Identifier: Apache-2.0
"""The BPF commands of the CLI as root: one line, no traceback, when nothing is loaded."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.unit.test_orchestrator_cli import BPF_COMMANDS
from voxrelay.cli import cli


@pytest.mark.root
def test_no_relay_loaded_is_one_line_for_every_bpf_command():
    name = f"vxnope-{secrets.token_hex(3)}"
    for args in BPF_COMMANDS:
        if args == ["relay", "load"]:
            continue  # it would load one
        out = CliRunner().invoke(cli, [*args, "--name", name])
        if args == ["relay", "status"]:
            assert out.exit_code == 1
            assert out.output == f"relay {name!r} is not loaded (run `voxrelay relay load`)\n"
        elif args == ["relay", "unload"]:
            assert out.exit_code == 0 and out.output == f"relay {name!r} was not loaded\n"
        else:
            assert out.exit_code == 1, args
            assert out.output == (f"Error: no relay {name!r} is loaded (nothing pinned under "
                                  f"/sys/fs/bpf/voxrelay/{name}): run `voxrelay relay load` first\n")


@pytest.mark.root
def test_relay_load_on_missing_interfaces_is_one_line(tmp_path):
    name = f"vxnope-{secrets.token_hex(3)}"
    config = tmp_path / "voxrelay.toml"
    config.write_text(f'[relay]\nname = "{name}"\npublic_interface = "vxno0"\n'
                      'private_interface = "vxno1"\n')
    out = CliRunner().invoke(cli, ["relay", "load", "--config", str(config)])
    assert out.exit_code == 1
    assert out.output == ("Error: no interface 'vxno0' in netns (current): check [relay] "
                          "public_interface and private_interface in the config (--config), "
                          "or give --netns\n")
    assert not Path(f"/run/voxrelay/{name}.lock").exists()
    assert not Path(f"/sys/fs/bpf/voxrelay/{name}").exists()
