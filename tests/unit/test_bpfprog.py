# SPDX-License-Identifier: Apache-2.0
"""orchestrator/bpfprog.py: finding the C, building cflags, pin paths (no BPF needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import bpftest
from orchestrator import bpfprog, pins


def test_bpf_dir_is_the_source_tree() -> None:
    d = bpfprog.bpf_dir()
    assert (d / "relay.c").is_file()
    for header in ("consts.h", "structs.h", "verdicts.h", "maps.h", "parsing.h", "csum.h",
                   "token.h"):
        assert (d / header).is_file(), header


def test_tunable_limits_are_the_ifndef_values() -> None:
    limits = bpfprog.tunable_limits()
    assert {"MAX_FLOWS", "MAX_KEYS", "MAX_STUN_ATTRS", "PORT_ALLOC_TRIES",
            "MAX_RELAY_PORTS"} <= limits
    assert not any(name.startswith("VOXRELAY_") for name in limits)


def test_cflags() -> None:
    flags = bpfprog.relay_cflags({"MAX_FLOWS": 4096, "MAX_STUN_ATTRS": 8}, "/sys/fs/bpf/x/y")
    assert flags == [f"-I{bpfprog.bpf_dir()}", "-DMAX_FLOWS=4096", "-DMAX_STUN_ATTRS=8",
                     '-DPIN_DIR="/sys/fs/bpf/x/y"']
    assert bpfprog.relay_cflags() == [f"-I{bpfprog.bpf_dir()}"]


@pytest.mark.parametrize(
    ("overrides", "pin", "message"),
    [
        ({"MAX_FLOW": 1}, None, "unknown relay limit 'MAX_FLOW'; known: "),
        ({"MAX_FLOWS": 0}, None, "relay limit MAX_FLOWS must be a positive integer, got 0"),
        ({"MAX_FLOWS": "8"}, None, "relay limit MAX_FLOWS must be a positive integer, got '8'"),
        ({"MAX_FLOWS": True}, None, "relay limit MAX_FLOWS must be a positive integer, got True"),
        ({}, '/tmp/a"b', "pin directory '/tmp/a\"b' must not contain quotes or backslashes"),
    ],
)
def test_cflags_errors(overrides: dict, pin: str | None, message: str) -> None:
    with pytest.raises(ValueError) as info:
        bpfprog.relay_cflags(overrides, pin)
    assert str(info.value).startswith(message)


def test_pin_dir_for() -> None:
    assert pins.pin_dir_for("edge-1") == Path("/sys/fs/bpf/voxrelay/edge-1")
    for bad in ("", "..", "a/b", "x y"):
        with pytest.raises(ValueError, match="must be letters, digits"):
            pins.pin_dir_for(bad)


def test_prog_test_run_refuses_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        bpftest.prog_test_run(-1, b"\x00" * 14, repeat=0)


def test_test_run_opts_layout() -> None:
    # libbpf 1.1 bpf.h, x86-64: sz 0, data_in 8, data_out 16, data_size_in 24,
    # data_size_out 28, ctx_in 32, ctx_out 40, ctx_size_in 48, ctx_size_out 52,
    # retval 56, repeat 60, duration 64, flags 68, cpu 72, batch_size 76.
    import ctypes

    opts = bpftest._BpfTestRunOpts
    assert ctypes.sizeof(opts) == 80
    assert (opts.ctx_in.offset, opts.retval.offset, opts.batch_size.offset) == (32, 56, 76)
    assert ctypes.sizeof(bpftest.XdpMd) == 24
