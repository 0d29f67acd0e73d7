"""Figures of the analysis report, drawn from the typed results (crbatch.evaluate.analyze_results)
— never from per-jet arrays — so every figure shows numbers that are in ``metrics.json``.

Conventions (a note can use them): mplhep's ATLAS label ("ATLAS Simulation Internal", √s = 13 TeV
on MC-only figures; "ATLAS Internal" and what is compared on data/MC figures), units on every axis
and in mass-point labels, error bars (68.3 % Clopper–Pearson intervals for efficiencies and
rejections, √Σw² for distributions) with a legend entry for every band, score axes on a logit scale
(both ends of a softmax output resolved), a random-classifier line on every ROC, and a ratio panel
against the first baseline — "what we run today" — whenever one is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analyze_results import Binned, Histogram, MassPoint, PointEfficiency, Roc, RunSection, Scan
from .epoch import OUTPUTS

OUTPUT_LABEL = {"qcd": r"$p_\mathrm{QCD}$", "sig": r"$p_\mathrm{signal}$", "bib": r"$p_\mathrm{BIB}$"}
VAR_LABEL = {
    "llp_Lxy": r"LLP decay radius $L_{xy}$ [mm]",
    "llp_Lz": r"LLP decay $|L_z|$ [mm]",
    "pt": r"Jet $p_\mathrm{T}$ [GeV]",
    "eta": r"Jet $\eta$",
}
REGION_TEXT = {
    "barrel": "LLP in the barrel (|η| < {eta:g})",
    "endcap": "LLP in the end-caps (|η| ≥ {eta:g})",
    "all": "",
}
CLASS_COLOR_KEYS = {"QCD": 0, "signal": 1, "BIB": 2, "data": 3}


def mass_text(p: MassPoint | None) -> str:
    return "all signal mass points" if p is None else rf"$m_H$ = {p.mH:g} GeV, $m_S$ = {p.mS:g} GeV"


@dataclass(frozen=True)
class Model:
    """A model as drawn: its legend label and its index (0 = the run; marker and line style follow it)."""

    label: str
    index: int


def _style() -> Any:
    from ..report import style

    style.setup()
    return style


def _figure(ratio: bool, w: float = 8.0, h: float = 6.0) -> tuple[Any, Any, Any]:
    from matplotlib.figure import Figure

    _style()
    if not ratio:
        fig = Figure(figsize=(w, h))
        ax = fig.subplots()
        fig.subplots_adjust(left=0.14, right=0.96, top=0.95, bottom=0.15)
        return fig, ax, None
    fig = Figure(figsize=(w, h + 1.6))
    ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06})
    fig.subplots_adjust(left=0.14, right=0.96, top=0.95, bottom=0.11)
    return fig, ax, rax


def _label(ax: Any, lines: Sequence[str], data: bool = False) -> None:
    _style().experiment_label(ax, [s for s in lines if s], data=data)


def _headroom(ax: Any, values: Sequence[float], log: bool, frac: float = 0.58, floor: float | None = None) -> None:
    """Y range so the curves fill the lower ``frac`` of the axes (the label and legend sit above)."""
    v = np.asarray([x for x in values if np.isfinite(x) and (x > 0 or not log)], np.float64)
    if not v.size:
        return
    lo, hi = float(v.min()), float(v.max())
    if log:
        lo = floor if floor is not None else lo / 2
        # In decades, capped at 12 above the floor: an upper limit of a rejection from a handful of
        # background jets can be astronomically large (1/ε with ε → 0) and would overflow the range.
        decades = min(max(np.log10(hi / lo), 1.0), 12.0)
        ax.set_ylim(lo, lo * 10 ** (decades / frac))
    else:
        lo = floor if floor is not None else min(0.0, lo)
        ax.set_ylim(lo, lo + (hi - lo) / frac if hi > lo else lo + 1)


def _finish_score_panel(fig: Any, ax: Any, edges: Any, allv: list[float], output: str, lines: Sequence[str]) -> Any:
    """The common ending of a score-distribution panel: logit x axis, log y with headroom, labels."""
    if edges is not None:
        _logit_axis(ax, edges)
    ax.set_yscale("log")
    _headroom(ax, allv or [1e-3, 1], log=True)
    ax.set_xlabel(f"{OUTPUT_LABEL[output]} (logit scale)")
    ax.set_ylabel("Fraction of jets / bin")
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _label(ax, lines)
    return fig


def _ratio_axis(rax: Any, ylabel: str, values: Sequence[float]) -> None:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    dev = float(np.percentile(np.abs(v - 1), 95)) if v.size else 0.5
    half = next((h for h in (0.1, 0.2, 0.5, 1.0) if dev < 0.9 * h), 2.0)
    rax.set_ylim(max(0.0, 1 - half), 1 + half)
    rax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    rax.set_ylabel(ylabel)


def _finite(a: Sequence[float | None]) -> np.ndarray:
    return np.asarray([x if x is not None else np.nan for x in a], np.float64)


# --- ROC -------------------------------------------------------------------------------------------


def fig_roc(curves: Sequence[tuple[Model, Roc]], lines: Sequence[str], ref: int | None = None) -> Any:
    """Background rejection vs signal efficiency; ``ref``: index in ``curves`` of the ratio denominator."""
    st = _style()
    fig, ax, rax = _figure(ref is not None and len(curves) > 1)
    allv: list[float] = []
    ref_rej = _finite(curves[ref][1].rejection) if rax is not None and ref is not None else None
    for i, (m, roc) in enumerate(curves):
        x = np.asarray(roc.eff)
        y, lo, hi = _finite(roc.rejection), _finite(roc.rejection_low), _finite(roc.rejection_high)
        ok = np.isfinite(y)
        color = st.input_color(m.index)
        ls = st.MODEL_LINESTYLES[m.index % len(st.MODEL_LINESTYLES)]
        ax.plot(x[ok], y[ok], color=color, ls=ls, lw=1.8, label=f"{m.label}, AUC = {roc.auc:.3f}")
        cap = np.where(np.isfinite(hi), hi, np.nanmax(y[ok]) * 10 if ok.any() else 1.0)
        band = ok & np.isfinite(lo)
        ax.fill_between(x[band], lo[band], cap[band], color=color, alpha=0.2, lw=0,
                        label="68% CL (Clopper–Pearson)" if i == 0 else None)  # fmt: skip
        allv += list(y[ok])
        if rax is not None and ref_rej is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = y / ref_rej
                rl, rh = lo / ref_rej, np.where(np.isfinite(hi), hi / ref_rej, np.nan)
            good = np.isfinite(r)
            rax.plot(x[good], r[good], color=color, ls=ls, lw=1.5)
            if i == ref:
                bg = good & np.isfinite(rl) & np.isfinite(rh)
                rax.fill_between(x[bg], rl[bg], rh[bg], color=color, alpha=0.2, lw=0,
                                 label=f"{m.label[:18]} 68% CL")  # fmt: skip
    xx = np.linspace(0.01, 1.0, 200)
    ax.plot(xx, 1 / xx, color="0.5", ls=":", lw=1.2, label="random classifier")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    _headroom(ax, [*allv, 1.0], log=True, floor=0.8, frac=0.5)
    ax.set_ylabel(r"Background rejection $1/\varepsilon_\mathrm{B}$")
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _label(ax, lines)
    xa = rax if rax is not None else ax
    xa.set_xlabel(r"Signal efficiency $\varepsilon_\mathrm{S}$")
    if rax is not None:
        assert ref is not None  # a ratio panel is drawn only with a reference curve
        vals = []
        for _, roc in curves:
            with np.errstate(divide="ignore", invalid="ignore"):
                vals += list(_finite(roc.rejection) / ref_rej)
        _ratio_axis(rax, f"ratio to\n{curves[ref][0].label[:18]}", vals)
        rax.legend(loc="upper right", frameon=False, fontsize="xx-small")
    return fig


# --- efficiencies and rejections in bins ------------------------------------------------------------


def fig_binned(items: Sequence[tuple[Model, Binned]], lines: Sequence[str], ref: int | None, *,
               region_eta: float = 1.4) -> Any:  # fmt: skip
    """Efficiency (linear y) or rejection (log y) in bins, one colour per working point, one marker per
    model, each series at its own offset inside the bin (bin edges drawn as light lines); ratio panel of
    each model to the model ``ref`` (index of the Model, not of ``items``)."""
    st = _style()
    models = sorted({m.index for m, _ in items})
    wps = sorted({b.wp for _, b in items})
    fig, ax, rax = _figure(ref is not None and len(models) > 1)
    quantity = items[0][1].quantity
    log = quantity == "rejection"
    by = {(m.index, b.wp): (m, b) for m, b in items}
    allv: list[float] = []
    rvals: list[float] = []
    limits = False
    series = [(wp, mi) for wp in wps for mi in models]
    shift = {k: -0.6 + 1.2 * (i + 0.5) / len(series) for i, k in enumerate(series)}
    for j, wp in enumerate(wps):
        color = st.WP_COLORS[j % len(st.WP_COLORS)]
        ref_b = by.get((ref, wp), (None, None))[1] if ref is not None else None
        for mi in models:
            if (mi, wp) not in by:
                continue
            _, b = by[mi, wp]
            e = np.asarray(b.edges)
            c, hw = 0.5 * (e[1:] + e[:-1]), 0.5 * np.diff(e)
            x = c + shift[wp, mi] * hw
            y, lo, hi = _finite(b.value), _finite(b.low), _finite(b.high)
            ok = np.isfinite(y) & ((y > 0) if log else True)
            with np.errstate(invalid="ignore"):
                top = np.where(np.isfinite(hi), hi, y)
                yerr = np.maximum(0, [np.where(ok, y - np.where(np.isfinite(lo), lo, y), 0), np.where(ok, top - y, 0)])
            mk = st.MODEL_MARKERS[mi % len(st.MODEL_MARKERS)]
            ax.errorbar(x[ok], y[ok], yerr=yerr[:, ok], fmt=mk, color=color, ms=4.5, mfc=color if mi == 0 else "white",
                        lw=1.1, capsize=0)  # fmt: skip
            limit = np.isinf(y) & np.isfinite(lo) & (lo > 0)  # no background jet passes: only a lower limit
            if limit.any():
                ax.errorbar(x[limit], lo[limit], yerr=[np.zeros(limit.sum()), lo[limit] * 1.5], lolims=True, fmt=mk,
                            color=color, ms=4.5, mfc="none", lw=1.1)  # fmt: skip
                allv += list(lo[limit] * 2.5)
                limits = True
            allv += list(y[ok]) + list(top[ok])
            if rax is not None and ref_b is not None and mi != ref:
                ry = _finite(ref_b.value)
                with np.errstate(divide="ignore", invalid="ignore"):
                    r, rl, rh = y / ry, lo / ry, top / ry
                good = np.isfinite(r) & np.isfinite(rl) & np.isfinite(rh)
                err = np.maximum(0, [r[good] - rl[good], rh[good] - r[good]])
                rax.errorbar(x[good], r[good], yerr=err, fmt=mk, color=color, ms=3.5,
                             mfc=color if mi == 0 else "white", lw=1.0, capsize=0)  # fmt: skip
                rvals += list(r[good])
        b0 = next(b for (_, w), (_, b) in by.items() if w == wp)
        ax.plot(
            [],
            [],
            "s",
            color=color,
            label=rf"$\varepsilon_\mathrm{{S}}$ = {wp:.0%} WP ($p_\mathrm{{signal}}$ ≥ {b0.cut:.3g})",
        )
    for mi in models:
        m = next(mm for mm, _ in items if mm.index == mi)
        mk = st.MODEL_MARKERS[mi % len(st.MODEL_MARKERS)]
        ax.errorbar([], [], yerr=[], fmt=mk, color="k", mfc="k" if mi == 0 else "white",
                    label=f"{m.label} (68% CL)")  # fmt: skip
    if limits:
        ax.errorbar([], [], yerr=[], lolims=True, fmt="o", mfc="none", color="k",
                    label="lower limit (68% CL): no jet passes")  # fmt: skip
    b = items[0][1]
    e = np.asarray(b.edges)
    for axx in (ax, rax) if rax is not None else (ax,):
        for edge in e[1:-1]:
            axx.axvline(edge, color="0.85", lw=0.8, zorder=0)
    if log:
        ax.set_yscale("log")
        _headroom(ax, allv or [1.0], log=True, floor=max(0.8, min(allv) / 2) if allv else 0.8)
        ax.set_ylabel(rf"{b.sample} rejection $1/\varepsilon_\mathrm{{{b.sample}}}$")
    else:
        ax.set_ylim(0, 1.75)
        ax.set_ylabel(r"Signal efficiency $\varepsilon_\mathrm{S}$")
    ax.set_xlim(e[0], e[-1])
    ax.legend(loc="upper right", frameon=False, fontsize="x-small", ncol=1)
    region = REGION_TEXT[b.region].format(eta=region_eta)
    _label(ax, [*lines, region, "bins: light lines"])
    xa = rax if rax is not None else ax
    xa.set_xlabel(VAR_LABEL.get(b.variable, b.variable))
    if rax is not None and ref is not None:
        refm = next(m for m, _ in items if m.index == ref)
        _ratio_axis(rax, f"ratio to\n{refm.label[:18]}", rvals)
    return fig


# --- distributions ------------------------------------------------------------------------------------


def _logit_label(p: float, _pos: Any = None) -> str:
    """Plain tick labels on a logit axis: 0.3, 1e-3, 1−1e-3 (matplotlib's own mixes in ½ and mathtext)."""
    if not 0 < p < 1:
        return ""
    if p < 0.01:
        return f"{p:.0e}".replace("e-0", "e-")
    if p > 0.99:
        return "1−" + f"{1 - p:.0e}".replace("e-0", "e-")
    return f"{p:.2g}"


def _logit_axis(ax: Any, edges: Sequence[float] | np.ndarray) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("logit")
    ax.set_xlim(edges[0], edges[-1])
    ax.xaxis.set_major_formatter(FuncFormatter(_logit_label))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _step(ax: Any, h: Histogram, color: str, ls: Any, label: str, fill: bool = False) -> None:
    e, v, err = np.asarray(h.edges), np.asarray(h.value), np.asarray(h.error)
    ax.stairs(v, e, color=color, ls=ls, lw=1.6, label=label, fill=fill, alpha=0.35 if fill else 1.0)
    c = np.sqrt(e[1:] * e[:-1] / ((1 - e[1:]) * (1 - e[:-1])))
    c = c / (1 + c)  # bin centre in logit space
    ok = v > 0
    ax.errorbar(c[ok], v[ok], yerr=err[ok], fmt="none", ecolor=color, lw=1.0)


def fig_scores(by_model: Sequence[tuple[Model, Sequence[Histogram]]], output: str, lines: Sequence[str]) -> Any:
    """One output per true class (colour = class, line style = model), each class normalised to 1."""
    from ..report.style import CLASS_COLORS

    st = _style()
    fig, ax, _ = _figure(False)
    allv: list[float] = []
    edges = None
    for m, hists in by_model:
        ls = st.MODEL_LINESTYLES[m.index % len(st.MODEL_LINESTYLES)]
        for h in hists:
            if h.output != output:
                continue
            color = CLASS_COLORS[CLASS_COLOR_KEYS[h.sample]]
            who = f" — {m.label}" if len(by_model) > 1 else ""
            _step(ax, h, color, ls, f"{h.sample}{who} ({h.jets:,} jets)")
            allv += [x for x in h.value if x > 0]
            edges = h.edges
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="k", label=r"stat. uncertainty ($\sqrt{\Sigma w^2}$)")
    return _finish_score_panel(fig, ax, edges, allv, output, lines)


