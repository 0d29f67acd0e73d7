"""``crbatch convert divert`` on the real reference ntuples: selection, features, errors, atomicity."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from crbatch import schema
from crbatch.cli import main
from crbatch.errors import ExitCode

REF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference" / "divert"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="reference data (../shared/data/reference) absent")
SIG = REF / "sig_311314_bad_object_small.root"
BIB = REF / "bib.root"
QCD = REF / "short_divert_analysis_file.root"
EMPTY = REF / "empty_divert_analysis_file.root"


def convert(*args: object) -> int:
    return main(["convert", "divert", *map(str, args)])


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with h5py.File(path, "r") as f:
        tables = {k: f[k][:] for k in ("jets", "clusters", "tracks", "msegs")}
        attrs = schema.read_attrs(f)
    return tables, attrs


def check_masks(t: dict[str, np.ndarray]) -> None:
    """Valid slots are contiguous from slot 0, count = min(associated, slots), padding is zero."""
    for table in schema.OBJECT_TABLES:
        v = t[table.name]["valid"]
        n = v.sum(axis=1)
        assert (n == np.minimum(t["jets"][f"n_{table.name}"], table.slots)).all()
        assert (v == (np.arange(table.slots) < n[:, None])).all()
        for f in table.features:
            assert (t[table.name][f][~v] == 0).all()


@needs_ref
def test_signal_file_matches_reference_counts(tmp_path):
    assert convert(SIG, "--type", "sig", "--mH", 125, "--mS", 55, "--output-dir", tmp_path) == 0
    t, a = read(tmp_path / "sig_311314_bad_object_small.h5")
    jets = t["jets"]
    # The reference keeps 21 jets from 23 passing events on this file; no LLP matched two jets here,
    # so de-duplication changes nothing.
    assert len(jets) == 21
    assert a["cutflow"]["events_read"] == 100
    assert a["cutflow"]["events_with_accepted_llp_and_good_jet"] == 23
    assert a["cutflow"]["events_with_matched_jet"] == 21
    assert (jets["label"] == schema.Label.SIGNAL).all()
    assert (jets["llp_mH"] == 125).all() and (jets["llp_mS"] == 55).all()
    assert (jets["match_dR"] <= 0.4).all() and (jets["match_dR"] >= 0).all()
    # The jet really is within 0.4 of its LLP, and the LLP is in the fiducial volume.
    deta = jets["eta"] - jets["llp_eta"]
    dphi = (jets["phi"] - jets["llp_phi"] + np.pi) % (2 * np.pi) - np.pi
    assert np.allclose(np.hypot(deta, dphi), jets["match_dR"], atol=1e-5)
    barrel = (abs(jets["llp_eta"]) < 1.4) & (jets["llp_Lxy"] > 1200) & (jets["llp_Lxy"] < 4000)
    endcap = (abs(jets["llp_eta"]) > 1.4) & (abs(jets["llp_Lz"]) > 3500) & (abs(jets["llp_Lz"]) < 6000)
    assert (barrel | endcap).all()
    assert ((jets["pt"] >= 40) & (jets["pt"] < 500) & (abs(jets["eta"]) <= 2.5)).all()
    # Physical ranges and relative coordinates.
    c, tr, m = t["clusters"], t["tracks"], t["msegs"]
    lead = c["valid"][:, 0]
    assert lead.all()
    assert (c["eta"][:, 0] == 0).all() and (c["phi"][:, 0] == 0).all()
    assert (c["pt"][c["valid"]] > 0).all() and c["pt"].max() > 1000  # MeV
    assert (abs(c["phi"][c["valid"]]) <= np.pi).all()
    both = c["valid"][:, 1:] & c["valid"][:, :-1]
    assert (np.diff(c["pt"], axis=1)[both] <= 0).all()  # pT-ordered
    assert (abs(tr["eta"][tr["valid"]]) <= 0.41).all() and (abs(tr["phi"][tr["valid"]]) <= 0.41).all()
    assert (abs(m["phiPos"][m["valid"]]) <= np.pi).all()
    check_masks(t)
    assert a["status"] == "ok" and a["complete"] is True and a["data_type"] == "sig"
    assert a["dsid"] == 311314 and a["schema_version"] == schema.SCHEMA_VERSION
    assert a["config"]["model"] == "ConvertDivertConfig"
    assert a["source_size"] == SIG.stat().st_size


@needs_ref
def test_bib_file(tmp_path):
    assert convert(BIB, "--type", "bib", "--output-dir", tmp_path) == 0
    t, a = read(tmp_path / "bib.h5")
    assert len(t["jets"]) == 1  # one event has an isBIB HLT jet, as in the reference
    assert t["jets"]["label"][0] == schema.Label.BIB
    assert t["jets"]["mcEventWeight"][0] == 1.0 and t["jets"]["mcChannelNumber"][0] == 0
    assert 0 <= t["jets"]["match_dR"][0] <= 0.4
    assert a["cutflow"]["events_with_bib_hlt_jet"] >= 1
    check_masks(t)


@needs_ref
def test_qcd_file_keeps_raw_weight_and_event_count(tmp_path):
    assert convert(QCD, "--type", "qcd", "--output-dir", tmp_path) == 0
    t, a = read(tmp_path / "short_divert_analysis_file.h5")
    assert len(t["jets"]) == 1
    assert t["jets"]["mcChannelNumber"][0] == 361020 and a["dsid"] == 361020
    assert t["jets"]["mcEventWeight"][0] == pytest.approx(1.0)
    hist = a["metadata_histograms"]["MetaData_EventCount"]
    assert hist["labels"][0] == "nEvents initial" and hist["values"][0] == 2_000_000
    assert a["sum_of_weights_initial"] == 2_000_000


@needs_ref
def test_jet_window_option(tmp_path):
    assert convert(SIG, "--type", "qcd", "--min-jet-pt", 25, "--max-jet-pt", 100, "--output-dir", tmp_path) == 0
    t, _ = read(tmp_path / "sig_311314_bad_object_small.h5")
    assert len(t["jets"]) > 0
    assert ((t["jets"]["pt"] >= 25) & (t["jets"]["pt"] < 100)).all()


def _reference_association(root: Path, tree: str = "trees_DV_"):
    """Slow per-event reimplementation of the reference's association for the qcd type."""
    import uproot

    a = uproot.open(root)[tree].arrays(library="np")
    rows = []
    for e in range(len(a["eventNumber"])):
        jpt, jeta, jphi = a["jet_pT"][e], a["jet_eta"][e], a["jet_phi"][e]
        for j in np.argsort(-jpt, kind="stable"):
            if not (40 <= jpt[j] < 500 and abs(jeta[j]) <= 2.5):
                continue
            cl = [i for i in range(len(a["clus_pt"][e])) if a["cluster_jetIndex"][e][i] == j]
            cl.sort(key=lambda i: -a["clus_pt"][e][i])
            tr = [i for i in range(len(a["track_pT"][e])) if j in list(a["track_jetIndex"][e][i])]
            tr.sort(key=lambda i: -a["track_pT"][e][i])
            ms = [i for i in range(len(a["MSeg_etaPos"][e])) if j in list(a["MSeg_jetIndex"][e][i])]
            lead_eta = a["clus_eta"][e][cl[0]] if cl else 0.0
            rows.append(
                {
                    "event": int(a["eventNumber"][e]),
                    "jet": int(j),
                    "n": (len(cl), len(tr), len(ms)),
                    "clus_pt": [a["clus_pt"][e][i] for i in cl[:30]],
                    "clus_eta": [a["clus_eta"][e][i] - lead_eta for i in cl[:30]],
                    "track_pt": [a["track_pT"][e][i] for i in tr[:20]],
                    "track_eta": [a["track_eta"][e][i] - jeta[j] for i in tr[:20]],
                    "mseg_etaDir": [a["MSeg_etaDir"][e][i] for i in ms[:30]],
                    "mseg_phiPos": [
                        (a["MSeg_phiPos"][e][i] - jphi[j] + math.pi) % (2 * math.pi) - math.pi for i in ms[:30]
                    ],
                }
            )
    return rows


