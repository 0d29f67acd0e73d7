"""Fault injection for training, signals, builds and locks (issue 11, points 5–9).

Real files, real signals, real processes: a checkpoint with random bytes written into it, a loss
that turns non-finite, SIGTERM at many moments of start-up (and inside a gc callback, where CPython
drops exceptions), a dataset directory left half-renamed by a killed build, two trainers on one run
directory (also behind a local ``submit`` killed with -9), and a resume on rebuilt data.

Every case failed on the code before the fix (see the closing note of issue 11). Datasets are tiny
(a few hundred jets) and runs are 1–2 epochs, so that the file stays cheap in CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the datasets are lz4-compressed
import numpy as np
import pytest
import yaml
from shards import write_set

import crbatch
from crbatch.errors import ExitCode
from crbatch.train.config import TrainConfig

TINY = ["--batch-size", "32", "--frac-list", "0.5", "--eval-batch-size", "64"]
DIVERGED, LOCKED = 15, 16  # ExitCode.TRAINING_DIVERGED, ExitCode.LOCKED (literal: the tests ran on the old code too)
INTERRUPTED, CHECKPOINTED = int(ExitCode.INTERRUPTED), int(ExitCode.CHECKPOINTED)
JOBS = Path(crbatch.__file__).resolve().parents[1] / "jobs"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


BACKENDS = [
    pytest.param("tensorflow", marks=pytest.mark.skipif(not _have("tensorflow"), reason="tensorflow not installed")),
    pytest.param("jax", marks=pytest.mark.skipif(not _have("jax"), reason="jax not installed")),
]


# --- helpers: processes, files -----------------------------------------------------------------------


def _env(backend: str = "tensorflow", **extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "CRBATCH_NO_BAR": "1",
           "PYTHONUNBUFFERED": "1", **extra}  # fmt: skip
    env.pop("CRBATCH_TRAIN_TEST_SIGTERM_AT", None)
    return env


def _crbatch(*args: object, backend: str = "tensorflow", timeout: float = 600, **env: str):
    """``python -m crbatch ARGS`` to its end: CompletedProcess (text)."""
    cmd = [sys.executable, "-m", "crbatch", *map(str, args)]
    return subprocess.run(cmd, env=_env(backend, **env), capture_output=True, text=True, timeout=timeout, cwd="/")


def _start(log: Path, *args: object, backend: str = "tensorflow", wrapper: str | None = None, **env: str):
    """``crbatch ARGS`` in the background (output into ``log``), optionally through a ``-c`` wrapper."""
    head = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "crbatch"]
    with open(log, "w") as fh:
        return subprocess.Popen([*head, *map(str, args)], env=_env(backend, **env), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=log.parent)  # fmt: skip


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM installed (``SigCgt`` in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        return False
    return False


def _wait_for(cond, timeout: float = 120, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a checkpoint, read with h5py directly (no crbatch check in the way)."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, o: out.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def _meta(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["meta"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _history_rows(run: Path) -> list[list[str]]:
    p = run / "history.csv"
    return [ln.split(",") for ln in p.read_text().splitlines()[1:]] if p.exists() else []


def _assert_nothing_half_written(root: Path) -> None:
    """No temporary left, every HDF5 file readable and marked complete, every YAML/JSON parseable."""
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".crbatch-tmp") or p.name.startswith(".tmp-")]
    assert not leftovers, leftovers
    for p in root.rglob("*.h5"):
        with h5py.File(p, "r") as f:
            assert f.attrs.get("complete"), f"{p}: no completion mark"
    for p in root.rglob("*.yaml"):
        yaml.safe_load(p.read_text())
    for p in root.rglob("*.json"):
        json.loads(p.read_text())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("faults_train") / "shards", n=150, seed=4)


@pytest.fixture(scope="module")
def datasets(shards) -> Path:
    from crbatch.cli import main

    out = shards.parent / "ds"
    assert main(["-q", "build", str(shards), "--output-dir", str(out)]) == 0
    return out


def _hook(classifier, adversary, main_val, cr_val, epoch, out_dir, **kw):
    """A fast stand-in for crbatch.evaluate.evaluate_epoch (no plots): the validation CE."""
    import keras

    ce, n = 0.0, 0
    for b in main_val():
        p = np.asarray(classifier([b[k] for k in ("clusters", "tracks", "msegs", "jet")]))
        y = keras.ops.one_hot(b["label"], 3)
        ce += float(-np.sum(np.asarray(y) * np.log(np.clip(p, 1e-7, 1))))
        n += len(p)
    for _ in cr_val():
        pass
    return {"val_original_lossf": ce / max(n, 1)}


def _cfg(datasets: Path, **kw) -> TrainConfig:
    return TrainConfig(data=datasets, batch_size=32, frac_list=0.5, eval_batch_size=64, seed=3, **kw)


def _new_run(run: Path, cfg: TrainConfig) -> Path:
    """A run directory as `crbatch train` starts it (its config.yaml), for in-process training."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    return run


