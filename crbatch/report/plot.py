"""``crbatch plot``: compare training datasets or shard sets in a data report (config and page layout;
computing in crbatch.report.plot_data, figures in crbatch.report.plot_figures).

For every network input variable (jet kinematics and counts; each cluster, track and muon-segment
feature for slot 0 and for all valid slots) the report has one figure of per-class histograms with
all inputs overlaid (colour = class, line style = input) and, where an input holds control-region
jets (QCD MC and collision data), one data-vs-MC figure with a ratio panel and the weighted K-S
statistic of each input.

Memory stays bounded on big inputs: jets are read in contiguous blocks of ``chunk_jets``; at most
``max_jets`` per input are histogrammed (blocks spread evenly over the input, so a file sorted by
class or mass point is still sampled everywhere); at most about ``ks_max_jets`` jets per class are
kept for the K-S statistic. Binning is shared by all inputs and classes: ranges come from robust
quantiles of a sample of the first input.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from .. import __version__, schema
from ..config import StageConfig
from ..errors import ConfigError, InputEmpty, Transient
from ..progress import Progress
from .page import ReportPage
from .plot_data import (  # noqa: F401  (the data report's public names, also importable from here)
    _NAME_RE,
    CLASSES,
    H5_SUFFIXES,
    LEGACY_SCALING,
    N_CLASSES,
    Block,
    Hist,
    InputSet,
    KSRow,
    Variable,
    all_variables,
    binning,
    choose_edges,
    count_classes,
    fill,
    iter_blocks,
    ks_rows,
    parse_input,
    plan_blocks,
    resolve_input,
    select_variables,
)
from .plot_figures import class_figure, datamc_figure
from .style import CLASS_NAMES

log = logging.getLogger(__name__)


class PlotConfig(StageConfig):
    """Data report: per-class and data-vs-MC histograms of every input variable."""

    inputs: list[str] = Field(
        default_factory=list, description="inputs as [NAME=]PATH: an HDF5 file, a directory of them, or a wildcard"
    )
    output_dir: Path = Field(Path("reports"), description="reports are written to OUTPUT_DIR/NAME/")
    name: str | None = Field(None, description="report name (default: the input names joined by _vs_)")
    bins: int = Field(
        50, ge=2, le=1000, description="bins per histogram (integer-valued variables get one bin per value)"
    )
    max_jets: int = Field(1_000_000, gt=0, description="jets histogrammed per input, in blocks spread over the input")
    chunk_jets: int = Field(50_000, gt=0, description="jets read at once (memory grows with this)")
    range_jets: int = Field(50_000, gt=0, description="jets of the first input sampled to choose histogram ranges")
    range_quantiles: tuple[float, float] = Field(
        (0.5, 99.5), description="histogram range: these percentiles of the first input's values"
    )
    ks_max_jets: int = Field(20_000, gt=0, description="jets per class and input kept for the K-S statistic")
    ks_top: int = Field(25, ge=0, description="rows of the K-S summary table (all go to ks_summary.csv)")
    weight: str | None = Field(
        "mcEventWeight", description="jets field used as weight (e.g. weight_balanced, weight_xs); 'none': unweighted"
    )
    density: bool = Field(True, description="normalise each histogram to unit sum (shapes); off: weighted counts")
    variables: list[str] = Field(
        default_factory=lambda: ["*"],
        description="variables to plot, as patterns: jet.pt, clusters.pt.0 (slot 0), tracks.*.all, msegs.*",
    )
    seed: int = Field(20190101, description="random seed of the K-S subsampling (reruns give the same report)")
    dpi: int = Field(100, ge=30, le=600, description="resolution of the PNG figures")

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: str | None) -> str | None:
        return None if v is None or v.strip().lower() in ("", "none", "null") else v.strip()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError(f"{v!r}: use letters, digits and _ . + - only, not starting with '.' (a directory name)")
        return v

    @model_validator(mode="after")
    def _quantiles(self) -> PlotConfig:
        lo, hi = self.range_quantiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"range_quantiles {self.range_quantiles}: need 0 <= low < high <= 100")
        if not self.variables:
            raise ValueError("variables: give at least one pattern ('*' for all)")
        return self


# ---------------------------------------------------------------------------------------------
# The report


def run_report(cfg: PlotConfig) -> Path:
    """Build the report described by ``cfg``; returns its directory."""
    if not cfg.inputs:
        raise ConfigError("no inputs: give HDF5 files, directories or wildcards (NAME=PATH to set legend names)")
    variables = select_variables(cfg.variables)
    parsed = [parse_input(a, i) for i, a in enumerate(cfg.inputs)]
    dup = [n for n, k in Counter(n for n, _ in parsed).items() if k > 1]
    if dup:
        raise ConfigError(f"input name {dup[0]!r} used twice; give each input its own NAME=PATH")
    out = cfg.output_dir / _report_name(cfg, [n for n, _ in parsed])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a report directory; choose another --name or --output-dir")
    inputs = [resolve_input(n, p) for n, p in parsed]
    for inp in inputs:
        count_classes(inp, cfg.weight, cfg.chunk_jets)
        log.info("%s: %d file(s), %d jets (%s)", inp.name, len(inp.files), inp.total, _class_text(inp.counts))
    if not any(inp.total for inp in inputs):
        raise InputEmpty("no jets in any input: nothing to plot")
    if len({s for inp in inputs for s in inp.scalings}) > 1:
        log.warning("comparing inputs of different scalings (%s): the binning and labels follow %s",
                    ", ".join(inp.scaled for inp in inputs), inputs[0].name)  # fmt: skip

    tables = sorted({v.table for v in variables} | {"jets"}, key=("jets", *schema.TABLES).index)

    edges = binning(inputs, variables, tables, cfg)
    hists, samples = fill(inputs, variables, tables, edges, cfg)
    ks = ks_rows(inputs, variables, samples)

    try:
        with ReportPage(out, f"Data report: {' vs '.join(inp.name for inp in inputs)}", dpi=cfg.dpi) as page:
            _write_tables(page, inputs, cfg, ks, edges)
            write_figures(page, inputs, variables, edges, hists, ks, cfg)
    except PermissionError as e:
        raise ConfigError(f"{out}: cannot write the report ({e.strerror}); choose another --output-dir") from e
    except OSError as e:  # disk full, network storage hiccup: worth a retry
        raise Transient(f"{out}: writing the report failed ({e.strerror or e}); nothing was left half-written") from e
    return out


def _report_name(cfg: PlotConfig, names: list[str]) -> str:
    if cfg.name:
        return cfg.name
    name = "_vs_".join(names)
    return name if len(name) <= 120 else f"{names[0]}_vs_{len(names) - 1}_more"  # keep directory names short


def _class_text(counts: Counter) -> str:
    return ", ".join(f"{CLASS_NAMES[c]} {counts[c]}" for c in CLASSES if counts[c]) or "empty"


def _write_tables(page: ReportPage, inputs: list[InputSet], cfg: PlotConfig, ks_rows: list[KSRow], edges) -> None:
    weight = cfg.weight or "none (unweighted)"
    page.text(
        f"Made by crbatch {__version__} on {time.strftime('%Y-%m-%d %H:%M')}. "
        f"Weights: `{weight}`; histograms {'normalised to unit sum' if cfg.density else 'in weighted counts'}; "
        f"{cfg.bins} bins over the {cfg.range_quantiles[0]:g}–{cfg.range_quantiles[1]:g}% quantiles of "
        f"`{inputs[0].name}` (entries outside are counted in the normalisation, not drawn); "
        f"at most {cfg.max_jets:,} jets per input. Weight variables are histogrammed unweighted."
    )
    page.section("Inputs")
    rows = []
    for inp in inputs:
        row: dict[str, Any] = {"name": inp.name, "path": inp.spec, "files": len(inp.files), "kind": inp.kinds}
        row["jets"] = inp.total
        for c in CLASSES:
            row[CLASS_NAMES[c]] = inp.counts[c]
        row["values"] = inp.scaled
        rows.append(row)
    page.table(rows)
    if any(sum(inp.counts.values()) != inp.total for inp in inputs):
        page.text("Some jets have a label outside 0–3 and are not shown.")

    page.section("Signal mass points")
    points = sorted({m for inp in inputs for m in inp.masses})
    if points:
        page.table(
            [
                {"mH [GeV]": mh, "mS [GeV]": ms} | {inp.name: inp.masses[(mh, ms)] for inp in inputs}
                for mh, ms in points
            ],
            formats={"mH [GeV]": "{:g}".format, "mS [GeV]": "{:g}".format},
        )
    else:
        page.text("No signal jets in the inputs.")

    page.section("Data vs MC (control region)")
    cr = [inp.name for inp in inputs if inp.has_cr]
    if not cr:
        page.text("No input holds both QCD MC and data jets, so there is no data-vs-MC comparison.")
        return
    page.text(
        f"Weighted two-sample Kolmogorov-Smirnov statistic between data and QCD MC (inputs: {', '.join(cr)}), "
        f"on up to {cfg.ks_max_jets:,} jets per class and input; largest first. p-values use the effective "
        "numbers of entries and are indicative only (values of one jet's objects are not independent)."
    )
    top = [
        {"variable": r.variable.key, "input": r.input, "K-S": r.ks, "p-value": r.pvalue, "MC entries": r.n_mc}
        | {"data entries": r.n_data}
        for r in ks_rows[: cfg.ks_top]
    ]
    page.table(top, formats={"K-S": "{:.4f}".format, "p-value": "{:.3g}".format})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variable", "input", "ks", "pvalue", "mc_entries", "data_entries"])
    for r in ks_rows:
        w.writerow([r.variable.key, r.input, repr(r.ks), repr(r.pvalue), r.n_mc, r.n_data])
    page.attach("ks_summary.csv", buf.getvalue(), text=f"All {len(ks_rows)} K-S values (CSV)")


# ---------------------------------------------------------------------------------------------
# Figures


def write_figures(page: ReportPage, inputs, variables, edges, hists, ks_rows: list[KSRow], cfg: PlotConfig) -> None:
    """Per variable: the per-class figure and, with control-region inputs, the data-vs-MC figure."""
    from . import style

    style.setup()
    ks = {(r.input, r.variable.key): r for r in ks_rows}
    scaling = inputs[0].scaling
    cr = [inp for inp in inputs if inp.has_cr]
    todo = [v for v in variables if v.key in edges]
    skipped = [v.key for v in variables if v.key not in edges and any(v.applies_to(i) for i in inputs)]
    prog = Progress(len(todo) * (1 + bool(cr)), "plot: figures", unit="figures")
    section = sub = None
    try:
        for v in todo:
            if v.section != section:
                section, sub = v.section, None
                page.section(section)
            if v.table != "jets":
                want = "leading slot" if v.slot == 0 else "all slots"
                if want != sub:
                    sub = want
                    page.section(f"{section}: {want}", level=3)
            label = v.axis_label(scaling)
            fig = class_figure(v, label, inputs, hists, cfg)
            page.figure(fig, f"{v.stem}_classes", caption=f"`{v.key}` per class")
            prog.update(1)
            cr_v = [inp for inp in cr if (inp.name, v.key) in hists and not v.is_weight]
            if cr_v:
                fig = datamc_figure(v, label, cr_v, hists, ks, cfg)
                texts = [f"{inp.name} {ks[(inp.name, v.key)].ks:.3f}" for inp in cr_v if (inp.name, v.key) in ks]
                page.figure(fig, f"{v.stem}_datamc", caption=f"`{v.key}` data vs MC; K-S: {', '.join(texts) or 'n/a'}")
                prog.update(1)
    finally:
        prog.close()
    if skipped:
        page.section("Not plotted")
        page.text("No entries in any input for: " + ", ".join(f"`{k}`" for k in skipped))
