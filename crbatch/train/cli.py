"""Command line of ``crbatch train``.

``crbatch train`` starts a new run; ``--run N`` / ``--continue`` / ``--run-dir DIR`` work in an
existing run (resuming from its checkpoint) or, for ``--run N`` ≥ 0 and ``--run-dir``, create it.
A resumed run starts from its own ``config.yaml``; options given on the command line override it,
except the fields that define the network or the order of the data (exit 3), and it refuses
datasets rebuilt since its checkpoint (exit 3) unless ``--allow-new-data``. One process at a time
works in a run directory: a second one exits 16 (crbatch.locks).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import outputs, schema
from ..config import (
    add_config_arguments,
    check_overridden,
    deep_merge,
    flag_values,
    load_yaml,
    parse_set_items,
    validation_message,
)
from ..errors import ConfigError
from .config import TrainConfig

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="adversarial training of the CalRatio classifier, with epoch checkpoints and automatic resume",
        description="Train the CalRatio per-jet classifier against the data/MC adversary on `crbatch build` "
        "datasets (default: demo/datasets, made from the synthetic demo production when absent). Every epoch writes the classifier (epochs/NNN.keras), the history "
        "and a checkpoint into training_results/<model_name>/<NNNNN>/; a rerun on that run continues from the "
        "checkpoint. On SIGTERM it checkpoints and exits with checkpoint_exit_code (85). "
        "Exit codes: see `crbatch exit-codes`.",
    )
    g = p.add_argument_group("run").add_mutually_exclusive_group()
    g.add_argument("--run", type=int, metavar="N",
                   help="work in run N of the model (created if absent; negative: counted from the latest, -1 = latest)")  # fmt: skip
    g.add_argument("--continue", dest="continue_latest", action="store_true", help="continue the latest run")
    g.add_argument("--run-dir", type=Path, metavar="DIR", help="work in this run directory (created if absent)")
    p.add_argument("--allow-new-data", action="store_true",
                   help="resume although the datasets were rebuilt since the checkpoint (another build id); "
                        "recorded in training_details.txt")  # fmt: skip
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=run)


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the user gave: ``--config`` YAML < ``--set`` < per-field flags (nested dict)."""
    out: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    sets, flags = parse_set_items(getattr(args, "set", []) or []), flag_values(args)
    check_overridden(TrainConfig, [(str(getattr(args, "config", None)), out), ("--set", sets),
                                   ("the command-line flags", flags)])  # fmt: skip
    return deep_merge(deep_merge(out, sets), flags)


def _validate(data: dict[str, Any], source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, source)) from e


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, Path | None, dict[str, Any] | None]:
    """(config, run directory or None for a new run, the run's saved config or None)."""
    from . import runs

    explicit = explicit_overrides(args)
    cfg = _validate(explicit, str(args.config) if getattr(args, "config", None) else "the command line")
    model_dir = cfg.output_dir / cfg.model_name
    if args.run_dir is not None:
        run_dir: Path | None = args.run_dir
    elif args.continue_latest or args.run is not None:
        run_dir = runs.find_run(model_dir, -1 if args.continue_latest else args.run)
    else:
        run_dir = None
    saved = runs.read_saved_config(run_dir) if run_dir is not None else None
    if saved is not None:
        assert run_dir is not None  # saved comes from it
        cfg = _validate(deep_merge(saved, explicit), f"{run_dir / runs.CONFIG_NAME} + command line")
        bad = cfg.incompatible_with(saved)
        if bad:
            changes = ", ".join(f"{k}: {saved[k]!r} → {getattr(cfg, k)!r}" for k in bad)
            raise ConfigError(
                f"cannot resume {run_dir}: {changes} differ from the run's config.yaml "
                "(network or data order); start a new run instead"
            )
    return cfg, run_dir, saved


def _uses_demo_data(cfg: TrainConfig) -> bool:
    """Training on the default ``--data`` (demo/datasets), which ``crbatch train`` makes when absent."""
    default = TrainConfig.model_fields["data"].default
    return cfg.data == default and cfg.main_training_file is None and cfg.cr_training_file is None


def run(args: argparse.Namespace) -> int:
    from .. import locks
    from . import runs
    from .loop import TrainData

    cfg, run_dir, saved = resolve(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if _uses_demo_data(cfg) and not cfg.dataset_path("main", "train").exists():
        from ..demo_data import make_datasets

        log.warning("no datasets in %s: making the demo datasets (synthetic production → convert → build)", cfg.data)
        make_datasets(cfg.data.parent)
    # Check the inputs before creating anything: a bad --data leaves no empty run directory behind.
    TrainData.check_inputs(cfg)
    if run_dir is not None:  # a directory the user named: never someone else's, never holding the data
        data = [cfg.dataset_path(r, s) for r in ("main", "cr") for s in ("train", "val", "test")]
        outputs.check_output(run_dir, "run", data)
    run_dir = runs.claim(cfg.output_dir / cfg.model_name, run_dir)
    # Before anything is written (and before Keras is imported): a second trainer stops here, exit 16.
    with locks.hold(run_dir, "run directory"):
        return _run_locked(args, cfg, run_dir, saved)


def _run_locked(args: argparse.Namespace, cfg: TrainConfig, run_dir: Path, saved: dict[str, Any] | None) -> int:
    from . import runs
    from .loop import StopFlag, train

    for d in (run_dir, run_dir / "epochs", run_dir / "plots"):  # temporaries of a killed or crashed run
        schema.remove_stale_tmp(d)
    text = cfg.to_yaml()
    env = runs.environment()
    if saved is None:
        runs.write_config(run_dir, text)
        runs.append_details(run_dir, "start", {"run": str(run_dir), **env}, text)
    else:
        changed = {k: f"{saved.get(k)!r} → {v!r}" for k, v in cfg.model_dump(mode="json").items() if saved.get(k) != v}
        if changed:
            runs.write_config(run_dir, text)
        runs.append_details(
            run_dir, "resume", {"run": str(run_dir), **env, **{f"changed {k}": v for k, v in changed.items()}}
        )
    log.info("run directory %s", run_dir)
    with StopFlag() as stop:
        result = train(cfg, run_dir, stop=stop, allow_new_data=args.allow_new_data)
    if result.status == "checkpointed":
        runs.append_details(run_dir, "checkpointed", {"epochs done": result.epochs_done})
        return cfg.checkpoint_exit_code
    runs.append_details(run_dir, "complete", {"epochs done": result.epochs_done})
    print(f"run: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m crbatch.train.cli train ...``: the top-level ``crbatch`` command with ``train``
    registered, whether or not crbatch/cli.py registers it already (used by the tests' subprocesses)."""
    from .. import cli as top

    build = top.build_parser

    def with_train(only: str | None = None) -> argparse.ArgumentParser:
        p = build(only)
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if "train" not in sub.choices:
            register(sub)
        return p

    top.build_parser = with_train
    try:
        return top.main(argv)
    finally:
        top.build_parser = build


if __name__ == "__main__":
    import sys

    sys.exit(main())