def _file_hashes(run: Path) -> dict[str, str]:
    """Every file of a run directory but the append-only log and the lock file."""
    skip = {"training_details.txt", ".crbatch.lock"}
    return {str(p.relative_to(run)): _sha(p) for p in run.rglob("*") if p.is_file() and p.name not in skip}


# --- 5. damaged checkpoint; non-finite loss -----------------------------------------------------------


def _damage(path: Path, offset: int, size: int, seed: int) -> None:
    """``size`` random bytes written over ``path`` at ``offset`` (the file keeps its size)."""
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _damage_positions(path: Path, size: int) -> list[int]:
    """Inside the largest array's data (certain to hit the state), and one seeded random position."""
    with h5py.File(path, "r") as f:
        dsets: list[h5py.Dataset] = []
        f.visititems(lambda k, o: dsets.append(o) if isinstance(o, h5py.Dataset) else None)
        big = max(dsets, key=lambda d: d.id.get_storage_size())
        start = big.id.get_offset()
    n = path.stat().st_size
    return [start + 64, int(np.random.default_rng(5).integers(4096, n - size))]


@pytest.mark.slow
def test_damaged_checkpoint_falls_back_to_the_previous_one_bit_identically(tmp_path, datasets):
    """8 kB of random bytes inside checkpoint.h5 (same size): the damage is found (checksums), the
    previous checkpoint is used and the retrained epoch gives exactly the state of the undamaged run.
    Before: the damaged arrays were loaded as they were (garbage optimizer state, NaN epochs)."""
    pytest.importorskip("keras")
    from crbatch.train.loop import train

    cfg = _cfg(datasets, epochs=2)
    good = tmp_path / "good"
    assert train(cfg, good, hook=_hook).status == "complete"
    want = _arrays(good / "checkpoint.h5")
    for i, at in enumerate(_damage_positions(good / "checkpoint.h5", 8192)):
        run = tmp_path / f"damaged{i}"
        shutil.copytree(good, run)
        _damage(run / "checkpoint.h5", at, 8192, seed=i)
        res = train(cfg, run, hook=_hook)
        assert (res.status, res.epochs_done) == ("complete", 2)
        got = _arrays(run / "checkpoint.h5")
        differ = [k for k in want if k.startswith("state/") and not np.array_equal(want[k], got.get(k))]
        assert not differ, f"damage at {at}: {len(differ)} arrays differ from the undamaged run, e.g. {differ[:3]}"
        rows = _history_rows(run)
        assert len(rows) == 2 and all("nan" not in r for r in rows)
        _assert_nothing_half_written(run)


@pytest.mark.slow
def test_damaged_checkpoint_without_a_good_previous_one_is_exit_11(tmp_path, datasets):
    """Both kept checkpoints damaged (or only one, damaged): a clear error, nothing trained or written."""
    pytest.importorskip("keras")
    from crbatch.train.cli import main
    from crbatch.train.loop import train

    run = _new_run(tmp_path / "run", _cfg(datasets, epochs=2))
    assert train(_cfg(datasets, epochs=2), run, hook=_hook).status == "complete"
    for p in run.glob("checkpoint*.h5"):
        _damage(p, _damage_positions(p, 8192)[0], 8192, seed=1)
    before = _file_hashes(run)
    assert main(["-q", "train", "--run-dir", str(run)]) == ExitCode.INPUT_CORRUPT
    assert _file_hashes(run) == before


