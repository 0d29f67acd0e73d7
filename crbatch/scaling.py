"""Feature scaling: the reference's build-time ``pre_process``, with its bugs fixed (or kept, on request).

Shared by ``crbatch build`` (scales once, writes the constants into the dataset's attributes), the
streaming reader (scales raw shards on the fly with the same code) and model export (ships the
constants with the model). Works on the schema's structured tables, so padding is known from
``valid`` instead of being guessed from zeros.

What the reference does (reference-conversion.md §7) and what changes here by default:

==========================  ==========================================  ==========================================
feature                     reference ``pre_process``                   crbatch (``reference_exact=False``)
==========================  ==========================================  ==========================================
jet pT                      (pt − min)/(max − min), GeV                 same
cluster pT (MeV)            (pt − min)/((max − min)·1000): GeV ``min``   (pt − 1000·min)/(1000·(max − min)): min in
                            subtracted from MeV values                  MeV; padding stays 0
cluster η flip              × −1 if Σ η·pT(raw) < 0                      same (valid slots only)
layer fractions (8/cluster) l/Σl; empty slots 0/0 = NaN                 l/Σl for valid slots with Σl ≠ 0, else 0
track pT (GeV)              jet window; padding −min/(max − min)        own window ``track_pt`` (default 0–100
                                                                        GeV); padding stays 0
track z0                    z0/250                                      same
track η flip                × −1 if Σ η·pT(**scaled**) < 0 (inverted     × −1 if Σ η·pT(raw) < 0
                            for sub-threshold tracks)
untouched                   jet η/φ, cluster φ/time, track φ/d0/χ²/      same
                            hits, all muon-segment features
==========================  ==========================================  ==========================================

With ``reference_exact=True`` every formula above is the reference's, bugs included (the NaN layer
fractions are then set to 0, as the reference's loader did before training, unless ``keep_nan``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import schema

SCALING_VERSION = "crbatch-v1"
REFERENCE_NAME = "reference-exact"
LEGACY_NAME = "legacy-reference"  # legacy files scaled by the reference itself, constants unknown

LAYERS = ("l1ecal", "l1hcal", "l2ecal", "l2hcal", "l3ecal", "l3hcal", "l4ecal", "l4hcal")


class ScalingConfig(BaseModel):
    """Scaling constants. Windows are in GeV; a window [lo, hi] maps lo → 0 and hi → 1 (no clipping)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    jet_pt: tuple[float, float] = Field(
        (0.0, 500.0), description="jet pT window, GeV (reference: min/max_jet_pt 0/500)"
    )
    cluster_pt: tuple[float, float] | None = Field(
        None, description="cluster pT window, GeV (null: the jet window, as the reference)"
    )
    track_pt: tuple[float, float] = Field(
        (0.0, 100.0), description="track pT window, GeV (the reference used the jet window)"
    )
    track_z0_scale: float = Field(250.0, gt=0, description="track z0 is divided by this (mm)")
    reference_exact: bool = Field(
        False, description="reproduce the reference's pre_process exactly, bugs included (for comparisons)"
    )

    @model_validator(mode="after")
    def _windows(self) -> ScalingConfig:
        for name in ("jet_pt", "cluster_pt", "track_pt"):
            w = getattr(self, name)
            if w is not None and not w[0] < w[1]:
                raise ValueError(f"scaling.{name}: lower edge {w[0]} must be below upper edge {w[1]}")
        return self

    @property
    def name(self) -> str:
        return REFERENCE_NAME if self.reference_exact else SCALING_VERSION

    def effective(self) -> dict[str, tuple[float, float]]:
        """The windows actually used (the reference scales everything with the jet window)."""
        if self.reference_exact:
            return {"jet_pt": self.jet_pt, "cluster_pt": self.jet_pt, "track_pt": self.jet_pt}
        return {"jet_pt": self.jet_pt, "cluster_pt": self.cluster_pt or self.jet_pt, "track_pt": self.track_pt}

    def constants(self) -> dict[str, Any]:
        """Everything needed to redo the scaling elsewhere (C++ export, ONNX preprocessing), as JSON."""
        w = self.effective()
        exact = self.reference_exact
        return {
            "name": self.name,
            "reference_exact": exact,
            "jet_pt": list(w["jet_pt"]),
            "cluster_pt": list(w["cluster_pt"]),
            "cluster_pt_unit": "MeV",
            "cluster_pt_formula": "(pt - min)/((max - min)*1000)" if exact else "(pt - 1000*min)/((max - min)*1000)",
            "track_pt": list(w["track_pt"]),
            "track_z0_scale": self.track_z0_scale,
            "eta_flip": {"clusters": "raw_pt", "tracks": "scaled_pt" if exact else "raw_pt"},
            "layer_fractions": list(LAYERS),
            "padding": "scaled like real slots; empty layer fractions NaN then 0" if exact else "0",
            "unscaled": {
                "jets": ["eta", "phi"], "clusters": ["phi", "time"],
                "tracks": ["phi", "d0", "chiSquared", "vertex_nParticles", "PixelShared", "PixelHoles", "PixelHits",
                           "SCTHits", "SCTHoles", "SCTShared"],
                "msegs": list(schema.MSEG_FEATURES),
            },
            "inputs": [{"name": m.name, "shape": list(m.shape), "features": list(m.features)}
                       for m in schema.MODEL_INPUTS],
        }  # fmt: skip

    @classmethod
    def from_constants(cls, c: Mapping[str, Any]) -> ScalingConfig:
        """Inverse of :meth:`constants` (e.g. from a dataset's ``scaling`` attribute). The legacy
        reference scaling (:func:`legacy_constants`) gives the reference's pre_process, which is how
        raw inputs must be scaled for a network trained on such files."""
        if c.get("name") not in (SCALING_VERSION, REFERENCE_NAME, LEGACY_NAME):
            raise ValueError(f"unknown scaling {c.get('name')!r}")
        return cls(
            jet_pt=tuple(c["jet_pt"]),
            cluster_pt=tuple(c["cluster_pt"]),
            track_pt=tuple(c["track_pt"]),
            track_z0_scale=c["track_z0_scale"],
            reference_exact=bool(c["reference_exact"]) or c.get("name") == LEGACY_NAME,
        )


