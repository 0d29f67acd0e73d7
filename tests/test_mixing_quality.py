"""A class-grouped training file (the order of a reference built file, which ``convert legacy-pkl``
keeps) trains as well as a shuffled copy of the same jets (issue 12, point 3).

The synthetic classes separate perfectly, which would hide a badly mixed training: a seeded 30 % of
the training labels are randomised (the test split stays clean), as in ``bench/mixing.py``. The old
contiguous slices (``shuffle_window: 0``) on the grouped file are the control: single-class batches
make the network learn signal vs BIB clearly worse.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the datasets and scored files are lz4-compressed
import numpy as np
import pytest

from crbatch import schema
from crbatch.build.synthetic import write_random_shard
from crbatch.cli import main
from crbatch.evaluate.metrics import roc_curve

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

OPTIONS = ["--epochs", "2", "--batch-size", "256", "--frac-list", "1.0", "--seed", "1"]


def _reseal(f: h5py.File) -> None:
    for k in (schema.A_CHECKSUM, schema.A_COMPLETE):
        if k in f.attrs:
            del f.attrs[k]
    schema.mark_complete(f)  # changed on purpose: sealed again


def _datasets(tmp: Path) -> tuple[Path, Path]:
    shards, shuffled, grouped = tmp / "shards", tmp / "shuffled", tmp / "grouped"
    per = 3000
    for name, kind, n, seed, dsid in (("qcd", "qcd", 2 * per, 1, None), ("sig", "sig", per, 2, None),
                                      ("bib", "bib", per, 3, None), ("data", "data", per, 4, None),
                                      ("qcd_cr", "qcd", per, 5, 361023)):  # fmt: skip
        write_random_shard(shards / f"{name}.h5", kind, n, seed, **({"dsid": dsid} if dsid else {}))
    assert main(["-q", "build", str(shards), "--output-dir", str(shuffled)]) == 0
    with h5py.File(shuffled / "main_train.h5", "r+") as f:
        j = f["jets"][:]
        rng = np.random.default_rng(11)
        hit = rng.random(len(j)) < 0.3
        j["label"][hit] = rng.permutation(j["label"])[hit]
        f["jets"][:] = j
        _reseal(f)
    grouped.mkdir()
    for p in shuffled.glob("*"):
        if p.name != "main_train.h5":
            (grouped / p.name).symlink_to(p.resolve())
    with h5py.File(shuffled / "main_train.h5") as f, h5py.File(grouped / "main_train.h5", "w") as o:
        order = np.argsort(f["jets"]["label"], kind="stable")
        for name in ("jets", *schema.TABLES):
            o.create_dataset(name, data=f[name][:][order], chunks=f[name].chunks, **schema.compression())
        for k, v in f.attrs.items():
            o.attrs[k] = v
        _reseal(o)
    with h5py.File(grouped / "main_train.h5") as f:
        assert np.all(np.diff(f["jets"]["label"]) >= 0)  # really grouped
    return shuffled, grouped


def _auc_sig_vs_bib(data: Path, test: Path, work: Path, *extra: str) -> float:
    runs, scored = work / "runs", work / "scored"
    assert main(["-q", "train", "--data", str(data), "--output-dir", str(runs), *OPTIONS, *extra]) == 0
    assert main(["-q", "score", str(test), "--model", "default/0/-1", "--base", str(runs),
                 "--output-dir", str(scored)]) == 0  # fmt: skip
    with h5py.File(next(scored.glob("*.scored.h5"))) as f:
        j = f["jets"][:]
    return roc_curve(j["jet_nn_sig"][j["label"] == 1], j["jet_nn_sig"][j["label"] == 2]).auc


def test_grouped_file_trains_as_well_as_a_shuffled_one(tmp_path):
    shuffled, grouped = _datasets(tmp_path)
    test = shuffled / "main_test.h5"
    auc_shuffled = _auc_sig_vs_bib(shuffled, test, tmp_path / "a")
    auc_grouped = _auc_sig_vs_bib(grouped, test, tmp_path / "b")
    auc_contiguous = _auc_sig_vs_bib(grouped, test, tmp_path / "c", "--shuffle-window", "0")
    assert auc_grouped >= auc_shuffled - 0.02, (auc_grouped, auc_shuffled)
    # the control: what the old contiguous slices did to the same grouped file
    assert auc_contiguous < auc_grouped - 0.02, (auc_contiguous, auc_grouped)