@pytest.mark.slow
def test_non_finite_loss_stops_with_exit_15_and_writes_no_epoch(tmp_path, datasets, monkeypatch):
    """A learning rate of 1e30 makes epoch 1 diverge: exit 15, no NaN row in history.csv, no
    epochs/001.keras, the checkpoint of epoch 0 untouched — also when SIGTERM asks for a checkpoint
    in the middle of the diverged epoch. Before: exit 0 with NaN in history.csv and epochs/001.keras."""
    pytest.importorskip("keras")
    from crbatch.train.loop import TEST_SIGNAL_ENV, StopFlag, train

    run = tmp_path / "run"
    assert train(_cfg(datasets, epochs=1), run, hook=_hook).status == "complete"
    ckpt = run / "checkpoint.h5"
    stamp = _sha(ckpt)
    bad = _cfg(datasets, epochs=2, lr_values=1e30)
    with pytest.raises(Exception) as e:
        train(bad, run, hook=_hook)
    assert getattr(e.value, "code", None) == DIVERGED, e.value
    assert "epoch 1" in str(e.value) and "learning rate" in str(e.value)
    rows = _history_rows(run)
    assert len(rows) == 1 and "nan" not in rows[0]
    assert not (run / "epochs" / "001.keras").exists() and (run / "epochs" / "000.keras").exists()
    assert _sha(ckpt) == stamp and (_meta(ckpt)["epoch"], _meta(ckpt)["step"]) == (1, 0)

    monkeypatch.setenv(TEST_SIGNAL_ENV, "1:4")  # SIGTERM after step 4 of the diverged epoch
    with pytest.raises(Exception) as e, StopFlag() as stop:
        train(bad, run, hook=_hook, stop=stop)
    assert getattr(e.value, "code", None) == DIVERGED, e.value
    assert _sha(ckpt) == stamp
    _assert_nothing_half_written(run)


# --- 6. SIGTERM at any moment of start-up ------------------------------------------------------------

# Sends SIGTERM to itself from inside a gc callback (as JAX's _xla_gc_callback runs inside one) the
# first time the collector runs after module $GC_SIGTERM_AFTER was imported, and keeps running
# Python code there: the signal handler runs inside the callback, where CPython drops exceptions.
GC_WRAPPER = r"""
import gc, os, signal, sys
after = os.environ["GC_SIGTERM_AFTER"]
fired = []
def _cb(phase, info):
    if fired or phase != "start" or after not in sys.modules:
        return
    fired.append(1)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(200000):
        pass
gc.callbacks.append(_cb)
sys.argv[0] = "crbatch"
from crbatch.cli import run
run()
"""


def _check_train_outcome(rc: int, run: Path, log: str) -> None:
    assert rc in (INTERRUPTED, CHECKPOINTED), f"exit {rc}\n{log[-3000:]}"
    if rc == CHECKPOINTED:
        assert (run / "checkpoint.h5").is_file(), log[-3000:]
    if run.exists():
        _assert_nothing_half_written(run)


