"""The house's layering holds: import-linter's contracts (pyproject.toml) and no import cycle
between any two kiln modules, lazy and type-checking imports included."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).parents[1]


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.startswith("kiln"))
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("kiln", cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("kiln", "kiln.a", "kiln.b", "kiln.c"):
        graph.add_module(name)
    graph.add_import(importer="kiln.a", imported="kiln.b")
    graph.add_import(importer="kiln.b", imported="kiln.a")
    graph.add_import(importer="kiln.c", imported="kiln.a")
    assert _cycles(graph) == [["kiln.a", "kiln.b"]]


def _ladder_from_pyproject() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return [" ".join(rung.split()) for rung in contract["layers"]]


def _ladder_from_contributing() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = text.split("  ```\n", 2)[1]
    rungs = []
    for line in block.splitlines():
        words = line.split()
        # A rung is its module names and separators; what follows two spaces is its gloss.
        names = re.split(r"\s{2,}", line.strip())[0]
        if words:
            rungs.append(" ".join(names.split()))
    return rungs


def test_contributing_shows_the_enforced_ladder() -> None:
    assert _ladder_from_contributing() == _ladder_from_pyproject()


def test_kiln_root_holds_only_the_shared_vocabulary() -> None:
    """Every module at kiln's root sits on the ladder's bottom rungs (the shared vocabulary)."""
    ladder = _ladder_from_pyproject()
    vocabulary = {name for rung in ladder[-3:] for name in re.split(r"[|:]", rung.replace(" ", ""))}
    root = {f"kiln.{p.stem}" for p in (ROOT / "kiln").glob("*.py") if p.stem != "__init__"}
    assert root <= vocabulary, sorted(root - vocabulary)
