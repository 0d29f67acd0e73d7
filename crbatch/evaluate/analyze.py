"""``crbatch analyze``: best epochs of training runs, their test-split performance against baselines,
one report, the chosen epoch exported — and all of it in ``metrics.json``.

For each run (``NAME/RUN`` or ``NAME/RUN/EPOCH``):

1. **Best epochs** from ``history.json`` (crbatch.evaluate.analyze_runs): the reference's criteria
   and the combined score; the chosen epoch is the best saved one by ``criterion``, or the spec's.
2. **Test evaluation** (crbatch.evaluate.analyze_split, analyze_compute) of the chosen epoch and of
   every ``--baseline`` (another run or epoch, a ``.keras``/``.onnx`` file, a reference model, a
   scored file; crbatch.evaluate.analyze_baseline) on the SAME test jets, each model fed its own
   preprocessing; on the control-region test split; and, for the overtraining check, the run on
   part of its training split.
3. **Export** (``--export-dir``): the chosen epoch, checked on the run's test jets
   (crbatch.export.cli.export_epoch); the report names the files and their SHA-256.
4. **metrics.json** (crbatch.evaluate.analyze_results) with every number, then the **report**
   drawn from it (analyze_figures, analyze_report), written atomically together; last, each run's
   ``choice.json`` (crbatch.evaluate.analyze_choice) for ``crbatch export NAME/RUN/best``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from .. import __version__, schema
from ..config import StageConfig
from ..errors import ConfigError
from ..schema import Label
from . import metrics as M
from .analyze_results import BestRow, ChoiceInfo, ExportFile, ExportInfo, MetricsDoc, RunSection, Sample

# Names the tests and other modules import from here (the computing now lives in analyze_runs).
from .analyze_runs import (  # noqa: F401
    REFERENCE_CRITERIA,
    RunInfo,
    RunSpec,
    adversary_gap,
    best_epochs,
    choose_epoch,
    combined_score,
    criterion_values,
    load_run,
    parameter_tables,
    parse_run_spec,
)
from .campaign_config import CampaignConfig

log = logging.getLogger(__name__)

Criterion = Literal["combined", "val_loss", "adv_loss", "disc_loss", "ks_sum"]
WeightChoice = Literal["weight_balanced", "mcEventWeight", "weight_xs", "none"]
HISTORY_KEYS = ("val_original_lossf", "original_lossf", "val_adv_loss", "adv_loss", "val_adv_loss_chance",
                "ks_sig_all")  # fmt: skip


class AnalyzeConfig(StageConfig):
    """Best epochs, test-split performance against baselines, a report and the chosen epoch's export."""

    runs: list[str] = Field(default_factory=list, description="NAME/RUN or NAME/RUN/EPOCH (negative: from the latest)")
    baselines: list[str] = Field(
        default_factory=list,
        description="[LABEL=]SPEC to compare with on the same test jets: NAME/RUN[/EPOCH], FILE.keras, FILE.onnx, "
        "reference:FILE (a reference-trained model) or a scored FILE.h5",
    )
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
        list(M.DEFAULT_EFFICIENCIES), description="working points: signal efficiencies of the rejection table "
        "and of the efficiency/rejection plots"
    )  # fmt: skip
    wp_efficiency: float = Field(
        0.5, gt=0, lt=1, description="working point of the efficiency map: the p_signal cut keeping this "
        "fraction of all test signal jets",
    )  # fmt: skip
    qcd_to_bib: bool = Field(True, description="S/√B: normalise QCD to the BIB jet count (the reference)")
    barrel_eta: float = Field(
        1.4, gt=0, description="LLPs with |η| below this decay in the barrel (Lxy), others in the end-caps (Lz)"
    )
    bins: int = Field(8, ge=1, le=50, description="bins of the efficiency/rejection plots (equal population, rounded)")
    lxy_bins: list[float] | None = Field(None, description="llp_Lxy bin edges, mm (default: automatic)")
    lz_bins: list[float] | None = Field(None, description="|llp_Lz| bin edges, mm (default: automatic)")
    pt_bins: list[float] | None = Field(None, description="jet pT bin edges, GeV (default: automatic)")
    eta_bins: list[float] | None = Field(None, description="jet η bin edges (default: 10 bins on [-2.5, 2.5])")
    overtraining_jets: int = Field(
        100_000, ge=0, description="training-split jets scored for the overtraining check (0: no check)"
    )
    batch_size: int = Field(4096, ge=1, description="jets per prediction batch")
    max_jets: int | None = Field(None, ge=1, description="evaluate at most this many test jets per split")
    test: bool = Field(True, description="evaluate the chosen epochs on the test split (off: history only)")
    export_dir: Path | None = Field(None, description="export each run's chosen epoch here (crbatch export)")
    export_format: Literal["fdeep", "onnx", "onnx-raw", "all"] = Field("all", description="what the export writes")
    export_check_jets: int = Field(256, ge=1, description="synthetic jets of the export's parity check")
    campaign: CampaignConfig | None = Field(
        None, description="compare the runs as one campaign and export only the run its rule selects "
        "(crbatch.evaluate.campaign; docs/campaigns.md)",
    )  # fmt: skip
    dpi: int = Field(90, ge=30, description="figure resolution")
    pdf: bool = Field(True, description="a vector PDF beside each PNG")

    @field_validator("efficiencies")
    @classmethod
    def _effs(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < e < 1 for e in v):
            raise ValueError(f"efficiencies must lie in (0, 1): {v}")
        return v