@needs_ref
def test_association_matches_independent_implementation(tmp_path):
    """Every jet's clusters, tracks and segments agree with a slow per-event implementation."""
    assert convert(SIG, "--type", "qcd", "--output-dir", tmp_path, "--step-size", 7) == 0  # many chunks
    t, a = read(tmp_path / "sig_311314_bad_object_small.h5")
    expected = _reference_association(SIG)
    # As qcd, the reference keeps 109 jets from 59 events.
    assert len(t["jets"]) == len(expected) == 109
    assert a["cutflow"]["events_with_good_jet"] == 59
    jets = t["jets"]
    for i, exp in enumerate(expected):
        assert (int(jets["eventNumber"][i]), int(jets["jet_index"][i])) == (exp["event"], exp["jet"])
        assert (jets["n_clusters"][i], jets["n_tracks"][i], jets["n_msegs"][i]) == exp["n"]
        c, tr, m = t["clusters"][i], t["tracks"][i], t["msegs"][i]
        np.testing.assert_allclose(c["pt"][c["valid"]], exp["clus_pt"], rtol=1e-6)
        np.testing.assert_allclose(c["eta"][c["valid"]], exp["clus_eta"], atol=1e-5)
        np.testing.assert_allclose(tr["pt"][tr["valid"]], exp["track_pt"], rtol=1e-6)
        np.testing.assert_allclose(tr["eta"][tr["valid"]], exp["track_eta"], atol=1e-5)
        np.testing.assert_allclose(m["etaDir"][m["valid"]], exp["mseg_etaDir"], rtol=1e-6)
        np.testing.assert_allclose(m["phiPos"][m["valid"]], exp["mseg_phiPos"], atol=1e-5)
    check_masks(t)


