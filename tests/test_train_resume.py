"""``crbatch train``: run directories, errors and exit codes, checkpoints and exact resume.

Tiny datasets (a few hundred jets) are built once with ``crbatch build`` from random shards. The
resume tests compare EVERY array of the final checkpoint (weights, BatchNorm statistics, dropout
RNG states, both optimizers) of an interrupted-and-resumed run with an uninterrupted one: they are
bit-identical on CPU with TensorFlow (op determinism on) and with JAX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the datasets are lz4-compressed
import numpy as np
import pytest
from shards import write_set

from crbatch.errors import ExitCode
from crbatch.train import checkpoint, runs
from crbatch.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "32", "--frac-list", "0.5", "--eval-batch-size", "64"]


# TensorFlow tensors lack numpy 2's __array__(copy=...): Keras' convert_to_numpy warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    from crbatch.cli import main

    base = tmp_path_factory.mktemp("train_data")
    write_set(base / "shards", n=150, seed=4)
    assert main(["-q", "build", str(base / "shards"), "--output-dir", str(base / "ds")]) == 0
    return base / "ds"


def _train(argv: list[str]) -> int:
    from crbatch.train.cli import main

    return main(["-q", "train", *argv])


# --- run directories ------------------------------------------------------------------------------


def test_run_numbering(tmp_path):
    model = tmp_path / "default"
    assert runs.new_run(model).name == "00000"
    runs.new_run(model)
    assert runs.new_run(model).name == "00002"
    (model / "notes.txt").write_text("x")
    (model / "plots").mkdir()
    assert runs.new_run(model).name == "00003"
    assert runs.find_run(model, -1).name == "00003"
    assert runs.find_run(model, -4).name == "00000"
    assert runs.find_run(model, 10).name == "00010"  # ≥ 0: that run, created when claimed
    with pytest.raises(Exception, match="has 4 runs"):
        runs.find_run(model, -5)
    with pytest.raises(Exception, match="no runs"):
        runs.find_run(tmp_path / "other", -1)


@pytest.mark.parametrize(("arg", "expect"), [(0, "00000"), (1, "00001"), (-1, "00001"), (-2, "00000")])
def test_run_selection_like_the_reference(tmp_path, arg, expect):
    model = tmp_path / "m"
    runs.new_run(model)
    runs.new_run(model)
    assert runs.find_run(model, arg).name == expect


# --- errors -------------------------------------------------------------------------------------------


def test_missing_dataset_is_exit_10_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "tr"
    assert _train(["--data", str(tmp_path / "nowhere"), "--output-dir", str(out)]) == ExitCode.INPUT_MISSING
    assert "give --data DIR" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("ROOT") is None, reason="the demo production needs PyROOT (synth extra)")
def test_without_data_it_makes_and_trains_on_the_demo_datasets(tmp_path, monkeypatch):
    """`crbatch train` with no --data: demo/datasets is made (synthetic production → convert → build)
    when absent, reused when present, and a complete run directory is left."""
    from crbatch.demo import make_datasets

    monkeypatch.chdir(tmp_path)
    assert _train(["--epochs", "1"]) == 0
    ds = tmp_path / "demo" / "datasets"
    for role in ("main", "cr"):
        for split in ("train", "val", "test"):
            assert (ds / f"{role}_{split}.h5").is_file()
    run = tmp_path / "training_results" / "default" / "00000"
    for name in ("config.yaml", "history.csv", "history.json", "epochs/000.keras", "checkpoint.h5"):
        assert (run / name).is_file(), name
    stamp = (ds / "main_train.h5").stat().st_mtime_ns
    make_datasets(tmp_path / "demo")  # complete: nothing is regenerated
    assert (ds / "main_train.h5").stat().st_mtime_ns == stamp


def test_bad_config_is_exit_3(tmp_path, datasets):
    assert _train(["--data", str(datasets), "--output-dir", str(tmp_path), "--batch-size", "0"]) == ExitCode.CONFIG
    assert _train(["--data", str(datasets), "--set", "no_such_field=1"]) == ExitCode.CONFIG
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    assert _train(["--config", str(bad)]) == ExitCode.CONFIG


def test_other_schema_is_exit_12(tmp_path, datasets):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(datasets, ds)
    with h5py.File(ds / "cr_val.h5", "r+") as f:
        f.attrs["schema_version"] = 99
    assert _train(["--data", str(ds), "--output-dir", str(tmp_path / "tr")]) == ExitCode.INPUT_SCHEMA
    shard = next((datasets.parent / "shards").glob("*.h5"))
    assert _train(["--main-training-file", str(ds / "main_train.h5"), "--data", str(ds.parent / "nope"),
                   "--cr-training-file", str(shard.with_name("x_train.h5"))]) == ExitCode.INPUT_MISSING  # fmt: skip


def test_incompatible_resume_is_exit_3(tmp_path, datasets, capsys):
    run = tmp_path / "run"
    run.mkdir()
    runs.write_config(run, TrainConfig(data=datasets).to_yaml())
    assert _train(["--run-dir", str(run), "--nodes-track-lstm", "22"]) == ExitCode.CONFIG
    assert "nodes_track_lstm" in capsys.readouterr().err
    assert _train(["--run-dir", str(run), "--epochs", "1", "--print-config"]) == 0  # compatible: fine
    assert "epochs: 1" in capsys.readouterr().out


def test_continue_without_runs_is_exit_10(tmp_path, datasets):
    assert _train(["--continue", "--data", str(datasets), "--output-dir", str(tmp_path)]) == ExitCode.INPUT_MISSING


# --- training and resume ------------------------------------------------------------------------------


def _hook(classifier, adversary, main_val, cr_val, epoch, out_dir, **kw):
    """A fast stand-in for crbatch.evaluate.evaluate_epoch (no plots)."""
    n, s = 0, 0.0
    for b in main_val():
        p = classifier([b[k] for k in ("clusters", "tracks", "msegs", "jet")])
        s, n = s + float(np.sum(p[:, 1])), n + len(p)
    for b in cr_val():
        q = adversary(classifier([b[k] for k in ("clusters", "tracks", "msegs", "jet")]))
        assert q.shape == (len(b["label"]), 1)
    return {"val_mean_signal_score": s / n}


def _state(run: Path) -> dict[str, np.ndarray]:
    values, meta, _ = checkpoint.read(run / checkpoint.NAME)
    return values, meta


def _assert_same_state(a: Path, b: Path) -> None:
    va, ma = _state(a)
    vb, mb = _state(b)
    assert sorted(va) == sorted(vb)
    differ = [k for k in va if not np.array_equal(va[k], vb[k])]
    assert not differ, f"{len(differ)} arrays differ, e.g. {differ[:3]}"
    for k, v in ma["history"].items():
        if not k.startswith("time") and "per_s" not in k:
            np.testing.assert_array_equal(v, mb["history"][k], err_msg=k)


@pytest.mark.slow
def test_resume_after_an_epoch_and_mid_epoch_is_exact(tmp_path, datasets, monkeypatch):
    """In-process (the test backend), SIGTERM handled by the loop's own handler: at the end of an
    epoch's training (before its validation) and in the middle of an epoch."""
    pytest.importorskip("keras")
    from crbatch.train.loop import TEST_SIGNAL_ENV, StopFlag, train

    cfg = TrainConfig(data=datasets, epochs=3, batch_size=32, eval_batch_size=64, seed=7)
    full = train(cfg, tmp_path / "full", hook=_hook)
    assert full.status == "complete" and full.epochs_done == 3
    steps = _state(tmp_path / "full")[1]["steps_per_epoch"]

    for run, at, where in (("a", f"0:{steps}", (0, steps, "eval")), ("b", "1:1", (1, 1, "train"))):
        monkeypatch.setenv(TEST_SIGNAL_ENV, at)
        with StopFlag() as stop:
            assert train(cfg, tmp_path / run, hook=_hook, stop=stop).status == "checkpointed"
        meta = _state(tmp_path / run)[1]
        assert (meta["epoch"], meta["step"], meta["phase"]) == where
        monkeypatch.delenv(TEST_SIGNAL_ENV)
        assert train(cfg, tmp_path / run, hook=_hook).status == "complete"
        _assert_same_state(tmp_path / "full", tmp_path / run)
    # A finished run is left alone; ``epochs`` is the total: raising it trains the remaining ones.
    assert train(cfg, tmp_path / "b", hook=_hook).epochs_done == 3
    more = cfg.model_copy(update={"epochs": 4})
    assert train(more, tmp_path / "b", hook=_hook).epochs_done == 4


