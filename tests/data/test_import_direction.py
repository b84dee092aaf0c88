"""dali_pipeline imports harness.data, never the reverse at import time: harness.data reaches DALI
only through harness.data._loader_classes, when a DALI loader is built."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _dali_imports(path: Path) -> list[str]:
    """'file:function' (or 'file:<module>') of each import of dali_pipeline in `path`."""
    found = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                names = [child.module or ""]
            if any(n == "dali_pipeline" or n.startswith("dali_pipeline.") for n in names):
                found.append(f"{path.relative_to(ROOT)}:{scope}")
            visit(child, scope)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_the_harness_imports_dali_pipeline_in_one_factory_only():
    found = [
        hit for path in sorted((ROOT / "harness").rglob("*.py")) for hit in _dali_imports(path)
    ]
    assert found == ["harness/data/__init__.py:_loader_classes"]


def test_importing_the_data_package_leaves_dali_pipeline_unimported():
    code = (
        "import sys; import harness.data, harness.data.loader, harness.data.sampler; "
        "assert 'dali_pipeline' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