def fig_data_mc(by_model: Sequence[tuple[Model, Histogram | None, Histogram | None, str]], output: str,
                lines: Sequence[str]) -> Any:  # fmt: skip
    """Data (points) vs multijet MC (line, stat. band) of one output on the control-region test split, for
    every model (colour), with the data/MC ratio of each."""
    st = _style()
    fig, ax, rax = _figure(True)
    allv: list[float] = []
    rvals: list[float] = []
    edges = None
    for m, data, mc, ks in by_model:
        if data is None or mc is None:
            continue
        color = st.input_color(m.index)
        e = np.asarray(mc.edges)
        edges = e
        c = np.sqrt(e[1:] * e[:-1] / ((1 - e[1:]) * (1 - e[:-1])))
        c = c / (1 + c)
        hm, em, hd, ed = (np.asarray(a) for a in (mc.value, mc.error, data.value, data.error))
        who = f"{m.label}: " if len(by_model) > 1 else ""
        ax.stairs(hm, e, color=color, lw=1.6, label=f"{who}multijet MC ({mc.jets:,} jets)")
        ax.stairs(hm + em, e, baseline=np.maximum(hm - em, 0), fill=True, color=color, alpha=0.25, lw=0,
                  label="MC stat. uncertainty" if m.index == by_model[0][0].index else None)  # fmt: skip
        ok = hd > 0
        mk = st.MODEL_MARKERS[m.index % len(st.MODEL_MARKERS)]
        ax.errorbar(c[ok], hd[ok], yerr=ed[ok], fmt=mk, color=color, ms=4, mfc=color if m.index == 0 else "white",
                    label=f"{who}data ({data.jets:,} jets), {ks}")  # fmt: skip
        allv += list(hm[hm > 0]) + list(hd[ok])
        with np.errstate(divide="ignore", invalid="ignore"):
            r, re_ = hd / hm, ed / hm
            band = np.where(hm > 0, em / hm, np.nan)
        good = np.isfinite(r) & ok
        rax.errorbar(
            c[good], r[good], yerr=re_[good], fmt=mk, color=color, ms=3, mfc=color if m.index == 0 else "white"
        )
        if m.index == by_model[0][0].index:
            fb = np.isfinite(band)
            rax.stairs(np.where(fb, 1 + band, 1), e, baseline=np.where(fb, 1 - band, 1), fill=True, color=color,
                       alpha=0.25, lw=0, label="MC stat. uncertainty")  # fmt: skip
        rvals += list(r[good])
    if edges is not None:
        _logit_axis(ax, edges)
        _logit_axis(rax, edges)
    ax.set_yscale("log")
    _headroom(ax, allv or [1e-3, 1], log=True, frac=0.55)
    ax.set_ylabel("Fraction of jets / bin")
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _label(ax, lines, data=True)
    _ratio_axis(rax, "data / MC", rvals)
    rax.legend(loc="upper right", frameon=False, fontsize="xx-small")
    rax.set_xlabel(f"{OUTPUT_LABEL[output]} (logit scale)")
    return fig


