"""``crbatch analyze --baseline``: a run against a baseline of each kind, on the same test jets, each
model fed with its own preprocessing; and the analysis exporting the epoch it chose.

Small fake runs (tiny random classifiers, no training) over datasets built from random shards, as in
test_analyze.py. The datasets are built three times from the same shards with different scalings
(crbatch's default, other pT windows, the reference's): the same jets land in the same split, so a
model evaluated on the default-scaled split through the conversion must give exactly the scores it
gives on the split scaled its own way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_analyze import HIST2, _make_run, analyze, check_html_images, check_numbers_match_metrics

from crbatch import cli
from crbatch.errors import ExitCode

pytest.importorskip("keras")

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "reference").resolve()
REF_WEIGHTS = SHARED / "models" / "final_model_weights_1.keras"
TOL = 1e-5


def _build(shards: Path, out: Path, *sets: str) -> Path:
    extra = [a for s in sets for a in ("--set", s)]
    assert cli.main(["-q", "build", str(shards), "--output-dir", str(out),
                     "--set", "split={train: 0.5, val: 0.2, test: 0.3}", *extra]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from shards import write_set

    base = tmp_path_factory.mktemp("baselines")
    shards = base / "shards"
    write_set(shards, n=300, seed=9)
    ds = _build(shards, base / "ds")
    ds_windows = _build(shards, base / "ds_windows", "scaling.track_pt=[0, 40]", "scaling.jet_pt=[20, 400]")
    ds_reference = _build(shards, base / "ds_reference", "scaling.reference_exact=true")
    root = base / "training_results"
    _make_run(root, "m", 0, ds, HIST2)
    _make_run(root, "m", 1, ds, {k: [x * 1.1 for x in v] for k, v in HIST2.items()}, lr_values=0.001)
    _make_run(root, "w", 0, ds_windows, HIST2)  # trained on other pT windows
    return {"base": base, "ds": ds, "ds_windows": ds_windows, "ds_reference": ds_reference, "root": root}


def _split_scores(path: Path, scorer):
    from crbatch.evaluate.analyze_split import score_split

    return score_split(path, [scorer], weight="weight_balanced", batch_size=97)


def test_each_model_is_fed_its_own_preprocessing(world):
    """A model trained with other pT windows, and the reference's model (reference-exact scaling), scored on
    the default-scaled test split (converted) give the scores they give on the split scaled their own way."""
    from crbatch.evaluate.analyze_baseline import load_baseline

    ds, other = world["ds"] / "main_test.h5", world["ds_windows"] / "main_test.h5"
    s = load_baseline("w/0/1", 1, base=world["root"], criterion="combined")
    assert s.pre is not None and s.pre.input("tracks").features[0].divide == 40.0
    a, b = _split_scores(ds, s), _split_scores(other, s)
    assert a.digest == b.digest  # the same jets in the same order
    np.testing.assert_allclose(a.scores[s.ref.key], b.scores[s.ref.key], atol=TOL)
    # fed WITHOUT conversion (the default-scaled values as they are) the scores differ: the conversion matters
    s.pre = None
    c = _split_scores(ds, s)
    assert np.max(np.abs(c.scores[s.ref.key] - b.scores[s.ref.key])) > 1e-3
    if REF_WEIGHTS.exists():
        r = load_baseline(f"reference:{REF_WEIGHTS}", 2, base=world["root"], criterion="combined")
        assert r.ref.kind == "reference" and r.ref.preprocessing == "reference-exact"
        a, b = _split_scores(ds, r), _split_scores(world["ds_reference"] / "main_test.h5", r)
        assert a.digest == b.digest
        np.testing.assert_allclose(a.scores[r.ref.key], b.scores[r.ref.key], atol=TOL)


@pytest.mark.slow
def test_run_against_a_baseline_of_each_kind(world, tmp_path):
    """The analysis exports its chosen epoch; the exports, the epoch file, a scored file, another run and epoch
    and the reference's model are then baselines of a second analysis: every one has its curves, computed on
    the same jets, and the ones that are the run's own model reproduce its numbers."""
    root, ds = world["root"], world["ds"]
    exports = tmp_path / "exports"
    light = ("--no-pdf", "--efficiencies", "0.5", "0.7", "--bins", "4", "--overtraining-jets", "200")
    assert analyze("m/0", "--base", root, "--output-dir", tmp_path / "rep1", "--export-dir", exports, *light) == 0
    doc1 = json.loads((tmp_path / "rep1" / "m" / "metrics.json").read_text())
    sec = doc1["runs"][0]
    chosen = sec["choice"]["epoch"]
    # the export is the chosen epoch, checked on the run's own test jets, listed with its hashes
    ex = sec["export"]
    assert ex["epoch"] == chosen
    files = {f["kind"]: f for f in ex["files"]}
    assert set(files) == {"fdeep", "onnx", "onnx-raw", "sidecar"}
    stem = f"m_00000_e{chosen:03d}"
    from crbatch.evaluate.analyze_choice import sha256_file

    for f in files.values():
        assert Path(f["path"]).name.startswith(stem) and sha256_file(Path(f["path"])) == f["sha256"]
    side = json.loads(Path(files["sidecar"]["path"]).read_text())
    assert side["choice"]["epoch"] == chosen and side["choice"]["why"] == sec["choice"]["why"]
    assert side["parity"]["onnx_raw_real_jets"] > 0 and side["parity"]["onnx_raw_max_abs_diff_real"] <= TOL
    md1 = (tmp_path / "rep1" / "m" / "report.md").read_text()
    assert files["onnx"]["sha256"] in md1 and files["fdeep"]["sha256"] in md1

    scored = tmp_path / "scored.h5"
    assert cli.main(["-q", "score", str(ds / "main_test.h5"), "--model", f"m/0/{chosen}", "--base", str(root),
                     "--out", str(scored)]) == 0  # fmt: skip
    epoch_file = root / "m" / "00000" / "epochs" / f"{chosen:03d}.keras"
    baselines = [
        f"onnx={exports / (stem + '.onnx')}", f"raw={exports / (stem + '.raw.onnx')}", f"keras={epoch_file}",
        f"scored={scored}", "m/1", "m/1/0",
    ]  # fmt: skip
    if REF_WEIGHTS.exists():
        baselines.append(f"today=reference:{REF_WEIGHTS}")
    args = [a for b in baselines for a in ("--baseline", b)]
    out = tmp_path / "rep2"
    assert analyze("m/0", "--base", root, "--output-dir", out, *args, *light) == 0
    rep = out / "m"
    doc = json.loads((rep / "metrics.json").read_text())
    sec = doc["runs"][0]
    main = sec["main"]
    kinds = [b["model"]["kind"] for b in sec["baselines"]]
    assert kinds[:6] == ["onnx", "onnx-raw", "keras", "scored", "run", "run"]
    if REF_WEIGHTS.exists():
        assert kinds[6] == "reference" and sec["baselines"][6]["model"]["preprocessing"] == "reference-exact"
    digest = sec["sample"]["jets_digest"]
    assert main["jets_digest"] == digest

    def rocs(m):
        return {(r["background"], json.dumps(r["mass_point"])): r for r in m["rocs"]}

    run_rocs = rocs(main)
    assert {k[0] for k in run_rocs} == {"QCD", "BIB"}
    for b, c in zip(sec["baselines"], sec["comparisons"], strict=True):
        assert b["jets_digest"] == digest and c["same_jets"], b["model"]["label"]
        br = rocs(b)
        assert set(br) == set(run_rocs), b["model"]["label"]  # both curves are there, for every sample
        for k, r in run_rocs.items():
            assert (br[k]["n_sig"], br[k]["n_bkg"]) == (r["n_sig"], r["n_bkg"])  # on the same jets
        if b["model"]["label"] in ("onnx", "raw", "keras", "scored"):  # the run's own model: its numbers
            for k, r in run_rocs.items():
                assert abs(br[k]["auc"] - r["auc"]) < 1e-6, (b["model"]["label"], k)
            for x, y in zip(b["working_points"], main["working_points"], strict=True):
                assert x["cut"] == pytest.approx(y["cut"], abs=TOL)
        assert len(c["auc"]) == len(run_rocs) and c["rejection"]
    assert {b["model"]["epoch"] for b in sec["baselines"] if b["model"]["label"] == "m/1 e0"} == {0}
    # the figures show every model: one ROC per background and sample with a ratio panel, the efficiency
    # plots, the data/MC comparison (scored files have no control-region jets: the others do)
    srcs = check_html_images(rep)
    for f in ("roc_QCD_all", "roc_BIB_mH125_mS55", "eff_llp_Lxy_all", "rej_QCD_pt", "cr_sig", "scores_sig_baseline1"):
        assert f"m_00000_{f}.png" in srcs, f
    assert {b["model"]["label"] for b in sec["baselines"] if b["data_mc"]} == {
        b["model"]["label"] for b in sec["baselines"] if b["model"]["kind"] != "scored"
    }
    md = (rep / "report.md").read_text()
    assert md.count("compared with the baseline") == 1 and md.count("on the same") == len(baselines)
    check_numbers_match_metrics(rep)


def test_bad_baselines(world, tmp_path):
    root = world["root"]
    args = ("m/0", "--base", root, "--output-dir", tmp_path, "--no-pdf")
    assert analyze(*args, "--baseline", tmp_path / "absent.onnx") == ExitCode.INPUT_MISSING
    (tmp_path / "notes.txt").write_text("x")
    assert analyze(*args, "--baseline", tmp_path / "notes.txt") == ExitCode.CONFIG
    assert analyze(*args, "--baseline", world["ds"] / "main_test.h5") == ExitCode.CONFIG  # a dataset, not scores
    assert analyze(*args, "--baseline", "m/9") == ExitCode.INPUT_MISSING
    # a scored file that lacks some of the test jets: refused, naming the jets
    part = tmp_path / "part.h5"
    shutil.copy(world["ds"] / "main_val.h5", part)  # other jets than the test split's
    scored = tmp_path / "val.scored.h5"
    assert cli.main(["-q", "score", str(part), "--model", "m/0/0", "--base", str(root), "--out", str(scored)]) == 0
    assert analyze(*args, "--baseline", scored) == ExitCode.INPUT_SCHEMA
    assert not (tmp_path / "m").exists()  # nothing half-written
