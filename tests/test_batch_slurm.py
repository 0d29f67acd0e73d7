"""Slurm backend: the sbatch calls (always), and the whole pipeline on a real one-node cluster
(.ci/slurm-up.sh; skipped when no cluster answers): convert array → build → train (fake GPU gres) →
analyze + export; then a training killed mid-run (SIGTERM to the batch shell) that checkpoints,
requeues itself and resumes from its checkpoint."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from batch_helpers import JOBS, simple_plan

from crbatch import cli
from crbatch.batch import slurm
from crbatch.batch.plan import write_plan
from crbatch.batch.status import read_status_file


def test_array_spec():
    assert slurm.array_spec([0, 1, 2, 5, 7, 8], None) == "0-2,5,7-8"
    assert slurm.array_spec([3], 4) == "3%4"


def test_sbatch_calls(tmp_path):
    plan = simple_plan(tmp_path, [f"f{i}.root" for i in range(5)], convert={"resources": {"throttle": 2}},
                       train={"resources": {"gpus": 2, "runtime": "90m"}}, slurm={"partition": "cpu",
                       "gpu_partition": "gpu", "account": "atlas", "options": ["--constraint=a100"]})  # fmt: skip
    plan_dir = write_plan(plan, tmp_path / "plan")
    work = {s: plan.stage(s) for s in plan.tasks}
    work["convert"] = [t for t in work["convert"] if t.index != 2]  # file 2 is converted already
    calls = {c.name: c for c in slurm.sbatch_calls(plan, plan_dir, JOBS, work)}
    assert list(calls) == ["convert_0", "build", "train", "analyze", "report"]
    conv = calls["convert_0"]
    assert "--array=0-1,3-4%2" in conv.options and conv.argv == [str(JOBS / "convert.sh"), str(plan_dir)]
    assert "--partition=cpu" in conv.options and "--account=atlas" in conv.options
    assert "--constraint=a100" in conv.options and not conv.after
    train = calls["train"]
    assert {"--gres=gpu:2", "--partition=gpu", "--time=90", "--requeue", "--kill-on-invalid-dep=yes"} <= set(
        train.options
    )
    assert any(o.startswith("--signal=B:TERM@") for o in train.options) and train.after == ["build"]
    assert calls["report"].after_kind == "afterany" and calls["report"].after == list(calls)[:-1]
    # nothing input-derived in the generated script
    text = slurm.script_text(plan, plan_dir, list(calls.values()), {"CRBATCH": "/x y/crbatch"})
    assert "f0" not in text and "'/x y/crbatch'" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_arrays_split_below_max_array_size(tmp_path):
    plan = simple_plan(tmp_path, ["a.root", "b.root", "c.root", "d.root"])
    plan_dir = write_plan(plan, tmp_path / "plan")
    orig = slurm.MAX_ARRAY
    slurm.MAX_ARRAY = 2
    try:
        calls = slurm.sbatch_calls(plan, plan_dir, JOBS, {"convert": plan.stage("convert")})
    finally:
        slurm.MAX_ARRAY = orig
    conv = [c for c in calls if c.stage == "convert"]
    assert [next(o for o in c.options if o.startswith("--array")) for c in conv] == ["--array=0-1", "--array=0-1"]
    assert any("CRBATCH_INDEX_OFFSET=2" in o for o in conv[1].options)


# --- on a real cluster ------------------------------------------------------------------------------


@functools.cache
def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and any(s.strip() in ("idle", "mixed", "allocated") for s in r.stdout.split())


needs_cluster = pytest.mark.skipif(not _cluster_up(), reason="no Slurm cluster answers (start one: .ci/slurm-up.sh)")


def crbatch(*args) -> int:
    return cli.main(["-q", *map(str, args)])


def _jobs(plan_dir: Path) -> dict[str, str]:
    return json.loads((plan_dir / slurm.IDS_FILE).read_text())


def _wait_gone(ids: list[str], timeout: float = 300) -> None:
    """Until none of the jobs is pending or running."""
    t0 = time.monotonic()
    while True:
        r = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True)
        if r.returncode == 0 and not r.stdout.strip():
            return
        if time.monotonic() - t0 > timeout:
            subprocess.run(["scancel", *ids])
            raise TimeoutError(f"Slurm jobs still queued after {timeout} s:\n{r.stdout}")
        time.sleep(1)


@pytest.fixture(scope="module")
def slurm_pipeline(tmp_path_factory, synth_file):
    """A small synthetic production and its pipeline YAML (tiny resources, one fake GPU)."""
    pytest.importorskip("keras")
    if not _cluster_up():
        pytest.skip("no Slurm cluster")
    base = tmp_path_factory.mktemp("slurm")
    sets = []
    for name, typ, events, seed, mH, mS in (("sig", "sig", 600, 21, 125.0, 55.0), ("qcd", "qcd", 700, 22, None, None),
                                           ("bib", "bib", 800, 23, None, None), ("data", "data", 700, 24, None, None)):  # fmt: skip
        d = {"name": name, "type": typ, "files": [str(synth_file(typ, events, seed, mH, mS))]}
        if mH:
            d.update(mH=mH, mS=mS)
        sets.append(d)
    small = {"cpus": 1, "memory": "1 GB", "runtime": "20m", "retries": 1}
    doc = {
        "name": "sl", "storage": str(base / "storage"), "datasets": sets,
        "convert": {"resources": small},
        "build": {"options": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "resources": small},
        "train": {"options": {"epochs": 1, "batch_size": 64, "eval_batch_size": 1024},
                  "resources": {**small, "gpus": 1}},
        "analyze": {"export": {"check_jets": 16}, "resources": small},
    }  # fmt: skip
    y = base / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc, sort_keys=False))
    return y


@needs_cluster
@pytest.mark.slow
def test_pipeline_through_slurm(slurm_pipeline, capsys):
    y = slurm_pipeline
    assert crbatch("submit", y, "--backend", "slurm") == 0
    storage = Path(yaml.safe_load(y.read_text())["storage"])
    plan_dir = storage / "batch" / "sl" / "slurm"
    ids = _jobs(plan_dir)
    assert list(ids) == ["convert_0", "build", "train", "analyze", "report"]
    _wait_gone(list(ids.values()))
    capsys.readouterr()
    assert crbatch("status", y, "--check") == 0, capsys.readouterr().out
    assert (storage / "reports" / "sl" / "report.md").is_file()
    assert list((storage / "exports" / "sl").glob("*.onnx"))
    assert (storage / "reports" / "sl" / "status.md").is_file()  # the report job ran last
    for t in ("convert.sig.", "build", "train"):
        f = next((storage / "status" / "sl").glob(f"{t}*.status"))
        st = read_status_file(f)
        assert st and st["state"] == "done" and st["scheduler"].startswith("slurm:")
    # the training job saw its fake GPU
    shown = subprocess.run(["scontrol", "show", "job", ids["train"]], capture_output=True, text=True).stdout
    assert "gpu" in shown.lower()
    # everything is complete: submitting again submits nothing
    assert crbatch("submit", y, "--backend", "slurm") == 0
    assert "nothing to submit" in capsys.readouterr().out


@needs_cluster
@pytest.mark.slow
def test_killed_training_requeues_and_resumes(slurm_pipeline):
    """SIGTERM to the running training's batch shell (what --signal=B:TERM does before the time limit):
    crbatch checkpoints and exits 85, train.sh requeues the job, the requeued job resumes."""
    y = slurm_pipeline
    epochs = 5
    assert crbatch("submit", y, "--backend", "slurm", "--set", "train.run=1", "--set",
                   f"train.options.epochs={epochs}") == 0  # fmt: skip
    storage = Path(yaml.safe_load(y.read_text())["storage"])
    plan_dir = storage / "batch" / "sl" / "slurm"
    ids = _jobs(plan_dir)
    train_id = ids["train"]
    run = storage / "training_results" / "sl" / "00001"
    t0 = time.monotonic()
    while not (run / "history.json").is_file() or not json.loads((run / "history.json").read_text())["epoch"]:
        assert time.monotonic() - t0 < 240, "no epoch finished"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=TERM", "--batch", train_id], check=True)
    t0 = time.monotonic()
    while True:
        st = read_status_file(storage / "status" / "sl" / "train.status") or {}
        q = subprocess.run(["squeue", "-h", "-j", train_id, "-o", "%T"], capture_output=True, text=True)
        state = q.stdout.strip()
        if st.get("state") == "checkpointed" and state == "PENDING":
            break
        assert st.get("state") != "done", "the training finished before the signal; make it longer"
        assert time.monotonic() - t0 < 60, f"no checkpoint-and-requeue: status {st}, job {state}"
        time.sleep(0.3)
    first = json.loads((run / "history.json").read_text())["epoch"]
    assert st["exit"] == "85" and 1 <= len(first) < epochs
    # A requeued job is eligible again when its old credential expires (cred_expire: 10 s in
    # .ci/slurm-up.sh's cluster, 120 s by default). Starting it earlier can fail ("credential revoked").
    _wait_gone(list(ids.values()))
    hist = json.loads((run / "history.json").read_text())
    assert hist["epoch"] == list(range(epochs))  # numbering continued, not restarted
    details = (run / "training_details.txt").read_text()
    blocks = [ln.split()[1] for ln in details.splitlines() if ln.startswith("=== ")]
    assert blocks == ["start", "checkpointed", "resume", "complete"]
    st = read_status_file(storage / "status" / "sl" / "train.status")
    assert st and st["state"] == "done" and st["scheduler"] == f"slurm:{train_id}"
    restarts = subprocess.run(["scontrol", "show", "job", train_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts
    log = (storage / "logs" / "sl" / "train.log").read_text()
    assert f"resuming {run} at epoch {len(first)}" in log or f"resuming {run} at epoch {len(first) - 1}" in log
    assert crbatch("status", y, "--check", "--set", "train.run=1", "--set", f"train.options.epochs={epochs}") == 0


def test_dry_run_without_sbatch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", os.defpath.replace("/usr/bin", "/nonexistent").replace("/bin", "/nonexistent"))
    plan = simple_plan(tmp_path)
    plan_dir = write_plan(plan, tmp_path / "plan")
    assert slurm.submit(plan, plan_dir, JOBS, {s: plan.stage(s) for s in plan.tasks}, dry_run=False) == 0
    out = capsys.readouterr().out
    assert "sbatch is not on the PATH" in out and "--array=0-1" in out
    assert (plan_dir / slurm.SCRIPT_FILE).stat().st_mode & 0o100
