"""The allowed import edges between mlbseg's packages, read from the source with ast.

Layers, each importing only those below it: ``cli`` → ``demo`` and ``api`` → ``repeat`` and
``run_figures`` → ``seg`` / ``cls`` → ``evaluation`` → ``prep`` → ``engine`` → ``meta``, with ``config``
and ``errors`` at the bottom (``meta``'s own boundary: docs/design.md §3.4). ``figures`` is a drawing layer
(arrays in, file out) that imports no task package (``seg`` draws its TensorBoard overlays with it).
Outside ``cli/`` (which imports its commands' dependencies inside the commands, so ``mlbseg --help`` stays
fast, docs/design.md §1), no function imports an mlbseg module: dependencies are visible at the top of
each file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "mlbseg"
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "safe_pickle": {"errors"},
    "meta": set(),
    "config": {"errors"},
    "engine": {"config", "errors", "meta"},
    "prep": {"config", "engine", "errors", "safe_pickle"},
    "evaluation": {"engine", "errors", "prep"},
    "figures": {"engine", "errors", "evaluation"},
    "seg": {"config", "engine", "errors", "evaluation", "figures", "meta", "prep"},
    "cls": {"config", "engine", "errors", "evaluation", "meta", "safe_pickle"},
    "run_figures": {"config", "engine", "errors", "evaluation", "figures", "prep", "seg", "cls"},
    "repeat": {"cls", "config", "engine", "errors", "evaluation", "prep", "seg"},
    "demo": {"config", "engine", "errors", "figures", "prep", "repeat", "run_figures", "seg"},
    "api": {"config", "errors", "prep", "seg"},
    "__main__": {"cli"},
}


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def _layer(path: Path) -> str:
    """``seg`` for mlbseg/seg/step.py, ``demo`` for mlbseg/demo.py, ``__init__`` for mlbseg/__init__.py."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def _edges(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {name for node in ast.walk(tree) for name in _imported(node)}
    return {name.split(".")[1] for name in names if name.startswith("mlbseg.")} - {_layer(path)}


def test_every_layer_is_known():
    layers = {_layer(path) for path in _modules()} - {"__init__", "cli"}
    assert layers <= set(ALLOWED), sorted(layers - set(ALLOWED))


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    layer = _layer(path)
    if layer in ("cli", "__init__"):
        return
    assert _edges(path) <= ALLOWED[layer], f"{path.name} imports {sorted(_edges(path) - ALLOWED[layer])}"


def test_no_function_imports_an_mlbseg_module_outside_the_cli():
    found = []
    for path in _modules():
        if _layer(path) == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(function):
                    if any(name.startswith("mlbseg") for name in _imported(node)):
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, found
