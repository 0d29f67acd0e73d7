"""``crbatch score``: the classifier's three outputs for every jet of shards or datasets, as a new file.

The model is a training run's epoch (``NAME/RUN/EPOCH``), a saved ``.keras`` classifier, or an
exported ``.onnx`` (run with onnxruntime: no TensorFlow needed). Inputs are read by the streaming
reader (crbatch.build.reader) in chunks, so memory does not grow with the file:

* a **dataset** (``crbatch build`` output) is already scaled and is read as is — after checking
  that its scaling constants are the model's (a mismatch is exit 12, ``--ignore-scaling-mismatch``
  to force);
* a raw **shard** is scaled on the fly (crbatch.scaling) with the model's constants: those of the
  dataset the run trained on, of the ONNX file's preprocessing metadata, of a ``.preprocessing.json``
  sidecar next to the model, or of ``--scaling-from DATASET``; crbatch's defaults, with a warning,
  when none of them is available.

Output (one per input, atomic, skipped when complete for the same input and model unless
``--force``): an HDF5 file of kind ``scored`` with one structured ``jets`` table holding the jet's
identifiers and kinematics (:data:`ID_FIELDS`) and ``jet_nn_qcd``, ``jet_nn_sig``, ``jet_nn_bib``.
No constituent tables: join with the source on (runNumber, eventNumber, jet_index); the row order
is the source's. Attributes: model spec, model hash, scaling used, source file.

A mass-parametrised model needs the (mH, mS) hypothesis being scored: ``--mass-hypothesis MH MS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from .. import __version__, schema
from ..config import StageConfig
from ..errors import ConfigError, CrbatchError, ExitCode, InputCorrupt, InputMissing, InputSchema, worst

log = logging.getLogger(__name__)

SCORE_FIELDS = ("jet_nn_qcd", "jet_nn_sig", "jet_nn_bib")  # model outputs 0, 1, 2 (schema.MODEL_OUTPUTS)
ID_FIELDS = (
    "eventNumber", "runNumber", "mcChannelNumber", "jet_index", "label", "pt", "eta", "phi",
    "mcEventWeight", "weight_xs", "weight_balanced", "llp_mH", "llp_mS",
)  # fmt: skip
# Derived weights exist in datasets only; a shard's scored file holds NaN there (not a fake 0 or 1).
DATASET_ONLY = frozenset({"weight_xs", "weight_balanced"})
SCORED_DTYPE = np.dtype([(n, schema.DATASET_JET_DTYPE[n]) for n in ID_FIELDS] + [(s, "f4") for s in SCORE_FIELDS])
SCORED_SUFFIX = ".scored.h5"
MASS_SCALE = 1000.0  # GeV → TeV, as training appends them (crbatch.train.config.MASS_SCALE)
A_MODEL = "model"  # JSON: spec, kind, path, hash, file sha256
A_SOURCE = "source"  # JSON: path, kind, n_jets, size, mtime
A_TABLES = "tables"


class ScoreConfig(StageConfig):
    """Apply a trained classifier to shards or datasets; write the scores into new files."""

    model: str | None = Field(None, description="NAME/RUN/EPOCH of a training run, or a .keras or .onnx file")
    base: Path = Field(Path("training_results"), description="root of the run directories (for NAME/RUN/EPOCH)")
    output_dir: Path = Field(Path("scored"), description="where <input stem>.scored.h5 files go")
    batch_size: int = Field(4096, ge=1, description="jets per prediction chunk")
    mass_hypothesis: list[float] | None = Field(
        None, description="(mH, mS) in GeV scored by a mass-parametrised model: two numbers"
    )
    scaling_from: Path | None = Field(None, description="take the scaling constants for raw shards from this dataset")
    ignore_scaling_mismatch: bool = Field(
        False, description="score datasets scaled differently from the model's training data anyway"
    )
    force: bool = Field(False, description="rewrite outputs that are complete already")


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


@dataclass
class ScoringModel:
    """A classifier ready to score: inputs (4 arrays in schema order) → (N, 3) float32."""

    kind: str  # "keras" | "onnx"
    spec: str
    path: Path
    model_hash: str  # frugally-deep's weight hash (the same for a .keras and its ONNX export)
    file_sha256: str
    n_mass: int
    mass_names: list[str]
    scaling: Any  # crbatch.export.sidecar.Scaling
    predict_fn: Callable[[list[np.ndarray]], np.ndarray] = field(repr=False)

    def predict(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.predict_fn(list(xs)), dtype=np.float32)

    def record(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "path": str(self.path), "model_hash": self.model_hash,
                "file_sha256": self.file_sha256, "mass_features": self.mass_names}  # fmt: skip


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def with_masses(xs: Sequence[np.ndarray], masses: np.ndarray | None) -> list[np.ndarray]:
    """Append per-jet mass features ``(N, k)`` (TeV) to every slot and to the jet vector, as training does."""
    if masses is None or masses.shape[1] == 0:
        return list(xs)
    m = masses.astype(np.float32)
    out = []
    for x in xs:
        extra = m if x.ndim == 2 else np.broadcast_to(m[:, None, :], (x.shape[0], x.shape[1], m.shape[1]))
        out.append(np.concatenate([x, extra], axis=-1))
    return out


def _run_scaling(run_dir: Path) -> tuple[Any, Any]:
    """(train config or None, scaling) of a run: the constants of the dataset it trained on."""
    from pydantic import ValidationError

    from ..export import sidecar
    from ..train import runs
    from ..train.config import TrainConfig

    try:
        saved = runs.read_saved_config(run_dir)
        cfg = None if saved is None else TrainConfig.model_validate(saved)
    except (ConfigError, ValidationError) as e:
        log.warning("%s: run config unusable (%s)", run_dir, e)
        cfg = None
    if cfg is None:
        return None, None
    for split in ("train", "val", "test"):
        path = cfg.dataset_path("main", split)
        found = sidecar.scaling_from_dataset(path) if path.exists() else None
        if found is not None:
            return cfg, found
    return cfg, None


def _sidecar_next_to(path: Path) -> dict[str, Any] | None:
    side = path.with_name(path.name.removesuffix(path.suffix) + ".preprocessing.json")
    if not side.exists():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable preprocessing sidecar (%s)", side, e)
        return None


def _scaling_of_doc(doc: Mapping[str, Any] | None, where: str) -> Any:
    from ..export import sidecar

    sc = (doc or {}).get("scaling") or {}
    if isinstance(sc, Mapping) and isinstance(sc.get("constants"), Mapping):
        return sidecar.Scaling(sc["constants"], f"{where} (originally: {sc.get('origin', '?')})")
    return None


def _mass_names_of_doc(doc: Mapping[str, Any] | None) -> list[str] | None:
    par = (doc or {}).get("parametrization")
    return list(par["features"]) if isinstance(par, Mapping) and "features" in par else None


def load_scoring_model(
    spec: str, base: Path = Path("training_results"), scaling_from: Path | None = None
) -> ScoringModel:
    """Resolve ``spec`` (NAME/RUN/EPOCH, FILE.keras or FILE.onnx) into a :class:`ScoringModel`."""
    from ..export import sidecar

    path = Path(spec)
    doc: dict[str, Any] | None = None
    cfg, scaling = None, None
    if path.suffix == ".onnx":
        if not path.exists():
            raise InputMissing(f"{path}: ONNX model not found")
        model = _onnx_model(path)
        doc = model.pop("doc")
        scaling = _scaling_of_doc(doc, f"ONNX metadata of {path}")
    elif path.suffix == ".keras":
        keras_model = _load_keras(path)
        if path.parent.name == "epochs":  # a run's epochs/NNN.keras: the run tells the scaling
            cfg, scaling = _run_scaling(path.parent.parent)
        doc = _sidecar_next_to(path)
        scaling = scaling or _scaling_of_doc(doc, f"sidecar of {path}")
        model = _keras_model(keras_model)
    else:
        from ..export.cli import epoch_file, parse_spec
        from ..train import runs

        if path.exists():
            raise ConfigError(f"{spec}: a model file must end in .keras or .onnx")
        name, run, epoch = parse_spec(spec)
        model_dir = base / name
        run_dir = runs.find_run(model_dir, run)
        if not run_dir.is_dir():
            raise InputMissing(
                f"{run_dir}: no such run (runs of {model_dir}: {runs.numeric_runs(model_dir) or 'none'})"
            )
        path = epoch_file(run_dir, epoch)
        cfg, scaling = _run_scaling(run_dir)
        model = _keras_model(_load_keras(path))
    if scaling_from is not None:
        if not scaling_from.exists():
            raise InputMissing(f"{scaling_from}: --scaling-from dataset not found")
        scaling = sidecar.scaling_from_dataset(scaling_from)
        if scaling is None:
            raise InputCorrupt(f"{scaling_from}: no readable scaling constants in its attributes")
    if scaling is None:
        scaling = sidecar.default_scaling("the model's training data is unknown; use --scaling-from for raw shards")
    k = model["n_mass"]
    names = _mass_names_of_doc(doc)
    if names is None or len(names) != k:
        flags = (cfg.mH_parametrization, cfg.mS_parametrization) if cfg is not None else None
        names = sidecar.mass_names(k, flags)
    return ScoringModel(spec=spec, path=path, file_sha256=file_sha256(path), mass_names=names, scaling=scaling, **model)


def _load_keras(path: Path) -> Any:
    from ..export.cli import load_keras

    return load_keras(path)


def _keras_model(model: Any) -> dict[str, Any]:
    from ..export import fdeep, sidecar
    from .epoch import predict

    k = sidecar.mass_feature_count(model)  # exit 12 on a model that is not a CalRatio classifier
    return {"kind": "keras", "model_hash": fdeep.model_hash(model), "n_mass": k,
            "predict_fn": lambda xs: predict(model, xs)}  # fmt: skip


def _session_options(ort: Any) -> Any:
    """One thread per operator, and no blocked-layout (NCHWc) rewriting: measured fastest for this network
    on a busy 2-core machine (bench/score.py; the reordering around each Conv cost a third of the time)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # onnxruntime warns about initialisers the rewrite left unused
    return opts


