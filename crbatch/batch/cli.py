"""Command lines of ``crbatch submit``, ``crbatch status`` and ``crbatch collect``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..config import parse_set_items
from ..errors import ConfigError, ExitCode, InputMissing
from .plan import STAGES

log = logging.getLogger(__name__)

BACKENDS = ("local", "condor", "slurm")
DEFAULT_JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"
IMAGE_JOBS_DIR = Path("/opt/crbatch/jobs")  # where the Dockerfile and apptainer.def install jobs/


def register(sub) -> None:
    """submit, status, collect and storage (all at once; crbatch.cli registers them lazily, one by one)."""
    from . import staging

    register_submit(sub)
    register_status(sub)
    register_collect(sub)
    staging.register(sub)


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline key, also nested ones (train.options.epochs=5); VALUE is YAML")  # fmt: skip


def register_submit(sub) -> None:
    p = sub.add_parser(
        "submit",
        help="run a pipeline YAML as batch jobs: local (default), HTCondor DAG or Slurm",
        description="Render a pipeline (datasets, storage, image, site, per-stage options and resources; "
        "docs/batch.md) into jobs — one convert job per input file, then build, train (GPU), analyze + export — "
        "and run them: `local` on this machine (blocks until done), `condor` as a DAGMan DAG (runs "
        "condor_submit_dag when it is on the PATH, else prints the command), `slurm` with sbatch. Work whose "
        "outputs are complete on the storage is not redone. Exit codes: see `crbatch exit-codes`.",
    )
    p.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml")
    p.add_argument("--backend", choices=BACKENDS, default="local", help="where the jobs run (default: local)")
    p.add_argument("--dry-run", action="store_true", help="render the files and show what would run; submit nothing")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="where the rendered files go; the jobs must see it (default: <storage>/batch/<name>/<backend>)")  # fmt: skip
    p.add_argument("--until", choices=STAGES, default="analyze",
                   help="run the stages up to this one only (default: analyze, the whole pipeline)")  # fmt: skip
    p.add_argument("--workers", type=int, default=0, metavar="N", help="local: jobs at once (default: the CPU count)")
    p.add_argument("--site", help="HTCondor site profile (overrides the pipeline's site)")
    p.add_argument("--jobs-dir", type=Path, metavar="DIR",
                   help="jobs/*.sh as the workers see them (overrides the pipeline's jobs_dir)")  # fmt: skip
    _set_arg(p)
    p.set_defaults(func=run_submit)


def register_status(sub) -> None:
    p = sub.add_parser(
        "status",
        help="what is done, failed (with the error), running or missing — from the storage alone",
        description="Show every stage's jobs as done / running / checkpointed / failed / missing, read from "
        "the shared storage only (completion marks, the status files jobs/*.sh write, the training history): "
        "the errors of failed jobs, the training's epoch progress, the report path. TARGET: a pipeline "
        "YAML or a plan directory written by `crbatch submit`. With --check, exit 20 unless everything is done.",
    )
    p.add_argument("target", type=Path, metavar="PIPELINE.yaml|PLAN_DIR")
    p.add_argument("--all", action="store_true", help="list every job, not only those that are not done")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", type=Path, metavar="FILE.md", help="also write the status as Markdown (and FILE.json)")
    p.add_argument("--check", action="store_true", help="exit 20 unless every job is done")
    _set_arg(p)
    p.set_defaults(func=run_status)


def register_collect(sub) -> None:
    p = sub.add_parser(
        "collect",
        help="gather a pipeline's reports from the shared storage into one folder",
        description="Copy the analysis report, the exported model, the training history and plots, the build "
        "summary, the status of every job and the errors and logs of failed jobs into one folder.",
    )
    p.add_argument("target", type=Path, metavar="PIPELINE.yaml|PLAN_DIR")
    p.add_argument("--output-dir", type=Path, metavar="DIR", help="default: ./<pipeline name>-results")
    _set_arg(p)
    p.set_defaults(func=run_collect)


def _overrides(items: list[str]) -> dict[str, Any]:
    return parse_set_items(list(items))


def load_target(target: Path, sets: list[str], until: str = "analyze"):
    """A plan from a pipeline YAML (inputs expanded now) or from a plan directory / plan.json."""
    from .pipeline import load_pipeline
    from .plan import PLAN_FILE, load_plan, make_plan

    if target.is_dir() or target.name == PLAN_FILE:
        if sets:
            raise ConfigError("--set applies to a pipeline YAML, not to a rendered plan")
        return load_plan(target)
    if not target.exists():
        raise InputMissing(f"{target}: no such pipeline file or plan directory")
    return make_plan(load_pipeline(target, _overrides(sets)), until)


def jobs_dir_for(args: argparse.Namespace, plan, backend: str) -> Path:
    """Where the workers find jobs/*.sh: given, else the crbatch image's copy for containerised HTCondor
    jobs (the Dockerfile installs them in /opt/crbatch/jobs), else this checkout's jobs/."""
    jobs = args.jobs_dir or plan.pipeline.jobs_dir
    if jobs is None and backend == "condor" and plan.pipeline.image and not plan.pipeline.remote:
        log.info("jobs_dir: %s (the crbatch image's copy; set jobs_dir for another image)", IMAGE_JOBS_DIR)
        return IMAGE_JOBS_DIR
    # A source checkout has jobs/ beside the package; an installed image sets $CRBATCH_JOBS.
    jobs = Path(os.path.abspath(jobs or os.environ.get("CRBATCH_JOBS") or DEFAULT_JOBS_DIR))
    missing = [s for s in ("common.sh", "convert.sh") if not (jobs / s).is_file()]
    # not on this machine: cannot check (with root:// storage HTCondor transfers this machine's copy)
    in_image = backend == "condor" and plan.pipeline.image is not None and not plan.pipeline.remote
    if missing and not in_image:
        raise ConfigError(f"{jobs}: no jobs/*.sh entry scripts here; set jobs_dir in the pipeline or --jobs-dir")
    return jobs


def default_plan_dir(plan, backend: str) -> Path:
    """``<storage>/batch/<name>/<backend>``; with root:// storage a local directory,
    ``./crbatch-plans/<name>/<backend>`` (the submit side keeps the plan; jobs get it by file transfer
    or see it on the cluster's shared home)."""
    if plan.pipeline.remote:
        return Path("crbatch-plans") / plan.pipeline.name / backend
    return plan.layout.plan_dir(backend)


def scheduler_logs(plan, plan_dir: Path, backend: str) -> Path:
    """Where the scheduler writes the jobs' own stdout/stderr: ``<storage>/logs/<name>/<backend>/``; with
    root:// storage (a scheduler writes only local files) ``<plan dir>/logs/``."""
    return plan_dir / "logs" if plan.pipeline.remote else plan.layout.logs / backend


def run_submit(args: argparse.Namespace) -> int:
    from . import condor, local, slurm
    from .plan import write_plan
    from .sites import load_site
    from .status import collect_status, render_text, todo

    plan = load_target(args.pipeline, args.set, args.until)
    p = plan.pipeline
    jobs = jobs_dir_for(args, plan, args.backend)
    plan_dir = Path(os.path.abspath(args.output_dir or default_plan_dir(plan, args.backend)))
    site = load_site(args.site or p.site) if args.backend == "condor" else None
    from .plan import keep_indices

    keep_indices(plan, plan_dir)  # a requeued training of an earlier submission still finds its run
    states = collect_status(plan)
    work = todo(plan, states)
    running = [s.job for s in states.values() if s.state == "running"]
    if running:
        log.warning("%d job(s) look running (%s%s); their tasks are submitted again — safe, outputs are atomic",
                    len(running), ", ".join(running[:3]), ", ..." if len(running) > 3 else "")  # fmt: skip
    n_todo = sum(len(v) for v in work.values())
    log.info("pipeline %s: %d job(s), %d to run; storage %s", p.name, len(plan.all()) - 1, n_todo, plan.layout.root)
    run_dir = None
    if args.backend == "condor" and p.train.checkpoint == "transfer":
        run_dir = condor.TRANSFER_RUN
    write_plan(plan, plan_dir, run_dir)
    print(f"plan: {plan_dir}")
    # The schedulers write their own stdout/stderr files there and fail a job whose directory is missing.
    sched_logs = scheduler_logs(plan, plan_dir, args.backend)
    try:
        sched_logs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("cannot create %s (%s): create it where the scheduler can write, or jobs will fail", sched_logs, e)
    if args.backend == "condor":
        assert site is not None
        for f in condor.render(plan, plan_dir, jobs, site, work):
            log.info("wrote %s", f)
        return condor.submit(plan, plan_dir, args.dry_run)
    if args.backend == "slurm":
        return slurm.submit(plan, plan_dir, jobs, work, args.dry_run)
    if args.dry_run:
        for stage, tasks in work.items():
            print(
                f"{stage}: {len(tasks)} job(s) to run" + (": " + ", ".join(t.job for t in tasks[:5]) if tasks else "")
            )
        return 0
    workers = args.workers or len(os.sched_getaffinity(0))
    rc = local.run_local(plan, plan_dir, jobs, workers)
    print(render_text(plan, collect_status(plan)), end="")
    return rc


def run_status(args: argparse.Namespace) -> int:
    from .status import as_json, collect_status, complete, render_text

    plan = load_target(args.target, args.set)
    states = collect_status(plan)
    if args.json:
        print(json.dumps(as_json(plan, states), indent=1))
    else:
        print(render_text(plan, states, show_all=args.all), end="")
    if args.out:
        from .plan import write_atomic

        write_atomic(args.out, render_text(plan, states, show_all=True, markdown=True))
        write_atomic(args.out.with_suffix(".json"), json.dumps(as_json(plan, states), indent=1) + "\n")
    if args.check and not complete(states):
        return int(ExitCode.TRANSIENT)
    return 0


def run_collect(args: argparse.Namespace) -> int:
    from .collect import collect

    plan = load_target(args.target, args.set)
    out = args.output_dir or Path(f"{plan.pipeline.name}-results")
    got = collect(plan, out)
    if not got.get("report"):
        log.warning("no report yet on the storage (crbatch status shows why)")
    print(f"collected: {out}")
    return 0
