"""Command line of ``crbatch export``.

``crbatch export NAME/RUN/EPOCH`` exports the classifier a run saved after an epoch
(``<base>/<NAME>/<RUN:05d>/epochs/<EPOCH:03d>.keras``; negative RUN or EPOCH count from the latest);
``NAME/RUN/best`` the epoch ``crbatch analyze`` chose (``<run>/choice.json``; refused when stale);
``--model FILE.keras`` any saved classifier; ``--from-reference FILE`` a reference-trained
``final_model_weights_<N>.keras`` (Keras-2 HDF5 weights, loaded by :mod:`.reference`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Literal, overload

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
    src.add_argument("spec", nargs="?", metavar="NAME/RUN/EPOCH|NAME/RUN/best",
                     help="a training run's epoch (negative RUN/EPOCH: counted from the latest, -1 = latest); "
                     "'best': the epoch crbatch analyze chose")  # fmt: skip
    src.add_argument("--model", type=Path, metavar="FILE.keras", help="any saved crbatch classifier")
    src.add_argument("--from-reference", type=Path, metavar="FILE",
                     help="a reference-trained model: final_model_weights_<N>.keras (Keras-2 HDF5 weights) or a "
                     "Keras-2 model.save .keras archive")  # fmt: skip
    p.add_argument("--base", type=Path, default=Path("training_results"), metavar="DIR",
                   help="root of the run directories (default: training_results)")  # fmt: skip
    p.add_argument("--format", choices=["fdeep", "onnx", "onnx-raw", "all"], default="all",
                   help="what to write (default: all = fdeep, onnx and — when real raw jets are there to check it on — "
                   "onnx-raw, the ONNX with the preprocessing inside)")  # fmt: skip
    p.add_argument("--allow-stale", action="store_true",
                   help="with NAME/RUN/best: export the analysis' choice even if the run changed since")  # fmt: skip
    p.add_argument("--onnx-prefix", default=None, metavar="NAME",
                   help="output names of the raw-input ONNX: NAME_pqcd, NAME_psig, NAME_pbib (default: calratio)")  # fmt: skip
    p.add_argument("--output-dir", type=Path, default=Path("exports"), metavar="DIR", help="default: exports")
    p.add_argument("--stem", metavar="NAME",
                   help="output file stem (default: NAME_RUN_eEPOCH, the model file's stem, reference_<stem>)")  # fmt: skip
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="training config (a run's config.yaml) for --model/--from-reference: architecture and "
                   "parametrisation (default: the reference defaults)")  # fmt: skip
    p.add_argument("--scaling-from", type=Path, metavar="DATASET.h5",
                   help="take the scaling constants from this crbatch dataset (default: the run's training dataset)")  # fmt: skip
    p.add_argument("--check-data", type=Path, metavar="FILE.h5",
                   help="also check the exports on (up to 256) real jets of this dataset or shard (default for a "
                   "run: its test split)")  # fmt: skip
    p.add_argument(
        "--check-jets", type=int, default=256, metavar="N", help="synthetic jets of the check (default: 256)"
    )
    p.set_defaults(func=run)


BEST = "best"


@overload
def parse_spec(spec: str, allow_best: Literal[False] = False) -> tuple[str, int, int]: ...
@overload
def parse_spec(spec: str, allow_best: bool) -> tuple[str, int, int | str]: ...
def parse_spec(spec: str, allow_best: bool = False) -> tuple[str, int, int | str]:
    parts = spec.split("/")
    try:
        if len(parts) != 3 or not parts[0]:
            raise ValueError
        if allow_best and parts[2] == BEST:
            return parts[0], int(parts[1]), BEST
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        more = " or NAME/RUN/best" if allow_best else ""
        raise ConfigError(f"{spec!r}: expected NAME/RUN/EPOCH{more}, e.g. default/0/9 or default/-1/-1") from None


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
    """(model, default stem, source description, train config or None, scaling) of --model/--from-reference."""
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
    raise ConfigError("a run spec is exported by export_epoch")


def run_epoch(spec: str, base: Path, *, allow_stale: bool = False) -> tuple[Path, Path, dict[str, Any] | None]:
    """(run directory, epoch file, choice or None) of ``NAME/RUN/EPOCH`` or ``NAME/RUN/best``."""
    from ..errors import InputSchema
    from ..evaluate import analyze_choice
    from ..train import runs

    name, run, epoch = parse_spec(spec, allow_best=True)
    model_dir = base / name
    run_dir = runs.find_run(model_dir, run)
    if not run_dir.is_dir():
        raise InputMissing(f"{run_dir}: no such run (runs of {model_dir}: {runs.numeric_runs(model_dir) or 'none'})")
    if epoch != BEST:
        return run_dir, epoch_file(run_dir, int(epoch)), None
    choice = analyze_choice.read_choice(run_dir)
    stale = analyze_choice.staleness(run_dir, choice)
    if stale:
        msg = (f"{run_dir / analyze_choice.FILENAME}: the analysis' choice (epoch {choice.epoch}) is stale: "
               f"{'; '.join(stale)}. Rerun `crbatch analyze {name}/{run}` or pass --allow-stale")  # fmt: skip
        if not allow_stale:
            raise InputSchema(msg)
        log.warning("%s (exporting it anyway: --allow-stale)", msg)
    doc = choice.as_dict()
    doc["stale"] = stale
    return run_dir, epoch_file(run_dir, choice.epoch), doc


def _scaling_of(scaling_from: Path | None, cfg: Any, given: Any) -> Any:
    from . import sidecar

    if scaling_from is not None:
        if not scaling_from.exists():
            raise InputMissing(f"{scaling_from}: --scaling-from dataset not found")
        found = sidecar.scaling_from_dataset(scaling_from)
        if found is None:
            raise InputCorrupt(f"{scaling_from}: no readable scaling constants in its attributes")
        return found
    if given is not None:
        return given
    if cfg is None:
        return sidecar.default_scaling("no training config to find the training dataset; use --scaling-from")
    path = cfg.dataset_path("main", "train")
    found = sidecar.scaling_from_dataset(path) if path.exists() else None
    return found or sidecar.default_scaling(f"training dataset {path} unreadable; use --scaling-from")


def formats_for(arg: str, have_raw: bool) -> tuple[str, ...]:
    """``--format`` → the formats; ``all`` leaves the raw-input ONNX out (with a warning) when no real
    raw jets are there to check it on."""
    from . import FORMATS

    if arg != "all":
        return (arg,)
    if not have_raw:
        log.warning("the raw-input ONNX (onnx-raw) is not written: no real raw jets to check it on "
                    "(give --check-data with a shard, or a dataset whose source shards are readable)")  # fmt: skip
        return tuple(f for f in FORMATS if f != "onnx-raw")
    return FORMATS


def provenance(cfg: Any, run_config: dict[str, Any] | None, choice: dict[str, Any] | None,
               source: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Training config, dataset and choice of an export (each None when unknown)."""
    from . import sidecar

    dataset = None
    if cfg is not None:
        path = cfg.dataset_path("main", "train")
        dataset = sidecar.dataset_record(path) if path.exists() else {"path": str(path), "build_id": None,
                                                                         "identity": None, "note": "not found"}  # fmt: skip
    training = run_config if run_config is not None else (cfg.model_dump(mode="json") if cfg is not None else None)
    if choice is None and source.get("kind") == "run":
        choice = {"epoch": source.get("epoch"), "why": "given on the command line (NAME/RUN/EPOCH)", "criterion": None}
    return {"training_config": training, "dataset": dataset, "choice": choice}