@pytest.mark.slow
def test_parametrised_gradient_reversal_run_in_reference_batching(tmp_path, datasets):
    keras = pytest.importorskip("keras")
    from crbatch.train.loop import train

    cfg = TrainConfig(data=datasets, epochs=1, num_splits=3, mH_parametrization=True, mS_parametrization=True,
                      adversary_mode="gradient_reversal", eval_batch_size=64)  # fmt: skip
    assert train(cfg, tmp_path, hook=_hook).status == "complete"
    par = json.loads((tmp_path / "parametrization.json").read_text())
    assert par["features"] == ["mH", "mS"] and len(par["signal_mass_points_GeV"]) == 2
    m = keras.models.load_model(tmp_path / "epochs" / "000.keras", compile=False)
    assert [tuple(i.shape[1:]) for i in m.inputs] == [(30, 14), (20, 12), (30, 8), (5,)]
    assert _state(tmp_path)[1]["steps_per_epoch"] == 3


def _backends():
    out = [pytest.param("tensorflow", marks=pytest.mark.slow)]
    jax = importlib.util.find_spec("jax") is not None
    out.append(pytest.param("jax", marks=[pytest.mark.slow, pytest.mark.skipif(not jax, reason="jax not installed")]))
    return out


def _cli(backend: str, argv: list[str], cache: Path, sigterm_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "CRBATCH_NO_BAR": "1",
           "JAX_COMPILATION_CACHE_DIR": str(cache)}  # fmt: skip
    env.pop("CRBATCH_TRAIN_TEST_SIGTERM_AT", None)
    if sigterm_at:
        env["CRBATCH_TRAIN_TEST_SIGTERM_AT"] = sigterm_at
    return subprocess.run([sys.executable, "-m", "crbatch.train.cli", "train", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.mark.parametrize("backend", _backends())
def test_sigterm_mid_epoch_then_resume_is_exact(tmp_path, datasets, backend):
    """The command line in subprocesses: SIGTERM inside epoch 1 → checkpoint, exit 85 → rerun → the
    same final state as an uninterrupted run; and the run directory is complete."""
    pytest.importorskip("keras")
    if backend == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow not installed")
    base = ["--data", str(datasets), "--epochs", "2", "--output-dir", str(tmp_path / "tr"), *TINY]
    cache = tmp_path / "jax_cache"  # JAX: the second and third processes reuse the compilations
    r = _cli(backend, base, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    full = tmp_path / "tr" / "default" / "00000"
    r = _cli(backend, [*base, "--run", "1"], cache, sigterm_at="1:2")
    assert r.returncode == ExitCode.CHECKPOINTED, r.stderr[-3000:]
    assert "SIGTERM received" in r.stderr
    meta = _state(tmp_path / "tr" / "default" / "00001")[1]
    assert (meta["epoch"], meta["step"], meta["phase"]) == (1, 2, "train")
    r = _cli(backend, [*base, "--continue"], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_state(full, tmp_path / "tr" / "default" / "00001")

    # The run directory a user looks at.
    files = {p.relative_to(full).as_posix() for p in full.rglob("*")}
    for name in ("config.yaml", "training_details.txt", "checkpoint.h5", "history.json", "history.csv",
                 "epochs/000.keras", "epochs/001.keras", "model_summary.txt", "plots/main_nn_loss.png",
                 "plots/001_val_adversary_sig_predictions.png", "plots/000_main_sig_predictions_linear.png"):  # fmt: skip
        assert name in files, name
    hist = json.loads((full / "history.json").read_text())
    for key in ("original_lossf", "val_original_lossf", "val_original_adv_lossf", "val_adv_loss", "adv_loss",
                "ks_qcd_hist", "ks_sig_hist", "ks_bib_hist", "epoch", "train_jets_per_s"):  # fmt: skip
        assert len(hist[key]) == 2, key
    assert hist["epoch"] == [0, 1]
    details = (tmp_path / "tr" / "default" / "00001" / "training_details.txt").read_text()
    assert details.count("=== start") == 1 and details.count("=== resume") == 1 and "=== checkpointed" in details


# --- data: batching modes, mass parametrisation and selection (no Keras needed) ----------------------


def _data(datasets: Path, **kw):
    from crbatch.train.loop import TrainData

    return TrainData(TrainConfig(data=datasets, batch_size=32, **kw))


def test_batching_modes(datasets):
    d = _data(datasets, frac_list=0.5)
    n = d.stats.n
    assert d.batch_size == 32 and d.steps == -(-(n // 32) // 2)  # first half of the shuffled batches
    batches = list(d.train_batches(0, 0))
    assert len(batches) == d.steps and all(len(m["y"]) == 32 and len(c["t"]) == 32 for m, c in batches)
    d.close()
    d = _data(datasets, num_splits=4, frac_list=1.0)  # the reference's: 4 steps of N/4 jets
    assert d.batch_size == -(-n // 4) and d.steps == 4
    assert sum(len(m["y"]) for m, _ in d.train_batches(0, 0)) == n
    d.close()


def test_batches_resume_where_they_stopped(datasets):
    d = _data(datasets, frac_list=1.0)
    full = [m["y"] for m, _ in d.train_batches(1, 0)]
    rest = [m["y"] for m, _ in d.train_batches(1, 3)]
    assert len(rest) == len(full) - 3 and all(np.array_equal(a, b) for a, b in zip(full[3:], rest, strict=True))
    other = [m["y"] for m, _ in d.train_batches(2, 0)]
    assert not all(np.array_equal(a, b) for a, b in zip(full, other, strict=True))  # reshuffled each epoch
    d.close()


def test_weight_columns(datasets):
    d = _data(datasets, weight_column="none", cr_weight_column="mcEventWeight")
    m, c = next(d.train_batches(0, 0))
    assert np.all(m["w"] == 1.0) and not np.all(c["w"] == 1.0)  # CR QCD carries its MC weights
    d.close()


def test_mass_parametrisation(datasets):
    from crbatch.schema import Label

    d = _data(datasets, mH_parametrization=True, mS_parametrization=True, frac_list=1.0)
    points = {tuple(p) for p in (d.stats.mass_points / 1000).round(6).tolist()}
    assert points == {(0.125, 0.055), (0.6, 0.275)}
    seen_bkg = []
    for m, c in d.train_batches(0, 0):
        assert [x.shape[-1] for x in m["x"]] == [14, 12, 8, 5] and [x.shape[-1] for x in c["x"]] == [14, 12, 8, 5]
        masses = m["x"][3][:, 3:].astype(np.float64)
        assert np.array_equal(m["x"][0][:, :, 12:], np.broadcast_to(m["x"][3][:, None, 3:], (32, 30, 2)))  # all slots
        assert {tuple(p) for p in masses.round(6).tolist()} <= points
        assert {tuple(p) for p in c["x"][3][:, 3:].astype(np.float64).round(6).tolist()} <= points
        seen_bkg.append(masses[m["y"] != int(Label.SIGNAL)])
    bkg = np.concatenate(seen_bkg)
    share_600 = np.mean(bkg[:, 0] > 0.3)
    sig_share_600 = d.stats.mass_counts[d.stats.mass_points[:, 0] > 300].sum() / d.stats.mass_counts.sum()
    assert abs(share_600 - sig_share_600) < 0.1  # drawn from the signal's mass distribution
    # Signal keeps its truth masses; background draws are fixed per (jet, epoch) and change with the epoch.
    first = next(d.train_batches(0, 0))[0]["x"][3]
    again = next(d.train_batches(0, 0))[0]["x"][3]
    later = next(d.train_batches(1, 0))[0]["x"][3]
    assert np.array_equal(first, again)
    assert not np.array_equal(first[:, 3:], later[:, 3:])
    vb = next(d.val_batches("main"))
    assert vb["jet"].shape[1] == 5 and vb["clusters"].shape[2] == 14
    d.close()


def test_mass_selection(datasets):
    from crbatch.schema import Label

    d = _data(datasets, include_high_mass=False, frac_list=1.0)  # low masses only (mH ∈ {60, 125, 200})
    kept = {int(Label.SIGNAL): 0, int(Label.QCD): 0, int(Label.BIB): 0}
    for m, _ in d.train_batches(0, 0):
        assert np.array_equal(m["w"], m["w"] * m["m"])
        for lab in kept:
            kept[lab] += int(m["m"][m["y"] == lab].sum())
    n_sig = d.stats.n_signal_selected
    assert 0 < n_sig < d.stats.per_label[int(Label.SIGNAL)]
    assert kept[int(Label.SIGNAL)] <= n_sig
    assert kept[int(Label.QCD)] < d.stats.per_label[int(Label.QCD)]  # QCD down-sampled towards the signal count
    with h5py.File(datasets / "main_val.h5") as f:
        j = f["jets"][:]
    low_sig = int(np.sum((j["label"] == int(Label.SIGNAL)) & np.isclose(j["llp_mH"], 125.0)))
    val_sig = sum(int(np.sum(b["label"] == int(Label.SIGNAL))) for b in d.val_batches("main"))
    assert val_sig == low_sig  # validation drops the other mass group
    d.close()
