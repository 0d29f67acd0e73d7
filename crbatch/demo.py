"""``crbatch demo``: the whole pipeline on embedded default data, through the local batch backend.

Writes a small synthetic production (two signal mass points, QCD, BIB and collision data) with the
generator, writes the pipeline YAML for it (the same pipeline as ``submit/example-pipeline.yaml``)
and runs it with ``crbatch submit --backend local``: one convert job per file, build, train (a few
epochs), analyze + export — the same ``jobs/*.sh`` a grid or cluster runs. It ends by printing the
path of the report. A few minutes on 2 cores; a second run reuses everything that is complete.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import yaml

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


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on embedded synthetic inputs, through the local batch backend",
        description="Generate a small synthetic DiVertAnalysis production, then run convert (one job per file), "
        "build, train, analyze and export on it with `crbatch submit --backend local`; prints the report path.",
    )
    p.add_argument("--output-dir", type=Path, default=Path("demo"), help="where everything is written (default: demo)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of generated events")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (default: 2)")
    p.add_argument("--workers", type=int, default=0, help="jobs at once (default: the CPU count)")
    p.set_defaults(func=run)


def _export_format() -> str:
    """Train and frugally-deep export need Keras; the ONNX export also needs tf2onnx and onnx."""
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        raise CrbatchError("demo: the pipeline trains a network and needs Keras: pip install -e '.[synth,train,export]'",
                           ExitCode.CONFIG)  # fmt: skip
    if any(importlib.util.find_spec(m) is None for m in ("tf2onnx", "onnx")):
        log.warning("tf2onnx/onnx not installed: exporting frugally-deep JSON only (pip install -e '.[export]')")
        return "fdeep"
    return "all"


def write_inputs(inputs: Path, scale: float = 1.0) -> None:
    """The demo's synthetic DiVertAnalysis files (kept if already there)."""
    import importlib.util

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


def make_datasets(root: Path) -> Path:
    """``root/datasets``: the demo production generated, converted and built here, in this process.

    What ``crbatch train`` with no arguments trains on: the same inputs and build split as
    ``crbatch demo`` (which runs them as batch jobs), as ``crbatch convert divert`` into ``root/shards``
    then ``crbatch build``. Every stage reuses its complete outputs.
    """
    from .cli import main as crbatch

    inputs, shards, datasets = root / "inputs", root / "shards", root / "datasets"
    write_inputs(inputs)
    for stem, typ, _events, _seed, mH, mS in DEMO_SAMPLES:
        argv = ["convert", "divert", str(inputs / f"{stem}.root"), "--type", typ, "--output-dir", str(shards)]
        if mH is not None:
            argv += ["--mH", str(mH), "--mS", str(mS)]
        rc = crbatch(argv)
        if rc:
            raise CrbatchError(f"demo datasets: converting {inputs / stem}.root failed (exit {rc})", ExitCode(rc))
    split = demo_pipeline(inputs, root / "storage")["build"]["options"]["split"]
    argv = ["build", str(shards), "--output-dir", str(datasets)]
    argv += [f"--set=split.{k}={v}" for k, v in split.items()]
    rc = crbatch(argv)
    if rc:
        raise CrbatchError(f"demo datasets: building {datasets} failed (exit {rc})", ExitCode(rc))
    return datasets


def run(args: argparse.Namespace) -> int:
    from .cli import main as crbatch

    export_format = _export_format()

    root = args.output_dir.absolute()
    inputs = root / "inputs"
    write_inputs(inputs, args.scale)
    pipeline = root / "pipeline.yaml"
    doc = demo_pipeline(inputs, root / "storage", args.epochs)
    doc["analyze"]["export"]["format"] = export_format
    text = yaml.safe_dump(doc, sort_keys=False)
    pipeline.write_text("# written by `crbatch demo`; rerun with: crbatch submit " + str(pipeline) + "\n" + text)
    verbosity = ["-v"] * getattr(args, "verbose", 0) + ["-q"] * getattr(args, "quiet", 0)
    argv = [*verbosity, "submit", str(pipeline), "--backend", "local"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    rc = crbatch(argv)
    if rc:
        raise CrbatchError(f"demo: the pipeline failed (exit {rc}); `crbatch status {pipeline}` shows why",
                           ExitCode(rc))  # fmt: skip
    return 0
