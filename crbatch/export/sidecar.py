"""The preprocessing that ships with an exported model (JSON sidecar and ONNX ``metadata_props``).

A C++ consumer must build exactly the tensors the network was trained on: which inputs, in which
order, which features per slot in which order, how many slots (padding at the end), what an empty
slot holds, how raw values are scaled, where the mass hypothesis goes in a parametrised model, and
what the three outputs mean. All of that is here, with the numbers (scaling constants from the
attributes of the dataset the run was trained on; crbatch.scaling's defaults, marked as such, when
that dataset cannot be read).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, schema
from ..errors import InputSchema
from ..scaling import ScalingConfig, padding_rows

log = logging.getLogger(__name__)

FORMAT = "crbatch-preprocessing"
FORMAT_VERSION = 2  # 2: per-variable preprocessing, provenance (training config, dataset, chosen epoch)
ONNX_KEY = "crbatch.preprocessing"  # ONNX metadata_props key holding the whole sidecar as JSON text
CLASS_NAMES = {schema.Label.QCD: "QCD", schema.Label.SIGNAL: "signal", schema.Label.BIB: "BIB"}
SLOT_ORDER = {"clusters": "pT descending", "tracks": "pT descending", "msegs": "ntuple order (not sorted)"}
COORDINATES = {
    "clusters": "eta, phi relative to the jet's leading cluster (slot 0 is (0, 0)); pt in MeV before scaling",
    "tracks": "eta, phi relative to the jet axis; pt in GeV before scaling",
    "msegs": "etaPos (plain difference), phiPos, phiDir (wrapped) relative to the jet; etaDir absolute",
    "jet": "absolute; pt in GeV before scaling",
}


@dataclass(frozen=True)
class Scaling:
    """Scaling constants (``ScalingConfig.constants()`` form) and where they come from."""

    constants: Mapping[str, Any] | None
    origin: str

    def as_dict(self) -> dict[str, Any]:
        name = self.constants.get("name") if self.constants else None
        return {"name": name, "origin": self.origin, "constants": dict(self.constants) if self.constants else None}


def default_scaling(why: str) -> Scaling:
    return Scaling(ScalingConfig().constants(), f"crbatch.scaling defaults (assumed: {why})")


def reference_scaling() -> Scaling:
    return Scaling(
        ScalingConfig(reference_exact=True).constants(),
        "the reference's pre_process (assumed for a model trained by the reference)",
    )


def scaling_from_dataset(path: Path) -> Scaling | None:
    """The ``scaling`` attribute of a crbatch dataset, or None (logged) when it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = schema.read_attrs(f)
    except (OSError, ValueError) as e:
        log.warning("%s: cannot read the scaling constants (%s)", path, e)
        return None
    consts = attrs.get(schema.A_SCALING)
    if not isinstance(consts, Mapping):
        scaled = attrs.get(schema.A_SCALED)
        log.warning("%s: no scaling constants in its attributes (scaled = %r)", path, scaled)
        return None
    return Scaling(consts, f"attributes of {path}")


def dataset_record(path: Path) -> dict[str, Any]:
    """Which dataset a model was trained on: its build id (``crbatch build``'s hash of config and
    inputs) or, for files without one, an identity hashed from the provenance the file does carry."""
    import hashlib

    import h5py

    rec: dict[str, Any] = {"path": str(path)}
    try:
        with h5py.File(path, "r") as f:
            attrs = schema.read_attrs(f)
    except (OSError, ValueError) as e:
        rec.update(build_id=None, identity=None, note=f"unreadable ({e})")
        return rec
    bid = attrs.get(getattr(schema, "A_BUILD_ID", "build_id"))
    prov = {k: attrs.get(k) for k in (schema.A_VERSION, "created", schema.A_N_JETS, schema.A_SCALED)}
    text = json.dumps([attrs.get(schema.A_CONFIG), attrs.get(schema.A_SHARDS), attrs.get(schema.A_N_JETS)],
                      sort_keys=True, default=str)  # fmt: skip
    rec.update(
        build_id=str(bid) if bid else None,
        identity=str(bid) if bid else "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        shards=len(attrs.get(schema.A_SHARDS) or []),
        **{k: v for k, v in prov.items() if v is not None},
    )
    return rec


def mass_feature_count(model: Any) -> int:
    """Extra (mass) features per slot; refuses (exit 12) a model that breaks the downstream contract:
    4 inputs [clusters (30, 12+k), tracks (20, 10+k), msegs (30, 6+k), jet (3+k)], one (3,) output."""
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    want = [mi.shape for mi in schema.MODEL_INPUTS]
    bad = f"model inputs {shapes}, expected {want} (+k mass features, k ≤ 2, on each last axis)"
    if len(shapes) != len(want):
        raise InputSchema(f"{bad}: wrong number of inputs")
    ks = set()
    for got, exp in zip(shapes, want, strict=True):
        if len(got) != len(exp) or got[:-1] != exp[:-1] or got[-1] is None:
            raise InputSchema(bad)
        ks.add(got[-1] - exp[-1])
    if len(ks) != 1 or not 0 <= next(iter(ks)) <= 2:
        raise InputSchema(bad)
    outs = [tuple(t.shape[1:]) for t in model.outputs]
    if outs != [(len(schema.MODEL_OUTPUTS),)]:
        raise InputSchema(
            f"model outputs {outs}, expected one ({len(schema.MODEL_OUTPUTS)},) softmax [QCD, signal, BIB]"
        )
    return ks.pop()


