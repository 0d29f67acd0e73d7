"""HTCondor backend: one submit file per stage and a DAGMan DAG for the whole pipeline.

- ``convert.sub`` queues one job per input file: ``queue idx, job from [$(CRBATCH_FIRST:0):$(CRBATCH_END:)]
  convert.items``. ``convert.items`` holds one line per file — its task index and job id, both made
  of safe characters — so no file name ever passes through the submit language. Alone,
  ``condor_submit convert.sub`` converts every file; each DAG node sets the slice to its one line.
- ``build.sub``, ``train.sub`` (GPU request, ``checkpoint_exit_code``), ``analyze.sub``, ``report.sub``.
  A campaign (``train.scan``) has one train node per run, its ``VARS`` naming the run's task index and
  job id, throttled by ``CATEGORY train`` / ``MAXJOBS train`` (``train.resources.throttle``).
- ``pipeline.dag``: one node per convert job (so a bad file fails alone, and the rescue DAG resubmits
  only what failed), ``VARS`` for the slice, ``RETRY node N UNLESS-EXIT 65`` (65: do not retry, see
  jobs/common.sh), ``PARENT/CHILD`` between stages, ``CATEGORY``/``MAXJOBS`` for the convert
  throttle, the status report as ``FINAL``; nodes whose outputs are complete are marked ``DONE``.

Site-specific keys (container attribute, runtime, requirements) come from the site profile
(crbatch/batch/sites.py). Every job runs ``<jobs_dir>/<stage>.sh <plan dir> <index>``.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import ConfigError
from . import codes
from .pipeline import Resources
from .plan import SCRIPTS, STAGES, Plan, Task
from .sites import SiteProfile, check_image

DAG_FILE = "pipeline.dag"
ITEMS_FILE = "convert.items"
TRANSFER_RUN = "run"  # the run directory's name in the job's sandbox (checkpoint: transfer)
_REMAP_UNSAFE = re.compile(r"[\s;=,\"'$]")


def submit_value(text: str) -> str:
    """A value for ``key = value``: one line, ``$`` kept literal (``$(DOLLAR)``), no surrounding blanks."""
    if any(c in text for c in "\n\r\0") or text != text.strip():
        raise ConfigError(f"{text!r}: cannot be written into a submit file (line break or surrounding blanks)")
    return text.replace("$", "$(DOLLAR)")


def _quote_word(word: str) -> str:
    # HTCondor's "new" argument/environment syntax: each word in single quotes, a single quote
    # doubled, a double quote doubled (the whole value is double-quoted); $ must not start a macro.
    if any(c in word for c in "\n\r\0"):
        raise ConfigError(f"{word!r}: a line break cannot be passed through a submit file")
    return "'" + word.replace("'", "''").replace('"', '""').replace("$", "$(DOLLAR)") + "'"


def quote_args(args: list[str], raw: frozenset[int] = frozenset()) -> str:
    """``arguments = ...`` for ``args``; positions in ``raw`` are macros (``$(idx)``) left as they are."""
    return '"' + " ".join(a if i in raw else _quote_word(a) for i, a in enumerate(args)) + '"'


def quote_env(env: dict[str, str]) -> str:
    return '"' + " ".join(f"{k}={_quote_word(v)}" for k, v in env.items()) + '"'


def classad_string(text: str) -> str:
    return '"' + submit_value(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common(plan: Plan, stage: str, plan_dir: Path, jobs_dir: Path, site: SiteProfile, res: Resources,
            extra_env: dict[str, str]) -> list[tuple[str, str]]:  # fmt: skip
    p, lay = plan.pipeline, plan.layout
    if p.remote:  # no shared file system: the scripts and the task's plan files travel with the job
        logs = plan_dir / "logs"
        env = {"CRBATCH_TRANSFERRED": "1", **p.env, **extra_env}
        files = transfer_files(plan, stage, plan_dir, jobs_dir)
        head = [
            ("executable", submit_value(str(jobs_dir / SCRIPTS[stage]))),
            ("transfer_executable", "true"),
            ("transfer_input_files", files),
            ("arguments", quote_args([".", "$(idx)"], raw=frozenset({1}))),
        ]
    else:
        logs = lay.logs / "condor"
        env = {"CRBATCH_JOBS": str(jobs_dir), **p.env, **extra_env}
        head = [
            ("executable", submit_value(str(jobs_dir / SCRIPTS[stage]))),
            # jobs/*.sh source common.sh beside them: run them where they are (shared storage or the image)
            ("transfer_executable", "false"),
            ("arguments", quote_args([str(plan_dir), "$(idx)"], raw=frozenset({1}))),
        ]
    cmds: list[tuple[str, str]] = [
        ("universe", site.universe),
        *head,
        ("environment", quote_env(env)),
        ("output", submit_value(str(logs)) + "/$(job).$(Cluster).$(Process).out"),
        ("error", submit_value(str(logs)) + "/$(job).$(Cluster).$(Process).err"),
        ("log", submit_value(str(plan_dir / "condor.log"))),
        ("request_cpus", str(res.cpus)),
        ("request_memory", f"{res.memory}MB"),
        ("request_disk", f"{res.disk}MB"),
    ]
    if res.gpus:
        cmds.append(("request_gpus", str(res.gpus)))
        if res.gpu_memory:
            cmds.append(("gpus_minimum_memory", str(res.gpu_memory)))
    if p.image:
        value = site.image_value(check_image(p.image))
        if site.container is not None and value is not None:
            v = classad_string(value) if site.container.classad_string else submit_value(value)
            cmds.append((site.container.key, v))
    elif site.universe in ("docker", "container"):
        raise ConfigError(f"site {site.name} runs jobs in the {site.universe} universe: set image in the pipeline")
    cmds += list(site.runtime_commands(res.runtime).items())
    if site.requirements:
        cmds.append(("requirements", site.requirements))
    cmds += [
        ("should_transfer_files", "YES"),
        ("when_to_transfer_output", "ON_EXIT"),
        # Job-level retries for plain condor_submit; DAG nodes set CRBATCH_RETRIES=0 and use RETRY instead.
        ("max_retries", f"$(CRBATCH_RETRIES:{res.retries})"),
        ("retry_until", f"ExitCode == {codes.DO_NOT_RETRY}"),
    ]
    cmds += list(site.commands.items())
    if res.gpus:
        cmds += list(site.gpu_commands.items())
    return cmds


def transfer_files(plan: Plan, stage: str, plan_dir: Path, jobs_dir: Path) -> str:
    """``transfer_input_files`` of a job on root:// storage: common.sh and the task's plan files
    (jobs/common.sh puts them back into a plan directory; HTCondor transfers them flat)."""
    from .plan import PATHS_FILE, PLAN_FILE, STAGE_SUFFIX

    task = "$(idx)"
    names = [f"{stage}/{task}.args", f"{stage}/{task}.job", f"{stage}/{task}{STAGE_SUFFIX}", PATHS_FILE]
    if stage in STAGES:
        names.append(f"{stage}.yaml")
    if stage == "convert":
        names.append(f"convert/{task}.inputs.yaml")
    elif stage == "build":
        names.append("build.inputs.yaml")
    elif stage == "report":
        names.append(PLAN_FILE)
    files = [jobs_dir / "common.sh", *(plan_dir / n for n in names)]
    for f in (jobs_dir, plan_dir):
        if "," in str(f) or str(f) != str(f).strip():
            raise ConfigError(f"{f}: HTCondor's transfer_input_files cannot name a path with ',' or surrounding blanks")
    return ", ".join(submit_value(str(f)).replace("$(DOLLAR)(idx)", "$(idx)") for f in files)


def _transfer_remap(run_dir: Path) -> str:
    if _REMAP_UNSAFE.search(str(run_dir)):
        raise ConfigError(f"{run_dir}: checkpoint: transfer needs a run directory path without blanks, quotes, "
                          "$, ',', ';' or '=' (HTCondor's transfer_output_remaps); use checkpoint: shared")  # fmt: skip
    return f'"{TRANSFER_RUN} = {run_dir}"'


def submit_text(plan: Plan, stage: str, plan_dir: Path, jobs_dir: Path, site: SiteProfile) -> str:
    """The submit file of one stage (``report``: the FINAL node)."""
    p = plan.pipeline
    res = getattr(p, stage).resources if stage in STAGES else Resources(memory=1024, disk=512, runtime=1800)
    extra_env: dict[str, str] = {}
    if stage == "train" and p.train.checkpoint_every:
        extra_env["CRBATCH_CHECKPOINT_EVERY"] = str(p.train.checkpoint_every)
    cmds = _common(plan, stage, plan_dir, jobs_dir, site, res, extra_env)
    if stage == "train":
        cmds.append(("checkpoint_exit_code", str(codes.CHECKPOINT)))
        if p.train.checkpoint == "transfer":
            cmds += [
                ("transfer_checkpoint_files", TRANSFER_RUN),
                ("transfer_output_files", TRANSFER_RUN),
                ("transfer_output_remaps", _transfer_remap(plan.layout.run_dir)),
            ]
    head = [
        f"# generated by `crbatch submit --backend condor` for pipeline {p.name}, site {site.name}: stage {stage}",
        f"# runs {SCRIPTS[stage]} <plan dir> <index>; exit 65 = do not retry, 85 = checkpointed (jobs/common.sh)",
    ]
    body = [f"{k} = {v}" for k, v in cmds]
    if stage == "convert":
        tail = [
            "# one job per input file: line <idx> of convert.items (a DAG node sets CRBATCH_FIRST/END to its line)",
            f"queue idx, job from [$(CRBATCH_FIRST:0):$(CRBATCH_END:)] {ITEMS_FILE}",
        ]
    elif stage == "train":  # one DAG node per run of a campaign; alone, the first run
        first = min(plan.stage(stage), key=lambda t: t.index)
        tail = ["# a DAG node sets CRBATCH_IDX/CRBATCH_JOB to its run (train/<idx>.args in the plan directory)",
                # (a macro default cannot hold '.' or '-': the log files of a lone submit say "train")
                f"idx = $(CRBATCH_IDX:{first.index})", "job = $(CRBATCH_JOB:train)", "queue"]  # fmt: skip
    else:
        tail = ["idx = 0", f"job = {plan.stage(stage)[0].job}", "queue"]
    return "\n".join([*head, *body, *tail]) + "\n"


def items_text(plan: Plan) -> str:
    return "".join(f"{t.index} {t.job}\n" for t in plan.stage("convert"))


def node_name(task: Task) -> str:
    return task.job  # job ids are [A-Za-z0-9._-]: valid DAG node names


def dag_text(plan: Plan, work: dict[str, list[Task]]) -> str:
    """The DAG: every task a node; nodes with nothing to do are DONE."""
    p = plan.pipeline
    todo = {t.job for ts in work.values() for t in ts}
    out = [
        f"# generated by `crbatch submit --backend condor` for pipeline {p.name}",
        "# convert (one node per file) -> build -> train -> analyze; FINAL: the status report.",
        "# After failures: `condor_submit_dag pipeline.dag` runs the rescue DAG (only what failed and what",
        "# depends on it); `crbatch submit` again renders a new DAG with the finished work marked DONE.",
    ]
    for stage in STAGES:
        res = getattr(p, stage).resources
        for t in plan.stage(stage):
            name = node_name(t)
            out.append(f"JOB {name} {stage}.sub" + ("" if t.job in todo else " DONE"))
            vars_ = 'CRBATCH_RETRIES="0"'
            if stage == "convert":
                vars_ = f'CRBATCH_FIRST="{t.index}" CRBATCH_END="{t.index + 1}" ' + vars_
            if stage == "train" and t.run:
                vars_ = f'CRBATCH_IDX="{t.index}" CRBATCH_JOB="{t.job}" ' + vars_
            out.append(f"VARS {name} {vars_}")
            out.append(f"RETRY {name} {res.retries} UNLESS-EXIT {codes.DO_NOT_RETRY}")
            if stage in ("convert", "train") and res.throttle:
                out.append(f"CATEGORY {name} {stage}")
    for stage in ("convert", "train"):  # at most this many jobs of the stage at once (a campaign: GPUs)
        if getattr(p, stage).resources.throttle:
            out.append(f"MAXJOBS {stage} {getattr(p, stage).resources.throttle}")
    for before, after in itertools.pairwise([s for s in STAGES if plan.stage(s)]):
        parents = " ".join(node_name(t) for t in plan.stage(before))
        children = " ".join(node_name(t) for t in plan.stage(after))
        out.append(f"PARENT {parents} CHILD {children}")
    out.append(f"FINAL {node_name(plan.stage('report')[0])} report.sub")
    out.append(f"NODE_STATUS_FILE {DAG_FILE}.status 60")
    return "\n".join(out) + "\n"


def render(plan: Plan, plan_dir: Path, jobs_dir: Path, site: SiteProfile, work: dict[str, list[Task]]) -> list[Path]:
    """Write the submit files, the items list and the DAG into ``plan_dir``; returns their paths."""
    if not site.shared_storage and not plan.pipeline.remote:
        raise ConfigError(
            f"site {site.name} has no shared file system: set storage to a root:// URL (the jobs then stage their "
            f"files in and out; docs/batch.md, 'Grid storage'), not the path {plan.pipeline.storage}"
        )
    files = []
    for stage in (*STAGES, "report"):
        if not plan.stage(stage):  # left out with --until
            continue
        f = plan_dir / f"{stage}.sub"
        f.write_text(submit_text(plan, stage, plan_dir, jobs_dir, site))
        files.append(f)
    (plan_dir / ITEMS_FILE).write_text(items_text(plan))
    dag = plan_dir / DAG_FILE
    dag.write_text(dag_text(plan, work))
    return [*files, plan_dir / ITEMS_FILE, dag]


def submit_command(plan: Plan) -> list[str]:
    # -force: a new DAG replaces an old run's rescue files (the new DAG's DONE marks subsume them)
    return ["condor_submit_dag", "-force", "-batch-name", f"crbatch-{plan.pipeline.name}", DAG_FILE]


def submit(plan: Plan, plan_dir: Path, dry_run: bool) -> int:
    """Run condor_submit_dag where there is one (and not ``dry_run``); else print the command."""
    cmd = submit_command(plan)
    shown = f"cd {shlex.quote(str(plan_dir))} && {shlex.join(cmd)}"
    if dry_run or shutil.which(cmd[0]) is None:
        why = "dry run" if dry_run else "condor_submit_dag is not on the PATH"
        print(f"{why}; to submit, run:\n  {shown}")
        return 0
    print(f"running: {shown}")
    return subprocess.call(cmd, cwd=plan_dir)