@needs_ref
def test_empty_tree_gives_valid_empty_shard_and_rerun_skips(tmp_path):
    assert convert(EMPTY, "--type", "qcd", "--output-dir", tmp_path) == 0
    out = tmp_path / "empty_divert_analysis_file.h5"
    t, a = read(out)
    assert len(t["jets"]) == 0 and a["status"] == "empty" and a["complete"] is True
    assert a["source_entries"] == 0
    assert a["sum_of_weights_initial"] == 1_200_000  # still counts for the normalisation
    mtime = out.stat().st_mtime_ns
    assert convert(EMPTY, "--type", "qcd", "--output-dir", tmp_path) == 0
    assert out.stat().st_mtime_ns == mtime
    assert convert(EMPTY, "--type", "qcd", "--output-dir", tmp_path, "--force") == 0
    assert out.stat().st_mtime_ns != mtime


@needs_ref
def test_incomplete_output_is_redone_not_skipped(tmp_path):
    out = tmp_path / "bib.h5"
    with h5py.File(out, "w") as f:  # what a killed writer without atomic rename would leave
        f.attrs["producer"] = "crbatch"
        f.attrs["schema_version"] = schema.SCHEMA_VERSION
    assert convert(BIB, "--type", "bib", "--output-dir", tmp_path) == 0
    assert schema.is_complete(out, "shard")
    # 100 zero bytes cannot be told apart from someone else's file: refused and left alone (exit 2).
    out.write_bytes(b"\0" * 100)
    assert convert(BIB, "--type", "bib", "--output-dir", tmp_path) == ExitCode.USAGE
    assert out.read_bytes() == b"\0" * 100
    out.unlink()
    assert convert(BIB, "--type", "bib", "--output-dir", tmp_path) == 0
    assert schema.is_complete(out, "shard")


