"""The package's floors: a module imports only from its own floor and the floors below, and no
import (at module level or inside a function) closes a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "baton"
# Lowest first: the job's config; kernels; models; the process and data plumbing; what wraps a
# model from outside (parallelism, checkpoints, profiling); the command line and the trainer.
FLOORS = [
    {"config", "progress"},
    {"kernels"},
    {"models"},
    {"dist", "data"},
    {"parallel", "checkpoint", "profile"},
    {"launch"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(module: str) -> set[str]:
    """The baton modules ``module`` imports; ``from package import name`` counts as the
    submodule where ``name`` is one."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "baton"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "baton":
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {node.module}
    return found


def floor(module: str) -> int:
    room = module.split(".")[1]
    return next(i for i, rooms in enumerate(FLOORS) if room in rooms)


def test_every_room_has_a_floor():
    rooms = {m.split(".")[1] for m in MODULES if m != "baton"}
    assert rooms == set().union(*FLOORS)


def upward_imports() -> list[str]:
    return [
        f"{m} (floor {floor(m)}) imports {i} (floor {floor(i)})"
        for m in MODULES
        if m != "baton"
        for i in sorted(imports(m))
        if i != "baton" and floor(i) > floor(m)
    ]


def test_no_import_runs_up_a_floor():
    assert not upward_imports(), "\n".join(upward_imports())


def circles() -> list[list[str]]:
    """Every import circle, as the path that closes it (depth-first over the module graph)."""
    graph = {m: sorted(imports(m) & MODULES.keys()) for m in MODULES}
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state[n] == 1:
                found.append([*path[path.index(n) :], n])
            elif state[n] == 0:
                visit(n, [*path, n])
        state[m] = 2

    for m in graph:
        if state[m] == 0:
            visit(m, [m])
    return found


def test_no_import_circles():
    assert circles() == []


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a kernels module importing the trainer, which imports it."""
    fake = tmp_path / "upward.py"
    fake.write_text("from baton.launch.train import Trainer\n")
    trainer = tmp_path / "train.py"
    trainer.write_text(MODULES["baton.launch.train"].read_text() + "import baton.kernels.upward\n")
    monkeypatch.setitem(MODULES, "baton.kernels.upward", fake)
    monkeypatch.setitem(MODULES, "baton.launch.train", trainer)
    assert upward_imports() == ["baton.kernels.upward (floor 1) imports baton.launch.train (floor 5)"]
    assert circles() == [["baton.launch.train", "baton.kernels.upward", "baton.launch.train"]]
