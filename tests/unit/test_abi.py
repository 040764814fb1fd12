"""orchestrator/abi.py is what genabi makes of bpf/ now; VOXRELAY_BPF_DIR picks other C."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator import bpfprog, genabi


@pytest.mark.root
def test_committed_abi_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    # A C change without `python -m orchestrator.genabi` fails here, with the diff.
    # Needs bcc and root: genabi compiles relay.c once and asks the kernel.
    status = genabi.main(["--check"])
    out, err = capsys.readouterr()
    assert status == 0, out + err


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
