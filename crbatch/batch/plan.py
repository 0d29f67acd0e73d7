"""The job model: a pipeline as tasks, and the plan directory every backend's jobs read.

One task is one run of a ``jobs/<stage>.sh`` entry point: ``convert`` (one per input file),
``build``, ``train``, ``analyze`` (analyze + export) and ``report`` (the pipeline's status, HTCondor's
FINAL node and Slurm's last job). A task is named by a stable job id made of safe characters
(``convert.<dataset>.<shard>``, ``build``, ...): it names the task's status and log files, DAG nodes
and scheduler log files, and stays the same when the pipeline is submitted again.

Names never travel through a scheduler: :func:`write_plan` stores, per task, its crbatch argument
vector NUL-separated in ``<stage>/<index>.args`` (read by ``mapfile -d ''`` in ``jobs/common.sh``),
its input entry as YAML and the stage configs as YAML files, so the scheduler only passes
``<plan dir> <index>``. Any byte a file name may hold (spaces, quotes, ``$``, backticks, newlines,
non-ASCII) reaches crbatch as one argument, and nothing input-derived is ever parsed as code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, InputMissing
from ..inputs import expand
from .layout import Layout
from .pipeline import Dataset, Pipeline, is_url

STAGES = ("convert", "build", "train", "analyze")
"""Pipeline stages in order; each runs after every task of the one before succeeded."""

SCRIPTS = {"convert": "convert.sh", "build": "build.sh", "train": "train.sh", "analyze": "analyze.sh",
           "report": "report.sh"}  # fmt: skip
PLAN_FILE = "plan.json"
PATHS_FILE = "paths"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Task:
    """One job: ``jobs/<stage>.sh <plan dir> <index>``."""

    stage: str
    index: int
    job: str
    outputs: tuple[str, ...] = ()
    source: str | None = None  # convert: the input file
    dataset: str | None = None  # convert: the dataset it belongs to
    run: str | None = None  # train in a campaign: the run's name (crbatch/batch/scan.py)


@dataclass
class Plan:
    pipeline: Pipeline
    layout: Layout
    tasks: dict[str, list[Task]] = field(default_factory=dict)

    def stage(self, name: str) -> list[Task]:
        return self.tasks.get(name, [])

    def all(self) -> list[Task]:
        return [t for s in (*STAGES, "report") for t in self.stage(s)]

    def find(self, job: str) -> Task:
        for t in self.all():
            if t.job == job:
                return t
        raise KeyError(job)


def layout_of(p: Pipeline) -> Layout:
    return Layout(p.storage, p.name, p.model_name, p.train.run)


def _patterns(d: Dataset) -> list[str]:
    pats = list(d.files)
    if d.file_list is not None:
        try:
            lines = Path(d.file_list).read_text().splitlines()
        except OSError as e:
            raise InputMissing(f"dataset {d.name}: file_list {d.file_list} cannot be read ({e.strerror})") from e
        base = Path(d.file_list).parent
        for ln in lines:
            ln = ln.strip()
            if ln and not ln.startswith("#"):
                pats.append(ln if Path(ln).is_absolute() else str(base / ln))
    return pats


def dataset_files(d: Dataset) -> list[Path]:
    """The input files of a dataset: every path, wildcard and file_list line expanded, sorted."""
    found: list[Path] = []
    for pat in _patterns(d):
        if is_url(pat):
            raise ConfigError(
                f"dataset {d.name}: {pat}: crbatch convert reads local or mounted files only; "
                "copy the ntuples to storage (e.g. rucio download) and list those"
            )
        try:
            hits = expand(pat, (), directories=True)
        except InputMissing as e:
            raise InputMissing(f"dataset {d.name}: {e}") from None
        found += [Path(os.path.abspath(h)) for h in hits if h.is_file()]
    seen = Counter(found)
    twice = [str(p) for p, n in seen.items() if n > 1]
    if twice:
        raise ConfigError(f"dataset {d.name}: listed twice: {twice[0]}")
    if not found:
        raise InputMissing(f"dataset {d.name}: no input file")
    return sorted(found)


def natural_stem(name: str) -> str:
    """``x.root`` → ``x``; ``x.root.1`` (grid replicas) → ``x.root``; ``x`` → ``x``."""
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def safe_stem(name: str) -> str:
    """A file-name stem made of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``."""
    return _UNSAFE.sub("_", natural_stem(name)).lstrip(".-")[:120] or "file"


def shard_names(files: list[Path]) -> list[str]:
    """Shard stems of one dataset's files: the file's stem, made safe; a short hash of the full path
    is appended where that changed the name or two files share it, so no shard overwrites another."""
    stems = [safe_stem(f.name) for f in files]
    count = Counter(stems)
    out = []
    for f, s in zip(files, stems, strict=True):
        if count[s] > 1 or natural_stem(f.name) != s:
            s = f"{s}-{hashlib.sha1(os.fsencode(f)).hexdigest()[:8]}"
        out.append(s)
    return out


def make_plan(p: Pipeline, until: str = "analyze") -> Plan:
    """Expand the inputs and name every task and output (no file is written); stages after
    ``until`` are left out (``crbatch submit --until convert`` converts only)."""
    lay = layout_of(p)
    plan = Plan(p, lay)
    convert: list[Task] = []
    owner: dict[Path, str] = {}
    for d in p.datasets:
        files = dataset_files(d)
        for f in files:
            if f in owner:
                raise ConfigError(f"{f} is in datasets {owner[f]} and {d.name}; a file belongs to one dataset")
            owner[f] = d.name
        for f, stem in zip(files, shard_names(files), strict=True):
            out = lay.shards(d.name) / f"{stem}.h5"
            convert.append(Task("convert", len(convert), f"convert.{d.name}.{stem}", (str(out),), str(f), d.name))
    plan.tasks["convert"] = convert
    datasets = tuple(str(lay.datasets / f"{r}_{s}.h5") for r in ("main", "cr") for s in ("train", "val", "test"))
    plan.tasks["build"] = [Task("build", 0, "build", (*datasets, str(lay.datasets / "summary.json")))]
    plan.tasks["train"] = train_tasks(p, lay)
    outs = [str(lay.report)]
    if p.analyze.export.enabled:
        outs.append(str(lay.exports))
    plan.tasks["analyze"] = [Task("analyze", 0, "analyze", tuple(outs))]
    plan.tasks["report"] = [Task("report", 0, "report", (str(lay.report_dir / "status.md"),))]
    for stage in STAGES[STAGES.index(until) + 1 :]:
        del plan.tasks[stage]
    return plan


def train_tasks(p: Pipeline, lay: Layout, indices: dict[str, int] | None = None) -> list[Task]:
    """One training job per run of the campaign (one job ``train`` without scan); ``indices``: the
    task index of each job id (default: the runs' order; crbatch/batch/scan.py keeps them stable)."""
    from .scan import job_of, run_dir_of

    out = []
    for i, pt in enumerate(p.train.points):
        job = job_of(pt)
        out.append(Task("train", (indices or {}).get(job, i), job,
                        (str(run_dir_of(lay.runs, p.model_name, pt, p.train.run)),), run=pt.name or None))  # fmt: skip
    return out


def point_of(p: Pipeline, task: Task) -> Any:
    """The :class:`~crbatch.batch.scan.RunPoint` of a training task."""
    return next(pt for pt in p.train.points if (pt.name or None) == task.run)


def train_config(plan: Plan, task: Task) -> dict[str, Any]:
    """The config file of one training: ``train.options``, the run's own options, the storage."""
    from .scan import model_of

    p, lay = plan.pipeline, plan.layout
    pt = point_of(p, task)
    return {**p.train.options, **pt.options, "data": str(lay.datasets), "output_dir": str(lay.runs),
            "model_name": model_of(p.model_name, pt)}  # fmt: skip


def run_specs(plan: Plan) -> list[str]:
    """``NAME/RUN`` of every training of the plan (what the analysis reads)."""
    from .scan import model_of

    p = plan.pipeline
    return [f"{model_of(p.model_name, pt)}/{p.train.run}" for pt in p.train.points]


# --- the plan directory ------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a small file atomically (a job may read the plan while it is being rewritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        data = data.encode()
    tmp.write_bytes(data)
    os.replace(tmp, path)


def nul_args(args: list[str]) -> bytes:
    """An argument vector as NUL-terminated strings: the one encoding any file name survives."""
    enc = [os.fsencode(a) for a in args]
    if any(b"\0" in a for a in enc):
        raise ConfigError("an argument contains a NUL byte")
    return b"".join(a + b"\0" for a in enc)


def read_nul_args(path: Path) -> list[str]:
    return [os.fsdecode(a) for a in path.read_bytes().split(b"\0")[:-1]]


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=False)


