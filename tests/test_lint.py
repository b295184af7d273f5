"""The code stays lint-clean: ``ruff check`` (configured in pyproject.toml, line length 110) runs with the suite,
so a change that breaks it fails here instead of in someone's editor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes_on_the_whole_tree():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is part of the 'test' extra"
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_passes_on_the_packages_and_the_benchmark():
    """Type hints are checked, not decoration: mypy (configured in pyproject.toml) runs with the suite."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is not installed: it is part of the 'test' extra"
    result = subprocess.run(
        [mypy, "actors", "eventstore", "projections", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
