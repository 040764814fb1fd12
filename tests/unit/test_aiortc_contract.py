# SPDX-License-Identifier: Apache-2.0
"""The aioice/aiortc internals transceiver/ice.py relies on are still there.

transceiver/ice.py is the one module that reaches past aioice's and aiortc's
documented API; ``ice.INTERNALS`` lists every name it touches. An upgrade
that renames or retypes any of them fails here, by name, instead of
somewhere in the middle of a call. The table cannot drift from the code:
the last two tests fail when ice.py touches a private aioice/aiortc name the
table lacks, or when any other module touches one at all.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aioice
import aioice.ice
import aiortc
import aiortc.jitterbuffer
import aiortc.rtcicetransport
import pytest

from transceiver import ice

ROOT = Path(__file__).resolve().parents[2]
ICE_SOURCE = ROOT / "transceiver" / "ice.py"


def _resolve(path: str) -> Any:
    """``"aioice.ice.CandidatePair.State"`` -> the object (module, then attributes)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _fresh_pair() -> Any:
    conn = aioice.ice.Connection(ice_controlling=False)
    protocol = aioice.ice.StunProtocol(conn)
    remote = aioice.Candidate("1", 1, "udp", 1, "192.0.2.1", 9, "host")
    return aioice.ice.CandidatePair(protocol, remote)


def _fresh_transport() -> Any:
    return aiortc.rtcicetransport.RTCIceTransport(aiortc.rtcicetransport.RTCIceGatherer())


def _fresh_receiver() -> Any:
    """An audio RTCRtpReceiver built with aiortc's own jitter buffer (whatever
    ``short_audio_jitter`` last installed), on a transport that is not closed."""
    import aiortc.rtcrtpreceiver

    module_globals = vars(aiortc.rtcrtpreceiver)
    installed = module_globals["JitterBuffer"]
    module_globals["JitterBuffer"] = aiortc.jitterbuffer.JitterBuffer
    try:
        return aiortc.rtcrtpreceiver.RTCRtpReceiver("audio", SimpleNamespace(state="new"))
    finally:
        module_globals["JitterBuffer"] = installed


# How to make a fresh instance of each owner whose instance attributes ice.py uses.
FACTORIES: dict[str, Callable[[], Any]] = {
    "aioice.ice.Connection": lambda: aioice.ice.Connection(ice_controlling=False),
    "aioice.ice.CandidatePair": _fresh_pair,
    "aiortc.rtcicetransport.RTCIceGatherer": aiortc.rtcicetransport.RTCIceGatherer,
    "aiortc.rtcicetransport.RTCIceTransport": _fresh_transport,
    "aiortc.jitterbuffer.JitterBuffer": lambda: aiortc.jitterbuffer.JitterBuffer(16, prefetch=1),
    "aiortc.rtcrtpreceiver.RTCRtpReceiver": _fresh_receiver,
}


def test_installed_versions_are_the_tested_and_pinned_ones() -> None:
    installed = {name: importlib.metadata.version(name) for name in ice.TESTED_WITH}
    assert installed == ice.TESTED_WITH, (
        "aioice/aiortc/av differ from the versions transceiver/ice.py was checked against: "
        "run this file, fix ice.py and INTERNALS, then update TESTED_WITH and the pins")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in ice.TESTED_WITH.items():
        assert f"{name}=={version}" in dependencies, f"pyproject.toml must pin {name}=={version}"


@pytest.mark.parametrize("internal", ice.INTERNALS, ids=lambda i: f"{i.owner}.{i.name}")
async def test_internal_exists_with_its_kind(internal: ice.Internal) -> None:
    owner = _resolve(internal.owner)
    where = f"{internal.owner}.{internal.name}"
    if internal.kind == "attribute":
        assert internal.owner in FACTORIES, f"add a factory for {internal.owner} to FACTORIES"
        instance = FACTORIES[internal.owner]()
        assert internal.name in vars(instance), f"{where} is no longer set on instances"
        got = type(vars(instance)[internal.name]).__name__
        assert got == internal.type, (
            f"{where} is a {got} on a fresh instance, not a {internal.type}")
    elif internal.kind == "annotation":
        declared = [inspect.get_annotations(c) for c in owner.__mro__]
        assert any(internal.name in d for d in declared), f"{where} is no longer declared"
    elif internal.kind == "parameter":
        assert internal.name in inspect.signature(owner).parameters, f"{where} is not a parameter"
    elif internal.kind == "receiver-set":
        import aiortc.rtcrtpreceiver

        assert re.search(rf"packet\.{internal.name} = ", inspect.getsource(aiortc.rtcrtpreceiver)), (
            f"aiortc's RTCRtpReceiver no longer sets {where} on the packets it buffers")
    elif internal.kind == "patched":
        current = getattr(owner, internal.name)
        assert current in (aioice.ice.Connection, ice._connection_factory), (
            f"{where} is {current!r}, not aioice's Connection (or ice.py's factory)")
    else:
        assert hasattr(owner, internal.name), f"{where} is gone"
        value = inspect.getattr_static(owner, internal.name)
        kinds = {
            "method": inspect.isfunction(value),
            "property": isinstance(value, property),
            "class": inspect.isclass(value),
            "function": inspect.isfunction(value),
            "constant": type(value).__name__ == internal.type,
        }
        assert internal.kind in kinds, f"{where}: unknown kind {internal.kind!r}"
        assert kinds[internal.kind], f"{where} is a {type(value).__name__}, not a {internal.kind}"


def _library_private_names() -> set[str]:
    """Every single-underscore name aioice and aiortc use as an attribute or method."""
    names: set[str] = set()
    for package in (aioice, aiortc):
        for path in Path(package.__file__).parent.rglob("*.py"):
            text = path.read_text()
            names |= set(re.findall(r"\.(_[A-Za-z]\w*)", text))
            names |= set(re.findall(r"def (_[A-Za-z]\w*)", text))
    return names


def _private_attributes(path: Path, *, skip_self: bool) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            continue
        if skip_self and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, node.attr))
    return found


def test_the_table_lists_every_private_name_ice_py_touches() -> None:
    library = _library_private_names()
    listed = {i.name for i in ice.INTERNALS}
    unlisted = sorted({f"line {line}: {name}"
                       for line, name in _private_attributes(ICE_SOURCE, skip_self=False)
                       if name in library and name not in listed})
    assert not unlisted, f"add these to ice.INTERNALS: {unlisted}"


def test_no_other_module_touches_aioice_or_aiortc_privates() -> None:
    library = _library_private_names()
    files = [p for room in ("transceiver", "lab", "bench") for p in (ROOT / room).rglob("*.py")
             if p != ICE_SOURCE]
    assert files
    offenders = [f"{p.relative_to(ROOT)}:{line}: .{name}" for p in files
                 for line, name in _private_attributes(p, skip_self=True) if name in library]
    assert not offenders, f"move these behind a function in transceiver/ice.py: {offenders}"
