"""Plot style shared by the reports: Agg backend, mplhep's ATLAS style, one colour per class."""

from __future__ import annotations

import functools
import logging
import warnings

from ..schema import Label

CLASS_NAMES: dict[int, str] = {Label.QCD: "QCD", Label.SIGNAL: "signal", Label.BIB: "BIB", Label.DATA: "data"}
"""Display names of the labels (the reference's report headers mislabelled the digits)."""

CLASS_COLORS: dict[int, str] = {
    Label.QCD: "#1f77b4",
    Label.SIGNAL: "#d62728",
    Label.BIB: "#2ca02c",
    Label.DATA: "black",
}

# Inputs are told apart by line style in per-class plots (colour is the class) ...
INPUT_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
# ... and by colour in data-vs-MC plots (one colour per input, MC as line, data as markers).
INPUT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
INPUT_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def linestyle(i: int):
    return INPUT_LINESTYLES[i % len(INPUT_LINESTYLES)]


def input_color(i: int) -> str:
    return INPUT_COLORS[i % len(INPUT_COLORS)]


def marker(i: int) -> str:
    return INPUT_MARKERS[i % len(INPUT_MARKERS)]


@functools.cache
def setup() -> None:
    """Select the Agg backend (batch nodes have no display) and the ATLAS style, once per process."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # mathtext warns about glyphs the ATLAS fonts lack; harmless, and it would flood batch logs.
    logging.getLogger("matplotlib.mathtext").setLevel(logging.ERROR)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    try:
        import mplhep

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plt.style.use(mplhep.style.ATLAS)
    except ImportError:  # plots stay readable with matplotlib's defaults
        pass
    plt.rcParams.update(
        {
            "savefig.dpi": 100,
            "figure.max_open_warning": 0,
            "legend.fontsize": "small",
            # mathtext tick labels (the ATLAS style's choice) re-parse every label: 2-3x slower figures
            "axes.formatter.use_mathtext": False,
            # plain tick labels from 1e-4 to 1e7: an offset text like "1e5" collides with the right-aligned x label
            "axes.formatter.limits": (-4, 7),
        }
    )


def atlas_label(ax, text: str = "Internal") -> None:
    """'ATLAS Internal' in the top-left corner of ``ax``.

    Drawn with two plain texts: mplhep's label helpers measure text by rendering the canvas, which
    made every figure ~3x slower to produce.
    """
    ax.text(0.04, 0.95, "ATLAS", transform=ax.transAxes, va="top", ha="left", fontsize=14,
            fontweight="bold", fontstyle="italic")  # fmt: skip
    # offset in points ~ width of "ATLAS" at 14 pt bold italic
    ax.annotate(text, xy=(0.04, 0.95), xycoords="axes fraction", xytext=(52, 0), textcoords="offset points",
                va="top", ha="left", fontsize=14)  # fmt: skip


def experiment_label(ax, lines=(), *, data: bool = False, text: str = "Internal"):
    """mplhep's ATLAS label in the top-left corner — "ATLAS Simulation Internal" (``data=False``, MC-only
    figures) or "ATLAS Internal" — with √s = 13 TeV and ``lines`` below it. Returns the last text."""
    import mplhep

    setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = mplhep.atlas.label(ax=ax, loc=4, data=data, text=text, com=13)
    last = parts[2] or parts[1] or parts[0]
    body = "\n".join(s for s in lines if s)
    if body:
        last = mplhep.append_text(body, last, loc="below", ax=ax, fontsize="small")
    return last


MODEL_MARKERS = ("o", "s", "^", "D", "v", "P")
MODEL_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))
WP_COLORS = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59", "#e76300", "#b9ac70")
"""Petroff's 10-colour sequence (the one the CMS/ATLAS style guides recommend), one per working point."""