def fig_overtraining(hists: Sequence[Histogram], ks: dict[str, float], output: str, lines: Sequence[str]) -> Any:
    """Train (filled) vs test (points) distribution of one output for each true class, with the K-S p-value."""
    from ..report.style import CLASS_COLORS

    fig, ax, _ = _figure(False)
    allv: list[float] = []
    edges = None
    for h in hists:
        if h.output != output:
            continue
        color = CLASS_COLORS[CLASS_COLOR_KEYS[h.sample]]
        e, v, err = np.asarray(h.edges), np.asarray(h.value), np.asarray(h.error)
        edges = e
        if h.split == "train":
            ax.stairs(v, e, fill=True, color=color, alpha=0.3, lw=0, label=f"{h.sample} train ({h.jets:,} jets)")
        else:
            c = np.sqrt(e[1:] * e[:-1] / ((1 - e[1:]) * (1 - e[:-1])))
            c = c / (1 + c)
            ok = v > 0
            p = ks.get(h.sample, math.nan)
            ax.errorbar(c[ok], v[ok], yerr=err[ok], fmt="o", ms=3.5, color=color,
                        label=f"{h.sample} test ({h.jets:,} jets), K-S p = {p:.2g}")  # fmt: skip
        allv += list(v[v > 0])
    return _finish_score_panel(fig, ax, edges, allv, output, lines)


