"""Scoring a run's test split with several models at once: the run's chosen epoch and its baselines.

Every model sees the SAME jets, batch by batch: the split is read once in contiguous slices, and
each :class:`Scorer` gets the batch in its own preprocessing (crbatch.export.preprocess.convert
re-expresses the dataset's scaled values in the model's scaling; a raw-input ONNX gets raw values
and validity masks; a scored file is joined on ``(runNumber, eventNumber, jet_index,
mcChannelNumber)``). A parametrised model gets the same (mH, mS) hypothesis per jet whichever model
it is: signal jets their truth, the others a seeded draw from the split's signal mass points.

Memory: per jet the scores of each model plus ~40 bytes of labels, weights and kinematics; the
inputs are streamed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import InputMissing, InputSchema
from ..export import preprocess as P
from ..schema import Label
from .analyze_results import ModelRef

log = logging.getLogger(__name__)

ID_FIELDS = ("runNumber", "eventNumber", "jet_index", "mcChannelNumber")
KINEMATICS = ("pt", "eta", "pt_scaled", "llp_mH", "llp_mS", "llp_Lxy", "llp_Lz", "llp_eta")
MASS_SCALE = 1000.0  # GeV → TeV, as training appends them


@dataclass
class Scorer:
    """A model ready to score test jets given in its own preprocessing.

    ``predict(inputs, valid, masses_gev)``: ``inputs`` maps the model input names to arrays in
    ``pre`` (or raw values for a raw-input graph), ``valid`` the validity masks, ``masses_gev`` the
    (N, 2) per-jet (mH, mS) hypotheses; returns (N, 3) [QCD, signal, BIB].
    ``lookup(ids)`` instead of ``predict`` for precomputed scores (a scored file).
    """

    ref: ModelRef
    pre: P.Preprocessing | None
    mass_names: list[str] = field(default_factory=list)
    predict: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], np.ndarray | None], np.ndarray] | None = None
    lookup: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


def keras_predict(model: Any, mass_names: Sequence[str]) -> Callable[..., np.ndarray]:
    """``Scorer.predict`` of a Keras classifier (masses appended in TeV, as in training)."""
    from .epoch import predict
    from .score import with_masses

    def run(xs: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray], m: np.ndarray | None) -> np.ndarray:
        arrays = [np.asarray(xs[name], np.float32) for name in schema.INPUT_NAMES]
        arrays = with_masses(arrays, mass_columns(m, mass_names, MASS_SCALE))
        return predict(model, arrays)

    return run


def mass_columns(m: np.ndarray | None, names: Sequence[str], divide: float = 1.0) -> np.ndarray | None:
    """The (N, k) columns ``names`` (mH, mS) of the per-jet hypotheses, divided by ``divide``."""
    if not names or m is None:
        return None
    cols = [m[:, 0] if n == "mH" else m[:, 1] for n in names]
    return (np.stack(cols, 1) / np.float32(divide)).astype(np.float32)


class MassDraw:
    """Mass hypotheses: signal jets their truth, others a draw from the split's signal (mH, mS) points (seeded)."""

    def __init__(self, main_path: Path, seed: int = 0):
        import h5py

        with h5py.File(main_path, "r") as f:
            j = f["jets"].fields(["label", "llp_mH", "llp_mS"])[:]
        sig = j[j["label"] == int(Label.SIGNAL)]
        if not len(sig):
            raise InputSchema(f"{main_path}: no signal jets to take mass hypotheses from (parametrised model)")
        self.points, counts = np.unique(np.stack([sig["llp_mH"], sig["llp_mS"]], 1), axis=0, return_counts=True)
        self.cdf = np.cumsum(counts) / counts.sum()
        self.rng = np.random.default_rng(seed)

    def __call__(self, jets: np.ndarray) -> np.ndarray:
        n = len(jets)
        i = np.minimum(np.searchsorted(self.cdf, self.rng.random(n), side="right"), len(self.cdf) - 1)
        drawn = self.points[i]
        sig = jets["label"] == int(Label.SIGNAL)
        return np.stack([np.where(sig, jets["llp_mH"], drawn[:, 0]), np.where(sig, jets["llp_mS"], drawn[:, 1])],
                        1).astype(np.float32)  # fmt: skip


