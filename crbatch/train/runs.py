"""Run directories: ``<output_dir>/<model_name>/<NNNNN>/`` (reference-training.md §5.1, §7, §8).

Numbering as the reference: a new run takes 1 + the largest numeric sub-directory (non-numeric
entries ignored), or ``00000``; a negative run number counts from the end of the sorted numeric
runs (−1 = the latest). Unlike the reference, a run number ≥ 0 that does not exist yet is created
(so a batch job can name its run and be resubmitted with the same command), and a new run is
claimed with an atomic ``mkdir`` (two jobs starting together get different numbers).

Contents of a run directory::

    config.yaml            resolved config of the run (rewritten when a resume changes a compatible field)
    training_details.txt   one block per start/resume: time, host, versions, backend, data, config changes
    checkpoint.h5          everything needed to continue exactly (crbatch.train.checkpoint), atomic, checksummed
    checkpoint.prev.h5     the checkpoint before it (the fallback); checkpoint.damaged.h5: one that failed its checksums
    .crbatch.lock          while a trainer works in the run: its host, pid, start (crbatch.locks; exit 16 for a second)
    history.json           per-epoch metrics, reference key names plus new ones (dict of equal-length lists)
    history.csv            the same, one row per epoch
    epochs/NNN.keras       the classifier after epoch NNN (0-based), loadable with compile=False
    plots/                 per-epoch validation figures (<eee>_*.png) and training-history figures
    parametrization.json   signal (mH, mS) distribution used for the mass parametrisation (when on)
    model_summary.txt      the two networks' layer tables and parameter counts
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, InputMissing
from ..schema import atomic_output

RUN_DIGITS = 5
CONFIG_NAME = "config.yaml"
DETAILS_NAME = "training_details.txt"


def numeric_runs(model_dir: Path) -> list[int]:
    """Sorted run numbers under ``model_dir`` (sub-directories whose name is all digits)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def run_path(model_dir: Path, number: int) -> Path:
    return model_dir / f"{number:0{RUN_DIGITS}d}"


def new_run(model_dir: Path) -> Path:
    """Create and return the next free run directory (atomic claim)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    while True:
        runs = numeric_runs(model_dir)
        path = run_path(model_dir, runs[-1] + 1 if runs else 0)
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another job claimed it between the listing and the mkdir
            continue


def find_run(model_dir: Path, run: int) -> Path:
    """Run ``run`` of a model: ≥ 0 that number (it may not exist yet); < 0 counted from the latest (must exist)."""
    if run >= 0:
        return run_path(model_dir, run)
    runs = numeric_runs(model_dir)
    if not runs:
        raise InputMissing(
            f"no runs in {model_dir}: cannot continue from run {run}; start one without --run/--continue"
        )
    if -run > len(runs):
        raise InputMissing(f"{model_dir} has {len(runs)} runs: cannot continue from run {run}")
    return run_path(model_dir, runs[run])


def claim(model_dir: Path, run_dir: Path | None) -> Path:
    """Create ``run_dir`` if needed, or a new numbered run when None; returns the directory."""
    if run_dir is None:
        return new_run(model_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def read_saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` as a dict, or None for a new run."""
    p = run_dir / CONFIG_NAME
    if not p.exists():
        return None
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e}); repair it or start a new run") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping; repair it or start a new run")
    return data


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_config(run_dir: Path, config_yaml: str) -> None:
    write_text(run_dir / CONFIG_NAME, config_yaml)


def append_details(run_dir: Path, title: str, lines: dict[str, Any], config_yaml: str | None = None) -> None:
    """Append one block to ``training_details.txt`` (never overwritten: every start and resume is kept)."""
    block = [f"=== {title} {time.strftime('%Y-%m-%d %H:%M:%S %z')} ==="]
    block += [f"{k}: {v}" for k, v in lines.items()]
    if config_yaml:
        block += ["config:", *("  " + ln for ln in config_yaml.rstrip().splitlines())]
    p = run_dir / DETAILS_NAME
    with open(p, "a") as fh:
        fh.write("\n".join(block) + "\n\n")
        fh.flush()
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())


def environment() -> dict[str, Any]:
    """Host and software versions for training_details.txt."""
    import keras
    import numpy as np

    from .. import __version__

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "crbatch": __version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "batch_job": os.environ.get("_CONDOR_JOB_AD") or os.environ.get("SLURM_JOB_ID") or "-",
    }


def dump_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")
