"""Typed results of ``crbatch analyze``: the schema of ``metrics.json``.

Everything the report shows — every number of every table and the data behind every figure — is
in one :class:`MetricsDoc`, written by the analysis as ``metrics.json`` next to the report; the
figures and the page are drawn from it (crbatch.evaluate.analyze_figures, analyze_report), never
from the per-jet arrays. Campaign tools and CI regression checks read the same file:
:func:`read_metrics` validates it (``format``, ``format_version``) and gives the typed object back.

Conventions:

* classes are named ``QCD``, ``signal``, ``BIB``, ``data``; outputs ``qcd``, ``sig``, ``bib``;
* a mass point is ``{"mH": 125.0, "mS": 55.0}`` in GeV; ``null`` means all signal mass points;
* efficiencies and rejections carry a 68.3 % Clopper–Pearson interval (``low``, ``high``) from the
  effective numbers of jets (Kish, ``(Σw)²/Σw²``), :mod:`crbatch.evaluate.metrics`;
* infinities and NaN (a rejection with no background passing, an empty bin) are written as the
  strings ``"Infinity"``, ``"NaN"`` (standard JSON has no such numbers), read back as floats;
* arrays that draw curves (ROC points, histograms) are lists of floats.

Version 1. Add fields with defaults in a compatible change; bump :data:`FORMAT_VERSION` when a
reader written for the old layout would misread the new one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputCorrupt, InputMissing, InputSchema

FORMAT: Final = "crbatch-metrics"
FORMAT_VERSION = 1
FILENAME = "metrics.json"
CL = 0.682689492137  # ±1σ coverage of every interval

ClassName = Literal["QCD", "signal", "BIB", "data"]
Background = Literal["QCD", "BIB"]
OutputName = Literal["qcd", "sig", "bib"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class MassPoint(_Model):
    mH: float
    mS: float

    def label(self) -> str:
        return f"mH = {self.mH:g} GeV, mS = {self.mS:g} GeV"

    def slug(self) -> str:
        return f"mH{self.mH:g}_mS{self.mS:g}"


def point_label(p: MassPoint | None) -> str:
    return "all mass points" if p is None else p.label()


def point_slug(p: MassPoint | None) -> str:
    return "all" if p is None else p.slug()


class Interval(_Model):
    """A value and its 68.3 % interval."""

    value: float
    low: float
    high: float

    @classmethod
    def nan(cls) -> Interval:
        return cls(value=math.nan, low=math.nan, high=math.nan)


class ModelRef(_Model):
    """One evaluated model: the run's chosen epoch or a baseline."""

    key: str = Field(description="unique in the document, e.g. 'run:m/0@e4', 'baseline:1'")
    label: str = Field(description="legend text")
    role: Literal["run", "baseline"]
    kind: Literal["run", "keras", "onnx", "onnx-raw", "reference", "scored"]
    spec: str = Field(description="as given on the command line")
    path: str | None = None
    file_sha256: str | None = None
    model_hash: str | None = Field(None, description="frugally-deep weight hash (same for a .keras and its ONNX)")
    epoch: int | None = None
    preprocessing: str | None = Field(None, description="scaling the model was fed with (crbatch-v1, reference-exact)")
    preprocessing_origin: str | None = None


class Sample(_Model):
    """The test jets every model of a run section was evaluated on."""

    main: str
    cr: str | None = None
    weight: str
    jets: int
    cr_jets: int = 0
    jets_digest: str = Field(description="SHA-256 of (runNumber, eventNumber, jet_index) of the jets, in order")
    cr_digest: str | None = None
    counts: dict[str, int]
    sumw: dict[str, float]
    max_jets: int | None = None


class Roc(_Model):
    """Background rejection vs signal efficiency, on a fixed grid of signal efficiencies."""

    background: Background
    mass_point: MassPoint | None = None
    auc: float
    n_sig: int
    n_bkg: int
    eff: list[float] = Field(description="signal efficiency grid (the first ROC point reaching each value)")
    rejection: list[float]
    rejection_low: list[float]
    rejection_high: list[float]


