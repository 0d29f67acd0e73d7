"""Baselines of ``crbatch analyze --baseline B``: what the run is compared with, on the same test jets.

``B`` is ``[LABEL=]SPEC`` (``LABEL`` names it in legends and tables), where ``SPEC`` is one of

=================================  ==========================================================================
``NAME/RUN`` / ``NAME/RUN/EPOCH``  another training run (its epoch chosen by the same criterion) or epoch
``FILE.keras``                     a crbatch classifier (preprocessing: the run it comes from, or its
                                   ``.preprocessing.json``); a Keras-2 file of the reference is read as below
``FILE.onnx``                      an exported ONNX (preprocessing from its metadata); a raw-input ONNX
                                   (``STEM.raw.onnx``) is fed raw values and validity masks
``reference:FILE``                 a model trained by the reference (the ``--from-reference`` formats of
                                   ``crbatch export``, loaded by crbatch.export.reference), fed the
                                   reference's own preprocessing (``reference-exact``); an HDF5 weights file
                                   that is not a crbatch file is taken as one without the prefix
``FILE.h5`` (kind ``scored``)      precomputed scores (``crbatch score``), joined on the jet identifiers
=================================  ==========================================================================

Each model is fed with its OWN preprocessing: the test split's scaled values are re-expressed in
the model's scaling (crbatch.export.preprocess.convert), so a model trained with other windows, or
the reference's scaling, sees what it was trained on.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputCorrupt, InputMissing, InputSchema
from ..export import preprocess as P
from .analyze_results import ModelRef
from .analyze_split import Scorer, keras_predict, scored_lookup

log = logging.getLogger(__name__)

_RUN_RE = re.compile(r"^[^/=]+/-?\d+(/-?\d+)?$")
REFERENCE_PREFIX = "reference:"


def split_label(text: str) -> tuple[str | None, str]:
    """``LABEL=SPEC`` → (LABEL, SPEC); a path that exists wins over a split at '='."""
    if "=" in text and not Path(text).exists() and not text.startswith(REFERENCE_PREFIX):
        label, spec = text.split("=", 1)
        if not label or not spec:
            raise ConfigError(f"--baseline {text!r}: expected [LABEL=]SPEC")
        return label, spec
    return None, text


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _crbatch_kind(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("kind")) if f.attrs.get("producer") == "crbatch" else None
    except OSError:
        return None


def _pre_of(scaling: Any, mass_names: list[str]) -> P.Preprocessing | None:
    return None if scaling is None else P.from_constants(scaling.constants, mass_names)


def _sha(path: Path) -> str:
    from .analyze_choice import sha256_file

    return sha256_file(path)


def reference_scorer(path: Path, key: str, label: str | None, spec: str) -> Scorer:
    """A reference-trained classifier (Keras-2 weights), fed the reference's preprocessing."""
    from ..export import fdeep
    from ..export.reference import load_reference
    from ..export.sidecar import reference_scaling
    from ..train.config import TrainConfig

    if not path.exists():
        raise InputMissing(f"{path}: baseline model not found")
    model, _ = load_reference(path, TrainConfig())
    sc = reference_scaling()
    assert sc.constants is not None  # the reference's constants are always known
    ref = ModelRef(key=key, label=label or f"reference {path.stem}", role="baseline", kind="reference", spec=spec,
                   path=str(path), file_sha256=_sha(path), model_hash=fdeep.model_hash(model),
                   preprocessing=sc.constants["name"], preprocessing_origin=sc.origin)  # fmt: skip
    return Scorer(ref, _pre_of(sc, []), [], keras_predict(model, []))


def _scoring_scorer(path_or_spec: str, key: str, label: str | None, spec: str, base: Path, kind: str) -> Scorer:
    """A .keras file or an ONNX through crbatch.evaluate.score's loader (which finds its scaling)."""
    from .score import load_scoring_model

    sm = load_scoring_model(path_or_spec, base)
    pre = _pre_of(sm.scaling, sm.mass_names)
    ref = ModelRef(key=key, label=label or Path(sm.path).name, role="baseline", kind=kind, spec=spec,
                   path=str(sm.path), file_sha256=sm.file_sha256, model_hash=sm.model_hash or None,
                   preprocessing=(sm.scaling.constants or {}).get("name"),
                   preprocessing_origin=sm.scaling.origin)  # fmt: skip

    def run(xs, valid, m):
        from ..schema import INPUT_NAMES
        from .analyze_split import MASS_SCALE, mass_columns
        from .score import with_masses

        arrays = with_masses([xs[n] for n in INPUT_NAMES], mass_columns(m, sm.mass_names, MASS_SCALE))
        return sm.predict(arrays)

    return Scorer(ref, pre, list(sm.mass_names), run)


