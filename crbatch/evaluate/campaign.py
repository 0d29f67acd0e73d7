"""A campaign compared: every run's chosen epoch and metrics, the spread over seeds per option set,
the Pareto front of rejection against data/MC agreement, the baselines, and the run the selection
rule exports (crbatch.evaluate.campaign_config).

Input: the analysis' run sections (typed results, crbatch.evaluate.analyze_results) — nothing here
reads a file or a jet. Output: a :class:`~crbatch.evaluate.analyze_results.CampaignResult` in
``metrics.json``; the figures (crbatch.evaluate.campaign_figures) and the report section are drawn
from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .analyze_results import (
    CampaignPoint,
    CampaignResult,
    CampaignRun,
    Interval,
    ModelMetrics,
    OptionSet,
    RunSection,
    Spread,
)
from .campaign_config import CampaignConfig

BACKGROUNDS = ("QCD", "BIB")
# Keys of a run's config.yaml that differ between runs without being options people scan.
_NOT_OPTIONS = {"model_name", "output_dir", "data", "main_training_file", "cr_training_file", "checkpoint_exit_code"}


def _text(v: Any) -> str:
    from ..batch.scan import RunPoint

    return RunPoint("x", {"v": v}).label().removeprefix("v=")


def set_label(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_text(v)}" for k, v in options.items()) or "(all runs)"


def run_options(sections: Sequence[RunSection], cfg: CampaignConfig) -> dict[str, dict[str, Any]]:
    """label → the run's options: given by the pipeline (``cfg.options`` by model name), else the
    training config keys whose values differ between the runs."""
    out: dict[str, dict[str, Any]] = {}
    if cfg.options:
        for s in sections:
            name = s.label.rsplit("/", 1)[0]
            out[s.label] = dict(cfg.options.get(name, {}))
        return out
    keys = sorted({k for s in sections for k in s.config} - _NOT_OPTIONS)
    differ = [k for k in keys if len({repr(s.config.get(k)) for s in sections}) > 1]
    return {s.label: {k: s.config.get(k) for k in differ} for s in sections}


def _rejection(m: ModelMetrics, background: str, eff: float) -> Interval | None:
    for r in m.working_points:
        if r.mass_point is None and r.background == background and math.isclose(r.target, eff, abs_tol=1e-9):
            return r.rejection
    return None


def _auc(m: ModelMetrics, background: str) -> float | None:
    return next((r.auc for r in m.rocs if r.mass_point is None and r.background == background), None)


def _ks(m: ModelMetrics, output: str) -> tuple[float | None, float | None]:
    k = next((k for k in m.data_mc_ks if k.output == output and k.selection == "all jets"), None)
    return (k.ks, k.pvalue) if k is not None else (None, None)


def spread(values: Sequence[float | None]) -> Spread | None:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None
    if np.isinf(v).any():  # a rejection with no background passing: the mean is a lower limit
        return Spread(mean=float(v.mean()), std=math.nan, n=int(v.size))
    return Spread(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else math.nan, n=int(v.size))


def pareto(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which (rejection ↑, K-S ↓) points no other point beats in both (ties: both stay on the front)."""
    out = []
    for i, (r, k) in enumerate(points):
        if r is None or k is None or not np.isfinite(k):
            out.append(False)
            continue
        dominated = any(
            j != i and r2 is not None and k2 is not None and r2 >= r and k2 <= k and (r2 > r or k2 < k)
            for j, (r2, k2) in enumerate(points)
        )
        out.append(not dominated)
    return out


def campaign_result(sections: Sequence[RunSection], cfg: CampaignConfig) -> CampaignResult:
    """Every run's numbers, the option sets with their spread, the Pareto front and the selection."""
    rule = cfg.select
    opts = run_options(sections, cfg)
    runs: list[CampaignRun] = []
    for s in sections:
        o = opts[s.label]
        grouped = {k: v for k, v in o.items() if k not in cfg.group_over}
        r = CampaignRun(label=s.label, options=o, option_set=set_label(grouped), epoch=s.choice.epoch,
                        n_epochs=s.n_epochs)  # fmt: skip
        if s.main is not None:
            for b in BACKGROUNDS:
                rej, auc = _rejection(s.main, b, rule.efficiency), _auc(s.main, b)
                if rej is not None:
                    r.rejection[b] = rej
                if auc is not None:
                    r.auc[b] = auc
            r.ks, r.ks_pvalue = _ks(s.main, rule.ks_output)
            if r.ks is not None:
                r.passes = rule.ks_max is None or r.ks <= rule.ks_max
        runs.append(r)
    sets: dict[str, OptionSet] = {}
    for r in runs:
        grouped = {k: v for k, v in r.options.items() if k not in cfg.group_over}
        sets.setdefault(r.option_set, OptionSet(label=r.option_set, options=grouped, runs=[])).runs.append(r.label)
    by_label = {r.label: r for r in runs}
    for os_ in sets.values():
        members = [by_label[x] for x in os_.runs if by_label[x].rejection]
        for b in BACKGROUNDS:
            rej_spread = spread([m.rejection[b].value for m in members if b in m.rejection])
            auc_spread = spread([m.auc[b] for m in members if b in m.auc])
            if rej_spread is not None:
                os_.rejection[b] = rej_spread
            if auc_spread is not None:
                os_.auc[b] = auc_spread
        os_.ks = spread([m.ks for m in members if m.ks is not None])
    set_list = list(sets.values())
    front = pareto([(s.rejection[rule.background].mean if rule.background in s.rejection else None,
                     s.ks.mean if s.ks else None) for s in set_list])  # fmt: skip
    for oset, f in zip(set_list, front, strict=True):
        oset.pareto = f
    baselines = _baselines(sections, rule)
    digests = {s.sample.jets_digest for s in sections if s.sample is not None}
    res = CampaignResult(rule=rule.model_dump(mode="json"), rule_text=rule.describe(), group_over=list(cfg.group_over),
                         efficiency=rule.efficiency, runs=runs, option_sets=set_list, baselines=baselines,
                         same_jets=len(digests) == 1, selected=None, why="")  # fmt: skip
    select(res)
    return res