# --- S/√B, efficiency map, history -------------------------------------------------------------------


def fig_scans(scans: Sequence[tuple[Model, Scan]], lines: Sequence[str]) -> Any:
    """S/√B vs the cut on p_signal (logit axis: the signal-like end is where the cut matters)."""
    st = _style()
    fig, ax, _ = _figure(False)
    allv: list[float] = []
    labels = list(dict.fromkeys(s.label for _, s in scans))
    for m, s in scans:
        x, y = np.asarray(s.cuts), _finite(s.sob)
        ok = np.isfinite(y) & (x > 0) & (x < 1)
        color = st.WP_COLORS[labels.index(s.label) % len(st.WP_COLORS)]
        ls = st.MODEL_LINESTYLES[m.index % len(st.MODEL_LINESTYLES)]
        who = f"{m.label}: " if len({mm.index for mm, _ in scans}) > 1 else ""
        ax.plot(x[ok], y[ok], color=color, ls=ls, lw=1.6,
                label=f"{who}{s.label}, max {s.max_sob:.3g} at {s.cut_at_max:.4g}")  # fmt: skip
        allv += list(y[ok])
    cuts = [c for _, s in scans for c, v in zip(s.cuts, _finite(s.sob), strict=True) if np.isfinite(v) and 0 < c < 1]
    if cuts:
        lo_l = math.floor(math.log(min(cuts) / (1 - min(cuts)))) - 0.5
        hi_l = math.ceil(math.log(max(cuts) / (1 - max(cuts)))) + 0.5
        _logit_axis(ax, [1 / (1 + math.exp(-lo_l)), 1 / (1 + math.exp(-hi_l))])
    else:
        _logit_axis(ax, [1e-4, 1 - 1e-4])
    _headroom(ax, allv or [1.0], log=False, floor=0.0, frac=0.55)
    ax.set_xlabel(r"Cut on $p_\mathrm{signal}$ (logit scale)")
    ax.set_ylabel(r"$S/\sqrt{B}$ (test-split jet counts)")
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _label(ax, lines)
    return fig


