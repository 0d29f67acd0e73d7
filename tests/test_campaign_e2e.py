"""A 4-run campaign (λ × seed) end to end, on synthetic ntuples with a tiny network and one epoch:
through the local backend (then submitted again: nothing runs; then one value added to the scan:
only its trainings and the analysis run) and through the real Slurm cluster of CI (an array of GPU
jobs). Each ends with one comparison report and one export, the selected run's chosen epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from crbatch import cli
from crbatch.batch.status import read_status_file
from crbatch.evaluate.analyze_results import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

TINY = {"epochs": 1, "batch_size": 64, "eval_batch_size": 1024, "filters_cnn_constit": [4], "filters_cnn_track": [4],
        "filters_cnn_MSeg": [4], "nodes_constit_lstm": 4, "nodes_track_lstm": 4, "nodes_MSeg_lstm": 4,
        "hidden_layer_fraction": 0.1}  # fmt: skip
SCAN = {"adversary_weight": [0, 10], "seed": [1, 2]}


def crbatch(*args) -> int:
    return cli.main(["-q", *map(str, args)])


def campaign_yaml(base: Path, synth_file, name: str, **train) -> Path:
    pytest.importorskip("keras")
    sets = []
    for ds, typ, events, seed, mH, mS in (("sig", "sig", 500, 31, 125.0, 55.0), ("qcd", "qcd", 600, 32, None, None),
                                         ("bib", "bib", 600, 33, None, None), ("data", "data", 600, 34, None, None)):  # fmt: skip
        d = {"name": ds, "type": typ, "files": [str(synth_file(typ, events, seed, mH, mS))]}
        if mH:
            d.update(mH=mH, mS=mS)
        sets.append(d)
    small = {"cpus": 1, "memory": "1 GB", "runtime": "20m", "retries": 1}
    doc = {
        "name": name, "storage": str(base / "storage"), "datasets": sets,
        "convert": {"resources": small},
        "build": {"options": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "resources": small},
        "train": {"options": TINY, "scan": SCAN, "resources": {**small, "gpus": 1}, **train},
        "analyze": {"options": {"overtraining_jets": 0, "pdf": False}, "export": {"format": "onnx", "check_jets": 16},
                    "campaign": {"select": {"background": "QCD", "efficiency": 0.5, "ks_max": 0.9}},
                    "resources": small},
    }  # fmt: skip
    y = base / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc, sort_keys=False))
    return y


def check_campaign(storage: Path, name: str, n_runs: int) -> dict:
    """One report comparing every run, one export: the selected run's chosen epoch, named in the report."""
    rep = storage / "reports" / name
    doc = read_metrics(rep / "metrics.json")
    res = doc.campaign
    assert res is not None and len(res.runs) == n_runs and res.same_jets and res.selected
    assert len(res.option_sets) == n_runs // 2 and all(s.rejection["QCD"].n == 2 for s in res.option_sets)
    sec = doc.run(res.selected)
    assert [r.label for r in doc.runs if r.export is not None] == [res.selected]
    exports = storage / "exports" / name
    onnx = sorted(exports.glob("*.onnx"))
    stem = f"{res.selected.split('/')[0]}_00000_e{sec.choice.epoch:03d}"
    assert [p.name for p in onnx] == [f"{stem}.onnx"]
    side = json.loads((exports / f"{stem}.preprocessing.json").read_text())
    assert side["choice"]["epoch"] == sec.choice.epoch and side["choice"]["campaign"] == res.why
    md = (rep / "report.md").read_text()
    assert f"**Exported: {res.selected}, epoch {sec.choice.epoch}**" in md and f"{stem}.onnx" in md
    for f in ("campaign_tradeoff_QCD.png", "campaign_roc_QCD.png"):
        assert (rep / f).is_file()
    for r in res.runs:  # every run trained its epoch, in its own directory, with its own options
        d = storage / "training_results" / r.label.split("/")[0] / "00000"
        assert json.loads((d / "history.json").read_text())["epoch"] == [0]
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert {k: cfg[k] for k in r.options} == r.options
    return {r.label: r for r in res.runs}


def _attempts(storage: Path, name: str) -> dict[str, str]:
    return {f.stem: read_status_file(f)["attempt"] for f in (storage / "status" / name).glob("*.status")}


def test_campaign_through_the_local_backend(tmp_path, synth_file, capsys):
    y = campaign_yaml(tmp_path, synth_file, "camp")
    storage = tmp_path / "storage"
    assert crbatch("submit", y, "--workers", "2") == 0
    check_campaign(storage, "camp", 4)
    capsys.readouterr()
    assert crbatch("status", y, "--check") == 0
    out = capsys.readouterr().out
    assert "campaign: 4 runs, 4 done" in out and "adversary_weight-10.seed-2        1/1  done" in out
    # submitted again: nothing runs
    before = _attempts(storage, "camp")
    assert crbatch("submit", y) == 0
    assert _attempts(storage, "camp") == before
    # one more λ: only its two trainings and the analysis run
    doc = yaml.safe_load(y.read_text())
    doc["train"]["scan"]["adversary_weight"] = [0, 10, 30]
    y.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert crbatch("submit", y, "--workers", "2") == 0
    after = _attempts(storage, "camp")
    new = {k for k in after if k not in before}
    assert new == {"train.adversary_weight-30.seed-1", "train.adversary_weight-30.seed-2"}
    assert {k: after[k] for k in before if k.startswith(("train", "convert", "build"))} == {
        k: v for k, v in before.items() if k.startswith(("train", "convert", "build"))
    }
    assert after["analyze"] == str(int(before["analyze"]) + 1)
    check_campaign(storage, "camp", 6)


def test_campaign_through_slurm(tmp_path, synth_file, capsys):
    from test_batch_slurm import _cluster_up, _jobs, _wait_gone

    if not _cluster_up():
        pytest.skip("no Slurm cluster answers (start one: .ci/slurm-up.sh)")
    y = campaign_yaml(tmp_path, synth_file, "scamp")
    storage = tmp_path / "storage"
    assert crbatch("submit", y, "--backend", "slurm") == 0
    plan_dir = storage / "batch" / "scamp" / "slurm"
    ids = _jobs(plan_dir)
    assert list(ids) == ["convert_0", "build", "train", "analyze", "report"]
    script = (plan_dir / "submit-slurm.sh").read_text()
    assert "--array=0-3" in script and "--gres=gpu:1" in script
    _wait_gone(list(ids.values()), timeout=900)
    capsys.readouterr()
    assert crbatch("status", y, "--check") == 0, capsys.readouterr().out
    runs = check_campaign(storage, "scamp", 4)
    for label in runs:
        job = "train." + label.split("/")[0].removeprefix("scamp.")
        st = read_status_file(storage / "status" / "scamp" / f"{job}.status")
        assert st and st["state"] == "done" and st["scheduler"].startswith(f"slurm:{ids['train']}_")
    assert crbatch("submit", y, "--backend", "slurm") == 0
    assert "nothing to submit" in capsys.readouterr().out