@dataclass
class SplitScores:
    """Per-jet outputs of every scorer on one split, with what the metrics need."""

    path: str
    scores: dict[str, np.ndarray]  # ModelRef.key → (N, 3) float32
    label: np.ndarray
    weight: np.ndarray
    jets: dict[str, np.ndarray]  # KINEMATICS
    digest: str
    digests: dict[str, str]  # per scorer: digest of the jets its scores belong to
    pt_window: tuple[float, float] = (0.0, 500.0)

    def __len__(self) -> int:
        return len(self.label)

    def counts(self) -> dict[int, int]:
        labs, n = np.unique(self.label, return_counts=True)
        return {int(a): int(b) for a, b in zip(labs, n, strict=True)}


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest()


def _id_array(jets: np.ndarray) -> np.ndarray:
    out = np.zeros(len(jets), [(n, schema.JET_DTYPE[n]) for n in ID_FIELDS])
    for n in ID_FIELDS:
        out[n] = jets[n]
    return out


def dataset_preprocessing(attrs: Mapping[str, Any], where: Path) -> P.Preprocessing:
    """The per-variable preprocessing of a dataset's stored inputs (from its ``scaling`` attribute)."""
    pre = P.from_constants(attrs.get(schema.A_SCALING))
    if pre is None:
        raise InputSchema(f"{where}: no usable scaling constants in its attributes ({attrs.get(schema.A_SCALED)!r}); "
                          "rebuild it with this crbatch")  # fmt: skip
    return pre


def _inputs(jets: np.ndarray, tables: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from ..build.reader import dense

    xs = {m.name: dense(tables[m.table], m.name).copy() for m in schema.MODEL_INPUTS if m.slots}
    xs["jet"] = np.stack([jets["pt_scaled"], jets["eta"], jets["phi"]], axis=-1).astype(np.float32)
    valid = {m.name: np.asarray(tables[m.table]["valid"], bool) for m in schema.MODEL_INPUTS if m.slots}
    return xs, valid


def score_split(
    path: Path,
    scorers: Sequence[Scorer],
    *,
    weight: str,
    batch_size: int = 4096,
    max_jets: int | None = None,
    masses: MassDraw | None = None,
    what: str = "test split",
) -> SplitScores:
    """Stream ``path`` (a crbatch dataset) once through every scorer."""
    import h5py
    import hdf5plugin  # noqa: F401

    from ..progress import Progress
    from .epoch import jet_pt_window_from_attrs

    if not path.exists():
        raise InputMissing(f"{path}: {what} not found; give --data DIR (the output directory of `crbatch build`)")
    attrs = schema.check_input(path, "dataset")
    src_pre = dataset_preprocessing(attrs, path)
    for s in scorers:  # refuse a baseline its preprocessing cannot be re-expressed for, before any work
        if s.pre is not None and not P.same_preprocessing(src_pre, s.pre):
            try:
                P.check_convertible(src_pre, s.pre)
            except P.Incompatible as e:
                raise InputSchema(f"{s.ref.spec}: cannot feed it its own preprocessing from {path.name} ({e}); "
                                  "score its own inputs with `crbatch score` and give the scored file") from e  # fmt: skip
    scores: dict[str, list[np.ndarray]] = {s.ref.key: [] for s in scorers}
    looked: dict[str, list[np.ndarray]] = {s.ref.key: [] for s in scorers if s.lookup is not None}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "weight", "ids", *KINEMATICS)}
    with h5py.File(path, "r") as f:
        n_total = int(f["jets"].shape[0])
        n = n_total if max_jets is None else min(n_total, max_jets)
        names = f["jets"].dtype.names
        if weight != "none" and weight not in names:
            raise InputSchema(f"{path}: no weight column {weight!r} in its jets table")
        bar = Progress(n, f"{what} {path.name}", "jets")
        try:
            for a in range(0, n, batch_size):
                b = min(n, a + batch_size)
                jets = f["jets"][a:b]
                tables = {t.name: f[t.name][a:b] for t in schema.OBJECT_TABLES}
                xs, valid = _inputs(jets, tables)
                m = masses(jets) if masses is not None else np.stack([jets["llp_mH"], jets["llp_mS"]], 1)
                ids = _id_array(jets)
                for s in scorers:
                    if s.lookup is not None:
                        got, matched = s.lookup(ids)
                        scores[s.ref.key].append(got)
                        looked[s.ref.key].append(matched)
                        continue
                    feed = (
                        xs
                        if s.pre is None or P.same_preprocessing(src_pre, s.pre)
                        else P.convert(xs, valid, src_pre, s.pre)
                    )
                    assert s.predict is not None  # a scorer either looks up or predicts
                    out = np.asarray(s.predict(feed, valid, m), np.float32)
                    if out.shape != (b - a, 3):
                        raise InputSchema(
                            f"{s.ref.spec}: returned shape {out.shape} for {b - a} jets, expected ({b - a}, 3)"
                        )
                    scores[s.ref.key].append(out)
                parts["label"].append(jets["label"].astype(np.int8))
                parts["weight"].append(np.ones(b - a) if weight == "none" else jets[weight].astype(np.float64))
                parts["ids"].append(ids)
                for k in KINEMATICS:
                    parts[k].append(jets[k].astype(np.float32) if k in names else np.zeros(b - a, np.float32))
                bar.update(b - a)
        finally:
            bar.close()
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    digest = ids_digest(cat["ids"])
    digests = {s.ref.key: digest for s in scorers}
    for key, m_ids in looked.items():
        digests[key] = ids_digest(np.concatenate(m_ids)) if m_ids else ids_digest(np.zeros(0, cat["ids"].dtype))
    return SplitScores(
        str(path),
        {k: np.concatenate(v) if v else np.zeros((0, 3), np.float32) for k, v in scores.items()},
        cat["label"],
        cat["weight"],
        {k: cat[k] for k in KINEMATICS},
        digest,
        digests,
        jet_pt_window_from_attrs(attrs),
    )


