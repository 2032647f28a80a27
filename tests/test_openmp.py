"""The entry points set OpenMP's spin count before torch loads, and keep a user's value."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = [
    "train.py", "demo.py", "generate.py", "evaluate.py", "decompose.py", "synthesize.py", "app.py",
]
PROBE = "import layergen.openmp, os, torch; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spin_count(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    result = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_spin_count_default_and_user_value():
    from layergen.openmp import GOMP_SPIN_COUNT

    assert _spin_count({}) == GOMP_SPIN_COUNT
    assert _spin_count({"GOMP_SPINCOUNT": "5"}) == "5"


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_entry_point_imports_openmp_settings_first(script):
    tree = ast.parse((ROOT / script).read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    first = next(n for n in imports if not (isinstance(n, ast.ImportFrom) and n.module == "__future__"))
    assert isinstance(first, ast.Import) and first.names[0].name == "layergen.openmp", script
