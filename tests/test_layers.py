"""The package's architecture rules (docs/architecture.md), checked on the source with ``ast``.

- Every module lives in a subpackage; subpackages form layers, and an import across
  subpackages goes to a strictly lower layer (so train and infer never import each other).
- The imports form no cycle (imports under ``if TYPE_CHECKING:`` do not count).
- No private name (``_x``) is imported from another module or read off another module.
- Across subpackages only the names of the target subpackage's ``__all__`` are used: its
  ``__init__.py`` is its public interface.

Nothing of the package is imported, except by the test that resolves every ``__all__``.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "whisper_sv"
ARCHITECTURE = REPO / "docs" / "architecture.md"
TOP_LEVEL = {"whisper_sv", "whisper_sv.__main__"}  # the only modules outside a subpackage


@dataclass(frozen=True)
class Use:
    """One name of the package that a module uses: ``module.name`` (name None: the module)."""

    source: str  # the importing module, e.g. whisper_sv.train.trainer
    module: str  # the module the name comes from, e.g. whisper_sv.core.audio
    name: str | None  # the name taken from it (None: the module itself)
    typing_only: bool
    line: int

    def __str__(self) -> str:
        what = f"{self.module}.{self.name}" if self.name else self.module
        return f"{self.source}:{self.line} uses {what}"


def _layers() -> dict[str, int]:
    """{subpackage: layer} from the ``- N name, name`` lines of docs/architecture.md."""
    layers: dict[str, int] = {}
    for m in re.finditer(r"^- (\d+) ([\w, ]+)$", ARCHITECTURE.read_text("utf-8"), re.M):
        for name in m.group(2).split(","):
            layers[name.strip()] = int(m.group(1))
    return layers


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] != "__main__") else None


def _uses(path: Path, module: str, modules: dict[str, Path]) -> list[Use]:
    """Every name of the package that ``module`` imports or reads off an imported module."""
    tree = ast.parse(path.read_text("utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    found: list[Use] = []
    bound: dict[str, str] = {}  # local name -> package module it is bound to
    for node in ast.walk(tree):
        only = id(node) in typing_only
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "whisper_sv":
                    found.append(Use(module, a.name, None, only, node.lineno))
                    if a.asname:
                        bound[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "whisper_sv":
                continue
            for a in node.names:
                if f"{base}.{a.name}" in modules:  # a submodule
                    found.append(Use(module, f"{base}.{a.name}", None, only, node.lineno))
                    bound[a.asname or a.name] = f"{base}.{a.name}"
                else:
                    found.append(Use(module, base, a.name, only, node.lineno))
    for node in ast.walk(tree):  # mod._private on a bound module
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            found.append(
                Use(module, bound[node.value.id], node.attr, id(node) in typing_only, node.lineno)
            )
    return found


def _all_uses(package: Path) -> list[Use]:
    modules = _modules(package)
    return [u for m, p in sorted(modules.items()) for u in _uses(p, m, modules)]


def _private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


def _upward(uses: list[Use], layers: dict[str, int]) -> list[str]:
    bad = []
    for u in uses:
        a, b = _subpackage(u.source), _subpackage(u.module)
        if a is None or b is None or a == b:
            continue
        if layers.get(b, 99) >= layers.get(a, -1):
            bad.append(f"{u} ({a}: layer {layers.get(a)}, {b}: layer {layers.get(b)})")
    return sorted(set(bad))


def _cycles(uses: list[Use], modules: set[str]) -> list[str]:
    """Import cycles among modules (run-time imports only), by depth-first search."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for u in uses:
        # A package's __init__ is imported on the way to its submodules; that is no edge.
        inside = u.source.startswith(u.module + ".")
        if not u.typing_only and u.module in modules and u.module != u.source and not inside:
            graph[u.source].add(u.module)
    cycles: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cyc = [*path, node]
                cycles.append(" -> ".join(cyc[cyc.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def _public_names(package: Path) -> dict[str, set[str]]:
    """{subpackage: names in its __init__.py's literal ``__all__``}."""
    out = {}
    for init in package.glob("*/__init__.py"):
        names: set[str] = set()
        for node in ast.parse(init.read_text("utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                names = set(ast.literal_eval(node.value))
        out[init.parent.name] = names
    return out


def _outside_interface(uses: list[Use], public: dict[str, set[str]]) -> list[str]:
    bad = []
    for u in uses:
        a, b = _subpackage(u.source), _subpackage(u.module)
        if a is None or b is None or a == b:
            continue
        name = u.name if u.name is not None else u.module.split(".")[-1]
        if u.module == f"whisper_sv.{b}" and u.name is None:
            continue  # ``import whisper_sv.core``: the package itself
        if name not in public.get(b, set()):
            bad.append(f"{u}: not in whisper_sv.{b}.__all__")
    return sorted(set(bad))


def test_every_module_is_in_a_subpackage_with_a_layer():
    layers = _layers()
    assert len(layers) >= 8, "docs/architecture.md lost its layer list"
    modules = _modules(PACKAGE)
    loose = sorted(m for m in modules if _subpackage(m) is None and m not in TOP_LEVEL)
    assert loose == [], "put these modules into a subpackage"
    subpackages = {_subpackage(m) for m in modules} - {None}
    assert subpackages - set(layers) == set(), "add the subpackage(s) to docs/architecture.md"
    assert set(layers) - subpackages == set(), (
        "docs/architecture.md names a subpackage that is gone"
    )


def test_imports_across_subpackages_go_to_a_lower_layer():
    assert _upward(_all_uses(PACKAGE), _layers()) == []


def test_no_import_cycles():
    assert _cycles(_all_uses(PACKAGE), set(_modules(PACKAGE))) == []


def test_no_private_name_crosses_a_module_boundary():
    bad = [str(u) for u in _all_uses(PACKAGE) if _private(u.name) and u.module != u.source]
    assert bad == []


def test_subpackages_are_used_through_their_public_interface():
    assert _outside_interface(_all_uses(PACKAGE), _public_names(PACKAGE)) == []


@pytest.mark.parametrize("sub", sorted(_layers()))
def test_every_public_name_resolves(sub):
    """Each name of ``__all__`` is reachable as ``whisper_sv.<sub>.<name>`` (lazily imported)."""
    package = importlib.import_module(f"whisper_sv.{sub}")
    assert package.__all__, f"whisper_sv.{sub} has an empty __all__"
    missing = [n for n in package.__all__ if getattr(package, n, None) is None]
    assert missing == []


def test_the_checks_catch_each_kind_of_break(tmp_path):
    """A data module that imports the trainer, a cycle, a private name, a name off-interface."""
    fake = tmp_path / "whisper_sv"
    for sub, files in {
        "data": {"store.py": "def f():\n    from whisper_sv.train.trainer import Trainer\n"},
        "train": {
            "trainer.py": "from whisper_sv.data import store\nfrom whisper_sv.core.text import _norm\n",
        },
        "core": {
            "text.py": "def _norm(): ...\n",
            "audio.py": "import whisper_sv.core.text as t\nt._norm\n",
        },
    }.items():
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text('__all__ = ["text"]\n')
        for name, text in files.items():
            (fake / sub / name).write_text(text)
    uses = _all_uses(fake)
    layers = {"core": 0, "data": 2, "train": 3}
    assert [s.split(" (")[0] for s in _upward(uses, layers)] == [
        "whisper_sv.data.store:2 uses whisper_sv.train.trainer.Trainer"
    ]
    assert _cycles(uses, set(_modules(fake))) == [
        "whisper_sv.data.store -> whisper_sv.train.trainer -> whisper_sv.data.store"
    ]
    private = sorted(str(u) for u in uses if _private(u.name) and u.module != u.source)
    assert private == [
        "whisper_sv.core.audio:2 uses whisper_sv.core.text._norm",
        "whisper_sv.train.trainer:2 uses whisper_sv.core.text._norm",
    ]
    off = _outside_interface(uses, _public_names(fake))
    assert (
        "whisper_sv.data.store:2 uses whisper_sv.train.trainer.Trainer: not in whisper_sv.train.__all__"
        in off
    )
    assert (
        "whisper_sv.train.trainer:1 uses whisper_sv.data.store: not in whisper_sv.data.__all__"
        in off
    )
    assert not any("core.audio" in o for o in off), "a use inside its own subpackage is free"
