"""``crbatch build``: real and synthetic shards, split determinism, quotas, weights, scaling, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from shards import SHARED, ids, random_tables, read, write_random_shard, write_set, write_split

from crbatch import schema
from crbatch.build.synthetic import shard_attrs, write_shard
from crbatch.cli import main
from crbatch.scaling import LAYERS, ScalingConfig, scale_tables

DIVERT = SHARED / "data" / "reference" / "divert"
SPLITS = schema.SPLITS


def build(inputs, out: Path, *extra: str) -> int:
    return main(["-q", "build", *map(str, inputs), "--output-dir", str(out), *extra])


def outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def concat(out: Path, role: str) -> dict[str, np.ndarray]:
    parts = [read(out / schema.dataset_filename(role, s)) for s in SPLITS]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("shards"), n=2000)


@pytest.fixture(scope="module")
def built(shard_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    assert build([shard_dir], out) == 0
    return out


# --- real shards -----------------------------------------------------------------------------------


@pytest.mark.skipif(not DIVERT.exists(), reason="../shared reference files absent")
def test_build_from_converted_real_shards(tmp_path):
    sh = tmp_path / "shards"
    conv = [
        (["sig_311314_bad_object_small.root"], ["--type", "sig", "--mH", "125", "--mS", "55"], "sig"),
        (["short_divert_analysis_file.root", "empty_divert_analysis_file.root"], ["--type", "qcd"], "qcd"),
        (["bib.root"], ["--type", "bib"], "bib"),
        (["bib.root"], ["--type", "data"], "data"),
    ]
    for files, opts, sub in conv:
        rc = main(["-q", "convert", "divert", *[str(DIVERT / f) for f in files], *opts, "--output-dir", str(sh / sub)])
        assert rc == 0
    out = tmp_path / "ds"
    assert build([sh / "sig", sh / "qcd", sh / "bib", sh / "data"], out) == 0
    assert outputs(out) == sorted([*(f"{r}_{s}.h5" for r in ("main", "cr") for s in SPLITS), "summary.json"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == {"given": 5, "used": 4, "skipped": 1, "skipped_by_reason": {"empty": 1}}
    main_ds = concat(out, "main")
    assert np.bincount(main_ds["jets"]["label"], minlength=3).tolist() == [1, 21, 1]
    assert np.bincount(concat(out, "cr")["jets"]["label"], minlength=4).tolist() == [1, 0, 0, 16]
    # Σw_initial per DSID from MetaData_EventCount; the empty file's DSID is unknown (no events, no
    # DSID in its name), so its Σw is not attributed (a warning; an error with --xsec).
    assert summary["weights"]["sum_of_weights_initial"] == {"361020": 2000000.0}
    xs = tmp_path / "xsec.yaml"
    xs.write_text("361020: 7.8e10\n")
    assert build([sh / "sig", sh / "qcd", sh / "bib"], tmp_path / "x", "--xsec", str(xs)) == 12
    lst = tmp_path / "inputs.yaml"  # giving the empty file's DSID in the input list fixes it
    lst.write_text(f"- {sh / 'sig'}\n- {sh / 'bib'}\n- {sh / 'qcd' / 'short_divert_analysis_file.h5'}\n"
                   f"- {{path: '{sh / 'qcd' / 'empty_divert_analysis_file.h5'}', dsid: 361020}}\n")  # fmt: skip
    assert build([lst], tmp_path / "x", "--xsec", str(xs)) == 0
    s2 = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert s2["weights"]["sum_of_weights_initial"] == {"361020": 3200000.0}
    q = concat(tmp_path / "x", "main")["jets"]
    q = q[q["label"] == 0]
    assert np.allclose(q["weight_xs"], q["mcEventWeight"] * 7.8e10 / 3.2e6)
    attrs = schema.check_complete(out / "main_train.h5", "dataset")
    assert attrs[schema.A_SCALED] == "crbatch-v1" and attrs[schema.A_SCALING]["track_pt"] == [0.0, 100.0]
    assert attrs[schema.A_SUMMARY]["build_id"] == attrs[schema.A_BUILD_ID]
    # Scaled values are finite and padding is zero.
    for t in schema.OBJECT_TABLES:
        tab = main_ds[t.name]
        for f in t.features:
            assert np.isfinite(tab[f]).all()
            assert (tab[f][~tab["valid"]] == 0).all(), (t.name, f)


# --- synthetic shards ------------------------------------------------------------------------------


def test_outputs_layout_and_attributes(built, shard_dir):
    assert outputs(built) == sorted([*(f"{r}_{s}.h5" for r in ("main", "cr") for s in SPLITS), "summary.json"])
    assert not list(built.glob(".*")), "temporary files left behind"
    for role in ("main", "cr"):
        for s in SPLITS:
            p = built / schema.dataset_filename(role, s)
            a = schema.check_complete(p, "dataset")
            assert (a[schema.A_ROLE], a[schema.A_SPLIT]) == (role, s)
            assert a[schema.A_SCALING] == ScalingConfig().constants()
            assert a[schema.A_CONFIG]["model"] == "BuildConfig"
            assert len(a[schema.A_SHARDS]) == 6
            with h5py.File(p) as f:
                assert f["jets"].dtype == schema.DATASET_JET_DTYPE
                assert f["clusters"].chunks[0] == schema.OBJECTS_CHUNK
                assert f["jets"].shape[0] == a[schema.A_N_JETS]
                src = f["jets"]["source"]
                assert src.min() >= 0 and src.max() < 6
    main_ds = concat(built, "main")
    # Every jet of the main classes is there once; the data shard only in the CR.
    n = {"qcd": 4000, "sig": 3000, "bib": 1000}
    assert np.bincount(main_ds["jets"]["label"]).tolist() == [n["qcd"], n["sig"], n["bib"]]
    assert len(np.unique(ids(main_ds["jets"]))) == sum(n.values())
    cr = concat(built, "cr")
    assert np.bincount(cr["jets"]["label"], minlength=4).tolist() == [4000, 0, 0, 2000]


def test_split_fractions_events_and_shuffle(built):
    per_split = {s: read(built / f"main_{s}.h5")["jets"] for s in SPLITS}
    n = sum(len(j) for j in per_split.values())
    frac = [len(per_split[s]) / n for s in SPLITS]
    assert frac == pytest.approx([0.9, 0.05, 0.05], abs=0.02)
    # All jets of an event in one split.
    events = {s: set(zip(j["runNumber"], j["eventNumber"], j["label"], strict=True)) for s, j in per_split.items()}
    assert not events["train"] & events["val"] and not events["train"] & events["test"]
    # QCD events are in the same split in the main dataset and in the control region.
    cr_train = read(built / "cr_train.h5")["jets"]
    q = cr_train[cr_train["label"] == 0]
    assert set(zip(q["eventNumber"], q["jet_index"], strict=True)) <= set(
        zip(per_split["train"]["eventNumber"], per_split["train"]["jet_index"], strict=True)
    )
    # Shuffled: labels and sources are mixed along the file.
    train = per_split["train"]
    assert len(np.unique(train["label"][:200])) == 3
    assert (np.diff(train["source"].astype(int)) != 0).mean() > 0.5


def _same_jets(tmp_path: Path, layout: list[tuple[int, str]]) -> list[dict[str, dict[str, np.ndarray]]]:
    """Build the same jets written as differently many shards in different orders."""
    rng = np.random.default_rng(7)
    tabs = {dt: random_tables(dt, 1500, rng, dsid=361022 if dt == "qcd" else 311314, mH=125 if dt == "sig" else 0,
                              mS=55 if dt == "sig" else 0, event_offset=i * 10**6)
            for i, dt in enumerate(("qcd", "sig", "bib", "data"))}  # fmt: skip
    results = []
    for k, (n_shards, order) in enumerate(layout):
        d = tmp_path / f"layout{k}"
        for dt, t in tabs.items():
            write_split(d, t, dt, n_shards, order=order, prefix=f"{dt}{k}", dsid=361022 if dt == "qcd" else -1,
                        mH=125 if dt == "sig" else 0, mS=55 if dt == "sig" else 0, sum_of_weights_initial=1e4)  # fmt: skip
        out = tmp_path / f"out{k}"
        assert build([d], out) == 0
        results.append({f"{r}_{s}": read(out / f"{r}_{s}.h5") for r in ("main", "cr") for s in SPLITS})
    return results


def test_split_and_order_independent_of_sharding(tmp_path):
    a, b, c = _same_jets(tmp_path, [(1, "forward"), (4, "reverse"), (7, "forward")])
    for name in a:
        ja, jb, jc = a[name]["jets"], b[name]["jets"], c[name]["jets"]
        assert np.array_equal(ids(ja), ids(jb)) and np.array_equal(ids(ja), ids(jc)), name
        # Not only the same sets: the same shuffled order and the same values (only ``source`` differs).
        fields = [f for f in schema.DATASET_JET_DTYPE.names if f != "source"]
        assert np.array_equal(ja[fields], jb[fields]) and np.array_equal(ja[fields], jc[fields]), name
        for t in schema.TABLES:
            assert np.array_equal(a[name][t], b[name][t]), (name, t)


def test_quotas_fractions_filters(shard_dir, tmp_path):
    cfg = tmp_path / "build.yaml"
    cfg.write_text(
        "main:\n  qcd: {max_jets: 1234}\n  sig: {fraction: 0.5}\ncr:\n  data: {max_jets: 500}\n"
        "event_filter: odd\nmass_points: [[125, 55]]\n"
    )
    out = tmp_path / "q"
    assert build([shard_dir], out, "--config", str(cfg)) == 0
    m = concat(out, "main")["jets"]
    cr = concat(out, "cr")["jets"]
    assert (m["label"] == 0).sum() == 1234  # exact, not approximate
    assert (cr["label"] == 3).sum() == 500
    assert (m["eventNumber"] % 2 == 1).all() and (cr["eventNumber"] % 2 == 1).all()
    sig = m[m["label"] == 1]
    assert set(zip(sig["llp_mH"], sig["llp_mS"], strict=True)) == {(125.0, 55.0)}
    odd_sig = (read(shard_dir / "sig_125_55.h5")["jets"]["eventNumber"] % 2 == 1).sum()
    assert len(sig) == pytest.approx(0.5 * odd_sig, rel=0.15)
    # Same seed: same selection; another seed: another one of the same size.
    out2 = tmp_path / "q2"
    assert build([shard_dir], out2, "--config", str(cfg), "--seed", "3") == 0
    m2 = concat(out2, "main")["jets"]
    q1, q2 = ids(m[m["label"] == 0]), ids(m2[m2["label"] == 0])
    assert len(q2) == 1234 and not np.array_equal(q1, q2)
    # The split does not depend on the seed (only on split_seed): shared jets stay in their split.
    tr1 = set(map(tuple, read(out / "main_train.h5")["jets"][["eventNumber", "label"]].tolist()))
    te2 = set(map(tuple, read(out2 / "main_test.h5")["jets"][["eventNumber", "label"]].tolist()))
    assert not tr1 & te2


def test_per_file_quota_and_yaml_entries(shard_dir, tmp_path):
    lst = tmp_path / "inputs.yaml"
    lst.write_text(
        f"- {{path: '{shard_dir}/qcd_*.h5', max_jets: 300, use: main}}\n"
        f"- {{path: '{shard_dir}/sig_125_55.h5', fraction: 0.25}}\n"
        f"- '{shard_dir}/bib.h5'\n"
    )
    out = tmp_path / "y"
    assert build([lst], out, "--max-jets-per-file", "100000") == 0
    assert not (out / "cr_train.h5").exists()  # no data shard: no control region
    m = concat(out, "main")["jets"]
    assert np.bincount(m["label"]).tolist()[0] == 600  # 300 from each QCD file
    assert np.bincount(m["mcChannelNumber"][m["label"] == 0]).max() == 300
    assert (m["label"] == 1).sum() == pytest.approx(500, rel=0.15)


def test_global_fraction_keeps_class_fractions(shard_dir, tmp_path):
    out = tmp_path / "f"
    assert build([shard_dir], out, "--fraction", "0.3") == 0
    counts = np.bincount(concat(out, "main")["jets"]["label"])
    assert counts / counts.sum() == pytest.approx(np.array([4000, 3000, 1000]) / 8000, abs=0.02)
    assert counts.sum() == pytest.approx(0.3 * 8000, rel=0.06)


def test_weights_balanced_per_split(built):
    for s in SPLITS:
        j = read(built / f"main_{s}.h5")["jets"]
        wb = j["weight_balanced"].astype(np.float64)
        assert wb[j["label"] == 0].sum() == pytest.approx(wb[j["label"] == 1].sum(), rel=1e-5)
        assert np.array_equal(j["weight_balanced"][j["label"] == 2], j["mcEventWeight"][j["label"] == 2])
        assert np.array_equal(j["weight_xs"], j["mcEventWeight"])  # no xsec table: raw
        c = read(built / f"cr_{s}.h5")["jets"]
        wb = c["weight_balanced"].astype(np.float64)
        assert wb[c["label"] == 0].sum() == pytest.approx(wb[c["label"] == 3].sum(), rel=1e-5)
        summ = schema.check_complete(built / f"main_{s}.h5")[schema.A_SUMMARY]["datasets"]["main"][s]
        assert summ["qcd"]["sum_weight_balanced"] == pytest.approx(summ["sig"]["sum_weight_balanced"], rel=1e-5)
        assert summ["qcd"]["jets"] == (j["label"] == 0).sum()


def test_cross_section_weights(tmp_path):
    d = tmp_path / "s"
    write_random_shard(d / "jz1_a.h5", "qcd", 800, 1, dsid=361021, sum_of_weights_initial=5000.0)
    write_random_shard(d / "jz1_b.h5", "qcd", 700, 2, dsid=361021, sum_of_weights_initial=3000.0)
    write_random_shard(d / "jz2_a.h5", "qcd", 900, 3, dsid=361022, sum_of_weights_initial=2000.0)
    # An empty shard of JZ1: no jets, but its Σw_initial counts.
    write_shard(d / "jz1_empty.h5", random_tables("qcd", 0, np.random.default_rng(0)),
                shard_attrs("qcd", 0, dsid=361021, sum_of_weights_initial=2000.0))  # fmt: skip
    write_random_shard(d / "sig.h5", "sig", 500, 4)
    write_random_shard(d / "bib.h5", "bib", 300, 5)
    xs = tmp_path / "xsec.yaml"
    xs.write_text("361021: 1.0e6\n361022: {xsec: 2.0e4, filter_eff: 0.5}\n")
    out = tmp_path / "o"
    assert build([d], out, "--xsec", str(xs), "--weight-base", "xs") == 0
    j = concat(out, "main")["jets"]
    expect = {361021: 1.0e6 / (5000 + 3000 + 2000), 361022: 2.0e4 * 0.5 / 2000}
    q = j[j["label"] == 0]
    want = q["mcEventWeight"].astype(np.float64) * np.vectorize(expect.get)(q["mcChannelNumber"])
    assert np.allclose(q["weight_xs"], want, rtol=1e-6)
    assert np.array_equal(j["weight_xs"][j["label"] == 1], j["mcEventWeight"][j["label"] == 1])
    assert (j["weight_xs"][j["label"] == 2] == 1).all()
    for s in SPLITS:  # balanced on top of the xs weight
        js = read(out / f"main_{s}.h5")["jets"]
        ratio = js["weight_balanced"][js["label"] == 0] / js["weight_xs"][js["label"] == 0]
        assert np.allclose(ratio, ratio[0], rtol=1e-5)
        wb = js["weight_balanced"].astype(np.float64)
        assert wb[js["label"] == 0].sum() == pytest.approx(wb[js["label"] == 1].sum(), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"]["sum_of_weights_initial"] == {"361021": 10000.0, "361022": 2000.0}
    assert summary["files"]["skipped_by_reason"] == {"empty": 1}
    # A DSID missing from the table: exit 3 naming it, nothing written.
    xs.write_text("361021: 1.0e6\n")
    out2 = tmp_path / "o2"
    assert build([d], out2, "--xsec", str(xs)) == 3
    assert not out2.exists() or not list(out2.glob("*.h5"))


def _raw_by_id(shard_dir: Path) -> dict[tuple, tuple[dict, int]]:
    tabs = [read(p) for p in sorted(shard_dir.glob("*.h5"))]
    raw = {k: np.concatenate([t[k] for t in tabs]) for k in tabs[0]}
    return raw


def _match(ds_jets: np.ndarray, raw_jets: np.ndarray) -> np.ndarray:
    """Index into raw_jets of each dataset jet (by run, event, jet_index, label)."""
    key = ["runNumber", "eventNumber", "jet_index", "label"]
    dt = [("runNumber", "u4"), ("eventNumber", "u8"), ("jet_index", "i2"), ("label", "i1")]
    r = raw_jets[key].astype(dt)
    d = ds_jets[key].astype(dt)
    order = np.argsort(r)
    pos = np.searchsorted(r[order], d)
    idx = order[pos]
    assert np.array_equal(r[idx], d)
    return idx


def test_scaling_applied_as_recorded(built, shard_dir):
    ds = read(built / "main_train.h5")
    raw = _raw_by_id(shard_dir)
    idx = _match(ds["jets"], raw["jets"])
    c = schema.check_complete(built / "main_train.h5")[schema.A_SCALING]
    (jlo, jhi), (clo, chi), (tlo, thi) = c["jet_pt"], c["cluster_pt"], c["track_pt"]
    rj, rc, rt = raw["jets"][idx], raw["clusters"][idx], raw["tracks"][idx]
    assert np.allclose(ds["jets"]["pt_scaled"], (rj["pt"] - jlo) / (jhi - jlo), rtol=1e-6)
    assert np.array_equal(ds["jets"]["pt"], rj["pt"])  # raw pt kept
    v = rc["valid"]
    assert np.allclose(ds["clusters"]["pt"], np.where(v, (rc["pt"] - 1000 * clo) / (1000 * (chi - clo)), 0), rtol=1e-6)
    flip = (rc["eta"] * rc["pt"]).sum(1) < 0
    assert np.allclose(ds["clusters"]["eta"], np.where(flip[:, None], -rc["eta"], rc["eta"]))
    tot = sum(rc[n].astype(np.float64) for n in LAYERS)
    for n in LAYERS:
        want = np.where(v & (tot != 0), rc[n] / np.where(tot == 0, 1, tot), 0)
        assert np.allclose(ds["clusters"][n], want, rtol=1e-5, atol=1e-7)
    vt = rt["valid"]
    assert np.allclose(ds["tracks"]["pt"], np.where(vt, (rt["pt"] - tlo) / (thi - tlo), 0), rtol=1e-6)
    assert np.allclose(ds["tracks"]["z0"], rt["z0"] / c["track_z0_scale"], rtol=1e-6)
    tflip = (rt["eta"] * rt["pt"]).sum(1) < 0
    assert np.allclose(ds["tracks"]["eta"], np.where(tflip[:, None], -rt["eta"], rt["eta"]))
    for f in ("phi", "d0", "chiSquared", "SCTHits"):
        assert np.array_equal(ds["tracks"][f], rt[f])
    assert np.array_equal(ds["msegs"], raw["msegs"][idx])
    assert np.array_equal(ds["clusters"]["valid"], v)


def test_reference_exact_scaling_formula():
    """reference_exact reproduces the reference's pre_process, bugs included (jet window 40–500)."""
    t = random_tables("qcd", 500, np.random.default_rng(1))
    cfg = ScalingConfig(jet_pt=(40.0, 500.0), reference_exact=True)
    s, jet_pt = scale_tables(t, cfg, keep_nan=True)
    lo, hi = 40.0, 500.0
    assert np.allclose(jet_pt, (t["jets"]["pt"] - lo) / (hi - lo), rtol=1e-6)
    assert np.allclose(s["clusters"]["pt"], (t["clusters"]["pt"] - lo) / ((hi - lo) * 1000), rtol=1e-5)
    tpt = (t["tracks"]["pt"] - lo) / (hi - lo)
    assert np.allclose(s["tracks"]["pt"], tpt, rtol=1e-6)
    pad = ~t["tracks"]["valid"]
    assert np.allclose(s["tracks"]["pt"][pad], -lo / (hi - lo))  # negative padding, as the reference
    flip = (t["tracks"]["eta"] * tpt).sum(1) < 0  # weighted with the SCALED pt (the bug)
    assert np.allclose(s["tracks"]["eta"], np.where(flip[:, None], -t["tracks"]["eta"], t["tracks"]["eta"]))
    assert np.isnan(s["clusters"]["l1ecal"][~t["clusters"]["valid"]]).all()  # 0/0 in empty slots
    s0, _ = scale_tables(t, cfg)  # default: NaN → 0 as the reference's loader did
    assert (s0["clusters"]["l1ecal"][~t["clusters"]["valid"]] == 0).all()
    assert ScalingConfig.from_constants(cfg.constants()).constants() == cfg.constants()
    assert cfg.constants()["track_pt"] == [40.0, 500.0] and cfg.constants()["eta_flip"]["tracks"] == "scaled_pt"