def fig_eff_map(effs: Sequence[PointEfficiency], which: str, lines: Sequence[str]) -> Any:
    """Signal efficiency per (mS, mH): coloured squares with the value and its uncertainty written on them."""
    fig, ax, _ = _figure(False, 8, 6.5)
    ms = np.array([e.mass_point.mS for e in effs])
    mh = np.array([e.mass_point.mH for e in effs])
    iv = [getattr(e, which) for e in effs]
    ev = np.array([i.value for i in iv])
    sc = ax.scatter(ms, mh, c=ev, cmap="viridis", vmin=0, vmax=1, s=2000, marker="s", edgecolors="k")
    for e, i in zip(effs, iv, strict=True):
        txt = "n/a" if not math.isfinite(i.value) else f"{i.value:.2f}\n+{i.high - i.value:.2f}\n−{i.value - i.low:.2f}"
        ax.annotate(txt, (e.mass_point.mS, e.mass_point.mH), ha="center", va="center", fontsize=8, linespacing=1.0,
                    color="w" if (math.isfinite(i.value) and i.value < 0.6) else "k")  # fmt: skip
    fig.colorbar(sc, ax=ax, label=r"Signal efficiency $\varepsilon_\mathrm{S}$")
    for axis, v in (("x", ms), ("y", mh)):
        if len(v) and v.min() > 0 and v.max() / v.min() > 20:
            getattr(ax, f"set_{axis}scale")("log")
    for axis, v, top in (("x", ms, 1.0), ("y", mh, 2.0)):  # room for the squares, and for the label above
        if not len(v):
            continue
        if getattr(ax, f"get_{axis}scale")() == "log":
            lim = (v.min() / 1.8, v.max() * 1.8 * top)
        else:
            span = max(float(np.ptp(v)), 0.5 * float(v.max()), 1.0)
            lim = (v.min() - 0.3 * span, v.max() + 0.3 * span * (1 + 2 * (top - 1)))
        getattr(ax, f"set_{axis}lim")(*lim)
    ax.set_xlabel(r"$m_S$ [GeV]")
    ax.set_ylabel(r"$m_H$ [GeV]")
    _label(ax, lines)
    return fig


