"""``crbatch demo``: the main job on embedded default data.

Writes a small synthetic production (two signal mass points, QCD, BIB and collision data) with the
generator, then runs the pipeline stages on it with the same commands a batch job runs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .errors import CrbatchError, ExitCode

log = logging.getLogger(__name__)

# (file stem, type, events, seed, mH, mS): small enough for a laptop in well under a minute.
DEMO_SAMPLES = (
    ("sig_mH125_mS55", "sig", 4000, 1, 125.0, 55.0),
    ("sig_mH600_mS275", "sig", 4000, 2, 600.0, 275.0),
    ("qcd_jz", "qcd", 5000, 3, None, None),
    ("bib_data", "bib", 6000, 4, None, None),
    ("cr_data", "data", 5000, 5, None, None),
)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the pipeline on embedded synthetic inputs (a smoke test of the install)")
    p.add_argument("--output-dir", type=Path, default=Path("demo"), help="where everything is written (default: demo)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of generated events")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .cli import main as crbatch
    from .synth.divert import write_divert

    root = args.output_dir
    inputs = root / "inputs"
    entries = []
    for stem, typ, events, seed, mH, mS in DEMO_SAMPLES:
        out = inputs / f"{stem}.root"
        n = max(100, int(events * args.scale))
        if not out.exists():
            log.info("generating %s (%d events)", out, n)
            write_divert(out, typ, n, seed, mH=mH, mS=mS)
        masses = f", mH: {mH}, mS: {mS}" if mH is not None else ""
        entries.append(f"- {{path: '{out}', type: {typ}{masses}}}")
    listing = root / "inputs.yaml"
    listing.write_text("\n".join(entries) + "\n")
    rc = crbatch(["convert", "divert", str(listing), "--output-dir", str(root / "shards")])
    if rc:
        raise CrbatchError(f"demo: conversion failed (exit {rc})", ExitCode(rc))
    print(f"shards: {root / 'shards'}")
    return 0