def test_reference_exact_build_flag(shard_dir, tmp_path):
    out = tmp_path / "r"
    assert build([shard_dir], out, "--reference-exact", "--set", "scaling.jet_pt=[40, 500]") == 0
    a = schema.check_complete(out / "main_val.h5")
    assert a[schema.A_SCALED] == "reference-exact"
    t = read(out / "main_val.h5")["tracks"]
    assert np.allclose(t["pt"][~t["valid"]], -40 / 460)


# --- idempotency and errors ------------------------------------------------------------------------


def test_idempotent_skip_force_and_config_change(shard_dir, tmp_path, caplog):
    out = tmp_path / "i"
    assert build([shard_dir], out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert build([shard_dir], out) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before  # skipped
    assert build([shard_dir], out, "--force") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} != before
    # Another config rebuilds; dropping the data shards removes the old control-region files.
    sub = tmp_path / "nodata"
    shutil.copytree(shard_dir, sub)
    (sub / "data.h5").unlink()
    assert build([sub], out, "--seed", "1") == 0
    assert outputs(out) == sorted([*(f"main_{s}.h5" for s in SPLITS), "summary.json"])


def test_missing_input_exit_10(tmp_path):
    assert build([tmp_path / "nope.h5"], tmp_path / "o") == 10
    assert build([str(tmp_path / "nothing*.h5")], tmp_path / "o") == 10
    assert not (tmp_path / "o").exists()


