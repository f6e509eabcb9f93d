"""The service reaches the ML only through ``detector``'s public names, and the worker's modules
import each other one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import detector

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"

PENDING: frozenset[str] = frozenset()
"""Deep modules the HTTP layer still imports until its own change switches it to the public
names: tolerated only for names already in ``__all__`` (the switch is then an import line),
and each entry goes when its last import does (the test fails on one no longer needed)."""


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every module ``path`` imports (at any depth of the file), with the names taken from it."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _deep_detector_imports() -> set[tuple[str, str, tuple[str, ...]]]:
    """(file, module, names) of every import in ``service/`` that reaches below ``detector``."""
    deep: set[tuple[str, str, tuple[str, ...]]] = set()
    for path in sorted(SERVICE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for module, names in _imports(path):
            if module.startswith("detector."):
                deep.add((where, module, tuple(names)))
            elif module == "detector":  # `from detector import cli` reaches a submodule too
                deep |= {(where, f"detector.{n}", ()) for n in names if n not in detector.__all__}
    return deep


def test_service_imports_only_the_detector_package() -> None:
    deep = _deep_detector_imports()
    refused = {
        (where, module)
        for where, module, names in deep
        if module not in PENDING or not set(names) <= set(detector.__all__)
    }
    assert refused == set(), "import these through `detector` (add to its __all__)"
    assert PENDING - {module for _, module, _ in deep} == set(), "gone: drop from PENDING"


def test_worker_modules_import_one_way() -> None:
    """No cycle among ``service/worker`` modules, and no import inside a function to dodge one."""
    worker = SERVICE / "worker"
    graph: dict[str, set[str]] = {}
    for path in worker.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}
        nested = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        assert len(nested) == len(top), f"{path.name}: an import inside a function"
        graph[path.stem] = {
            module.removeprefix("service.worker.")
            for module, _ in _imports(path)
            if module.startswith("service.worker.")
        }

    def reaches(start: str, target: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt}))
            for nxt in graph.get(start, set())
        )

    assert [m for m in graph if reaches(m, m)] == []
