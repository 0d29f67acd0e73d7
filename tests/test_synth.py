"""``crbatch synth divert``: real-schema synthetic DiVertAnalysis ntuples that the converter reads,
that are reproducible, and whose physics separates signal, QCD, BIB and data."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from crbatch import schema
from crbatch.cli import main
from crbatch.convert.selection import branches_for
from crbatch.errors import ConfigError, CrbatchError, ExitCode
from crbatch.synth import divert

TYPES = ("sig", "qcd", "bib", "data")
MASSES = {"mH": 125.0, "mS": 55.0}
REFERENCE_OF = {
    "sig": "sig_311314_bad_object_small.root",
    "qcd": "short_divert_analysis_file.root",
    "bib": "bib.root",
    "data": "bib.root",
}
EVENTS = 3000


def _synth(synth_file, data_type: str, events: int = EVENTS, seed: int = 7) -> Path:
    return synth_file(data_type, events, seed, **(MASSES if data_type == "sig" else {}))


def _tree(path: Path):
    return uproot.open(path)[divert.TREE]


# --- schema ---------------------------------------------------------------------------------------------


def test_writer_covers_every_branch_the_converter_reads():
    for t in TYPES:
        written = {b.name for b in divert.branches(t)}
        assert set(branches_for(t)) <= written, t
    data_only = {b.name for b in divert.branches("data")}
    assert not data_only & {"mcEventWeight", "mcChannelNumber", "llp_pT"}


@pytest.mark.parametrize("data_type", TYPES)
def test_schema_matches_real_ntuples(data_type, reference_dir, synth_file):
    ref = _tree(reference_dir / "divert" / REFERENCE_OF[data_type])
    syn = _tree(_synth(synth_file, data_type))
    extra = ["nn_jet_index", "lumiBlock"] + (["mcChannelNumber"] if data_type in schema.MC_TYPES else [])
    for name in [*branches_for(data_type), *extra]:
        assert name in syn, name
        assert syn[name].typename == ref[name].typename, name
    if data_type in ("bib", "data"):  # data has no MC truth, exactly like the real data file
        for name in ("mcEventWeight", "mcChannelNumber", "llp_pT", "llp_Lxy"):
            assert name not in syn and name not in ref
    if data_type == "qcd":
        assert "llp_pT" not in syn


@pytest.mark.parametrize("data_type", ["qcd", "sig"])
def test_mc_event_count_histogram(data_type, reference_dir, synth_file):
    path = _synth(synth_file, data_type)
    ref = uproot.open(reference_dir / "divert" / REFERENCE_OF["qcd"])["MetaData_EventCount"]
    h = uproot.open(path)["MetaData_EventCount"]
    assert h.classname == "TH1D"
    assert list(h.axis().labels()) == list(ref.axis().labels())
    v = dict(zip(h.axis().labels(), h.values(), strict=True))
    w = _tree(path)["mcEventWeight"].array(library="np").astype(float)
    assert v["nEvents selected"] == EVENTS
    assert v["sumOfWeights selected"] == pytest.approx(w.sum(), rel=1e-9)
    assert v["sumOfWeightsSquared selected"] == pytest.approx((w**2).sum(), rel=1e-9)
    for what in ("nEvents", "sumOfWeights", "sumOfWeightsSquared"):
        assert v[f"{what} initial"] > v[f"{what} selected"]


def test_data_files_have_no_histogram(synth_file):
    assert "MetaData_EventCount" not in uproot.open(_synth(synth_file, "bib"))


def test_event_content_is_consistent(synth_file):
    t = _tree(_synth(synth_file, "qcd")).arrays(
        ["eventNumber", "runNumber", "mcEventWeight", "mcChannelNumber", "jet_pT", "nn_jet_index",
         "cluster_jetIndex", "track_jetIndex", "MSeg_jetIndex", "jet_eta"]
    )  # fmt: skip
    ev = t["eventNumber"].to_numpy()
    assert len(np.unique(ev)) == EVENTS and ev.min() == 7 * 10**9
    assert ak.all(t["runNumber"] == 284500)
    assert set(np.unique(t["mcChannelNumber"].to_numpy())) <= {361020 + k for k in range(5)}
    assert np.std(np.log(t["mcEventWeight"].to_numpy())) > 1.0  # slice weights span decades
    pt = t["jet_pT"]
    assert ak.all(pt[:, :-1] >= pt[:, 1:])  # pT-ordered, as DiVertAnalysis writes them
    assert ak.all(t["nn_jet_index"] == ak.local_index(pt))
    n_jets = ak.num(pt)
    assert ak.all((t["cluster_jetIndex"] >= 0) & (t["cluster_jetIndex"] < n_jets))
    flat_eta = ak.to_numpy(ak.flatten(t["jet_eta"]))
    assert np.abs(flat_eta).max() > 3.5  # forward jets too
    for name in ("track_jetIndex", "MSeg_jetIndex"):
        links = t[name]
        n_links = ak.to_numpy(ak.flatten(ak.num(links, axis=2)))
        assert (n_links >= 1).all()
        assert ak.any(links == -1)  # unassociated objects
        assert ak.all((links == -1) | ((links >= 0) & (links < n_jets)))
        assert ak.all(ak.flatten(links[:, :, 1:] > links[:, :, :-1], axis=None))  # sorted, no repeats
    mseg_links = ak.to_numpy(ak.flatten(ak.num(t["MSeg_jetIndex"], axis=2)))
    assert (mseg_links >= 2).mean() > 0.03  # segments shared by two or three jets, as in real files
    assert mseg_links.max() <= 3


def test_signal_llps(synth_file):
    t = _tree(_synth(synth_file, "sig")).arrays(["llp_pT", "llp_eta", "llp_Lxy", "llp_Lz", "mcChannelNumber"])
    assert ak.all(ak.num(t["llp_pT"]) == 2)
    eta, lxy, lz = (ak.to_numpy(ak.flatten(t[k])) for k in ("llp_eta", "llp_Lxy", "llp_Lz"))
    np.testing.assert_allclose(lz / lxy, np.sinh(eta), rtol=1e-4, atol=1e-4)  # decay point on the LLP line
    barrel = (np.abs(eta) < 1.4) & (lxy > 1200) & (lxy < 4000)
    endcap = (np.abs(eta) > 1.4) & (np.abs(lz) > 3500) & (np.abs(lz) < 6000)
    frac = (barrel | endcap).mean()
    assert 0.1 < frac < 0.6, frac
    assert ak.all(t["mcChannelNumber"] == 311314)


def test_heavier_signal_has_harder_llps(synth_file):
    light = _tree(_synth(synth_file, "sig", events=1000))["llp_pT"].array()
    heavy = _tree(synth_file("sig", 1000, 7, mH=600.0, mS=150.0))["llp_pT"].array()
    assert ak.mean(heavy) > 2.5 * ak.mean(light)


# --- determinism ---------------------------------------------------------------------------------------


def _arrays(path: Path) -> dict[str, ak.Array]:
    t = _tree(path)
    return {k: t[k].array() for k in t.keys()}  # noqa: SIM118 - uproot trees iterate over branches


def test_same_seed_same_content_across_blocks(tmp_path, synth_file, monkeypatch):
    synth_file("qcd", 10, 0)  # only to skip without PyROOT
    monkeypatch.setattr(divert, "BLOCK_EVENTS", 700)  # several blocks, so the prefetch pipeline is exercised
    a = _arrays(divert.write_divert(tmp_path / "a.root", "sig", 2000, 11, **MASSES))
    b = _arrays(divert.write_divert(tmp_path / "b.root", "sig", 2000, 11, **MASSES))
    c = _arrays(divert.write_divert(tmp_path / "c.root", "sig", 2000, 12, **MASSES))
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert ak.array_equal(a[k], b[k]), k
    ev = a["eventNumber"].to_numpy()
    assert (np.diff(ev) == 1).all() and ev[0] == 11 * 10**9
    assert not np.intersect1d(ev, c["eventNumber"].to_numpy()).size
    for k in ("jet_pT", "clus_time", "track_d0", "MSeg_t0", "llp_Lxy"):
        assert not ak.array_equal(a[k], c[k]), k


def test_qcd_and_data_of_one_seed_differ(synth_file):
    q = _tree(_synth(synth_file, "qcd"))["jet_pT"].array()
    d = _tree(_synth(synth_file, "data"))["jet_pT"].array()
    assert not ak.array_equal(q, d)


# --- through the converter: masks, truncation, physics -----------------------------------------------


@pytest.fixture(scope="module")
def shards(synth_file, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("shards")
    tables = {}
    for t in TYPES:
        src = _synth(synth_file, t)
        extra = ["--mH", "125", "--mS", "55"] if t == "sig" else []
        dst = out / f"{t}.h5"
        assert main(["convert", "divert", str(src), "--type", t, *extra, "--out", str(dst)]) == 0
        with h5py.File(dst, "r") as f:
            tables[t] = {k: f[k][:] for k in ("jets", "clusters", "tracks", "msegs")}
    return tables


def _valid_mean(s: dict[str, np.ndarray], table: str, field: str) -> float:
    return float(s[table][field][s[table]["valid"]].mean())


@pytest.mark.parametrize("data_type", TYPES)
def test_converts_with_consistent_masks(shards, data_type):
    s = shards[data_type]
    assert len(s["jets"]) >= 100
    assert (s["jets"]["label"] == int(schema.DATA_TYPES[data_type])).all()
    for table in schema.OBJECT_TABLES:
        v = s[table.name]["valid"]
        n = s["jets"][f"n_{table.name}"]
        assert (v.sum(1) == np.minimum(n, table.slots)).all()
        assert (v == (np.arange(table.slots) < v.sum(1)[:, None])).all()


def test_truncation_is_exercised(shards):
    j = shards["qcd"]["jets"]
    assert (j["n_clusters"] > schema.N_CLUSTERS).sum() >= 5
    assert (j["n_tracks"] > schema.N_TRACKS).sum() >= 5
    assert (j["n_msegs"] > schema.N_MSEGS).sum() >= 5


def test_cluster_time_orders_bib_qcd_signal(shards):
    t = {k: _valid_mean(shards[k], "clusters", "time") for k in TYPES}
    assert abs(t["qcd"]) < 0.1, t
    assert t["bib"] < t["qcd"] - 1.0, t  # BIB arrives early
    assert t["sig"] > t["qcd"] + 1.0, t  # slow LLPs decay late


def test_signal_jets_are_deep_narrow_and_trackless(shards):
    sig, qcd = shards["sig"], shards["qcd"]
    assert sig["jets"]["n_tracks"].mean() < 0.3 * qcd["jets"]["n_tracks"].mean()

    def em_fraction(s):
        c = s["clusters"]
        em = sum(c[f"l{i}ecal"].sum() for i in range(1, 5))
        had = sum(c[f"l{i}hcal"].sum() for i in range(1, 5))
        return em / (em + had)

    assert em_fraction(sig) < 0.5 < em_fraction(qcd)
    dr = sig["jets"]["match_dR"]
    assert (dr >= 0).all() and np.median(dr) < 0.2


def test_bib_jets_are_horizontal_with_beam_parallel_segments(shards):
    b = shards["bib"]
    assert (np.abs(np.sin(b["jets"]["phi"])) < 0.4).mean() > 0.8
    m = b["msegs"]
    assert np.median(np.abs(m["etaDir"][m["valid"]])) > 1.5
    assert _valid_mean(b, "msegs", "t0") < -10.0
    assert b["jets"]["n_tracks"].mean() < 2.0


def test_data_is_slightly_mismodelled_qcd(shards):
    d, q = shards["data"], shards["qcd"]
    dt = _valid_mean(d, "clusters", "time") - _valid_mean(q, "clusters", "time")
    assert 0.05 < dt < 0.4, dt  # a calibration offset: small but far beyond the statistical error (~0.01 ns)
    ratio = d["jets"]["n_tracks"].mean() / q["jets"]["n_tracks"].mean()
    assert 0.8 < ratio < 0.97, ratio
    # ... while the kinematics are the same physics
    assert d["jets"]["pt"].mean() == pytest.approx(q["jets"]["pt"].mean(), rel=0.1)


# --- errors ----------------------------------------------------------------------------------------------


def _synth_cli(*args: object) -> int:
    return main(["synth", "divert", *map(str, args)])


def test_signal_without_masses_is_a_config_error(tmp_path):
    out = tmp_path / "s.root"
    assert _synth_cli("--type", "sig", "--mH", 125, "--events", 10, "--out", out) == ExitCode.CONFIG
    assert not out.exists()
    with pytest.raises(ConfigError):
        divert.write_divert(out, "sig", 10, 1)


def test_unknown_type_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _synth_cli("--type", "ttbar", "--events", 10, "--out", tmp_path / "x.root")
    assert e.value.code == ExitCode.USAGE
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("qcd", 10, 1, None, None, 361099), "JZ slices"),
        (("data", 10, 1, None, None, 361021), "no mcChannelNumber"),
        (("qcd", 10, 1, 125.0, 55.0, None), "signal only"),
        (("sig", 10, 1, 100.0, 60.0, None), "2·mS < mH"),
        (("qcd", -1, 1, None, None, None), "--events"),
    ],
)
def test_bad_arguments(tmp_path, args, match):
    with pytest.raises(ConfigError, match=match):
        divert.write_divert(tmp_path / "x.root", *args)


def test_missing_pyroot_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(divert, "_ROOT", None)
    monkeypatch.setitem(sys.modules, "ROOT", None)  # makes `import ROOT` fail
    with pytest.raises(CrbatchError, match=r"pip install 'crbatch\[synth\]'") as e:
        divert.write_divert(tmp_path / "x.root", "qcd", 10, 1)
    assert e.value.code == ExitCode.CONFIG
    assert not list(tmp_path.iterdir())


def test_failure_leaves_no_file(tmp_path, synth_file, monkeypatch):
    synth_file("qcd", 10, 0)  # only to skip without PyROOT
    calls = []

    def boom(spec, index):
        calls.append(index)
        raise RuntimeError("generator failed")

    monkeypatch.setattr(divert, "make_block", boom)
    with pytest.raises(RuntimeError):
        divert.write_divert(tmp_path / "x.root", "qcd", 100, 1)
    assert calls and not list(tmp_path.iterdir())


# --- command line ----------------------------------------------------------------------------------------


def test_cli_writes_a_file(tmp_path, synth_file):
    synth_file("qcd", 10, 0)  # only to skip without PyROOT
    out = tmp_path / "sub" / "q.root"
    assert _synth_cli("--type", "qcd", "--dsid", 361023, "--events", 200, "--seed", 3, "--out", out) == 0
    t = _tree(out).arrays(["mcChannelNumber", "jet_pT", "eventNumber"])
    assert ak.all(t["mcChannelNumber"] == 361023)  # one JZ slice: leading jets 160–400 GeV
    lead = ak.to_numpy(ak.max(t["jet_pT"], axis=1))
    assert (lead >= 160).all() and (lead <= 400).all()
    assert [p.name for p in out.parent.iterdir()] == ["q.root"]


def test_sigterm_removes_temporary_and_exits_retryable(tmp_path, synth_file):
    synth_file("qcd", 10, 0)  # only to skip without PyROOT
    out = tmp_path / "q.root"
    args = ["synth", "divert", "--type", "qcd", "--events", "2000000", "--out", str(out)]
    p = subprocess.Popen([sys.executable, "-c", "from crbatch.cli import run; run()", *args],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".q.root.*")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == ExitCode.INTERRUPTED, err[-2000:]
    assert not list(tmp_path.iterdir())
