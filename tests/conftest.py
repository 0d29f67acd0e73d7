"""Shared fixtures: the reference data directory and cached synthetic DiVertAnalysis ntuples."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The XRootD server fixtures (xrootd, remote_dir) of the grid-storage tests.
pytest_plugins = ["xrootd_helpers"]

# Tools installed into the test environment (ruff, hadolint, crbatch) live beside its python; the
# README runs the tests as `.venv/bin/python -m pytest` without activating it, so put them on PATH.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/data/reference`` beside the repository; the test is skipped where it is absent."""
    d = (REPO / ".." / "shared" / "data" / "reference").resolve()
    if not d.is_dir():
        pytest.skip(f"reference data ({d}) absent")
    return d


SynthFile = Callable[..., Path]


@pytest.fixture(scope="session")
def synth_file(tmp_path_factory) -> SynthFile:
    """``synth_file(type, events, seed, mH=None, mS=None) -> Path``: a synthetic ntuple, written once
    per argument set in the session (through the Python API). Skips the test without PyROOT."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the PyPI build of ROOT warns that it is an alpha on import
            import ROOT  # noqa: F401
    except ImportError:
        pytest.skip("PyROOT not installed (pip install 'crbatch[synth]')")
    from crbatch.synth import divert

    divert.load_root()
    base = tmp_path_factory.mktemp("synth")
    cache: dict[tuple, Path] = {}

    def make(data_type: str, events: int, seed: int, mH: float | None = None, mS: float | None = None) -> Path:
        key = (data_type, events, seed, mH, mS)
        if key not in cache:
            masses = f"_{mH:g}_{mS:g}" if mH is not None and mS is not None else ""
            out = base / f"{data_type}_{events}_{seed}{masses}.root"
            cache[key] = divert.write_divert(out, data_type, events, seed, mH=mH, mS=mS)
        return cache[key]

    return make
