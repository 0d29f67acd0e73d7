"""Figures of a campaign comparison, drawn from :class:`~crbatch.evaluate.analyze_results.CampaignResult`
and the runs' sections: the trade-off plot a physicist chooses λ from (rejection at a fixed signal
efficiency against the data/MC K-S distance, per option set, Pareto front marked, baselines shown),
and the ROC and history overlays with short labels (the run's options).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import analyze_figures as F
from .analyze_results import CampaignResult, RunSection
from .campaign import pareto, set_label

SHORT = {"adversary_weight": "λ", "learning_rate": "lr", "seed": "seed"}  # legend names of common options
MAX_CURVES = 8  # more runs than this: one ROC per option set (its best run), else the legend is unreadable


def fig_tradeoff(res: CampaignResult, background: str) -> Any:
    """Rejection of ``background`` at the rule's ε_S vs the data/MC K-S distance: every run (small), each
    option set's mean ± std over its runs, the Pareto front, the selected run, the baselines and the ceiling."""
    st = F._style()
    fig, ax, _ = F._figure(False, w=8.5, h=6.5)
    rule = res.rule
    runs = {r.label: r for r in res.runs}
    allx: list[float] = []
    ally: list[float] = []
    # the front of THIS background's rejection (metrics.json's `pareto` is the selection rule's)
    on_front = pareto([(s.rejection[background].mean if background in s.rejection else None,
                        s.ks.mean if s.ks else None) for s in res.option_sets])  # fmt: skip
    for i, s in enumerate(res.option_sets):
        members = [runs[x] for x in s.runs if background in runs[x].rejection and runs[x].ks is not None]
        if not members or background not in s.rejection or s.ks is None:
            continue
        color = st.input_color(i)
        xs = [m.ks for m in members if m.ks is not None]  # every member has one (filtered above)
        ys = [m.rejection[background].value for m in members]
        ax.plot(xs, ys, st.marker(i), ms=4, color=color, alpha=0.45, ls="none")
        y, x = s.rejection[background], s.ks
        ylo: float
        yhi: float
        if y.n > 1:
            ylo = yhi = y.std if np.isfinite(y.std) else 0.0
            xerr = x.std if np.isfinite(x.std) else 0.0
            what = f"mean ± std of {y.n} runs"
        else:  # one run: its Clopper-Pearson interval
            r = members[0].rejection[background]
            ylo, yhi = max(r.value - r.low, 0.0), (max(r.high - r.value, 0.0) if np.isfinite(r.high) else 0.0)
            xerr, what = 0.0, "1 run, 68% CL"
        ax.errorbar([x.mean], [y.mean], yerr=[[ylo], [yhi]], xerr=xerr, fmt=st.marker(i), ms=8, color=color, capsize=3,
                    mfc=color if on_front[i] else "white", mew=1.5, label=f"{legend_label(s.options) if s.options else 'all runs'} ({what})")  # fmt: skip
        allx += [*xs, x.mean - xerr, x.mean + xerr]
        ally += [*ys, y.mean - ylo, y.mean + yhi]
    front = sorted((s.ks.mean, s.rejection[background].mean) for s, f in zip(res.option_sets, on_front, strict=True)
                   if f and s.ks is not None and background in s.rejection)  # fmt: skip
    if front:
        ax.plot(*zip(*front, strict=True), "-", color="0.25", lw=1.2, zorder=0,
                label="Pareto front (filled markers)")  # fmt: skip
    ax.plot([], [], "o", ms=4, color="0.5", alpha=0.45, label="single runs (small markers)")
    sel = runs.get(res.selected or "")
    if sel is not None and background in sel.rejection and sel.ks is not None:
        ax.plot([sel.ks], [sel.rejection[background].value], "*", ms=18, mfc="none", mec="k", mew=1.5,
                label=f"selected: {legend_label(sel.options)}")  # fmt: skip
    for j, b in enumerate(res.baselines):
        if background in b.rejection and b.ks is not None:
            ax.plot([b.ks], [b.rejection[background].value], "D", ms=9, color="k", mfc=["k", "0.6", "w"][j % 3],
                    label=f"baseline: {b.label[:40]}")  # fmt: skip
            allx.append(b.ks)
            ally.append(b.rejection[background].value)
    ceiling = rule.get("ks_max")
    data_max = max((v for v in allx if np.isfinite(v)), default=0.0)
    off_scale = ceiling is not None and data_max > 0 and ceiling > 1.5 * data_max
    if ceiling is not None and not off_scale:  # a far-away ceiling would squeeze the points into a corner
        ax.axvline(ceiling, color="tab:red", ls="--", lw=1.2, label=f"K-S ceiling {ceiling:g}")
        allx.append(ceiling)
    elif off_scale:
        ax.plot([], [], ls="--", color="tab:red", label=f"K-S ceiling {ceiling:g} (off scale: all pass)")
    yv = np.asarray([v for v in ally if np.isfinite(v) and v > 0])
    if yv.size and yv.max() / yv.min() > 20:
        ax.set_yscale("log")
        F._headroom(ax, list(yv), log=True, frac=0.55)
    elif yv.size:
        lo, hi = float(yv.min()), float(yv.max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.1 * hi
        ax.set_ylim(max(0.0, lo - pad), hi + 1.2 * (hi - lo + 2 * pad))
    xv = np.asarray([v for v in allx if np.isfinite(v)])
    if xv.size:
        lo, hi = float(xv.min()), float(xv.max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.05
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    out = rule.get("ks_output", "sig")
    ax.set_xlabel(f"Data/MC K-S distance of {F.OUTPUT_LABEL[out]}, control region")
    ax.set_ylabel(rf"{background} rejection $1/\varepsilon_\mathrm{{B}}$ at $\varepsilon_\mathrm{{S}}$ = "
                  f"{res.efficiency:g}")  # fmt: skip
    ax.legend(loc="upper right", frameon=False, fontsize="xx-small")
    F._label(ax, [f"signal vs {background}, test split; all signal mass points",
                  "collision data vs multijet MC (K-S)"], data=True)  # fmt: skip
    return fig


def legend_label(options: dict[str, Any]) -> str:
    """Options as a legend shows them: ``λ=3, seed=1``."""
    return set_label({SHORT.get(k, k): v for k, v in options.items()})


def short(sections: Sequence[RunSection], res: CampaignResult) -> list[RunSection]:
    """The sections with their options as labels (legends of overlays)."""
    opts = {r.label: r.options for r in res.runs}
    out = []
    for s in sections:
        o = opts.get(s.label) or {}
        text = legend_label(o) if o else s.label
        out.append(s.model_copy(update={"label": text}))
    return out


def roc_sections(sections: Sequence[RunSection], res: CampaignResult) -> tuple[list[RunSection], str]:
    """The runs whose ROCs are overlaid: all, or the best of each option set when there are many."""
    tested = [s for s in sections if s.main is not None]
    if len(tested) <= MAX_CURVES:
        return tested, "every run"
    bkg = res.rule["background"]
    runs = {r.label: r for r in res.runs}
    keep = []
    for s in res.option_sets:
        members = [runs[x] for x in s.runs if bkg in runs[x].rejection]
        if members:
            keep.append(max(members, key=lambda r: r.rejection[bkg].value).label)
    return [s for s in tested if s.label in keep], f"the run of each option set with the highest {bkg} rejection"


def fig_roc_overlay(sections: Sequence[RunSection], res: CampaignResult, background: str) -> Any:
    shown, _ = roc_sections(sections, res)
    labelled = short(shown, res)
    curves = [(F.Model(lab.label + f", e{s.choice.epoch}", i), roc) for i, (s, lab) in enumerate(zip(shown, labelled,
              strict=True)) for roc in s.main.rocs if roc.background == background and roc.mass_point is None]  # type: ignore[union-attr]  # fmt: skip
    first = shown[0] if shown else None
    n = len(curves)
    if first is not None:
        for j, b in enumerate(first.baselines):
            curves += [(F.Model("baseline: " + b.model.label, n + j), roc) for roc in b.rocs
                       if roc.background == background and roc.mass_point is None]  # fmt: skip
    ref = n if len(curves) > n else None  # the ratio to the first baseline: "what we run today"
    return F.fig_roc(curves, [f"signal vs {background}, test split", "all signal mass points"], ref)


def history_sections(sections: Sequence[RunSection], res: CampaignResult) -> list[RunSection]:
    return short(sections, res)


def finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v
