"""Test helper: schema-valid random shards (see :mod:`crbatch.build.synthetic`).

``write_random_shard(path, data_type, n_jets, seed, dsid=..., mH=..., mS=..., event_offset=...)``
writes one shard with class-dependent random content and the attributes the converter writes
(``metadata_histograms`` / ``sum_of_weights_initial`` for MC). ``write_split`` writes the same jets
as several shards, for split-determinism tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crbatch import schema
from crbatch.build.synthetic import random_tables, shard_attrs, write_random_shard, write_shard

__all__ = ["REPO", "SHARED", "random_tables", "write_random_shard", "write_set", "write_shard", "write_split"]

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"  # ../shared beside the repository (real reference files)


def write_split(
    directory: Path,
    tables: dict[str, np.ndarray],
    data_type: str,
    n_shards: int,
    *,
    order: str = "forward",
    prefix: str = "part",
    dsid: int = -1,
    mH: float = 0.0,
    mS: float = 0.0,
    sum_of_weights_initial: float | None = None,
) -> list[Path]:
    """The jets of ``tables`` as ``n_shards`` shards (contiguous pieces; ``order="reverse"`` writes
    the pieces, and the jets inside each piece, in reverse). Σw_initial is divided among them."""
    n = len(tables["jets"])
    cuts = np.linspace(0, n, n_shards + 1).astype(int)
    paths = []
    for i in range(n_shards):
        idx = np.arange(cuts[i], cuts[i + 1])
        if order == "reverse":
            idx = idx[::-1]
        part = {k: v[idx] for k, v in tables.items()}
        sw = None if sum_of_weights_initial is None else sum_of_weights_initial / n_shards
        attrs = shard_attrs(data_type, len(idx), dsid=dsid, mH=mH, mS=mS, sum_of_weights_initial=sw,
                            source=f"{prefix}_{i}")  # fmt: skip
        name = f"{prefix}_{(n_shards - 1 - i) if order == 'reverse' else i:03d}.h5"
        paths.append(write_shard(directory / name, part, attrs))
    return paths


def write_set(directory: Path, n: int = 2000, seed: int = 0, data: bool = True, bib: bool = True) -> Path:
    """A small shard set: two QCD slices, two signal mass points, BIB and data; returns ``directory``."""
    write_random_shard(directory / "qcd_361022_a.h5", "qcd", n, seed + 1, dsid=361022)
    write_random_shard(directory / "qcd_361023_a.h5", "qcd", n, seed + 2, dsid=361023)
    write_random_shard(directory / "sig_125_55.h5", "sig", n, seed + 3, mH=125, mS=55, dsid=311314)
    write_random_shard(directory / "sig_600_275.h5", "sig", n // 2, seed + 4, mH=600, mS=275, dsid=311424)
    if bib:
        write_random_shard(directory / "bib.h5", "bib", n // 2, seed + 5)
    if data:
        write_random_shard(directory / "data.h5", "data", n, seed + 6)
    return directory


def read(path: Path) -> dict[str, np.ndarray]:
    """All tables of an HDF5 file in the schema layout."""
    import h5py
    import hdf5plugin  # noqa: F401

    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("jets", *schema.TABLES)}


def ids(jets: np.ndarray) -> np.ndarray:
    """(runNumber, eventNumber, jet_index, label) rows as a sortable structured array."""
    return np.sort(jets[["runNumber", "eventNumber", "jet_index", "label"]].astype(
        [("runNumber", "u4"), ("eventNumber", "u8"), ("jet_index", "i2"), ("label", "i1")]
    ))  # fmt: skip