def _fast_graph(path: Path) -> bytes | str:
    """The model's graph with its 1×1 convolutions as MatMuls (crbatch.export.onnx_fast), in memory; the
    file as is when it cannot be parsed here (onnxruntime then names the problem)."""
    try:
        import onnx

        from ..export.onnx_fast import pointwise_convs_as_matmuls

        proto = onnx.load(str(path))
        if pointwise_convs_as_matmuls(proto):
            return proto.SerializeToString()
    except Exception as e:  # a damaged file: onnxruntime's own message is the one to show
        log.debug("%s: scoring the graph as written (%s)", path, e)
    return str(path)


def _onnx_model(path: Path) -> dict[str, Any]:
    from ..export import onnx as onnx_export
    from ..export.sidecar import ONNX_KEY

    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(_fast_graph(path), _session_options(ort), providers=["CPUExecutionProvider"])
    except ImportError as e:
        raise ConfigError(f"scoring an ONNX model needs onnxruntime ({e})") from e
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise InputCorrupt(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
    shapes = [tuple(i.shape[1:]) for i in sess.get_inputs()]
    want = [m.shape for m in schema.MODEL_INPUTS]
    if len(shapes) != len(want) or any(len(a) != len(b) or a[:-1] != b[:-1] for a, b in zip(shapes, want, strict=True)):
        raise InputSchema(f"{path}: inputs {shapes}, expected {want} (+ mass features): not a CalRatio classifier")
    ks = {a[-1] - b[-1] for a, b in zip(shapes, want, strict=True) if isinstance(a[-1], int)}
    if len(ks) != 1 or not 0 <= next(iter(ks)) <= 2:
        raise InputSchema(f"{path}: inputs {shapes} do not match {want} plus one common number of mass features")
    try:
        meta = onnx_export.read_metadata(path)
    except Exception as e:  # onnx's protobuf parse errors
        raise InputCorrupt(f"{path}: cannot read the ONNX metadata ({e})") from e
    doc = json.loads(meta[ONNX_KEY]) if ONNX_KEY in meta else None
    model_hash = meta.get("crbatch.model_hash", "")
    return {"kind": "onnx", "model_hash": model_hash, "n_mass": ks.pop(), "doc": doc,
            "predict_fn": lambda xs: onnx_export.run(sess, xs)}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Scoring one file
# ------------------------------------------------------------------------------------------------


def output_path(src: Path, output_dir: Path) -> Path:
    return output_dir / (src.name.removesuffix(src.suffix) + SCORED_SUFFIX)


def _source_record(src: Path, attrs: Mapping[str, Any]) -> dict[str, Any]:
    st = src.stat()
    return {"path": str(src.resolve()), "kind": attrs.get(schema.A_KIND), "n_jets": attrs.get(schema.A_N_JETS),
            "size": st.st_size, "mtime": int(st.st_mtime)}  # fmt: skip


def _check_source(src: Path) -> dict[str, Any]:
    if not src.exists():
        raise InputMissing(f"{src}: input not found")
    attrs = schema.check_input(src)
    if attrs.get(schema.A_KIND) not in ("shard", "dataset"):
        raise InputSchema(f"{src}: a {attrs.get(schema.A_KIND)!r} file; score reads shards and datasets")
    import h5py
    import hdf5plugin  # noqa: F401

    try:
        with h5py.File(src, "r") as f:
            attrs["_rows"] = int(f["jets"].shape[0])
    except KeyError as e:
        raise InputSchema(f"{src}: no jets table") from e
    return attrs


# Files the reference scaled itself and the reference's pre_process redone by crbatch: one scaling.
_SAME_NAME = {"legacy-reference": "reference-exact"}


def _same_scaling(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    keys = ("name", "jet_pt", "cluster_pt", "track_pt", "track_z0_scale", "reference_exact")

    def norm(c: Mapping[str, Any], k: str) -> Any:
        v = c.get(k)
        return _SAME_NAME.get(v, v) if k == "name" and isinstance(v, str) else v

    return a is not None and b is not None and all(norm(a, k) == norm(b, k) for k in keys)


def _already_done(dst: Path, source: Mapping[str, Any], model: ScoringModel, hypothesis: Any) -> bool:
    if not schema.is_complete(dst, "scored"):
        return False
    import h5py

    with h5py.File(dst, "r") as f:
        attrs = schema.read_attrs(f)
    m = attrs.get(A_MODEL) or {}
    return (attrs.get(A_SOURCE) == dict(source) and m.get("file_sha256") == model.file_sha256
            and attrs.get("mass_hypothesis") == hypothesis)  # fmt: skip


def score_file(
    src: Path,
    dst: Path,
    model: ScoringModel,
    *,
    batch_size: int = 4096,
    mass_hypothesis: Sequence[float] | None = None,
    force: bool = False,
    ignore_scaling_mismatch: bool = False,
) -> str:
    """Score ``src`` into ``dst``; returns ``"written"`` or ``"skipped"`` (complete already)."""
    from .. import outputs
    from ..build.reader import DatasetReader
    from ..progress import Progress
    from ..scaling import ScalingConfig

    outputs.check_output(dst, "scored", [src, model.path])

    attrs = _check_source(src)
    kind = attrs[schema.A_KIND]
    source = _source_record(src, {**attrs, schema.A_N_JETS: attrs["_rows"]})
    hypothesis = list(map(float, mass_hypothesis)) if mass_hypothesis is not None else None
    masses = _mass_row(model, hypothesis)
    if not force and _already_done(dst, source, model, hypothesis):
        log.info("%s: complete already (same input and model), skipped; --force rewrites it", dst)
        return "skipped"
    consts = model.scaling.constants
    if kind == "dataset":
        scaling_used: dict[str, Any] = {"applied": False, "constants": attrs.get(schema.A_SCALING),
                                        "origin": f"already scaled by crbatch build ({src.name})"}  # fmt: skip
        if consts is not None and not _same_scaling(attrs.get(schema.A_SCALING), consts):
            msg = f"{src}: its scaling constants differ from the model's ({model.scaling.origin})"
            if not ignore_scaling_mismatch:
                raise InputSchema(msg + "; score its shards instead, or pass --ignore-scaling-mismatch")
            log.warning("%s (scoring anyway)", msg)
        requested = None
    elif attrs.get(schema.A_SCALED) == "legacy-reference":
        from ..scaling import legacy_constants

        scaling_used = {"applied": False, "constants": None, "origin": "legacy shard scaled by the reference"}
        if not _same_scaling(legacy_constants(), consts):
            name = (consts or {}).get("name")
            msg = (f"{src}: its features were scaled by the reference, the model's inputs are scaled {name!r} "
                   f"({model.scaling.origin})")  # fmt: skip
            if not ignore_scaling_mismatch:
                raise InputSchema(msg + "; score the raw shards instead, or pass --ignore-scaling-mismatch")
            log.warning("%s (scoring anyway)", msg)
        requested = None
    else:
        try:
            requested = ScalingConfig.from_constants(consts or {})
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"the model's scaling constants ({model.scaling.origin}) are unusable: {e}") from e
        scaling_used = {"applied": True, "constants": requested.constants(), "origin": model.scaling.origin}
    fields = [n for n in ID_FIELDS if n != "label"]
    n_total = attrs.pop("_rows")
    t0 = time.perf_counter()
    with schema.atomic_output(dst) as tmp, schema.h5_output(tmp) as f:
        ds = f.create_dataset("jets", shape=(0,), maxshape=(None,), dtype=SCORED_DTYPE,
                              chunks=(schema.JETS_CHUNK,), **schema.compression())  # fmt: skip
        n = 0
        if n_total:
            bar = Progress(n_total, f"score {src.name}", "jets")
            try:
                with DatasetReader(src, batch_size=batch_size, shuffle=False, prefetch=1, scaling=requested,
                                   jet_fields=fields) as rd:  # fmt: skip
                    for b in rd:
                        rows = _rows(b, kind, model, masses)
                        ds.resize(n + len(rows), axis=0)
                        ds[n : n + len(rows)] = rows
                        n += len(rows)
                        bar.update(len(rows))
            except (OSError, KeyError, ValueError) as e:
                raise InputCorrupt(f"{src}: cannot read its jets ({type(e).__name__}: {e})") from e
            finally:
                bar.close()
        f.attrs.update({
            schema.A_PRODUCER: "crbatch", schema.A_VERSION: __version__, schema.A_SCHEMA: schema.SCHEMA_VERSION,
            schema.A_KIND: "scored", schema.A_STATUS: "ok" if n else "empty", schema.A_N_JETS: n,
            A_SOURCE: schema.to_attr(source), A_MODEL: schema.to_attr(model.record()),
            schema.A_SCALING: schema.to_attr(scaling_used), "mass_hypothesis": schema.to_attr(hypothesis),
            "outputs": schema.to_attr(list(SCORE_FIELDS)),
            A_TABLES: "jets only: identifiers, kinematics, weights and the network outputs; no constituent "
                      "tables (join with the source on runNumber, eventNumber, jet_index; same row order)",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })  # fmt: skip
        schema.mark_complete(f)  # checksums, then the completion mark: last
    dt = time.perf_counter() - t0
    log.info("%s: %d jets scored in %.1f s (%.0f jets/s) → %s", src.name, n, dt, n / max(dt, 1e-9), dst)
    return "written"


def _mass_row(model: ScoringModel, hypothesis: list[float] | None) -> np.ndarray | None:
    """The (1, k) mass features (TeV) of a parametrised model's hypothesis; None for an ordinary model."""
    if model.n_mass == 0:
        if hypothesis is not None:
            log.warning("--mass-hypothesis ignored: the model is not mass-parametrised")
        return None
    if hypothesis is None or len(hypothesis) != 2:
        raise ConfigError(
            f"the model is mass-parametrised ({', '.join(model.mass_names)}): give the hypothesis to score, "
            "--mass-hypothesis MH MS (GeV)"
        )
    values = {"mH": hypothesis[0], "mS": hypothesis[1]}
    if model.n_mass == 2:
        row = [hypothesis[0], hypothesis[1]]  # mH before mS, as training appends them
    elif model.mass_names[0] in values:
        row = [values[model.mass_names[0]]]
    else:
        raise ConfigError("the model has one mass feature and it is unknown which (mH or mS): score with its run spec")
    return np.asarray([row], np.float32) / np.float32(MASS_SCALE)


def _rows(b: Mapping[str, np.ndarray], kind: str, model: ScoringModel, masses: np.ndarray | None) -> np.ndarray:
    xs = [np.asarray(b[name], np.float32) for name in schema.INPUT_NAMES]
    n = len(xs[0])
    m = None if masses is None else np.repeat(masses, n, axis=0)
    p = model.predict(with_masses(xs, m))
    if p.shape != (n, len(SCORE_FIELDS)):
        raise CrbatchError(f"the model returned shape {p.shape} for {n} jets, expected ({n}, 3)", ExitCode.INTERNAL)
    rows = np.zeros(n, SCORED_DTYPE)
    rows["label"] = b["label"]
    for name in ID_FIELDS:
        if name == "label":
            continue
        rows[name] = np.nan if name in DATASET_ONLY and kind != "dataset" else b[name]
    for i, name in enumerate(SCORE_FIELDS):
        rows[name] = p[:, i]
    return rows


def score_files(inputs: Sequence[Path], model: ScoringModel, cfg: ScoreConfig, out: Path | None = None) -> ExitCode:
    """Score every input (one failure does not stop the others); the worst exit code."""
    if out is not None and len(inputs) != 1:
        raise ConfigError(f"--out names one output file, but {len(inputs)} inputs were given; use --output-dir")
    dsts = [out if out is not None else output_path(p, cfg.output_dir) for p in inputs]
    if len(set(dsts)) != len(dsts):
        raise ConfigError("two inputs have the same file name and would write the same output; score them separately")
    codes = []
    for src, dst in zip(inputs, dsts, strict=True):
        try:
            score_file(src, dst, model, batch_size=cfg.batch_size, mass_hypothesis=cfg.mass_hypothesis,
                       force=cfg.force, ignore_scaling_mismatch=cfg.ignore_scaling_mismatch)  # fmt: skip
            codes.append(ExitCode.OK)
        except CrbatchError as e:
            if e.code == ExitCode.CONFIG:  # the same for every input: stop now
                raise
            log.error("%s", e)
            codes.append(e.code)
        except OSError as e:  # writing: disk full, quota, network storage
            log.error("%s: %s", dst, e)
            codes.append(ExitCode.TRANSIENT)
    done = sum(c == ExitCode.OK for c in codes)
    log.info("scored %d of %d inputs with %s", done, len(codes), model.spec)
    return worst(codes)


def read_scored(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``jets`` table and the attributes of a scored file (for tests and downstream tools)."""
    import h5py
    import hdf5plugin  # noqa: F401

    attrs = schema.check_complete(path, "scored")
    with h5py.File(path, "r") as f:
        return f["jets"][:], attrs


__all__ = ["ID_FIELDS", "SCORED_DTYPE", "SCORE_FIELDS", "ScoreConfig", "ScoringModel", "load_scoring_model",
           "output_path", "read_scored", "score_file", "score_files", "with_masses"]  # fmt: skip
