"""Old samples through the documented commands only: ``convert legacy-pkl`` → ``build`` → ``train``
(→ ``analyze``, ``score``), for every kind of reference pickle (docs/conversion.md, "Reference pickles").

The real reference pickles (``../shared/data/reference/pretraining``) are used where present (the
tests skip without them); the kinds they do not cover — a built main training file with all three
classes, grouped by class as the reference's build wrote it, and raw per-sample pickles of every
class — are written here in the reference's column layout. Everything runs through the CLI entry
point (``crbatch.cli.main``), no Python API.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crbatch import schema
from crbatch.cli import main
from crbatch.errors import ExitCode

pd = pytest.importorskip("pandas")
h5py = pytest.importorskip("h5py")
pytest.importorskip("keras")

PRETRAINING = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "reference" / "pretraining"
FEATURES = {"clus": schema.CLUSTER_FEATURES, "track": schema.TRACK_FEATURES, "MSeg": schema.MSEG_FEATURES}
SLOTS = {"clus": schema.N_CLUSTERS, "track": schema.N_TRACKS, "MSeg": schema.N_MSEGS}
TRAIN = ["--epochs", "1", "--batch-size", "32", "--frac-list", "1.0"]


def reference(name: str) -> Path:
    path = PRETRAINING / name
    if not path.is_file():
        pytest.skip(f"reference pickle {path} absent")
    return path


def crbatch(*args) -> int:
    return main([str(a) for a in args])


def reference_frame(labels: np.ndarray, seed: int, scaled: bool = False, masses=(400.0, 100.0)) -> pd.DataFrame:
    """Jets in the reference's pickle layout (one row per jet, ``<prefix>_<feature>_<slot>`` columns),
    with class-dependent values; ``scaled``: as the reference's build left them (jet pT / 500 GeV)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    sig = labels == 1
    pt = rng.uniform(40, 300, n)
    cols = {
        "label": labels.astype(np.int64),
        "llp_mH": np.where(sig, masses[0], 0.0), "llp_mS": np.where(sig, masses[1], 0.0),
        "llp_pt": np.where(sig, rng.uniform(50, 200, n), 0.0), "llp_eta": np.where(sig, rng.normal(0, 1, n), 0.0),
        "llp_phi": np.where(sig, rng.uniform(-3, 3, n), 0.0), "llp_Lxy": np.where(sig, rng.uniform(1200, 4000, n), 0.0),
        "llp_Lz": np.where(sig, rng.uniform(-3000, 3000, n), 0.0),
        "mcEventWeight": np.ones(n), "runNumber": np.full(n, 284500, np.uint32),
        "eventNumber": rng.permutation(10**6)[:n].astype(np.uint64) + 10**8 * (seed + 1),
        "jet_pt": pt / 500 if scaled else pt, "jet_eta": rng.uniform(-2.4, 2.4, n), "jet_phi": rng.uniform(-3, 3, n),
    }  # fmt: skip
    shift = labels[:, None].astype(float)  # the classes differ in their constituents
    for prefix, feats in FEATURES.items():
        n_obj = rng.integers(1, 8, n)
        for i in range(SLOTS[prefix]):
            real = i < n_obj
            for f in feats:
                v = rng.normal(0.5 + 0.6 * shift[:, 0], 0.3, n) if f != "pt" else rng.uniform(1, 20, n)
                cols[f"{prefix}_{f}_{i}"] = np.where(real, np.abs(v) + 0.01, 0.0)
    cols["clus_eta_0"] = np.zeros(n)
    cols["clus_phi_0"] = np.zeros(n)
    return pd.DataFrame(cols)


def control_region_frame(n: int, seed: int, scaled: bool) -> pd.DataFrame:
    """A control-region pickle: label 0 = multijet MC, 2 = data, no mass columns (as felix_control_region.pkl)."""
    df = reference_frame(np.resize(np.array([0, 2]), n), seed, scaled)
    return df.drop(columns=["llp_mH", "llp_mS", *[c for c in df.columns if c.startswith("llp_")]])


def attrs_of(path: Path) -> dict:
    return schema.check_complete(path)


