"""Command line of ``crbatch analyze`` (see crbatch/evaluate/analyze.py)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from .analyze import AnalyzeConfig

    p = sub.add_parser(
        "analyze",
        help="best epochs of training runs, test-split ROC / rejection / S/√B / efficiency maps, one report",
        description="For each run NAME/RUN (or NAME/RUN/EPOCH): the best epochs by the reference's criteria "
        "(validation loss, adversary loss, discriminator loss, K-S sum) and by a combined score "
        "(docs/analysis.md); the chosen epoch evaluated on the run's test split (ROC curves signal vs QCD and vs "
        "BIB, overall and per (mH, mS), background rejection at fixed signal efficiencies, S/√B scans, the "
        "signal efficiency map, output distributions, data vs MC on the control-region test split). Writes "
        "<output-dir>/<name>/report.md and index.html. Exit codes: see `crbatch exit-codes`.",
    )
    p.add_argument("specs", nargs="*", metavar="NAME/RUN[/EPOCH]",
                   help="training runs (RUN, EPOCH negative: counted from the latest, e.g. default/-1)")  # fmt: skip
    from ..config import add_config_arguments

    add_config_arguments(p, AnalyzeConfig, skip={"runs"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import resolve_config
    from .analyze import AnalyzeConfig, analyze

    cfg = resolve_config(AnalyzeConfig, args)
    if args.specs:
        cfg.runs = [*cfg.runs, *args.specs]
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    analyze(cfg)
    return 0
