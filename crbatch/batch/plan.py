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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .. import schema
from ..errors import ConfigError, CrbatchError, InputMissing
from ..inputs import expand
from ..storage import basename, location
from . import scan
from .layout import Layout
from .pipeline import Dataset, Pipeline, RucioOptions, is_remote, is_url

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
    source: str | None = None  # convert: the input file (the first of a bundle)
    dataset: str | None = None  # convert: the dataset it belongs to
    sources: tuple[str, ...] = ()  # convert, several files in one job: every input, outputs[i] of sources[i]
    run: str | None = None  # train in a campaign: the run's name (crbatch/batch/scan.py)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.sources or ((self.source,) if self.source is not None else ())


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


def dataset_files(d: Dataset, rucio=None, sizes: dict[str, int] | None = None) -> list[str]:
    """The input files of a dataset: every path, wildcard and file_list line expanded, ``root://``
    URLs as they are, rucio DIDs as the replicas :mod:`crbatch.batch.rucio` chooses; sorted.
    ``sizes``: filled with the file sizes rucio reports (for bundling by runtime)."""
    found: list[str] = []
    for pat in _patterns(d):
        if is_remote(pat):
            found.append(pat)  # read in place over XRootD by crbatch convert
            continue
        if is_url(pat):
            raise ConfigError(
                f"dataset {d.name}: {pat}: crbatch convert reads local or mounted files and root:// URLs; "
                "list the files' root:// replicas (or a rucio DID), or copy them to storage"
            )
        try:
            hits = expand(pat, (), directories=True)
        except InputMissing as e:
            raise InputMissing(f"dataset {d.name}: {e}") from None
        found += [os.path.abspath(h) for h in hits if h.is_file()]
    if d.did:
        from . import rucio as rucio_mod

        for r in rucio_mod.replicas(d.did, rucio or RucioOptions(), d.name):
            found.append(r.url)
            if sizes is not None and r.size is not None:
                sizes[r.url] = int(r.size)
    seen = Counter(found)
    twice = [str(p) for p, n in seen.items() if n > 1]
    if twice:
        raise ConfigError(f"dataset {d.name}: listed twice: {twice[0]}")
    if not found:
        raise InputMissing(f"dataset {d.name}: no input file")
    return sorted(found, key=lambda f: (basename(f), f) if is_remote(f) else ("", f))


def natural_stem(name: str) -> str:
    """``x.root`` → ``x``; ``x.root.1`` (grid replicas) → ``x.root``; ``x`` → ``x``."""
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def safe_stem(name: str) -> str:
    """A file-name stem made of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``."""
    return _UNSAFE.sub("_", natural_stem(name)).lstrip(".-")[:120] or "file"


def shard_names(files: list[Path] | list[str]) -> list[str]:
    """Shard stems of one dataset's files: the file's stem, made safe; a short hash of the full path
    is appended where that changed the name or two files share it, so no shard overwrites another."""
    names = [basename(f) for f in files]
    stems = [safe_stem(n) for n in names]
    count = Counter(stems)
    out = []
    for f, n, s in zip(files, names, stems, strict=True):
        if count[s] > 1 or natural_stem(n) != s:
            s = f"{s}-{hashlib.sha1(os.fsencode(str(f))).hexdigest()[:8]}"
        out.append(s)
    return out


def _file_size(f: str, sizes: dict[str, int]) -> int:
    if f in sizes:
        return sizes[f]
    try:
        return location(f).size() if is_remote(f) else os.path.getsize(f)  # type: ignore[union-attr]
    except (OSError, CrbatchError):
        return 0


def bundles(files: list[str], p: Pipeline, sizes: dict[str, int]) -> list[list[int]]:
    """Indices of ``files`` grouped into jobs: ``convert.files_per_job`` at a time, or, with
    ``convert.target_runtime``, as many as fit in it at ``convert.mb_per_s`` (at least one)."""
    c = p.convert
    if c.target_runtime is None:
        n = c.files_per_job
        return [list(range(i, min(i + n, len(files)))) for i in range(0, len(files), n)]
    groups: list[list[int]] = []
    budget = c.target_runtime * c.mb_per_s * 1024 * 1024
    used = 0.0
    for i, f in enumerate(files):
        size = _file_size(f, sizes)
        if not groups or (used + size > budget and groups[-1]):
            groups.append([])
            used = 0.0
        groups[-1].append(i)
        used += size
    return groups


