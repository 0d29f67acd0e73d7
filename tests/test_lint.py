"""The code base stays ruff-clean and mypy-clean (both configured in pyproject.toml)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (test extra)")
def test_ruff_clean():
    r = subprocess.run(["ruff", "check", "crbatch", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed (test extra)")
def test_mypy_clean():
    # The interpreter running the tests: its mypy sees the installed libraries, stubs and pydantic plugin.
    r = subprocess.run([sys.executable, "-m", "mypy", "crbatch"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
