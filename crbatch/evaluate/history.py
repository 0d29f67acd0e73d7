"""Training-history figures, regenerated every epoch from the history dict (one list per key).

The reference's eleven file names are kept (reference-training.md §6.2). The reference drew train
and validation curves on separate figures; here each figure overlays every curve of its quantity
that exists, and the adversary losses show the chance level (the BCE of an adversary that knows
nothing), the K-S figures the full-sample and per-pT-bin values next to the reference's sum:

========================  =====================================================================
file                      curves (history keys)
========================  =====================================================================
train_adv_loss.png        adv_loss (train), val_adv_loss (val), chance level
test_adv_loss.png         val_adv_loss, chance level
adv_acc.png               adv_acc, val_adv_acc, 0.5
main_nn_loss.png          original_lossf (train), val_original_lossf (val)
main_network_acc.png      original_acc, val_original_acc
train_main_adv_loss.png   original_adv_lossf (train), val_original_adv_lossf (val), chance level
test_main_adv_loss.png    val_original_adv_lossf, chance level
main_adv_acc.png          original_adv_acc, val_original_adv_acc, 0.5
ks_{qcd,sig,bib}.png      ks_<o>_all, ks_<o>_<pT bin> (each bin), ks_<o>_hist (the reference's sum)
total_loss.png (new)      original_loss (train, CE − λ·BCE + L1L2), val_loss (CE − λ·BCE)
========================  =====================================================================

The chance level is ``val_adv_loss_chance`` (crbatch.evaluate.epoch) when recorded, else ln 2.
Missing keys are skipped; a figure with no curve is not written. x = epoch (0-based, as the
reference). One figure is built per process and reused, so the twelve files take about a second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .epoch import OUTPUTS
from .plots import apply_style, label_text, save

MAX_CURVES = 7
LineStyle = Literal["-", "--", ":"]
TRAIN: LineStyle = "-"
VAL: LineStyle = "--"
REF: LineStyle = ":"


@dataclass(frozen=True)
class Curve:
    key: str
    label: str
    linestyle: LineStyle = TRAIN


@dataclass(frozen=True)
class HistoryFigure:
    filename: str
    ylabel: str
    curves: tuple[Curve, ...]
    chance: str | None = None  # "bce": the adversary's chance-level loss; "acc": 0.5


def history_figures(history: Mapping[str, Sequence[float]]) -> list[HistoryFigure]:
    """The figure specifications (the K-S ones discover the pT bins from the history's keys)."""
    figs = [
        HistoryFigure("train_adv_loss.png", "adversary loss (BCE)",
                      (Curve("adv_loss", "train"), Curve("val_adv_loss", "validation", VAL)), "bce"),
        HistoryFigure("test_adv_loss.png", "adversary loss (BCE), validation",
                      (Curve("val_adv_loss", "validation", VAL),), "bce"),
        HistoryFigure("adv_acc.png", "adversary accuracy",
                      (Curve("adv_acc", "train"), Curve("val_adv_acc", "validation", VAL)), "acc"),
        HistoryFigure("main_nn_loss.png", "classifier loss (CE)",
                      (Curve("original_lossf", "train"), Curve("val_original_lossf", "validation", VAL))),
        HistoryFigure("main_network_acc.png", "classifier accuracy",
                      (Curve("original_acc", "train"), Curve("val_original_acc", "validation", VAL))),
        HistoryFigure("train_main_adv_loss.png", "adversary loss seen by the classifier (BCE)",
                      (Curve("original_adv_lossf", "train"), Curve("val_original_adv_lossf", "validation", VAL)), "bce"),
        HistoryFigure("test_main_adv_loss.png", "adversary loss seen by the classifier, validation",
                      (Curve("val_original_adv_lossf", "validation", VAL),), "bce"),
        HistoryFigure("main_adv_acc.png", "adversary accuracy in the classifier step",
                      (Curve("original_adv_acc", "train"), Curve("val_original_adv_acc", "validation", VAL)), "acc"),
    ]  # fmt: skip
    for name, _ in OUTPUTS:
        prefix = f"ks_{name}_"
        bins = [k[len(prefix) :] for k in history if k.startswith(prefix)]
        bins = [b for b in bins if b not in ("all", "hist", "pvalue")]
        curves = [Curve(f"{prefix}all", "all jets")]
        curves += [Curve(f"{prefix}{b}", b, VAL) for b in bins]
        curves.append(Curve(f"{prefix}hist", "sum over pT bins (reference)", REF))
        figs.append(HistoryFigure(f"ks_{name}.png", f"K-S data vs MC, {name} score", tuple(curves[:MAX_CURVES])))
    figs.append(HistoryFigure("total_loss.png", "classifier objective CE − λ·BCE",
                              (Curve("original_loss", "train"), Curve("val_loss", "validation", VAL))))  # fmt: skip
    return figs


class _LinesFigure:
    """A figure with a pool of lines whose data, labels and styles are replaced for each file."""

    def __init__(self) -> None:
        from matplotlib.figure import Figure

        apply_style()
        self.fig = Figure(figsize=(8, 6))
        self.ax = ax = self.fig.subplots()
        self.fig.subplots_adjust(left=0.13, right=0.97, top=0.97, bottom=0.12)
        self.lines = [ax.plot([], [], marker="o", ms=3, lw=1.5)[0] for _ in range(MAX_CURVES)]
        self.chance = ax.axhline(math.log(2), color="grey", lw=1, ls=":")
        ax.set_xlabel("epoch")
        self.text = label_text(ax)

    def draw(self, path: Path, spec: HistoryFigure, history: Mapping[str, Sequence[float]], dpi: int) -> Path | None:
        from matplotlib.ticker import MaxNLocator

        used: list[Any] = []  # matplotlib Line2D
        labels: list[str] = []
        ys: list[np.ndarray] = []
        for line, curve in zip(self.lines, spec.curves, strict=False):
            if curve.key not in history or len(history[curve.key]) == 0:
                continue
            y = np.asarray(history[curve.key], dtype=np.float64)
            line.set_data(np.arange(len(y)), y)
            line.set_linestyle(curve.linestyle)
            line.set_color(f"C{len(used)}")
            used.append(line)
            labels.append(curve.label)
            ys.append(y)
        if not used:
            return None
        for line in self.lines:
            line.set_visible(line in used)
        chance = _chance_level(spec.chance, history)
        self.chance.set_visible(chance is not None)
        if chance is not None:
            self.chance.set_ydata([chance, chance])
            used.append(self.chance)
            labels.append("chance level" if spec.chance == "bce" else "0.5")
            ys.append(np.array([chance]))
        allv = np.concatenate(ys)
        allv = allv[np.isfinite(allv)]
        lo, hi = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
        pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
        self.ax.set_ylim(lo - pad, hi + 0.5 * (hi - lo + 2 * pad))  # headroom for the label and legend
        n = max(len(y) for y in ys)
        self.ax.set_xlim(-0.5, max(n - 0.5, 1.5))  # ≥ two integer ticks, or the locator falls back to fractions
        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax.set_ylabel(spec.ylabel)
        leg = self.ax.get_legend()
        if leg is not None:
            leg.remove()
        self.ax.legend(used, labels, loc="upper right", frameon=False, fontsize="small")
        return save(self.fig, path, dpi)


def _chance_level(kind: str | None, history: Mapping[str, Sequence[float | None]]) -> float | None:
    if kind == "acc":
        return 0.5
    if kind != "bce":
        return None
    vals = [v for v in history.get("val_adv_loss_chance", []) if v is not None and math.isfinite(v)]
    return float(vals[-1]) if vals else math.log(2)


_FIG: list[_LinesFigure] = []


def plot_history(history: Mapping[str, Sequence[float]], out_dir: str | Path, *, dpi: int = 80) -> list[Path]:
    """Write the history figures (table in the module doc) into ``out_dir``; returns the written paths."""
    if not _FIG:
        _FIG.append(_LinesFigure())
    out = Path(out_dir)
    written: list[Path] = []
    try:
        for spec in history_figures(history):
            p = _FIG[0].draw(out / spec.filename, spec, history, dpi)
            if p is not None:
                written.append(p)
    except Exception:
        _FIG.clear()  # never reuse a half-updated figure
        raise
    return written


def history_plot_names(history: Mapping[str, Sequence[float]]) -> list[str]:
    """File names :func:`plot_history` writes for ``history`` (figures with at least one recorded curve)."""
    return [
        s.filename for s in history_figures(history) if any(c.key in history and len(history[c.key]) for c in s.curves)
    ]


__all__: list[Any] = ["HistoryFigure", "history_figures", "history_plot_names", "plot_history"]