def make_plan(p: Pipeline, until: str = "analyze") -> Plan:
    """Expand the inputs and name every task and output (no file is written); stages after
    ``until`` are left out (``crbatch submit --until convert`` converts only)."""
    lay = layout_of(p)
    plan = Plan(p, lay)
    convert: list[Task] = []
    owner: dict[str, str] = {}
    for d in p.datasets:
        sizes: dict[str, int] = {}
        files = dataset_files(d, p.rucio, sizes)
        for f in files:
            if f in owner:
                raise ConfigError(f"{f} is in datasets {owner[f]} and {d.name}; a file belongs to one dataset")
            owner[f] = d.name
        stems = shard_names(files)
        for group in bundles(files, p, sizes):
            outs = tuple(str(lay.shards(d.name) / f"{stems[i]}.h5") for i in group)
            srcs = tuple(files[i] for i in group)
            first = stems[group[0]]
            if len(group) == 1:
                convert.append(Task("convert", len(convert), f"convert.{d.name}.{first}", outs, srcs[0], d.name))
            else:  # one job, every file its own shard
                job = f"convert.{d.name}.{first}.{len(group)}files"
                convert.append(Task("convert", len(convert), job, outs, srcs[0], d.name, srcs))
    plan.tasks["convert"] = convert
    datasets = tuple(str(lay.datasets / f"{r}_{s}.h5") for r in ("main", "cr") for s in ("train", "val", "test"))
    plan.tasks["build"] = [Task("build", 0, "build", (*datasets, str(lay.datasets / "summary.json")))]
    plan.tasks["train"] = train_tasks(p, lay)
    analyze_outs = [str(lay.report)]
    if p.analyze.export.enabled:
        analyze_outs.append(str(lay.exports))
    plan.tasks["analyze"] = [Task("analyze", 0, "analyze", tuple(analyze_outs))]
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
    if p.remote:  # the sandbox's staged-in copy of the datasets, not the path recorded in the run
        out["data"] = str(lay.datasets)
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
        if task.sources:  # several files: each entry names its shard
            return {"": ["convert", "divert", str(entry), "--config", cfg("convert")]}
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


SANDBOX_STORAGE = "storage"
"""With root:// storage: the storage root as a job sees it, relative to its sandbox work directory."""
SANDBOX_PLAN = "plan"
"""With root:// storage: the plan directory as a job sees it (jobs/common.sh links or assembles it)."""
STAGE_SUFFIX = ".stage.json"


def sandbox_view(plan: Plan) -> Plan:
    """The plan as a job on root:// storage sees it: every storage location under ``storage/`` in its
    sandbox (what it stages in from and out to the storage root)."""
    root = plan.layout.root
    lay = Layout(Path(SANDBOX_STORAGE), plan.layout.name, plan.layout.model, plan.layout.run)

    def local(out: str) -> str:
        return str(Path(SANDBOX_STORAGE) / location(out).relative_to(root))  # type: ignore[arg-type]

    view = Plan(plan.pipeline, lay)
    view.tasks = {
        st: [replace(t, outputs=tuple(local(o) for o in t.outputs)) for t in ts] for st, ts in plan.tasks.items()
    }
    return view


def stage_spec(plan: Plan, task: Task) -> dict[str, Any]:
    """What a job on root:// storage copies, relative to the storage root and to its ``storage/``:
    ``in`` before crbatch runs, ``out`` after (``tree``: a directory; ``last``: its completion marks,
    uploaded after everything else; ``always``: also after a failure; ``complete``: only a file of this
    crbatch kind that is complete; ``delete_extra``: the remote directory ends as the local one)."""
    lay = plan.layout
    rel = lambda where: str(location(str(where)).relative_to(lay.root))  # type: ignore[arg-type]  # noqa: E731
    datasets = rel(lay.datasets)
    if task.stage == "convert":
        outs = [rel(o) for o in task.outputs]
        return {"in": [{"rel": o, "optional": True} for o in outs],
                "out": [{"rel": o, "always": True, "complete": "shard"} for o in outs]}  # fmt: skip
    if task.stage == "build":
        shards = [rel(o) for t in plan.stage("convert") for o in t.outputs]
        return {"in": [{"rel": o, "optional": True} for o in shards],
                "out": [{"rel": datasets, "tree": True, "last": ["summary.json"], "delete_extra": True}]}  # fmt: skip
    if task.stage == "train":  # its own run directory (one per run in a campaign)
        own = rel(task.outputs[0])
        return {"in": [{"rel": datasets, "tree": True}, {"rel": own, "tree": True, "optional": True}],
                "out": [{"rel": own, "tree": True, "last": ["history.json"], "always": True}]}  # fmt: skip
    if task.stage == "analyze":
        tests = [
            {"rel": f"{datasets}/{n}", "optional": True}
            for n in (schema.dataset_filename("main", "test"), schema.dataset_filename("cr", "test"), "summary.json")
        ]
        runs = [{"rel": rel(t.outputs[0]), "tree": True} for t in plan.stage("train")]
        return {"in": [*runs, *tests],
                "out": [{"rel": rel(lay.report_dir), "tree": True}, {"rel": rel(lay.exports), "tree": True,
                                                                    "delete_extra": True}]}  # fmt: skip
    if task.stage == "report":
        status_md = rel(lay.report_dir / "status.md")
        return {"in": [], "out": [{"rel": status_md, "always": True},
                                  {"rel": status_md.removesuffix(".md") + ".json", "always": True}]}  # fmt: skip
    raise ValueError(task.stage)


