"""The layer order of the README's "Architecture" section holds: the import-linter contracts
(``.importlinter``, also run by ``lint-imports`` in CI) are kept and would catch an upward
import, no room has an import cycle, no module imports another's private name, torch is
imported at module level only in train/ (and the torch backend), and no two rooms have a
module of the same name unless it means the same thing."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter not installed")
grimp = pytest.importorskip("grimp", reason="grimp not installed")

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("core", "phantom", "engines", "stream", "train", "bench", "cli")
# module names that mean the same thing in every room that has one
SAME_MEANING = {"__init__.py", "__main__.py", "cli.py",  # a room's CLI registration
                "phantom.py",  # the phantom as a room's input: a live source, a dataset
                "datasets.py"}  # labelled data: what the phantom writes, what train reads


def _lint(config: Path) -> int:
    """lint-imports' exit status on ``config``, in a child process (import-linter's logging
    setup would otherwise silence this process's loggers for the tests after this one)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, "
            "no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], check=False).returncode


def test_the_import_contracts_are_kept() -> None:
    assert _lint(ROOT / ".importlinter") == 0


def test_the_contracts_catch_an_upward_import(tmp_path: Path) -> None:
    """The layer and stream contracts list no exception, and they bite: with two layers
    swapped (train below stream, whose modules train imports) the layer contract breaks."""
    text = (ROOT / ".importlinter").read_text()
    assert text.count("ignore_imports") == 1  # the torch contract's only
    swapped = text.replace("    hepascope.train\n    hepascope.stream\n",
                           "    hepascope.stream\n    hepascope.train\n", 1)
    assert swapped != text
    config = tmp_path / ".importlinter"
    config.write_text(swapped)
    assert _lint(config) == 1


def _room(module: str) -> str:
    return module.split(".")[1]


def _cycles(graph: object, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:  # type: ignore[attr-defined]
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


def test_no_room_has_an_import_cycle() -> None:
    graph = grimp.build_graph(*(f"hepascope.{r}" for r in ROOMS))
    for room in ROOMS:
        modules = {m for m in graph.modules if _room(m) == room}
        assert modules, room
        assert _cycles(graph, modules) == [], room


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for room in ROOMS:
        for f in sorted((ROOT / room).rglob("*.py")):
            yield f, ast.parse(f.read_text(), str(f))


def test_no_module_imports_a_private_name_of_another() -> None:
    found = []
    for f, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hepascope"):
                parts = [*(node.module or "").split("."), *(a.name for a in node.names)]
            elif isinstance(node, ast.Import):
                parts = [p for a in node.names if a.name.startswith("hepascope")
                         for p in a.name.split(".")]
            else:
                continue
            if any(p.startswith("_") and not p.startswith("__") for p in parts):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_torch_is_imported_at_module_level_only_in_train() -> None:
    found = []
    for f, tree in _sources():
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "torch" or n.startswith("torch.") for n in names):
                found.append(str(f.relative_to(ROOT)))
    outside = sorted({f for f in found if not f.startswith("train/")})
    assert outside == ["engines/torch.py"]  # imported only when the torch backend is asked for


def test_no_module_name_repeats_across_rooms_unless_it_means_the_same() -> None:
    rooms_of: dict[str, set[str]] = {}
    for room in ROOMS:
        for f in (ROOT / room).rglob("*.py"):
            rooms_of.setdefault(f.name, set()).add(room)
        for d in (ROOT / room).rglob("*"):
            if d.is_dir() and (d / "__init__.py").is_file():  # a package: train/models/
                rooms_of.setdefault(f"{d.name}.py", set()).add(room)
    repeated = {n: sorted(r) for n, r in rooms_of.items() if len(r) > 1}
    assert {n: r for n, r in repeated.items() if n not in SAME_MEANING} == {}


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="lint-imports not on PATH")
def test_ci_runs_lint_imports_before_the_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "lint-imports" in ci and ci.index("lint-imports") < ci.index("pytest")


def test_the_wheel_ships_every_room() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = meta["tool"]["scikit-build"]["wheel"]["packages"]
    assert packages == {f"hepascope/{r}": r for r in ROOMS}