def _baselines(sections: Sequence[RunSection], rule: Any) -> list[CampaignPoint]:
    """The baselines as evaluated with the first tested run (the same models on the same jets)."""
    first = next((s for s in sections if s.main is not None), None)
    if first is None:
        return []
    out = []
    for m in first.baselines:
        p = CampaignPoint(key=m.model.key, label=m.model.label)
        for b in BACKGROUNDS:
            rej, auc = _rejection(m, b, rule.efficiency), _auc(m, b)
            if rej is not None:
                p.rejection[b] = rej
            if auc is not None:
                p.auc[b] = auc
        p.ks = _ks(m, rule.ks_output)[0]
        out.append(p)
    return out


def _fmt(v: float | None) -> str:
    return "—" if v is None else ("∞" if math.isinf(v) else f"{v:.4g}")


def select(res: CampaignResult) -> None:
    """Apply the rule (crbatch.evaluate.campaign_config): fill ``selected``, ``selected_set``, ``why``."""
    rule = res.rule
    bkg, ks_max = rule["background"], rule["ks_max"]
    runs = [r for r in res.runs if bkg in r.rejection]
    if not runs:
        res.why = f"no run has a {bkg} rejection at ε_S = {res.efficiency:g} on the test split: nothing selected"
        return

    def ok(ks: float | None) -> bool:
        return ks_max is None or (ks is not None and ks <= ks_max)

    def ks_key(ks: float | None) -> float:
        return math.inf if ks is None else ks

    if rule["level"] == "option_set":
        sets = [s for s in res.option_sets if bkg in s.rejection]
        passing = [s for s in sets if ok(s.ks.mean if s.ks else None)]
        res.ceiling_met = bool(passing)
        if passing:
            best = max(passing, key=lambda s: (s.rejection[bkg].mean, -ks_key(s.ks.mean if s.ks else None)))
        else:
            best = min(sets, key=lambda s: ks_key(s.ks.mean if s.ks else None))
        members = [r for r in runs if r.label in best.runs]
        inside = [r for r in members if ok(r.ks)] or members
        run = max(inside, key=lambda r: (r.rejection[bkg].value, -ks_key(r.ks)))
        rej = best.rejection[bkg]
        head = (f"option set {best.label}: mean {bkg} rejection {_fmt(rej.mean)} ± {_fmt(rej.std)} over {rej.n} "
                f"run(s), mean data/MC K-S {_fmt(best.ks.mean if best.ks else None)}")  # fmt: skip
        res.selected_set = best.label
    else:
        passing_runs = [r for r in runs if ok(r.ks)]
        res.ceiling_met = bool(passing_runs)
        run = (max(passing_runs, key=lambda r: (r.rejection[bkg].value, -ks_key(r.ks))) if passing_runs
               else min(runs, key=lambda r: ks_key(r.ks)))  # fmt: skip
        head = f"the best run of {len(runs)}"
        res.selected_set = run.option_set
    res.selected = run.label
    tail = (f"; exported: {run.label} epoch {run.epoch} ({bkg} rejection {_fmt(run.rejection[bkg].value)}, "
            f"K-S {_fmt(run.ks)})")  # fmt: skip
    if not res.ceiling_met:
        res.why = (f"rule: {res.rule_text}. No {'option set' if rule['level'] == 'option_set' else 'run'} meets the "
                   f"K-S ceiling {ks_max:g}: the one with the smallest K-S was taken instead, {head}{tail}")  # fmt: skip
    else:
        res.why = f"rule: {res.rule_text}. Selected {head}{tail}"
