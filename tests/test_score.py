"""``crbatch score``: streaming scoring of shards and datasets with a run's epoch, a .keras or an .onnx.

The model is a tiny random classifier in a fake run directory (tests/test_analyze.py's helpers);
the key physics check is that a raw shard scored with on-the-fly scaling gives the same scores as
its jets in the built (already scaled) dataset.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from test_analyze import HIST2, _make_datasets, _make_run

from crbatch import cli, schema
from crbatch.errors import ExitCode
from crbatch.evaluate import score_cli
from crbatch.evaluate.score import ID_FIELDS, SCORE_FIELDS, read_scored

pytest.importorskip("keras")
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _score_registered():
    orig = cli.build_parser

    def build_parser():
        p = orig()
        sub = p._subparsers._group_actions[0]
        if "score" not in sub.choices:
            score_cli.register(sub)
        return p

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "build_parser", build_parser)
        yield


def score(*args) -> int:
    return cli.main(["-q", "score", *map(str, args)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("score")
    ds = _make_datasets(base)
    root = base / "tr"
    _make_run(root, "s", 0, ds, HIST2)
    return base, ds, root


def _key(j: np.ndarray) -> list[tuple]:
    return list(zip(j["runNumber"].tolist(), j["eventNumber"].tolist(), j["jet_index"].tolist(), j["label"].tolist(),
                    strict=True))  # fmt: skip


def test_shard_and_dataset_scores_agree(setup, tmp_path):
    base, ds, root = setup
    shard = base / "shards" / "sig_125_55.h5"
    assert score(shard, ds / "main_test.h5", "--model", "s/0/-1", "--base", root, "--output-dir", tmp_path) == 0
    sj, sa = read_scored(tmp_path / "sig_125_55.scored.h5")
    dj, da = read_scored(tmp_path / "main_test.scored.h5")
    with h5py.File(shard) as f:
        raw = f["jets"][:]
    assert len(sj) == len(raw) and sa["n_jets"] == len(raw) and sa["kind"] == "scored"
    for name in ("eventNumber", "runNumber", "jet_index", "label", "pt", "eta", "phi", "mcEventWeight"):
        np.testing.assert_array_equal(sj[name], raw[name], err_msg=name)  # same rows, same order
    assert np.isnan(sj["weight_balanced"]).all() and np.isfinite(dj["weight_balanced"]).all()
    assert sa["scaling"]["applied"] is True and "main_train.h5" in sa["scaling"]["origin"]
    assert da["scaling"]["applied"] is False
    assert sa["model"]["spec"] == "s/0/-1" and len(sa["model"]["model_hash"]) == 64
    assert sa["source"]["path"] == str(shard.resolve()) and "no constituent tables" in sa["tables"]
    p = np.stack([sj[f] for f in SCORE_FIELDS], 1)
    assert np.allclose(p.sum(1), 1, atol=1e-5) and (p >= 0).all()
    # The shard's jets in the (scaled) test dataset get the same scores: the on-the-fly scaling is the build's.
    where = {k: i for i, k in enumerate(_key(sj))}
    common = [(where[k], i) for i, k in enumerate(_key(dj)) if k in where]
    assert len(common) > 10
    a, b = np.array(common).T
    for f in SCORE_FIELDS:
        np.testing.assert_allclose(sj[f][a], dj[f][b], atol=TOL, err_msg=f)


def test_scores_equal_the_model_on_reader_batches(setup, tmp_path):
    import keras

    from crbatch.build.reader import DatasetReader

    _, ds, root = setup
    model_file = root / "s" / "00000" / "epochs" / "001.keras"
    out = tmp_path / "one.h5"
    assert score(ds / "main_val.h5", "--model", model_file, "--out", out, "--batch-size", "100") == 0
    j, attrs = read_scored(out)
    model = keras.saving.load_model(model_file, compile=False)
    with DatasetReader(ds / "main_val.h5", batch_size=10_000, shuffle=False, prefetch=0) as rd:
        b = next(iter(rd))
    expect = model.predict([b[k] for k in schema.INPUT_NAMES], verbose=0)
    assert len(j) == len(expect)
    np.testing.assert_allclose(np.stack([j[f] for f in SCORE_FIELDS], 1), expect, atol=TOL)
    assert attrs["model"]["kind"] == "keras" and attrs["model"]["path"] == str(model_file)
    assert set(ID_FIELDS) <= set(j.dtype.names)


def test_idempotent_and_force(setup, tmp_path):
    _, ds, root = setup
    args = [ds / "main_test.h5", "--model", "s/0/1", "--base", root, "--output-dir", tmp_path]
    assert score(*args) == 0
    out = tmp_path / "main_test.scored.h5"
    before = out.stat().st_mtime_ns
    assert score(*args) == 0
    assert out.stat().st_mtime_ns == before  # complete for the same input and model: skipped
    assert score(*args, "--force") == 0
    assert out.stat().st_mtime_ns != before
    assert score(ds / "main_test.h5", "--model", "s/0/0", "--base", root, "--output-dir", tmp_path) == 0
    assert read_scored(out)[1]["model"]["path"].endswith("000.keras")  # another model: rescored
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_exit_codes(setup, tmp_path):
    _, ds, root = setup
    m = ["--model", "s/0/-1", "--base", root, "--output-dir", tmp_path]
    assert score(tmp_path / "missing.h5", *m) == ExitCode.INPUT_MISSING
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert score(bad, *m) == ExitCode.INPUT_CORRUPT
    other = tmp_path / "other.h5"
    other.write_bytes((ds / "main_test.h5").read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs[schema.A_SCHEMA] = 99
    assert score(other, *m) == ExitCode.INPUT_SCHEMA
    assert score(ds / "main_test.h5", "--model", "s/0/9", "--base", root) == ExitCode.INPUT_MISSING
    assert score(ds / "main_test.h5", "--model", "s/zero", "--base", root) == ExitCode.CONFIG
    assert score(ds / "main_test.h5", "--model", tmp_path / "none.onnx") == ExitCode.INPUT_MISSING
    assert score(ds / "main_test.h5", "--model", bad) == ExitCode.CONFIG  # neither .keras nor .onnx
    assert score(ds / "main_test.h5", ds / "main_val.h5", *m, "--out", tmp_path / "x.h5") == ExitCode.CONFIG
    assert score(ds / "main_test.h5") == ExitCode.CONFIG  # no model
    # one bad input among good ones: the good ones are written, the exit code is the bad one's
    assert score(bad, ds / "main_val.h5", *m) == ExitCode.INPUT_CORRUPT
    assert (tmp_path / "main_val.scored.h5").exists()
    # a scored file is not an input
    assert score(tmp_path / "main_val.scored.h5", *m, "--output-dir", tmp_path / "again") == ExitCode.INPUT_SCHEMA


def test_dataset_with_other_scaling_is_refused(setup, tmp_path):
    base, _, root = setup
    other = tmp_path / "ds"
    assert cli.main(["-q", "build", str(base / "shards"), "--output-dir", str(other),
                     "--set", "scaling.jet_pt=[0, 1000]"]) == 0  # fmt: skip
    m = ["--model", "s/0/-1", "--base", root, "--output-dir", tmp_path / "out"]
    assert score(other / "main_test.h5", *m) == ExitCode.INPUT_SCHEMA
    assert score(other / "main_test.h5", *m, "--ignore-scaling-mismatch") == 0


def test_parametrised_model_needs_a_hypothesis(setup, tmp_path):
    ds = setup[1]
    root = tmp_path / "tr"
    _make_run(root, "p", 0, ds, HIST2, epochs=(0,), mH_parametrization=True, mS_parametrization=True)
    m = ["--model", "p/0/0", "--base", root, "--output-dir", tmp_path]
    assert score(ds / "main_test.h5", *m) == ExitCode.CONFIG
    assert score(ds / "main_test.h5", *m, "--mass-hypothesis", "125", "55") == 0
    j, attrs = read_scored(tmp_path / "main_test.scored.h5")
    assert attrs["mass_hypothesis"] == [125.0, 55.0] and attrs["model"]["mass_features"] == ["mH", "mS"]
    assert np.isfinite(j["jet_nn_sig"]).all()


@pytest.mark.slow
def test_onnx_scores_agree_with_keras(setup, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("ONNX export needs the TensorFlow backend here")
    from crbatch.export import cli as export_cli

    base, _, root = setup
    p = cli.build_parser()
    sub = p._subparsers._group_actions[0]
    if "export" not in sub.choices:
        export_cli.register(sub)
    args = p.parse_args(["export", "s/0/1", "--base", str(root), "--format", "onnx", "--output-dir", str(tmp_path),
                         "--check-jets", "16"])  # fmt: skip
    assert args.func(args) == 0
    onnx_file = tmp_path / "s_00000_e001.onnx"
    shard = base / "shards" / "bib.h5"
    assert score(shard, "--model", onnx_file, "--out", tmp_path / "onnx.h5") == 0
    assert score(shard, "--model", "s/0/1", "--base", root, "--out", tmp_path / "keras.h5") == 0
    a, aa = read_scored(tmp_path / "onnx.h5")
    b, ba = read_scored(tmp_path / "keras.h5")
    for f in SCORE_FIELDS:
        np.testing.assert_allclose(a[f], b[f], atol=TOL)
    assert aa["model"]["kind"] == "onnx" and aa["model"]["model_hash"] == ba["model"]["model_hash"]
    # the ONNX file carries the scaling of the run's training data in its metadata
    assert aa["scaling"]["constants"] == ba["scaling"]["constants"]
    assert "ONNX metadata" in aa["scaling"]["origin"]


def test_print_config(capsys):
    assert score("x.h5", "--model", "a/0/1", "--print-config") == 0
    assert "model: a/0/1" in capsys.readouterr().out