def scored_lookup(path: Path) -> tuple[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """A scored file as ``lookup(ids) -> (scores, the ids found)``, and its attributes.

    Raises :class:`~crbatch.errors.InputSchema` when a test jet is not in the file.
    """
    from .score import SCORE_FIELDS, read_scored

    try:
        rows, attrs = read_scored(path)
    except schema.NotAcceptedError as e:
        raise InputSchema(str(e)) from e
    keys = _id_array(rows)
    void = np.dtype((np.void, keys.dtype.itemsize))
    kv = np.ascontiguousarray(keys).view(void).ravel()
    order = np.argsort(kv, kind="stable")
    sorted_kv = kv[order]
    if len(sorted_kv) > 1 and np.any(sorted_kv[1:] == sorted_kv[:-1]):
        raise InputSchema(f"{path}: a jet (runNumber, eventNumber, jet_index, mcChannelNumber) appears twice")
    values = np.stack([rows[f] for f in SCORE_FIELDS], 1).astype(np.float32)

    def lookup(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(ids).view(void).ravel()
        pos = np.minimum(np.searchsorted(sorted_kv, q), max(len(sorted_kv) - 1, 0))
        ok = sorted_kv[pos] == q if len(sorted_kv) else np.zeros(len(q), bool)
        if not ok.all():
            first = ids[np.flatnonzero(~ok)[0]]
            raise InputSchema(
                f"{path}: {int((~ok).sum())} of the test jets are not in this scored file (first: run "
                f"{first['runNumber']}, event {first['eventNumber']}, jet {first['jet_index']}); score the run's "
                "test split with the baseline model (`crbatch score main_test.h5 --model ...`)"
            )
        r = order[pos]
        return values[r], keys[r]

    return lookup, attrs
