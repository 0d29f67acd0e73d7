"""Pipelines on grid storage: inputs and storage on ``root://127.0.0.1`` (the XRootD server of
.ci/xrootd-up.sh), through the local backend and the Slurm cluster; a job killed in the middle of an
upload; bundled convert jobs; the ``osg`` profile with no shared file system (HTCondor's file
transfer emulated from the job ads the bindings expand). Everything skips without the server."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the shards' codec)
import pytest
import yaml
from batch_helpers import JOBS
from xrootd_helpers import UNREACHABLE

from crbatch import cli, schema, storage
from crbatch.batch.pipeline import load_pipeline
from crbatch.batch.plan import make_plan, write_plan
from crbatch.batch.status import collect_status, read_status_file
from crbatch.errors import ExitCode

pytestmark = [pytest.mark.needs_root]


def crbatch(*args) -> int:
    return cli.main(["-q", *map(str, args)])


def tables(src) -> dict[str, bytes]:
    with h5py.File(src, "r") as f:
        return {k: f[k][...].tobytes() for k in f}


def remote_tables(url) -> dict[str, bytes]:
    with storage.h5_source(url) as src:
        return tables(src)


SMALL = {"cpus": 1, "memory": "1 GB", "runtime": "20m", "retries": 1}
SAMPLES = (("sig", "sig", 600, 21, 125.0, 55.0), ("qcd", "qcd", 700, 22, None, None),
           ("bib", "bib", 800, 23, None, None), ("data", "data", 700, 24, None, None))  # fmt: skip


def remote_pipeline(base: Path, remote, synth_file, name: str, **extra) -> tuple[Path, dict]:
    """A small synthetic production uploaded to ``remote``/in and its pipeline on ``remote``/storage."""
    sets = []
    for ds, typ, events, seed, mH, mS in SAMPLES:
        src = synth_file(typ, events, seed, mH, mS)
        url = remote / "in" / src.name
        storage.put(src, url)
        d = {"name": ds, "type": typ, "files": [str(url)]}
        if mH:
            d.update(mH=mH, mS=mS)
        sets.append(d)
    doc = {
        "name": name, "storage": str(remote / "storage"), "datasets": sets,
        "convert": {"resources": SMALL},
        "build": {"options": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "resources": SMALL},
        "train": {"options": {"epochs": 1, "batch_size": 64, "eval_batch_size": 1024},
                  "resources": {**SMALL, "gpus": 1}},
        "analyze": {"export": {"check_jets": 16}, "resources": SMALL},
        **extra,
    }  # fmt: skip
    base.mkdir(parents=True, exist_ok=True)
    y = base / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc, sort_keys=False))
    return y, doc


def check_complete_pipeline(remote, name: str, synth_file, tmp: Path) -> None:
    """Report, export and status on the remote storage; each shard equals a local convert of its file."""
    st = remote / "storage"
    assert storage.is_complete(st / "datasets" / name / "main_test.h5", "dataset")
    assert (st / "reports" / name / "report.md").is_file()
    assert (st / "reports" / name / "status.md").is_file()  # the report job ran last
    assert [p.name for p in (st / "exports" / name).glob("*.onnx")]
    sig = synth_file("sig", 600, 21, 125.0, 55.0)
    local = tmp / "local-sig.h5"
    args = ["--type", "sig", "--mH", "125", "--mS", "55", "--out", local]
    assert crbatch("convert", "divert", sig, *args) == 0
    (shard,) = list((st / "shards" / "sig").glob("*.h5"))
    assert remote_tables(shard) == tables(local)  # byte for byte in the tables
    # nothing half-written is visible
    assert not any(schema.TMP_MARK in f for f in storage.walk_files(st))


@pytest.mark.slow
def test_local_pipeline_on_root_storage(remote_dir, synth_file, tmp_path, monkeypatch, capsys):
    """Inputs and storage on root://: the whole pipeline through the local backend; status and collect
    read the storage in place; a second submission runs nothing again."""
    pytest.importorskip("keras")
    monkeypatch.chdir(tmp_path)
    y, _ = remote_pipeline(tmp_path, remote_dir, synth_file, "rl")
    assert crbatch("submit", y, "--backend", "local") == 0
    check_complete_pipeline(remote_dir, "rl", synth_file, tmp_path)
    status = remote_dir / "storage" / "status" / "rl"
    for f in status.glob("*.status"):
        assert read_status_file(f)["state"] == "done", f
    attempts = {f.name: read_status_file(f)["attempt"] for f in status.glob("*.status")}
    assert (remote_dir / "storage" / "logs" / "rl" / "train.log").read_text().strip()
    capsys.readouterr()
    assert crbatch("status", y, "--check", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"]
    assert crbatch("submit", y, "--backend", "local") == 0  # everything complete: nothing runs again
    assert {f.name: read_status_file(f)["attempt"] for f in status.glob("*.status")} == attempts
    plan_dir = tmp_path / "crbatch-plans" / "rl" / "local"
    assert crbatch("collect", plan_dir, "--output-dir", tmp_path / "got") == 0
    for f in ("report/report.md", "training/history.json", "datasets/summary.json", "status.md"):
        assert (tmp_path / "got" / f).is_file(), f


def _slurm_up() -> bool:
    from test_batch_slurm import _cluster_up

    return _cluster_up()


@pytest.mark.slow
def test_slurm_pipeline_on_root_storage(remote_dir, synth_file, tmp_path, monkeypatch, capsys):
    """The same through the Slurm cluster: every job stages in and out of its own sandbox."""
    pytest.importorskip("keras")
    if not _slurm_up():
        pytest.skip("no Slurm cluster answers (start one: .ci/slurm-up.sh)")
    from test_batch_slurm import _jobs, _wait_gone

    monkeypatch.chdir(tmp_path)
    y, _ = remote_pipeline(tmp_path, remote_dir, synth_file, "rs")
    assert crbatch("submit", y, "--backend", "slurm") == 0
    plan_dir = tmp_path / "crbatch-plans" / "rs" / "slurm"
    ids = _jobs(plan_dir)
    assert list(ids) == ["convert_0", "build", "train", "analyze", "report"]
    _wait_gone(list(ids.values()), timeout=600)
    capsys.readouterr()
    assert crbatch("status", y, "--check") == 0, capsys.readouterr().out
    check_complete_pipeline(remote_dir, "rs", synth_file, tmp_path)
    for f in (remote_dir / "storage" / "status" / "rs").glob("*.status"):
        st = read_status_file(f)
        assert st["state"] == "done" and st["scheduler"].startswith("slurm:"), f
    assert crbatch("submit", y, "--backend", "slurm") == 0
    assert "nothing to submit" in capsys.readouterr().out


# --- a job killed in the middle of an upload ----------------------------------------------------------

# Stands in for crbatch in the job: the real one, except that `storage stage-out` uploads slowly
# (the test kills the whole job while a temporary file is on the server).
_SLOW_STAGE_OUT = """\
import sys, time
from crbatch import storage
real = storage._upload
def slow(chunks, dest, size_hint=None):
    def dribble():
        for c in chunks:
            for i in range(0, len(c), 4096):
                yield c[i : i + 4096]
                time.sleep(0.05)
    real(dribble(), dest, size_hint)
