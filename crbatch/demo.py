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

import yaml

from .demo_data import DATASET_NAMES, DEMO_SAMPLES, demo_pipeline, make_datasets, run_command, write_inputs
from .errors import CrbatchError, ExitCode

log = logging.getLogger(__name__)

# The demo production lives below this command (crbatch.train.cli uses it too); its names stay importable here.
__all__ = ["DATASET_NAMES", "DEMO_SAMPLES", "demo_pipeline", "make_datasets", "register", "run", "write_inputs"]


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


def run(args: argparse.Namespace) -> int:
    from .batch import cli as batch_cli

    export_format = _export_format()

    root = args.output_dir.absolute()
    inputs = root / "inputs"
    write_inputs(inputs, args.scale)
    pipeline = root / "pipeline.yaml"
    doc = demo_pipeline(inputs, root / "storage", args.epochs)
    doc["analyze"]["export"]["format"] = export_format
    text = yaml.safe_dump(doc, sort_keys=False)
    pipeline.write_text("# written by `crbatch demo`; rerun with: crbatch submit " + str(pipeline) + "\n" + text)
    # In this process, under this command's logging (its -v/-q) and signal handling.
    argv = ["submit", str(pipeline), "--backend", "local"]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    try:
        rc = run_command(argv, batch_cli.register_submit)
    except CrbatchError as e:
        raise CrbatchError(f"demo: the pipeline failed: {e}; `crbatch status {pipeline}` shows why", e.code) from e
    if rc:
        raise CrbatchError(f"demo: the pipeline failed (exit {rc}); `crbatch status {pipeline}` shows why",
                           ExitCode(rc))  # fmt: skip
    return 0
