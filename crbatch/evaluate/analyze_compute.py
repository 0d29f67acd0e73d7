"""Every number of the report, from the per-jet scores of a split (crbatch.evaluate.analyze_split)
into typed results (crbatch.evaluate.analyze_results): what ``metrics.json`` holds and the figures
and tables are drawn from.

For each model (the run's chosen epoch and each baseline, on the same jets):

* ROC curves signal vs QCD and vs BIB, all signal and per (mH, mS), on a fixed grid of signal
  efficiencies, with the Clopper–Pearson interval of every rejection;
* the rejection table: at each signal efficiency (``efficiencies``) the cut on p_signal, the reached
  signal efficiency, the background efficiency and the rejection, each with its interval;
* working points: the cut on p_signal keeping each ``efficiencies`` of ALL test signal jets; at each,
  the signal efficiency vs LLP decay position (``llp_Lxy`` for LLPs with |η| < ``barrel_eta``,
  ``|llp_Lz|`` beyond), vs jet pT and η, for all and per mass point; QCD and BIB rejection vs jet pT
  and η;
* S/√B scans, signal efficiency per (mS, mH), per-class output distributions, data vs MC on the
  control-region test split (K-S per output, all jets and per jet-pT bin), and — for the run's own
  model — train vs test output distributions per class with their K-S p-values (overtraining).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schema import Label
from ..stats import effective_n, ks_pvalue, ks_weighted
from . import metrics as M
from .analyze_results import (
    KS,
    Binned,
    Comparison,
    Histogram,
    Interval,
    MassPoint,
    ModelMetrics,
    ModelRef,
    PointEfficiency,
    Ratio,
    Roc,
    Scan,
    WorkingPointRow,
    point_label,
)
from .analyze_split import SplitScores
from .epoch import OUTPUTS

SIG, QCD, BIB, DATA = int(Label.SIGNAL), int(Label.QCD), int(Label.BIB), int(Label.DATA)
CLASS = {QCD: "QCD", SIG: "signal", BIB: "BIB", DATA: "data"}
BKGS = (QCD, BIB)
ROC_GRID = np.round(np.arange(0.01, 1.0 + 1e-9, 0.005), 6)
PT_BINS_GEV = (125.0, 250.0)  # jet-pT bins of the data/MC K-S (the training history's)
SCORE_BINS = 40


@dataclass(frozen=True)
class Settings:
    """The analysis options the numbers depend on (from AnalyzeConfig)."""

    efficiencies: tuple[float, ...] = M.DEFAULT_EFFICIENCIES
    map_efficiency: float = 0.5
    qcd_to_bib: bool = True
    barrel_eta: float = 1.4
    n_bins: int = 8
    lxy_bins: tuple[float, ...] | None = None
    lz_bins: tuple[float, ...] | None = None
    pt_bins: tuple[float, ...] | None = None
    eta_bins: tuple[float, ...] | None = None


# --- helpers -----------------------------------------------------------------------------------------


def _mp(p: tuple[float, float] | None) -> MassPoint | None:
    return None if p is None else MassPoint(mH=p[0], mS=p[1])


def _iv(e: float, lo: float, hi: float) -> Interval:
    return Interval(value=e, low=lo, high=hi)


def _nice(x: float, how: Any = round) -> float:
    """Round to two significant digits (bin edges people read); ``how``: round, math.floor or math.ceil."""
    if x == 0 or not math.isfinite(x):
        return 0.0
    k = math.floor(math.log10(abs(x))) - 1
    return float(how(x / 10**k) * 10**k)


def auto_edges(values: np.ndarray, n: int, given: Sequence[float] | None = None) -> np.ndarray | None:
    """``given`` edges, or about ``n`` equal-population bins of ``values`` with edges rounded to two
    digits (outer edges outward, so every value is inside); None when there is nothing to bin."""
    if given:
        return np.asarray(given, np.float64)
    v = values[np.isfinite(values)]
    if v.size < 2 or np.ptp(v) == 0:
        return None
    lo, hi = _nice(float(v.min()), math.floor), _nice(float(v.max()), math.ceil)
    if hi <= float(v.max()):
        hi = float(np.nextafter(hi, np.inf))
    inner = [_nice(float(x)) for x in np.quantile(v, np.linspace(0, 1, n + 1))[1:-1]]
    e = np.unique([lo, *[x for x in inner if lo < x < hi], hi])
    return e if e.size >= 2 else None


def score_edges(scores: Sequence[np.ndarray], n: int = SCORE_BINS) -> np.ndarray:
    """Bins uniform in logit(p) over the range the scores occupy (integer logit limits, |logit| ≤ 14):
    both ends of a softmax output are resolved, neither is squeezed into a bin or two."""
    p = np.concatenate([np.asarray(s, np.float64).ravel() for s in scores]) if scores else np.zeros(0)
    p = p[np.isfinite(p)]
    lo_l, hi_l = -7.0, 7.0
    if p.size:
        eps = 1e-6
        q = np.clip(np.quantile(p, [0.001, 0.999]), eps, 1 - eps)
        lo_l = float(np.floor(np.log(q[0] / (1 - q[0]))))
        hi_l = float(np.ceil(np.log(q[1] / (1 - q[1]))))
        lo_l, hi_l = max(lo_l, -14.0), min(hi_l, 14.0)
        if hi_l - lo_l < 2:
            lo_l, hi_l = lo_l - 1, hi_l + 1
    t = np.linspace(lo_l, hi_l, n + 1)
    return 1.0 / (1.0 + np.exp(-t))


def histogram(x: np.ndarray, w: np.ndarray, edges: np.ndarray, **labels: Any) -> Histogram:
    """Unit-normalised weighted histogram; values outside the edges go to the edge bins (counted, drawn)."""
    xc = np.clip(x.astype(np.float64), edges[0], edges[-1])
    h, _ = np.histogram(xc, edges, weights=w)
    h2, _ = np.histogram(xc, edges, weights=w * w)
    total = h.sum()
    val = h / total if total > 0 else np.zeros_like(h)
    err = np.sqrt(h2) / abs(total) if total > 0 else np.zeros_like(h)
    return Histogram(edges=edges.tolist(), value=val.tolist(), error=err.tolist(), jets=int(x.size), **labels)


def ks_row(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray, **labels: Any) -> KS | None:
    try:
        d = ks_weighted(a, b, wa, wb)
    except ValueError:
        return None
    p = ks_pvalue(d, effective_n(wa), effective_n(wb))
    return KS(ks=d, pvalue=p, n_a=int(a.size), n_b=int(b.size), **labels)


# --- one model ---------------------------------------------------------------------------------------


def _rocs(ts: SplitScores, p_sig: np.ndarray, points: list, s: Settings, out: ModelMetrics) -> None:
    lab, w = ts.label, ts.weight
    counts = ts.counts()
    sig = lab == SIG
    for p in [None, *points]:
        s_sel = sig if p is None else sig & (ts.jets["llp_mH"] == p[0]) & (ts.jets["llp_mS"] == p[1])
        for b in BKGS:
            try:
                roc = M.roc_curve(p_sig[s_sel], p_sig[lab == b], w[s_sel], w[lab == b])
            except M.EmptySample as e:
                if p is None and counts.get(b) and counts.get(SIG):
                    out.notes.append(f"ROC signal vs {CLASS[b]} ({point_label(_mp(p))}): {e}")
                continue
            _, rej, lo, hi = M.roc_on_grid(roc, ROC_GRID)
            out.rocs.append(Roc(background=CLASS[b], mass_point=_mp(p), auc=roc.auc, n_sig=roc.n_sig,
                                n_bkg=roc.n_bkg, eff=ROC_GRID.tolist(), rejection=rej.tolist(),
                                rejection_low=lo.tolist(), rejection_high=hi.tolist()))  # fmt: skip
            ws = w[s_sel]
            n_sig_eff = effective_n(ws)
            for wp in M.rejection_at(roc, s.efficiencies):
                _, slo, shi = M.binomial_interval(wp.efficiency * n_sig_eff, n_sig_eff)
                _, blo, bhi = M.binomial_interval(wp.fpr * roc.n_bkg_eff, roc.n_bkg_eff)
                r = M.rejection_interval(wp.fpr, float(blo[0]), float(bhi[0]))
                out.working_points.append(WorkingPointRow(
                    background=CLASS[b], mass_point=_mp(p), target=wp.target, cut=wp.threshold,
                    signal_eff=_iv(wp.efficiency, float(slo[0]), float(shi[0])),
                    background_eff=_iv(wp.fpr, float(blo[0]), float(bhi[0])), rejection=_iv(*r),
                    n_sig=roc.n_sig, n_bkg=roc.n_bkg, auc=roc.auc))  # fmt: skip


def _binned(quantity: str, sample: str, variable: str, region: str, p: Any, wp: float, cut: float,
            be: M.BinnedEfficiency) -> Binned:  # fmt: skip
    value, low, high = be.eff, be.low, be.high
    if quantity == "rejection":
        trip = [M.rejection_interval(e, lo, hi) for e, lo, hi in zip(be.eff, be.low, be.high, strict=True)]
        value, low, high = (np.array([t[i] for t in trip]) for i in range(3))
    return Binned(quantity=quantity, sample=sample, variable=variable, region=region, mass_point=_mp(p), wp=wp,
                  cut=cut, edges=be.edges.tolist(), value=list(map(float, value)), low=list(map(float, low)),
                  high=list(map(float, high)), jets=be.jets.tolist())  # fmt: skip


@dataclass
class Binning:
    """Bin edges shared by every model of a run section (so their ratios are bin by bin)."""

    edges: dict[tuple[str, str], np.ndarray]
    scores: dict[str, np.ndarray]
    cr_scores: dict[str, np.ndarray]


def binning(ts: SplitScores, cr: SplitScores | None, s: Settings) -> Binning:
    """Edges from the jets (not the scores, except the score axes: over every model's scores)."""
    sig = ts.label == SIG
    j = ts.jets
    barrel = sig & (np.abs(j["llp_eta"]) < s.barrel_eta)
    endcap = sig & ~(np.abs(j["llp_eta"]) < s.barrel_eta)
    edges: dict[tuple[str, str], np.ndarray] = {}
    for key, vals, given in (
        (("llp_Lxy", "barrel"), j["llp_Lxy"][barrel], s.lxy_bins),
        (("llp_Lz", "endcap"), np.abs(j["llp_Lz"][endcap]), s.lz_bins),
        (("pt", "signal"), j["pt"][sig], s.pt_bins),
        (("pt", "background"), j["pt"][~sig], s.pt_bins),
    ):
        e = auto_edges(vals, s.n_bins, given)
        if e is not None:
            edges[key] = e
    eta = np.asarray(s.eta_bins or np.linspace(-2.5, 2.5, 11), np.float64)
    edges["eta", "signal"] = edges["eta", "background"] = eta
    sc = {o: score_edges([v[:, i] for v in ts.scores.values()]) for o, i in OUTPUTS}
    crs = {o: score_edges([v[:, i] for v in cr.scores.values()]) for o, i in OUTPUTS} if cr is not None else {}
    return Binning(edges, sc, crs)


def _vs(ts: SplitScores, p_sig: np.ndarray, points: list, s: Settings, bins: Binning, out: ModelMetrics) -> None:
    lab, w, j = ts.label, ts.weight, ts.jets
    sig = lab == SIG
    if not sig.any():
        return
    barrel = np.abs(j["llp_eta"]) < s.barrel_eta
    for wp in s.efficiencies:
        try:
            cut = M.threshold_for_efficiency(p_sig[sig], w[sig], wp)
        except M.EmptySample:
            continue
        out.wp_cuts[f"{wp:g}"] = cut
        passed = p_sig >= cut
        for p in [None, *points]:
            sel = sig if p is None else sig & (j["llp_mH"] == p[0]) & (j["llp_mS"] == p[1])
            for var, region, mask, values in (
                ("llp_Lxy", "barrel", sel & barrel, j["llp_Lxy"]),
                ("llp_Lz", "endcap", sel & ~barrel, np.abs(j["llp_Lz"])),
                ("pt", "all", sel, j["pt"]),
                ("eta", "all", sel, j["eta"]),
            ):
                e = bins.edges.get((var, region if var.startswith("llp") else "signal"))
                if e is None or not mask.any():
                    continue
                be = M.binned_efficiency(values[mask], passed[mask], e, w[mask])
                out.efficiency.append(_binned("efficiency", "signal", var, region, p, wp, cut, be))
        for b in BKGS:
            bsel = lab == b
            if not bsel.any():
                continue
            for var in ("pt", "eta"):
                e = bins.edges.get((var, "background"))
                if e is None:
                    continue
                be = M.binned_efficiency(j[var][bsel], passed[bsel], e, w[bsel])
                out.rejection.append(_binned("rejection", CLASS[b], var, "all", None, wp, cut, be))


def _scans(ts: SplitScores, p_sig: np.ndarray, points: list, s: Settings, out: ModelMetrics) -> None:
    lab, w = ts.label, ts.weight
    counts = ts.counts()
    if not counts.get(SIG):
        return
    totals = M.sb_totals(counts, s.qcd_to_bib)
    sig = lab == SIG

    def bkgs(which: Sequence[int]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        return {CLASS[b]: (p_sig[lab == b], w[lab == b], totals[b]) for b in which if counts.get(b)}

    found = []
    for label, which in (("all backgrounds", BKGS), ("QCD only", (QCD,)), ("BIB only", (BIB,))):
        if not bkgs(which):
            out.notes.append(f"S/√B ({label}): no such background jets, skipped")
            continue
        found.append(M.significance_scan((p_sig[sig], w[sig], totals[SIG]), bkgs(which), label=label))
    for mh in sorted({p[0] for p in points}):  # signal mH values only: no empty "mH=0" scan (reference bug 10)
        sel = sig & (ts.jets["llp_mH"] == mh)
        if bkgs(BKGS):
            found.append(M.significance_scan((p_sig[sel], w[sel], float(sel.sum())), bkgs(BKGS),
                                             label=f"mH = {mh:g} GeV"))  # fmt: skip
    for sc in found:
        out.scans.append(Scan(label=sc.label, max_sob=sc.max_sob, cut_at_max=sc.threshold_at_max, aus=sc.aus,
                              cuts=sc.thresholds.tolist(), sob=sc.sob.tolist()))  # fmt: skip


def _mass_map(ts: SplitScores, scores: np.ndarray, points: list, s: Settings, out: ModelMetrics) -> None:
    lab, w = ts.label, ts.weight
    sig = lab == SIG
    if not sig.any():
        return
    p_sig = scores[:, SIG]
    try:
        cut = M.threshold_for_efficiency(p_sig[sig], w[sig], s.map_efficiency)
    except M.EmptySample as e:
        out.notes.append(f"working point: {e}")
        return
    out.map_wp, out.map_cut = s.map_efficiency, cut
    argmax = np.argmax(scores, axis=1) == SIG
    for p in points:
        sel = sig & (ts.jets["llp_mH"] == p[0]) & (ts.jets["llp_mS"] == p[1])
        a = M.efficiency_interval(argmax[sel], w[sel])
        c = M.efficiency_interval(p_sig[sel] >= cut, w[sel])
        out.mass_efficiency.append(PointEfficiency(mass_point=_mp(p), jets=int(sel.sum()), argmax=_iv(*a), wp=_iv(*c)))


def _scores(ts: SplitScores, scores: np.ndarray, bins: Binning, out: ModelMetrics) -> None:
    for o, i in OUTPUTS:
        for c in (QCD, SIG, BIB):
            sel = ts.label == c
            if sel.any():
                out.scores.append(histogram(scores[sel, i], ts.weight[sel], bins.scores[o], output=o, sample=CLASS[c]))


def pt_selections(pt: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, mask): all jets and the jet-pT bins of the data/MC comparison (half-open, in GeV)."""
    e = PT_BINS_GEV
    out = [("all jets", np.ones(pt.shape, bool)), (f"pT < {e[0]:g} GeV", pt < e[0])]
    out += [(f"{a:g} ≤ pT < {b:g} GeV", (pt >= a) & (pt < b)) for a, b in itertools.pairwise(e)]
    out.append((f"pT ≥ {e[-1]:g} GeV", pt >= e[-1]))
    return out


def _data_mc(cr: SplitScores, scores: np.ndarray, bins: Binning, out: ModelMetrics) -> None:
    d = cr.label == DATA
    for label, sel in pt_selections(cr.jets["pt"]):
        for o, i in OUTPUTS:
            a, b = sel & d, sel & ~d
            if label == "all jets":
                for name, m in (("data", a), ("MC", b)):
                    if m.any():
                        out.data_mc.append(histogram(scores[m, i], cr.weight[m], bins.cr_scores[o], output=o,
                                                     sample=name, split="cr_test", selection=label))  # fmt: skip
            k = ks_row(scores[a, i], cr.weight[a], scores[b, i], cr.weight[b], output=o, sample="data vs MC",
                       selection=label) if a.any() and b.any() else None  # fmt: skip
            if k is not None:
                out.data_mc_ks.append(k)


def _overtraining(test: SplitScores, train: SplitScores, key: str, out: ModelMetrics) -> None:
    te, tr = test.scores[key], train.scores[key]
    for o, i in OUTPUTS:
        edges = score_edges([te[:, i], tr[:, i]])
        for c in (QCD, SIG, BIB):
            a, b = test.label == c, train.label == c
            if not (a.any() and b.any()):
                continue
            for split, sc, m, w in (("test", te, a, test.weight), ("train", tr, b, train.weight)):
                out.overtraining.append(histogram(sc[m, i], w[m], edges, output=o, sample=CLASS[c], split=split))
            k = ks_row(te[a, i], test.weight[a], tr[b, i], train.weight[b], output=o, sample=CLASS[c],
                       selection="train vs test")  # fmt: skip
            if k is not None:
                out.overtraining_ks.append(k)


def model_metrics(ref: ModelRef, ts: SplitScores, cr: SplitScores | None, train: SplitScores | None, s: Settings,
                  bins: Binning) -> ModelMetrics:  # fmt: skip
    """All numbers of one model; a missing class or an empty mass point gives a note, not a NaN."""
    scores = ts.scores[ref.key]
    out = ModelMetrics(model=ref, jets_digest=ts.digests.get(ref.key))
    counts = ts.counts()
    for c in (SIG, QCD, BIB):
        if not counts.get(c):
            out.notes.append(f"no {CLASS[c]} jets in the test split: every {CLASS[c]} curve and number is skipped")
    sig = ts.label == SIG
    points = M.mass_points(ts.jets["llp_mH"][sig], ts.jets["llp_mS"][sig]) if sig.any() else []
    p_sig = scores[:, SIG] if len(scores) else np.zeros(0)
    _rocs(ts, p_sig, points, s, out)
    _vs(ts, p_sig, points, s, bins, out)
    _scans(ts, p_sig, points, s, out)
    _mass_map(ts, scores, points, s, out)
    _scores(ts, scores, bins, out)
    if cr is not None and ref.key in cr.scores and len(cr):
        _data_mc(cr, cr.scores[ref.key], bins, out)
    if train is not None and ref.key in train.scores and len(train):
        _overtraining(ts, train, ref.key, out)
    return out


def compare(run: ModelMetrics, base: ModelMetrics) -> Comparison:
    """The run's AUCs and rejections against a baseline's, entry by entry."""

    def key(r: Any) -> tuple:
        mp = r.mass_point
        return (r.background, None if mp is None else (mp.mH, mp.mS))

    def ratio(a: float, b: float) -> float:
        if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
            return math.nan
        return a / b

    out = Comparison(baseline=base.model.key, same_jets=run.jets_digest == base.jets_digest)
    b_roc = {key(r): r for r in base.rocs}
    for r in run.rocs:
        o = b_roc.get(key(r))
        if o is not None:
            out.auc.append(Ratio(background=r.background, mass_point=r.mass_point, run=r.auc, baseline=o.auc,
                                 ratio=ratio(r.auc, o.auc)))  # fmt: skip
    b_wp = {(*key(r), r.target): r for r in base.working_points}
    for w in run.working_points:
        bw = b_wp.get((*key(w), w.target))
        if bw is not None:
            out.rejection.append(Ratio(background=w.background, mass_point=w.mass_point, target=w.target,
                                       run=w.rejection.value, baseline=bw.rejection.value,
                                       ratio=ratio(w.rejection.value, bw.rejection.value)))  # fmt: skip
    return out


def sample_counts(ts: SplitScores) -> tuple[dict[str, int], dict[str, float]]:
    counts = ts.counts()
    return ({CLASS[c]: n for c, n in sorted(counts.items())},
            {CLASS[c]: float(ts.weight[ts.label == c].sum()) for c in sorted(counts)})  # fmt: skip
