"""``crbatch convert legacy-pkl``: the reference's pandas pickles → HDF5 shards.

Real reference pickles (``../shared/data/reference/pretraining``) are used when present; the
tests on them skip cleanly otherwise. Small synthetic pickles cover naming, padding and label
variants the four real files do not.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from crbatch import schema
from crbatch.cli import main
from crbatch.convert.legacy_pkl import map_columns, normalise_name
from crbatch.errors import ExitCode

pd = pytest.importorskip("pandas")
h5py = pytest.importorskip("h5py")
pytest.importorskip("hdf5plugin")  # registers the lz4 filter for reading the shards back

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "reference"
PRETRAINING = REFERENCE / "pretraining"


def reference_pickle(name: str) -> Path:
    path = PRETRAINING / name
    if not path.is_file():
        pytest.skip(f"reference pickle {path} not available")
    return path


def convert(*args: str | Path, out: Path) -> int:
    return main(["convert", "legacy-pkl", *map(str, args), "--output-dir", str(out)])


def read_shard(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    attrs = schema.check_complete(path, "shard")
    with h5py.File(path, "r") as f:
        tables = {name: f[name][:] for name in ("jets", *schema.TABLES)}
    return attrs, tables


def converted(src: Path, tmp_path: Path, *extra: str) -> tuple[dict, dict[str, np.ndarray]]:
    assert convert(src, *extra, out=tmp_path) == 0
    return read_shard(tmp_path / (src.stem + schema.SHARD_SUFFIX))


@pytest.fixture(scope="module")
def sig_pickle() -> tuple[Path, object]:
    path = reference_pickle("sig_311424_600_275.pkl")
    return path, pd.read_pickle(path)


def assert_valid_contiguous(tables: dict[str, np.ndarray]) -> None:
    """Valid slots start at slot 0 with no gap, and the jet counts match them."""
    for t in schema.OBJECT_TABLES:
        valid = tables[t.name]["valid"]
        n = valid.sum(axis=1)
        assert (valid == (np.arange(t.slots)[None, :] < n[:, None])).all(), t.name
        assert (tables["jets"][f"n_{t.name}"] == n).all(), t.name
        for f in t.features:
            assert (tables[t.name][f][~valid] == 0).all(), f"{t.name}.{f}: padding is not 0"


def assert_no_nan(tables: dict[str, np.ndarray]) -> None:
    for name, tab in tables.items():
        for f in tab.dtype.names:
            if tab.dtype[f].kind == "f":
                assert np.isfinite(tab[f]).all(), f"{name}.{f}"


# ---------------------------------------------------------------------------- real reference pickles


SIG_MASSES = ("--mH", "125", "--mS", "5")  # the pickle's own columns; its file name says 600/275
ONE_MASSES = ("--mH", "125", "--mS", "55")  # one_length_file.pkl: a signal jet with masses 0/0


def test_signal_pickle_name_contradicts_masses(sig_pickle, tmp_path, capsys):
    # The file name (the reference's sig_<DSID>_<mH>_<mS>) says 600/275, the mass columns 125/5:
    # nothing is written until the user says which is right.
    src, _ = sig_pickle
    assert convert(src, out=tmp_path) == ExitCode.INPUT_SCHEMA
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "ERROR" in x)
    assert "mH=600, mS=275" in line and "125/5" in line and "--mH M --mS M" in line and len(line) < 300
    assert not (tmp_path / "sig_311424_600_275.h5").exists()
    attrs, tables = converted(src, tmp_path, "--mH", "600", "--mS", "275")
    assert (tables["jets"]["llp_mH"] == 600).all() and (tables["jets"]["llp_mS"] == 275).all()
    assert attrs[schema.A_LABEL_DECISION]["masses"] == "--mH 600 --mS 275"
    assert attrs[schema.A_LABEL_DECISION]["file_name"] == {"type": "sig", "dsid": 311424, "mH": 600.0, "mS": 275.0}


def test_signal_pickle_old_names(sig_pickle, tmp_path):
    src, df = sig_pickle
    attrs, tables = converted(src, tmp_path, *SIG_MASSES)
    jets = tables["jets"]
    assert attrs[schema.A_N_JETS] == len(jets) == 76
    assert attrs[schema.A_STATUS] == "ok"
    assert attrs[schema.A_DATA_TYPE] == "sig"
    assert attrs[schema.A_SCALED] is False
    assert (jets["label"] == schema.Label.SIGNAL).all()
    (mh,), (ms,) = df["mH"].unique(), df["mS"].unique()
    assert (attrs["llp_mH"], attrs["llp_mS"]) == (mh, ms) == (125.0, 5.0)
    assert (jets["llp_mH"] == mh).all() and (jets["llp_mS"] == ms).all()
    assert attrs["legacy_renames"] == {"mH": "llp_mH", "mS": "llp_mS"}
    assert attrs["legacy_counts_are_truncated"] is True
    assert attrs["legacy_missing_features"] == []
    assert attrs["dsid"] == 311424  # from the file name
    assert attrs[schema.A_LABEL_DECISION]["labels"] == "label column"
    assert attrs[schema.A_LABEL_DECISION]["contradictions"]["signal_without_truth"] == 0
    assert attrs["source_path"] == str(src.resolve())
    assert attrs[schema.A_CONFIG]["model"] == "ConvertLegacyConfig"
    assert (jets["jet_index"] == -1).all() and (jets["match_dR"] == -1).all()
    assert_valid_contiguous(tables)
    assert_no_nan(tables)
    clus = tables["clusters"]
    assert clus["valid"][:, 0].all()
    assert (clus["eta"][:, 0] == 0).all() and (clus["phi"][:, 0] == 0).all()


@pytest.mark.parametrize("row", [0, 17, 75])
def test_signal_values_match_pickle(sig_pickle, tmp_path, row):
    src, df = sig_pickle
    _, tables = converted(src, tmp_path, *SIG_MASSES)
    jet = tables["jets"][row]
    r = df.iloc[row]
    assert int(jet["eventNumber"]) == int(r["eventNumber"])
    assert int(jet["runNumber"]) == int(r["runNumber"])
    assert jet["mcEventWeight"] == np.float32(r["mcEventWeight"])
    assert jet["isClean_LooseBadLLP"] == r["jet_isClean_LooseBadLLP"]
    for col, fld in [("jet_pt", "pt"), ("jet_eta", "eta"), ("jet_phi", "phi"), ("llp_pt", "llp_pt"),
                     ("llp_Lxy", "llp_Lxy"), ("llp_Lz", "llp_Lz")]:  # fmt: skip
        assert jet[fld] == np.float32(r[col]), col
    for t in schema.OBJECT_TABLES:
        prefix = {"clusters": "clus", "tracks": "track", "msegs": "MSeg"}[t.name]
        objs = tables[t.name][row]
        for i in range(t.slots):
            for f in t.features:
                want = np.float32(r[f"{prefix}_{f}_{i}"]) if objs["valid"][i] else 0
                assert objs[f][i] == want, f"{prefix}_{f}_{i}"
    # Sanity: the pickle's own padding is where the shard says, for the tracks of this jet.
    n_trk = int(jet["n_tracks"])
    assert all(r[f"track_pt_{i}"] > 0 for i in range(n_trk))
    assert all(r[f"track_pt_{i}"] == 0 for i in range(n_trk, schema.N_TRACKS))


def test_bib_pickle_scaled_nan_padding(tmp_path):
    src = reference_pickle("bib.pkl")
    attrs, tables = converted(src, tmp_path)
    assert attrs[schema.A_N_JETS] == len(tables["jets"]) == 558
    assert attrs[schema.A_SCALED] == "legacy-reference"
    assert attrs[schema.A_DATA_TYPE] == "bib"
    assert (tables["jets"]["label"] == schema.Label.BIB).all()
    assert (tables["jets"]["mcEventWeight"] == 1).all()
    assert_no_nan(tables)
    assert_valid_contiguous(tables)
    # The pickle's non-unique index must not reorder or merge rows.
    df = pd.read_pickle(src)
    assert not df.index.is_unique
    assert (tables["jets"]["eventNumber"] == df["eventNumber"].to_numpy()).all()
    assert np.array_equal(tables["jets"]["pt"], df["jet_pt"].to_numpy(np.float32))


def test_felix_control_region(tmp_path):
    src = reference_pickle("felix_control_region.pkl")
    attrs, tables = converted(src, tmp_path)
    jets = tables["jets"]
    assert attrs[schema.A_N_JETS] == len(jets) == 449
    assert attrs[schema.A_DATA_TYPE] == "mixed"
    assert attrs["legacy_kind"] == "control-region"
    assert attrs[schema.A_SCALED] == "legacy-reference"
    labels, counts = np.unique(jets["label"], return_counts=True)
    assert dict(zip(labels.tolist(), counts.tolist(), strict=True)) == {schema.Label.QCD: 226, schema.Label.DATA: 223}
    assert attrs["label_counts"] == {"QCD": 226, "DATA": 223}
    assert (jets["mcEventWeight"][jets["label"] == schema.Label.DATA] == 1).all()
    assert (jets["runNumber"] == 0).all() and "runNumber" in attrs["legacy_missing_features"]
    assert attrs["legacy_event_number_from_float"] is True
    assert attrs["legacy_renames"]["jet_pT"] == "jet_pt"
    assert attrs["legacy_renames"]["track_pT_7"] == "track_pt_7"
    for col in ("track_sign", "clus_sign", "flatWeight", "jet_nn_calRatio_main_sig_lowMass_v3Adv"):
        assert col in attrs["legacy_columns_dropped"]
    df = pd.read_pickle(src)
    assert np.array_equal(jets["pt"], df["jet_pT"].to_numpy(np.float32))
    trk = tables["tracks"]
    for i in range(schema.N_TRACKS):
        pickle_pt = df[f"track_pT_{i}"].to_numpy()
        # NaN padding in the pickle ↔ invalid slot with 0 in the shard.
        assert np.array_equal(trk["valid"][:, i], np.isfinite(pickle_pt))
        assert np.array_equal(trk["pt"][:, i], np.nan_to_num(pickle_pt).astype(np.float32))
    assert_no_nan(tables)
    assert_valid_contiguous(tables)


def test_one_length_file(tmp_path):
    src = reference_pickle("one_length_file.pkl")
    assert convert(src, out=tmp_path) == ExitCode.INPUT_SCHEMA  # signal with masses 0/0: unknown
    attrs, tables = converted(src, tmp_path, *ONE_MASSES)
    assert tables["jets"]["llp_mH"][0] == 125 and attrs["label_counts"] == {"SIGNAL": 1}
    assert attrs[schema.A_N_JETS] == len(tables["jets"]) == 1
    assert tables["jets"]["eventNumber"][0] == 200655  # int64 in the pickle
    assert len(attrs["legacy_columns_dropped"]) == 6  # the old jet_nn_* scores


def test_all_reference_pickles_in_one_run(tmp_path):
    srcs = [reference_pickle(n) for n in ("sig_311424_600_275.pkl", "bib.pkl", "felix_control_region.pkl",
                                          "one_length_file.pkl")]  # fmt: skip
    assert convert(*srcs, out=tmp_path) == ExitCode.INPUT_SCHEMA  # two need their masses given
    assert convert(*srcs[:2], *SIG_MASSES, out=tmp_path) == 0
    assert convert(*srcs[2:], *ONE_MASSES, out=tmp_path) == 0  # --mH/--mS act on the signal jets only
    for src in srcs:
        schema.check_complete(tmp_path / (src.stem + schema.SHARD_SUFFIX), "shard")


def test_rerun_skips(tmp_path, capsys):
    src = reference_pickle("one_length_file.pkl")
    out = tmp_path / "one_length_file.h5"
    assert convert(src, *ONE_MASSES, out=tmp_path) == 0
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert convert(src, *ONE_MASSES, out=tmp_path) == 0
    assert out.stat().st_mtime_ns == before
    assert "skip" in capsys.readouterr().err
    inode = out.stat().st_ino
    assert convert(src, "--force", *ONE_MASSES, out=tmp_path) == 0
    assert out.stat().st_ino != inode  # replaced by a new file (atomic rename)
    schema.check_complete(out, "shard")


def test_scaled_override(tmp_path):
    attrs, _ = converted(reference_pickle("one_length_file.pkl"), tmp_path, "--scaled", *ONE_MASSES)
    assert attrs[schema.A_SCALED] == "legacy-reference"
    attrs, _ = converted(reference_pickle("bib.pkl"), tmp_path, "--no-scaled")
    assert attrs[schema.A_SCALED] is False


# ---------------------------------------------------------------------------- failures


def test_corrupt_pickle_fails_others_converted(tmp_path, capsys):
    good = reference_pickle("one_length_file.pkl")
    bad = tmp_path / "in" / "x.pkl"
    bad.parent.mkdir()
    bad.write_bytes(np.random.default_rng(7).bytes(2048))
    out = tmp_path / "out"
    assert convert(bad, good, *ONE_MASSES, out=out) == ExitCode.INPUT_CORRUPT
    err = capsys.readouterr().err
    assert "x.pkl" in err
    assert not (out / "x.h5").exists()
    assert not [p for p in out.iterdir() if schema.TMP_MARK in p.name]
    schema.check_complete(out / "one_length_file.h5", "shard")


def test_truncated_pickle(tmp_path, capsys):
    data = reference_pickle("one_length_file.pkl").read_bytes()
    bad = tmp_path / "truncated.pkl"
    bad.write_bytes(data[: len(data) // 2])
    assert convert(bad, out=tmp_path / "out") == ExitCode.INPUT_CORRUPT
    assert "truncated.pkl" in capsys.readouterr().err


def test_plain_dict_pickle(tmp_path, capsys):
    src = tmp_path / "dict.pkl"
    src.write_bytes(pickle.dumps({"label": [1, 2], "jet_pt": [50.0, 60.0]}, protocol=5))
    assert convert(src, out=tmp_path / "out") == ExitCode.INPUT_SCHEMA
    err = capsys.readouterr().err
    assert "dict.pkl" in err and "DataFrame" in err


def test_dataframe_without_required_columns(tmp_path, capsys):
    src = tmp_path / "nolabel.pkl"
    pd.DataFrame({"jet_pT": [50.0], "jet_eta": [0.1], "jet_phi": [0.2]}).to_pickle(src)
    assert convert(src, out=tmp_path / "out") == ExitCode.INPUT_SCHEMA
    err = capsys.readouterr().err
    assert "nolabel.pkl" in err and "label" in err


def test_unknown_label(tmp_path, capsys):
    src = tmp_path / "cr_label1.pkl"
    frame(2, labels=[0, 1], masses=None).to_pickle(src)  # label 1 means nothing in a control-region file
    assert convert(src, out=tmp_path / "out") == ExitCode.INPUT_SCHEMA
    assert "cr_label1.pkl" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["no columns", "filtered"])
def test_empty_dataframe(tmp_path, kind):
    src = tmp_path / "empty.pkl"
    df = pd.DataFrame() if kind == "no columns" else frame(3).iloc[:0]
    df.to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out")
    assert attrs[schema.A_STATUS] == "empty"
    assert attrs[schema.A_N_JETS] == 0
    assert all(len(t) == 0 for t in tables.values())


# ---------------------------------------------------------------------------- synthetic pickles

FEATURES = {"clus": schema.CLUSTER_FEATURES, "track": schema.TRACK_FEATURES, "MSeg": schema.MSEG_FEATURES}
SLOTS = {"clus": schema.N_CLUSTERS, "track": schema.N_TRACKS, "MSeg": schema.N_MSEGS}


def frame(
    n: int,
    labels: list[int] | None = None,
    masses: tuple[float, float] | None = (125.0, 55.0),
    n_objects: int = 3,
    pad: float = 0.0,
    pt_scale: float = 1.0,
    seed: int = 1,
):
    """A small pickle-like DataFrame: ``n_objects`` real objects per type, the rest ``pad``."""
    rng = np.random.default_rng(seed)
    labels = labels if labels is not None else [1] * n
    cols: dict[str, np.ndarray] = {
        "label": np.resize(np.array(labels), n),
        "eventNumber": np.arange(n, dtype=np.uint64) + 10_000_000_000,
        "runNumber": np.full(n, 284500, np.uint32),
        "mcEventWeight": np.ones(n),
        "jet_pt": rng.uniform(40, 200, n) * pt_scale,
        "jet_eta": rng.uniform(-2, 2, n),
        "jet_phi": rng.uniform(-3, 3, n),
    }
    if masses is not None:  # signal jets carry the masses, backgrounds 0 (as the reference wrote them)
        sig = cols["label"] == 1
        cols["llp_mH"], cols["llp_mS"] = np.where(sig, masses[0], 0.0), np.where(sig, masses[1], 0.0)
    for prefix, feats in FEATURES.items():
        for i in range(SLOTS[prefix]):
            for f in feats:
                real = rng.uniform(0.5, 2.0, n) * (1 if f != "pt" else pt_scale)
                cols[f"{prefix}_{f}_{i}"] = real if i < n_objects else np.full(n, pad)
    # By construction the leading cluster defines the cluster frame.
    cols["clus_eta_0"], cols["clus_phi_0"] = np.zeros(n), np.zeros(n)
    return pd.DataFrame(cols)


def test_normalise_name():
    assert normalise_name("jet_pT") == "jet_pt"
    assert normalise_name("track_pT_12") == "track_pt_12"
    assert normalise_name("llp_pT") == "llp_pt"
    assert normalise_name("nn_MSeg_t0_1") == "MSeg_t0_1"
    assert normalise_name("aux_clus_time_3") == "clus_time_3"
    assert normalise_name("mH") == "llp_mH"
    assert normalise_name("jet_nn_calRatio_main_sig_lowMass_v3Adv") == "jet_nn_calRatio_main_sig_lowMass_v3Adv"


def test_map_columns_prefers_current_spelling():
    cols = map_columns(["jet_pT", "jet_pt", "track_sign", "track_vertex_x_0", "nn_MSeg_t0_1"])
    assert cols.position["jet_pt"] == 1
    assert cols.position["MSeg_t0_1"] == 4
    assert cols.renames == {"nn_MSeg_t0_1": "MSeg_t0_1"}
    assert cols.dropped == ["jet_pT", "track_sign", "track_vertex_x_0"]


def test_column_order_and_prefixes_do_not_matter(tmp_path):
    df = frame(5)
    plain, shuffled = tmp_path / "plain.pkl", tmp_path / "shuffled.pkl"
    df.to_pickle(plain)
    cols = list(np.random.default_rng(3).permutation(df.columns))
    renamed = {c: "nn_" + c for c in cols if c.startswith("MSeg_")} | {c: c.replace("_pt", "_pT") for c in cols
                                                                       if c.startswith("track_pt")}  # fmt: skip
    df[cols].rename(columns=renamed).to_pickle(shuffled)
    _, a = converted(plain, tmp_path / "a")
    attrs, b = converted(shuffled, tmp_path / "b")
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert attrs["legacy_renames"]["nn_MSeg_t0_1"] == "MSeg_t0_1"


def test_scaled_padding_pt_is_not_an_object(tmp_path):
    # Build-scaled files pad track pt with -min/(max-min) (-0.087) and layer fractions with NaN.
    df = frame(4, n_objects=2, pad=0.0, pt_scale=1 / 500)
    for i in range(2, schema.N_TRACKS):
        df[f"track_pt_{i}"] = -0.087
    for i in range(2, schema.N_CLUSTERS):
        for layer in ("l1ecal", "l2hcal", "l4hcal"):
            df[f"clus_{layer}_{i}"] = np.nan
    src = tmp_path / "scaled.pkl"
    df.to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out")
    assert attrs[schema.A_SCALED] == "legacy-reference"
    assert (tables["jets"]["n_tracks"] == 2).all() and (tables["jets"]["n_clusters"] == 2).all()
    assert_valid_contiguous(tables)
    assert_no_nan(tables)


def test_raw_pt_only_object_and_holes(tmp_path):
    df = frame(2, n_objects=3)
    for f in schema.TRACK_FEATURES:  # slot 3: only pt non-zero (raw file: still a track)
        df[f"track_{f}_3"] = 5.0 if f == "pt" else 0.0
    for f in schema.MSEG_FEATURES:  # slot 1 all zero between real segments 0 and 2: a real zero segment
        df[f"MSeg_{f}_1"] = 0.0
    src = tmp_path / "raw.pkl"
    df.to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out")
    assert (tables["jets"]["n_tracks"] == 4).all()
    assert (tables["jets"]["n_msegs"] == 3).all()
    assert attrs["legacy_valid_holes_filled"]["msegs"] == 2
    assert_valid_contiguous(tables)


def test_control_region_labels_and_weights(tmp_path):
    df = frame(4, labels=[0, 2, 0, 2], masses=None)
    df["label"] = df["label"].astype(np.float32)
    df["mcEventWeight"] = [2.5, np.nan, 0.5, 1.0]
    df.index = [0, 0, 1, 1]  # non-unique, as in the reference's concatenated files
    src = tmp_path / "cr.pkl"
    df.to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out")
    jets = tables["jets"]
    assert jets["label"].tolist() == [schema.Label.QCD, schema.Label.DATA] * 2
    assert jets["mcEventWeight"].tolist() == [2.5, 1.0, 0.5, 1.0]  # NaN for data → 1
    assert attrs[schema.A_DATA_TYPE] == "mixed"
    assert attrs["llp_mH"] == attrs["llp_mS"] == 0.0
    assert "llp_mH" in attrs["legacy_missing_features"]


def test_missing_feature_is_zero_and_listed(tmp_path):
    df = frame(3, labels=[0, 1, 2]).drop(columns=[f"track_vertex_nParticles_{i}" for i in range(schema.N_TRACKS)])
    src = tmp_path / "main.pkl"
    df.to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out")
    assert "track_vertex_nParticles" in attrs["legacy_missing_features"]
    assert (tables["tracks"]["vertex_nParticles"] == 0).all()
    assert attrs[schema.A_DATA_TYPE] == "mixed"
    assert attrs["llp_mH"] == -1.0 and attrs["llp_mS"] == -1.0  # not constant → -1
    assert tables["jets"]["label"].tolist() == [0, 1, 2]
    assert (tables["jets"]["isClean_LooseBadLLP"] == -1).all()  # no column: unknown
    assert tables["jets"]["eventNumber"][0] == 10_000_000_000


def test_nonfinite_in_real_values_becomes_zero(tmp_path):
    df = frame(2)
    df.loc[0, "jet_eta"] = np.inf
    df.loc[1, "clus_time_1"] = np.nan
    src = tmp_path / "nan.pkl"
    df.to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out")
    assert tables["jets"]["eta"][0] == 0
    assert tables["clusters"]["time"][1, 1] == 0 and tables["clusters"]["valid"][1, 1]
    assert attrs["legacy_nonfinite_replaced"] == {"clusters.time": 1, "jets.eta": 1}
    assert_no_nan(tables)


def test_blocks_give_the_same_shard(tmp_path, monkeypatch):
    from crbatch.convert import legacy_pkl

    src = tmp_path / "many.pkl"
    frame(11, labels=[0, 1, 2]).to_pickle(src)
    _, whole = converted(src, tmp_path / "whole")
    monkeypatch.setattr(legacy_pkl, "BLOCK_ROWS", 4)
    _, blocked = converted(src, tmp_path / "blocked")
    for name in whole:
        assert np.array_equal(whole[name], blocked[name]), name


def test_source_size_recorded(tmp_path):
    # The shard's source_size lets a rerun notice a changed pickle.
    src = tmp_path / "s.pkl"
    frame(2).to_pickle(src)
    attrs, _ = converted(src, tmp_path / "out")
    assert attrs["source_size"] == os.path.getsize(src)


# ---------------------------------------------------------------------------- labels against truth, masses, name


def _old_signal_frame(n: int = 6):
    """An older reference signal pickle: label 0 (QCD today), LLP truth and masses set."""
    df = frame(n, labels=[0] * n, masses=None)
    df["llp_mH"], df["llp_mS"] = 600.0, 150.0
    df["llp_Lxy"], df["llp_Lz"], df["llp_pt"] = 2000.0, 100.0, 80.0
    return df


def test_old_signal_labelled_qcd_is_refused_then_relabelled(tmp_path, capsys):
    src = tmp_path / "old_signal.pkl"
    _old_signal_frame().to_pickle(src)
    assert convert(src, out=tmp_path / "out") == ExitCode.INPUT_SCHEMA
    line = next(x for x in capsys.readouterr().err.splitlines() if "ERROR" in x)
    assert "6 of 6 jets labelled background (QCD) carry LLP truth" in line and "--type sig" in line
    assert not list((tmp_path / "out").glob("*.h5"))
    attrs, tables = converted(src, tmp_path / "out", "--type", "sig")
    assert (tables["jets"]["label"] == schema.Label.SIGNAL).all() and attrs[schema.A_DATA_TYPE] == "sig"
    assert (tables["jets"]["llp_mH"] == 600).all()  # the mass columns are kept
    d = attrs[schema.A_LABEL_DECISION]
    assert d["labels"] == "--type sig (label column overridden)" and d["masses"] == "mass columns"
    assert attrs[schema.A_CONFIG]["values"]["type"] == "sig"


def test_type_override_to_background_drops_masses(tmp_path):
    src = tmp_path / "old_signal.pkl"
    _old_signal_frame().to_pickle(src)
    attrs, tables = converted(src, tmp_path / "out", "--type", "qcd")
    assert (tables["jets"]["label"] == schema.Label.QCD).all()
    assert (tables["jets"]["llp_mH"] == 0).all() and attrs["llp_mH"] == 0
    assert attrs[schema.A_LABEL_DECISION]["contradictions"]["background_with_truth"] == 6  # found, overridden


def test_signal_without_truth_is_refused(tmp_path, capsys):
    df = frame(3, labels=[1, 1, 1])
    df["llp_Lxy"], df["llp_Lz"], df["llp_pt"] = [2000.0, 0.0, 0.0], 0.0, [50.0, 0.0, 0.0]
    src = tmp_path / "main.pkl"
    df.to_pickle(src)
    assert convert(src, out=tmp_path / "out") == ExitCode.INPUT_SCHEMA
    assert "2 of 3 signal-labelled jets have no LLP truth" in capsys.readouterr().err


def test_file_name_type_contradiction(tmp_path, capsys):
    src = tmp_path / "bib_run309390.pkl"
    frame(4, labels=[0], masses=None).to_pickle(src)  # no mass columns: read as a control-region file
    assert convert(src, out=tmp_path / "out") == ExitCode.INPUT_SCHEMA
    assert "the file name says BIB, its labels say QCD" in capsys.readouterr().err
    attrs, tables = converted(src, tmp_path / "out", "--type", "bib")
    assert (tables["jets"]["label"] == schema.Label.BIB).all()
    assert attrs[schema.A_LABEL_DECISION]["file_name"] == {"type": "bib"}


def test_mass_flags_need_both_and_signal(tmp_path, capsys):
    src = tmp_path / "s.pkl"
    frame(2).to_pickle(src)
    assert convert(src, "--mH", "125", out=tmp_path / "out") == ExitCode.CONFIG
    assert "give both --mH and --mS" in capsys.readouterr().err
    assert convert(src, "--type", "bib", "--mH", "1", "--mS", "1", out=tmp_path / "out") == ExitCode.CONFIG
    attrs, tables = converted(src, tmp_path / "out", "--mH", "400", "--mS", "100")
    assert (tables["jets"]["llp_mH"] == 400).all() and attrs["llp_mS"] == 100
