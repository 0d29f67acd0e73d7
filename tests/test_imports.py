"""Imports point one way: the commands sit above the modules they use, and crbatch's modules form no
new import cycle.

The graph is read from the source: every import statement, also those inside functions — crbatch
imports lazily to keep start-up short, so most of what a module uses at run time is imported there.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crbatch"

# Cycles present when this test was written, each a set of modules that import one another: not to
# grow, and to be removed from here once broken.
KNOWN_CYCLES = {
    # The per-epoch figures take their histograms from epoch.py, which draws them lazily.
    frozenset({"crbatch.evaluate.epoch", "crbatch.evaluate.plots"}),
    # Scoring loads exported models through export.cli; the raw-jet export scores through score.py.
    frozenset({"crbatch.evaluate.score", "crbatch.export", "crbatch.export.cli", "crbatch.export.rawjets"}),
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _targets(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> list[str]:
    """The crbatch modules an import statement of module ``name`` loads (a package: its __init__)."""
    if isinstance(node, ast.Import):
        found = []
        for alias in node.names:
            target = alias.name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                found.append(target)
        return found
    base = node.module or ""
    if node.level:
        here = name.split(".") if is_package else name.split(".")[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join([*here, base] if base else here)
    if base not in modules:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= set(_targets(name, is_package, node, modules)) - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (a module on a cycle reaches itself)."""
    reach = {m: reachable(graph, m) for m in graph}
    return {frozenset({m} | {r for r in reach[m] if m in reach[r]}) for m in graph if m in reach[m]}


def test_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    assert "crbatch.errors" in g["crbatch.demo_data"]  # from .errors import ... (module level)
    assert "crbatch.convert.cli" in g["crbatch.demo_data"]  # from .convert import cli (inside a function)
    assert "crbatch.batch.scan" in g["crbatch.batch.pipeline"]  # from .scan import expand (inside a method)
    # crbatch/cli.py loads each command's module by name (importlib, COMMANDS): no edge to see there
    assert "crbatch.train.cli" not in g["crbatch.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_demo_production_is_below_the_commands():
    """``crbatch train`` (no --data) and ``crbatch demo`` use the demo production; it uses neither them
    nor the top-level command (train/cli.py → demo.py → cli.py → train/cli.py was a cycle)."""
    g = import_graph()
    below = reachable(g, "crbatch.demo_data")
    assert not below & {"crbatch.cli", "crbatch.demo", "crbatch.train.cli", "crbatch.batch.cli"}, sorted(below)
    assert "crbatch.demo_data" in g["crbatch.train.cli"] and "crbatch.demo" not in g["crbatch.train.cli"]
    assert "crbatch.cli" not in reachable(g, "crbatch.demo")


def test_known_cycles_are_still_cycles():
    """An entry of KNOWN_CYCLES that is no longer a cycle is removed, so it cannot hide a new one."""
    assert cycles(import_graph()) >= KNOWN_CYCLES


def test_no_new_import_cycle():
    g = import_graph()
    new = cycles(g) - KNOWN_CYCLES
    edges = [f"{a} → {b}" for c in new for a in sorted(c) for b in sorted(g[a] & c)]
    assert not new, "import cycle(s): " + "; ".join(edges) + " — move what both need into a lower module"


def test_importing_the_demo_modules_loads_no_command():
    code = "import sys, crbatch.demo_data, crbatch.demo; print(' '.join(m for m in sys.modules if m.startswith('crbatch')))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(r.stdout.split())
    assert {"crbatch.demo_data", "crbatch.demo"} <= loaded
    assert not loaded & {"crbatch.cli", "crbatch.train.cli", "crbatch.train", "crbatch.convert", "crbatch.build"}
