"""Raw jets (unscaled schema tables) for the parity check of the raw-input ONNX graph.

Real jets come from a shard (raw by construction) or, for a dataset (already scaled), from the
shards it was built from: the dataset's ``shards`` attribute and ``jets.source`` name the shard,
``(runNumber, eventNumber, jet_index)`` the row — so the check runs on the very test jets.
Synthetic raw jets (:func:`synthetic_tables`) add edge cases real samples rarely hold (empty jets,
full jets, energy layers all zero).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..scaling import ScalingConfig, is_scaled, scale_tables

log = logging.getLogger(__name__)

ID = ("runNumber", "eventNumber", "jet_index")


@dataclass
class RawJets:
    """Raw schema tables of some jets and where they come from."""

    tables: dict[str, np.ndarray]
    origin: str

    def __len__(self) -> int:
        return len(self.tables["jets"])

    def raw_inputs(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(raw model inputs in the network's feature order, validity masks)."""
        from ..build.reader import dense

        raw = {m.name: dense(self.tables[m.table], m.name).copy() for m in schema.MODEL_INPUTS if m.slots}
        j = self.tables["jets"]
        raw["jet"] = np.stack([j["pt"], j["eta"], j["phi"]], axis=-1).astype(np.float32)
        valid = {m.name: np.asarray(self.tables[m.table]["valid"], bool) for m in schema.MODEL_INPUTS if m.slots}
        return raw, valid

    def scaled_inputs(self, cfg: ScalingConfig) -> list[np.ndarray]:
        """The model inputs as crbatch.scaling (the training path) makes them."""
        from ..build.reader import dense

        sc, jet_pt = scale_tables(self.tables, cfg)
        xs = [dense(sc[m.table], m.name) for m in schema.MODEL_INPUTS if m.slots]
        j = self.tables["jets"]
        xs.append(np.stack([jet_pt, j["eta"], j["phi"]], axis=-1).astype(np.float32))
        return [np.ascontiguousarray(x, np.float32) for x in xs]


def _open(path: Path) -> Any:
    import h5py
    import hdf5plugin  # noqa: F401

    return h5py.File(path, "r")