def write_plan(plan: Plan, plan_dir: Path, run_dir: str | None = None) -> Path:
    """Write everything the jobs read into ``plan_dir``; returns ``plan_dir`` (absolute).

    ``run_dir``: the training's ``--run-dir`` as the job sees it (default: the run directory on the
    storage; HTCondor's checkpoint-transfer mode uses a sandbox-relative one). With root:// storage
    the commands name the sandbox's ``storage/`` and ``plan/`` (:func:`sandbox_view`), and every
    task has a ``<index>.stage.json`` (:func:`stage_spec`) for jobs/common.sh to stage by.
    """
    plan_dir = plan_dir.absolute()
    remote = plan.pipeline.remote
    view = sandbox_view(plan) if remote else plan
    seen_dir = Path(SANDBOX_PLAN) if remote else plan_dir  # the plan directory as the commands name it
    lay = plan.layout
    run_dir = run_dir or str(view.layout.run_dir)
    for stage, cfg in stage_configs(view, run_dir).items():
        write_atomic(plan_dir / f"{stage}.yaml", _yaml(cfg))
    sets = {d.name: d for d in plan.pipeline.datasets}
    build_inputs = []
    for t in view.stage("convert"):
        d = sets[t.dataset or ""]
        entries = []
        for src, out in zip(t.inputs, t.outputs, strict=True):
            entry: dict[str, Any] = {"path": src, "type": d.type}
            entry.update({k: getattr(d, k) for k in ("mH", "mS", "dsid") if getattr(d, k) is not None})
            if t.sources:
                entry["out"] = out
            entries.append(entry)
            build_inputs.append({"path": out, **d.build})
        write_atomic(plan_dir / "convert" / f"{t.index}.inputs.yaml", _yaml(entries))
    write_atomic(plan_dir / "build.inputs.yaml", _yaml(build_inputs))
    for t in view.stage("train"):
        if t.run:  # a campaign's run: its own config, naming the storage as the job sees it
            write_atomic(plan_dir / "train" / f"{t.index}.yaml", _yaml(train_config(view, t)))
    for t in view.all():
        for suffix, argv in task_commands(view, t, seen_dir, run_dir).items():
            name = f"{t.index}.{suffix}.args" if suffix else f"{t.index}.args"
            write_atomic(plan_dir / t.stage / name, nul_args(argv))
        write_atomic(plan_dir / t.stage / f"{t.index}.job", t.job + "\n")
    if remote:
        for t in plan.all():
            write_atomic(plan_dir / t.stage / f"{t.index}{STAGE_SUFFIX}", json.dumps(stage_spec(plan, t)) + "\n")
    # status dir, log dir (URLs with root:// storage, which jobs/common.sh then uploads to), storage root
    write_atomic(plan_dir / PATHS_FILE, nul_args([str(lay.status), str(lay.logs), str(lay.root)]))
    doc = {"pipeline": plan.pipeline.model_dump(mode="json"), "tasks": [asdict(t) for t in plan.all()]}
    write_atomic(plan_dir / PLAN_FILE, json.dumps(doc, indent=1) + "\n")
    return plan_dir


def write_indices(plan_dir: Path, known: dict[str, int]) -> None:
    write_atomic(plan_dir / "train" / scan.INDEX_FILE, json.dumps(known, indent=1, sort_keys=True) + "\n")


def keep_indices(plan: Any, plan_dir: Path) -> None:
    """Give ``plan``'s training tasks their indices of earlier submissions into ``plan_dir`` (new runs:
    new indices) and remember them there (see :func:`~crbatch.batch.scan.stable_indices`)."""
    tasks = plan.stage("train")
    if not tasks:
        return
    idx, known = scan.stable_indices([t.job for t in tasks], plan_dir)
    plan.tasks["train"] = sorted(train_tasks(plan.pipeline, plan.layout, idx), key=lambda t: t.index)
    write_indices(plan_dir, known)


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
        t = {**t, "outputs": tuple(t["outputs"]), "sources": tuple(t.get("sources") or ())}
        plan.tasks.setdefault(t["stage"], []).append(Task(**t))
    return plan
