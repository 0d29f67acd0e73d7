"""``crbatch collect``: a pipeline's reports, gathered from the shared storage into one folder.

::

    <out>/README.md        what is where, and the pipeline's status
    <out>/status.md|json   the status of every job (crbatch status)
    <out>/report/          the analysis report (report.md, index.html, figures)
    <out>/exports/         the exported model (fdeep JSON, ONNX, preprocessing sidecar)
    <out>/training/        the run's history, config, training details and per-epoch plots
                           (a campaign: training/<run name>/ for each run)
    <out>/datasets/        the build summary
    <out>/failed/          the error lines and the log of every failed job
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import storage
from .plan import Plan
from .status import as_json, collect_status, render_text

RUN_FILES = ("history.json", "history.csv", "config.yaml", "training_details.txt", "model_summary.txt",
             "parametrization.json")  # fmt: skip


def _copy_tree(src, dst: Path) -> bool:
    if not src.is_dir():
        return False
    if isinstance(src, storage.RemotePath):  # read from root:// storage directly
        storage.download_tree(src, dst)
        return True
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    return True


def _copy(src, dst: Path) -> None:
    if isinstance(src, storage.RemotePath):
        storage.get(src, dst)
    else:
        shutil.copy2(src, dst)


def collect(plan: Plan, out: Path) -> dict[str, list[str]]:
    """Copy what people read into ``out``; returns ``{section: [copied paths]}``."""
    lay = plan.layout
    out.mkdir(parents=True, exist_ok=True)
    got: dict[str, list[str]] = {}
    if _copy_tree(lay.report_dir, out / "report"):
        got["report"] = [str(lay.report_dir)]
    if _copy_tree(lay.exports, out / "exports"):
        got["exports"] = [str(lay.exports)]
    for task in plan.stage("train"):  # a campaign: training/<run name>/ per run
        run = storage.location(task.outputs[0])
        dest = out / "training" / task.run if task.run else out / "training"
        files = [run / f for f in RUN_FILES if (run / f).is_file()]
        if files or (run / "plots").is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                _copy(f, dest / f.name)
            _copy_tree(run / "plots", dest / "plots")
            got.setdefault("training", []).append(str(run))
    summary = lay.datasets / "summary.json"
    if summary.is_file():
        (out / "datasets").mkdir(exist_ok=True)
        _copy(summary, out / "datasets" / "summary.json")
        got["datasets"] = [str(summary)]
    states = collect_status(plan)
    failed = [s for s in states.values() if s.state == "failed"]
    if failed:
        (out / "failed").mkdir(exist_ok=True)
        for s in failed:
            for src, suffix in ((lay.err_file(s.job), ".err"), (lay.log_file(s.job), ".log")):
                if src.is_file():
                    _copy(src, out / "failed" / f"{s.job}{suffix}")
        got["failed"] = [s.job for s in failed]
    text = render_text(plan, states, markdown=True)
    (out / "status.md").write_text(text)
    (out / "status.json").write_text(json.dumps(as_json(plan, states), indent=1) + "\n")
    index = [f"# {plan.pipeline.name}: collected results", "", f"From the storage `{lay.root}`.", ""]
    labels = {"report": "report/report.md — the analysis (open report/index.html)", "exports": "exports/ — the exported model",
              "training": "training/ — history, config and plots of the run", "datasets": "datasets/summary.json",
              "failed": "failed/ — error lines and logs of the failed jobs"}  # fmt: skip
    index += [f"- {labels[k]}" for k in labels if k in got]
    index += ["- status.md — every job's state", "", text]
    (out / "README.md").write_text("\n".join(index))
    return got