def settings_of(cfg: AnalyzeConfig) -> Any:
    from .analyze_compute import Settings

    t = lambda v: None if v is None else tuple(v)  # noqa: E731
    return Settings(tuple(cfg.efficiencies), cfg.wp_efficiency, cfg.qcd_to_bib, cfg.barrel_eta, cfg.bins,
                    t(cfg.lxy_bins), t(cfg.lz_bins), t(cfg.pt_bins), t(cfg.eta_bins))  # fmt: skip


def split_paths(info: RunInfo, data: Path | None) -> tuple[Path, Path, Path]:
    """(main_test.h5, cr_test.h5, main_train.h5) of the datasets the run trained on (or of ``data``)."""
    if data is not None:
        return tuple(
            data / schema.dataset_filename(r, s) for r, s in (("main", "test"), ("cr", "test"), ("main", "train"))
        )  # type: ignore[return-value]
    from ..train.config import TrainConfig

    try:
        cfg = TrainConfig.model_validate(info.config)
    except Exception as e:  # an old or foreign config: say what to do
        raise ConfigError(f"{info.run_dir}/config.yaml: cannot tell which datasets the run used ({e}); "
                          "give --data DIR") from e  # fmt: skip
    return cfg.dataset_path("main", "test"), cfg.dataset_path("cr", "test"), cfg.dataset_path("main", "train")


def _best_rows(info: RunInfo, epoch: int | None, n_best: int) -> list[BestRow]:
    rows = best_epochs(info, n_best)
    vals = {k: criterion_values(info, k) for k in ("val_loss", "adv_loss", "disc_loss", "ks_sum", "combined")}

    def at(k: str, e: int) -> float | None:
        v = vals[k]
        return float(v[e]) if e < len(v) and np.isfinite(v[e]) else None

    out = []
    for r in rows:
        e = r["epoch"]
        extra = {} if e is None else {"val_ce": at("val_loss", e), "val_adv_bce": at("adv_loss", e),
                                      "disc_bce": at("disc_loss", e), "ks_sum": at("ks_sum", e),
                                      "combined": at("combined", e), "chosen": e == epoch}  # fmt: skip
        out.append(BestRow(**r, **extra))
    return out


def _history(info: RunInfo) -> dict[str, list[float]]:
    out = {k: info.series(k).tolist() for k in HISTORY_KEYS if k in info.history}
    for k in ("ks_sum", "combined"):
        v = criterion_values(info, k)
        if np.isfinite(v).any():
            out[k] = v.tolist()
    return out


def _section(info: RunInfo, cfg: AnalyzeConfig) -> tuple[RunSection, int | None]:
    epoch, why = choose_epoch(info, cfg.criterion)
    sec = RunSection(label=info.label, run_dir=str(info.run_dir), n_epochs=info.n_epochs,
                     saved_epochs=info.saved_epochs, choice=ChoiceInfo(epoch=epoch, why=why, criterion=cfg.criterion),
                     best=_best_rows(info, epoch, cfg.n_best), history=_history(info), config=info.config)  # fmt: skip
    return sec, epoch


def evaluate_run(info: RunInfo, epoch: int, sec: RunSection, cfg: AnalyzeConfig) -> None:
    """Score the run's epoch and every baseline on its test splits; fill ``sec`` with the numbers."""
    from .analyze_baseline import epoch_scorer, load_baseline
    from .analyze_compute import binning, compare, model_metrics, sample_counts
    from .analyze_split import MassDraw, score_split

    run = epoch_scorer(info, epoch, f"run:{info.label}@e{epoch}", f"{info.label} e{epoch}", "run",
                       f"{info.label}/{epoch}")  # fmt: skip
    baselines = [load_baseline(b, i, base=cfg.base, criterion=cfg.criterion) for i, b in enumerate(cfg.baselines, 1)]
    everyone = [run, *baselines]
    main_path, cr_path, train_path = split_paths(info, cfg.data)
    parametrised = any(s.mass_names for s in everyone)
    log.info("%s: evaluating epoch %d and %d baselines on the test split", info.label, epoch, len(baselines))
    ts = score_split(main_path, everyone, weight=cfg.weight, batch_size=cfg.batch_size, max_jets=cfg.max_jets,
                     masses=MassDraw(main_path, 0) if parametrised else None)  # fmt: skip
    cr = None
    if cr_path.exists():
        on_cr = [s for s in everyone if s.lookup is None]  # a scored file of the main split has no CR jets
        cr_weight = str(info.config.get("cr_weight_column") or "weight_balanced")
        cr = score_split(cr_path, on_cr, weight=cr_weight, batch_size=cfg.batch_size, max_jets=cfg.max_jets,
                         masses=MassDraw(main_path, 1) if parametrised else None, what="control-region test split")  # fmt: skip
    else:
        log.warning("%s: no control-region test split; the data-vs-MC section is skipped", cr_path)
    train = None
    if cfg.overtraining_jets and train_path.exists():
        train = score_split(train_path, [run], weight=cfg.weight, batch_size=cfg.batch_size,
                            max_jets=cfg.overtraining_jets, masses=MassDraw(main_path, 2) if parametrised else None,
                            what="training split (overtraining check)")  # fmt: skip
    s = settings_of(cfg)
    bins = binning(ts, cr, s)
    sec.main = model_metrics(run.ref, ts, cr, train, s, bins)
    if cr is None:
        sec.main.notes.append("no control-region test split: the data-vs-MC section is skipped")
    if cfg.overtraining_jets and train is None:
        sec.main.notes.append(f"no training split at {train_path}: no overtraining check")
    sec.baselines = [model_metrics(b.ref, ts, cr, None, s, bins) for b in baselines]
    sec.comparisons = [compare(sec.main, b) for b in sec.baselines]
    counts, sumw = sample_counts(ts)
    sec.sample = Sample(main=str(main_path), cr=str(cr_path) if cr is not None else None, weight=cfg.weight,
                        jets=len(ts), cr_jets=len(cr) if cr is not None else 0, jets_digest=ts.digest,
                        cr_digest=cr.digest if cr is not None else None, counts=counts, sumw=sumw,
                        max_jets=cfg.max_jets)  # fmt: skip