def _raw_onnx_scorer(path: Path, key: str, label: str | None, spec: str) -> Scorer | None:
    """A raw-input ONNX (preprocessing inside the graph): fed raw values; None if ``path`` is not one."""
    import json

    from ..export import onnx as onnx_export
    from ..export import onnx_raw
    from ..export.sidecar import ONNX_KEY

    try:
        sess = onnx_export.session(path.read_bytes())
    except Exception as e:  # onnxruntime's own exception types
        raise InputCorrupt(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
    if not onnx_raw.is_raw_graph(sess):
        return None
    meta = onnx_export.read_metadata(path)
    doc = json.loads(meta[ONNX_KEY]) if ONNX_KEY in meta else {}
    masses = list((doc.get("parametrization") or {}).get("features") or [])
    ref = ModelRef(key=key, label=label or path.name, role="baseline", kind="onnx-raw", spec=spec, path=str(path),
                   file_sha256=_sha(path), model_hash=meta.get("crbatch.model_hash") or None,
                   preprocessing="inside the graph", preprocessing_origin=str(path))  # fmt: skip

    def run(xs, valid, m):
        from .analyze_split import mass_columns

        return onnx_raw.run(sess, dict(xs), dict(valid), mass_columns(m, masses))

    return Scorer(ref, P.identity(masses), masses, run)


def epoch_scorer(info: Any, epoch: int, key: str, label: str, role: str, spec: str) -> Scorer:
    """One saved epoch of a run (crbatch.evaluate.analyze_runs.RunInfo), fed its training data's scaling."""
    from ..export import fdeep
    from ..export.cli import load_keras
    from ..export.sidecar import default_scaling, mass_feature_count, mass_names
    from .score import _run_scaling

    path = info.run_dir / "epochs" / f"{epoch:03d}.keras"
    model = load_keras(path)
    cfg, scaling = _run_scaling(info.run_dir)
    flags = (cfg.mH_parametrization, cfg.mS_parametrization) if cfg is not None else None
    names = mass_names(mass_feature_count(model), flags)
    known = scaling is not None
    if scaling is None:
        if role != "run":
            raise InputSchema(f"{info.run_dir}: the datasets it trained on are unreadable here, so its preprocessing "
                              "is unknown; give the ONNX exported from it instead")  # fmt: skip
        scaling = default_scaling("its training datasets are unreadable here")
    pre = _pre_of(scaling, names)
    ref = ModelRef(key=key, label=label, role=role, kind="run", spec=spec, path=str(path), file_sha256=_sha(path),
                   model_hash=fdeep.model_hash(model), epoch=epoch, preprocessing=(scaling.constants or {}).get("name"),
                   preprocessing_origin=scaling.origin)  # fmt: skip
    # unknown training scaling (the run's own model only): its test split is fed as it is stored
    return Scorer(ref, pre if known else None, names, keras_predict(model, names))


def run_scorer(spec: str, key: str, label: str | None, base: Path, criterion: str) -> Scorer:
    """Another run (its epoch chosen by ``criterion``) or one epoch of it."""
    from .analyze_runs import choose_epoch, load_run, parse_run_spec

    info = load_run(parse_run_spec(spec), base)
    epoch, why = choose_epoch(info, criterion)
    if epoch is None:
        raise InputMissing(f"{info.run_dir}: no saved epoch to compare with")
    log.info("baseline %s: %s epoch %d (%s)", key, info.label, epoch, why)
    return epoch_scorer(info, epoch, key, label or f"{info.label} e{epoch}", "baseline", spec)


def load_baseline(text: str, index: int, *, base: Path, criterion: str) -> Scorer:
    """The :class:`Scorer` of ``--baseline text`` (see the module docstring)."""
    label, spec = split_label(text)
    key = f"baseline:{index}"
    if spec.startswith(REFERENCE_PREFIX):
        return reference_scorer(Path(spec[len(REFERENCE_PREFIX) :]), key, label, spec)
    path = Path(spec)
    if path.exists():
        if path.suffix == ".onnx":
            raw = _raw_onnx_scorer(path, key, label, spec)
            return raw if raw is not None else _scoring_scorer(spec, key, label, spec, base, "onnx")
        if _is_hdf5(path):
            kind = _crbatch_kind(path)
            if kind == "scored":
                lookup, attrs = scored_lookup(path)
                m = attrs.get("model") or {}
                ref = ModelRef(key=key, label=label or f"scores {path.name}", role="baseline", kind="scored", spec=spec,
                               path=str(path), file_sha256=_sha(path), model_hash=m.get("model_hash") or None,
                               preprocessing=((attrs.get("scaling") or {}).get("constants") or {}).get("name"),
                               preprocessing_origin=f"precomputed by crbatch score ({m.get('spec')})")  # fmt: skip
                return Scorer(ref, None, [], None, lookup)
            if kind is None:  # a Keras-2 save_weights file: the reference's
                return reference_scorer(path, key, label, spec)
            raise ConfigError(f"--baseline {spec}: a crbatch {kind} file; give a scored file, a model or a run")
        if path.suffix == ".keras":
            try:
                return _scoring_scorer(spec, key, label, spec, base, "keras")
            except InputCorrupt as e:  # not a Keras 3 archive: maybe a Keras-2 one of the reference
                try:
                    return reference_scorer(path, key, label, spec)
                except (InputCorrupt, InputSchema):
                    raise e from None
        raise ConfigError(f"--baseline {spec}: expected a .keras, .onnx or scored .h5 file, reference:FILE or NAME/RUN")
    if _RUN_RE.match(spec):
        return run_scorer(spec, key, label, base, criterion)
    raise InputMissing(f"--baseline {spec}: no such file, and not a run spec (NAME/RUN or NAME/RUN/EPOCH)")
