"""Command line of ``crbatch build``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pydantic import ValidationError

from ..config import add_config_arguments, load_input_list, resolve_config, validation_message
from ..errors import ConfigError, CrbatchError, ExitCode, InputMissing
from ..inputs import expand, is_yaml_list
from .config import BuildConfig, BuildInput

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".h5", ".hdf5")


def register(sub) -> None:
    b = sub.add_parser(
        "build",
        help="shards → training datasets (main: QCD/signal/BIB; control region: MC/data), train/val/test",
        description="Merge HDF5 shards into shuffled, scaled training datasets: DIR/main_{train,val,test}.h5 "
        "and, when data shards are given, DIR/cr_{train,val,test}.h5, plus DIR/summary.json. "
        "QCD shards feed both datasets unless --qcd-use or a YAML entry's `use` says otherwise. "
        "Exit codes: see `crbatch exit-codes`.",
    )
    b.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="shard files, directories (their *.h5), wildcards (quote them), or a YAML list of "
                        "{path, use, max_jets, fraction, event_filter, dsid}")  # fmt: skip
    b.add_argument("--reference-exact", action="store_true", default=None,
                   help="scale exactly as the reference's build (its bugs included), for comparisons")  # fmt: skip
    add_config_arguments(b, BuildConfig, skip={"inputs"})
    b.set_defaults(func=run_build)


def _entries_from_yaml(path: Path) -> list[BuildInput]:
    return load_input_list(path, BuildInput, bare="path")


def collect_inputs(args_inputs: list[str], cfg: BuildConfig) -> list[tuple[BuildInput | None, Path]]:
    """Every shard named on the command line or in ``cfg.inputs``, with its entry's options."""
    entries: list[BuildInput] = list(cfg.inputs)
    plain: list[str] = []
    for arg in args_inputs:
        if is_yaml_list(arg):
            entries += _entries_from_yaml(Path(arg))
        else:
            plain.append(arg)
    out: list[tuple[BuildInput | None, Path]] = []
    for entry in entries:
        out += [(entry, p) for p in _expand(entry.path)]
    for arg in plain:
        out += [(None, p) for p in _expand(arg)]
    if not out:
        raise CrbatchError("no inputs: give shard files, directories, wildcards or a YAML input list", ExitCode.USAGE)
    return out


def _expand(pattern: str) -> list[Path]:
    """Shards named by ``pattern``; a directory is searched recursively (``<storage>/shards/`` of the
    pipeline holds one folder per dataset)."""
    found = expand(pattern, SHARD_SUFFIXES, directories=True, recursive=True)
    if not found:
        raise InputMissing(f"{pattern}: no *.h5 shard in this directory or below it; check the path")
    return found


def run_build(args: argparse.Namespace) -> int:
    extra = {"scaling": {"reference_exact": True}} if args.reference_exact else None
    cfg = resolve_config(BuildConfig, args, extra)
    if args.print_config:
        if args.inputs:
            try:
                cfg.inputs = [*cfg.inputs, *(e for a in args.inputs if is_yaml_list(a) for e in _entries_from_yaml(Path(a))),
                              *(BuildInput(path=a) for a in args.inputs if not is_yaml_list(a))]  # fmt: skip
            except ValidationError as e:
                raise ConfigError(validation_message(e, "the command line")) from e
        print(cfg.to_yaml(), end="")
        return 0
    inputs = collect_inputs(args.inputs, cfg)
    from .runner import build

    build(cfg, inputs)
    return 0
