"""The preprocessing as per-variable operations: what a C++ program does to each raw quantity.

:mod:`crbatch.scaling` scales the schema's tables; this module restates that scaling per model
input and per feature, in the network's feature order, as plain numbers — no formula strings —
so that a C++ consumer (DiVertAnalysis with frugally-deep, Athena with ONNX) can apply it:

============  =====================================================================================
``op``        what the feature becomes (``x`` is the raw value of that feature in that slot)
============  =====================================================================================
``none``      ``x``
``affine``    ``(x - subtract) / divide`` (float32, subtraction first)
``fraction``  ``x / Σ_{f in denominator} x_f`` over the slot's features ``denominator`` (the
              cluster's energy layers); 0 when that sum is 0
``flip``      ``x · s``, with ``s = -1`` when the jet's ``Σ_slots x · w < 0`` (``w``: the
              ``flip.weight`` feature of the same slot, raw or after its own op), else ``+1``
============  =====================================================================================

then every empty slot (``valid`` false: after the filled ones) takes ``padding`` (one value per
feature). :func:`preprocessing_of` builds the description from a :class:`~crbatch.scaling.ScalingConfig`;
:meth:`Preprocessing.apply` applies it in NumPy (the tests check it equals ``scale_tables`` on real
jets); :mod:`crbatch.export.onnx_raw` builds the same operations into an ONNX graph;
:func:`convert` turns inputs scaled one way into inputs scaled another way (a baseline model fed
with its own preprocessing on the same test jets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .. import schema
from ..scaling import LAYERS, ScalingConfig, padding_rows

FORMAT = "crbatch-feature-ops"
FORMAT_VERSION = 1
Op = Literal["none", "affine", "fraction", "flip"]
UNITS = {
    ("clusters", "pt"): "MeV", ("clusters", "time"): "ns", **{("clusters", f): "MeV" for f in LAYERS},
    ("tracks", "pt"): "GeV", ("tracks", "d0"): "mm", ("tracks", "z0"): "mm", ("msegs", "t0"): "ns",
    ("jet", "pt"): "GeV",
}  # fmt: skip


class Incompatible(ValueError):
    """Two preprocessings differ in a way that cannot be undone from already-scaled values."""


@dataclass(frozen=True)
class FeatureOp:
    """How one feature of one model input is made from its raw value."""

    feature: str
    op: Op = "none"
    subtract: float = 0.0
    divide: float = 1.0
    denominator: tuple[str, ...] = ()
    unit: str = ""  # unit of the RAW value ("" = none)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"feature": self.feature, "op": self.op, "unit": self.unit}
        if self.op == "affine":
            d.update(subtract=self.subtract, divide=self.divide)
        if self.op == "fraction":
            d["denominator"] = list(self.denominator)
        return d


@dataclass(frozen=True)
class Flip:
    """The η flip of one input: ``feature`` times −1 in every slot of a jet whose ``Σ feature·weight < 0``."""

    feature: str
    weight: str
    weight_stage: Literal["raw", "scaled"]  # ``weight`` before or after its own op (the reference: scaled)

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "weight": self.weight, "weight_stage": self.weight_stage,
                "sum_over": "valid slots", "flip_when": "sum < 0"}  # fmt: skip


@dataclass(frozen=True)
class InputOps:
    """The operations of one model input (features in the network's order)."""

    name: str
    slots: int | None
    features: tuple[FeatureOp, ...]
    flip: Flip | None = None
    padding: tuple[float, ...] = ()  # what an empty slot holds after preprocessing

    def index(self, feature: str) -> int:
        return [f.feature for f in self.features].index(feature)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "slots": self.slots, "features": [f.as_dict() for f in self.features]}
        if self.slots:
            d["flip"] = self.flip.as_dict() if self.flip else None
            d["padding"] = list(self.padding)
        return d