def fig_history(runs: Sequence[RunSection], key: str, ylabel: str, train_key: str | None = None,
                chance: bool = False) -> Any:  # fmt: skip
    """One history quantity vs epoch for every run (validation solid, train dashed), chosen epoch starred."""
    from matplotlib.ticker import MaxNLocator

    st = _style()
    fig, ax, _ = _figure(False)
    plotted = False
    allv: list[float] = []
    for i, r in enumerate(runs):
        color = st.input_color(i)
        y = _finite(r.history.get(key, []))
        x = np.arange(len(y))
        if np.isfinite(y).any():
            ax.plot(x, y, "-o", ms=3, color=color, label=f"{r.label} (validation)")
            plotted = True
            allv += list(y[np.isfinite(y)])
        if train_key and train_key in r.history:
            t = _finite(r.history[train_key])
            if np.isfinite(t).any():
                ax.plot(np.arange(len(t)), t, "--", color=color, alpha=0.8, label=f"{r.label} (training)")
                allv += list(t[np.isfinite(t)])
        if chance:
            c = _finite(r.history.get("val_adv_loss_chance", [math.log(2)] * len(y)))
            c = np.where(np.isfinite(c), c, math.log(2))
            ax.plot(np.arange(len(c)), c, ":", color=color, lw=1, label=f"{r.label}: chance level")
            allv += list(c)
        e = r.choice.epoch
        if e is not None and e < len(y) and np.isfinite(y[e]):
            ax.plot([e], [y[e]], "*", ms=14, color=color, markeredgecolor="k")
    ax.plot([], [], "*", ms=12, color="w", markeredgecolor="k", label="chosen epoch")
    if not plotted:
        ax.text(0.5, 0.5, f"{key}: not recorded", transform=ax.transAxes, ha="center")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    n = max((len(r.history.get(key, [])) for r in runs), default=1)
    ax.set_xlim(-0.5, max(n - 0.5, 1.5))
    if allv:
        lo, hi = min(allv), max(allv)
        pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
        ax.set_ylim(lo - pad, hi + 0.9 * (hi - lo + 2 * pad))
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _label(ax, ["validation set (solid), training (dashed)"])
    return fig


__all__ = ["OUTPUTS", "Model", "fig_binned", "fig_data_mc", "fig_eff_map", "fig_history", "fig_overtraining",
           "fig_roc", "fig_scans", "fig_scores", "mass_text"]  # fmt: skip