storage._upload = slow
from crbatch.cli import run
sys.argv[0] = "crbatch"
run()
"""


def _wrapper(tmp: Path) -> Path:
    py = tmp / "slow_stage_out.py"
    py.write_text(_SLOW_STAGE_OUT)
    exe = tmp / "crbatch-slow"
    exe.write_text(f"""#!/usr/bin/env bash
for a in "$@"; do
  if [ "$a" = stage-out ]; then exec {sys.executable} {py} "$@"; fi
done
exec {sys.executable} -m crbatch "$@"
""")
    exe.chmod(0o755)
    return exe


@pytest.mark.slow
def test_job_killed_mid_upload_then_resubmitted(remote_dir, synth_file, tmp_path, monkeypatch):
    """kill -9 of a bundled convert job (two files) while it uploads its shards: no shard that looks
    complete is half-uploaded, the status is not done; resubmitting ends complete with both shards."""
    monkeypatch.chdir(tmp_path)
    files = [synth_file("qcd", 400, s) for s in (41, 42)]
    urls = [remote_dir / "in" / f.name for f in files]
    for f, u in zip(files, urls, strict=True):
        storage.put(f, u)
    doc = {"name": "rk", "storage": str(remote_dir / "storage"),
           "datasets": [{"name": "qcd", "type": "qcd", "files": [str(u) for u in urls]}],
           "convert": {"files_per_job": 2, "resources": SMALL}}  # fmt: skip
    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc))
    plan = make_plan(load_pipeline(y), "convert")
    assert [len(t.inputs) for t in plan.stage("convert")] == [2]
    plan_dir = write_plan(plan, tmp_path / "plan")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CRBATCH_KEEP"))}
    env.update(CRBATCH=str(_wrapper(tmp_path)), CRBATCH_JOBS=str(JOBS), CRBATCH_SANDBOX=str(tmp_path))
    job = subprocess.Popen(["bash", str(JOBS / "convert.sh"), str(plan_dir), "0"], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    shards = [storage.location(o) for o in plan.stage("convert")[0].outputs]
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            tmps = [p for s in shards if s.parent.is_dir() for p in s.parent.iterdir() if schema.TMP_MARK in p.name]
            if tmps and tmps[0].size() > 0:
                break
            assert job.poll() is None, job.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(0.05)
        else:
            pytest.fail("no upload started")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the job script, crbatch and the upload at once
        job.wait()
    uploading = tmps[0].name
    final = next(s for s in shards if uploading.startswith(f".{s.name}."))
    assert not final.exists()  # the file being uploaded is not there under its name
    for s in shards:
        assert not s.exists() or storage.is_complete(s, "shard")
    state = collect_status(plan)[plan.stage("convert")[0].job].state
    assert state != "done"
    # The dead job's sandbox is left behind (kill -9 runs no trap); a new attempt starts afresh, and its
    # upload removes the killed one's temporary (older than CRBATCH_XRD_STALE_AGE).
    monkeypatch.setenv("CRBATCH_XRD_STALE_AGE", "0")
    assert crbatch("submit", y, "--backend", "local", "--until", "convert") == 0
    assert uploading not in [p.name for p in final.parent.iterdir()]
    for t in plan.stage("convert"):
        for o in t.outputs:
            assert storage.is_complete(storage.location(o), "shard"), o
    assert collect_status(plan)[plan.stage("convert")[0].job].state == "done"
    assert not any(schema.TMP_MARK in f for f in storage.walk_files(remote_dir / "storage"))
    # nothing lost: the shards are those a local convert writes
    for f, shard in zip(files, shards, strict=True):
        assert crbatch("convert", "divert", f, "--type", "qcd", "--out", tmp_path / f"{f.stem}.h5") == 0
        assert remote_tables(shard) == tables(tmp_path / f"{f.stem}.h5")


def test_job_end_line_names_the_uploaded_log(remote_dir, synth_file, tmp_path, monkeypatch):
    """A job on root:// storage ends by naming its log where people find it: the uploaded copy on the
    storage, not the sandbox's (which is gone once the job ends)."""
    monkeypatch.chdir(tmp_path)
    f = synth_file("qcd", 200, 43)
    url = remote_dir / "in" / f.name
    storage.put(f, url)
    doc = {"name": "rj", "storage": str(remote_dir / "storage"),
           "datasets": [{"name": "qcd", "type": "qcd", "files": [str(url)]}], "convert": {"resources": SMALL}}  # fmt: skip
    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc))
    plan = make_plan(load_pipeline(y), "convert")
    plan_dir = write_plan(plan, tmp_path / "plan")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CRBATCH_KEEP"))}
    env.update(CRBATCH_JOBS=str(JOBS), CRBATCH_SANDBOX=str(tmp_path))
    r = subprocess.run(["bash", str(JOBS / "convert.sh"), str(plan_dir), "0"], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    job = plan.stage("convert")[0].job
    log = remote_dir / "storage" / "logs" / "rj" / f"{job}.log"
    assert r.stderr.strip().splitlines()[-1].endswith(f"log: {log}"), r.stderr[-1000:]
    assert log.read_text().strip()


# --- bundling ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bundled_convert_each_file_its_own_shard_bad_file_fails_alone(remote_dir, synth_file, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """files_per_job: 3 files → 2 jobs; a damaged file in a bundle fails alone (its job fails, the other
    file's shard is staged out complete); fixing the file and resubmitting converts only it."""
    monkeypatch.chdir(tmp_path)
    files = [synth_file("qcd", 300, s) for s in (31, 32, 33)]
    urls = [remote_dir / "in" / f.name for f in files]
    for f, u in zip(files, urls, strict=True):
        storage.put(f, u)
    storage.put_bytes(files[0].read_bytes()[:5000], urls[0])  # damaged: cut short
    doc = {"name": "rb", "storage": str(remote_dir / "storage"),
           "datasets": [{"name": "qcd", "type": "qcd", "files": [str(u) for u in urls]}],
           "convert": {"files_per_job": 2, "resources": SMALL}}  # fmt: skip
    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc))
    plan = make_plan(load_pipeline(y), "convert")
    tasks = plan.stage("convert")
    assert [len(t.inputs) for t in tasks] == [2, 1]
    assert len({o for t in tasks for o in t.outputs}) == 3  # each file its own shard
    assert crbatch("submit", y, "--backend", "local", "--until", "convert") != 0
    states = collect_status(plan)
    assert states[tasks[0].job].state == "failed" and states[tasks[1].job].state == "done"
    bad, good = (storage.location(o) for o in tasks[0].outputs)
    assert not bad.exists() and storage.is_complete(good, "shard")
    err = (remote_dir / "storage" / "status" / "rb" / f"{tasks[0].job}.err").read_text()
    assert files[0].name in err and "truncated" in err
    mtime = good.stat().modtime
    storage.put(files[0], urls[0])  # the file recopied
    assert crbatch("submit", y, "--backend", "local", "--until", "convert") == 0
    assert storage.is_complete(bad, "shard") and good.stat().modtime == mtime  # only the bad one redone
    for f, t in ((files[0], bad), (files[1], good)):
        assert crbatch("convert", "divert", f, "--type", "qcd", "--out", tmp_path / f"{f.stem}.h5") == 0
        assert remote_tables(t) == tables(tmp_path / f"{f.stem}.h5")


