"""Command line of ``crbatch synth``: synthetic inputs for tests, benchmarks and the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from .divert import DATA_TYPES, DEFAULT_COMPRESSION


def register(sub) -> None:
    synth = sub.add_parser("synth", help="write synthetic DiVertAnalysis-like inputs (needs PyROOT)")
    ssub = synth.add_subparsers(dest="generator", metavar="FORMAT", required=True)
    d = ssub.add_parser(
        "divert",
        help="a synthetic DiVertAnalysis ntuple (tree trees_DV_) in the real branch schema",
        description="Write a synthetic DiVertAnalysis ntuple with real ROOT: every branch the converter reads, "
        "with the grid ntuples' names and C++ types, and physics that separates signal, QCD and BIB "
        "(collision data: QCD with a slight mis-modelling). Same arguments and seed → same content. "
        "Needs PyROOT: pip install 'crbatch[synth]'.",
    )
    d.add_argument("--type", required=True, choices=DATA_TYPES, help="sig: H→SS LLP signal MC; qcd: multijet MC; "
                   "bib: beam-induced background in data; data: multijet collision data")  # fmt: skip
    d.add_argument("--mH", type=float, help="signal: heavy scalar mass, GeV (required for sig)")
    d.add_argument("--mS", type=float, help="signal: LLP mass, GeV (required for sig)")
    d.add_argument("--dsid", type=int, help="mcChannelNumber (MC); for qcd a JZ slice 361020–361024 instead of a mix")
    d.add_argument("--events", type=int, default=10_000, help="number of events (default: %(default)s)")
    d.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; sets the eventNumber range too, seed·10⁹ + i (default: %(default)s)",
    )
    d.add_argument("--compression", type=int, default=DEFAULT_COMPRESSION,
                   help="ROOT compression: algorithm·100 + level (501 ZSTD-1, 404 LZ4, 101 zlib, 0 none; "
                   "default: %(default)s)")  # fmt: skip
    d.add_argument("--out", type=Path, required=True, metavar="FILE.root", help="output file (written atomically)")
    d.set_defaults(func=run_divert)


def run_divert(args: argparse.Namespace) -> int:
    from .divert import write_divert

    write_divert(args.out, args.type, args.events, args.seed, mH=args.mH, mS=args.mS, dsid=args.dsid,
                 compression=args.compression)  # fmt: skip
    return 0
