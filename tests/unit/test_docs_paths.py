# SPDX-License-Identifier: Apache-2.0
"""Every repository path the newcomer's docs name exists.

README.md, docs/architecture.md and CONTRIBUTING.md name files and folders in
code spans (`bpf/relay.c`, `orchestrator/loader.py`, `lab/`) and in code
blocks (the diagrams). A rename that forgets the docs fails here.

What counts as a path: a word whose first segment is a top-level entry of
the repository (`bpf/...`, `tests/...`, `pyproject.toml`), or, in a code
span, a bare file name with a source extension (`media.py`, `relay.c`),
which must then be the name of some file in the tree. Absolute paths
(`/sys/fs/bpf/...`), placeholders (`<relay name>`) and words such as
`VIP:3478` are not repository paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/architecture.md", "CONTRIBUTING.md")
FILE_SUFFIXES = (".py", ".c", ".h", ".md", ".toml", ".proto", ".sh", ".yml", ".yaml", ".json",
                 ".txt", ".typed", ".html", ".js")
# Made by running things, not part of the tree (.gitignore).
GENERATED = ("artifacts", ".venv", "build")

CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
WORD = re.compile(r"[A-Za-z0-9_.*/-]+")


def top_level() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.name not in GENERATED and p.name != ".git"}


def tree_file_names() -> set[str]:
    skip = {".git", ".venv", "build", "artifacts", "__pycache__", ".mypy_cache", ".ruff_cache"}
    return {p.name for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)}


def named_paths(text: str, tops: set[str]) -> tuple[set[str], set[str]]:
    """(paths, bare file names) that ``text`` names."""
    paths: set[str] = set()
    names: set[str] = set()
    fenced = [m.group(1) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    spans = [m.group(1) for m in CODE_SPAN.finditer(prose)]
    for chunk, in_span in [(c, False) for c in fenced] + [(s, True) for s in spans]:
        for word in chunk.split():
            if "<" in word or word.startswith(("/", "~", "http")):
                continue
            match = WORD.match(word)
            if not match:
                continue
            token = match.group(0).rstrip(".,;:")
            first = token.split("/")[0]
            if first in tops and ("/" in token or "." in token):
                paths.add(token)
            elif in_span and "/" not in token and token.endswith(FILE_SUFFIXES) \
                    and word == token:
                names.add(token)
    return paths, names


def exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def test_extraction() -> None:
    text = ("The loader (`orchestrator/loader.py`) pins under `/sys/fs/bpf/voxrelay/<name>/`;\n"
            "see `bpf/relay.c`, `lab/`, `media.py`, `VIP:3478`, `voxrelay maps stats` and\n"
            "`python -m orchestrator.genabi`.\n"
            "```\nclient ⇄ relay   bpf/relay.c, transceiver/model/ (voice.proto)\n"
            "  reply audio: artifacts/reply.wav\n```\n")
    paths, names = named_paths(text, {"bpf", "lab", "orchestrator", "transceiver"})
    assert paths == {"orchestrator/loader.py", "bpf/relay.c", "lab/", "transceiver/model/"}
    assert names == {"media.py"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_path_exists(doc: str) -> None:
    text = (ROOT / doc).read_text()
    paths, names = named_paths(text, top_level())
    assert paths, f"{doc} names no repository path: the extraction is broken"
    missing = sorted(p for p in paths if not exists(p))
    missing += sorted(f"{n} (no file of that name)" for n in names - tree_file_names())
    assert not missing, f"{doc} names paths that do not exist:\n  " + "\n  ".join(missing)
