"""``crbatch export``: the trained classifier for C++ inference, with its preprocessing.

Outputs, in ``--output-dir`` (``STEM`` from the source, or ``--stem``), each written atomically,
and only once every requested export has passed its check:

* ``STEM.fdeep.json``: frugally-deep model (DiVertAnalysis), written by :mod:`.fdeep`;
* ``STEM.onnx``: ONNX model (Athena), through Keras' ``model.export``, by :mod:`.onnx`; the
  preprocessing description is in its ``metadata_props``;
* ``STEM.preprocessing.json``: the preprocessing description (:mod:`.sidecar`), with the parity
  numbers of both exports and the model hash.

Checks before a file appears: the fdeep JSON text, parsed back, decodes exactly to the model's
weights, its hash matches, and Keras on its embedded test jet reproduces the stored outputs;
onnxruntime matches Keras on a batch of synthetic jets (plus real jets with ``--check-data``); both within
``tolerance`` (1e-5) in absolute score.

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

FORMATS = ("fdeep", "onnx")
SUFFIX = {"fdeep": ".fdeep.json", "onnx": ".onnx", "sidecar": ".preprocessing.json"}
TOLERANCE = 1e-5


class ExportCheckFailed(CrbatchError):
    """The exported model does not reproduce Keras (a crbatch bug or an unsupported construct)."""

    code = ExitCode.INTERNAL


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)


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


def _write(path: Path, data: bytes) -> None:
    from ..schema import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


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
    n_synthetic: int = 256,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Write the requested formats and the sidecar for ``model``; see the module docstring."""
    from . import fdeep, sidecar
    from . import onnx as onnx_export

    # Refuse before anything is written: a wrong interface or layer (12), no ONNX route here (3).
    sidecar.mass_feature_count(model)
    fdeep.check_exportable(model)
    if "onnx" in formats:
        onnx_export.require_backend()
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
    texts: dict[str, str] = {}
    if "fdeep" in formats:
        texts["fdeep"] = fdeep.dumps(fdeep.to_fdeep(model, [x[:1] for x in synth]))
        try:
            diff = fdeep.verify(json.loads(texts["fdeep"]), model)  # the exact text that will be on disk
        except ValueError as e:
            raise ExportCheckFailed(f"fdeep export check failed, nothing written: {e}") from e
        if not diff <= tolerance:
            raise ExportCheckFailed(f"fdeep test vector differs from Keras by {diff:.2e} > {tolerance:g}")
        res.parity["fdeep_test_vector_max_abs_diff"] = diff
        log.info("fdeep: checked (test vector |Δ| = %.1e, hash %s…)", diff, hash_[:12])

    proto = None
    if "onnx" in formats:
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

    names = {f: p.name for f, p in res.files.items()}
    res.files["sidecar"] = out_dir / f"{stem}{SUFFIX['sidecar']}"
    res.sidecar = sidecar.describe(
        model, scaling=scaling, source=source, files=names, model_hash=hash_, parity=res.parity,
        mass_flags=mass_flags, mass_scale=mass_scale,
    )  # fmt: skip
    from ..outputs import check_output

    for kind, path in res.files.items():  # all refused or none: never a partial export over foreign files
        check_output(path, f"export:{kind}", [source["path"]] if source.get("path") else [])
    if "fdeep" in texts:
        _write(res.files["fdeep"], texts["fdeep"].encode())
    if proto is not None:
        _write(res.files["onnx"], onnx_export.with_metadata(proto, sidecar.onnx_metadata(res.sidecar)))
    _write(res.files["sidecar"], sidecar.dumps(res.sidecar).encode())
    for kind, path in res.files.items():
        log.info("%s: %s", kind, path)
    return res
