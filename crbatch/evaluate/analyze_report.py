"""The page of the analysis report: lays out :class:`~crbatch.evaluate.analyze_results.MetricsDoc`'s
numbers (tables) and the figures drawn from them (crbatch.evaluate.analyze_figures), and writes
``metrics.json`` into the same report directory (crbatch.report.page: all of it appears atomically).

Every number in a table is ``fmt(value)`` of a value in metrics.json — the tests check it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import analyze_figures as F
from .analyze_results import (
    FILENAME,
    Binned,
    MetricsDoc,
    ModelMetrics,
    RunSection,
    fmt,
    point_label,
    point_slug,
    write_text,
)
from .analyze_runs import RunInfo, RunSpec, parameter_tables
from .epoch import OUTPUTS

PCT = "{:.0%}".format


def _fmts(columns: Sequence[str]) -> dict[str, Any]:
    return dict.fromkeys(columns, fmt)


def _models(sec: RunSection) -> list[tuple[F.Model, ModelMetrics]]:
    out = []
    if sec.main is not None:
        out.append((F.Model(sec.main.model.label, 0), sec.main))
    out += [(F.Model(b.model.label, i), b) for i, b in enumerate(sec.baselines, 1)]
    return out


def _ref(models: Sequence[tuple[F.Model, ModelMetrics]]) -> int | None:
    """Index of the ratio denominator: the first baseline ("what we run today")."""
    return 1 if len(models) > 1 else None


def _slug(sec: RunSection) -> str:
    name, run = sec.label.rsplit("/", 1)
    return f"{name}_{int(run):05d}"


def _title(sec: RunSection) -> str:
    return f"{sec.label}, epoch {sec.choice.epoch}, test split"


# --- sections --------------------------------------------------------------------------------------


def section_summary(page: Any, doc: MetricsDoc) -> None:
    page.section("Runs")
    page.table([{"run": r.label, "directory": r.run_dir, "epochs": r.n_epochs, "chosen epoch": r.choice.epoch,
                 "why": r.choice.why, "test jets": r.sample.jets if r.sample else None,
                 "baselines": ", ".join(b.model.label for b in r.baselines) or "—"} for r in doc.runs],
               formats=_fmts(["epochs", "test jets"]))  # fmt: skip
    page.text(f"Epoch choice: `{doc.analysis.get('criterion')}`. The combined score is the weighted mean rank of the "
              "validation classifier loss (1), the data/MC K-S sum (1) and the distance of the adversary loss from "
              "its chance level (½), 0 = best; see docs/analysis.md. Small adversary losses mean the adversary wins "
              "(data and MC are separable), so they are not rewarded. All numbers of this report are in "
              f"`{FILENAME}` (linked above; schema: crbatch.evaluate.analyze_results); uncertainties are 68.3 % "
              "Clopper–Pearson intervals from the effective numbers of jets.")  # fmt: skip


def section_export(page: Any, sec: RunSection) -> None:
    page.section(f"{sec.label}: the exported model", 3)
    if sec.export is None:
        page.text(f"Not exported by this analysis. `crbatch export {sec.label}/best` exports the chosen epoch "
                  f"({sec.choice.epoch}) from the choice this analysis records in `{sec.run_dir}/choice.json`.")  # fmt: skip
        return
    ex = sec.export
    page.text(f"Epoch **{ex.epoch}** (the chosen one: {sec.choice.why}), exported to `{ex.dir}`; frugally-deep "
              f"weight hash `{ex.model_hash}`.")  # fmt: skip
    page.table([{"file": f.name, "kind": f.kind, "bytes": f.bytes, "SHA-256": f.sha256} for f in ex.files],
               formats=_fmts(["bytes"]))  # fmt: skip
    par = {k: v for k, v in ex.parity.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    page.table([{"check": k, "value": v} for k, v in par.items()], formats=_fmts(["value"]),
               caption="Parity of the exports with Keras before they were written (absolute score differences).")  # fmt: skip


def verdict(run: Any, base: Any) -> str:
    """ "better" / "worse" when the 68.3 % intervals of two rejections do not overlap, else "compatible"."""
    if run.rejection.low > base.rejection.high:
        return "better"
    if run.rejection.high < base.rejection.low:
        return "worse"
    return "compatible"


def section_comparison(page: Any, sec: RunSection, headline: float) -> None:
    """Run vs each baseline: the question the report answers first."""
    if not sec.comparisons:
        return
    assert sec.main is not None and sec.sample is not None  # an evaluated run (write_report checks)
    page.section(f"{sec.label}: compared with the baseline", 3)
    by_key = {b.model.key: b for b in sec.baselines}
    wp_of = lambda m: {(r.background, r.mass_point is None, r.target): r for r in m.working_points}  # noqa: E731
    run_wp = wp_of(sec.main)
    for c in sec.comparisons:
        base = by_key[c.baseline]
        bwp = wp_of(base)
        said = []
        for bkg in ("QCD", "BIB"):
            r, o = run_wp.get((bkg, True, headline)), bwp.get((bkg, True, headline))
            if r is not None and o is not None:
                said.append(f"{bkg} rejection {fmt(r.rejection.value)} [{fmt(r.rejection.low)}, "
                            f"{fmt(r.rejection.high)}] vs {fmt(o.rejection.value)} [{fmt(o.rejection.low)}, "
                            f"{fmt(o.rejection.high)}]: **{verdict(r, o)}**")  # fmt: skip
        page.text(f"**{sec.main.model.label}** vs **{base.model.label}** on the same {sec.sample.jets:,} test jets "
                  f"(same jets: {fmt(c.same_jets)}). At ε_S = {PCT(headline)}, all mass points: "
                  + ("; ".join(said) or "no common working point") + " (68.3 % intervals; better/worse: they do not "
                  "overlap). Ratio > 1: the run is better.")  # fmt: skip
        auc: dict[str, dict[str, Any]] = {}
        for r in c.auc:
            row = auc.setdefault(point_label(r.mass_point), {"mass point": point_label(r.mass_point)})
            row.update({f"AUC {r.background} run": r.run, f"AUC {r.background} baseline": r.baseline,
                        f"AUC {r.background} ratio": r.ratio})  # fmt: skip
        cols = ["mass point"] + [f"AUC {b} {w}" for b in ("QCD", "BIB") for w in ("run", "baseline", "ratio")]
        page.table(list(auc.values()), columns=cols, formats=_fmts(cols[1:]))
        rej: dict[tuple, dict[str, Any]] = {}
        for r in c.rejection:
            key = (point_label(r.mass_point), r.target)
            row = rej.setdefault(key, {"mass point": key[0], "ε_S": PCT(r.target)})
            row.update({f"{r.background} rej. run": r.run, f"{r.background} rej. baseline": r.baseline,
                        f"{r.background} ratio": r.ratio})  # fmt: skip
        cols = ["mass point", "ε_S"] + [f"{b} {w}" for b in ("QCD", "BIB") for w in ("rej. run", "rej. baseline",
                                                                                   "ratio")]  # fmt: skip
        page.table(list(rej.values()), columns=cols, formats=_fmts(cols[2:]),
                   caption="Background rejection 1/ε_B at the signal efficiencies of the rejection table (uncertainties "
                   "in the rejection table below).")  # fmt: skip


def section_history(page: Any, doc: MetricsDoc) -> None:
    page.section("Training history")
    for key, ylabel, train, chance in (
        ("val_original_lossf", "Classifier loss (cross-entropy)", "original_lossf", False),
        ("val_adv_loss", "Adversary loss (binary cross-entropy)", "adv_loss", True),
        ("ks_sum", "K-S sum, data vs MC (3 outputs × pT bins)", None, False),
        ("ks_sig_all", "K-S data vs MC, signal output", None, False),
        ("combined", "Combined score (0 = best)", None, False),
    ):  # fmt: skip
        if doc.campaign is not None and key in ("val_original_lossf", "val_adv_loss", "ks_sig_all"):
            continue  # drawn in the campaign section, labelled by the runs' options
        page.figure(F.fig_history(doc.runs, key, ylabel, train, chance), f"history_{key}", caption=ylabel)
    page.section("Best epochs")
    for sec in doc.runs:
        page.section(f"{sec.label}: best epochs", 3)
        page.text(f"Run directory `{sec.run_dir}`; {sec.n_epochs} epochs in the history, {len(sec.saved_epochs)} "
                  f"saved classifiers. Chosen epoch: **{sec.choice.epoch}** ({sec.choice.why}).")  # fmt: skip
        cols = ["criterion", "rank", "epoch", "value", "val CE", "val adv. BCE", "discr. BCE", "K-S sum", "combined",
                "chosen", "note"]  # fmt: skip
        page.table([{"criterion": r.criterion, "rank": r.rank, "epoch": r.epoch, "value": r.value, "val CE": r.val_ce,
                     "val adv. BCE": r.val_adv_bce, "discr. BCE": r.disc_bce, "K-S sum": r.ks_sum,
                     "combined": r.combined, "chosen": "★" if r.chosen else "", "note": r.note or ""}
                    for r in sec.best], columns=cols,
                   formats=_fmts(["rank", "epoch", "value", "val CE", "val adv. BCE", "discr. BCE", "K-S sum",
                                  "combined"]))  # fmt: skip


def _rejection_rows(m: ModelMetrics) -> list[dict[str, Any]]:
    return [{"model": m.model.label, "background": r.background, "mass point": point_label(r.mass_point),
             "AUC": r.auc, "ε_S target": PCT(r.target), "cut p_signal ≥": r.cut, "ε_S": r.signal_eff.value,
             "ε_S low": r.signal_eff.low, "ε_S high": r.signal_eff.high, "rejection": r.rejection.value,
             "rej. low": r.rejection.low, "rej. high": r.rejection.high, "signal jets": r.n_sig,
             "background jets": r.n_bkg} for r in m.working_points]  # fmt: skip


REJ_COLS = ["model", "background", "mass point", "AUC", "ε_S target", "cut p_signal ≥", "ε_S", "ε_S low", "ε_S high",
            "rejection", "rej. low", "rej. high", "signal jets", "background jets"]  # fmt: skip


def section_rocs(page: Any, sec: RunSection) -> None:
    models = _models(sec)
    main = sec.main
    assert main is not None  # the sections of the test split are drawn for evaluated runs only
    slug, title = _slug(sec), _title(sec)
    page.section(f"{sec.label}: ROC curves and rejection", 4)
    points = [None, *[e.mass_point for e in main.mass_efficiency]]
    for p in points:
        for bkg in ("QCD", "BIB"):
            curves = [(m, r) for m, mm in models for r in mm.rocs
                      if r.background == bkg and r.mass_point == p]  # fmt: skip
            if not curves:
                continue
            page.figure(F.fig_roc(curves, [title, F.mass_text(p), f"signal vs {bkg}"], _ref(models)),
                        f"{slug}_roc_{bkg}_{point_slug(p)}", caption=f"ROC signal vs {bkg}, {point_label(p)}")  # fmt: skip
    rows = [row for _, m in models for row in _rejection_rows(m)]
    page.table([r for r in rows if r["mass point"] == point_label(None)], columns=REJ_COLS,
               formats=_fmts(REJ_COLS[3:4] + REJ_COLS[5:]),
               caption="Rejection table, all signal mass points: at each target signal efficiency the cut on "
               "p_signal at the first ROC point reaching it, the signal efficiency reached and the background "
               "rejection 1/ε_B, each with its 68.3 % interval; ∞: no background jet passes (the test split is too "
               "small to measure it; the low edge still bounds it).")  # fmt: skip
    for p in points[1:]:
        page.table([r for r in rows if r["mass point"] == point_label(p)], columns=REJ_COLS,
                   formats=_fmts(REJ_COLS[3:4] + REJ_COLS[5:]), caption=f"Rejection table, {point_label(p)}.")  # fmt: skip


def _binned_groups(models: Sequence[tuple[F.Model, ModelMetrics]], attr: str) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for m, mm in models:
        for b in getattr(mm, attr):
            mp = None if b.mass_point is None else (b.mass_point.mH, b.mass_point.mS)
            groups.setdefault((b.sample, b.variable, b.region, mp), []).append((m, b))
    return groups


def section_efficiency(page: Any, sec: RunSection, barrel_eta: float) -> None:
    models = _models(sec)
    slug, title = _slug(sec), _title(sec)
    page.section(f"{sec.label}: signal efficiency and background rejection at the working points", 4)
    assert sec.main is not None  # the sections of the test split are drawn for evaluated runs only
    cuts = ", ".join(f"{float(k):.0%}: p_signal ≥ {v:.4g}" for k, v in sec.main.wp_cuts.items())
    page.text(f"Working points: the cut on p_signal keeping a fraction of ALL test signal jets ({cuts}). Points: "
              "68.3 % Clopper–Pearson intervals; x error bars: bin width.")  # fmt: skip
    for (_, var, region, _), items in _binned_groups(models, "efficiency").items():
        b: Binned = items[0][1]
        page.figure(F.fig_binned(items, [title, F.mass_text(b.mass_point)], _ref(models), region_eta=barrel_eta),
                    f"{slug}_eff_{var}_{point_slug(b.mass_point)}",
                    caption=f"signal efficiency vs {var} ({region}), {point_label(b.mass_point)}")  # fmt: skip
    for (sample, var, _, _), items in _binned_groups(models, "rejection").items():
        page.figure(F.fig_binned(items, [title, f"{sample} jets"], _ref(models)), f"{slug}_rej_{sample}_{var}",
                    caption=f"{sample} rejection vs {var}")  # fmt: skip


def section_distributions(page: Any, sec: RunSection) -> None:
    models = _models(sec)
    slug, title = _slug(sec), _title(sec)
    page.section(f"{sec.label}: network outputs per class", 4)
    for i, (m, mm) in enumerate(models):
        for o, _ in OUTPUTS:
            who = [title] if i == 0 else [f"{m.label} (baseline {i})", "on the test split of " + sec.label]
            page.figure(F.fig_scores([(m, mm.scores)], o, who), f"{slug}_scores_{o}" + (f"_baseline{i}" if i else ""),
                        caption=f"{o} output per true class" + (f", {m.label}" if i else ""))  # fmt: skip
    main = sec.main
    assert main is not None  # the sections of the test split are drawn for evaluated runs only
    page.section(f"{sec.label}: overtraining check (train vs test)", 4)
    if not main.overtraining:
        page.text("No training-split scores (overtraining_jets = 0, or no main_train.h5): skipped.")
    else:
        for o, _ in OUTPUTS:
            ks = {k.sample: k.pvalue for k in main.overtraining_ks if k.output == o}
            page.figure(F.fig_overtraining(main.overtraining, ks, o, [title, "training split vs test split"]),
                        f"{slug}_overtraining_{o}", caption=f"{o} output, train vs test, per class")  # fmt: skip
        cols = ["output", "class", "K-S", "p-value", "test jets", "train jets"]
        page.table([{"output": k.output, "class": k.sample, "K-S": k.ks, "p-value": k.pvalue, "test jets": k.n_a,
                     "train jets": k.n_b} for k in main.overtraining_ks], columns=cols, formats=_fmts(cols[2:]),
                   caption="Weighted K-S of each output, test vs training split, per class; a small p-value "
                   "(≪ 0.05) flags a network that learned its training jets (effective-N p-value, indicative).")  # fmt: skip


def section_scans(page: Any, sec: RunSection) -> None:
    models = _models(sec)
    slug, title = _slug(sec), _title(sec)
    page.section(f"{sec.label}: S/√B", 4)
    overall = [(m, s) for m, mm in models for s in mm.scans if not s.label.startswith("mH")]
    per_mh = [(m, s) for m, mm in models for s in mm.scans if s.label.startswith("mH")]
    if overall:
        page.figure(F.fig_scans(overall, [title]), f"{slug}_sob", caption="S/√B vs cut, by background")
    if per_mh:
        page.figure(F.fig_scans(per_mh, [title, "per signal mH, all backgrounds"]), f"{slug}_sob_per_mH",
                    caption="S/√B vs cut, per mH")  # fmt: skip
    cols = ["model", "scan", "max S/√B", "cut at max", "AuS"]
    page.table([{"model": m.label, "scan": s.label, "max S/√B": s.max_sob, "cut at max": s.cut_at_max, "AuS": s.aus}
                for m, s in overall + per_mh], columns=cols, formats=_fmts(cols[2:]),
               caption="S = N_S·ε_S, B = Σ N_b·ε_b with weighted efficiencies; N = test jet counts, QCD normalised "
               "to the BIB count (qcd_to_bib); the scan stops where B ≤ 10.")  # fmt: skip


def section_map(page: Any, sec: RunSection) -> None:
    main = sec.main
    assert main is not None  # the sections of the test split are drawn for evaluated runs only
    slug, title = _slug(sec), _title(sec)
    page.section(f"{sec.label}: signal efficiency per (mS, mH)", 4)
    if not main.mass_efficiency:
        page.text("No signal jets: skipped.")
        return
    page.figure(F.fig_eff_map(main.mass_efficiency, "argmax", [title, "argmax of the outputs = signal"]),
                f"{slug}_eff_argmax", caption="fraction of signal jets whose largest output is the signal one")  # fmt: skip
    page.figure(F.fig_eff_map(main.mass_efficiency, "wp", [title, rf"$p_\mathrm{{signal}}$ ≥ {main.map_cut:.4g}"]),
                f"{slug}_eff_wp", caption=f"efficiency of the cut p_signal ≥ {main.map_cut:.4g} "
                f"({main.map_wp:.0%} of all test signal)")  # fmt: skip
    cols = ["model", "mH [GeV]", "mS [GeV]", "jets", "ε argmax", "argmax low", "argmax high", "ε WP", "WP low",
            "WP high"]  # fmt: skip
    page.table([{"model": m.label, "mH [GeV]": e.mass_point.mH, "mS [GeV]": e.mass_point.mS, "jets": e.jets,
                 "ε argmax": e.argmax.value, "argmax low": e.argmax.low, "argmax high": e.argmax.high,
                 "ε WP": e.wp.value, "WP low": e.wp.low, "WP high": e.wp.high}
                for m, mm in _models(sec) for e in mm.mass_efficiency], columns=cols, formats=_fmts(cols[1:]))  # fmt: skip


def section_data_mc(page: Any, sec: RunSection) -> None:
    models = _models(sec)
    slug = _slug(sec)
    page.section(f"{sec.label}: data vs MC, control-region test split", 4)
    assert sec.main is not None  # the sections of the test split are drawn for evaluated runs only
    if not sec.main.data_mc:
        page.text("No control-region test split: skipped.")
        return
    for o, _ in OUTPUTS:
        items = []
        for m, mm in models:
            h = {x.sample: x for x in mm.data_mc if x.output == o}
            k = next((x for x in mm.data_mc_ks if x.output == o and x.selection == "all jets"), None)
            ks = "K-S n/a" if k is None else f"K-S = {k.ks:.3f}, p = {k.pvalue:.2g}"
            items.append((m, h.get("data"), h.get("MC"), ks))
        page.figure(F.fig_data_mc(items, o, [f"{sec.label}, epoch {sec.choice.epoch}", "control region, test split",
                                             "collision data vs multijet MC"]),
                    f"{slug}_cr_{o}", caption=f"data vs MC, {o} output")  # fmt: skip
    cols = ["model", "output", "selection", "K-S", "p-value", "data jets", "MC jets"]
    page.table([{"model": m.label, "output": k.output, "selection": k.selection, "K-S": k.ks, "p-value": k.pvalue,
                 "data jets": k.n_a, "MC jets": k.n_b} for m, mm in models for k in mm.data_mc_ks],
               columns=cols, formats=_fmts(cols[3:]),
               caption="Weighted K-S data vs MC per output, all jets and per jet-pT bin; the p-value uses effective "
               "sample sizes (indicative); an empty pT bin has no row.")  # fmt: skip


def section_test(page: Any, sec: RunSection, barrel_eta: float) -> None:
    s, main = sec.sample, sec.main
    assert s is not None and main is not None  # write_report calls this for evaluated runs only
    page.section(f"{sec.label}: test split, epoch {sec.choice.epoch}", 3)
    page.table([{"class": c, "jets": n, "Σ weights": s.sumw.get(c, 0.0)} for c, n in s.counts.items()],
               formats=_fmts(["jets", "Σ weights"]),
               caption=f"Test jets (`{s.main}`; weight `{s.weight}`; jet digest `{s.jets_digest[:16]}…`).")  # fmt: skip
    models = [main, *sec.baselines]
    page.table([{"model": m.model.label, "kind": m.model.kind, "epoch": m.model.epoch, "preprocessing":
                 m.model.preprocessing, "weight hash": (m.model.model_hash or "")[:16], "file SHA-256":
                 (m.model.file_sha256 or "")[:16], "same jets": m.jets_digest == s.jets_digest} for m in models],
               caption="Models evaluated (each fed its own preprocessing).")  # fmt: skip
    notes = [n for m in models for n in m.notes]
    if notes:
        page.bullets(dict.fromkeys(notes))
    section_rocs(page, sec)
    section_efficiency(page, sec, barrel_eta)
    section_distributions(page, sec)
    section_scans(page, sec)
    section_map(page, sec)
    section_data_mc(page, sec)


def section_configs(page: Any, doc: MetricsDoc) -> None:
    page.section("Configurations")
    infos = [RunInfo(RunSpec("", 0, None, r.label), Path(r.run_dir), r.config, {}, [], r.label) for r in doc.runs]
    varying, common = parameter_tables(infos)
    if len(infos) > 1:
        page.table(varying, caption="Parameters that differ between the runs.")
    page.table(common, caption="Parameters common to all runs.")
    for r in doc.runs:
        page.section(f"{r.label}: config.yaml", 3)
        page.code(yaml.safe_dump(r.config, sort_keys=False) if r.config else "(no config.yaml)\n", "yaml")


def write_report(doc: MetricsDoc, cfg: Any, out_dir: Path) -> Path:
    """``metrics.json``, ``report.md``, ``index.html`` and the figures into ``out_dir``, atomically."""
    from ..report.page import ReportPage

    with ReportPage(out_dir, doc.title, dpi=cfg.dpi, pdf=cfg.pdf) as page:
        page.attach(FILENAME, write_text(doc), text=f"All numbers of this report: {FILENAME}")
        section_summary(page, doc)
        camp = doc.campaign
        detailed = doc.runs
        if camp is not None:  # the comparison first; full sections for the selected run (or all)
            from .campaign_report import section_campaign

            section_campaign(page, doc)
            if (cfg.campaign is None or cfg.campaign.details == "selected") and camp.selected is not None:
                detailed = [r for r in doc.runs if r.label == camp.selected]
        for sec in detailed:
            if sec.main is not None:
                section_comparison(page, sec, cfg.wp_efficiency)
            section_export(page, sec)
        section_history(page, doc)
        tested = [r for r in detailed if r.main is not None]
        if len(tested) > 1 and camp is None:
            page.section("Test split: run comparison")
            for bkg in ("QCD", "BIB"):
                curves = [(F.Model(r.label + f" e{r.choice.epoch}", i), roc) for i, r in enumerate(tested)
                          for roc in r.main.rocs if roc.background == bkg and roc.mass_point is None]  # type: ignore[union-attr]  # tested: main set  # fmt: skip
                if curves:
                    page.figure(F.fig_roc(curves, [f"signal vs {bkg}, test split", "all signal mass points"], 0),
                                f"compare_roc_{bkg}", caption=f"ROC signal vs {bkg}, all runs")  # fmt: skip
        if tested:
            page.section("Test split")
            for sec in tested:
                section_test(page, sec, cfg.barrel_eta)
        for sec in doc.runs:
            if sec.main is None and cfg.test:
                page.text(f"{sec.label}: not evaluated on the test split ({sec.not_evaluated or sec.choice.why}).")
        section_configs(page, doc)
    return out_dir