def export_run(info: RunInfo, epoch: int, sec: RunSection, cfg: AnalyzeConfig, campaign: str | None = None) -> None:
    from ..export.cli import export_epoch

    assert cfg.export_dir is not None
    choice = {"epoch": epoch, "why": sec.choice.why, "criterion": cfg.criterion, "analysis": "crbatch analyze"}
    if campaign is not None:  # why this run of the campaign is the one that ships
        choice["campaign"] = campaign
    res = export_epoch(info.run_dir, info.run_dir / "epochs" / f"{epoch:03d}.keras", out_dir=cfg.export_dir,
                       fmt=cfg.export_format, check_jets=cfg.export_check_jets, choice=choice)  # fmt: skip
    rec = res.record()
    sec.export = ExportInfo(dir=str(cfg.export_dir), model_hash=rec["model_hash"], epoch=rec["epoch"],
                            files=[ExportFile(**f) for f in rec["files"]], parity=rec["parity"])  # fmt: skip


def analyze(cfg: AnalyzeConfig) -> Path:
    """Everything: load runs, choose epochs, evaluate against baselines, export, write metrics.json and
    the report, then record each run's choice; returns the report directory."""
    from .analyze_choice import make_choice, write_choice
    from .analyze_report import write_report

    if not cfg.runs:
        raise ConfigError("no runs: give NAME/RUN[/EPOCH], e.g. default/-1")
    infos = [load_run(parse_run_spec(s), cfg.base) for s in cfg.runs]
    labels = [i.label for i in infos]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a run is given twice: {labels}")
    camp = cfg.campaign if cfg.campaign is not None and cfg.campaign.enabled and len(infos) > 1 else None
    sections = []
    for i, info in enumerate(infos, 1):
        sec, epoch = _section(info, cfg)
        if camp is not None:
            log.info("campaign: run %d of %d, %s", i, len(infos), info.label)
        if epoch is None:
            sec.not_evaluated = sec.choice.why
        elif cfg.test:
            evaluate_run(info, epoch, sec, cfg)
        if epoch is not None and cfg.export_dir is not None and (camp is None or camp.export_all):
            export_run(info, epoch, sec, cfg)
        sections.append(sec)
    result = None
    if camp is not None:  # one comparison; the run the rule selects is the one exported
        from .campaign import campaign_result

        result = campaign_result(sections, camp)
        log.info("campaign: %s", result.why)
        if result.selected is not None and cfg.export_dir is not None and not camp.export_all:
            k = labels.index(result.selected)
            export_run(infos[k], sections[k].choice.epoch, sections[k], cfg, campaign=result.why)  # type: ignore[arg-type]
    names = {i.spec.name for i in infos}
    name = cfg.name or (names.pop() if len(names) == 1 else "analyze")
    doc = MetricsDoc(crbatch_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     title=(f"Campaign analysis: {name}, {len(labels)} runs" if result is not None
                            else "Training analysis: " + ", ".join(labels)), analysis=cfg.model_dump(mode="json"),
                     runs=sections, campaign=result)  # fmt: skip
    out = write_report(doc, cfg, cfg.output_dir / name)
    for info, sec in zip(infos, sections, strict=True):
        e = sec.choice.epoch
        if e is not None:
            ch = make_choice(info.label, info.run_dir, e, sec.choice.why, cfg.criterion, info.n_epochs,
                             info.saved_epochs)  # fmt: skip
            ch.report, ch.metrics = str(out), str(out / "metrics.json")
            write_choice(info.run_dir, ch)
    print(f"report: {out / 'report.md'}")
    return out


__all__ = ["AnalyzeConfig", "Label", "analyze", "evaluate_run", "settings_of", "split_paths"]