def _rows(f: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    out = {"jets": f["jets"][rows]}
    for t in schema.OBJECT_TABLES:
        out[t.name] = f[t.name][rows]
    return out


def _raw_jets_fields(jets: np.ndarray) -> np.ndarray:
    out = np.zeros(len(jets), schema.JET_DTYPE)
    assert schema.JET_DTYPE.names is not None
    for n in schema.JET_DTYPE.names:
        if n in (jets.dtype.names or ()):
            out[n] = jets[n]
    return out


def from_file(path: Path, n: int) -> RawJets | None:
    """Up to ``n`` real raw jets of a shard, or of the shards a dataset's first ``n`` jets come from."""
    try:
        attrs = schema.check_complete(path)
    except schema.NotAcceptedError as e:
        log.warning("%s: no raw jets from it (%s)", path, e)
        return None
    kind = attrs.get(schema.A_KIND)
    with _open(path) as f:
        m = min(n, int(f["jets"].shape[0]))
        if kind == "shard" and not is_scaled(attrs.get(schema.A_SCALED)):
            t = _rows(f, np.arange(m))
            return RawJets(t, f"{m} jets of {path}")
        if kind != "dataset":
            log.warning("%s: a %s file (scaled %r): no raw jets from it", path, kind, attrs.get(schema.A_SCALED))
            return None
        jets = f["jets"][:m]
    shards = attrs.get(schema.A_SHARDS) or []
    parts: list[dict[str, np.ndarray]] = []
    order: list[np.ndarray] = []
    for src in np.unique(jets["source"]):
        if not 0 <= src < len(shards):
            continue
        sp = Path(str(shards[src]))
        if not sp.is_absolute():
            sp = path.parent / sp
        try:
            sa = schema.check_complete(sp, "shard")
        except schema.NotAcceptedError as e:
            log.warning("%s: source shard unusable for the raw check (%s)", sp, e)
            continue
        if is_scaled(sa.get(schema.A_SCALED)):
            continue
        mine = np.flatnonzero(jets["source"] == src)
        with _open(sp) as g:
            ids = g["jets"].fields(list(ID))[:]
            key = {tuple(r): i for i, r in enumerate(ids.tolist())}
            rows = [key.get(tuple(jets[i][k] for k in ID)) for i in mine]
            found = [(i, r) for i, r in zip(mine, rows, strict=True) if r is not None]
            if not found:
                continue
            pos = np.array([r for _, r in found])
            srt = np.argsort(pos)
            t = _rows(g, pos[srt])
            inv = np.empty_like(srt)
            inv[srt] = np.arange(len(srt))
            parts.append({k: v[inv] for k, v in t.items()})
            order.append(np.array([i for i, _ in found]))
    if not parts:
        log.warning("%s: none of its source shards is readable here: no raw jets for the check", path)
        return None
    idx = np.argsort(np.concatenate(order), kind="stable")
    t = {k: np.concatenate([p[k] for p in parts])[idx] for k in parts[0]}
    t["jets"] = _raw_jets_fields(t["jets"])
    return RawJets(t, f"{len(t['jets'])} jets of {path} (raw values from its source shards)")


def synthetic_tables(n: int, seed: int = 0) -> RawJets:
    """``n`` raw jets with plausible units: varying filled slots (first jet empty, second full), pT and
    energies exponential and positive, some energy layers all zero, angles and times normal."""
    rng = np.random.default_rng(seed)
    t = schema.empty_tables(n)
    j = t["jets"]
    j["pt"] = rng.uniform(40.0, 600.0, n)
    j["eta"] = rng.uniform(-2.5, 2.5, n)
    j["phi"] = rng.uniform(-np.pi, np.pi, n)
    scale = {("clusters", "pt"): 8000.0, ("tracks", "pt"): 8.0, ("tracks", "d0"): 2.0, ("tracks", "z0"): 40.0}
    for tab in schema.OBJECT_TABLES:
        k = rng.integers(0, tab.slots + 1, n)
        k[:2] = (0, tab.slots)[: min(2, n)]
        valid = np.arange(tab.slots)[None, :] < k[:, None]
        a = t[tab.name]
        a["valid"] = valid
        for f in tab.features:
            if (tab.name, f) in scale:
                x = rng.exponential(scale[tab.name, f], (n, tab.slots))
                if f in ("d0", "z0"):
                    x *= rng.choice([-1.0, 1.0], (n, tab.slots))
            elif tab.name == "clusters" and f[:1] == "l" and f[1:2].isdigit():
                x = rng.exponential(400.0, (n, tab.slots)) * (rng.random((n, tab.slots)) > 0.3)
            else:
                x = rng.normal(size=(n, tab.slots))
            a[f] = np.where(valid, x, 0.0)
        if tab.name == "clusters" and n > 2:  # a jet whose clusters have no layer energy at all
            for f in tab.features:
                if f[:1] == "l" and f[1:2].isdigit():
                    a[f][2] = 0.0
    return RawJets(t, f"{n} synthetic raw jets (seed {seed})")


def concat(a: RawJets | None, b: RawJets | None) -> RawJets | None:
    if a is None or b is None:
        return a or b
    t = {k: np.concatenate([a.tables[k], b.tables[k]]) for k in a.tables}
    return RawJets(t, f"{a.origin} + {b.origin}")


def masses_gev(n: int, k: int, seed: int = 0) -> np.ndarray | None:
    """Random (mH, mS) hypotheses in GeV for a parametrised model's check (None without masses)."""
    if not k:
        return None
    return np.random.default_rng(seed).uniform(50.0, 1000.0, size=(n, k)).astype(np.float32)


def with_masses_tev(xs: list[np.ndarray], m_gev: np.ndarray | None, divide: float = 1000.0) -> list[np.ndarray]:
    from ..evaluate.score import with_masses

    return with_masses(xs, None if m_gev is None else m_gev / np.float32(divide))