def test_every_real_reference_pickle_trains_through_the_cli(tmp_path, capsys):
    """The four real pickles: a raw signal pre-training file (whose file name and masses disagree),
    the reference-scaled BIB file, the reference-scaled control-region file and a one-jet signal file
    without masses — converted, built (raw and reference-scaled together, in the reference's scaling),
    trained and analysed."""
    sig, bib = reference("sig_311424_600_275.pkl"), reference("bib.pkl")
    cr, one = reference("felix_control_region.pkl"), reference("one_length_file.pkl")
    shards = tmp_path / "shards"
    assert crbatch("convert", "legacy-pkl", sig, bib, cr, "--mH", 125, "--mS", 5, "--output-dir", shards) == 0
    assert crbatch("convert", "legacy-pkl", one, "--mH", 125, "--mS", 55, "--output-dir", shards) == 0
    inputs = tmp_path / "inputs.yaml"
    inputs.write_text(
        f"- path: {shards / 'sig_311424_600_275.h5'}\n- path: {shards / 'one_length_file.h5'}\n"
        f"- path: {shards / 'bib.h5'}\n"
        f"- path: {shards / 'felix_control_region.h5'}\n  use: both  # its multijet MC is the main dataset's QCD too\n"
    )
    data = tmp_path / "datasets"
    capsys.readouterr()
    assert crbatch("build", inputs, "--output-dir", data) == ExitCode.INPUT_SCHEMA  # raw + reference-scaled
    assert "--set scaling.reference_exact=true" in capsys.readouterr().err
    assert crbatch("build", inputs, "--output-dir", data, "--set", "scaling.reference_exact=true") == 0
    a = attrs_of(data / "main_train.h5")
    assert a[schema.A_SCALED] == "legacy-reference" and a[schema.A_SCALING]["reference_exact"] is True
    with h5py.File(data / "main_train.h5") as f:
        labels = set(np.unique(f["jets"]["label"]).tolist())
    assert labels == {0, 1, 2}
    with h5py.File(data / "cr_train.h5") as f:
        assert set(np.unique(f["jets"]["label"]).tolist()) == {int(schema.Label.QCD), int(schema.Label.DATA)}
    runs = tmp_path / "runs"
    assert crbatch("train", "--data", data, "--output-dir", runs, *TRAIN) == 0
    report = tmp_path / "report"
    assert crbatch("analyze", "default/0", "--base", runs, "--data", data, "--output-dir", report) == 0
    assert list(report.rglob("report.md"))


