"""``mlbseg.meta`` depends only on torch, the standard library and itself (docs/design.md §3.4)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mlbseg.meta

META_DIR = Path(mlbseg.meta.__file__).parent
MODULES = sorted(META_DIR.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names.add(node.module)
    return names


def is_allowed(module: str) -> bool:
    top = module.split(".")[0]
    return (
        top in ("torch", "__future__") or top in sys.stdlib_module_names or module.startswith("mlbseg.meta")
    )


def test_meta_package_imports_only_torch_stdlib_and_itself():
    assert len(MODULES) >= 5
    offending = {
        path.name: sorted(name for name in imported_modules(path) if not is_allowed(name)) for path in MODULES
    }
    assert offending == {path.name: [] for path in MODULES}


def test_the_checker_catches_task_specific_imports(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import numpy\nfrom mlbseg.seg import views\nfrom segmentation_models_pytorch import Unet\n"
    )
    assert sorted(name for name in imported_modules(sample) if not is_allowed(name)) == [
        "mlbseg.seg",
        "numpy",
        "segmentation_models_pytorch",
    ]
