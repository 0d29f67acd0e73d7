"""Data report, drawing: the per-class and data-vs-MC figures of one variable (crbatch.report.plot places
them on the page; the numbers come from crbatch.report.plot_data)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import Label
from .plot_data import CLASSES, InputSet, Variable
from .style import CLASS_NAMES


def _ylabel(v: Variable, density: bool) -> str:
    return f"Fraction of {v.per} / bin" if density else f"Weighted {v.per} / bin"


def class_figure(v: Variable, label: str, inputs: list[InputSet], hists, cfg: Any):
    import matplotlib.pyplot as plt
    import mplhep

    from . import style

    fig, ax = plt.subplots(figsize=(7.0, 5.2))
    fig.subplots_adjust(left=0.15, right=0.95, top=0.94, bottom=0.15)
    drawn: list[np.ndarray] = []
    for i, inp in enumerate(inputs):
        h = hists.get((inp.name, v.key))
        if h is None:
            continue
        for c in CLASSES:
            if not h.entries[c]:
                continue
            y, err = h.shape(c, cfg.density)
            drawn.append(y)
            name = CLASS_NAMES[c] + (f" ({inp.name})" if len(inputs) > 1 else "")
            mplhep.histplot(
                y,
                h.edges,
                yerr=err,  # statistical, √Σw² per bin
                ax=ax,
                histtype="step",
                color=style.CLASS_COLORS[c],
                linestyle=style.linestyle(i),
                label=name,
            )
    _finish_axes(ax, drawn)
    ax.set_xlabel(label)
    ax.set_ylabel(_ylabel(v, cfg.density))
    # "Simulation" only when no collision data is drawn (a control-region input holds data jets)
    has_data = any(h is not None and h.entries[Label.DATA] for h in (hists.get((i.name, v.key)) for i in inputs))
    style.experiment_label(ax, ["per class" + (", collision data included" if has_data else "")], data=has_data)
    return fig


def datamc_figure(v: Variable, label: str, cr: list[InputSet], hists, ks: dict, cfg: Any):
    import matplotlib.pyplot as plt
    import mplhep

    from . import style

    fig, (ax, rax) = plt.subplots(
        2, 1, sharex=True, figsize=(7.0, 6.4), gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06}
    )
    fig.subplots_adjust(left=0.15, right=0.95, top=0.95, bottom=0.12)
    drawn: list[np.ndarray] = []
    ratios: list[np.ndarray] = []
    for k, inp in enumerate(cr):
        h = hists[(inp.name, v.key)]
        col, mk = style.input_color(k), style.marker(k)
        suffix = f" ({inp.name})" if len(cr) > 1 else ""
        mc, mce = h.shape(Label.QCD, cfg.density)
        da, dae = h.shape(Label.DATA, cfg.density)
        drawn += [mc, da + dae]
        r = ks.get((inp.name, v.key))
        kstxt = f", K-S = {r.ks:.3f}" if r else ""
        mplhep.histplot(mc, h.edges, ax=ax, histtype="step", color=col, label=f"QCD MC{suffix}")
        da = np.where(h.sumw2[Label.DATA] > 0, da, np.nan)  # no marker (and no ratio point) for empty bins
        mplhep.histplot(
            da, h.edges, yerr=dae, ax=ax, histtype="errorbar", color=col, marker=mk, markersize=4,
            label=f"data{suffix}{kstxt}",
        )  # fmt: skip
        centers = 0.5 * (h.edges[1:] + h.edges[:-1])
        ok = mc > 0
        ratio = np.divide(da, mc, out=np.full_like(da, np.nan), where=ok)
        rerr = np.divide(dae, mc, out=np.full_like(da, np.nan), where=ok)
        if len(cr) == 1:  # the MC statistical band; with several inputs it would hide the points
            rel = np.divide(mce, mc, out=np.zeros_like(mc), where=ok)
            rax.stairs(1 + rel, h.edges, baseline=1 - rel, fill=True, color="0.85", label="MC stat.")
        rax.errorbar(centers, ratio, yerr=rerr, fmt=mk, color=col, markersize=3, linestyle="none")
        ratios.append(np.abs(ratio - 1))
    rax.axhline(1.0, color="0.4", linestyle="--", linewidth=1)
    rax.set_ylim(*_ratio_range(ratios))
    rax.set_ylabel("data / MC")
    rax.set_xlabel(label)
    ax.set_xlabel("")
    _finish_axes(ax, drawn)
    ax.set_ylabel(_ylabel(v, cfg.density))
    style.experiment_label(ax, ["collision data vs multijet MC", "control region"], data=True)
    return fig


def _ratio_range(deviations: list[np.ndarray]) -> tuple[float, float]:
    """1 ± the smallest of 0.1/0.2/0.5/1 that holds (nearly) all points: small mismodelling stays visible."""
    d = np.concatenate(deviations) if deviations else np.zeros(0)
    d = d[np.isfinite(d)]
    top = float(np.percentile(d, 95)) if d.size else 1.0
    half = next((h for h in (0.1, 0.2, 0.5) if top < 0.9 * h), 1.0)
    return 1.0 - half, 1.0 + half


def _finish_axes(ax, drawn: list[np.ndarray]) -> None:
    """Log scale for steeply falling distributions (pT, energies, chi2), which are flat lines on a
    linear scale; headroom above the curves so the legend and the ATLAS label do not cover them."""
    n = len(ax.get_legend_handles_labels()[0])
    y = np.concatenate(drawn) if drawn else np.zeros(0)
    y = y[np.isfinite(y) & (y > 0)]
    room = 1.35 + 0.07 * min(n, 8)
    if y.size >= 5 and y.max() / np.median(y) > 30:
        lo = float(y.min()) / 2
        ax.set_yscale("log")
        ax.set_ylim(lo, y.max() * (y.max() / lo) ** (room - 1))
    elif y.size:
        ax.set_ylim(0.0, y.max() * room)
    if n:
        ax.legend(loc="upper right", ncol=2 if n > 4 else 1, fontsize="x-small" if n > 4 else "small")