@needs_ref
def test_same_name_from_two_directories_does_not_collide(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(BIB, tmp_path / d / "x.root")
    assert convert(tmp_path / "a" / "x.root", tmp_path / "b" / "x.root", "--type", "bib", "--output-dir",
                   tmp_path / "out") == 0  # fmt: skip
    assert len(list((tmp_path / "out").glob("x-*.h5"))) == 2
    # A later run that would overwrite a shard made from another source refuses.
    assert convert(tmp_path / "a" / "x.root", "--type", "bib", "--out", tmp_path / "y.h5") == 0
    assert convert(tmp_path / "b" / "x.root", "--type", "bib", "--out", tmp_path / "y.h5") == ExitCode.CONFIG


@needs_ref
def test_odd_file_names(tmp_path):
    name = "we ird $name `x` 'q' \"dq\" ü.root"
    shutil.copy(BIB, tmp_path / name)
    assert convert(tmp_path / name, "--type", "bib", "--output-dir", tmp_path / "o") == 0
    assert schema.is_complete(tmp_path / "o" / (Path(name).stem + ".h5"), "shard")


@needs_ref
def test_yaml_input_list(tmp_path, caplog):
    lst = tmp_path / "inputs.yaml"
    lst.write_text(
        f"inputs:\n"
        f"  - {{path: '{SIG}', data_type: sig, mH: 125, mS: 55, output_dir: sig}}\n"
        f"  - {{input_file: '{BIB}', type: bib, output_dir: bib}}\n"
    )
    assert convert(lst, "--output-dir", tmp_path) == 0
    t, _ = read(tmp_path / "sig" / "sig_311314_bad_object_small.h5")
    assert (t["jets"]["llp_mH"] == 125).all()
    assert schema.is_complete(tmp_path / "bib" / "bib.h5")
    plain = tmp_path / "plain.yaml"  # a bare list works too
    plain.write_text(f"- {{path: '{BIB}', type: bib, output_dir: plain}}\n")
    assert convert(plain, "--output-dir", tmp_path) == 0
    assert schema.is_complete(tmp_path / "plain" / "bib.h5")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"- {{path: '{SIG}', type: sig}}\n")  # signal without masses
    assert convert(bad, "--output-dir", tmp_path) == ExitCode.CONFIG
    assert "needs both mH and mS" in caplog.text


def test_signal_without_masses_is_an_error(tmp_path, caplog):
    assert convert("x.root", "--type", "sig", "--output-dir", tmp_path) == ExitCode.CONFIG
    assert "mH and mS" in caplog.text


