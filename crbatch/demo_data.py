"""The demo production: its synthetic inputs, its pipeline and the datasets built from it.

Below the commands that use it: ``crbatch demo`` (crbatch.demo) runs the pipeline as batch jobs and
``crbatch train`` with no ``--data`` (crbatch.train.cli) trains on the datasets. This module runs the
convert and build stages through their own command lines (crbatch.convert.cli, crbatch.build.cli),
never through the top-level ``crbatch`` command, so imports point one way: commands → this → stages.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CrbatchError, ExitCode

log = logging.getLogger(__name__)

# (file stem, type, events, seed, mH, mS): small enough for a laptop in about a minute.
DEMO_SAMPLES = (
    ("sig_mH125_mS55", "sig", 4000, 1, 125.0, 55.0),
    ("sig_mH600_mS275", "sig", 4000, 2, 600.0, 275.0),
    ("qcd_jz", "qcd", 5000, 3, None, None),
    ("bib_data", "bib", 6000, 4, None, None),
    ("cr_data", "data", 5000, 5, None, None),
)
DATASET_NAMES = {"qcd_jz": "qcd", "bib_data": "bib", "cr_data": "data"}  # the signal files keep their stem


def demo_pipeline(inputs: Path, storage: Path, epochs: int = 2) -> dict[str, Any]:
    """The demo's pipeline (as YAML data); ``submit/example-pipeline.yaml`` is the same on ../demo."""
    datasets = []
    for stem, typ, _events, _seed, mH, mS in DEMO_SAMPLES:
        d: dict[str, Any] = {"name": DATASET_NAMES.get(stem, stem), "type": typ}
        if mH is not None:
            d.update(mH=mH, mS=mS)
        d["files"] = [str(inputs / f"{stem}.root")]
        datasets.append(d)
    return {
        "name": "demo",
        "storage": str(storage),
        "datasets": datasets,
        "convert": {"resources": {"cpus": 1, "memory": "2 GB", "runtime": "1h", "retries": 3, "throttle": 50}},
        "build": {"options": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}}},
        "train": {"run": 0, "options": {"epochs": epochs, "batch_size": 128, "eval_batch_size": 1024}},
        "analyze": {"export": {"format": "all", "check_jets": 32}},
    }


def write_inputs(inputs: Path, scale: float = 1.0) -> None:
    """The demo's synthetic DiVertAnalysis files (kept if already there)."""
    if importlib.util.find_spec("ROOT") is None:
        raise CrbatchError("the demo's synthetic inputs are written with PyROOT: pip install -e '.[synth]'",
                           ExitCode.CONFIG)  # fmt: skip
    from .synth.divert import write_divert

    for stem, typ, events, seed, mH, mS in DEMO_SAMPLES:
        out = inputs / f"{stem}.root"
        n = max(100, int(events * scale))
        if not out.exists():
            log.info("generating %s (%d events)", out, n)
            write_divert(out, typ, n, seed, mH=mH, mS=mS)


def run_command(argv: list[str], register: Callable[[Any], None]) -> int:
    """``crbatch ARGV`` in this process, for the command(s) ``register`` adds to a parser.

    Called from inside a ``crbatch`` command, whose top level has already set up logging and the
    signal handlers and turns an error raised here into its one line and exit code.
    """
    parser = argparse.ArgumentParser(prog="crbatch")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def make_datasets(root: Path) -> Path:
    """``root/datasets``: the demo production generated, converted and built here, in this process.

    What ``crbatch train`` with no arguments trains on: the same inputs and build split as
    ``crbatch demo`` (which runs them as batch jobs), as ``crbatch convert divert`` into ``root/shards``
    then ``crbatch build``. Every stage reuses its complete outputs.
    """
    from .build import cli as build_cli
    from .convert import cli as convert_cli

    inputs, shards, datasets = root / "inputs", root / "shards", root / "datasets"
    write_inputs(inputs)
    for stem, typ, _events, _seed, mH, mS in DEMO_SAMPLES:
        src = inputs / f"{stem}.root"
        argv = ["convert", "divert", str(src), "--type", typ, "--output-dir", str(shards)]
        if mH is not None:
            argv += ["--mH", str(mH), "--mS", str(mS)]
        try:
            rc = run_command(argv, convert_cli.register)
        except CrbatchError as e:
            raise CrbatchError(f"demo datasets: converting {src} failed: {e}", e.code) from e
        if rc:
            raise CrbatchError(f"demo datasets: converting {src} failed (exit {rc})", ExitCode(rc))
    split = demo_pipeline(inputs, root / "storage")["build"]["options"]["split"]
    argv = ["build", str(shards), "--output-dir", str(datasets)]
    argv += [f"--set=split.{k}={v}" for k, v in split.items()]
    try:
        rc = run_command(argv, build_cli.register)
    except CrbatchError as e:
        raise CrbatchError(f"demo datasets: building {datasets} failed: {e}", e.code) from e
    if rc:
        raise CrbatchError(f"demo datasets: building {datasets} failed (exit {rc})", ExitCode(rc))
    return datasets