# --- unreachable server, missing file ----------------------------------------------------------------------


def test_storage_commands_exit_codes(remote_dir, tmp_path, capsys):
    """What a job's staging does when the storage is unreachable (20, retried) or a file is missing (10)."""
    assert crbatch("storage", "get", f"{UNREACHABLE}//x/y.h5", tmp_path / "y.h5") == ExitCode.TRANSIENT
    assert crbatch("storage", "get", remote_dir / "nope.h5", tmp_path / "y.h5") == ExitCode.INPUT_MISSING
    assert crbatch("storage", "get", "--optional", remote_dir / "nope.h5", tmp_path / "y.h5") == 0
    assert not (tmp_path / "y.h5").exists()
    (tmp_path / "a.txt").write_text("a")
    assert crbatch("storage", "put", tmp_path / "a.txt", f"{UNREACHABLE}//x/a.txt") == ExitCode.TRANSIENT


def test_status_of_unreachable_storage_exits_20(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    doc = {"name": "ru", "storage": f"{UNREACHABLE}//storage",
           "datasets": [{"name": "qcd", "type": "qcd", "files": [f"{UNREACHABLE}//in/a.root"]}]}  # fmt: skip
    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc))
    assert crbatch("status", y) == ExitCode.TRANSIENT
    assert "127.0.0.1:1" in capsys.readouterr().err


