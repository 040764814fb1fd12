# SPDX-License-Identifier: Apache-2.0
"""The four floors stay floors, and product code has no import circle.

`lint-imports` checks the layers contract in pyproject.toml
([tool.importlinter]: voxrelay < orchestrator | transceiver < lab <
bench | tests). The cycle test builds the same import graph with grimp
(import-linter's graph library) over the product packages and lists every
circle, with the file and line of each import in it. grimp reads every
import statement, so an import inside a function (often a circle dodged at
run time) counts like one at the top of the module.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("voxrelay", "orchestrator", "transceiver")


def test_lint_imports_keeps_the_floors() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} missing: pip install -e .[test] (import-linter)"
    # --no-cache: the check takes well under a second and must not leave a
    # cache directory in the tree.
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "0 broken" in report, report


def strongly_connected(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one
    module, or one module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        yield sorted(component)


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest import path from ``start`` back to itself inside ``within``."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & within):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a component but on no cycle")


def import_graph() -> tuple[grimp.ImportGraph, dict[str, set[str]]]:
    built = grimp.build_graph(*PRODUCT, cache_dir=None)
    graph = {module: {imported for imported in built.find_modules_directly_imported_by(module)
                      if imported.split(".")[0] in PRODUCT}
             for module in built.modules}
    return built, graph


def describe(built: grimp.ImportGraph, cycle: list[str]) -> str:
    lines = [" -> ".join(cycle)]
    for importer, imported in itertools.pairwise(cycle):
        for detail in built.get_import_details(importer=importer, imported=imported):
            lines.append(f"      {importer}:{detail['line_number']}  {detail['line_contents']}")
    return "\n".join(lines)


def find_cycles() -> list[str]:
    """Every circle in product code, one entry per strongly connected component:
    its modules, then the shortest cycle through each of them."""
    built, graph = import_graph()
    found = []
    for component in strongly_connected(graph):
        members = set(component)
        cycles: list[list[str]] = []
        for module in component:
            cycle = shortest_cycle(graph, module, members)
            rotations = {tuple(c[i:-1] + c[:i + 1]) for c in cycles for i in range(len(c) - 1)}
            if tuple(cycle) not in rotations:
                cycles.append(cycle)
        found.append(f"circle among {', '.join(component)}:\n"
                     + "\n".join("  " + describe(built, cycle) for cycle in cycles))
    return found


def test_cycle_finder_finds_every_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"g"}, "g": {"f"}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["e"], ["f", "g"]]
    assert shortest_cycle(graph, "b", {"a", "b", "c"}) == ["b", "c", "a", "b"]
    assert shortest_cycle(graph, "e", {"e"}) == ["e", "e"]


def test_product_code_has_no_import_circle() -> None:
    cycles = find_cycles()
    assert not cycles, f"{len(cycles)} import circle(s) in product code:\n\n" + "\n\n".join(cycles)
