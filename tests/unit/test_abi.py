# SPDX-License-Identifier: Apache-2.0
"""genabi renders orchestrator/abi.py from what bcc reports; VOXRELAY_BPF_DIR picks other C.

The check that the committed abi.py is current needs root: tests/bpf/test_abi_current.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator import bpfprog, genabi


def test_bpf_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "bpf"
    shutil.copytree(bpfprog.bpf_dir(), copy)
    monkeypatch.setenv("VOXRELAY_BPF_DIR", str(copy))
    assert bpfprog.bpf_dir() == copy
    # A directory without relay.c is an error, never a silent fallback to bpf/.
    monkeypatch.setenv("VOXRELAY_BPF_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no relay.c"):
        bpfprog.bpf_dir()


# What bcc says of two maps, in the form bpf_table_{key,leaf}_desc returns.
_ADDR = ["relay_addr", [["addr", "unsigned int", [4]]], "struct_packed"]
_FAKE_MAPS = [
    genabi.KernelMap("rate", 9, 16, 16, 128, _ADDR,
                     ["rate_window", [["window_start_ns", "unsigned long long"],
                                      ["count", "unsigned int"], ["pad", "unsigned int"]],
                      "struct_packed"]),
    genabi.KernelMap("stats", 6, 4, 8, 64, "unsigned int", "unsigned long long"),
]
_VERDICTS = {"STAT_RX_TOTAL": 0, "STAT_RETIRED_1": 1, "STAT_DROP_X": 2, "STAT_MAX": 3}


def test_render_without_bcc() -> None:
    text = genabi.render(_VERDICTS, 64, {"TRANSCEIVER_ACTIVE": 1}, _FAKE_MAPS,
                         {"relay_addr": 16, "rate_window": 16})
    namespace: dict[str, object] = {}
    exec(compile(text, "abi.py", "exec"), namespace)  # noqa: S102 (our own output)
    stat = namespace["Stat"]
    assert [(s.name, s.value) for s in stat] == [  # type: ignore[attr-defined]
        ("STAT_RX_TOTAL", 0), ("STAT_RETIRED_1", 1), ("STAT_DROP_X", 2)]
    assert namespace["RETIRED"] == frozenset({1})
    assert namespace["STAT_MAX"] == 3 and namespace["STATS_MAP_SIZE"] == 64
    assert namespace["MAP_NAMES"] == ("rate", "stats")
    layouts = namespace["MAP_LAYOUTS"]
    assert layouts == {"rate": (9, 16, 16), "stats": (6, 4, 8)}
    ctypes_of = namespace["MAP_CTYPES"]
    assert ctypes_of["rate"] == (namespace["RelayAddr"], namespace["RateWindow"])  # type: ignore[index]


def test_render_refuses_a_size_c_disagrees_with() -> None:
    with pytest.raises(ValueError, match="struct rate_window: C asserts 24 bytes, bcc's layout "
                                         "gives 16"):
        genabi.render(_VERDICTS, 64, {}, _FAKE_MAPS, {"rate_window": 24})


def test_abi_refuses_to_import_a_layout_ctypes_disagrees_with() -> None:
    import ctypes

    from orchestrator.layouts import check_layouts

    class Two(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint16)]

    check_layouts({Two: ("two", 2)}, {"m": (ctypes.c_uint32, Two)}, {"m": (1, 4, 2)})
    with pytest.raises(RuntimeError, match=r"struct two is 4 bytes in bpf/, ctypes makes 2: "
                                           r"regenerate with python -m orchestrator\.genabi"):
        check_layouts({Two: ("two", 4)}, {}, {})
    with pytest.raises(RuntimeError, match=r"map m has key/value sizes \(4, 8\) in bpf/, "
                                           r"ctypes makes \(4, 2\)"):
        check_layouts({}, {"m": (ctypes.c_uint32, Two)}, {"m": (1, 4, 8)})