# --- osg: no shared file system ------------------------------------------------------------------------


def _condor_jobs(plan_dir: Path, sub: str, macros: dict[str, str] | None = None) -> list:
    htcondor = pytest.importorskip("htcondor")
    old = os.getcwd()
    os.chdir(plan_dir)
    try:
        s = htcondor.Submit((plan_dir / sub).read_text())
        for k, v in (macros or {}).items():
            s[k] = v
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(s.jobs(clusterid=1))
    finally:
        os.chdir(old)


def _run_like_condor(ad, scratch: Path, env_extra: dict[str, str]) -> int:
    """What an HTCondor starter with no shared file system does: a fresh scratch directory with the
    transferred files (flat), the executable, the ad's arguments and environment."""
    scratch.mkdir(parents=True)
    for f in ad["TransferInput"].split(","):
        shutil.copy(f.strip(), scratch)
    exe = scratch / Path(ad["Cmd"]).name
    shutil.copy(ad["Cmd"], exe)
    home = scratch.with_name(scratch.name + ".home")  # what the image's tools may cache there is not the job's
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "_CONDOR_SCRATCH_DIR": str(scratch), **env_extra}
    for item in shlex.split(ad.get("Environment", "")):  # V2 syntax: blank-separated, '...' quoting
        k, _, v = item.partition("=")
        env[k] = v
    args = shlex.split(ad["Arguments"])
    before = set(os.listdir(scratch))
    rc = subprocess.run(["bash", str(exe), *args], cwd=scratch, env=env, capture_output=True, text=True)
    assert set(os.listdir(scratch)) <= before, "the job left files for HTCondor to transfer back"
    return rc.returncode


