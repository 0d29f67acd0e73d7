"""End to end, in the manner of salt's integration test: every stage on synthetic data, in one process.

synth (PyROOT) → ``convert divert`` → ``build`` → ``train`` (2 epochs) → ``analyze --export-dir``
(the chosen epoch exported; the report's numbers are metrics.json's) → ``export NAME/RUN/best`` (the
same epoch; refused once the run is stale) → parity (fdeep JSON through the independent NumPy
evaluator, ONNX through onnxruntime, the raw-input ONNX on the shards' raw jets, all against Keras on
real test jets) → ``score`` with the .keras epoch and with the .onnx (outputs agree to 1e-5). The
report's index.html is checked for missing images, and — when Debian's ``chromium`` is installed —
rendered headless: every <img> must load, and a screenshot is taken.

About two minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_analyze import CHROMIUM, check_html_images, check_numbers_match_metrics, render_in_chromium

from crbatch import cli, schema

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]
TOL = 1e-5
SAMPLES = (  # (stem, type, events, seed, mH, mS): a few thousand events per type
    ("sig_mH125_mS55", "sig", 1500, 11, 125.0, 55.0),
    ("sig_mH600_mS275", "sig", 1500, 12, 600.0, 275.0),
    ("qcd", "qcd", 2000, 13, None, None),
    ("bib", "bib", 2000, 14, None, None),
    ("data", "data", 2000, 15, None, None),
)


@pytest.fixture(scope="module", autouse=True)
def _all_registered():
    """Every stage through ``crbatch.cli.main``, whether or not cli.py registers it yet."""
    from crbatch.evaluate import analyze_cli, score_cli
    from crbatch.export import cli as export_cli
    from crbatch.train import cli as train_cli

    orig = cli.build_parser

    def build_parser():
        p = orig()
        sub = p._subparsers._group_actions[0]
        for name, mod in (("train", train_cli), ("analyze", analyze_cli), ("export", export_cli), ("score", score_cli)):
            if name not in sub.choices:
                mod.register(sub)
        return p

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "build_parser", build_parser)
        yield


def crbatch(*args) -> int:
    return cli.main(["-q", *map(str, args)])


def h5_attrs(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        return schema.read_attrs(f)


def test_pipeline(tmp_path, synth_file):
    pytest.importorskip("keras")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("the ONNX export needs the TensorFlow backend here")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import keras
    import onnxruntime as ort
    from fdeep_numpy import FdeepModel

    from crbatch.evaluate.score import SCORE_FIELDS, read_scored
    from crbatch.export import data_inputs

    # synth → convert
    listing = tmp_path / "inputs.yaml"
    lines = []
    for _stem, typ, events, seed, mH, mS in SAMPLES:
        path = synth_file(typ, events, seed, mH, mS)
        masses = f", mH: {mH}, mS: {mS}" if mH is not None else ""
        lines.append(f"- {{path: '{path}', type: {typ}{masses}}}")
    listing.write_text("\n".join(lines) + "\n")
    shards = tmp_path / "shards"
    assert crbatch("convert", "divert", listing, "--output-dir", shards) == 0
    assert len(list(shards.rglob("*.h5"))) == len(SAMPLES)

    # build
    ds = tmp_path / "datasets"
    assert crbatch("build", shards, "--output-dir", ds, "--set", "split={train: 0.6, val: 0.2, test: 0.2}") == 0
    for role in ("main", "cr"):
        for split in ("train", "val", "test"):
            assert schema.is_complete(ds / f"{role}_{split}.h5", "dataset"), f"{role}_{split}"

    # train: two epochs, small batches
    tr = tmp_path / "training_results"
    assert crbatch("train", "--data", ds, "--output-dir", tr, "--model-name", "e2e", "--epochs", "2",
                   "--batch-size", "128", "--eval-batch-size", "1024") == 0  # fmt: skip
    run = tr / "e2e" / "00000"
    assert (run / "epochs" / "001.keras").exists() and (run / "history.json").exists()

    # analyze, exporting the chosen epoch
    reports, exports = tmp_path / "reports", tmp_path / "exports"
    assert crbatch("analyze", "e2e/-1", "--base", tr, "--output-dir", reports, "--export-dir", exports,
                   "--export-check-jets", "32", "--efficiencies", "0.5", "0.9", "--bins", "5") == 0  # fmt: skip
    rep = reports / "e2e"
    md = (rep / "report.md").read_text()
    for text in ("Best NN loss", "Best K-S sum", "Best combined score", "Rejection table", "max S/√B",
                 "mH = 125 GeV, mS = 55 GeV", "train vs test", "```yaml", "the exported model"):  # fmt: skip
        assert text in md, text
    srcs = check_html_images(rep)
    assert "e2e_00000_roc_QCD_mH125_mS55.png" in srcs and "e2e_00000_roc_BIB_mH600_mS275.png" in srcs
    assert (rep / "e2e_00000_roc_QCD_all.pdf").exists()  # vector PDF beside each PNG
    assert check_numbers_match_metrics(rep) > 50
    doc = json.loads((rep / "metrics.json").read_text())
    sec = doc["runs"][0]
    chosen = sec["choice"]["epoch"]
    assert sec["export"]["epoch"] == chosen  # the model that ships is the model in the report
    stem = exports / f"e2e_00000_e{chosen:03d}"
    assert sorted(p.name for p in exports.iterdir()) == sorted(
        f"{stem.name}{s}" for s in (".fdeep.json", ".onnx", ".raw.onnx", ".preprocessing.json")
    )
    for f in sec["export"]["files"]:
        assert f["sha256"] in md
    if CHROMIUM:
        render_in_chromium(rep, tmp_path)
    fdeep_file, onnx_file, raw_file = Path(f"{stem}.fdeep.json"), Path(f"{stem}.onnx"), Path(f"{stem}.raw.onnx")
    sidecar = json.loads(Path(f"{stem}.preprocessing.json").read_text())
    assert sidecar["scaling"]["constants"]["name"] == "crbatch-v1"
    assert sidecar["choice"]["epoch"] == chosen and sidecar["dataset"]["build_id"]
    assert sidecar["dataset"]["build_id"] == h5_attrs(ds / "main_train.h5")[schema.A_BUILD_ID]
    assert sidecar["training_config"]["model_name"] == "e2e"

    # `export best` exports the same epoch, from the choice the analysis recorded
    again = tmp_path / "again"
    assert crbatch("export", "e2e/0/best", "--base", tr, "--format", "fdeep", "--output-dir", again,
                   "--check-jets", "8") == 0  # fmt: skip
    assert [p.name for p in again.glob("*.fdeep.json")] == [fdeep_file.name]
    fd_again = json.loads((again / fdeep_file.name).read_text())
    assert fd_again["hash"] == json.loads(fdeep_file.read_text())["hash"]
    hist_path = run / "history.json"
    h = json.loads(hist_path.read_text())
    hist_path.write_text(json.dumps({k: [*v, v[-1]] for k, v in h.items()}))  # one more epoch: stale
    assert crbatch("export", "e2e/0/best", "--base", tr, "--output-dir", tmp_path / "stale") == 12
    hist_path.write_text(json.dumps(h))

    # parity on real test jets: Keras vs the NumPy fdeep evaluator vs onnxruntime
    model = keras.saving.load_model(run / "epochs" / f"{chosen:03d}.keras", compile=False)
    xs = data_inputs(model, ds / "main_test.h5", 200)
    ref = np.asarray(model.predict(xs, verbose=0))
    got_fdeep = FdeepModel(json.loads(fdeep_file.read_text())).predict(xs)[0]
    np.testing.assert_allclose(got_fdeep, ref, atol=TOL)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got_onnx = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs, strict=True)})[0]
    np.testing.assert_allclose(got_onnx, ref, atol=TOL)
    # the raw-input ONNX on the test jets' raw values (from their shards) gives the Keras scores of the
    # build-scaled test split: the preprocessing in the graph is the training's
    from crbatch.export import onnx_raw, rawjets

    raw_jets = rawjets.from_file(ds / "main_test.h5", 200)
    assert len(raw_jets) == 200
    raw, valid = raw_jets.raw_inputs()
    got_raw = onnx_raw.run(ort.InferenceSession(str(raw_file), providers=["CPUExecutionProvider"]), raw, valid)
    np.testing.assert_allclose(got_raw, ref, atol=TOL)

    # score a raw shard and a dataset with the .keras epoch and with the .onnx
    shard = next(p for p in shards.rglob("*.h5") if "_125_55" in p.name)
    inputs = [shard, ds / "main_test.h5"]
    assert crbatch("score", *inputs, "--model", f"e2e/0/{chosen}", "--base", tr, "--output-dir", tmp_path / "sk") == 0
    assert crbatch("score", *inputs, "--model", onnx_file, "--output-dir", tmp_path / "so") == 0
    for src in inputs:
        name = src.name.removesuffix(".h5") + ".scored.h5"
        a, aa = read_scored(tmp_path / "sk" / name)
        b, ba = read_scored(tmp_path / "so" / name)
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a["eventNumber"], b["eventNumber"])
        for f in SCORE_FIELDS:
            np.testing.assert_allclose(a[f], b[f], atol=TOL, err_msg=f"{src.name} {f}")
        assert aa["model"]["model_hash"] == ba["model"]["model_hash"] == sidecar["model_hash"]
    # the test dataset's scores are the model's on its jets, in file order
    t, _ = read_scored(tmp_path / "sk" / "main_test.scored.h5")
    np.testing.assert_allclose(np.stack([t[f] for f in SCORE_FIELDS], 1)[:200], ref, atol=TOL)