@dataclass(frozen=True)
class Preprocessing:
    """Per-variable preprocessing of every model input, plus the mass hypothesis of a parametrised model."""

    scaling: str  # crbatch.scaling name (crbatch-v1, reference-exact)
    inputs: tuple[InputOps, ...]
    mass_features: tuple[str, ...] = ()
    mass_divide: float = 1000.0  # GeV → TeV
    notes: tuple[str, ...] = field(default=())

    def input(self, name: str) -> InputOps:
        return next(i for i in self.inputs if i.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scaling": self.scaling,
            "ops": {"none": "x", "affine": "(x - subtract) / divide", "fraction": "x / sum(denominator features of the slot), 0 if that sum is 0",
                    "flip": "x * s, s = -1 when sum over valid slots of x * weight < 0 else +1"},
            "order": "flip decision from the raw slot values, then every feature's op, then empty slots set to padding",
            "inputs": [i.as_dict() for i in self.inputs],
            "mass_hypothesis": {"features": list(self.mass_features), "divide": self.mass_divide,
                                "unit_in": "GeV", "appended_to": "every slot (padding included) and the jet vector"}
            if self.mass_features else None,
            "notes": list(self.notes),
        }  # fmt: skip

    # --- NumPy application ------------------------------------------------------------------
    def apply(self, raw: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs (float32, network feature order) from raw ones of the same shape.

        ``raw[name]``: (N, slots, features) or (N, features) for the jet; ``valid[name]``: (N, slots) bool.
        """
        out = {}
        for ops in self.inputs:
            x = np.asarray(raw[ops.name], np.float32)
            out[ops.name] = _apply_input(ops, x, None if ops.slots is None else np.asarray(valid[ops.name], bool))
        return out


def _affine(x: np.ndarray, f: FeatureOp) -> np.ndarray:
    return (x - np.float32(f.subtract)) / np.float32(f.divide)


def _apply_input(ops: InputOps, x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    y = np.empty_like(x, dtype=np.float32)
    sign = None
    if ops.flip is not None and valid is not None:
        fl = ops.flip
        w = x[..., ops.index(fl.weight)]
        if fl.weight_stage == "scaled":
            w = _one(ops.features[ops.index(fl.weight)], x, ops, w)
        s = np.einsum("ij,ij->i", x[..., ops.index(fl.feature)] * valid, w, dtype=np.float64)
        sign = np.where(s < 0, np.float32(-1), np.float32(1))[:, None]
    for j, f in enumerate(ops.features):
        col = x[..., j]
        if f.op == "flip":
            y[..., j] = col * sign if sign is not None else col
        else:
            y[..., j] = _one(f, x, ops, col)
    if valid is not None:
        pad = np.asarray(ops.padding, np.float32)
        y[~valid] = pad
    return y


def _one(f: FeatureOp, x: np.ndarray, ops: InputOps, col: np.ndarray) -> np.ndarray:
    if f.op == "affine":
        return _affine(col, f)
    if f.op == "fraction":
        total = x[..., [ops.index(d) for d in f.denominator]].sum(axis=-1)
        inv = np.zeros_like(total)
        np.divide(np.float32(1), total, out=inv, where=total != 0)
        return col * inv
    return col


# --- from a ScalingConfig --------------------------------------------------------------------------


def preprocessing_of(cfg: ScalingConfig, mass_features: Sequence[str] = ()) -> Preprocessing:
    """The per-variable description of ``cfg`` (crbatch.scaling's ``scale_tables`` restated)."""
    w = cfg.effective()
    exact = cfg.reference_exact
    pads = padding_rows(cfg)
    inputs = []
    for mi in schema.MODEL_INPUTS:
        feats = []
        for name in mi.features:
            unit = UNITS.get((mi.name, name), "")
            op = FeatureOp(name, "none", unit=unit)
            if mi.name == "jet" and name == "pt":
                lo, hi = w["jet_pt"]
                op = FeatureOp(name, "affine", lo, hi - lo, unit=unit)
            elif mi.name == "clusters" and name == "pt":
                lo, hi = w["cluster_pt"]
                # the reference subtracts the GeV edge from MeV values (reference-conversion.md §7)
                op = FeatureOp(name, "affine", lo if exact else 1000.0 * lo, (hi - lo) * 1000.0, unit=unit)
            elif mi.name == "clusters" and name in LAYERS:
                op = FeatureOp(name, "fraction", denominator=LAYERS, unit=unit)
            elif mi.name == "tracks" and name == "pt":
                lo, hi = w["track_pt"]
                op = FeatureOp(name, "affine", lo, hi - lo, unit=unit)
            elif mi.name == "tracks" and name == "z0":
                op = FeatureOp(name, "affine", 0.0, cfg.track_z0_scale, unit=unit)
            elif mi.name in ("clusters", "tracks") and name == "eta":
                op = FeatureOp(name, "flip", unit=unit)
            feats.append(op)
        flip = None
        if mi.name in ("clusters", "tracks"):
            stage: Literal["raw", "scaled"] = "scaled" if (exact and mi.name == "tracks") else "raw"
            flip = Flip("eta", "pt", stage)
        padding = tuple(float(pads[mi.table][f]) for f in mi.features) if mi.slots else ()
        inputs.append(InputOps(mi.name, mi.slots, tuple(feats), flip, padding))
    notes: tuple[str, ...] = ()
    if exact:
        notes = ("reference-exact: the reference's formulas, bugs included (cluster pT minus the GeV edge; "
                 "tracks scaled with the jet window and flipped by their scaled pT)",)  # fmt: skip
    return Preprocessing(cfg.name, tuple(inputs), tuple(mass_features), notes=notes)


def from_constants(constants: Mapping[str, Any] | None, mass_features: Sequence[str] = ()) -> Preprocessing | None:
    """:func:`preprocessing_of` the constants a dataset or sidecar records; None when they are unusable."""
    try:
        return preprocessing_of(ScalingConfig.from_constants(constants or {}), mass_features)
    except (ValueError, KeyError, TypeError):
        return None


IDENTITY_NAME = "raw"


def identity(mass_features: Sequence[str] = ()) -> Preprocessing:
    """No preprocessing (raw values; empty slots zero): the inputs of a graph that scales by itself."""
    inputs = tuple(
        InputOps(mi.name, mi.slots, tuple(FeatureOp(f, unit=UNITS.get((mi.name, f), "")) for f in mi.features), None,
                 tuple(0.0 for _ in mi.features) if mi.slots else ())
        for mi in schema.MODEL_INPUTS
    )  # fmt: skip
    return Preprocessing(IDENTITY_NAME, inputs, tuple(mass_features))


# --- conversion between two preprocessings (baselines) -------------------------------------------


def _same(a: FeatureOp, b: FeatureOp) -> bool:
    return (a.op, a.denominator) == (b.op, b.denominator) and (
        a.op != "affine"
        or (np.float32(a.subtract), np.float32(a.divide)) == (np.float32(b.subtract), np.float32(b.divide))
    )


def _flip_equivalent(src: InputOps, dst: InputOps) -> bool:
    """Both flip by the same sign: raw weights and weights after an affine op without offset agree."""
    a, b = src.flip, dst.flip
    if a is None or b is None:
        return a is b

    def positive_multiple(ops: InputOps, fl: Flip) -> bool:
        if fl.weight_stage == "raw":
            return True
        f = ops.features[ops.index(fl.weight)]
        return f.op == "none" or (f.op == "affine" and f.subtract == 0 and f.divide > 0)

    return (a.feature, a.weight) == (b.feature, b.weight) and positive_multiple(src, a) and positive_multiple(dst, b)


def check_convertible(src: Preprocessing, dst: Preprocessing) -> None:
    """Raise :class:`Incompatible` unless inputs preprocessed by ``src`` can be re-expressed as ``dst``'s."""
    problems = []
    for si, di in zip(src.inputs, dst.inputs, strict=True):
        for a, b in zip(si.features, di.features, strict=True):
            if _same(a, b) or (a.op in ("affine", "none") and b.op in ("affine", "none")):
                continue
            if a.op == "flip" and b.op == "none" and dst.scaling == IDENTITY_NAME:
                continue  # raw inputs of a graph that flips by itself: the flipped value is a valid raw one
            if a.op == "fraction" and b.op == "none" and dst.scaling == IDENTITY_NAME:
                continue  # fractions are valid raw energies (the graph recomputes the same fractions)
            problems.append(f"{si.name}.{a.feature}: {a.op} vs {b.op}")
        if si.flip is not None and di.flip is not None and not _flip_equivalent(si, di):
            problems.append(f"{si.name}: η flip by {si.flip.weight_stage} vs {di.flip.weight_stage} {di.flip.weight}")
        if (si.flip is None) != (di.flip is None) and dst.scaling != IDENTITY_NAME:
            problems.append(f"{si.name}: η flip in one preprocessing only")
    if problems:
        raise Incompatible(f"{src.scaling} → {dst.scaling}: " + "; ".join(problems))


def convert(
    xs: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], src: Preprocessing, dst: Preprocessing
) -> dict[str, np.ndarray]:
    """Inputs preprocessed by ``src`` → the same jets preprocessed by ``dst`` (affine ops undone and
    redone; identical ops passed through; empty slots set to ``dst``'s padding)."""
    check_convertible(src, dst)
    out = {}
    for si, di in zip(src.inputs, dst.inputs, strict=True):
        x = np.asarray(xs[si.name], np.float32)
        y = np.array(x, dtype=np.float32, copy=True)
        for j, (a, b) in enumerate(zip(si.features, di.features, strict=True)):
            if _same(a, b) or b.op in ("flip", "fraction") or (b.op == "none" and a.op in ("flip", "fraction")):
                continue
            raw = x[..., j] * np.float32(a.divide) + np.float32(a.subtract) if a.op == "affine" else x[..., j]
            y[..., j] = _affine(raw, b) if b.op == "affine" else raw
        if si.slots:
            v = np.asarray(valid[si.name], bool)
            y[~v] = np.asarray(di.padding, np.float32)
        out[si.name] = y
    return out


def same_preprocessing(a: Preprocessing | None, b: Preprocessing | None) -> bool:
    """Whether ``a`` and ``b`` turn every raw jet into the same inputs."""
    if a is None or b is None:
        return False
    da, db = asdict(a), asdict(b)
    da.pop("notes"), db.pop("notes")
    return da == db
