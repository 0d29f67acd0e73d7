"""``crbatch analyze``: best epochs of training runs, their test-split performance, one report.

For each run (``NAME/RUN`` or ``NAME/RUN/EPOCH``):

1. **Best epochs** from ``history.json`` by each of the reference's criteria (the 2 smallest of
   ``val_original_lossf``, ``val_original_adv_lossf``, ``val_adv_loss`` and the K-S sum
   ``ks_qcd_hist + ks_sig_hist + ks_bib_hist``) and by the combined score (:func:`combined_score`,
   docs/analysis.md). The chosen epoch is the best by ``criterion`` (default: combined), or the
   one given in the spec.
2. **Test evaluation** of the chosen epoch's ``epochs/NNN.keras`` on the run's TEST split
   (``main_test.h5``, ``cr_test.h5`` of the datasets it trained on; ``--data`` overrides), streamed
   through the reader: output distributions per class, ROC curves (signal vs QCD, signal vs BIB;
   all jets and per (mH, mS)), rejection at fixed signal efficiencies, S/√B scans, signal efficiency
   in the (mS, mH) plane, data vs MC with K-S on the control-region test split.
3. **Report** (crbatch.report.page): the above for every run, comparison plots across runs
   (losses, K-S, combined score vs epoch; ROC), each run's resolved config and a table of the
   parameters that differ between runs.

Numbers come from crbatch.evaluate.metrics (see its docstring for the conventions). Memory: the
test split's scores, labels, weights and masses (~30 bytes per jet), never the inputs.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .. import schema
from ..config import StageConfig
from ..errors import ConfigError, InputCorrupt, InputMissing, InputSchema
from ..schema import Label
from . import metrics as M
from .epoch import OUTPUTS, CRScores, jet_pt_window_from_attrs, ks_metrics, pt_bin_labels, pt_bin_names, scaled_pt_edges

log = logging.getLogger(__name__)

Criterion = Literal["combined", "val_loss", "adv_loss", "disc_loss", "ks_sum"]
WeightChoice = Literal["weight_balanced", "mcEventWeight", "weight_xs", "none"]


class AnalyzeConfig(StageConfig):
    """Best epochs, test-split performance and a report for one or more training runs."""

    runs: list[str] = Field(default_factory=list, description="NAME/RUN or NAME/RUN/EPOCH (negative: from the latest)")
    base: Path = Field(Path("training_results"), description="root of the run directories")
    data: Path | None = Field(None, description="directory with main_test.h5/cr_test.h5 (default: each run's datasets)")
    output_dir: Path = Field(Path("reports"), description="the report goes to <output_dir>/<name>/")
    name: str | None = Field(None, description="report name (default: the runs' model name, or 'analyze')")
    criterion: Criterion = Field("combined", description="criterion choosing each run's epoch (unless given)")
    n_best: int = Field(2, ge=1, description="epochs listed per criterion (the reference: 2)")
    weight: WeightChoice = Field(
        "weight_balanced", description="per-jet weight on the test split (the reference: weight_balanced)"
    )
    efficiencies: list[float] = Field(
        list(M.DEFAULT_EFFICIENCIES), description="signal efficiencies of the rejection table"
    )
    wp_efficiency: float = Field(
        0.5, gt=0, lt=1, description="working point of the efficiency map: the p_signal cut keeping this "
        "fraction of all test signal jets",
    )  # fmt: skip
    qcd_to_bib: bool = Field(True, description="S/√B: normalise QCD to the BIB jet count (the reference)")
    batch_size: int = Field(4096, ge=1, description="jets per prediction batch")
    max_jets: int | None = Field(None, ge=1, description="evaluate at most this many test jets per split")
    test: bool = Field(True, description="evaluate the chosen epochs on the test split (off: history only)")
    dpi: int = Field(90, ge=30, description="figure resolution")


# ------------------------------------------------------------------------------------------------
# Runs and best epochs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    name: str
    run: int
    epoch: int | None
    text: str


def parse_run_spec(text: str) -> RunSpec:
    """``NAME/RUN`` or ``NAME/RUN/EPOCH`` (RUN, EPOCH may be negative: counted from the latest)."""
    parts = text.strip("/").split("/")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        return RunSpec(parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None, text)
    except ValueError:
        raise ConfigError(f"{text!r}: expected NAME/RUN or NAME/RUN/EPOCH, e.g. default/0, default/-1/7") from None


@dataclass
class RunInfo:
    spec: RunSpec
    run_dir: Path
    config: dict[str, Any]  # the run's config.yaml
    history: dict[str, list[float]]
    saved_epochs: list[int]
    label: str = ""  # NAME/RUN with the run number resolved

    @property
    def n_epochs(self) -> int:
        return max((len(v) for v in self.history.values()), default=0)

    def series(self, key: str) -> np.ndarray:
        v = self.history.get(key)
        if v is None:
            return np.full(self.n_epochs, np.nan)
        a = np.array([np.nan if x is None else x for x in v], dtype=np.float64)
        return np.pad(a, (0, self.n_epochs - len(a)), constant_values=np.nan)


def load_run(spec: RunSpec, base: Path) -> RunInfo:
    """Read a run's config and history (crbatch.train.runs layout; the reference's history as fallback)."""
    from ..train import runs

    model_dir = base / spec.name
    run_dir = runs.find_run(model_dir, spec.run)
    if not run_dir.is_dir():
        raise InputMissing(f"{run_dir}: no such run (runs of {model_dir}: {runs.numeric_runs(model_dir) or 'none'})")
    hist_path = next((p for p in (run_dir / "history.json", run_dir / "keras" / "history_checkpoint.json")
                      if p.exists()), None)  # fmt: skip
    if hist_path is None:
        raise InputMissing(f"{run_dir}: no history.json (has the run finished an epoch?)")
    try:
        history = json.loads(hist_path.read_text())
    except (OSError, ValueError) as e:
        raise InputCorrupt(f"{hist_path}: unreadable ({e})") from e
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        raise InputSchema(f"{hist_path}: expected a mapping of metric names to per-epoch lists")
    config = runs.read_saved_config(run_dir) or {}
    if not config and (run_dir / "training_params.yaml").exists():  # a reference run
        import yaml

        with contextlib.suppress(Exception):
            config = yaml.safe_load((run_dir / "training_params.yaml").read_text()) or {}
    ep_dir = run_dir / "epochs"
    saved = sorted(int(p.stem) for p in ep_dir.glob("*.keras") if p.stem.isdigit()) if ep_dir.is_dir() else []
    return RunInfo(spec, run_dir, config, history, saved, f"{spec.name}/{int(run_dir.name)}")


@dataclass(frozen=True)
class CriterionSpec:
    key: str
    title: str
    history_keys: tuple[str, ...]  # summed


REFERENCE_CRITERIA: tuple[CriterionSpec, ...] = (
    CriterionSpec("val_loss", "Best NN loss", ("val_original_lossf",)),
    CriterionSpec("adv_loss", "Best adversary loss", ("val_original_adv_lossf",)),
    CriterionSpec("disc_loss", "Best discriminator loss", ("val_adv_loss",)),
    CriterionSpec("ks_sum", "Best K-S sum", ("ks_qcd_hist", "ks_sig_hist", "ks_bib_hist")),
)
# Weights of the combined score's rank terms (docs/analysis.md): classifier loss, data/MC K-S sum,
# and — half weight — how far the adversary's loss is from its chance level.
COMBINED_WEIGHTS = {"val_loss": 1.0, "ks_sum": 1.0, "adv_gap": 0.5}


def criterion_values(info: RunInfo, key: str) -> np.ndarray:
    """Per-epoch value of a criterion (NaN where a key is missing)."""
    if key == "combined":
        return combined_score(info)
    if key == "adv_gap":
        return adversary_gap(info)
    spec = next(c for c in REFERENCE_CRITERIA if c.key == key)
    return np.sum([info.series(k) for k in spec.history_keys], axis=0)


def adversary_gap(info: RunInfo) -> np.ndarray:
    """``|val_adv_loss − chance| / chance``: 0 when the adversary knows nothing about data vs MC.

    The chance level is the BCE of a constant guess (``val_adv_loss_chance``; ln 2 when absent).
    Below it the adversary separates data from MC (bad); above it the classifier makes it confidently
    wrong (the reference's unbounded objective, bug 7) — also not what the decorrelation wants.
    """
    loss = info.series("val_adv_loss")
    chance = info.series("val_adv_loss_chance")
    chance = np.where(np.isfinite(chance) & (chance > 0), chance, math.log(2))
    return np.abs(loss - chance) / chance


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties averaged; NaN ranks last."""
    from scipy.stats import rankdata

    v = np.where(np.isfinite(values), values, np.inf)
    return rankdata(v, method="average") - 1.0


def combined_score(info: RunInfo) -> np.ndarray:
    """The combined epoch score (smaller is better; 0 = best epoch on every term).

    ``C(e) = Σ_t w_t · rank_t(e) / (Σ_t w_t · (n − 1))`` over the terms ``val_loss`` (classifier
    CE on validation), ``ks_sum`` (data/MC K-S sum) with weight 1 and ``adv_gap``
    (:func:`adversary_gap`) with weight ½, ranks 0-based over the run's epochs. A term with no
    finite value in the run is left out. Ranks make terms on different scales comparable and are
    robust against a few wild epochs (e.g. epoch 0).
    """
    n = info.n_epochs
    if n == 0:
        return np.zeros(0)
    total = np.zeros(n)
    wsum = 0.0
    for key, w in COMBINED_WEIGHTS.items():
        v = criterion_values(info, key)
        if not np.isfinite(v).any():
            continue
        total += w * _ranks(v)
        wsum += w
    if wsum == 0 or n == 1:
        return np.zeros(n)
    return total / (wsum * (n - 1))


def best_epochs(info: RunInfo, n_best: int = 2) -> list[dict[str, Any]]:
    """Rows ``{criterion, rank, epoch, value}``: the ``n_best`` smallest epochs of every criterion."""
    rows = []
    for crit in (*REFERENCE_CRITERIA, CriterionSpec("combined", "Best combined score", ())):
        v = criterion_values(info, crit.key)
        finite = np.flatnonzero(np.isfinite(v))
        order = finite[np.argsort(v[finite], kind="stable")][:n_best]
        if not order.size:
            rows.append({"criterion": crit.title, "rank": None, "epoch": None, "value": None,
                         "note": f"no values ({' + '.join(crit.history_keys) or 'combined'} not recorded)"})  # fmt: skip
        for r, e in enumerate(order, 1):
            rows.append({"criterion": crit.title, "rank": r, "epoch": int(e), "value": float(v[e])})
    return rows


def choose_epoch(info: RunInfo, criterion: str) -> tuple[int | None, str]:
    """(epoch, why): the spec's epoch, else the best saved epoch by ``criterion``."""
    saved = info.saved_epochs
    if info.spec.epoch is not None:
        e = info.spec.epoch
        if e < 0:
            if -e > len(saved):
                raise InputMissing(f"{info.run_dir}: {len(saved)} saved epochs, cannot take epoch {e}")
            e = saved[e]
        if e not in saved:
            raise InputMissing(f"{info.run_dir}/epochs/{e:03d}.keras: epoch {e} not saved")
        return e, "given in the run spec"
    v = criterion_values(info, criterion)
    candidates = [e for e in saved if e < len(v) and np.isfinite(v[e])]
    if not candidates:
        if not saved:
            return None, "no saved epoch"
        return saved[-1], f"latest saved epoch ({criterion} not recorded)"
    best = min(
        candidates, key=lambda e: (v[e], criterion_values(info, "val_loss")[e] if criterion != "val_loss" else 0)
    )
    return best, f"best {criterion} ({v[best]:.4g})"


# ------------------------------------------------------------------------------------------------
# Test split
# ------------------------------------------------------------------------------------------------


@dataclass
class SplitScores:
    """Per-jet network outputs on a run's test split (main) and control-region test split (cr)."""

    scores: np.ndarray  # (N, 3) float32
    label: np.ndarray  # int8
    weight: np.ndarray  # float64
    mH: np.ndarray
    mS: np.ndarray
    cr: CRScores | None
    cr_pt_window: tuple[float, float] = (0.0, 500.0)
    paths: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[int, int]:
        labs, n = np.unique(self.label, return_counts=True)
        return {int(a): int(b) for a, b in zip(labs, n, strict=True)}


def split_paths(info: RunInfo, data: Path | None) -> tuple[Path, Path]:
    """(main_test.h5, cr_test.h5) of the datasets the run trained on (or of ``data``)."""
    if data is not None:
        return data / schema.dataset_filename("main", "test"), data / schema.dataset_filename("cr", "test")
    from ..train.config import TrainConfig

    try:
        cfg = TrainConfig.model_validate(info.config)
    except Exception as e:  # an old or foreign config: say what to do
        raise ConfigError(f"{info.run_dir}/config.yaml: cannot tell which datasets the run used ({e}); "
                          "give --data DIR") from e  # fmt: skip
    return cfg.dataset_path("main", "test"), cfg.dataset_path("cr", "test")


def _mass_flags(info: RunInfo) -> tuple[bool, bool]:
    return bool(info.config.get("mH_parametrization")), bool(info.config.get("mS_parametrization"))


class _MassDraw:
    """Mass hypotheses for a parametrised model: signal jets their truth, others a draw from the
    signal (mH, mS) distribution of the test split (seeded; the training validation does the same)."""

    def __init__(self, main_path: Path, flags: tuple[bool, bool], seed: int = 0):
        import h5py

        with h5py.File(main_path, "r") as f:
            j = f["jets"].fields(["label", "llp_mH", "llp_mS"])[:]
        sig = j[j["label"] == int(Label.SIGNAL)]
        if not len(sig):
            raise InputSchema(f"{main_path}: no signal jets to take mass hypotheses from (parametrised model)")
        self.points, counts = np.unique(np.stack([sig["llp_mH"], sig["llp_mS"]], 1), axis=0, return_counts=True)
        self.cdf = np.cumsum(counts) / counts.sum()
        self.flags = flags
        self.rng = np.random.default_rng(seed)

    def __call__(self, b: Mapping[str, np.ndarray], is_signal: np.ndarray) -> np.ndarray:
        n = len(is_signal)
        drawn = self.points[np.minimum(np.searchsorted(self.cdf, self.rng.random(n), side="right"), len(self.cdf) - 1)]
        mh = np.where(is_signal, b["llp_mH"], drawn[:, 0])
        ms = np.where(is_signal, b["llp_mS"], drawn[:, 1])
        cols = [c for c, on in zip((mh, ms), self.flags, strict=True) if on]
        return (np.stack(cols, 1) / 1000.0).astype(np.float32)


def _stream(model: Any, path: Path, *, batch_size: int, weight: str, max_jets: int | None,
            masses: _MassDraw | None) -> dict[str, np.ndarray]:  # fmt: skip
    """Scores of every jet of ``path`` (at most ``max_jets``), with label, weight, masses and scaled pT."""
    from ..build.reader import DatasetReader
    from ..progress import Progress
    from .epoch import predict
    from .score import with_masses

    column = "mcEventWeight" if weight == "none" else weight
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("scores", "label", "weight", "mH", "mS", "pt")}
    seen = 0
    with DatasetReader(path, batch_size=batch_size, shuffle=False, prefetch=1, weight=column,
                       jet_fields=["llp_mH", "llp_mS"]) as rd:  # fmt: skip
        bar = Progress(min(rd.n_jets, max_jets or rd.n_jets), f"test {path.name}", "jets")
        try:
            for b in rd:
                n = len(b["label"]) if max_jets is None else min(len(b["label"]), max_jets - seen)
                if n <= 0:
                    break
                b = {k: v[:n] for k, v in b.items()}
                xs = [np.asarray(b[name], np.float32) for name in schema.INPUT_NAMES]
                if masses is not None:
                    xs = with_masses(xs, masses(b, b["label"] == int(Label.SIGNAL)))
                parts["scores"].append(predict(model, xs).astype(np.float32))
                parts["label"].append(b["label"].astype(np.int8))
                w = np.ones(n) if weight == "none" else np.asarray(b["weight"], np.float64)
                parts["weight"].append(w)
                parts["mH"].append(b["llp_mH"])
                parts["mS"].append(b["llp_mS"])
                parts["pt"].append(b["jet"][:, 0].astype(np.float32))
                seen += n
                bar.update(n)
        finally:
            bar.close()
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def _dataset_attrs(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise InputMissing(f"{path}: {what} not found; give --data DIR (the output directory of `crbatch build`)")
    return schema.check_input(path, "dataset")


def evaluate_split(info: RunInfo, model: Any, cfg: AnalyzeConfig) -> SplitScores:
    """Stream the run's test splits through ``model``."""
    main_path, cr_path = split_paths(info, cfg.data)
    _dataset_attrs(main_path, "main test split")
    flags = _mass_flags(info)
    masses = _MassDraw(main_path, flags) if any(flags) else None
    m = _stream(model, main_path, batch_size=cfg.batch_size, weight=cfg.weight, max_jets=cfg.max_jets, masses=masses)
    paths = {"main": str(main_path)}
    cr = None
    window = (0.0, 500.0)
    if cr_path.exists():
        attrs = _dataset_attrs(cr_path, "control-region test split")
        window = jet_pt_window_from_attrs(attrs)
        cr_weight = str(info.config.get("cr_weight_column") or "weight_balanced")
        c = _stream(model, cr_path, batch_size=cfg.batch_size, weight=cr_weight, max_jets=cfg.max_jets, masses=masses)
        cr = CRScores(c["scores"], c["pt"], c["weight"].astype(np.float32), c["label"] == int(Label.DATA))
        paths["cr"] = str(cr_path)
    else:
        log.warning("%s: no control-region test split; the data-vs-MC section is skipped", cr_path)
    return SplitScores(m["scores"], m["label"], m["weight"], m["mH"], m["mS"], cr, window, paths)


# ------------------------------------------------------------------------------------------------
# Metrics of one test set
# ------------------------------------------------------------------------------------------------

SIG, QCD, BIB = int(Label.SIGNAL), int(Label.QCD), int(Label.BIB)
BKG_NAMES = {QCD: "QCD", BIB: "BIB"}
AllPoints = tuple[float, float] | None  # None: all signal mass points together
PT_BINS = (125.0, 250.0)  # GeV: the per-bin K-S of the training history (crbatch.evaluate.epoch)


def point_label(p: AllPoints) -> str:
    return "all mass points" if p is None else f"mH={p[0]:g}, mS={p[1]:g}"


def point_slug(p: AllPoints) -> str:
    return "all" if p is None else f"mH{p[0]:g}_mS{p[1]:g}"


@dataclass
class Evaluation:
    counts: dict[int, int]
    sumw: dict[int, float]
    points: list[tuple[float, float]]
    rocs: dict[tuple[int, AllPoints], M.RocCurve]
    notes: list[str]
    wp_rows: list[dict[str, Any]]
    scans: list[M.SignificanceScan]
    mh_scans: list[M.SignificanceScan]
    eff_argmax: list[M.PointEfficiency]
    eff_wp: list[M.PointEfficiency]
    wp_threshold: float
    ks: dict[str, float]


def compute_metrics(ts: SplitScores, cfg: AnalyzeConfig) -> Evaluation:
    """All numbers of the report for one test set; missing classes and empty points give notes, not NaNs."""
    p_sig = ts.scores[:, SIG] if len(ts.scores) else np.zeros(0)
    lab, w = ts.label, ts.weight
    counts = ts.counts()
    sumw = {c: float(w[lab == c].sum()) for c in counts}
    notes: list[str] = []
    for c, name in ((SIG, "signal"), (QCD, "QCD"), (BIB, "BIB")):
        if not counts.get(c):
            notes.append(f"no {name} jets in the test split: every {name} curve and number is skipped")
    sig = lab == SIG
    points = M.mass_points(ts.mH[sig], ts.mS[sig]) if sig.any() else []
    rocs: dict[tuple[int, AllPoints], M.RocCurve] = {}
    rows: list[dict[str, Any]] = []
    for p in [None, *points]:
        s_sel = sig if p is None else sig & (ts.mH == p[0]) & (ts.mS == p[1])
        for b in (QCD, BIB):
            try:
                roc = M.roc_curve(p_sig[s_sel], p_sig[lab == b], w[s_sel], w[lab == b])
            except M.EmptySample as e:
                if p is None and counts.get(b) and counts.get(SIG):
                    notes.append(f"ROC signal vs {BKG_NAMES[b]} ({point_label(p)}): {e}")
                continue
            rocs[b, p] = roc
            row: dict[str, Any] = {"mass point": point_label(p), "background": BKG_NAMES[b], "signal jets": roc.n_sig,
                                   "AUC": roc.auc}  # fmt: skip
            for wp in M.rejection_at(roc, cfg.efficiencies):
                row[f"rej@{wp.target:g}"] = wp.rejection
            rows.append(row)

    totals = M.sb_totals(counts, cfg.qcd_to_bib)
    scans: list[M.SignificanceScan] = []
    mh_scans: list[M.SignificanceScan] = []

    def bkgs(which: Sequence[int]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        return {BKG_NAMES[b]: (p_sig[lab == b], w[lab == b], totals[b]) for b in which if counts.get(b)}

    if counts.get(SIG):
        for label, which in (("all backgrounds", (QCD, BIB)), ("QCD only", (QCD,)), ("BIB only", (BIB,))):
            if not bkgs(which):
                notes.append(f"S/√B ({label}): no such background jets, skipped")
                continue
            scans.append(M.significance_scan((p_sig[sig], w[sig], totals[SIG]), bkgs(which), label=label))
        for mh in sorted({p[0] for p in points}):  # signal mH values only: no empty "mH=0" scan (bug 10)
            sel = sig & (ts.mH == mh)
            if bkgs((QCD, BIB)):
                mh_scans.append(M.significance_scan((p_sig[sel], w[sel], float(sel.sum())), bkgs((QCD, BIB)),
                                                    label=f"mH={mh:g}"))  # fmt: skip
    eff_argmax: list[M.PointEfficiency] = []
    eff_wp: list[M.PointEfficiency] = []
    thr = math.nan
    if sig.any():
        is_argmax = np.argmax(ts.scores[sig], axis=1) == SIG
        eff_argmax = M.efficiency_per_point(ts.mH[sig], ts.mS[sig], is_argmax, w[sig])
        try:
            thr = M.threshold_for_efficiency(p_sig[sig], w[sig], cfg.wp_efficiency)
            eff_wp = M.efficiency_per_point(ts.mH[sig], ts.mS[sig], p_sig[sig] >= thr, w[sig])
        except M.EmptySample as e:
            notes.append(f"working point: {e}")
    ks: dict[str, float] = {}
    if ts.cr is not None and len(ts.cr.weight):
        ks = ks_metrics(ts.cr, scaled_pt_edges(PT_BINS, ts.cr_pt_window), pt_bin_names(PT_BINS))
    return Evaluation(counts, sumw, points, rocs, notes, rows, scans, mh_scans, eff_argmax, eff_wp, thr, ks)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def _figure(w: float = 8, h: float = 6) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    from .plots import apply_style

    apply_style()
    fig = Figure(figsize=(w, h))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.13, right=0.96, top=0.95, bottom=0.12)
    return fig, ax


def _atlas(ax: Any, text: str) -> None:
    from ..report.style import atlas_label

    atlas_label(ax)
    ax.text(0.04, 0.87, text, transform=ax.transAxes, va="top", fontsize="small", linespacing=1.4)


def _run_colors(n: int) -> list[str]:
    from ..report.style import input_color

    return [input_color(i) for i in range(n)]


def fig_history(infos: Sequence[RunInfo], chosen: Mapping[str, int | None], key: str, ylabel: str,
                train_key: str | None = None, chance: bool = False) -> Any:  # fmt: skip
    """One history quantity vs epoch for every run (validation solid, train dashed), chosen epoch starred."""
    fig, ax = _figure()
    plotted = False
    for info, color in zip(infos, _run_colors(len(infos)), strict=True):
        y = criterion_values(info, key) if key in ("combined", "ks_sum", "adv_gap") else info.series(key)
        x = np.arange(len(y))
        if np.isfinite(y).any():
            ax.plot(x, y, "-o", ms=3, color=color, label=f"{info.label}")
            plotted = True
        if train_key and np.isfinite(info.series(train_key)).any():
            ax.plot(x, info.series(train_key), "--", color=color, alpha=0.7, label=f"{info.label} (train)")
        if chance:  # the BCE of a constant guess: the adversary's "knows nothing" level
            c = info.series("val_adv_loss_chance")
            c = np.where(np.isfinite(c), c, math.log(2))
            ax.plot(x, c, ":", color=color, lw=1, label=f"{info.label} chance level")
        e = chosen.get(info.label)
        if e is not None and e < len(y) and np.isfinite(y[e]):
            ax.plot([e], [y[e]], "*", ms=14, color=color, markeredgecolor="k")
    ax.plot([], [], "*", ms=12, color="w", markeredgecolor="k", label="chosen epoch")
    if not plotted:
        ax.text(0.5, 0.5, f"{key}: not recorded", transform=ax.transAxes, ha="center")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.35 * (hi - lo))
    ax.legend(loc="upper right", frameon=False, fontsize="small")
    _atlas(ax, "validation (solid), training (dashed)")
    return fig