def mass_names(k: int, flags: tuple[bool, bool] | None) -> list[str]:
    """Names of the appended mass features (mH before mS, as crbatch and the reference append them)."""
    if flags is not None:
        names = [n for n, on in zip(("mH", "mS"), flags, strict=True) if on]
        if len(names) == k:
            return names
        log.warning("the config's parametrisation %s does not match the model's %d extra features", names, k)
    return [["mH", "mS"][i] if k == 2 else "mH or mS (unknown: give the run's config)" for i in range(k)]


def _padding_values(scaling: Scaling) -> dict[str, list[float] | str]:
    """What an empty slot holds, per constituent input, in the input's feature order (before masses)."""
    try:
        rows = padding_rows(ScalingConfig.from_constants(scaling.constants or {}))
    except (ValueError, KeyError, TypeError):
        return {mi.name: "unknown (scaling constants unknown)" for mi in schema.MODEL_INPUTS if mi.slots}
    return {mi.name: [float(rows[mi.table][f]) for f in mi.features] for mi in schema.MODEL_INPUTS if mi.slots}


def describe(
    model: Any,
    *,
    scaling: Scaling,
    source: Mapping[str, Any],
    files: Mapping[str, str],
    model_hash: str,
    parity: Mapping[str, Any],
    mass_flags: tuple[bool, bool] | None = None,
    mass_scale: str = "GeV / 1000 (TeV)",
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar document (JSON-able). ``provenance``: ``training_config``, ``dataset``
    (:func:`dataset_record`) and ``choice`` (the epoch and why), each None when unknown."""
    import keras

    from .preprocess import from_constants

    k = mass_feature_count(model)
    extra = mass_names(k, mass_flags)
    padding = _padding_values(scaling)
    inputs = []
    for i, (mi, t) in enumerate(zip(schema.MODEL_INPUTS, model.inputs, strict=True)):
        entry: dict[str, Any] = {
            "index": i,
            "name": mi.name,
            "keras_name": t.name,
            "onnx_name": t.name,
            "shape": [int(d) for d in t.shape[1:]],
            "table": mi.table,
            "features": [*mi.features, *extra],
            "coordinates": COORDINATES[mi.name],
        }
        if mi.slots:
            pad: dict[str, Any] = {
                "position": "end (after the filled slots); more objects are truncated",
                "values": padding[mi.name],
            }
            if k:
                pad["mass_features"] = "the jet's mass hypothesis, as in filled slots"
            entry.update({"slots": mi.slots, "slot_order": SLOT_ORDER[mi.name], "padding": pad})  # fmt: skip
        inputs.append(entry)
    out = model.outputs[0]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "crbatch_version": __version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "source": dict(source),
        "files": dict(files),
        "model_hash": model_hash,
        "model_hash_definition": "frugally-deep's: SHA-256 over each layer's weight bytes then its name",
        "inputs": inputs,
        "outputs": [
            {
                "name": model.output_names[0],
                "shape": [int(d) for d in out.shape[1:]],
                "activation": "softmax",
                "classes": [CLASS_NAMES[lab] for lab in schema.MODEL_OUTPUTS],
                "labels": [int(lab) for lab in schema.MODEL_OUTPUTS],
            }
        ],
        "parametrization": {
            "features": extra,
            "scale": mass_scale,
            "applied_to": "appended, in this order, to every slot of every constituent input (padding slots "
            "included) and to the jet vector; the value is the (mH, mS) hypothesis being scored",
        }
        if k
        else None,
        "scaling": scaling.as_dict(),
        "preprocessing": _ops(from_constants(scaling.constants, extra)),
        **provenance_block(provenance),
        "parity": dict(parity),
    }


def _ops(pre: Any) -> dict[str, Any] | None:
    return None if pre is None else pre.as_dict()


PROVENANCE_KEYS = ("training_config", "dataset", "choice")


def provenance_block(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The provenance keys of a sidecar (always present; None when unknown)."""
    p = dict(provenance or {})
    return {k: p.get(k) for k in PROVENANCE_KEYS}


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def onnx_metadata(doc: Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` of the ONNX file: the whole sidecar plus a few flat keys for quick reading."""
    ins: Sequence[Mapping[str, Any]] = doc["inputs"]
    choice = doc.get("choice") or {}
    dataset = doc.get("dataset") or {}
    return {
        ONNX_KEY: dumps(doc),
        "crbatch.inputs": ",".join(i["name"] for i in ins),
        "crbatch.input_shapes": json.dumps([i["shape"] for i in ins]),
        "crbatch.outputs": ",".join(doc["outputs"][0]["classes"]),
        "crbatch.scaling": str(doc["scaling"]["name"]),
        "crbatch.version": str(doc["crbatch_version"]),
        "crbatch.model_hash": str(doc["model_hash"]),
        "crbatch.epoch": str(choice.get("epoch", (doc.get("source") or {}).get("epoch", ""))),
        "crbatch.epoch_why": str(choice.get("why", "")),
        "crbatch.dataset_build_id": str(dataset.get("build_id") or dataset.get("identity") or ""),
        "crbatch.training_config": json.dumps(doc.get("training_config"), sort_keys=False),
        "crbatch.feature_ops": json.dumps(doc.get("preprocessing")),
    }
