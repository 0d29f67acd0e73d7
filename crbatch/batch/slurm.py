"""Slurm backend: ``sbatch --array`` for the per-file jobs, ``--dependency=afterok`` between stages.

- convert: job arrays (``%`` throttle); ``$SLURM_ARRAY_TASK_ID`` (+ ``CRBATCH_INDEX_OFFSET``, arrays
  are split below Slurm's MaxArraySize) is the task index in the plan directory;
- a campaign's trainings (``train.scan``): one array of GPU jobs, element = the run's task index (``%``:
  ``train.resources.throttle``); an array rather than one job per run because it is one sbatch call,
  one ``afterok`` dependency for the analysis and one line in ``squeue``, and each element is still
  requeued (checkpoint, retry) on its own;
- build, train, analyze: one job each, ``--dependency=afterok:<ids of the stage before>`` and
  ``--kill-on-invalid-dep=yes``, so a failed stage cancels what depends on it;
- train: ``--gres=gpu:N``, ``--signal=B:TERM@T`` (SIGTERM to the batch shell T s before the time
  limit; jobs/train.sh passes it to crbatch, which checkpoints and exits 85) and ``--requeue``
  (train.sh then runs ``scontrol requeue`` and the requeued job resumes from the checkpoint);
- every job is ``--requeue``-able: with ``CRBATCH_REQUEUE=slurm`` the entry script requeues itself
  after a retryable failure, at most ``resources.retries`` times (Slurm has no retry policy of its own);
- report: ``--dependency=afterany`` on everything, the status report whatever happened.

``submit-slurm.sh`` in the plan directory does the same sbatch calls, for reading or by hand.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CrbatchError, ExitCode
from .local import job_environment
from .pipeline import Resources
from .plan import SCRIPTS, Plan, Task

MAX_ARRAY = 1000  # tasks per array (Slurm's default MaxArraySize is 1001: indices 0..1000)
SCRIPT_FILE = "submit-slurm.sh"
IDS_FILE = "slurm-jobs.json"


@dataclass
class Sbatch:
    """One sbatch call: its options, the entry script and its arguments; ``after`` names earlier calls."""

    name: str
    stage: str
    options: list[str]
    argv: list[str]
    after: list[str] = field(default_factory=list)
    after_kind: str = "afterok"


def array_spec(indices: list[int], throttle: int | None) -> str:
    """``[0,1,2,5,7,8]`` → ``0-2,5,7-8`` (+ ``%throttle``)."""
    parts, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts) + (f"%{throttle}" if throttle else "")


def _pattern_safe(path: Path) -> str:
    return str(path).replace("%", "%%")  # sbatch expands %j, %A, ... in --output


def _resources(p_opts, res: Resources, gpu: bool) -> list[str]:
    out = [f"--cpus-per-task={res.cpus}", f"--mem={res.memory}M", f"--time={max(1, math.ceil(res.runtime / 60))}"]
    part = (p_opts.gpu_partition or p_opts.partition) if gpu else p_opts.partition
    if part:
        out.append(f"--partition={part}")
    if p_opts.account:
        out.append(f"--account={p_opts.account}")
    if p_opts.qos:
        out.append(f"--qos={p_opts.qos}")
    return out + list(p_opts.options)


def sbatch_calls(plan: Plan, plan_dir: Path, jobs_dir: Path, work: dict[str, list[Task]]) -> list[Sbatch]:
    """The sbatch calls for the tasks in ``work`` (finished tasks are left out)."""
    p, lay = plan.pipeline, plan.layout
    logs = plan_dir / "logs" if p.remote else lay.logs / "slurm"  # sbatch writes local files only
    calls: list[Sbatch] = []
    prev: list[str] = []
    base = ["--parsable", f"--chdir={plan_dir}", "--requeue"]
    for stage in ("convert", "build", "train", "analyze"):
        tasks = work.get(stage, [])
        if not tasks:
            continue
        res = getattr(p, stage).resources
        export = f"--export=ALL,CRBATCH_REQUEUE=slurm,CRBATCH_RETRIES={res.retries}"
        opts = [*base, f"--job-name=crb-{p.name}-{stage}", *_resources(p.slurm, res, res.gpus > 0)]
        if prev:
            opts.append("--kill-on-invalid-dep=yes")
        script = str(jobs_dir / SCRIPTS[stage])
        names: list[str] = []
        if stage == "convert":
            idx = sorted(t.index for t in tasks)
            chunks: list[list[int]] = []
            for i in idx:
                if not chunks or i - chunks[-1][0] >= MAX_ARRAY:
                    chunks.append([])
                chunks[-1].append(i)
            for k, chunk in enumerate(chunks):
                off = chunk[0]
                calls.append(Sbatch(f"convert_{k}", stage, [
                    *opts, f"--array={array_spec([i - off for i in chunk], res.throttle)}",
                    f"{export},CRBATCH_INDEX_OFFSET={off}", f"--output={_pattern_safe(logs)}/%x-%A_%a.out",
                ], [script, str(plan_dir)], list(prev)))  # fmt: skip
                names.append(f"convert_{k}")
        elif stage == "train" and any(t.run for t in tasks):
            # A campaign: one array of GPU jobs, element = task index (stable per plan directory,
            # crbatch/batch/scan.py), so a requeued element resumes its own run; % = train throttle.
            extra = [export + f",CRBATCH_MAX_REQUEUES={p.train.max_requeues}",
                     f"--array={array_spec(sorted(t.index for t in tasks), res.throttle)}",
                     f"--output={_pattern_safe(logs)}/%x-%A_%a.out", f"--signal=B:TERM@{p.slurm.signal_before}"]  # fmt: skip
            if res.gpus:
                extra.append(f"--gres=gpu:{res.gpus}")
            calls.append(Sbatch(stage, stage, [*opts, *extra], [script, str(plan_dir)], list(prev)))
            names.append(stage)
        else:
            extra = [export, f"--output={_pattern_safe(logs)}/%x-%j.out"]
            if stage == "train":
                if res.gpus:
                    extra.append(f"--gres=gpu:{res.gpus}")
                extra += [f"--signal=B:TERM@{p.slurm.signal_before}"]
                extra[0] += f",CRBATCH_MAX_REQUEUES={p.train.max_requeues}"
            calls.append(Sbatch(stage, stage, [*opts, *extra], [script, str(plan_dir)], list(prev)))
            names.append(stage)
        prev = names
    if calls:
        rep = Resources(memory=1024, disk=512, runtime=1800)
        calls.append(Sbatch("report", "report", [
            *base, f"--job-name=crb-{p.name}-report", *_resources(p.slurm, rep, False),
            f"--output={_pattern_safe(logs)}/%x-%j.out",
        ], [str(jobs_dir / SCRIPTS["report"]), str(plan_dir)], [c.name for c in calls], "afterany"))  # fmt: skip
    return calls


def _env_exports(env: dict[str, str]) -> dict[str, str]:
    keys = ["CRBATCH", "CRBATCH_PYTHON", "CRBATCH_JOBS"]
    return {k: env[k] for k in keys if k in env}


def script_text(plan: Plan, plan_dir: Path, calls: list[Sbatch], env: dict[str, str]) -> str:
    """A bash script making the same sbatch calls (every value shell-quoted)."""
    q = shlex.quote
    lines = [
        "#!/usr/bin/env bash",
        f"# generated by `crbatch submit --backend slurm` for pipeline {plan.pipeline.name}.",
        "# Submits every job below again when run; `crbatch submit` instead skips the finished work.",
        "set -euo pipefail",
        f"cd {q(str(plan_dir))}",
    ]
    for k, v in {**_env_exports(env), **plan.pipeline.env}.items():
        lines.append(f"export {k}={q(v)}")
    for c in calls:
        dep = ""
        if c.after:
            dep = f'--dependency={c.after_kind}:"' + ":".join(f"${{{a}}}" for a in c.after) + '" '
        lines.append(f"{c.name}=$(sbatch {dep}{shlex.join(c.options + c.argv)})")
        lines.append(f"{c.name}=${{{c.name}%%;*}}")
        lines.append(f'echo "{c.name}: ${{{c.name}}}"')
    return "\n".join(lines) + "\n"


def submit(plan: Plan, plan_dir: Path, jobs_dir: Path, work: dict[str, list[Task]], dry_run: bool) -> int:
    """sbatch the calls in order (where sbatch exists and not ``dry_run``); else print them."""
    calls = sbatch_calls(plan, plan_dir, jobs_dir, work)
    env = job_environment(plan, jobs_dir, "slurm")
    script = plan_dir / SCRIPT_FILE
    script.write_text(script_text(plan, plan_dir, calls, env))
    os.chmod(script, 0o755)
    if not calls:
        print("nothing to submit: every job is done (crbatch status shows the outputs)")
        return 0
    if dry_run or shutil.which("sbatch") is None:
        why = "dry run" if dry_run else "sbatch is not on the PATH"
        print(f"{why}; the sbatch calls are in {script}:")
        print(script.read_text(), end="")
        return 0
    ids: dict[str, str] = {}
    for c in calls:
        dep = [f"--dependency={c.after_kind}:" + ":".join(ids[a] for a in c.after)] if c.after else []
        r = subprocess.run(["sbatch", *dep, *c.options, *c.argv], env=env, cwd=plan_dir, capture_output=True, text=True)
        if r.returncode != 0:
            raise CrbatchError(f"sbatch ({c.name}) failed: {r.stderr.strip()}; submitted so far: {ids}",
                               ExitCode.TRANSIENT)  # fmt: skip
        ids[c.name] = r.stdout.strip().split(";")[0]
        print(f"submitted {c.name}: Slurm job {ids[c.name]}")
    (plan_dir / IDS_FILE).write_text(json.dumps(ids, indent=1) + "\n")
    return 0
