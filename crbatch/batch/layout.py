"""Where a pipeline's files live on the shared storage root (the only state of a pipeline).

::

    <root>/shards/<dataset>/<file>.h5          convert: one shard per input file (shared by pipelines)
    <root>/datasets/<name>/                    build: main_*.h5, cr_*.h5, summary.json
    <root>/training_results/<model>/<run>/     train: checkpoint, history, epochs/NNN.keras, plots
    <root>/reports/<name>/                     analyze: report.md, index.html; status.md (pipeline)
    <root>/exports/<name>/                     export: fdeep JSON, ONNX, preprocessing sidecar
    <root>/logs/<name>/<job>.log               the crbatch output of each job (all attempts)
    <root>/logs/<name>/<backend>/              the scheduler's own stdout/stderr files
    <root>/status/<name>/<job>.status|.err     written by jobs/*.sh: state, exit code, error lines
    <root>/batch/<name>/<backend>/             default plan directory (what `crbatch submit` renders)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path
    name: str
    model: str
    run: int

    def shards(self, dataset: str) -> Path:
        return self.root / "shards" / dataset

    @property
    def datasets(self) -> Path:
        return self.root / "datasets" / self.name

    @property
    def runs(self) -> Path:
        """Base of the run directories (``crbatch train --output-dir``, ``--base`` of analyze/export)."""
        return self.root / "training_results"

    @property
    def run_dir(self) -> Path:
        from ..train.runs import run_path

        return run_path(self.runs / self.model, self.run)

    @property
    def reports_base(self) -> Path:
        """``crbatch analyze --output-dir``: the report goes to ``<reports_base>/<name>/``."""
        return self.root / "reports"

    @property
    def report_dir(self) -> Path:
        return self.reports_base / self.name

    @property
    def report(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def exports(self) -> Path:
        return self.root / "exports" / self.name

    @property
    def logs(self) -> Path:
        return self.root / "logs" / self.name

    @property
    def status(self) -> Path:
        return self.root / "status" / self.name

    def plan_dir(self, backend: str) -> Path:
        return self.root / "batch" / self.name / backend

    def status_file(self, job: str) -> Path:
        return self.status / f"{job}.status"

    def err_file(self, job: str) -> Path:
        return self.status / f"{job}.err"

    def log_file(self, job: str) -> Path:
        return self.logs / f"{job}.log"