def legacy_constants() -> dict[str, Any]:
    """Constants of files the reference scaled itself (legacy pickles): its ``pre_process`` with its
    default jet window 0–500 GeV, the only window its test files fit (jet_pt ≥ 0.08 = 40 GeV / 500).
    The reference recorded none, so they are assumed; the name says so."""
    c = ScalingConfig(reference_exact=True).constants()
    c["name"] = LEGACY_NAME
    c["assumed"] = "scaled by the reference's own build; its constants are not recorded: its defaults assumed"
    return c


def float_view(table: np.ndarray) -> np.ndarray:
    """(…, slots, features) float32 view, in storage order, of a schema constituent table (no copy).

    The schema's object dtypes are ``valid`` (1 byte) followed by packed float32 features, so the
    features of a C-contiguous table form a strided float32 array; arithmetic on it is several
    times faster than field by field.
    """
    if not table.flags.c_contiguous:
        raise ValueError("float_view needs a C-contiguous table")
    dt = table.dtype
    assert dt.names is not None and dt.fields is not None  # a structured (schema) dtype
    return np.ndarray(
        shape=(*table.shape, len(dt.names) - 1), dtype="<f4", buffer=table, offset=dt.fields[dt.names[1]][1],
        strides=(*table.strides, 4),
    )  # fmt: skip


def _pos(table: str) -> dict[str, int]:
    return {f: i for i, f in enumerate(schema.TABLES[table].features)}


