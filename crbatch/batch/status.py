"""What is done, failed, running or missing — from the shared storage alone, no scheduler query.

Four sources, all on the storage (crbatch/batch/layout.py):
- completion marks of the outputs (a shard or dataset with ``complete`` set, all datasets of one
  build; a run whose history has every epoch; the analysis report and the exports);
- the output locks (crbatch.locks): a run or dataset directory whose lock is held is being written
  by the process recorded in it (host, pid, start), whatever the status file says;
- the status file each ``jobs/*.sh`` writes atomically when a job starts and ends (state, crbatch's
  exit code, attempt, host, scheduler id, log path) and the ``.err`` file with the error lines;
- the training's ``history.json`` (epochs done) and ``config.yaml`` (epochs wanted).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import locks, schema, storage
from ..errors import DO_NOT_RETRY, EXIT_CODE_HELP, ExitCode
from .plan import STAGES, Plan, Task

STATES = ("done", "running", "checkpointed", "failed", "missing")


@dataclass
class JobStatus:
    job: str
    stage: str
    state: str  # one of STATES
    detail: str = ""  # error message, training progress, ...
    exit: int | None = None  # crbatch's exit code of the last attempt
    retry: bool | None = None  # whether retrying can help (None: not failed)
    attempts: int = 0
    host: str = ""
    scheduler: str = ""
    since: float | None = None  # start of the last attempt (epoch seconds)
    log: str = ""
    error: list[str] | None = None  # the .err lines
    epochs: tuple[int, int] | None = None  # train: (done, wanted)


def read_status_file(path: Path) -> dict[str, str] | None:
    """``key=value`` lines of a job's status file, or None when there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return None
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v
    return out


def _int(v: str | None, default: int | None = None) -> int | None:
    try:
        return int(v) if v is not None else default
    except ValueError:
        return default


def epochs_done(run_dir: Path | storage.RemotePath) -> int:
    """Epochs a run has finished (the length of its history.json), 0 when none."""
    try:
        hist = json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return 0
    ep = hist.get("epoch") if isinstance(hist, dict) else None
    return len(ep) if isinstance(ep, list) else 0


def output_done(plan: Plan, task: Task) -> bool:
    """Whether the task's outputs are all there and complete (the job would do nothing)."""
    p, lay = plan.pipeline, plan.layout
    if task.stage == "convert":  # every shard of the task (several with convert.files_per_job)
        return all(storage.is_complete(storage.location(o), "shard") for o in task.outputs)
    if task.stage == "build":
        return _datasets_done(lay.datasets, ["main"] + (["cr"] if any(d.type == "data" for d in p.datasets) else []))
    if task.stage == "train":
        return epochs_done(storage.location(task.outputs[0])) >= epochs_wanted(plan, task)
    if task.stage == "analyze":
        if not lay.report.is_file():
            return False
        return not p.analyze.export.enabled or any(lay.exports.glob("*.preprocessing.json"))
    return False


def epochs_wanted(plan: Plan, task: Task) -> int:
    """The epochs a training task runs (a campaign may scan ``epochs``)."""
    from .plan import point_of

    return plan.pipeline.train.epochs_of(point_of(plan.pipeline, task))