@pytest.mark.slow
@pytest.mark.parametrize("after", ["keras", "backend"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_raised_inside_a_gc_callback_still_stops_training(tmp_path, datasets, backend, after):
    """SIGTERM whose handler runs inside a gc callback during start-up (Keras, then its backend being
    imported: shielded, the signal is raised once the import is done): exit 21 or 85, never a run
    that ignores it. Before: "Exception ignored in ..." and the run trained to its end."""
    run = tmp_path / "run"
    log = tmp_path / "log"
    module = {"keras": "keras", "backend": {"tensorflow": "tensorflow.python", "jax": "jaxlib"}[backend]}[after]
    p = _start(log, "train", "--data", datasets, "--run-dir", run, "--epochs", "2", *TINY, backend=backend,
               wrapper=GC_WRAPPER, GC_SIGTERM_AFTER=module)  # fmt: skip
    rc = p.wait(timeout=600)
    text = log.read_text()
    assert "SystemExit" in text or "SIGTERM" in text, text[-3000:]  # the signal did arrive in the callback
    _check_train_outcome(rc, run, text)


def test_sigterm_raised_inside_a_gc_callback_stops_build(tmp_path, shards):
    """Any command: `crbatch build` with the signal handled inside a gc callback exits 21 and leaves
    no dataset and no temporary. Before: exit 0 with the datasets written."""
    out = tmp_path / "ds"
    log = tmp_path / "log"
    p = _start(log, "build", shards, "--output-dir", out, wrapper=GC_WRAPPER, GC_SIGTERM_AFTER="crbatch.build.runner")
    rc = p.wait(timeout=300)
    assert rc == INTERRUPTED, log.read_text()[-3000:]
    assert "delivering it again" in log.read_text()  # lost in the callback, raised again outside it
    assert not list(out.glob("*.h5")) if out.exists() else True
    if out.exists():
        _assert_nothing_half_written(out)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_at_many_points_of_start_up(tmp_path, datasets, backend):
    """SIGTERM at a sweep of delays after crbatch installed its handler (start-up: imports, config,
    data checks, model, first compile): every time exit 21 or 85, and nothing half-written."""
    for i, delay in enumerate((0.0, 0.15, 0.4, 0.8, 1.5, 2.5, 4.0)):
        run = tmp_path / f"run{i}"
        log = tmp_path / f"log{i}"
        p = _start(log, "train", "--data", datasets, "--run-dir", run, "--epochs", "1", *TINY, backend=backend)
        _wait_for(lambda p=p: _catches_sigterm(p.pid) or p.poll() is not None, 60, "the SIGTERM handler")
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=300)
        _check_train_outcome(rc, run, f"delay {delay}: " + log.read_text())


# Catches every SystemExit forever (as code that swallows BaseException would): only the deadline ends it.
SWALLOW_WRAPPER = r"""
import time
from crbatch import signals
signals.install()
print("ready", flush=True)
while True:
    try:
        time.sleep(0.05)
    except BaseException:
        pass
"""


def test_a_swallowed_sigterm_still_ends_the_process_at_the_deadline(tmp_path):
    """Code that catches the SystemExit of SIGTERM and carries on: the watchdog ends the process with
    exit 21 CRBATCH_SIGNAL_DEADLINE seconds after the signal, saying why."""
    log = tmp_path / "log"
    p = _start(log, wrapper=SWALLOW_WRAPPER, CRBATCH_SIGNAL_DEADLINE="1")
    _wait_for(lambda: "ready" in log.read_text() or p.poll() is not None, 60, "the wrapper")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == INTERRUPTED
    assert 0.9 < time.monotonic() - t0 < 30 and "exiting now" in log.read_text()


def test_a_second_signal_in_the_training_loop_stops_at_once():
    """Flag mode (the training loop): the first SIGTERM only sets the flag, a second one raises exit 21."""
    from crbatch import signals

    with signals.deferred() as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(requested, 5, "the flag")
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs at one of these bytecodes
                pass
        assert e.value.code == INTERRUPTED
        signals.handled()  # as crbatch.cli does: the command ended (and the watchdog stands down)
    assert not requested()  # the next deferred() starts clean


def test_lock_held_by_a_survivor_of_a_dead_holder_is_not_taken_over(tmp_path):
    """The recorded holder died but a process it forked still has the lock: a second writer is refused
    (exit 16) and told which process to look for, instead of writing beside the survivor."""
    from crbatch import locks

    code = f"""
import os, time
from pathlib import Path
from crbatch import locks
with locks.hold(Path({str(tmp_path)!r}), "run directory"):
    if os.fork() == 0:  # the child inherits the locked descriptor and outlives its parent
        time.sleep(30)
        os._exit(0)
    os._exit(0)  # the parent dies without releasing (no finally): like kill -9
"""
    p = subprocess.run([sys.executable, "-c", code], env=_env(), timeout=60, cwd=tmp_path)
    assert p.returncode == 0
    rec = locks.read_record(tmp_path)
    assert rec is not None and rec.gone()  # the recorded holder has ended
    try:
        with pytest.raises(Exception) as e, locks.hold(tmp_path, "run directory"):
            pass
        assert getattr(e.value, "code", None) == LOCKED and "has ended but a process it started" in str(e.value)
    finally:
        survivors = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _cmd(int(d.name)) == code]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)


