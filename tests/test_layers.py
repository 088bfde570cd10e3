"""The layer rule of docs/architecture.md: imports go down (or sideways), never up; no cycles.

Imports are read with ``ast`` (nothing is imported), including the ones inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "whisper_sv"
ARCHITECTURE = REPO / "docs" / "architecture.md"
GROUPED = ("sources",)  # sub-packages that count as one module


def _layers() -> dict[str, int]:
    """{module: layer} from the ``- N name: a, b, c`` lines of docs/architecture.md."""
    layers: dict[str, int] = {}
    for m in re.finditer(r"^- (\d+) [\w ]+: (.+)$", ARCHITECTURE.read_text("utf-8"), re.M):
        for name in m.group(2).split(","):
            layers[name.strip()] = int(m.group(1))
    return layers


def _unit(module: str) -> str:
    """``whisper_sv.data.sources.hf`` -> ``sources``; ``whisper_sv`` -> ``whisper_sv``."""
    parts = module.split(".")[1:]
    if not parts:
        return "whisper_sv"
    return parts[0] if parts[0] in GROUPED else ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported whisper_sv module, only for type checking) for each import in ``path``."""
    tree = ast.parse(path.read_text("utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                pkg = pkg if path.name == "__init__.py" else pkg[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            # ``from whisper_sv import models`` imports the module ``whisper_sv.models.loading``.
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "whisper_sv":
                found.append((name, id(node) in typing_only))
    return found


def _graph() -> dict[str, set[tuple[str, bool]]]:
    """{unit: {(imported unit, typing only)}} over the whole package."""
    modules = _modules()
    graph: dict[str, set[tuple[str, bool]]] = {_unit(m): set() for m in modules}
    for module, path in modules.items():
        for name, typing_only in _imports(path, module):
            # The longest prefix that is a module: ``whisper_sv.data.store.collate`` -> store.
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if not parts:
                continue
            target = _unit(".".join(parts))
            if target != _unit(module) and not (target == "whisper_sv" and len(parts) == 1):
                graph[_unit(module)].add((target, typing_only))
    return graph


def test_every_module_has_a_layer():
    layers, units = _layers(), set(_graph())
    assert len(layers) > 20, "docs/architecture.md lost its layer list"
    assert units - set(layers) == set(), "add the new module(s) to docs/architecture.md"
    assert set(layers) - units == set(), "docs/architecture.md names a module that is gone"


def _upward(graph: dict[str, set[tuple[str, bool]]], layers: dict[str, int]) -> list[str]:
    return sorted(
        f"{a} (layer {layers[a]}) imports {b} (layer {layers[b]})"
        for a, targets in graph.items()
        for b, _ in targets
        if layers.get(b, -1) > layers.get(a, 99)
    )


def _cycles(graph: dict[str, set[tuple[str, bool]]]) -> list[str]:
    """Import cycles of the run-time imports (depth-first search)."""
    runtime = {a: {b for b, typing_only in t if not typing_only} for a, t in graph.items()}
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(runtime.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path, node][[*path, node].index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(runtime):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_reaches_a_higher_layer():
    assert _upward(_graph(), _layers()) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """A store that imported the trainer (lazily, inside a function) would be reported."""
    import sys

    fake = tmp_path / "whisper_sv"
    fake.mkdir()
    (fake / "store.py").write_text("def f():\n    from whisper_sv.train.trainer import Trainer\n")
    (fake / "trainer.py").write_text("from whisper_sv import store\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = _graph()
    assert graph == {"store": {("trainer", False)}, "trainer": {("store", False)}}
    assert _upward(graph, _layers()) == ["store (layer 2) imports trainer (layer 4)"]
    assert _cycles(graph) == ["store -> trainer -> store"]
