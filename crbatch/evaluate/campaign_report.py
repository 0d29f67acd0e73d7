"""The campaign section of the analysis report: the selection and why, the option sets with their
spread over seeds, every run, the baselines, the trade-off plot and the ROC and history overlays.

Every number in a table is ``fmt(value)`` of a value in ``metrics.json``'s ``campaign`` (the tests
check it).
"""

from __future__ import annotations

from typing import Any

from . import campaign_figures as CF
from .analyze_results import MetricsDoc, Spread, fmt


def pm(s: Spread | None) -> str:
    """``mean ± std`` (one run: the mean alone)."""
    if s is None:
        return ""
    return fmt(s.mean) if s.n < 2 or s.std != s.std else f"{fmt(s.mean)} ± {fmt(s.std)}"


def section_campaign(page: Any, doc: MetricsDoc) -> None:
    res = doc.campaign
    assert res is not None
    eff = fmt(res.efficiency)
    page.section("Campaign: the runs compared")
    n_sets = len(res.option_sets)
    page.text(f"{len(res.runs)} runs in {n_sets} option set(s) (runs differing only in "
              f"{', '.join(res.group_over) or 'nothing'} are one option set; mean ± standard deviation over them). "
              f"Every run is its chosen epoch evaluated on the test split"
              + (" — the same test jets for all runs." if res.same_jets else
                 " — **not the same test jets for all runs** (different datasets): compare with care."))  # fmt: skip
    sel = next((r for r in res.runs if r.label == res.selected), None)
    if sel is not None:
        page.text(f"**Exported: {sel.label}, epoch {sel.epoch}** ({sel.option_set or 'its options'}). Why: {res.why}."
                  + ("" if res.ceiling_met else " **The K-S ceiling was not met by any candidate.**"))  # fmt: skip
    else:
        page.text(f"No run was selected: {res.why}.")
    ks_name = f"K-S({res.rule.get('ks_output', 'sig')})"
    rows = []
    for s in res.option_sets:
        rows.append({"option set": s.label, "runs": len(s.runs), f"QCD rej. @ ε_S={eff}": pm(s.rejection.get("QCD")),
                     f"BIB rej. @ ε_S={eff}": pm(s.rejection.get("BIB")), f"data/MC {ks_name}": pm(s.ks),
                     "AUC QCD": pm(s.auc.get("QCD")), "AUC BIB": pm(s.auc.get("BIB")),
                     "Pareto": "★" if s.pareto else "", "selected": "✔" if s.label == res.selected_set else ""})  # fmt: skip
    for b in res.baselines:
        rows.append({"option set": f"baseline: {b.label}", "runs": "",
                     f"QCD rej. @ ε_S={eff}": fmt(b.rejection["QCD"].value) if "QCD" in b.rejection else "",
                     f"BIB rej. @ ε_S={eff}": fmt(b.rejection["BIB"].value) if "BIB" in b.rejection else "",
                     f"data/MC {ks_name}": fmt(b.ks), "AUC QCD": fmt(b.auc.get("QCD")), "AUC BIB": fmt(b.auc.get("BIB")),
                     "Pareto": "", "selected": ""})  # fmt: skip
    page.table(rows, caption=f"Option sets: mean ± standard deviation over their runs (ddof 1); rejection 1/ε_B at "
               f"signal efficiency {eff}, all mass points; data/MC K-S distance on the control-region test split "
               "(smaller: better agreement); ★: on the Pareto front of the selection rule's rejection and the K-S.")  # fmt: skip
    rows = []
    for r in res.runs:
        row: dict[str, Any] = {"run": r.label, "option set": r.option_set,
                               "options": ", ".join(f"{k}={v}" for k, v in r.options.items()),
                               "epoch": f"{r.epoch}/{r.n_epochs}" if r.epoch is not None else f"—/{r.n_epochs}"}  # fmt: skip
        for bkg in ("QCD", "BIB"):
            iv = r.rejection.get(bkg)
            row[f"{bkg} rej."] = fmt(iv.value) if iv else ""
            row[f"{bkg} 68% CL"] = f"[{fmt(iv.low)}, {fmt(iv.high)}]" if iv else ""
        row.update({"AUC QCD": fmt(r.auc.get("QCD")), "AUC BIB": fmt(r.auc.get("BIB")), ks_name: fmt(r.ks),
                    "p-value": fmt(r.ks_pvalue), "in ceiling": fmt(r.passes), "selected": "✔" if r.label == res.selected
                    else ""})  # fmt: skip
        rows.append(row)
    page.table(rows, caption=f"Every run: chosen epoch / epochs trained, rejection at ε_S = {eff} (all mass points) "
               "with its 68.3 % Clopper–Pearson interval, AUC, data/MC K-S distance and p-value.")  # fmt: skip
    for bkg in ("QCD", "BIB"):
        if any(bkg in s.rejection for s in res.option_sets):
            page.figure(CF.fig_tradeoff(res, bkg), f"campaign_tradeoff_{bkg}",
                        caption=f"{bkg} rejection at ε_S = {eff} against data/MC agreement, per option set: the "
                        "trade-off the adversary weight λ controls. Small markers: single runs; large: the option set's "
                        "mean with its spread; filled: on the Pareto front.")  # fmt: skip
    shown, which = CF.roc_sections(doc.runs, res)
    for bkg in ("QCD", "BIB"):
        if shown and any(roc.background == bkg for s in shown for roc in s.main.rocs):  # type: ignore[union-attr]
            page.figure(CF.fig_roc_overlay(doc.runs, res, bkg), f"campaign_roc_{bkg}",
                        caption=f"ROC signal vs {bkg} of {which}, with the baselines (ratio to the first).")  # fmt: skip
    from . import analyze_figures as F

    runs = CF.history_sections(doc.runs, res)
    for key, ylabel, train, chance in (
        ("val_original_lossf", "Classifier loss (cross-entropy)", None, False),
        ("val_adv_loss", "Adversary loss (binary cross-entropy)", None, True),
        ("ks_sig_all", "K-S data vs MC, signal output", None, False),
    ):  # fmt: skip
        if any(key in r.history for r in runs):
            page.figure(F.fig_history(runs, key, ylabel, train, chance), f"campaign_history_{key}",
                        caption=f"{ylabel} of every run (validation set), chosen epochs starred.")  # fmt: skip