@pytest.mark.slow
def test_osg_profile_without_shared_storage(remote_dir, synth_file, tmp_path, monkeypatch):
    """The osg profile on root:// storage: the submit files name no shared path (the executable, common.sh
    and the task's plan files travel by HTCondor file transfer; arguments are the job's own directory);
    running every job the way a starter does — a fresh scratch directory holding only what was
    transferred, nowhere else to read from — completes the pipeline."""
    pytest.importorskip("keras")
    htcondor = pytest.importorskip("htcondor")
    if not hasattr(htcondor.Submit, "jobs"):
        pytest.skip("needs the v1 bindings' Submit.jobs(): pip install htcondor==24.12.24")
    monkeypatch.chdir(tmp_path)
    y, _ = remote_pipeline(tmp_path / "submit", remote_dir, synth_file, "ro", site="osg",
                           image="docker://ghcr.io/atlas/crbatch:1.2")  # fmt: skip
    assert crbatch("submit", y, "--backend", "condor", "--dry-run") == 0
    plan_dir = tmp_path / "crbatch-plans" / "ro" / "condor"
    local_roots = [str(tmp_path / "storage"), str(remote_dir).split("//", 2)[-1]]
    ads = {}
    for stage in ("convert", "build", "train", "analyze", "report"):
        (ad, *more) = _condor_jobs(plan_dir, f"{stage}.sub", {"CRBATCH_FIRST": "0", "CRBATCH_END": "1"})
        assert not more
        assert ad["ShouldTransferFiles"] == "YES" and ad.get("TransferExecutable", True) is True
        assert shlex.split(ad["Arguments"]) == [".", "0"]  # the job's own directory
        assert ad["SingularityImage"] == "/cvmfs/singularity.opensciencegrid.org/atlas/crbatch:1.2"
        assert "HAS_SINGULARITY == true" in str(ad["Requirements"])
        files = [f.strip() for f in ad["TransferInput"].split(",")]
        # every file transferred exists on the submit side: under the plan directory, or jobs/common.sh
        assert all(Path(f).is_file() for f in files), files
        assert all(f.startswith(str(plan_dir)) or f == str(JOBS / "common.sh") for f in files)
        env = str(ad.get("Environment", ""))
        for text in (env, str(ad["Cmd"])):
            assert str(plan_dir) not in text or text == str(ad["Cmd"])
            for root in local_roots:
                assert root not in text
        ads[stage] = ad
    # the commands in the transferred plan name only the sandbox (plan/, storage/) and URLs
    for f in plan_dir.rglob("*.args"):
        for a in (f.read_bytes().split(b"\0"))[:-1]:
            assert not a.startswith(b"/") or a.startswith(str(remote_dir).encode()), (f, a)
    env = {"CRBATCH_PYTHON": sys.executable}  # the image's crbatch
    for k in ("XRD_CONNECTIONWINDOW", "XRD_CONNECTIONRETRY", "XRD_REQUESTTIMEOUT", "KERAS_BACKEND"):
        if k in os.environ:
            env[k] = os.environ[k]
    items = (plan_dir / "convert.items").read_text().splitlines()
    for i in range(len(items)):
        (ad,) = _condor_jobs(plan_dir, "convert.sub", {"CRBATCH_FIRST": str(i), "CRBATCH_END": str(i + 1)})
        assert _run_like_condor(ad, tmp_path / f"scratch.convert.{i}", env) == 0
    for stage in ("build", "train", "analyze", "report"):
        assert _run_like_condor(ads[stage], tmp_path / f"scratch.{stage}", env) == 0, stage
    assert crbatch("status", y, "--check") == 0
    check_complete_pipeline(remote_dir, "ro", synth_file, tmp_path)


