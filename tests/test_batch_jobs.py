"""jobs/*.sh with a fake crbatch: exit-code mapping, arguments passed intact, status files, signals,
and the local backend's retries, resumes and stops. Fast: no ROOT, no training."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from batch_helpers import JOBS, fake_crbatch, job_env, simple_plan

from crbatch.batch import codes
from crbatch.batch.local import LocalRunner
from crbatch.batch.plan import read_nul_args, task_commands, write_plan
from crbatch.batch.status import collect_status, read_status_file
from crbatch.errors import ExitCode


def run_job(script: str, plan_dir: Path, index: int | None, env: dict[str, str], timeout: float = 30):
    args = ["bash", str(JOBS / script), str(plan_dir)] + ([] if index is None else [str(index)])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def rendered(tmp_path):
    plan = simple_plan(tmp_path, ["a.root", "b b.root"])
    plan_dir = write_plan(plan, tmp_path / "plan")
    fake, fake_dir = fake_crbatch(tmp_path)
    return plan, plan_dir, fake, fake_dir


def test_shell_mapping_equals_python():
    """crb_map_exit in jobs/common.sh and crbatch.batch.codes agree on every exit status."""
    script = f'. "{JOBS}/common.sh"; for i in $(seq 0 255); do crb_map_exit "$i"; done'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [codes.scheduler_code(i) for i in range(256)]
    assert codes.scheduler_code(11) == codes.DO_NOT_RETRY == 65
    assert codes.scheduler_code(85) == 85 and codes.scheduler_code(20) == 20 and codes.scheduler_code(137) == 20
    assert codes.scheduler_code(15) == 65 and codes.scheduler_code(16) == 16  # diverged: no retry; locked: retry


@pytest.mark.parametrize(
    ("rc", "state"),
    [(0, "done"), (1, "failed"), (2, "failed"), (3, "failed"), (10, "failed"), (11, "failed"), (12, "failed"),
     (13, "failed"), (20, "failed"), (21, "failed"), ("kill9", "failed")],
)  # fmt: skip
def test_exit_codes_and_status(rendered, rc, state):
    plan, plan_dir, fake, fake_dir = rendered
    (fake_dir / "codes.convert").write_text(f"{rc}\n")
    r = run_job("convert.sh", plan_dir, 1, job_env(fake, fake_dir))
    crbatch_rc = 137 if rc == "kill9" else rc
    assert r.returncode == codes.scheduler_code(crbatch_rc), r.stderr
    task = plan.stage("convert")[1]
    st = read_status_file(plan.layout.status_file(task.job))
    assert st is not None
    assert st["state"] == state and st["exit"] == str(crbatch_rc) and st["attempt"] == "1"
    assert st["scheduler_exit"] == str(r.returncode)
    err = plan.layout.err_file(task.job)
    if state == "failed":
        if rc != "kill9":
            assert "ERROR crbatch.fake: it failed" in err.read_text()
            assert "it failed" in r.stderr  # the error lines also reach the scheduler's error file
        js = collect_status(plan)[task.job]
        assert js.state == "failed" and js.exit == crbatch_rc
        assert js.retry == (codes.scheduler_code(crbatch_rc) != codes.DO_NOT_RETRY)
    else:
        assert not err.exists()


def test_arguments_reach_crbatch_intact(rendered):
    plan, plan_dir, fake, fake_dir = rendered
    for t in plan.stage("convert"):
        assert run_job("convert.sh", plan_dir, t.index, job_env(fake, fake_dir)).returncode == 0
        want = task_commands(plan, t, plan_dir, str(plan.layout.run_dir))[""]
        calls = sorted(fake_dir.glob("call.convert.*"))
        got = [read_nul_args(c) for c in calls]
        assert want in got
    # the entry in the YAML input list is the file itself, spaces and all
    import yaml

    entry = yaml.safe_load((plan_dir / "convert" / "1.inputs.yaml").read_text())[0]
    assert entry["path"] == plan.stage("convert")[1].source and entry["path"].endswith("b b.root")


def test_analyze_exports_the_epoch_it_analyses(rendered):
    """One command: `crbatch analyze` with the export in its config, so the exported epoch is the one
    the report evaluated (the pipeline used to export epoch -1 in a second command)."""
    import yaml

    plan, plan_dir, fake, fake_dir = rendered
    assert run_job("analyze.sh", plan_dir, None, job_env(fake, fake_dir)).returncode == 0
    (call,) = fake_dir.glob("call.analyze.*")
    argv = call.read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv[:2]] == ["analyze", f"{plan.pipeline.model_name}/{plan.pipeline.train.run}"]
    assert not list(fake_dir.glob("call.export.*"))
    cfg = yaml.safe_load((plan_dir / "analyze.yaml").read_text())
    assert cfg["export_dir"] == str(plan.layout.exports) and cfg["export_format"] == "all"
    # a failed analysis: failure recorded, nothing else run
    for f in [*fake_dir.glob("call.*"), *fake_dir.glob("n.*")]:
        f.unlink()
    (fake_dir / "codes.analyze").write_text("12\n")
    assert run_job("analyze.sh", plan_dir, None, job_env(fake, fake_dir)).returncode == codes.DO_NOT_RETRY
    assert len(list(fake_dir.glob("call.*"))) == 1


def test_slurm_array_index_and_offset(rendered):
    plan, plan_dir, fake, fake_dir = rendered
    env = job_env(fake, fake_dir, SLURM_ARRAY_TASK_ID="0", CRBATCH_INDEX_OFFSET="1", SLURM_JOB_ID="7",
                  SLURM_ARRAY_JOB_ID="6")  # fmt: skip
    assert run_job("convert.sh", plan_dir, None, env).returncode == 0
    st = read_status_file(plan.layout.status_file(plan.stage("convert")[1].job))
    assert st and st["state"] == "done" and st["scheduler"] == "slurm:6_0"


def test_cannot_start_is_do_not_retry(rendered, tmp_path):
    _plan, plan_dir, fake, fake_dir = rendered
    r = run_job("convert.sh", tmp_path / "nowhere", 0, job_env(fake, fake_dir))
    assert r.returncode == codes.DO_NOT_RETRY and "cannot start" in r.stderr
    r = run_job("convert.sh", plan_dir, None, job_env(fake, fake_dir))  # no index, not a Slurm array
    assert r.returncode == codes.DO_NOT_RETRY
    env = job_env(fake, fake_dir, CRBATCH="/nonexistent/crbatch")
    r = run_job("convert.sh", plan_dir, 0, env)
    assert r.returncode == codes.DO_NOT_RETRY and "crbatch not found" in r.stderr


def _wait_for(pattern_dir: Path, pattern: str, timeout: float = 20) -> None:
    t0 = time.monotonic()
    while not list(pattern_dir.glob(pattern)):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(pattern)
        time.sleep(0.05)


def test_sigterm_reaches_crbatch_and_85_passes(rendered):
    """SIGTERM to the entry script (HTCondor eviction, Slurm --signal=B:TERM) reaches crbatch, which
    checkpoints and exits 85; the script exits 85 and records the checkpoint."""
    plan, plan_dir, fake, fake_dir = rendered
    (fake_dir / "codes.train").write_text("sleep\n")
    proc = subprocess.Popen(["bash", str(JOBS / "train.sh"), str(plan_dir)], env=job_env(fake, fake_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(fake_dir, "started.*")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == codes.CHECKPOINT, err
    assert list(fake_dir.glob("term.*")), "crbatch did not get SIGTERM"
    st = read_status_file(plan.layout.status_file("train"))
    assert st and st["state"] == "checkpointed" and st["exit"] == "85"
    assert collect_status(plan)["train"].state == "checkpointed"


def test_checkpoint_every(rendered):
    """CRBATCH_CHECKPOINT_EVERY: the script itself asks crbatch to checkpoint (HTCondor self-checkpointing)."""
    _plan, plan_dir, fake, fake_dir = rendered
    (fake_dir / "codes.train").write_text("sleep\n")
    t0 = time.monotonic()
    r = run_job("train.sh", plan_dir, None, job_env(fake, fake_dir, CRBATCH_CHECKPOINT_EVERY="1"))
    assert r.returncode == codes.CHECKPOINT and time.monotonic() - t0 < 15
    assert list(fake_dir.glob("term.*"))


def _runner(plan, plan_dir, fake, fake_dir, monkeypatch, workers=2) -> LocalRunner:
    for k, v in job_env(fake, fake_dir).items():
        monkeypatch.setenv(k, v)
    plan.pipeline.env["CRBATCH"] = str(fake)
    return LocalRunner(plan, plan_dir, JOBS, workers)


def test_local_retries_resumes_and_stops(rendered, monkeypatch):
    plan, plan_dir, fake, fake_dir = rendered
    (fake_dir / "codes.convert").write_text("20\n0\n")  # a transient failure, then success
    (fake_dir / "codes.train").write_text("85\n85\n0\n")  # two checkpoints, then done
    r = _runner(plan, plan_dir, fake, fake_dir, monkeypatch)
    assert r.run() == 0
    assert len(list(fake_dir.glob("call.convert.*"))) == 4  # 2 files × (fail, retry)
    assert len(list(fake_dir.glob("call.train.*"))) == 3
    assert len(list(fake_dir.glob("call.status.*"))) == 1  # the final report
    st = read_status_file(plan.layout.status_file("train"))
    assert st and st["state"] == "done" and st["attempt"] == "3"


def test_local_bad_input_stops_the_pipeline(rendered, monkeypatch):
    plan, plan_dir, fake, fake_dir = rendered
    (fake_dir / "codes.convert").write_text("11\n")
    r = _runner(plan, plan_dir, fake, fake_dir, monkeypatch)
    assert r.run() == int(ExitCode.INPUT_CORRUPT)  # crbatch's code, as the jobs recorded it
    assert len(list(fake_dir.glob("call.convert.*"))) == 2  # no retry of a bad input
    assert not list(fake_dir.glob("call.build.*"))
    states = collect_status(plan)
    assert all(states[t.job].state == "failed" and states[t.job].retry is False for t in plan.stage("convert"))
    assert states["build"].state == "missing"


def test_local_retries_are_bounded(rendered, monkeypatch):
    plan, plan_dir, fake, fake_dir = rendered
    plan.pipeline.build.resources.retries = 1
    (fake_dir / "codes.build").write_text("20\n")
    assert _runner(plan, plan_dir, fake, fake_dir, monkeypatch).run() == int(ExitCode.TRANSIENT)
    assert len(list(fake_dir.glob("call.build.*"))) == 2
    assert not list(fake_dir.glob("call.train.*"))


def test_status_of_a_lost_local_job(rendered):
    """A local job whose process died without writing its end shows as failed (lost), retryable."""
    import socket

    plan, _plan_dir, _fake, _fake_dir = rendered
    dead = subprocess.Popen(["true"])
    dead.wait()
    f = plan.layout.status_file("build")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f"job=build\nstage=build\nstate=running\nattempt=1\nhost={socket.gethostname()}\n"
                 f"scheduler=local:{dead.pid}\nstart=0\n")  # fmt: skip
    st = collect_status(plan)["build"]
    assert st.state == "failed" and st.retry and "lost" in st.detail