def fig_roc(curves: Sequence[tuple[str, M.RocCurve, str, str]], title: str) -> Any:
    """Background rejection vs signal efficiency; ``curves``: (label, roc, colour, linestyle)."""
    fig, ax = _figure()
    for label, roc, color, ls in curves:
        rej = roc.rejection()
        ok = np.isfinite(rej) & (roc.tpr > 0)
        ax.plot(roc.tpr[ok], rej[ok], color=color, ls=ls, lw=1.8, label=f"{label} (AUC {roc.auc:.3f})")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background rejection 1/ε$_B$")
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.8), hi * 30)
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _atlas(ax, title)
    return fig


def fig_scores(ts: SplitScores, o: int, oname: str, title: str) -> Any:
    """Distribution of one network output per true class, weighted, each class normalised to unit sum."""
    from ..report.style import CLASS_COLORS, CLASS_NAMES
    from .plots import OUTPUT_TITLES, normalised_hist

    fig, ax = _figure()
    edges = np.linspace(0.0, 1.0, 51)
    for c in (QCD, SIG, BIB):
        sel = ts.label == c
        if not sel.any():
            continue
        h, _ = normalised_hist(ts.scores[sel, o], ts.weight[sel], edges)
        kw = {"fill": True, "alpha": 0.4} if c == SIG else {"lw": 2}
        ax.stairs(h, edges, color=CLASS_COLORS[c], label=f"{CLASS_NAMES[c]} ({int(sel.sum())} jets)", **kw)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 30)
    ax.set_xlim(0, 1)
    ax.set_xlabel(OUTPUT_TITLES[oname])
    ax.set_ylabel("fraction of weighted jets")
    ax.legend(loc="upper right", frameon=False, fontsize="small")
    _atlas(ax, title)
    return fig


