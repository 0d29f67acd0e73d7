"""Per-jet decisions of the build, each a pure function of the jet's identity and a seed.

Split, quota/fraction draws and shuffle order come from a hash (splitmix64) of
(runNumber, eventNumber[, jet_index, label]) — never from file order, file boundaries or a
random-number stream — so the same jets give the same datasets however they were sharded.
The split hashes only the event, so all jets of an event land in the same split (and a QCD event
used in both the main and the control-region dataset is in the same split in both).
"""

from __future__ import annotations

import numpy as np

from .. import schema
from .config import SplitFractions

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
TWO64 = 1 << 64

# One salt per decision, so that e.g. the per-file and per-class draws are independent.
SALT_SPLIT, SALT_FILE, SALT_CLASS, SALT_SHUFFLE = 0x5B1, 0xF11E, 0xC1A55, 0x5EED

SPLIT_RESOLUTION = 10_000  # split = hash mod 10000 compared with the cumulative fractions


def splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def mix(columns: list[np.ndarray], salt: int, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of the row-wise tuple of ``columns`` (integer arrays), salt and seed."""
    n = len(columns[0])
    h = np.full(n, splitmix64(np.uint64((salt * 0x100000001B3 + seed) % TWO64)), dtype=np.uint64)
    for col in columns:
        h = splitmix64(h ^ col.astype(np.int64).view(np.uint64))
    return h


def split_index(jets: np.ndarray, fractions: SplitFractions, split_seed: int) -> np.ndarray:
    """0 = train, 1 = val, 2 = test, from a hash of (runNumber, eventNumber)."""
    h = mix([jets["runNumber"], jets["eventNumber"]], SALT_SPLIT, split_seed)
    r = (h % np.uint64(SPLIT_RESOLUTION)).astype(np.int64)
    edges = np.round(np.cumsum([fractions.train, fractions.val]) * SPLIT_RESOLUTION).astype(np.int64)
    return np.searchsorted(edges, r, side="right").astype(np.int8)


def _jet_id(jets: np.ndarray) -> list[np.ndarray]:
    return [jets["runNumber"], jets["eventNumber"], jets["jet_index"], jets["label"]]


def file_hash(jets: np.ndarray, seed: int) -> np.ndarray:
    return mix(_jet_id(jets), SALT_FILE, seed)


def class_hash(jets: np.ndarray, seed: int) -> np.ndarray:
    return mix(_jet_id(jets), SALT_CLASS, seed)


def shuffle_key(jets: np.ndarray, seed: int) -> np.ndarray:
    """Sort key of the output: sorting by it is a seeded uniform shuffle, independent of input order."""
    return mix([*_jet_id(jets), jets["mcChannelNumber"]], SALT_SHUFFLE, seed)


def fraction_threshold(fraction: float) -> int | None:
    """Keep a jet when its hash < this (None: keep all)."""
    if fraction >= 1.0:
        return None
    return int(fraction * TWO64)


def below(h: np.ndarray, threshold: int | None) -> np.ndarray:
    if threshold is None:
        return np.ones(len(h), bool)
    if threshold >= TWO64:
        return np.ones(len(h), bool)
    return h < np.uint64(threshold)


def min_threshold(*ts: int | None) -> int | None:
    vals = [t for t in ts if t is not None]
    return min(vals) if vals else None


class SmallestK:
    """The k smallest hashes seen so far, in memory bounded by 2k (not by the number of jets)."""

    def __init__(self, k: int):
        self.k = k
        self.n = 0
        self._vals = np.empty(0, np.uint64)

    def add(self, h: np.ndarray) -> None:
        self.n += len(h)
        self._vals = np.concatenate([self._vals, h])
        if len(self._vals) > 2 * self.k:
            self._vals = np.partition(self._vals, self.k - 1)[: self.k]

    def threshold(self) -> int | None:
        """Keep hash < threshold to keep exactly the k smallest (None: fewer than k were seen)."""
        if self.n <= self.k:
            return None
        return int(np.partition(self._vals, self.k - 1)[self.k - 1]) + 1


def event_mask(jets: np.ndarray, event_filter: str) -> np.ndarray:
    if event_filter == "odd":
        return (jets["eventNumber"] % np.uint64(2)) == 1
    if event_filter == "even":
        return (jets["eventNumber"] % np.uint64(2)) == 0
    return np.ones(len(jets), bool)


def mass_mask(jets: np.ndarray, mass_points: list[tuple[float, float]] | None) -> np.ndarray:
    """Signal jets at one of ``mass_points`` (all jets pass when None; background always passes)."""
    if mass_points is None:
        return np.ones(len(jets), bool)
    sig = jets["label"] == int(schema.Label.SIGNAL)
    ok = np.zeros(len(jets), bool)
    for mh, ms in mass_points:
        ok |= np.isclose(jets["llp_mH"], mh) & np.isclose(jets["llp_mS"], ms)
    return ~sig | ok
