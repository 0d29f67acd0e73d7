"""``crbatch export``: the trained classifier for C++ inference, with its preprocessing.

Outputs, in ``--output-dir`` (``STEM`` from the source, or ``--stem``), each written atomically,
and only once every requested export has passed its check:

* ``STEM.fdeep.json``: frugally-deep model (DiVertAnalysis), written by :mod:`.fdeep`;
* ``STEM.onnx``: ONNX model (Athena), through Keras' ``model.export``, by :mod:`.onnx`; the
  preprocessing description is in its ``metadata_props``;
* ``STEM.raw.onnx``: the same network with the preprocessing inside the graph (raw quantities and
  validity masks in, one probability per class out), by :mod:`.onnx_raw`;
* ``STEM.preprocessing.json``: the preprocessing description (:mod:`.sidecar`), with the parity
  numbers of every export, the model hash and the provenance (crbatch version, training config,
  dataset build id, chosen epoch and why); the fdeep JSON and the ONNX metadata carry the same.

Checks before a file appears: the fdeep JSON text, parsed back, decodes exactly to the model's
weights, its hash matches, and Keras on its embedded test jet reproduces the stored outputs;
onnxruntime matches Keras on a batch of synthetic jets (plus real jets with ``--check-data``); the
raw-input graph matches Keras on the same raw jets scaled by crbatch.scaling (the training path),
on synthetic raw jets and on REAL raw jets (required); all within ``tolerance`` (1e-5) in absolute
score.

Keras is imported lazily: ``crbatch --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import CrbatchError, ExitCode

log = logging.getLogger(__name__)

FORMATS = ("fdeep", "onnx", "onnx-raw")
SUFFIX = {"fdeep": ".fdeep.json", "onnx": ".onnx", "onnx-raw": ".raw.onnx", "sidecar": ".preprocessing.json"}
TOLERANCE = 1e-5


class ExportCheckFailed(CrbatchError):
    """The exported model does not reproduce Keras (a crbatch bug or an unsupported construct)."""

    code = ExitCode.INTERNAL


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # kind → SHA-256 of the written file

    def record(self) -> dict[str, Any]:
        """What the analysis report and metrics.json say about the export."""
        return {
            "model_hash": self.sidecar.get("model_hash"),
            "epoch": (self.sidecar.get("choice") or {}).get("epoch", (self.sidecar.get("source") or {}).get("epoch")),
            "files": [{"kind": k, "name": p.name, "path": str(p), "sha256": self.sha256.get(k),
                       "bytes": p.stat().st_size if p.exists() else None} for k, p in self.files.items()],
            "parity": dict(self.parity),
        }  # fmt: skip


def synthetic_inputs(model: Any, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic jets shaped like real ones: each constituent input has a random number of
    filled slots (0 to all; jet 0: half) of N(0, 1) values followed by zero padding, the jet vector
    is N(0, 1), and a parametrised model gets one (mH, mS) hypothesis in TeV per jet, appended to
    every slot (padding included) and to the jet vector, as in training."""
    from .sidecar import mass_feature_count

    rng = np.random.default_rng(seed)
    k = mass_feature_count(model)
    masses = rng.uniform(0.05, 1.0, size=(n, k)).astype(np.float32)
    out = []
    for mi in schema.MODEL_INPUTS:
        f = len(mi.features)
        if mi.slots:
            x = rng.normal(size=(n, mi.slots, f)).astype(np.float32)
            filled = rng.integers(0, mi.slots + 1, size=n)
            filled[0] = mi.slots // 2
            x[np.arange(mi.slots)[None, :] >= filled[:, None]] = 0.0
            x = np.concatenate([x, np.broadcast_to(masses[:, None, :], (n, mi.slots, k))], axis=-1)
        else:
            x = np.concatenate([rng.normal(size=(n, f)).astype(np.float32), masses], axis=-1)
        out.append(np.ascontiguousarray(x, dtype=np.float32))
    return out