def _cmd(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return args[2].decode(errors="replace") if len(args) > 2 and args[1] == b"-c" else ""


# --- 7. a dataset directory from two builds -----------------------------------------------------------


def _mix(into: Path, other: Path, names: list[str]) -> None:
    """What a kill -9 between the build's final renames leaves: some files renamed from the new build."""
    for n in names:
        tmp = into / f".{n}.mix"
        shutil.copy2(other / n, tmp)
        os.replace(tmp, into / n)


def test_mixed_build_directory_is_refused_by_every_reader(tmp_path, shards, datasets):
    """cr_*.h5 of one build beside main_*.h5 of another (--seed 7): train, the streaming reader and
    the pipeline's completeness judgement refuse it (exit 12, naming the files and the fix); a rerun
    of the build repairs it. Before: all of them accepted the mixture as complete."""
    from crbatch.build.reader import DatasetReader
    from crbatch.cli import main

    mixed = tmp_path / "mixed"
    shutil.copytree(datasets, mixed)
    other = tmp_path / "seed7"
    assert main(["-q", "build", str(shards), "--output-dir", str(other), "--seed", "7"]) == 0
    _mix(mixed, other, ["cr_train.h5", "cr_val.h5", "cr_test.h5"])

    from crbatch.train.cli import main as train_main

    rc = train_main(["-q", "train", "--data", str(mixed), "--run-dir", str(tmp_path / "run"), "--epochs", "1", *TINY])
    assert rc == ExitCode.INPUT_SCHEMA
    assert not (tmp_path / "run" / "checkpoint.h5").exists()
    with pytest.raises(Exception, match=r"(?s)different builds.*(cr_train\.h5.*main_train|main_train\.h5.*cr_train)"):
        DatasetReader(mixed / "main_test.h5", batch_size=8)
    with pytest.raises(Exception) as e:
        DatasetReader(mixed / "main_train.h5", mixed / "cr_train.h5", batch_size=8)
    assert getattr(e.value, "code", None) == ExitCode.INPUT_SCHEMA and "crbatch build" in str(e.value)

    # The pipeline's judgement of the build job (status, and what submit reruns).
    from crbatch.batch.status import output_done

    plan = _pipeline_plan(tmp_path / "pipe", shards, datasets_dir=mixed)
    assert not output_done(plan, plan.stage("build")[0])

    # A rerun of the build into the same directory repairs it.
    ds = plan.layout.datasets
    assert main(["-q", "build", str(shards), "--output-dir", str(ds)]) == 0
    with DatasetReader(ds / "main_train.h5", ds / "cr_train.h5", batch_size=8) as rd:
        assert rd.n_jets > 0
    assert output_done(plan, plan.stage("build")[0])


def test_leftover_role_of_an_older_build_is_removed_by_a_rerun(tmp_path, shards):
    """A build without data shards (no control region) killed before it removed the cr_*.h5 of an
    earlier build: refused; the rerun is not skipped as "up to date" and removes them."""
    from crbatch.build.reader import DatasetReader
    from crbatch.cli import main

    ds = tmp_path / "ds"
    assert main(["-q", "build", str(shards), "--output-dir", str(ds)]) == 0
    no_data = tmp_path / "no_data"
    shutil.copytree(shards, no_data)
    (no_data / "data.h5").unlink()
    main_only = tmp_path / "main_only"
    assert main(["-q", "build", str(no_data), "--output-dir", str(main_only)]) == 0
    _mix(ds, main_only, ["main_train.h5", "main_val.h5", "main_test.h5"])
    with pytest.raises(Exception, match="different builds"):
        DatasetReader(ds / "main_train.h5", batch_size=8)
    assert main(["-q", "build", str(no_data), "--output-dir", str(ds)]) == 0
    assert not list(ds.glob("cr_*.h5"))
    with DatasetReader(ds / "main_train.h5", batch_size=8) as rd:
        assert rd.n_jets > 0


# --- 8. two trainings on one run directory ------------------------------------------------------------


def _lock_holder_pid(run: Path) -> int | None:
    for name in (".crbatch.lock",):
        try:
            return int(json.loads((run / name).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    return None


@pytest.mark.slow
def test_second_trainer_on_a_held_run_directory_exits_16(tmp_path, datasets):
    """While one `crbatch train` works in a run directory, a second one exits 16 naming the holder
    (host, pid) and touches nothing; after the first is killed with -9 the kernel has released the
    lock and the next trainer takes the stale lock file over and resumes. Before: two trainers."""
    run = tmp_path / "run"
    a = _start(tmp_path / "a.log", "train", "--data", datasets, "--run-dir", run, "--epochs", "30", *TINY)
    try:
        _wait_for(lambda: (run / "checkpoint.h5").exists() or a.poll() is not None, 300, "a checkpoint")
        assert a.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
        r = _crbatch("train", "--data", datasets, "--run-dir", run, "--epochs", "1", *TINY)
        assert r.returncode == LOCKED, r.stderr[-3000:]
        assert f"pid {a.pid}" in r.stderr and socket.gethostname() in r.stderr
        details = (run / "training_details.txt").read_text()
        assert details.count("=== start") == 1 and "=== resume" not in details
    finally:
        a.kill()
        a.wait()
    assert _lock_holder_pid(run) == a.pid  # the dead holder's record is still there: a stale lock file
    r = _crbatch("train", "--data", datasets, "--run-dir", run, "--epochs", "1", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stderr or "all 1 epochs done" in r.stderr
    _assert_nothing_half_written(run)


def test_job_script_spaces_the_retries_of_a_locked_output(tmp_path):
    """jobs/*.sh pass 16 on (the scheduler retries) after CRBATCH_LOCKED_WAIT seconds, so that a retry
    does not come back at once while the other writer still works; the status file says why."""
    from batch_helpers import fake_crbatch, job_env, simple_plan

    from crbatch.batch.plan import write_plan
    from crbatch.batch.status import read_status_file

    plan = simple_plan(tmp_path)
    plan_dir = write_plan(plan, tmp_path / "plan")
    fake, fake_dir = fake_crbatch(tmp_path)
    (fake_dir / "codes.train").write_text(f"{LOCKED}\n")
    t0 = time.monotonic()
    env = job_env(fake, fake_dir, CRBATCH_LOCKED_WAIT="1", CRBATCH_JOBS=str(JOBS))
    r = subprocess.run(["bash", str(JOBS / "train.sh"), str(plan_dir)], env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == LOCKED and time.monotonic() - t0 >= 1, r.stderr
    assert "waiting 1 s" in r.stderr
    st = read_status_file(plan.layout.status_file("train"))
    assert st["state"] == "failed" and st["exit"] == str(LOCKED) and st["scheduler_exit"] == str(LOCKED)


def _pipeline_plan(root: Path, shards: Path, datasets_dir: Path | None = None, epochs: int = 1):
    """A pipeline whose convert jobs are done already (real shards where it expects them), so that
    submit runs the real build and training; returns its plan (``datasets_dir``: copy those in as built)."""
    from crbatch.batch.pipeline import load_pipeline
    from crbatch.batch.plan import make_plan

    storage = root / "storage"
    inputs = root / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    kinds = {"qcd_361022_a": ("qcd", {}), "qcd_361023_a": ("qcd", {}), "sig_125_55": ("sig", {"mH": 125, "mS": 55}),
             "sig_600_275": ("sig", {"mH": 600, "mS": 275}), "bib": ("bib", {}), "data": ("data", {})}  # fmt: skip
    sets = []
    for stem, (kind, extra) in kinds.items():
        (inputs / f"{stem}.root").write_bytes(b"")
        (storage / "shards" / stem).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shards / f"{stem}.h5", storage / "shards" / stem / f"{stem}.h5")
        sets.append({"name": stem, "type": kind, "files": [str(inputs / f"{stem}.root")], **extra})
    doc = {
        "name": "t",
        "storage": str(storage),
        "datasets": sets,
        "train": {"options": {"epochs": epochs, "batch_size": 32, "frac_list": 0.5, "eval_batch_size": 64}},
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = make_plan(load_pipeline(root / "pipeline.yaml"), until="train")
    if datasets_dir is not None:
        plan.layout.datasets.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(datasets_dir, plan.layout.datasets, dirs_exist_ok=True)
    return plan


@pytest.mark.slow
def test_lock_survives_a_local_submit_killed_with_minus_9(tmp_path, shards):
    """The issue's case: `crbatch submit` (local) killed with -9 while its `crbatch train` child keeps
    running; a second submit must not start a second trainer on the run directory (its train job
    exits 16), `crbatch status` shows who holds the lock, and the first training finishes alone."""
    from crbatch.batch.status import collect_status

    plan = _pipeline_plan(tmp_path, shards, epochs=30)
    pipeline = tmp_path / "pipeline.yaml"
    run = plan.layout.run_dir
    submit = [sys.executable, "-m", "crbatch", "submit", str(pipeline), "--until", "train", "--jobs-dir", str(JOBS)]
    first = subprocess.Popen(submit, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    second = None
    try:
        _wait_for(lambda: (run / "checkpoint.h5").exists() or first.poll() is not None, 300, "the first checkpoint")
        assert first.poll() is None
        (trainer,) = _trainers(run)
        first.kill()  # kill -9: its job script and crbatch train live on in their own session
        first.wait()
        assert _pid_alive(trainer)
        log = tmp_path / "second.log"
        with open(log, "w") as fh:
            second = subprocess.Popen(submit, env=_env(CRBATCH_LOCKED_WAIT="0"), stdout=fh, stderr=subprocess.STDOUT,
                                      cwd=tmp_path)  # fmt: skip
        t0 = time.monotonic()
        details = run / "training_details.txt"
        while second.poll() is None:
            assert "=== resume" not in details.read_text(), "a second crbatch train works on the run directory"
            assert time.monotonic() - t0 < 240, "the second submit did not end"
            time.sleep(0.1)
        assert second.returncode == LOCKED, log.read_text()[-3000:]
        assert f"pid {trainer}" in log.read_text()
        st = collect_status(plan)["train"]
        assert st.state == "running" and f"pid {trainer}" in st.detail, st
        r = _crbatch("status", pipeline)
        assert f"pid {trainer}" in r.stdout and socket.gethostname() in r.stdout, r.stdout
        assert _trainers(run) == [trainer]
        details = (run / "training_details.txt").read_text()
        assert details.count("=== start") == 1 and "=== resume" not in details
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()
        for pid in _trainers(run):
            os.kill(pid, signal.SIGKILL)


def _trainers(run: Path) -> list[int]:
    """Live `crbatch train` processes working in ``run`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if d.name.isdigit() and b"train" in args and os.fsencode(run) in args and _pid_alive(int(d.name)):
            out.append(int(d.name))
    return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- 9. resume on rebuilt data ------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_on_rebuilt_data_is_refused_unless_allowed(tmp_path, shards, datasets):
    """`crbatch build … --seed 7` into the training's data directory (same counts, new build id):
    resuming refuses with exit 3 and says how to allow it; --allow-new-data resumes (and records it).
    Before: the run resumed silently on other jets."""
    pytest.importorskip("keras")
    from crbatch.cli import main as crbatch_main
    from crbatch.train.cli import main
    from crbatch.train.loop import train

    data = tmp_path / "ds"
    shutil.copytree(datasets, data)
    cfg = _cfg(data, epochs=1)
    run = _new_run(tmp_path / "run", cfg)
    assert train(cfg, run, hook=_hook).status == "complete"
    argv = ["-q", "train", "--run-dir", str(run)]
    assert crbatch_main(["-q", "build", str(shards), "--output-dir", str(data), "--seed", "7"]) == 0
    stamp = _sha(run / "checkpoint.h5")
    assert main([*argv, "--epochs", "2"]) == ExitCode.CONFIG
    assert _sha(run / "checkpoint.h5") == stamp and len(_history_rows(run)) == 1
    assert main([*argv, "--epochs", "2", "--allow-new-data"]) == 0
    assert len(_history_rows(run)) == 2
    assert "--allow-new-data" in (run / "training_details.txt").read_text()