def stage_configs(plan: Plan, run_dir: str) -> dict[str, dict[str, Any]]:
    """The config file of each stage: the pipeline's options plus the storage locations."""
    p, lay = plan.pipeline, plan.layout
    train = {**p.train.options, "data": str(lay.datasets), "output_dir": str(lay.runs), "model_name": p.model_name}
    del run_dir  # the run directory is an argument (--run-dir), not a config key
    return {
        "convert": {**p.convert.options, "output_dir": str(lay.root / "shards")},
        "build": {**p.build.options, "output_dir": str(lay.datasets)},
        "train": train,
        "analyze": {**p.analyze.options, **_analyze_keys(p, lay)},
    }


def _analyze_keys(p: Pipeline, lay: Layout) -> dict[str, Any]:
    """Storage locations, baselines and the export: the analysis exports the epoch it chose and evaluated
    (not epoch −1), so the model that ships is the one in the report."""
    out: dict[str, Any] = {"base": str(lay.runs), "output_dir": str(lay.reports_base), "name": p.name}
    if p.analyze.baselines:
        out["baselines"] = list(p.analyze.baselines)
    points = p.train.points
    if len(points) > 1 and p.analyze.campaign.enabled:  # a campaign: one comparison, the selected run exported
        from .scan import model_of

        camp = p.analyze.campaign.model_dump(mode="json")
        camp["options"] = {model_of(p.model_name, pt): dict(pt.options) for pt in points}
        out["campaign"] = camp
    ex = p.analyze.export
    if ex.enabled:
        out.update(export_dir=str(lay.exports), export_format=ex.format, export_check_jets=ex.check_jets)
    return out