def test_osg_profile_refuses_shared_storage(tmp_path, monkeypatch, capsys):
    """osg has no shared file system: a pipeline on a local storage path is refused at submission."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.root").write_bytes(b"")
    doc = {"name": "rp", "storage": str(tmp_path / "storage"), "site": "osg", "image": "docker://x/crbatch:1",
           "datasets": [{"name": "qcd", "type": "qcd", "files": [str(tmp_path / "in" / "a.root")]}]}  # fmt: skip
    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc))
    assert crbatch("submit", y, "--backend", "condor", "--dry-run") == ExitCode.CONFIG
    assert "root://" in capsys.readouterr().err


def test_campaign_on_root_storage_stages_each_run_and_the_analysis_all(remote_dir, synth_file, tmp_path):
    """A campaign (train.scan) on root:// storage: each training stages its own run directory in and out,
    its config names the sandbox's storage, the analysis stages every run in, and status reads each run."""
    y, _ = remote_pipeline(tmp_path, remote_dir, synth_file, "rc", train={
        "options": {"epochs": 1, "batch_size": 64}, "scan": {"seed": [1, 2]}, "resources": {**SMALL, "gpus": 1}})  # fmt: skip
    plan = make_plan(load_pipeline(y))
    d = write_plan(plan, tmp_path / "plan")
    root = str(remote_dir / "storage")
    train = plan.stage("train")
    assert len(train) == 2 and len({t.outputs[0] for t in train}) == 2
    rels = []
    for t in train:
        rel = t.outputs[0].removeprefix(root + "/")
        assert rel != t.outputs[0]  # the run directory is on the remote storage
        spec = json.loads((d / "train" / f"{t.index}.stage.json").read_text())
        assert {e["rel"] for e in spec["out"]} == {rel} and rel in {e["rel"] for e in spec["in"]}
        cfg = yaml.safe_load((d / "train" / f"{t.index}.yaml").read_text())
        assert cfg["output_dir"].startswith("storage/") and cfg["data"].startswith("storage/"), cfg
        args = (d / "train" / f"{t.index}.args").read_bytes().split(b"\0")
        assert args[2].decode() == f"storage/{rel}", args
        rels.append(rel)
    analyze = json.loads((d / "analyze" / "0.stage.json").read_text())
    assert set(rels) <= {e["rel"] for e in analyze["in"]}
    jobs = collect_status(plan)
    assert all(jobs[t.job].state == "missing" and jobs[t.job].epochs == (0, 1) for t in train)
