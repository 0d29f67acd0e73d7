"""Command line of ``crbatch analyze`` (see crbatch/evaluate/analyze.py)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from .analyze import AnalyzeConfig

    p = sub.add_parser(
        "analyze",
        help="best epochs of training runs, test-split performance against baselines, one report, the export",
        description="For each run NAME/RUN (or NAME/RUN/EPOCH): the best epochs by the reference's criteria "
        "(validation loss, adversary loss, discriminator loss, K-S sum) and by a combined score "
        "(docs/analysis.md); the chosen epoch and every --baseline evaluated on the same test jets, each with its "
        "own preprocessing (ROC curves signal vs QCD and vs BIB, overall and per (mH, mS), the rejection table with "
        "uncertainties and cuts, signal efficiency vs LLP decay position, jet pT and eta at each working point, QCD "
        "and BIB rejection vs pT and eta, S/√B scans, the efficiency map, output distributions, the overtraining "
        "check, data vs MC on the control-region test split). Writes <output-dir>/<name>/metrics.json, report.md "
        "and index.html, records the choice in <run>/choice.json and, with --export-dir, exports the chosen epoch. "
        "Exit codes: see `crbatch exit-codes`.",
    )
    p.add_argument("specs", nargs="*", metavar="NAME/RUN[/EPOCH]",
                   help="training runs (RUN, EPOCH negative: counted from the latest, e.g. default/-1)")  # fmt: skip
    from ..config import add_config_arguments

    p.add_argument("--baseline", action="append", default=[], metavar="[LABEL=]SPEC",
                   help="compare with this model on the same test jets (repeatable): NAME/RUN[/EPOCH], FILE.keras, "
                   "FILE.onnx, reference:FILE (a reference-trained model), or a scored FILE.h5; the first one is the "
                   "ratio panels' denominator")  # fmt: skip
    add_config_arguments(p, AnalyzeConfig, skip={"runs", "baselines"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import resolve_config
    from .analyze import AnalyzeConfig, analyze

    cfg = resolve_config(AnalyzeConfig, args)
    if args.specs:
        cfg.runs = [*cfg.runs, *args.specs]
    if args.baseline:
        cfg.baselines = [*cfg.baselines, *args.baseline]
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    analyze(cfg)
    return 0
