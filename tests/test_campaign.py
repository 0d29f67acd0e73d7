"""Campaign comparison: spread over seeds, Pareto front, the selection rule, and ``crbatch analyze`` of
four runs ending with one report and one export (the selected run's chosen epoch)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml
from test_analyze import HIST2, _make_datasets, _make_run, check_html_images, md_tables

from crbatch import cli
from crbatch.evaluate.analyze_results import CampaignResult, CampaignRun, Interval, OptionSet, read_metrics
from crbatch.evaluate.campaign import pareto, select, spread
from crbatch.evaluate.campaign_config import CampaignConfig, SelectRule


def test_spread_is_mean_and_sample_std():
    s = spread([10.0, 12.0, 14.0])
    assert (s.mean, s.std, s.n) == (12.0, 2.0, 3)
    assert math.isnan(spread([5.0]).std) and spread([]) is None
    inf = spread([3.0, math.inf])
    assert math.isinf(inf.mean) and math.isnan(inf.std)


def test_pareto_front():
    # (rejection ↑, K-S ↓): (30, 0.2) and (10, 0.05) are the front; (8, 0.1) is beaten by (10, 0.05)
    assert pareto([(30, 0.2), (10, 0.05), (8, 0.1), (30, 0.3), (None, 0.01)]) == [True, True, False, False, False]
    assert pareto([(5, 0.1), (5, 0.1)]) == [True, True]  # ties stay on the front


def _res(rule: SelectRule) -> CampaignResult:
    """λ = 0: high rejection, poor data/MC; λ = 10: lower rejection, good agreement; 2 seeds each."""
    runs, sets = [], []
    for lam, rejs, kss in ((0, (40.0, 44.0), (0.20, 0.22)), (10, (20.0, 26.0), (0.04, 0.06)), (3, (30.0, 31.0),
                                                                                         (0.09, 0.13))):  # fmt: skip
        label = f"adversary_weight={lam}"
        names = []
        for seed, r, k in zip((1, 2), rejs, kss, strict=True):
            n = f"m.adversary_weight-{lam}.seed-{seed}/0"
            names.append(n)
            runs.append(CampaignRun(label=n, options={"adversary_weight": lam, "seed": seed}, option_set=label,
                                    epoch=1, n_epochs=2, rejection={"QCD": Interval(value=r, low=r - 1, high=r + 1)},
                                    ks=k, passes=None))  # fmt: skip
        sets.append(OptionSet(label=label, options={"adversary_weight": lam}, runs=names,
                              rejection={"QCD": spread(rejs)}, ks=spread(kss)))  # fmt: skip
    res = CampaignResult(rule=rule.model_dump(), rule_text=rule.describe(), group_over=["seed"], efficiency=0.5,
                         runs=runs, option_sets=sets, same_jets=True, selected=None, why="")  # fmt: skip
    select(res)
    return res


def test_selection_rule():
    # no ceiling: the best mean rejection (λ = 0), then its best seed
    res = _res(SelectRule())
    assert res.selected_set == "adversary_weight=0" and res.selected == "m.adversary_weight-0.seed-2/0"
    assert res.ceiling_met and "rule: highest QCD rejection at ε_S = 0.5 (mean over seeds)" in res.why
    # a K-S ceiling: λ = 3 (mean K-S 0.11) passes 0.12, λ = 0 does not; within λ = 3 the seed under the ceiling
    res = _res(SelectRule(ks_max=0.12))
    assert res.selected_set == "adversary_weight=3" and res.selected == "m.adversary_weight-3.seed-1/0"
    assert "K-S(sig) ≤ 0.12" in res.why and "exported: m.adversary_weight-3.seed-1/0 epoch 1" in res.why
    # per run: seed 2 of λ = 3 (K-S 0.13) is out, seed 1 (0.09, rejection 30) is the best run inside 0.1
    res = _res(SelectRule(ks_max=0.1, level="run"))
    assert res.selected == "m.adversary_weight-3.seed-1/0"
    # nothing passes: the smallest K-S, and the report is told
    res = _res(SelectRule(ks_max=0.01))
    assert not res.ceiling_met and res.selected_set == "adversary_weight=10" and "No option set meets" in res.why


# --- crbatch analyze of a 4-run campaign -----------------------------------------------------------


@pytest.fixture(scope="module")
def campaign_runs(tmp_path_factory):
    pytest.importorskip("keras")
    base = tmp_path_factory.mktemp("campaign")
    ds = _make_datasets(base)
    root = base / "training_results"
    names = []
    for lam in (0, 10):
        for seed in (1, 2):
            name = f"c.adversary_weight-{lam}.seed-{seed}"
            h = {k: [x * (1 + 0.05 * seed + 0.01 * lam) for x in v] for k, v in HIST2.items()}
            # the run number seeds the fake run's weights: four different classifiers
            _make_run(root, name, len(names), ds, h, adversary_weight=lam, seed=seed)
            names.append(f"{name}/{len(names)}")
    return base, root, names


@pytest.mark.slow
def test_analysis_of_a_campaign_exports_the_selected_run(campaign_runs, tmp_path):
    _, root, names = campaign_runs
    cfg = tmp_path / "analyze.yaml"
    cfg.write_text(yaml.safe_dump({"campaign": {"select": {"background": "QCD", "efficiency": 0.5}}}))
    out, ex = tmp_path / "reports", tmp_path / "exports"
    args = ["-q", "analyze", *names, "--base", str(root), "--output-dir", str(out), "--name", "c",
            "--config", str(cfg), "--no-pdf", "--export-dir", str(ex), "--set", "export_format=onnx"]  # fmt: skip
    assert cli.main(args) == 0
    rep = out / "c"
    doc = read_metrics(rep / "metrics.json")
    res = doc.campaign
    assert res is not None and len(res.runs) == 4 and res.same_jets
    # options found from the configs (no pipeline): adversary_weight and seed differ
    assert {tuple(sorted(r.options)) for r in res.runs} == {("adversary_weight", "seed")}
    assert [s.label for s in res.option_sets] == ["adversary_weight=0", "adversary_weight=10"]
    for s in res.option_sets:
        vals = [next(r for r in res.runs if r.label == x).rejection["QCD"].value for x in s.runs]
        assert s.rejection["QCD"].n == 2 and s.rejection["QCD"].mean == pytest.approx(sum(vals) / 2)
    # exactly one export: the selected run's chosen epoch
    sel = next(r for r in res.runs if r.label == res.selected)
    sec = doc.run(res.selected)
    exported = [r for r in doc.runs if r.export is not None]
    assert [r.label for r in exported] == [res.selected] and sec.export.epoch == sel.epoch == sec.choice.epoch
    files = sorted(ex.glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith(res.selected.split("/")[0])
    f = next(f for f in sec.export.files if f.name == files[0].name)
    assert f.sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
    side = json.loads(next(ex.glob("*.preprocessing.json")).read_text())
    assert side["choice"]["campaign"] == res.why
    # the report: the selection and why, the tables' numbers are metrics.json's, the figures are there
    md = (rep / "report.md").read_text()
    assert "## Campaign: the runs compared" in md and f"**Exported: {sel.label}, epoch {sel.epoch}**" in md
    assert res.why in md
    tables = md_tables(md)
    (sets,) = [t for t in tables if t and "option set" in t[0] and "Pareto" in t[0]]
    from crbatch.evaluate.campaign_report import pm

    for s in res.option_sets:
        (row,) = [r for r in sets if r["option set"] == s.label]
        assert row["QCD rej. @ ε_S=0.5"] == pm(s.rejection["QCD"]) and row["data/MC K-S(sig)"] == pm(s.ks)
        assert " ± " in row["QCD rej. @ ε_S=0.5"]
    (per_run,) = [t for t in tables if t and "run" in t[0] and "in ceiling" in t[0]]
    assert [r["run"] for r in per_run] == [r.label for r in res.runs]
    srcs = check_html_images(rep)
    for name in ("campaign_tradeoff_QCD", "campaign_tradeoff_BIB", "campaign_roc_QCD", "campaign_history_val_adv_loss"):
        assert f"{name}.png" in srcs, name
    # choice.json for every run; `crbatch export NAME/RUN/best` of the selected one is the same model
    for n in names:
        name, run = n.split("/")
        assert (root / name / f"{int(run):05d}" / "choice.json").is_file()
    assert cli.main(["-q", "export", f"{res.selected}/best", "--base", str(root), "--output-dir",
                     str(tmp_path / "again"), "--format", "onnx"]) == 0  # fmt: skip
    (again,) = (tmp_path / "again").glob("*.onnx")
    assert again.name == files[0].name


@pytest.mark.slow
def test_campaign_with_a_baseline_on_every_comparison(campaign_runs, tmp_path):
    _, root, names = campaign_runs
    out = tmp_path / "reports"
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"campaign": {"select": {"ks_max": 0.9}, "details": "selected"},
                                   "overtraining_jets": 0}))  # fmt: skip
    assert cli.main(["-q", "analyze", *names[:2], "--base", str(root), "--output-dir", str(out),
                     "--name", "c", "--config", str(cfg), "--no-pdf", "--baseline", f"today={names[3]}/0"]) == 0  # fmt: skip
    doc = read_metrics(out / "c" / "metrics.json")
    res = doc.campaign
    assert [b.label for b in res.baselines] == ["today"] and "QCD" in res.baselines[0].rejection
    md = (out / "c" / "report.md").read_text()
    assert "baseline: today" in md
    # the full per-run sections only for the selected run
    assert f"### {res.selected}: compared with the baseline" in md
    other = next(r.label for r in res.runs if r.label != res.selected)
    assert f"### {other}: compared with the baseline" not in md


def test_campaign_config_refuses_bad_rules():
    with pytest.raises(ValueError, match="ks_max"):
        CampaignConfig.model_validate({"select": {"ks_max": 2}})
    with pytest.raises(ValueError, match="backgroun"):
        CampaignConfig.model_validate({"select": {"backgroun": "QCD"}})


def test_read_back(tmp_path):
    """A metrics.json with a campaign round-trips (readers of format version 1 keep working)."""
    res = _res(SelectRule(ks_max=0.12))
    p = Path(tmp_path / "c.json")
    p.write_text(res.model_dump_json())
    assert CampaignResult.model_validate_json(p.read_text()) == res