def fig_scans(scans: Sequence[M.SignificanceScan], title: str) -> Any:
    fig, ax = _figure()
    for i, s in enumerate(scans):
        x = 1.0 - s.thresholds
        ok = np.isfinite(s.sob) & (x > 0)
        ax.plot(
            x[ok], s.sob[ok], color=f"C{i}", label=f"{s.label}: max {s.max_sob:.3g} at cut {s.threshold_at_max:.4g}"
        )
    ax.set_xscale("log")
    ax.set_xlabel("1 − cut on p_signal")
    ax.set_ylabel("S/√B (test-split counts, see notes)")
    hi = ax.get_ylim()[1]
    ax.set_ylim(0, max(hi, 1e-3) * 1.4)
    ax.legend(loc="upper right", frameon=False, fontsize="x-small")
    _atlas(ax, title)
    return fig


def fig_eff_map(effs: Sequence[M.PointEfficiency], title: str) -> Any:
    """Signal efficiency per (mS, mH) point: coloured markers with the value written on them."""
    fig, ax = _figure(8, 6.5)
    ms = np.array([e.mS for e in effs])
    mh = np.array([e.mH for e in effs])
    ev = np.array([e.efficiency for e in effs])
    sc = ax.scatter(ms, mh, c=ev, cmap="viridis", vmin=0, vmax=1, s=900, marker="s", edgecolors="k")
    for e in effs:
        txt = "n/a" if not math.isfinite(e.efficiency) else f"{e.efficiency:.2f}"
        ax.annotate(txt, (e.mS, e.mH), ha="center", va="center", fontsize=8,
                    color="w" if (math.isfinite(e.efficiency) and e.efficiency < 0.6) else "k")  # fmt: skip
    fig.colorbar(sc, ax=ax, label="signal efficiency")
    for axis, v in (("x", ms), ("y", mh)):
        if len(v) and v.min() > 0 and v.max() / v.min() > 20:
            getattr(ax, f"set_{axis}scale")("log")
    pad = lambda v: (v.min() * 0.6, v.max() * 1.5) if len(v) else (0, 1)  # noqa: E731
    ax.set_xlim(*pad(ms))
    ax.set_ylim(*pad(mh))
    ax.set_xlabel("m_S [GeV]")
    ax.set_ylabel("m_H [GeV]")
    _atlas(ax, title)
    return fig


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _code(page: Any, text: str, lang: str = "yaml") -> None:
    """A preformatted block (ReportPage has no public one yet: its block list is extended directly)."""
    if hasattr(page, "code"):
        page.code(text, lang)
        return
    from ..report.page import _Block

    page._blocks.append(_Block(f"```{lang}\n{text.rstrip()}\n```\n", f"<pre><code>{html.escape(text)}</code></pre>"))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def parameter_tables(infos: Sequence[RunInfo]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(varying, common): config parameters that differ between runs (one column per run) and the rest."""
    flats = [_flat(i.config) for i in infos]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    varying, common = [], []
    for k in keys:
        vals = [f.get(k, "(absent)") for f in flats]
        if len({json.dumps(v, default=str) for v in vals}) > 1:
            varying.append({"parameter": k, **{i.label: _cell(v) for i, v in zip(infos, vals, strict=True)}})
        else:
            common.append({"parameter": k, "value": _cell(vals[0])})
    return varying, common


def _cell(v: Any) -> Any:
    return str(v) if isinstance(v, (bool, type(None))) or not isinstance(v, (int, float)) else v


def _num(v: Any) -> Any:
    """A table cell: NaN (undefined, e.g. an empty pT bin) becomes an empty cell."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _fmt_rej(v: Any) -> str:
    if v is None:
        return ""
    return "∞ (no background passes)" if v == math.inf else f"{v:.4g}"


@dataclass
class RunResult:
    info: RunInfo
    epoch: int | None
    why: str
    test: SplitScores | None = None
    ev: Evaluation | None = None


def _section_best(page: Any, r: RunResult, cfg: AnalyzeConfig) -> None:
    info = r.info
    page.section(f"{info.label}: best epochs", 3)
    page.text(f"Run directory `{info.run_dir}`; {info.n_epochs} epochs in the history, {len(info.saved_epochs)} "
              f"saved classifiers. Chosen epoch: **{r.epoch}** ({r.why}).")  # fmt: skip
    rows = best_epochs(info, cfg.n_best)
    ce, adv, disc, ks, comb = (
        criterion_values(info, k) for k in ("val_loss", "adv_loss", "disc_loss", "ks_sum", "combined")
    )
    for row in rows:
        e = row["epoch"]
        if e is not None:
            row.update({"val CE": ce[e], "val adv. BCE": adv[e], "discr. BCE": disc[e], "K-S sum": ks[e],
                        "combined": comb[e], "chosen": "★" if e == r.epoch else ""})  # fmt: skip
    page.table(rows)


def _section_test(page: Any, r: RunResult, cfg: AnalyzeConfig, tmp: Path) -> None:
    info, ts, ev = r.info, r.test, r.ev
    assert ts is not None and ev is not None
    slug = f"{info.spec.name}_{int(info.run_dir.name):05d}"
    title = f"{info.label}, epoch {r.epoch}, test split"
    page.section(f"{info.label}: test split, epoch {r.epoch}", 3)
    from ..report.style import CLASS_NAMES

    page.table([{"class": CLASS_NAMES[c], "jets": n, "Σ weights": ev.sumw.get(c, 0.0)} for c, n in sorted(ev.counts.items())],
               caption=f"Test jets ({ts.paths.get('main')}; weight `{cfg.weight}`).")  # fmt: skip
    if ev.notes:
        page.bullets(ev.notes)

    page.section(f"{info.label}: network outputs per class", 4)
    for oname, o in OUTPUTS:
        page.figure(fig_scores(ts, o, oname, title), f"{slug}_scores_{oname}", caption=f"{oname} output per true class")

    page.section(f"{info.label}: ROC curves", 4)
    from ..report.style import CLASS_COLORS

    styles = {QCD: "-", BIB: "--"}
    overall = [(f"signal vs {BKG_NAMES[b]}", ev.rocs[b, None], CLASS_COLORS[b], styles[b])
               for b in (QCD, BIB) if (b, None) in ev.rocs]  # fmt: skip
    if overall:
        page.figure(fig_roc(overall, f"{title}\nall mass points"), f"{slug}_roc_all", caption="ROC, all mass points")
    for b in (QCD, BIB):
        per = [(point_label(p), ev.rocs[b, p], f"C{i % 10}", "-") for i, p in enumerate(ev.points) if (b, p) in ev.rocs]
        if per:
            page.figure(fig_roc(per, f"{title}\nsignal vs {BKG_NAMES[b]}"), f"{slug}_roc_{BKG_NAMES[b]}_per_point",
                        caption=f"ROC signal vs {BKG_NAMES[b]}, per mass point")  # fmt: skip
    for p in ev.points:  # one file per mass point (the reference overwrote a single file, bug 10)
        curves = [(f"vs {BKG_NAMES[b]}", ev.rocs[b, p], CLASS_COLORS[b], styles[b])
                  for b in (QCD, BIB) if (b, p) in ev.rocs]  # fmt: skip
        if curves:
            page.figure(fig_roc(curves, f"{title}\n{point_label(p)}"), f"{slug}_roc_{point_slug(p)}",
                        caption=f"ROC {point_label(p)}")  # fmt: skip
    rej_cols = [f"rej@{e:g}" for e in cfg.efficiencies]
    page.table(ev.wp_rows, columns=["mass point", "background", "signal jets", "AUC", *rej_cols],
               formats=dict.fromkeys(rej_cols, _fmt_rej),
               caption="Background rejection 1/ε_B at fixed signal efficiencies (first ROC point reaching the "
               "efficiency), per background and mass point.")  # fmt: skip

    page.section(f"{info.label}: S/√B", 4)
    if ev.scans:
        page.figure(fig_scans(ev.scans, title), f"{slug}_sob", caption="S/√B vs cut, by background")
    if ev.mh_scans:
        page.figure(fig_scans(ev.mh_scans, f"{title}\nper signal mH, all backgrounds"), f"{slug}_sob_per_mH",
                    caption="S/√B vs cut, per mH")  # fmt: skip
    rows = [{"scan": s.label, "max S/√B": _num(s.max_sob), "cut at max": _num(s.threshold_at_max), "AuS": _num(s.aus)}
            for s in [*ev.scans, *ev.mh_scans]]  # fmt: skip
    page.table(
        rows,
        caption="S = N_S·ε_S, B = Σ N_b·ε_b with weighted efficiencies; N = test jet counts"
        + (", QCD normalised to the BIB count" if cfg.qcd_to_bib else "")
        + "; scan stops where B ≤ 10.",
    )

    page.section(f"{info.label}: signal efficiency per (mS, mH)", 4)
    if ev.eff_argmax:
        page.figure(fig_eff_map(ev.eff_argmax, f"{title}\nargmax = signal"), f"{slug}_eff_argmax",
                    caption="fraction of signal jets whose largest output is the signal one")  # fmt: skip
    if ev.eff_wp:
        page.figure(fig_eff_map(ev.eff_wp, f"{title}\np_signal ≥ {ev.wp_threshold:.4g}"), f"{slug}_eff_wp",
                    caption=f"efficiency of the cut p_signal ≥ {ev.wp_threshold:.4g} "
                    f"({cfg.wp_efficiency:g} of all test signal)")  # fmt: skip
    wp = {(e.mH, e.mS): e for e in ev.eff_wp}
    page.table([{"mH": e.mH, "mS": e.mS, "jets": e.n, "ε argmax": _num(e.efficiency), "± (argmax)": _num(e.error),
                 "ε WP": _num(wp[e.mH, e.mS].efficiency) if (e.mH, e.mS) in wp else None}
                for e in ev.eff_argmax])  # fmt: skip

    page.section(f"{info.label}: data vs MC, control-region test split", 4)
    if ts.cr is None or not len(ts.cr.weight):
        page.text("No control-region test split: skipped.")
        return
    from .plots import plot_data_vs_mc

    for oname, _ in OUTPUTS:
        path = plot_data_vs_mc(tmp / f"{slug}_cr_{oname}.png", ts.cr, oname, ks=ev.ks.get(f"ks_{oname}_all", math.nan),
                               pvalue=ev.ks.get(f"ks_{oname}_pvalue", math.nan),
                               subtitle=f"CR test, {info.label} epoch {r.epoch}", dpi=cfg.dpi)  # fmt: skip
        page.image(path, f"{slug}_cr_{oname}", caption=f"data vs MC, {oname} output")
    names = pt_bin_names(PT_BINS)
    labels = [lab.replace("$p_T$", "pT") for lab in pt_bin_labels(PT_BINS)]
    ks = {k: _num(v) for k, v in ev.ks.items()}
    page.table([{"output": o, "K-S all": ks.get(f"ks_{o}_all"), "p-value": ks.get(f"ks_{o}_pvalue"),
                 **{lab: ks.get(f"ks_{o}_{n}") for n, lab in zip(names, labels, strict=True)},
                 "sum over pT bins": ks.get(f"ks_{o}_hist")} for o, _ in OUTPUTS],
               caption="Weighted K-S data vs MC; p-value from effective sample sizes (indicative); an empty "
               "pT bin is blank, not a crash.")  # fmt: skip


def write_report(results: Sequence[RunResult], cfg: AnalyzeConfig, out_dir: Path) -> Path:
    """The report of all runs into ``out_dir`` (atomic: crbatch.report.page)."""
    import yaml

    from ..report.page import ReportPage

    infos = [r.info for r in results]
    chosen = {r.info.label: r.epoch for r in results}
    title = "Training analysis: " + ", ".join(i.label for i in infos)
    with (
        tempfile.TemporaryDirectory(prefix="crbatch-analyze-") as tmpd,
        ReportPage(out_dir, title, dpi=cfg.dpi) as page,
    ):
        tmp = Path(tmpd)
        page.section("Runs")
        page.table([{"run": r.info.label, "directory": str(r.info.run_dir), "epochs": r.info.n_epochs,
                     "chosen epoch": r.epoch, "why": r.why,
                     "test jets": len(r.test.label) if r.test is not None else None}
                    for r in results])  # fmt: skip
        page.text(f"Epoch choice: `{cfg.criterion}`. The combined score is the weighted mean rank of the "
                  "validation classifier loss (1), the data/MC K-S sum (1) and the distance of the adversary "
                  "loss from its chance level (½), 0 = best; see docs/analysis.md. Small adversary losses mean "
                  "the adversary wins (data and MC are separable), so they are not rewarded.")  # fmt: skip

        page.section("Training history")
        for key, ylabel, train, chance in (
            ("val_original_lossf", "classifier loss (CE), validation", "original_lossf", False),
            ("val_adv_loss", "adversary loss (BCE), validation", "adv_loss", True),
            ("ks_sum", "K-S sum (QCD + signal + BIB, over pT bins)", None, False),
            ("ks_sig_all", "K-S data vs MC, signal output, all jets", None, False),
            ("combined", "combined score (0 = best)", None, False),
        ):  # fmt: skip
            page.figure(fig_history(infos, chosen, key, ylabel, train, chance), f"history_{key}", caption=ylabel)

        page.section("Best epochs")
        for r in results:
            _section_best(page, r, cfg)

        tested = [r for r in results if r.ev is not None]
        if len(tested) > 1:
            page.section("Test split: run comparison")
            for b in (QCD, BIB):
                curves = [(r.info.label + f" e{r.epoch}", r.ev.rocs[b, None], f"C{i % 10}", "-")
                          for i, r in enumerate(tested) if r.ev is not None and (b, None) in r.ev.rocs]  # fmt: skip
                if curves:
                    page.figure(fig_roc(curves, f"signal vs {BKG_NAMES[b]}, test split"), f"compare_roc_{BKG_NAMES[b]}",
                                caption=f"ROC signal vs {BKG_NAMES[b]}, all runs")  # fmt: skip
        if tested:
            page.section("Test split")
            for r in tested:
                _section_test(page, r, cfg, tmp)
        for r in results:
            if r.ev is None and cfg.test:
                page.text(f"{r.info.label}: not evaluated on the test split ({r.why}).")

        page.section("Configurations")
        varying, common = parameter_tables(infos)
        if len(infos) > 1:
            page.table(varying, caption="Parameters that differ between the runs.")
        page.table(common, caption="Parameters common to all runs.")
        for info in infos:
            page.section(f"{info.label}: config.yaml", 3)
            _code(page, yaml.safe_dump(info.config, sort_keys=False) if info.config else "(no config.yaml)\n")
    return out_dir


def analyze(cfg: AnalyzeConfig) -> Path:
    """Everything: load runs, choose epochs, evaluate, write the report; returns its directory."""
    from ..export.cli import load_keras

    if not cfg.runs:
        raise ConfigError("no runs: give NAME/RUN[/EPOCH], e.g. default/-1")
    if any(not 0 < e < 1 for e in cfg.efficiencies):
        raise ConfigError(f"efficiencies must lie in (0, 1): {cfg.efficiencies}")
    infos = [load_run(parse_run_spec(s), cfg.base) for s in cfg.runs]
    labels = [i.label for i in infos]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a run is given twice: {labels}")
    results = []
    for info in infos:
        epoch, why = choose_epoch(info, cfg.criterion)
        r = RunResult(info, epoch, why)
        if cfg.test and epoch is not None:
            model = load_keras(info.run_dir / "epochs" / f"{epoch:03d}.keras")
            log.info("%s: evaluating epoch %d (%s) on the test split", info.label, epoch, why)
            r.test = evaluate_split(info, model, cfg)
            r.ev = compute_metrics(r.test, cfg)
            del model
        results.append(r)
    names = {i.spec.name for i in infos}
    name = cfg.name or (names.pop() if len(names) == 1 else "analyze")
    out = write_report(results, cfg, cfg.output_dir / name)
    print(f"report: {out / 'report.md'}")
    return out
