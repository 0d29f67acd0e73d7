"""Command line of ``crbatch score`` (see crbatch/evaluate/score.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import add_config_arguments, resolve_config
from ..errors import ConfigError, CrbatchError, ExitCode
from ..inputs import expand

log = logging.getLogger(__name__)

SUFFIXES = (".h5", ".hdf5")


def register(sub) -> None:
    from .score import ScoreConfig

    p = sub.add_parser(
        "score",
        help="apply a trained classifier (run epoch, .keras or .onnx) to shards or datasets; write the scores",
        description="Score every jet of HDF5 shards (raw: scaled on the fly with the model's training constants) "
        "or datasets (already scaled) with a training run's epoch (NAME/RUN/EPOCH), a .keras classifier or an "
        "exported .onnx model, streaming. Writes one file per input (kind 'scored': the jets' identifiers, "
        "kinematics and weights plus jet_nn_qcd, jet_nn_sig, jet_nn_bib), atomically; complete outputs for the "
        "same input and model are skipped. Exit codes: see `crbatch exit-codes`.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="shard or dataset files, directories (their *.h5) or wildcards (quote them)")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="FILE.h5", help="output file, for a single INPUT")
    add_config_arguments(p, ScoreConfig)
    p.set_defaults(func=run)


def _inputs(patterns: list[str]) -> tuple[list[Path], list[ExitCode]]:
    found: list[Path] = []
    failed: list[ExitCode] = []
    for pat in patterns:
        try:
            found += expand(pat, SUFFIXES, directories=True)
        except CrbatchError as e:
            log.error("%s", e)
            failed.append(e.code)
    return found, failed


def run(args: argparse.Namespace) -> int:
    from ..errors import worst
    from .score import ScoreConfig, load_scoring_model, score_files

    cfg = resolve_config(ScoreConfig, args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if not cfg.model:
        raise ConfigError("no model: give --model NAME/RUN/EPOCH, FILE.keras or FILE.onnx")
    if cfg.mass_hypothesis is not None and len(cfg.mass_hypothesis) != 2:
        raise ConfigError(f"--mass-hypothesis takes two numbers, mH and mS in GeV; got {cfg.mass_hypothesis}")
    inputs, failed = _inputs(args.inputs)
    if not inputs:
        return int(worst(failed))
    model = load_scoring_model(cfg.model, cfg.base, cfg.scaling_from)
    log.info("model %s (%s, hash %s…); scaling for raw shards: %s", model.spec, model.kind, model.model_hash[:12],
             model.scaling.origin)  # fmt: skip
    return int(worst([*failed, score_files(inputs, model, cfg, args.out)]))