class WorkingPointRow(_Model):
    """One row of the rejection table."""

    background: Background
    mass_point: MassPoint | None = None
    target: float = Field(description="signal efficiency asked for (of THIS sample's signal jets)")
    cut: float = Field(description="p_signal ≥ cut")
    signal_eff: Interval
    background_eff: Interval
    rejection: Interval
    n_sig: int
    n_bkg: int
    auc: float


class Binned(_Model):
    """An efficiency (signal) or a rejection (QCD, BIB) in bins of a jet or LLP quantity."""

    quantity: Literal["efficiency", "rejection"]
    sample: ClassName
    variable: str = Field(description="llp_Lxy, llp_Lz, pt, eta")
    region: Literal["barrel", "endcap", "all"] = "all"
    mass_point: MassPoint | None = None
    wp: float = Field(description="working point: inclusive signal efficiency of the cut")
    cut: float
    edges: list[float]
    value: list[float]
    low: list[float]
    high: list[float]
    jets: list[int]


class Histogram(_Model):
    """A unit-normalised weighted histogram with its statistical uncertainty."""

    output: OutputName
    sample: str = Field(description="a class, or 'MC' / 'data' for the control region")
    split: Literal["test", "train", "cr_test"] = "test"
    selection: str = "all jets"
    edges: list[float]
    value: list[float]
    error: list[float]
    jets: int


class KS(_Model):
    output: OutputName
    sample: str
    selection: str = "all jets"
    ks: float
    pvalue: float
    n_a: int
    n_b: int


class Scan(_Model):
    label: str
    max_sob: float
    cut_at_max: float
    aus: float
    cuts: list[float]
    sob: list[float]


class PointEfficiency(_Model):
    mass_point: MassPoint
    jets: int
    argmax: Interval = Field(description="fraction of the point's signal jets whose largest output is the signal one")
    wp: Interval = Field(description="efficiency of the common cut p_signal ≥ wp_cut")


class ModelMetrics(_Model):
    """Every number of one model on one run's test jets."""

    model: ModelRef
    jets_digest: str | None = Field(None, description="SHA-256 of the identifiers of the jets its scores belong to")
    notes: list[str] = []
    rocs: list[Roc] = []
    working_points: list[WorkingPointRow] = []
    wp_cuts: dict[str, float] = Field(default_factory=dict, description="inclusive signal efficiency → cut")
    efficiency: list[Binned] = []
    rejection: list[Binned] = []
    scans: list[Scan] = []
    mass_efficiency: list[PointEfficiency] = []
    map_wp: float | None = None
    map_cut: float | None = None
    scores: list[Histogram] = []
    data_mc: list[Histogram] = []
    data_mc_ks: list[KS] = []
    overtraining: list[Histogram] = []
    overtraining_ks: list[KS] = []


class Ratio(_Model):
    background: Background
    mass_point: MassPoint | None = None
    target: float | None = None
    run: float
    baseline: float
    ratio: float


class Comparison(_Model):
    """The run's chosen epoch against one baseline, on the same jets."""

    baseline: str = Field(description="the baseline's ModelRef.key")
    same_jets: bool
    auc: list[Ratio] = []
    rejection: list[Ratio] = []


class BestRow(_Model):
    criterion: str
    rank: int | None = None
    epoch: int | None = None
    value: float | None = None
    note: str | None = None
    val_ce: float | None = None
    val_adv_bce: float | None = None
    disc_bce: float | None = None
    ks_sum: float | None = None
    combined: float | None = None
    chosen: bool = False


class ChoiceInfo(_Model):
    epoch: int | None
    why: str
    criterion: str


class ExportFile(_Model):
    kind: str
    name: str
    path: str
    sha256: str | None = None
    bytes: int | None = None


class ExportInfo(_Model):
    dir: str
    model_hash: str | None
    epoch: int | None
    files: list[ExportFile]
    parity: dict[str, Any]


class RunSection(_Model):
    """One analysed run: history, best epochs, the chosen epoch on the test split, baselines."""

    label: str
    run_dir: str
    n_epochs: int
    saved_epochs: list[int]
    choice: ChoiceInfo
    best: list[BestRow]
    history: dict[str, list[float]] = Field(default_factory=dict, description="per-epoch series the report draws")
    config: dict[str, Any] = Field(default_factory=dict)
    sample: Sample | None = None
    main: ModelMetrics | None = None
    baselines: list[ModelMetrics] = []
    comparisons: list[Comparison] = []
    export: ExportInfo | None = None
    not_evaluated: str | None = None