def test_built_main_file_and_control_region_file(tmp_path, capsys):
    """A reference main training file (all three classes, grouped by class, scaled by the reference)
    and a scaled control-region file: build needs no option; the model carries the reference's
    scaling, and scoring checks it both ways."""
    labels = np.repeat([0, 1, 2], [700, 500, 300])  # grouped, as the reference's build concatenated them
    main_pkl, cr_pkl = tmp_path / "processed_output_main.pkl", tmp_path / "processed_output_controlRegion.pkl"
    reference_frame(labels, 1, scaled=True).to_pickle(main_pkl)
    control_region_frame(900, 2, scaled=True).to_pickle(cr_pkl)
    shards = tmp_path / "shards"
    assert crbatch("convert", "legacy-pkl", main_pkl, cr_pkl, "--output-dir", shards) == 0
    main_shard, cr_shard = shards / "processed_output_main.h5", shards / "processed_output_controlRegion.h5"
    a = attrs_of(main_shard)
    assert a[schema.A_DATA_TYPE] == "mixed" and a[schema.A_SCALED] == "legacy-reference"
    assert a[schema.A_LABEL_DECISION]["contradictions"] == {
        "background_with_truth": 0, "background_with_masses": 0, "signal_without_truth": 0, "signal_without_masses": 0,
    }  # fmt: skip
    data = tmp_path / "datasets"
    assert crbatch("build", main_shard, cr_shard, "--output-dir", data) == 0
    summary = json.loads((data / "summary.json").read_text())
    assert summary["scaling"] == "legacy-reference" and summary["files"]["used"] == 2
    assert set(summary["datasets"]["main"]["train"]) == {"qcd", "sig", "bib"}
    assert set(summary["datasets"]["cr"]["train"]) == {"qcd", "data"}  # the CR file's MC feeds the CR only
    runs = tmp_path / "runs"
    assert crbatch("train", "--data", data, "--output-dir", runs, *TRAIN) == 0
    # The run's model expects the reference's scaling: a crbatch-scaled dataset is refused ...
    other = tmp_path / "crbatch_datasets"
    raw = tmp_path / "raw"
    reference_frame(labels, 3).to_pickle(tmp_path / "raw_main.pkl")
    control_region_frame(300, 4, scaled=False).to_pickle(tmp_path / "raw_cr.pkl")
    assert (
        crbatch("convert", "legacy-pkl", tmp_path / "raw_main.pkl", tmp_path / "raw_cr.pkl", "--output-dir", raw) == 0
    )
    assert crbatch("build", raw, "--output-dir", other) == 0
    scored = tmp_path / "scored"
    capsys.readouterr()
    assert crbatch("score", other / "main_test.h5", "--model", "default/0/-1", "--base", runs,
                   "--output-dir", scored) == ExitCode.INPUT_SCHEMA  # fmt: skip
    assert "scaling constants differ" in capsys.readouterr().err
    # ... its own kind of input is scored, and so is a raw shard (scaled the reference's way).
    assert crbatch("score", main_shard, raw / "raw_main.h5", "--model", "default/0/-1", "--base", runs,
                   "--output-dir", scored) == 0  # fmt: skip
    # The converse: a crbatch-scaled model refuses the reference-scaled shard.
    runs2 = tmp_path / "runs2"
    assert crbatch("train", "--data", other, "--output-dir", runs2, *TRAIN) == 0
    capsys.readouterr()
    assert crbatch("score", main_shard, "--model", "default/0/-1", "--base", runs2, "--output-dir",
                   tmp_path / "scored2") == ExitCode.INPUT_SCHEMA  # fmt: skip
    line = next(x for x in capsys.readouterr().err.splitlines() if "ERROR" in x)
    assert "scaled by the reference" in line and "'crbatch-v1'" in line and "--ignore-scaling-mismatch" in line
    assert not (tmp_path / "scored2" / "processed_output_main.scored.h5").exists()


def test_raw_pretraining_pickles_of_every_class(tmp_path):
    """Per-sample pre-training pickles (raw, one class each, the reference's file names), one of them an
    older signal file labelled 0: refused until relabelled with --type sig, then built and trained."""
    frames = {
        "sig_311424_400_100.pkl": reference_frame(np.ones(400, int), 5),
        "qcd_361022.pkl": reference_frame(np.zeros(600, int), 6),
        "bib_309390.pkl": reference_frame(np.full(300, 2), 7),
        "data_cr.pkl": control_region_frame(500, 8, scaled=False),
    }
    old = reference_frame(np.ones(200, int), 9, masses=(400.0, 100.0))
    old["label"] = 0  # an older reference version's signal label
    frames["old_signal_mH400.pkl"] = old
    src = tmp_path / "pkl"
    src.mkdir()
    for name, df in frames.items():
        df.to_pickle(src / name)
    shards = tmp_path / "shards"
    rc = crbatch("convert", "legacy-pkl", *(src / n for n in frames if n != "data_cr.pkl"), "--output-dir", shards)
    assert rc == ExitCode.INPUT_SCHEMA and not (shards / "old_signal_mH400.h5").exists()
    assert crbatch("convert", "legacy-pkl", src / "old_signal_mH400.pkl", "--type", "sig", "--output-dir", shards) == 0
    assert crbatch("convert", "legacy-pkl", src / "data_cr.pkl", "--output-dir", shards) == 0
    assert attrs_of(shards / "old_signal_mH400.h5")[schema.A_DATA_TYPE] == "sig"
    assert attrs_of(shards / "sig_311424_400_100.h5")["dsid"] == 311424
    data = tmp_path / "datasets"
    assert crbatch("build", shards, "--output-dir", data) == 0
    assert attrs_of(data / "main_train.h5")[schema.A_SCALED] == "crbatch-v1"  # raw shards: scaled by the build
    summary = json.loads((data / "summary.json").read_text())
    assert summary["datasets"]["main"]["train"]["sig"]["jets"] > 400  # both signal files
    assert crbatch("train", "--data", data, "--output-dir", tmp_path / "runs", *TRAIN) == 0
