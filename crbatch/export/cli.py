"""Command line of ``crbatch export``.

``crbatch export NAME/RUN/EPOCH`` exports the classifier a run saved after an epoch
(``<base>/<NAME>/<RUN:05d>/epochs/<EPOCH:03d>.keras``; negative RUN or EPOCH count from the latest);
``--model FILE.keras`` any saved classifier; ``--from-reference FILE`` a reference-trained
``final_model_weights_<N>.keras`` (Keras-2 HDF5 weights, loaded by :mod:`.reference`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputCorrupt, InputMissing

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained classifier to frugally-deep JSON (DiVertAnalysis) and ONNX (Athena)",
        description="Export the CalRatio classifier of a training run (NAME/RUN/EPOCH), a saved .keras "
        "classifier (--model) or a reference-trained weights file (--from-reference) to frugally-deep JSON "
        "and/or ONNX, with the preprocessing (input order, features, padding, scaling constants, output "
        "order) in STEM.preprocessing.json and in the ONNX metadata. Both exports are checked against Keras "
        "before they are written. Exit codes: see `crbatch exit-codes`.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("spec", nargs="?", metavar="NAME/RUN/EPOCH",
                     help="a training run's epoch (negative RUN/EPOCH: counted from the latest, -1 = latest)")  # fmt: skip
    src.add_argument("--model", type=Path, metavar="FILE.keras", help="any saved crbatch classifier")
    src.add_argument("--from-reference", type=Path, metavar="FILE",
                     help="a reference-trained model: final_model_weights_<N>.keras (Keras-2 HDF5 weights) or a "
                     "Keras-2 model.save .keras archive")  # fmt: skip
    p.add_argument("--base", type=Path, default=Path("training_results"), metavar="DIR",
                   help="root of the run directories (default: training_results)")  # fmt: skip
    p.add_argument("--format", choices=["fdeep", "onnx", "all"], default="all", help="what to write (default: all)")
    p.add_argument("--output-dir", type=Path, default=Path("exports"), metavar="DIR", help="default: exports")
    p.add_argument("--stem", metavar="NAME",
                   help="output file stem (default: NAME_RUN_eEPOCH, the model file's stem, reference_<stem>)")  # fmt: skip
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="training config (a run's config.yaml) for --model/--from-reference: architecture and "
                   "parametrisation (default: the reference defaults)")  # fmt: skip
    p.add_argument("--scaling-from", type=Path, metavar="DATASET.h5",
                   help="take the scaling constants from this crbatch dataset (default: the run's training dataset)")  # fmt: skip
    p.add_argument("--check-data", type=Path, metavar="FILE.h5",
                   help="also check the exports on (up to 256) real jets of this dataset or shard")  # fmt: skip
    p.add_argument(
        "--check-jets", type=int, default=256, metavar="N", help="synthetic jets of the check (default: 256)"
    )
    p.set_defaults(func=run)


def parse_spec(spec: str) -> tuple[str, int, int]:
    parts = spec.split("/")
    try:
        if len(parts) != 3 or not parts[0]:
            raise ValueError
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        raise ConfigError(f"{spec!r}: expected NAME/RUN/EPOCH, e.g. default/0/9 or default/-1/-1") from None


def epoch_file(run_dir: Path, epoch: int) -> Path:
    """``epochs/<EPOCH:03d>.keras`` of a run (crbatch.train.loop); negative: counted from the latest."""
    d = run_dir / "epochs"
    saved = sorted(int(p.stem) for p in d.glob("*.keras") if p.stem.isdigit()) if d.is_dir() else []
    if epoch < 0:
        if -epoch > len(saved):
            raise InputMissing(f"{d}: {len(saved)} saved epochs, cannot take epoch {epoch}")
        epoch = saved[epoch]
    path = d / f"{epoch:03d}.keras"
    if not path.exists():
        have = f"saved epochs: {saved[0]}…{saved[-1]}" if saved else "no saved epoch"
        raise InputMissing(f"{path}: epoch {epoch} not saved ({have})")
    return path


def load_keras(path: Path) -> Any:
    import keras

    if not path.exists():
        raise InputMissing(f"{path}: model file not found")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # zipfile, h5py, JSON and Keras deserialisation errors alike
        from .reference import keras2_archive_version, one_line

        # Keras' message can hold the whole model config (tens of kB): one line, capped.
        v = keras2_archive_version(path)
        hint = f"; a Keras {v} model.save archive (the reference's): give it with --from-reference" if v else ""
        raise InputCorrupt(
            one_line(f"{path}: cannot load a Keras model from it{hint} ({type(e).__name__}: {e})")
        ) from e


def _train_config(path: Path | None) -> Any:
    from ..config import build_config
    from ..train.config import TrainConfig

    return build_config(TrainConfig, path)


def _run_config(run_dir: Path) -> Any | None:
    from pydantic import ValidationError

    from ..train import runs
    from ..train.config import TrainConfig

    try:
        saved = runs.read_saved_config(run_dir)
        return None if saved is None else TrainConfig.model_validate(saved)
    except (ConfigError, ValidationError) as e:
        log.warning("%s: run config unusable (%s); parametrisation names and scaling are guessed", run_dir, e)
        return None


def resolve(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any], Any, Any]:
    """(model, default stem, source description, train config or None, scaling)."""
    from . import sidecar

    if args.from_reference is not None:
        from .reference import load_reference, reference_train_config

        given = _train_config(args.config) if args.config else None
        model, mapping = load_reference(args.from_reference, given)  # an archive brings its own architecture
        cfg = reference_train_config(args.from_reference, given)
        src = {"kind": "reference", "path": str(args.from_reference), "layer_mapping": mapping}
        return model, f"reference_{args.from_reference.stem}", src, cfg, sidecar.reference_scaling()
    if args.model is not None:
        cfg = _train_config(args.config) if args.config else None
        model = load_keras(args.model)
        return model, args.model.stem, {"kind": "model", "path": str(args.model)}, cfg, None
    from ..train import runs

    name, run, epoch = parse_spec(args.spec)
    model_dir = args.base / name
    run_dir = runs.find_run(model_dir, run)
    if not run_dir.is_dir():
        raise InputMissing(f"{run_dir}: no such run (runs of {model_dir}: {runs.numeric_runs(model_dir) or 'none'})")
    path = epoch_file(run_dir, epoch)
    cfg = _run_config(run_dir)
    model = load_keras(path)
    src = {"kind": "run", "name": name, "run": int(run_dir.name), "epoch": int(path.stem), "run_dir": str(run_dir),
           "path": str(path)}  # fmt: skip
    return model, f"{name}_{run_dir.name}_e{path.stem}", src, cfg, None


def _scaling(args: argparse.Namespace, cfg: Any, given: Any) -> Any:
    from . import sidecar

    if args.scaling_from is not None:
        if not args.scaling_from.exists():
            raise InputMissing(f"{args.scaling_from}: --scaling-from dataset not found")
        found = sidecar.scaling_from_dataset(args.scaling_from)
        if found is None:
            raise InputCorrupt(f"{args.scaling_from}: no readable scaling constants in its attributes")
        return found
    if given is not None:
        return given
    if cfg is None:
        return sidecar.default_scaling("no training config to find the training dataset; use --scaling-from")
    path = cfg.dataset_path("main", "train")
    found = sidecar.scaling_from_dataset(path) if path.exists() else None
    return found or sidecar.default_scaling(f"training dataset {path} unreadable; use --scaling-from")


def run(args: argparse.Namespace) -> int:
    from . import FORMATS, data_inputs, export_classifier

    if args.check_jets < 1:
        raise ConfigError("--check-jets must be ≥ 1")
    if args.config is not None and args.spec:
        raise ConfigError("--config is for --model/--from-reference; a run uses its own config.yaml")
    formats = FORMATS if args.format == "all" else (args.format,)
    model, stem, source, cfg, scaling = resolve(args)
    scaling = _scaling(args, cfg, scaling)
    if scaling.origin.startswith("crbatch.scaling defaults"):
        log.warning("scaling constants: %s", scaling.origin)
    check = data_inputs(model, args.check_data, 256) if args.check_data else None
    flags = (cfg.mH_parametrization, cfg.mS_parametrization) if cfg is not None else None
    scale = "as the reference's training data held them" if source["kind"] == "reference" else "GeV / 1000 (TeV)"
    res = export_classifier(
        model, args.output_dir, args.stem or stem, formats, source=source, scaling=scaling, mass_flags=flags,
        mass_scale=scale, check_inputs=check, n_synthetic=args.check_jets,
    )  # fmt: skip
    log.debug("parity: %s", res.parity)
    return 0
