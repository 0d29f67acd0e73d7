"""Per-epoch figures: data vs MC scores on the control-region val set, per-class scores on main val.

File names are the reference's (reference-training.md §5.4), ``eee`` the zero-padded epoch:

* ``<eee>_val_adversary_{sig,qcd,bib}_predictions.png``: data vs MC of each output on all CR jets;
* ``<eee>_val_adversary_{lowPt,midPt,highPt}_{sig,qcd,bib}_predictions.png``: the same per jet-pT bin;
* ``<eee>_main_{sig,qcd,bib}_predictions_linear.png``: each output's score per true class on the
  main VALIDATION set (the reference used the test split, which biases the final test numbers).

Differences from the reference, on purpose: histograms are normalised on copies (the reference
normalised the caller's weight arrays in place, and fails on read-only pandas 3 arrays); the
data/MC figures carry a data/MC ratio panel, the weighted K-S and its effective-N p-value instead of
the always-False "Reject" label. Signal and BIB scores of CR jets pile up near 0, so their axes
are logit axes (40 bins uniform in logit(p) between the integer logits around the 0.1 % and 99.9 %
quantiles of the scores, |logit| ≤ 11.5; scores outside counted in the edge bins): both ends of the
score are resolved — a log axis squeezed the signal-like end into a bin or two. The QCD score uses
40 equal bins. The main figures keep the reference's 29 equal bins on [0, 1].

Speed: 15 figures every epoch. Building a figure costs ~0.3 s here, mostly creating tick objects
(the ATLAS style has minor ticks on four sides), so each layout is built once per process and only
its artists' data are replaced for the next file; a save then costs ~0.1 s. The ATLAS label is
plain text (mplhep's costs ~0.2 s a figure). Each file appears atomically (temporary + rename).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import Label
from ..stats import effective_n, ks_pvalue
from .epoch import OUTPUTS, CRScores, MainHistograms, pt_bin_index

CR_BINS = 40
LOG_MIN = 1e-5  # smallest score on the logit axes: logit(1e-5) ≈ -11.5
OUTPUT_TITLES = {"qcd": "QCD score $p_{QCD}$", "sig": "signal score $p_{signal}$", "bib": "BIB score $p_{BIB}$"}
_FALLBACK_COLORS: dict[int, str] = {
    Label.QCD: "#1f77b4",
    Label.SIGNAL: "#d62728",
    Label.BIB: "#2ca02c",
    Label.DATA: "black",
}
_FALLBACK_NAMES: dict[int, str] = {Label.QCD: "QCD", Label.SIGNAL: "signal", Label.BIB: "BIB", Label.DATA: "data"}


def apply_style() -> tuple[dict[int, str], dict[int, str]]:
    """Apply the project's plot style once (crbatch.report.style); returns (class colours, class names)."""
    try:
        from ..report import style
    except ImportError:  # pragma: no cover - a stripped-down install without the report package
        import matplotlib

        matplotlib.use("Agg", force=True)
        return _FALLBACK_COLORS, _FALLBACK_NAMES
    style.setup()
    return style.CLASS_COLORS, style.CLASS_NAMES


