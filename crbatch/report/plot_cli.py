"""Command line of ``crbatch plot`` (the reference's ``cr_trainer plot``)."""

from __future__ import annotations

import argparse
import logging

from ..config import add_config_arguments, resolve_config

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="compare datasets or shard sets in a report (per-class and data-vs-MC plots)",
        description="Histogram every network input variable of one or more inputs per class, and data vs QCD MC "
        "with ratio panels and K-S statistics where an input holds control-region jets; writes "
        "OUTPUT_DIR/NAME/report.md and index.html with the PNGs. Exit codes: see `crbatch exit-codes`.",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="[NAME=]INPUT",
        help="HDF5 file (shard, dataset, scored file), directory of them, or quoted wildcard; "
        "NAME is the legend name (default file_<i>)",
    )  # fmt: skip
    from .plot import PlotConfig

    add_config_arguments(p, PlotConfig, skip={"inputs", "variables"})
    # Comma-separated and repeatable rather than nargs="+", which would swallow the INPUTs after it.
    p.add_argument(
        "--variables", action="append", metavar="PATTERNS",
        help="variables to plot, comma-separated patterns, repeatable: jet.pt, clusters.pt.0 (slot 0), "
        "tracks.*.all (all valid slots), msegs (whole table), jet.* (default: all)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .plot import PlotConfig, run_report

    extra = None
    if args.variables:
        extra = {"variables": [v.strip() for arg in args.variables for v in arg.split(",") if v.strip()]}
    cfg = resolve_config(PlotConfig, args, extra=extra)
    cfg.inputs = [*cfg.inputs, *args.inputs]
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    out = run_report(cfg)
    log.info("report: %s (open %s in a browser)", out / "report.md", out / "index.html")
    return 0
