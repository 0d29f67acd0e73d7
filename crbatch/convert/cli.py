"""Command line of ``crbatch convert``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import add_config_arguments, load_input_list, resolve_config, validation_message
from ..errors import ConfigError, CrbatchError, ExitCode
from ..inputs import expand, is_yaml_list
from . import runner, xaod
from .config import ConvertDivertConfig, ConvertLegacyConfig, InputEntry

log = logging.getLogger(__name__)


def register(sub) -> None:
    conv = sub.add_parser("convert", help="convert inputs to HDF5 shards (one job per file)")
    csub = conv.add_subparsers(dest="converter", metavar="FORMAT", required=True)

    d = csub.add_parser(
        "divert",
        help="DiVertAnalysis ntuples (tree trees_DV_) → HDF5 shards",
        description="Convert DiVertAnalysis ROOT ntuples into one HDF5 shard per file. "
        "Exit codes: see `crbatch exit-codes`.",
    )
    d.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="ROOT files or wildcards (quote them), or a YAML list of {path, type, mH, mS}")  # fmt: skip
    d.add_argument("--type", choices=["sig", "qcd", "bib", "data"], help="type of the INPUT files")
    d.add_argument("--mH", type=float, help="signal: heavy scalar mass, GeV (required for --type sig)")
    d.add_argument("--mS", type=float, help="signal: LLP mass, GeV (required for --type sig)")
    d.add_argument("--dsid", type=int, help="dataset id (default: mcChannelNumber of the file)")
    d.add_argument("--out", type=Path, metavar="FILE.h5", help="output file, for a single INPUT")
    add_config_arguments(d, ConvertDivertConfig, skip={"inputs"})
    d.set_defaults(func=run_divert)

    lp = csub.add_parser(
        "legacy-pkl",
        help="reference pre-training pickles → HDF5 shards",
        description="Convert the reference's pandas pre-training/training pickles into shards of the same layout.",
    )
    lp.add_argument("inputs", nargs="+", metavar="INPUT", help="pickle files or wildcards")
    lp.add_argument("--out", type=Path, metavar="FILE.h5", help="output file, for a single INPUT")
    add_config_arguments(lp, ConvertLegacyConfig)
    lp.set_defaults(func=run_legacy)

    xaod.register(csub)


def _entries_from_yaml(path: Path) -> list[InputEntry]:
    return load_input_list(path, InputEntry)


def _entries(args: argparse.Namespace, cfg: ConvertDivertConfig) -> list[InputEntry]:
    entries = list(cfg.inputs)
    for arg in args.inputs:
        if is_yaml_list(arg):
            entries += _entries_from_yaml(Path(arg))
            continue
        if args.type is None:
            raise ConfigError(f"{arg}: give its type with --type sig|qcd|bib|data (or use a YAML input list)")
        try:
            entries.append(InputEntry(path=arg, type=args.type, mH=args.mH, mS=args.mS, dsid=args.dsid))
        except ValidationError as e:
            raise ConfigError(validation_message(e, "the command line").replace("Value error, ", "")) from e
    if not entries:
        raise CrbatchError("no inputs: give ROOT files, wildcards or a YAML input list", ExitCode.USAGE)
    return entries


def _expand_all(patterns: list[tuple[Any, str]], suffixes: tuple[str, ...]):
    """(entry, path) for every match, and the outcomes of patterns that matched nothing."""
    from ..storage import RemotePath, is_url

    found: list[tuple[Any, Path | RemotePath]] = []
    failed = []
    for entry, pat in patterns:
        if is_url(pat):  # read in place over XRootD (no wildcards: a rucio DID lists the files)
            found.append((entry, RemotePath(pat)))
            continue
        try:
            found += [(entry, p) for p in expand(pat, suffixes)]
        except CrbatchError as e:
            log.error("%s", e)
            failed.append(runner.Outcome(runner.Job(Path(pat), Path()), "failed", 0, str(e), e.code))
    return found, failed


def run_divert(args: argparse.Namespace) -> int:
    from .divert import convert_divert_file

    cfg = resolve_config(ConvertDivertConfig, args)
    entries = _entries(args, cfg)
    if args.print_config:
        cfg.inputs = entries
        print(cfg.to_yaml(), end="")
        return 0
    sources, failed = _expand_all([(e, e.path) for e in entries], ())
    jobs = runner.plan(sources, cfg.output_dir, args.out)
    outcomes = runner.run(
        jobs, lambda job, tmp: with_retries(cfg, str(job.src), lambda: convert_divert_file(job.entry, job.src, tmp, cfg)),
        cfg.force,
    )  # fmt: skip
    return int(runner.summarize(failed + outcomes))


def with_retries(cfg: ConvertDivertConfig, src: str, convert):
    """Run ``convert``; a remote input whose read failed on the network is converted again from the
    start, ``cfg.retries`` times (the pause doubling from ``cfg.retry_wait``), then fails with exit 20."""
    import time

    from ..storage import is_url

    wait = cfg.retry_wait
    for attempt in range(cfg.retries + 1):
        try:
            return convert()
        except CrbatchError as e:
            if e.code != ExitCode.TRANSIENT or not is_url(src) or attempt == cfg.retries:
                raise
            log.warning("%s (attempt %d/%d); converting again in %.0f s", e, attempt + 1, cfg.retries + 1, wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def run_legacy(args: argparse.Namespace) -> int:
    from .legacy_pkl import convert_legacy_file

    cfg = resolve_config(ConvertLegacyConfig, args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    sources, failed = _expand_all([(None, p) for p in args.inputs], (".pkl", ".pickle"))
    jobs = runner.plan(sources, cfg.output_dir, args.out)
    outcomes = runner.run(jobs, lambda job, tmp: convert_legacy_file(job.src, tmp, cfg), cfg.force)
    return int(runner.summarize(failed + outcomes))