def data_inputs(model: Any, path: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``n`` real jets of a crbatch dataset or shard (scaled as the reader does); a parametrised
    model gets random (mH, mS) hypotheses appended, like :func:`synthetic_inputs`."""
    from ..build.reader import DatasetReader
    from ..errors import InputCorrupt, InputMissing
    from .sidecar import mass_feature_count

    if not path.exists():
        raise InputMissing(f"{path}: --check-data file not found")
    try:
        with DatasetReader(path, batch_size=n, shuffle=False, prefetch=0) as rd:
            batch = next(iter(rd))
    except (OSError, ValueError, KeyError) as e:
        raise InputCorrupt(f"{path}: cannot read jets for the parity check ({e})") from e
    xs = [np.asarray(batch[name], np.float32) for name in schema.INPUT_NAMES]
    k = mass_feature_count(model)
    if not k:
        return xs
    m = np.random.default_rng(seed).uniform(0.05, 1.0, size=(len(xs[0]), k)).astype(np.float32)
    return [np.concatenate([x, m if x.ndim == 2 else np.broadcast_to(m[:, None, :], (*x.shape[:2], k))], axis=-1)
            for x in xs]  # fmt: skip


def _write(path: Path, data: bytes) -> str:
    import hashlib

    from ..schema import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _raw_parity(model: Any, proto: Any, pre: Any, scaling: Any, jets: Any, k: int, seed: int) -> float:
    """Largest |raw graph − Keras on crbatch.scaling's inputs| over ``jets`` (a RawJets)."""
    from ..scaling import ScalingConfig
    from . import onnx as onnx_export
    from . import onnx_raw, rawjets

    cfg = ScalingConfig.from_constants(scaling.constants)
    m = rawjets.masses_gev(len(jets), k, seed)
    xs = rawjets.with_masses_tev(jets.scaled_inputs(cfg), m, pre.mass_divide)
    expected = np.asarray(model.predict(xs, verbose=0))
    raw, valid = jets.raw_inputs()
    got = onnx_raw.run(onnx_export.session(proto.SerializeToString()), raw, valid, m)
    if got.shape != expected.shape:
        raise ValueError(f"raw graph output shape {got.shape} differs from Keras' {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def export_classifier(
    model: Any,
    out_dir: Path,
    stem: str,
    formats: Sequence[str],
    *,
    source: Mapping[str, Any],
    scaling: Any,
    mass_flags: tuple[bool, bool] | None = None,
    mass_scale: str = "GeV / 1000 (TeV)",
    check_inputs: Sequence[np.ndarray] | None = None,
    raw_jets: Any = None,
    n_synthetic: int = 256,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    provenance: Mapping[str, Any] | None = None,
    onnx_prefix: str | None = None,
) -> ExportResult:
    """Write the requested formats and the sidecar for ``model``; see the module docstring.

    ``raw_jets`` (crbatch.export.rawjets.RawJets): real raw jets, required for ``onnx-raw``.
    """
    from ..errors import ConfigError
    from . import fdeep, onnx_raw, preprocess, rawjets, sidecar
    from . import onnx as onnx_export

    # Refuse before anything is written: a wrong interface or layer (12), no ONNX route here (3).
    k = sidecar.mass_feature_count(model)
    fdeep.check_exportable(model)
    if "onnx" in formats or "onnx-raw" in formats:
        onnx_export.require_backend()
    pre = None
    if "onnx-raw" in formats:
        pre = preprocess.from_constants(scaling.constants, sidecar.mass_names(k, mass_flags))
        if pre is None:
            raise ConfigError(f"the raw-input ONNX needs the scaling constants; they are unusable ({scaling.origin})")
        if raw_jets is None or not len(raw_jets):
            raise ConfigError("the raw-input ONNX (onnx-raw) is checked on real raw jets: give --check-data with a "
                              "shard or a dataset whose source shards are readable, or leave onnx-raw out")  # fmt: skip
    synth = synthetic_inputs(model, n_synthetic, seed)
    batch = (
        synth if check_inputs is None else [np.concatenate([a, b]) for a, b in zip(synth, check_inputs, strict=True)]
    )
    res = ExportResult()
    res.parity = {"tolerance": tolerance, "synthetic_jets": n_synthetic,
                  "real_jets": 0 if check_inputs is None else len(check_inputs[0])}  # fmt: skip
    res.files = {f: out_dir / f"{stem}{SUFFIX[f]}" for f in formats}
    hash_ = fdeep.model_hash(model)

    # Build and check everything in memory first, then write: a failure leaves no partial export.
    fdoc = None
    if "fdeep" in formats:
        fdoc = fdeep.to_fdeep(model, [x[:1] for x in synth])
        try:
            diff = fdeep.verify(json.loads(fdeep.dumps(fdoc)), model)  # the exact text that will be on disk
        except ValueError as e:
            raise ExportCheckFailed(f"fdeep export check failed, nothing written: {e}") from e
        if not diff <= tolerance:
            raise ExportCheckFailed(f"fdeep test vector differs from Keras by {diff:.2e} > {tolerance:g}")
        res.parity["fdeep_test_vector_max_abs_diff"] = diff
        log.info("fdeep: checked (test vector |Δ| = %.1e, hash %s…)", diff, hash_[:12])

    proto = raw_proto = None
    if "onnx" in formats or "onnx-raw" in formats:
        try:
            proto, diff = onnx_export.build(model, batch)
        except ValueError as e:
            raise ExportCheckFailed(f"ONNX export check failed, nothing written: {e}") from e
        if not diff <= tolerance:
            raise ExportCheckFailed(
                f"onnxruntime differs from Keras by {diff:.2e} > {tolerance:g} on {len(batch[0])} jets"
            )
        res.parity["onnx_max_abs_diff"] = diff
        log.info("onnx: checked (onnxruntime vs Keras on %d jets: max |Δ| = %.1e)", len(batch[0]), diff)
    if "onnx-raw" in formats:
        assert pre is not None  # made, or refused, above for onnx-raw
        prefix = onnx_prefix or onnx_raw.DEFAULT_PREFIX
        try:
            raw_proto = onnx_raw.build_raw(proto, pre, prefix=prefix, n_mass=k)
            d_syn = _raw_parity(model, raw_proto, pre, scaling, rawjets.synthetic_tables(n_synthetic, seed), k, seed)
            d_real = _raw_parity(model, raw_proto, pre, scaling, raw_jets, k, seed + 1)
        except ValueError as e:
            raise ExportCheckFailed(f"raw-input ONNX check failed, nothing written: {e}") from e
        if not max(d_syn, d_real) <= tolerance:
            raise ExportCheckFailed(f"the raw-input ONNX differs from Keras on crbatch-scaled inputs by "
                                    f"{max(d_syn, d_real):.2e} > {tolerance:g}; nothing written")  # fmt: skip
        res.parity.update({"onnx_raw_max_abs_diff_synthetic": d_syn, "onnx_raw_max_abs_diff_real": d_real,
                           "onnx_raw_real_jets": len(raw_jets), "onnx_raw_real_jets_origin": raw_jets.origin,
                           "onnx_raw_outputs": onnx_raw.output_names(prefix)})  # fmt: skip
        log.info("onnx-raw: checked on %d real raw jets (max |Δ| = %.1e) and %d synthetic (%.1e)",
                 len(raw_jets), d_real, n_synthetic, d_syn)  # fmt: skip

    names = {f: p.name for f, p in res.files.items()}
    res.files["sidecar"] = out_dir / f"{stem}{SUFFIX['sidecar']}"
    res.sidecar = sidecar.describe(
        model, scaling=scaling, source=source, files=names, model_hash=hash_, parity=res.parity,
        mass_flags=mass_flags, mass_scale=mass_scale, provenance=provenance,
    )  # fmt: skip
    from ..outputs import check_output

    for kind, path in res.files.items():  # all refused or none: never a partial export over foreign files
        check_output(path, f"export:{kind}", [source["path"]] if source.get("path") else [])
    meta = sidecar.onnx_metadata(res.sidecar)
    blobs: dict[str, bytes] = {}
    if fdoc is not None:
        fdoc[fdeep.EXTRA_KEY] = fdeep_block(res.sidecar)
        text = fdeep.dumps(fdoc)
        fdeep.verify(json.loads(text), model)
        blobs["fdeep"] = text.encode()
    if proto is not None and "onnx" in formats:
        blobs["onnx"] = onnx_export.with_metadata(proto, meta)
    if raw_proto is not None:
        blobs["onnx-raw"] = onnx_export.with_metadata(
            raw_proto, {**meta, "crbatch.graph": "raw inputs (preprocessing inside)"}
        )
    blobs["sidecar"] = sidecar.dumps(res.sidecar).encode()
    for kind, data in blobs.items():
        res.sha256[kind] = _write(res.files[kind], data)
    for kind, path in res.files.items():
        log.info("%s: %s (sha256 %s…)", kind, path, res.sha256[kind][:12])
    return res


def fdeep_block(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``crbatch`` key of the fdeep JSON: provenance and preprocessing, as in the sidecar."""
    from .sidecar import PROVENANCE_KEYS

    keys = ("format", "format_version", "crbatch_version", "created", "model_hash", "source", "outputs",
            "parametrization", "scaling", "preprocessing", *PROVENANCE_KEYS)  # fmt: skip
    return {k: doc.get(k) for k in keys}