class Spread(_Model):
    """Mean and standard deviation (ddof 1; NaN for one run) of a number over the runs of an option set."""

    mean: float
    std: float
    n: int


class CampaignRun(_Model):
    """One run of a campaign: its options, chosen epoch and the numbers the comparison uses."""

    label: str = Field(description="NAME/RUN")
    options: dict[str, Any] = Field(description="the options that make the run differ (the scan point)")
    option_set: str = Field(description="label of its option set (the options without group_over)")
    epoch: int | None
    n_epochs: int
    auc: dict[str, float] = Field(default_factory=dict, description="background → AUC, all mass points")
    rejection: dict[str, Interval] = Field(
        default_factory=dict, description="background → rejection at the rule's signal efficiency, all mass points"
    )
    ks: float | None = Field(None, description="data/MC K-S distance of the rule's output, all CR jets")
    ks_pvalue: float | None = None
    passes: bool | None = Field(None, description="within the rule's K-S ceiling (None: no K-S)")


class OptionSet(_Model):
    """The runs of a campaign that differ only in ``group_over`` (seeds): the spread over them."""

    label: str
    options: dict[str, Any]
    runs: list[str]
    auc: dict[str, Spread] = Field(default_factory=dict)
    rejection: dict[str, Spread] = Field(default_factory=dict)
    ks: Spread | None = None
    pareto: bool = Field(False, description="on the Pareto front of (rejection of the rule's background, K-S)")


class CampaignPoint(_Model):
    """A baseline on the campaign's comparison (the first run's test jets)."""

    key: str
    label: str
    auc: dict[str, float] = Field(default_factory=dict)
    rejection: dict[str, Interval] = Field(default_factory=dict)
    ks: float | None = None


class CampaignResult(_Model):
    """All runs of one campaign compared, and the run its selection rule picked."""

    rule: dict[str, Any] = Field(description="the selection rule (crbatch.evaluate.campaign_config.SelectRule)")
    rule_text: str
    group_over: list[str]
    efficiency: float
    runs: list[CampaignRun]
    option_sets: list[OptionSet]
    baselines: list[CampaignPoint] = []
    same_jets: bool = Field(description="every run was evaluated on the same test jets (one jets digest)")
    selected: str | None = Field(description="label of the run that is exported (None: no run was evaluated)")
    selected_set: str | None = None
    ceiling_met: bool = True
    why: str


class MetricsDoc(_Model):
    format: Literal["crbatch-metrics"] = FORMAT
    format_version: int = FORMAT_VERSION
    crbatch_version: str
    created: str
    title: str
    analysis: dict[str, Any] = Field(description="the resolved analysis config")
    runs: list[RunSection]
    campaign: CampaignResult | None = Field(None, description="several runs compared as one campaign")

    def run(self, label: str) -> RunSection:
        return next(r for r in self.runs if r.label == label)


def write_text(doc: MetricsDoc) -> str:
    return doc.model_dump_json(indent=1) + "\n"


def read_metrics(path: Path) -> MetricsDoc:
    """A metrics.json, validated (exit 10 missing, 11 unreadable, 12 another format or version)."""
    if not path.exists():
        raise InputMissing(f"{path}: no metrics.json; run `crbatch analyze` first")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputCorrupt(f"{path}: unreadable ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputSchema(f"{path}: not a crbatch metrics file")
    if raw.get("format_version") != FORMAT_VERSION:
        raise InputSchema(f"{path}: metrics format {raw.get('format_version')}, this crbatch reads {FORMAT_VERSION}")
    try:
        return MetricsDoc.model_validate_json(path.read_text())
    except ValidationError as e:
        raise InputSchema(
            f"{path}: does not match the metrics schema ({e.error_count()} errors: {e.errors()[0]})"
        ) from e


def fmt(v: Any) -> str:
    """The one number format of the report's tables (the tests compare it with metrics.json)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.4g}"
    return str(v)