def save(fig: Any, path: Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` atomically: readers of the run directory never see half a PNG."""
    from ..schema import atomic_output

    with atomic_output(path) as tmp:  # a full disk: exit 20, no half PNG, the temporary removed
        # zlib level 1: a third of the default's encoding time for ~1.5x the bytes (tens of kB).
        fig.savefig(tmp, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return path


def cr_edges(output: str, scores: np.ndarray | None = None) -> np.ndarray:
    """Bins of one output's data/MC figure: 40 equal bins for the QCD score; for the signal and BIB
    scores 40 bins uniform in logit(p) over the integer logits around the 0.1 % and 99.9 % quantiles of
    ``scores`` (within ±11.5, at least 2 units wide), so neither end of the score is squeezed."""
    if output == "qcd":
        return np.linspace(0.0, 1.0, CR_BINS + 1)
    lim = -math.log(1 / LOG_MIN - 1)
    lo, hi = lim, -lim
    if scores is not None:
        p = scores[np.isfinite(scores)]
        if p.size:
            q = np.clip(np.quantile(p, [0.001, 0.999]), LOG_MIN, 1 - LOG_MIN)
            lo = max(lim, math.floor(math.log(q[0] / (1 - q[0]))))
            hi = min(-lim, math.ceil(math.log(q[1] / (1 - q[1]))))
            if hi - lo < 2:
                lo, hi = lo - 1, hi + 1
    return 1.0 / (1.0 + np.exp(-np.linspace(lo, hi, CR_BINS + 1)))


def normalised_hist(x: np.ndarray, w: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-sum weighted histogram and its per-bin uncertainty; ``x`` and ``w`` are not modified."""
    xc = np.clip(x, edges[0], edges[-1])  # out-of-range scores (below LOG_MIN) go to the edge bins
    h, _ = np.histogram(xc, bins=edges, weights=w)
    h2, _ = np.histogram(xc, bins=edges, weights=np.square(w, dtype=np.float64))
    total = h.sum()
    if not total > 0:
        return np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    return h / total, np.sqrt(h2) / abs(total)


def label_text(ax: Any, simulation: bool = False) -> Any:
    """'ATLAS [Simulation] Internal' plus a free text line below, as plain text (mplhep's label costs a
    canvas draw per figure); returns the free text artist. ``simulation``: an MC-only figure."""
    ax.text(0.04, 0.95, "ATLAS", transform=ax.transAxes, va="top", fontweight="bold", style="italic")
    ax.text(0.165, 0.95, "Simulation Internal" if simulation else "Internal", transform=ax.transAxes, va="top")
    return ax.text(0.04, 0.87, "", transform=ax.transAxes, va="top", fontsize="small", linespacing=1.4)


def _points(ax: Any, x: np.ndarray, color: str) -> tuple[Any, Any]:
    """Markers with vertical error bars as two plain artists whose data can be replaced."""
    (pts,) = ax.plot(x, np.full(len(x), np.nan), "o", ms=4, color=color, zorder=3)
    err = ax.vlines(x, np.zeros(len(x)), np.zeros(len(x)), color=color, lw=1, zorder=3)
    return pts, err


def _set_points(pts: Any, err: Any, x: np.ndarray, y: np.ndarray, dy: np.ndarray, floor: float) -> None:
    y = np.where(np.isfinite(y) & (y > floor), y, np.nan)  # empty bins: no marker (and none at 0 on a log axis)
    pts.set_ydata(y)
    lo = np.maximum(y - dy, floor)
    err.set_segments([np.array([[xi, a], [xi, b]]) for xi, a, b in zip(x, lo, y + dy, strict=True) if np.isfinite(a)])


def _log_label(v: float, _pos: Any = None) -> str:
    return f"{v:g}" if 1e-3 <= v <= 1e3 else f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _plain_log_labels(axis: Any) -> None:
    """Plain-text log tick labels (0.01, 1e-5): matplotlib's mathtext 10^n labels are re-parsed at every
    save and cost about half of a figure's drawing time."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(_log_label))
    axis.set_minor_formatter(NullFormatter())


def _centres(edges: np.ndarray, logit_x: bool) -> np.ndarray:
    """Bin centres, in logit space on a logit axis."""
    if not logit_x:
        return 0.5 * (edges[1:] + edges[:-1])
    t = np.log(edges / (1 - edges))
    return 1.0 / (1.0 + np.exp(-0.5 * (t[1:] + t[:-1])))


def _logit_label(p: float, _pos: Any = None) -> str:
    """Plain tick labels on a logit axis: 0.3, 1e-3, 1−1e-3 (matplotlib's own mix ½ and mathtext)."""
    if not 0 < p < 1:
        return ""
    if p < 0.01:
        return f"{p:.0e}".replace("e-0", "e-")
    if p > 0.99:
        return "1−" + f"{1 - p:.0e}".replace("e-0", "e-")
    return f"{p:.2g}"


def _logit_labels(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(_logit_label))
    axis.set_minor_formatter(NullFormatter())


class _DataMCFigure:
    """Data vs MC with a ratio panel; one instance per x-axis flavour, reused for every file."""

    def __init__(self, n_bins: int, log_x: bool):
        from matplotlib.figure import Figure

        colors, _ = apply_style()
        self.log_x = log_x  # a logit x axis (signal and BIB scores)
        edges = cr_edges("sig") if log_x else np.linspace(0.0, 1.0, n_bins + 1)
        x, zeros = _centres(edges, log_x), np.zeros(n_bins)
        self.fig = fig = Figure(figsize=(8, 7))
        ax, rx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
        fig.subplots_adjust(left=0.13, right=0.97, top=0.97, bottom=0.1, hspace=0.05)
        self.ax, self.rx = ax, rx
        self.mc = ax.stairs(zeros, edges, fill=True, alpha=0.45, color=colors[Label.QCD], lw=0)
        self.band = ax.stairs(zeros, edges, baseline=zeros, fill=True, color="grey", alpha=0.35, lw=0, hatch="////")
        self.pts, self.err = _points(ax, x, colors[Label.DATA])
        ax.set_ylim(1e-4, 10)  # positive limits first: no "cannot be log-scaled" warning on empty artists
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
        ax.set_ylabel("fraction of jets")
        self.text = label_text(ax)
        self.legend = ax.legend([self.mc, self.pts], ["MC", "data"], loc="upper right", frameon=False, fontsize="small")
        self.rband = rx.stairs(zeros + 1, edges, baseline=zeros + 1, fill=True, color="grey", alpha=0.35, lw=0)
        self.rpts, self.rerr = _points(rx, x, colors[Label.DATA])
        rx.axhline(1.0, color="k", lw=0.8)
        rx.set_ylim(0.0, 2.0)
        rx.set_ylabel("data / MC")
        if log_x:
            rx.set_xscale("logit")
            rx.set_xlim(edges[0], edges[-1])
            _logit_labels(rx.xaxis)
            _logit_labels(ax.xaxis)

    def draw(self, path: Path, cr: CRScores, o: int, edges: np.ndarray, *, xlabel: str, text: str, dpi: int) -> Path:
        d = cr.is_data
        x = _centres(edges, self.log_x)
        hd, ed = normalised_hist(cr.scores[d, o], cr.weight[d], edges)
        hm, em = normalised_hist(cr.scores[~d, o], cr.weight[~d], edges)
        positive = np.concatenate([hd[hd > 0], hm[hm > 0]])
        lo = positive.min() / 3 if positive.size else 1e-4
        hi = positive.max() * 300 if positive.size else 10.0  # headroom for the label and legend
        self.mc.set_data(hm, edges)
        self.band.set_data(hm + em, edges, baseline=np.maximum(hm - em, lo / 10))
        self.pts.set_xdata(x)
        _set_points(self.pts, self.err, x, hd, ed, lo / 10)
        self.ax.set_ylim(lo, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(hm > 0, hd / hm, np.nan)
            rerr = np.where(hm > 0, ed / hm, np.nan)
            band = np.where(hm > 0, em / hm, 0.0)
        self.rband.set_data(1 + band, edges, baseline=1 - band)
        self.rpts.set_xdata(x)
        _set_points(self.rpts, self.rerr, x, ratio, rerr, -np.inf)
        self.rx.set_xlim(edges[0], edges[-1])
        self.text.set_text(text)
        n_mc, n_data = int((~d).sum()), int(d.sum())
        for t, s in zip(self.legend.get_texts(), (f"MC (QCD), {n_mc} jets", f"data, {n_data} jets"), strict=True):
            t.set_text(s)
        self.rx.set_xlabel(xlabel)
        return save(self.fig, path, dpi)


class _ClassScoresFigure:
    """One output's score per true class (step histograms), reused for every file."""

    def __init__(self, edges: np.ndarray):
        from matplotlib.figure import Figure

        colors, self.names = apply_style()
        self.edges = edges
        self.fig = fig = Figure(figsize=(8, 6))
        self.ax = ax = fig.subplots()
        fig.subplots_adjust(left=0.12, right=0.97, top=0.97, bottom=0.13)
        zeros = np.zeros(len(edges) - 1)
        self.steps = {}
        for _, c in OUTPUTS:
            sig = c == Label.SIGNAL  # the reference's look: signal filled, backgrounds as lines
            self.steps[c] = ax.stairs(zeros, edges, color=colors[c], lw=2, fill=sig, alpha=0.45 if sig else 1.0)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(0, 1.2)  # the reference's range: a bin holds at most all of a class
        ax.set_ylabel("fraction of jets")
        self.text = label_text(ax, simulation=True)
        self.legend = ax.legend(list(self.steps.values()), [self.names[c] for c in self.steps], loc="upper right",
                                frameon=False, fontsize="small")  # fmt: skip

    def draw(self, path: Path, hists: MainHistograms, o: int, *, xlabel: str, text: str, dpi: int) -> Path:
        for (c, step), t in zip(self.steps.items(), self.legend.get_texts(), strict=True):
            total = hists.sumw[c, o].sum()
            ok = hists.n[c] > 0 and total > 0
            step.set_data(hists.sumw[c, o] / total if ok else np.zeros(len(self.edges) - 1), self.edges)
            step.set_visible(bool(ok))
            t.set_text(f"{self.names[c]}, {int(hists.n[c])} jets")
        self.ax.set_xlabel(xlabel)
        self.text.set_text(text)
        return save(self.fig, path, dpi)


_CACHE: dict[tuple, Any] = {}


def _figure(kind: str, edges: np.ndarray, log_x: bool = False) -> Any:
    key = (kind, len(edges), log_x) if kind == "datamc" else (kind, len(edges), float(edges[0]), float(edges[-1]))
    if key not in _CACHE:
        _CACHE[key] = _DataMCFigure(len(edges) - 1, log_x) if kind == "datamc" else _ClassScoresFigure(edges)
    return _CACHE[key]


def clear_cache() -> None:
    """Drop the reused figures (they hold a few MB; the next plot rebuilds them)."""
    _CACHE.clear()


def plot_data_vs_mc(path: Path, cr: CRScores, output: str, *, ks: float, pvalue: float, subtitle: str,
                    edges: np.ndarray | None = None, dpi: int = 80) -> Path:  # fmt: skip
    """Data vs MC distribution of one output's score (each normalised to unit sum) with a ratio panel.

    ``edges``: the bins (default :func:`cr_edges` of this sample; pass the full sample's for pT bins).
    """
    o = dict(OUTPUTS)[output]
    if edges is None:
        edges = cr_edges(output, cr.scores[:, o])
    fig = _figure("datamc", edges, log_x=output != "qcd")  # signal, BIB: a logit axis
    ks_text = "K-S: n/a (a sample is empty)" if not math.isfinite(ks) else f"K-S = {ks:.3f}, p = {pvalue:.2g}"
    try:
        xlabel = OUTPUT_TITLES[output] + ("" if output == "qcd" else " (logit scale)")
        return fig.draw(path, cr, o, edges, xlabel=xlabel, text=f"{subtitle}\n{ks_text}", dpi=dpi)
    except Exception:
        clear_cache()  # never reuse a figure left half-updated
        raise


def plot_main_scores(path: Path, hists: MainHistograms, output: str, *, subtitle: str, dpi: int = 80) -> Path:
    """One output's score for each true class on main val, each class normalised to unit sum."""
    fig = _figure("classes", hists.edges)
    try:
        return fig.draw(path, hists, dict(OUTPUTS)[output], xlabel=OUTPUT_TITLES[output], text=subtitle, dpi=dpi)
    except Exception:
        clear_cache()
        raise


def epoch_plot_names(epoch: int, bin_names: Sequence[str]) -> list[str]:
    """The file names one epoch writes (the reference's 15 with three pT bins)."""
    e = f"{epoch:03d}"
    out = [f"{e}_val_adversary_{o}_predictions.png" for o, _ in OUTPUTS]
    out += [f"{e}_val_adversary_{b}_{o}_predictions.png" for b in bin_names for o, _ in OUTPUTS]
    out += [f"{e}_main_{o}_predictions_linear.png" for o, _ in OUTPUTS]
    return out


def _pvalue(cr: CRScores, ks: float) -> float:
    if not math.isfinite(ks):
        return math.nan
    return ks_pvalue(ks, effective_n(cr.weight[cr.is_data]), effective_n(cr.weight[~cr.is_data]))


def plot_epoch(
    out_dir: Path,
    epoch: int,
    hists: MainHistograms,
    cr: CRScores,
    metrics: dict[str, float],
    edges_scaled: np.ndarray,
    bin_names: Sequence[str],
    bin_labels: Sequence[str],
    *,
    dpi: int = 80,
) -> list[Path]:
    """All of one epoch's figures (names: :func:`epoch_plot_names`); returns their paths."""
    e = f"{epoch:03d}"
    written: list[Path] = []
    bins = pt_bin_index(cr.pt_scaled, edges_scaled)
    groups = [("", "all jets", cr, "all")]
    groups += [
        (f"{n}_", lab, cr.select(bins == i), n) for i, (n, lab) in enumerate(zip(bin_names, bin_labels, strict=True))
    ]
    # Grouped by output so that consecutive files reuse one figure with the same axes.
    for o, i in OUTPUTS:
        edges = cr_edges(o, cr.scores[:, i])  # one binning for all jets and every pT bin of this output
        for prefix, label, sub, key in groups:
            ks = metrics.get(f"ks_{o}_{key}", math.nan)
            p = metrics.get(f"ks_{o}_pvalue", math.nan) if key == "all" else _pvalue(sub, ks)
            written.append(plot_data_vs_mc(out_dir / f"{e}_val_adversary_{prefix}{o}_predictions.png", sub, o,
                                           ks=ks, pvalue=p, subtitle=f"CR val, epoch {epoch}, {label}", edges=edges, dpi=dpi))  # fmt: skip
    for o, _ in OUTPUTS:
        written.append(plot_main_scores(out_dir / f"{e}_main_{o}_predictions_linear.png", hists, o,
                                        subtitle=f"main val, epoch {epoch}", dpi=dpi))  # fmt: skip
    return written