def task_commands(plan: Plan, task: Task, plan_dir: Path, run_dir: str) -> dict[str, list[str]]:
    """``{suffix: crbatch argv}`` of a task; suffix ``""`` is the main command (``<index>.args``)."""
    p = plan.pipeline
    cfg = lambda stage: str(plan_dir / f"{stage}.yaml")  # noqa: E731
    if task.stage == "convert":
        entry = plan_dir / "convert" / f"{task.index}.inputs.yaml"
        return {"": ["convert", "divert", str(entry), "--out", task.outputs[0], "--config", cfg("convert")]}
    if task.stage == "build":
        return {"": ["build", str(plan_dir / "build.inputs.yaml"), "--config", cfg("build")]}
    if task.stage == "train":
        if task.run:  # a campaign's run: its own config and run directory
            own = str(plan_dir / "train" / f"{task.index}.yaml")
            return {"": ["train", "--run-dir", task.outputs[0], "--config", own]}
        return {"": ["train", "--run-dir", run_dir, "--config", cfg("train")]}
    if task.stage == "analyze":
        specs = run_specs(plan)
        if p.analyze.export.epoch is not None:
            specs = [f"{s}/{p.analyze.export.epoch}" for s in specs]
        return {"": ["analyze", *specs, "--config", cfg("analyze")]}
    if task.stage == "report":
        return {"": ["status", str(plan_dir), "--out", task.outputs[0], "--check"]}
    raise ValueError(task.stage)


def write_plan(plan: Plan, plan_dir: Path, run_dir: str | None = None) -> Path:
    """Write everything the jobs read into ``plan_dir``; returns ``plan_dir`` (absolute).

    ``run_dir``: the training's ``--run-dir`` as the job sees it (default: the run directory on the
    storage; HTCondor's checkpoint-transfer mode uses a sandbox-relative one).
    """
    plan_dir = plan_dir.absolute()
    lay = plan.layout
    run_dir = run_dir or str(lay.run_dir)
    for stage, cfg in stage_configs(plan, run_dir).items():
        write_atomic(plan_dir / f"{stage}.yaml", _yaml(cfg))
    sets = {d.name: d for d in plan.pipeline.datasets}
    build_inputs = []
    for t in plan.stage("convert"):
        d = sets[t.dataset or ""]
        entry = {"path": t.source, "type": d.type}
        entry.update({k: getattr(d, k) for k in ("mH", "mS", "dsid") if getattr(d, k) is not None})
        write_atomic(plan_dir / "convert" / f"{t.index}.inputs.yaml", _yaml([entry]))
        build_inputs.append({"path": t.outputs[0], **d.build})
    write_atomic(plan_dir / "build.inputs.yaml", _yaml(build_inputs))
    for t in plan.stage("train"):
        if t.run:
            write_atomic(plan_dir / "train" / f"{t.index}.yaml", _yaml(train_config(plan, t)))
    for t in plan.all():
        for suffix, argv in task_commands(plan, t, plan_dir, run_dir).items():
            name = f"{t.index}.{suffix}.args" if suffix else f"{t.index}.args"
            write_atomic(plan_dir / t.stage / name, nul_args(argv))
        write_atomic(plan_dir / t.stage / f"{t.index}.job", t.job + "\n")
    write_atomic(plan_dir / PATHS_FILE, nul_args([str(lay.status), str(lay.logs)]))
    doc = {"pipeline": plan.pipeline.model_dump(mode="json"), "tasks": [asdict(t) for t in plan.all()]}
    write_atomic(plan_dir / PLAN_FILE, json.dumps(doc, indent=1) + "\n")
    return plan_dir


def load_plan(path: Path) -> Plan:
    """A plan written by :func:`write_plan` (``path``: the plan directory or its plan.json)."""
    f = path / PLAN_FILE if path.is_dir() else path
    try:
        doc = json.loads(f.read_text())
    except FileNotFoundError:
        raise InputMissing(f"{f}: no plan here; give a pipeline YAML or a directory `crbatch submit` wrote") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{f}: unreadable plan ({e})") from e
    p = Pipeline.model_validate(doc["pipeline"])
    plan = Plan(p, layout_of(p))
    for t in doc["tasks"]:
        plan.tasks.setdefault(t["stage"], []).append(Task(**{**t, "outputs": tuple(t["outputs"])}))
    return plan