def check_jets_of(path: Path | None, model: Any, n: int = 256) -> tuple[Any, Any]:
    """(scaled real jets for the parity check, raw real jets) of a dataset or shard; (None, None) without one."""
    from . import data_inputs, rawjets

    if path is None:
        return None, None
    return data_inputs(model, path, n), rawjets.from_file(path, n)


def export_epoch(
    run_dir: Path,
    epoch_path: Path,
    *,
    out_dir: Path,
    fmt: str = "all",
    stem: str | None = None,
    check_data: Path | None = None,
    check_jets: int = 256,
    choice: dict[str, Any] | None = None,
    scaling_from: Path | None = None,
    onnx_prefix: str | None = None,
) -> Any:
    """Export one saved epoch of a run (the path of ``crbatch export NAME/RUN/EPOCH|best`` and of
    ``crbatch analyze --export-dir``); checked on the run's test jets unless ``check_data``."""
    from ..train import runs
    from . import export_classifier

    name = run_dir.parent.name
    cfg = _run_config(run_dir)
    model = load_keras(epoch_path)
    source = {"kind": "run", "name": name, "run": int(run_dir.name), "epoch": int(epoch_path.stem),
              "run_dir": str(run_dir), "path": str(epoch_path)}  # fmt: skip
    scaling = _scaling_of(scaling_from, cfg, None)
    if scaling.origin.startswith("crbatch.scaling defaults"):
        log.warning("scaling constants: %s", scaling.origin)
    if check_data is None and cfg is not None and cfg.dataset_path("main", "test").exists():
        check_data = cfg.dataset_path("main", "test")  # the run's own test jets
    check, raw = check_jets_of(check_data, model)
    formats = formats_for(fmt, raw is not None and len(raw) > 0)
    flags = (cfg.mH_parametrization, cfg.mS_parametrization) if cfg is not None else None
    return export_classifier(
        model, out_dir, stem or f"{name}_{run_dir.name}_e{epoch_path.stem}", formats, source=source, scaling=scaling,
        mass_flags=flags, check_inputs=check, raw_jets=raw, n_synthetic=check_jets,
        provenance=provenance(cfg, runs.read_saved_config(run_dir), choice, source), onnx_prefix=onnx_prefix,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from . import export_classifier

    if args.check_jets < 1:
        raise ConfigError("--check-jets must be ≥ 1")
    if args.config is not None and args.spec:
        raise ConfigError("--config is for --model/--from-reference; a run uses its own config.yaml")
    if args.allow_stale and not (args.spec or "").endswith("/" + BEST):
        log.warning("--allow-stale is for NAME/RUN/best; ignored")
    if args.spec:
        run_dir, path, choice = run_epoch(args.spec, args.base, allow_stale=args.allow_stale)
        res = export_epoch(run_dir, path, out_dir=args.output_dir, fmt=args.format, stem=args.stem,
                           check_data=args.check_data, check_jets=args.check_jets, choice=choice,
                           scaling_from=args.scaling_from, onnx_prefix=args.onnx_prefix)  # fmt: skip
        log.debug("parity: %s", res.parity)
        return 0
    model, stem, source, cfg, scaling = resolve(args)
    scaling = _scaling_of(args.scaling_from, cfg, scaling)
    if scaling.origin.startswith("crbatch.scaling defaults"):
        log.warning("scaling constants: %s", scaling.origin)
    check, raw = check_jets_of(args.check_data, model)
    formats = formats_for(args.format, raw is not None and len(raw) > 0)
    flags = (cfg.mH_parametrization, cfg.mS_parametrization) if cfg is not None else None
    scale = "as the reference's training data held them" if source["kind"] == "reference" else "GeV / 1000 (TeV)"
    res = export_classifier(
        model, args.output_dir, args.stem or stem, formats, source=source, scaling=scaling, mass_flags=flags,
        mass_scale=scale, check_inputs=check, raw_jets=raw, n_synthetic=args.check_jets,
        provenance=provenance(cfg, None, None, source), onnx_prefix=args.onnx_prefix,
    )  # fmt: skip
    log.debug("parity: %s", res.parity)
    return 0