def test_other_schema_and_incomplete_exit_12(shard_dir, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(shard_dir, d)
    with h5py.File(d / "bib.h5", "a") as f:
        f.attrs[schema.A_SCHEMA] = 99
    out = tmp_path / "o"
    assert build([d], out) == 12
    assert not out.exists() or not list(out.iterdir())
    with h5py.File(d / "bib.h5", "a") as f:
        f.attrs[schema.A_SCHEMA] = schema.SCHEMA_VERSION
        del f.attrs[schema.A_COMPLETE]
    assert build([d], out) == 12
    # With skip_bad_shards the shard is skipped and counted; a second BIB shard keeps the class alive.
    write_random_shard(d / "bib2.h5", "bib", 100, 99)
    assert build([d], out, "--skip-bad-shards") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["files"]["skipped"] == 1 and "incomplete shard" in s["skipped_files"][0]["reason"]


def test_class_without_jets_exit_13(shard_dir, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(shard_dir, d)
    (d / "bib.h5").unlink()
    out = tmp_path / "o"
    assert build([d], out) == 13
    assert not out.exists() or not list(out.glob("*.h5"))
    assert build([d], out, "--main-classes", "qcd", "sig") == 0
    # A filter that leaves the signal class empty.
    assert build([d], tmp_path / "o2", "--set", "mass_points=[[1, 1]]") == 13


def test_invalid_config_exit_3(shard_dir, tmp_path):
    assert build([shard_dir], tmp_path / "o", "--set", "split.train=0.5") == 3
    assert build([shard_dir], tmp_path / "o", "--set", "bogus=1") == 3
    assert build([shard_dir], tmp_path / "o", "--weight-base", "xs") == 3  # needs --xsec
    bad = tmp_path / "l.yaml"
    bad.write_text(f"- {{path: '{shard_dir}/sig_125_55.h5', use: cr}}\n")
    assert build([bad], tmp_path / "o") == 3


def test_failure_leaves_previous_outputs(shard_dir, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert build([shard_dir], out) == 0
    before = {p.name: p.read_bytes()[:4096] for p in out.glob("*.h5")}

    from crbatch.build import write

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write, "create_tables", boom)
    assert build([shard_dir], out, "--seed", "5") == 20  # transient: retry
    assert {p.name: p.read_bytes()[:4096] for p in out.glob("*.h5")} == before
    assert not list(out.glob(".*")), "temporary files left behind"


def test_print_config(capsys, shard_dir):
    assert main(["build", str(shard_dir), "--print-config", "--seed", "9"]) == 0
    text = capsys.readouterr().out
    assert "seed: 9" in text and "reference_exact: false" in text


def test_workers_give_identical_datasets(shard_dir, built, tmp_path):
    out, scratch = tmp_path / "w2", tmp_path / "scratch"
    scratch.mkdir()
    assert build([shard_dir], out, "--workers", "2", "--bucket-mb", "16", "--tmp-dir", str(scratch)) == 0
    assert not list(scratch.iterdir()) and not list(out.glob(".*"))
    for role in ("main", "cr"):
        for s in SPLITS:
            a, b = read(built / f"{role}_{s}.h5"), read(out / f"{role}_{s}.h5")
            for k in a:
                assert np.array_equal(a[k], b[k]), (role, s, k)


def test_unreadable_shard_exit_11(shard_dir, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(shard_dir, d)
    data = (d / "bib.h5").read_bytes()
    (d / "bib.h5").write_bytes(data[: len(data) // 3])  # truncated copy
    assert build([d], tmp_path / "o") == 11
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.h5"))


def test_input_list_forms_and_errors(tmp_path):
    """One YAML input-list reader (crbatch.config.load_input_list) for build and convert."""
    from crbatch.build.config import BuildInput
    from crbatch.config import load_input_list
    from crbatch.convert.config import InputEntry
    from crbatch.errors import ConfigError, ExitCode, InputMissing

    lst = tmp_path / "in.yaml"
    lst.write_text("inputs:\n  - a.h5\n  - {path: b.h5, max_jets: 10}\n")
    got = load_input_list(lst, BuildInput, bare="path")  # a bare string is a path
    assert [str(e.path) for e in got] == ["a.h5", "b.h5"] and got[1].max_jets == 10
    with pytest.raises(ConfigError, match="entry 0"):
        load_input_list(lst, InputEntry)  # convert entries need a type: no bare strings
    with pytest.raises(InputMissing) as e:
        load_input_list(tmp_path / "none.yaml", BuildInput)
    assert e.value.code == ExitCode.INPUT_MISSING
    for text in ("inputs: 3\n", "- [unclosed\n"):
        lst.write_text(text)
        with pytest.raises(ConfigError):
            load_input_list(lst, BuildInput)
    assert build([tmp_path / "none.yaml"], tmp_path / "out") == ExitCode.INPUT_MISSING