_C, _T = _pos("clusters"), _pos("tracks")
_LAYER_POS = [_C[n] for n in LAYERS]
assert list(range(_LAYER_POS[0], _LAYER_POS[0] + len(LAYERS))) == _LAYER_POS, "layer features must be adjacent"
_LAYERS = slice(_LAYER_POS[0], _LAYER_POS[0] + len(LAYERS))


def _flip_eta(eta: np.ndarray, weight_pt: np.ndarray) -> None:
    """Flip η (in place) of every slot of the jets whose pT-weighted η sum is negative."""
    s = np.einsum("ij,ij->i", eta, weight_pt, dtype=np.float64)
    np.negative(eta, out=eta, where=(s < 0)[:, None])


def scale_tables(
    tables: Mapping[str, np.ndarray], cfg: ScalingConfig, *, keep_nan: bool = False, inplace: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scaled constituent tables and the scaled jet pT.

    ``tables`` holds the schema tables ``jets``, ``clusters``, ``tracks``, ``msegs`` (raw shard
    values). Unless ``inplace``, the input is not modified (the cluster and track tables are
    copied; muon segments are not scaled and are returned as given). ``keep_nan`` (reference-exact
    only) leaves the reference's NaN layer fractions in place instead of zeroing them.
    """
    w = cfg.effective()
    exact = cfg.reference_exact
    lo, hi = w["jet_pt"]
    jet_pt = (tables["jets"]["pt"].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    c, t = tables["clusters"], tables["tracks"]
    if not inplace:
        c, t = c.copy(), t.copy()
    else:
        c, t = np.ascontiguousarray(c), np.ascontiguousarray(t)

    # Clusters (pT in MeV).
    cv = float_view(c)
    valid = c["valid"]
    pt, eta = cv[..., _C["pt"]], cv[..., _C["eta"]]
    lo, hi = w["cluster_pt"]
    if exact:
        _flip_eta(eta, np.nan_to_num(pt))
        pt -= np.float32(lo)  # the reference subtracts the GeV edge from MeV values
    else:
        _flip_eta(eta, pt * valid)
        pt -= np.float32(1000.0 * lo)
    pt /= np.float32((hi - lo) * 1000.0)
    if not exact:
        pt *= valid  # padding stays 0
    layers = cv[..., _LAYERS]
    total = layers.sum(axis=-1)
    if exact:
        with np.errstate(divide="ignore", invalid="ignore"):
            layers /= total[..., None]
        if not keep_nan:  # what the reference's load_dataset did before training: ±inf, NaN → 0
            layers[~np.isfinite(layers)] = 0
    else:
        inv = np.zeros_like(total)
        np.divide(np.float32(1), total, out=inv, where=valid & (total != 0))
        layers *= inv[..., None]

    # Tracks (pT in GeV).
    tv = float_view(t)
    valid = t["valid"]
    pt, eta, z0 = tv[..., _T["pt"]], tv[..., _T["eta"]], tv[..., _T["z0"]]
    lo, hi = w["track_pt"]
    if not exact:
        _flip_eta(eta, pt * valid)
    pt -= np.float32(lo)
    pt /= np.float32(hi - lo)
    z0 /= np.float32(cfg.track_z0_scale)
    if exact:
        _flip_eta(eta, pt)  # the reference's bug: weighted with the scaled (often negative) pT
    else:
        pt *= valid
        z0 *= valid
    return {"clusters": c, "tracks": t, "msegs": tables["msegs"]}, jet_pt


def padding_rows(cfg: ScalingConfig) -> dict[str, np.ndarray]:
    """What one empty (``valid=False``) slot of each constituent table becomes after scaling: zero
    for crbatch's scaling; the reference's padding values (e.g. negative track pT) when exact."""
    empty = schema.empty_tables(1)
    scaled, _ = scale_tables(empty, cfg)
    return {t.name: scaled[t.name][0, 0].copy() for t in schema.OBJECT_TABLES}


def is_scaled(attr: Any) -> bool:
    """Whether a file's ``scaled`` attribute says its features are already scaled."""
    return attr not in (False, None, "", 0, "false", "False", "none")