def test_unknown_config_key_is_an_error(tmp_path, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_jet_ptt: 30\n")
    assert convert("x.root", "--type", "qcd", "--config", cfg) == ExitCode.CONFIG
    assert "min_jet_ptt" in caplog.text and "unknown key" in caplog.text
    cfg.write_text("min_jet_pt: 600\n")
    assert convert("x.root", "--type", "qcd", "--config", cfg) == ExitCode.CONFIG
    assert convert("x.root", "--type", "qcd", "--config", tmp_path / "nope.yaml") == ExitCode.CONFIG


def test_print_config_shows_resolved_values(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_jet_pt: 30\nbib_match_dr: 0.3\n")
    assert convert("f.root", "--type", "qcd", "--config", cfg, "--max-jet-pt", 400, "--print-config") == 0
    out = capsys.readouterr().out
    assert "min_jet_pt: 30.0" in out and "max_jet_pt: 400.0" in out and "bib_match_dr: 0.3" in out
    assert "path: f.root" in out
    assert convert("f.root", "--type", "qcd", "--reference-exact", "--print-config") == 0
    out = capsys.readouterr().out
    assert "bib_match_dr: null" in out and "dedupe_jets: false" in out


def test_missing_input_continues_and_reports(tmp_path, caplog):
    assert convert(tmp_path / "nope.root", "--type", "qcd", "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    assert "nope.root" in caplog.text and "no such file" in caplog.text
    assert convert(str(tmp_path / "*.root"), "--type", "qcd", "--output-dir", tmp_path) == ExitCode.INPUT_MISSING


@needs_ref
def test_bad_inputs_exit_codes_and_run_continues(tmp_path, caplog):
    good = tmp_path / "good.root"
    shutil.copy(BIB, good)
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(SIG.read_bytes()[: SIG.stat().st_size // 2])
    notroot = tmp_path / "notroot.root"
    notroot.write_text("this is not a ROOT file\n" * 10)
    out = tmp_path / "out"
    rc = convert(truncated, good, "--type", "bib", "--output-dir", out)
    assert rc == ExitCode.INPUT_CORRUPT
    assert "truncated.root: truncated ROOT file" in caplog.text
    assert schema.is_complete(out / "good.h5")  # the good file after the bad one was converted
    assert not (out / "truncated.h5").exists()
    assert list(out.iterdir()) == [out / "good.h5"]  # no temporary left behind
    assert convert(notroot, "--type", "bib", "--output-dir", out) == ExitCode.INPUT_CORRUPT
    assert "notroot.root: not a ROOT file: a text file of 240 bytes" in caplog.text
    # Wrong schema: a data file converted as MC lacks the MC weight branches.
    assert convert(BIB, "--type", "qcd", "--output-dir", out) == ExitCode.INPUT_SCHEMA
    assert "mcEventWeight" in caplog.text and "--type data or bib" in caplog.text
    # Wrong schema: no DiVertAnalysis tree.
    assert convert(BIB, "--type", "bib", "--tree", "nope", "--output-dir", tmp_path / "o2") == ExitCode.INPUT_SCHEMA
    assert "no tree 'nope'" in caplog.text


def test_exit_codes_command(capsys):
    assert main(["exit-codes"]) == 0
    out = capsys.readouterr().out
    assert " 10  INPUT_MISSING" in out and " 20  TRANSIENT" in out and " 85  CHECKPOINTED" in out


def _crbatch(*args: object, **kw) -> subprocess.Popen:
    env = {**os.environ, "CRBATCH_NO_BAR": "1"}
    return subprocess.Popen([sys.executable, "-m", "crbatch", *map(str, args)], env=env, **kw)


@needs_ref
def test_two_converters_on_one_file_leave_one_intact_shard(tmp_path):
    args = ("convert", "divert", SIG, "--type", "qcd", "--output-dir", tmp_path, "--force", "--step-size", 5)
    procs = [_crbatch(*args) for _ in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    out = tmp_path / "sig_311314_bad_object_small.h5"
    t, _ = read(out)
    assert len(t["jets"]) == 109
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@needs_ref
def test_killed_converter_leaves_nothing_accepted(tmp_path):
    big = tmp_path / "in" / "sig.root"
    big.parent.mkdir()
    shutil.copy(SIG, big)
    out_dir = tmp_path / "out"
    # One event per chunk, so the conversion is still running when it is killed.
    p = _crbatch("convert", "divert", big, "--type", "qcd", "--output-dir", out_dir, "--step-size", 1,
                 stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not any(out_dir.glob(f"*{schema.TMP_MARK}")):
        time.sleep(0.01)
    assert p.poll() is None, "converter finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    leftovers = list(out_dir.iterdir())
    assert not (out_dir / "sig.h5").exists()
    assert all(not schema.is_complete(x) for x in leftovers)
    # A rerun converts, and removes the dead process's temporary.
    assert convert(big, "--type", "qcd", "--output-dir", out_dir) == 0
    assert sorted(x.name for x in out_dir.iterdir()) == ["sig.h5"]


@needs_ref
def test_sigterm_removes_temporary_and_exits_retryable(tmp_path):
    out_dir = tmp_path / "out"
    p = _crbatch("convert", "divert", SIG, "--type", "qcd", "--output-dir", out_dir, "--step-size", 1,
                 stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not any(out_dir.glob(f"*{schema.TMP_MARK}")):
        time.sleep(0.01)
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == ExitCode.INTERRUPTED
    assert list(out_dir.iterdir()) == []