def _datasets_done(directory: Path | storage.RemotePath, roles: list[str]) -> bool:
    """Every dataset of ``roles`` complete, all from one build (no other build's files beside them),
    and ``summary.json`` of that build: a build killed between its final renames is not done."""
    from ..build.consistency import build_ids

    files = [directory / schema.dataset_filename(r, s) for r in roles for s in schema.SPLITS]
    if not all(storage.is_complete(f, "dataset") for f in files):
        return False
    ids = set(
        (remote_build_ids(directory) if isinstance(directory, storage.RemotePath) else build_ids(directory)).values()
    )
    try:
        summary = json.loads((directory / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return len(ids) == 1 and isinstance(summary, dict) and summary.get("build_id") in ids


def remote_build_ids(directory: storage.RemotePath) -> dict[str, str]:
    """:func:`crbatch.build.consistency.build_ids` of a directory on root:// storage (read in place)."""
    import h5py

    out = {}
    for r in schema.DATASET_ROLES:
        for sp in schema.SPLITS:
            f = directory / schema.dataset_filename(r, sp)
            try:
                with storage.h5_source(f) as src, h5py.File(src, "r") as h:
                    v = h.attrs.get(schema.A_BUILD_ID)
            except (OSError, ValueError, RuntimeError):
                continue
            if v is not None:
                out[f.name] = v.decode() if isinstance(v, bytes) else str(v)
    return out


def _local_pid_dead(scheduler: str, host: str) -> bool:
    """A ``local:<pid>`` job on this host whose process is gone (killed without writing its status)."""
    kind, _, pid = scheduler.partition(":")
    if kind != "local" or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def output_dir(plan: Plan, task: Task) -> Path | storage.RemotePath | None:
    """The directory a task's process locks while it writes (train: the run, build: the datasets)."""
    if task.stage == "train":
        return storage.location(task.outputs[0])
    return {"build": plan.layout.datasets}.get(task.stage)


def job_status(plan: Plan, task: Task) -> JobStatus:
    lay = plan.layout
    sf = read_status_file(lay.status_file(task.job)) or {}
    st = JobStatus(task.job, task.stage, "missing")
    st.attempts = _int(sf.get("attempt"), 0) or 0
    st.host, st.scheduler, st.log = sf.get("host", ""), sf.get("scheduler", ""), sf.get("log", "")
    st.since = _int(sf.get("start"))
    st.exit = _int(sf.get("exit"))
    recorded = sf.get("state", "")
    if task.stage == "train":
        st.epochs = (epochs_done(storage.location(task.outputs[0])), epochs_wanted(plan, task))
        st.detail = f"epoch {st.epochs[0]}/{st.epochs[1]}"
    done = output_done(plan, task)
    if recorded == "running" and _local_pid_dead(st.scheduler, st.host):
        recorded = "done" if done else "failed"
        if not done:
            st.detail, st.retry = "lost: its process is gone (killed?)" + (f"; {st.detail}" if st.detail else ""), True
    if recorded == "running":
        st.state = "running"
    elif done:
        st.state = "done"
    elif recorded in ("failed", "checkpointed"):
        st.state = recorded
    elif recorded == "done":  # the job finished but its output is gone or incomplete now
        st.state, st.detail = "missing", "output removed or incomplete since the job ran"
    locked = output_dir(plan, task)
    # flock locks do not exist on root:// storage (crbatch.storage): a job there locks its sandbox only
    holder = locks.holder(locked) if isinstance(locked, Path) else None
    if holder is not None:  # a live process writes the output (e.g. one left by a killed `submit`)
        assert locked is not None  # the holder is of this lock
        st.state, st.retry, st.host, st.since = "running", None, holder.host, holder.start
        held = f"{locked.name} locked by {holder.describe()}"
        st.detail = f"{st.detail}; {held}" if task.stage == "train" and st.epochs else held
        return st
    if st.state == "failed":
        try:
            st.error = [ln for ln in lay.err_file(task.job).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            st.error = []
        if st.exit is not None and st.retry is None:
            st.retry = st.exit not in {int(c) for c in DO_NOT_RETRY}
            try:
                meaning = EXIT_CODE_HELP[ExitCode(st.exit)]
            except ValueError:
                meaning = "killed by a signal" if st.exit > 128 else "unknown exit code"
            st.detail = f"exit {st.exit}: {meaning}" + (f"; {st.detail}" if st.detail else "")
    return st


def collect_status(plan: Plan) -> dict[str, JobStatus]:
    return {t.job: job_status(plan, t) for s in STAGES for t in plan.stage(s)}


def todo(plan: Plan, states: dict[str, JobStatus]) -> dict[str, list[Task]]:
    """Tasks to (re)run: those not done, and every task of a stage after one that reruns (its inputs change)."""
    out: dict[str, list[Task]] = {}
    rerun_upstream = False
    for stage in STAGES:
        tasks = [t for t in plan.stage(stage) if rerun_upstream or states[t.job].state != "done"]
        out[stage] = tasks
        rerun_upstream = rerun_upstream or bool(tasks)
    return out


def complete(states: dict[str, JobStatus]) -> bool:
    return all(s.state == "done" for s in states.values())


# --- rendering -----------------------------------------------------------------------------------


def _age(since: float | None) -> str:
    if since is None:
        return ""
    s = max(0, int(time.time() - since))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def summary_rows(plan: Plan, states: dict[str, JobStatus]) -> list[dict[str, Any]]:
    rows = []
    for stage in (s for s in STAGES if plan.stage(s)):
        sts = [states[t.job] for t in plan.stage(stage)]
        row: dict[str, Any] = {"stage": stage, "jobs": len(sts)}
        row.update({s: sum(1 for x in sts if x.state == s) for s in STATES})
        rows.append(row)
    return rows


def _line(st: JobStatus) -> str:
    bits = [f"{st.job}: {st.state}"]
    if st.detail:
        bits.append(st.detail)
    if st.state == "running":
        bits.append(f"on {st.host or '?'} for {_age(st.since)}, attempt {st.attempts} ({st.scheduler})")
    elif st.state == "failed":
        hint = "" if st.retry or "do not retry" in st.detail else ", do not retry: fix the input or config"
        bits.append(f"attempt {st.attempts}{hint}")
    return " — ".join(bits)


def render_text(plan: Plan, states: dict[str, JobStatus], show_all: bool = False, markdown: bool = False) -> str:
    """The status table and the jobs that need attention (every job with ``show_all``)."""
    p, lay = plan.pipeline, plan.layout
    out = []
    if markdown:
        out += [
            f"# Pipeline {p.name}: status",
            "",
            f"Storage: `{lay.root}`; written {time.strftime('%Y-%m-%d %H:%M:%S %z')}.",
            "",
        ]
        out += ["| stage | jobs | " + " | ".join(STATES) + " |", "|---|---:|" + "---:|" * len(STATES)]
        for r in summary_rows(plan, states):
            out.append(f"| {r['stage']} | {r['jobs']} | " + " | ".join(str(r[s] or "") for s in STATES) + " |")
    else:
        out.append(f"pipeline {p.name}   storage {lay.root}")
        out.append(f"{'stage':<9}{'jobs':>6}" + "".join(f"{s:>14}" for s in STATES))
        for r in summary_rows(plan, states):
            out.append(f"{r['stage']:<9}{r['jobs']:>6}" + "".join(f"{r[s] or '':>14}" for s in STATES))
    camp = campaign_rows(plan, states)
    if camp:  # a campaign at a glance: one line per run
        width = max(len(r["run"]) for r in camp)
        done = sum(r["state"] == "done" for r in camp)
        if markdown:
            out += ["", f"Campaign: {len(camp)} runs, {done} done.", "", "| run | options | epochs | state |",
                    "|---|---|---:|---|"]  # fmt: skip
            out += [f"| {r['run']} | {r['options']} | {r['epochs']} | {r['state']} |" for r in camp]
        else:
            out += ["", f"campaign: {len(camp)} runs, {done} done", f"  {'run':<{width}}  {'epochs':>9}  state"]
            out += [f"  {r['run']:<{width}}  {r['epochs']:>9}  {r['state']}" for r in camp]
    listed = [st for st in states.values() if show_all or st.state != "done" or (st.stage == "train" and not camp)]
    order = {s: i for i, s in enumerate(("failed", "running", "checkpointed", "missing", "done"))}
    listed.sort(key=lambda st: (order[st.state], STAGES.index(st.stage), st.job))
    if listed:
        out.append("")
        for st in listed:
            out.append(("- " if markdown else "  ") + _line(st))
            for ln in (st.error or [])[-3:]:
                out.append(("    " if markdown else "      | ") + ln.strip())
            if st.state == "failed" and st.log:
                out.append(("    " if markdown else "      ") + f"log: {st.log}")
    if lay.report.is_file():
        out += ["", f"report: {lay.report}"]
    return "\n".join(out) + "\n"


def campaign_rows(plan: Plan, states: dict[str, JobStatus]) -> list[dict[str, Any]]:
    """Per run of a campaign (``train.scan``): name, options, epochs done/wanted, state; [] without scan."""
    from .plan import point_of

    rows = []
    for t in plan.stage("train"):
        if not t.run:
            continue
        st = states[t.job]
        done, want = st.epochs or (0, 0)
        rows.append({"run": t.run, "options": point_of(plan.pipeline, t).label(), "epochs": f"{done}/{want}",
                     "epochs_done": done, "epochs_wanted": want, "state": st.state, "run_dir": t.outputs[0]})  # fmt: skip
    return rows


def as_json(plan: Plan, states: dict[str, JobStatus]) -> dict[str, Any]:
    return {
        "pipeline": plan.pipeline.name,
        "storage": str(plan.layout.root),
        "complete": complete(states),
        "stages": summary_rows(plan, states),
        "jobs": [asdict(s) for s in states.values()],
        "campaign": campaign_rows(plan, states),
        "report": str(plan.layout.report) if plan.layout.report.is_file() else None,
    }
