"""Fault injection, I/O side (issue 11): nothing damaged, mixed or half-done is ever reported complete.

Real files, real mounts, real signals: outputs that are inputs or someone else's files, damaged
ROOT baskets, full disks (size-limited tmpfs), read-only locations (read-only tmpfs and bind
mounts), silently damaged shards and datasets, and the smaller points of the issue. Corruption goes
to a bounded number of seeded random positions (tests/faults.py). Mount-based cases skip cleanly
where mounting is not permitted (they need root).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - lz4-compressed tables
import numpy as np
import pytest
from faults import (
    crbatch,
    error_lines,
    flip_bytes,
    h5_chunk_ranges,
    readonly_bind,
    root_basket_ranges,
    stale_tmp,
    tmpfs,
)
from shards import write_random_shard, write_set

from crbatch import errors, schema
from crbatch.cli import main
from crbatch.convert.selection import branches_for
from crbatch.errors import ExitCode

REF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference" / "divert"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="reference data (../shared/data/reference) absent")
SIG = REF / "sig_311314_bad_object_small.root"
BIB = REF / "bib.root"
TINY = ["--batch-size", "32", "--frac-list", "0.5", "--eval-batch-size", "64"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def convert(*args: object) -> int:
    return main(["convert", "divert", *map(str, args)])


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def no_temporaries(d: Path) -> bool:
    return not [p for p in d.rglob("*") if p.name.endswith(schema.TMP_MARK) or ".tmp" in p.name]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fault_data")
    write_set(base / "shards", n=150, seed=4)
    assert main(["-q", "build", str(base / "shards"), "--output-dir", str(base / "ds")]) == 0
    return base / "ds"


# --- 1. an output that is an input, or a file that is not a crbatch output of that kind -------------


@needs_ref
def test_convert_refuses_to_write_over_its_input(tmp_path):
    x = copy(BIB, tmp_path / "x.root")
    before = x.read_bytes()
    r = crbatch("convert", "divert", x, "--type", "bib", "--out", x)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert "is the input" in r.stderr and x.read_bytes() == before
    link = tmp_path / "link.h5"  # the same file under another name
    link.symlink_to(x)
    assert convert(x, "--type", "bib", "--out", link) == ExitCode.USAGE
    assert x.read_bytes() == before


@needs_ref
@pytest.mark.parametrize("kind", ["empty", "text", "foreign-hdf5", "other-crbatch-kind", "directory"])
def test_convert_never_replaces_a_foreign_file(tmp_path, kind, caplog):
    out = tmp_path / "out.h5"
    if kind == "empty":
        out.write_bytes(b"")
    elif kind == "text":
        out.write_text("my analysis notes\n")
    elif kind == "foreign-hdf5":
        with h5py.File(out, "w") as f:
            f["x"] = np.arange(10)
    elif kind == "other-crbatch-kind":
        with h5py.File(out, "w") as f:
            f.attrs["producer"], f.attrs["kind"] = "crbatch", "dataset"
    else:
        out.mkdir()
        (out / "keep").write_text("x")
    snapshot = out.read_bytes() if out.is_file() else None
    assert convert(BIB, "--type", "bib", "--out", out) == ExitCode.USAGE
    assert "exists and is not a crbatch shard" in caplog.text
    assert (out.read_bytes() == snapshot) if snapshot is not None else (out / "keep").exists()


@needs_ref
def test_synth_never_replaces_a_real_ntuple(tmp_path):
    real = copy(SIG, tmp_path / "real.root")
    before = real.read_bytes()
    r = crbatch("synth", "divert", "--type", "qcd", "--events", "10", "--out", real)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert "not made by `crbatch synth`" in r.stderr and real.read_bytes() == before


def test_build_refuses_foreign_outputs_and_its_own_inputs(tmp_path, caplog):
    shards = write_set(tmp_path / "shards", n=150, seed=1)
    out = tmp_path / "ds"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "notes"}')
    assert main(["build", str(shards), "--output-dir", str(out)]) == ExitCode.USAGE
    assert (out / "summary.json").read_text() == '{"my": "notes"}' and not list(out.glob("*.h5"))
    # A shard that would be overwritten by a dataset of the same name.
    own = tmp_path / "own"
    write_random_shard(own / "main_train.h5", "qcd", 100, 1, dsid=361022)
    for p in shards.glob("*.h5"):
        shutil.copy(p, own / p.name)
    before = (own / "main_train.h5").read_bytes()
    assert main(["build", str(own), "--output-dir", str(own)]) == ExitCode.USAGE
    assert "is the input" in caplog.text and (own / "main_train.h5").read_bytes() == before


def test_plot_never_replaces_a_foreign_directory(tmp_path):
    shard = write_random_shard(tmp_path / "s.h5", "qcd", 100, 1, dsid=361022)
    mine = tmp_path / "reports" / "mine"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    r = crbatch("plot", shard, "--output-dir", tmp_path / "reports", "--name", "mine")
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_train_refuses_a_run_directory_that_is_not_one(tmp_path, datasets):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "config.txt").write_text("x")
    (foreign / "notes.md").write_text("y")
    r = crbatch("train", "--data", datasets, "--run-dir", foreign, "--epochs", "1", *TINY)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert "not a run directory" in r.stderr and sorted(p.name for p in foreign.iterdir()) == ["config.txt", "notes.md"]
    r = crbatch("train", "--data", datasets, "--run-dir", datasets, "--epochs", "1", *TINY)
    assert r.returncode == ExitCode.USAGE and "lies inside" in r.stderr  # the data's own directory


def test_output_guard_recognises_each_kind(tmp_path):
    """check_output per kind: its own kind passes, a foreign file of the same suffix is refused."""
    import json

    from crbatch import outputs

    shard = write_random_shard(tmp_path / "s.h5", "qcd", 20, 1, dsid=361022)
    outputs.check_output(shard, "shard")
    for kind in ("dataset", "scored"):
        with pytest.raises(errors.CrbatchError, match="a crbatch 'shard' file") as e:
            outputs.check_output(shard, kind)
        assert e.value.code == ExitCode.USAGE
    (tmp_path / "summary.json").write_text(json.dumps({"build_id": "x", "crbatch_version": "1"}))
    outputs.check_output(tmp_path / "summary.json", "summary")
    (tmp_path / "m.fdeep.json").write_text(json.dumps({"architecture": {}, "trainable_params": {}}))
    outputs.check_output(tmp_path / "m.fdeep.json", "export:fdeep")
    (tmp_path / "m.preprocessing.json").write_text(json.dumps({"format": "crbatch-preprocessing"}))
    outputs.check_output(tmp_path / "m.preprocessing.json", "export:sidecar")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07...crbatch.preprocessing...")
    outputs.check_output(tmp_path / "m.onnx", "export:onnx")
    for kind, name in (("summary", "summary.json"), ("export:fdeep", "m.fdeep.json"),
                       ("export:sidecar", "m.preprocessing.json"), ("export:onnx", "m.onnx")):  # fmt: skip
        foreign = tmp_path / "foreign" / name
        foreign.parent.mkdir(exist_ok=True)
        foreign.write_text('{"someone": "else"}')
        with pytest.raises(errors.CrbatchError, match="exists and is not"):
            outputs.check_output(foreign, kind)
    run = tmp_path / "run"
    run.mkdir()
    (run / f".checkpoint.h5.host.1.ab{schema.TMP_MARK}").write_bytes(b"")  # crbatch's own hidden files
    outputs.check_output(run, "run")
    (run / "training_details.txt").write_text("")
    (run / "mine.txt").write_text("")
    outputs.check_output(run, "run")
    report = tmp_path / "rep"
    report.mkdir()
    for name in ("status.md", "status.json"):  # the pipeline's report job may have written these first
        (report / name).write_text("")
    outputs.check_output(report, "report")
    (report / "report.md").write_text("")
    with pytest.raises(errors.CrbatchError, match=r"without report\.md and index\.html"):
        outputs.check_output(report, "report")
    (report / "index.html").write_text("")
    outputs.check_output(report, "report")
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(errors.CrbatchError, match="dangling"):
        outputs.check_output(dangling, "shard")


# --- 2. a damaged compressed basket; any exception of one file -----------------------------------


@needs_ref
@pytest.mark.parametrize("seed", range(4))
def test_damaged_basket_is_exit_11_naming_branch_and_entries(tmp_path, seed, caplog):
    bad = copy(SIG, tmp_path / "in" / "bad.root")
    flip_bytes(bad, root_basket_ranges(bad, branches=tuple(branches_for("sig"))), n=64, seed=seed)
    good = copy(SIG, tmp_path / "in" / "good.root")
    out = tmp_path / "out"
    rc = convert(bad, good, "--type", "sig", "--mH", 125, "--mS", 55, "--output-dir", out)
    assert rc == ExitCode.INPUT_CORRUPT
    assert re.search(r"bad\.root: damaged data in branch '\w+', entries \d+–\d+", caplog.text), caplog.text
    assert schema.is_complete(out / "good.h5", "shard")  # the file after it was converted
    assert "summary: 2 file(s): 1 converted, 1 failed" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["good.h5"]


@needs_ref
def test_any_error_of_one_file_leaves_the_others(tmp_path, monkeypatch, caplog):
    from crbatch.convert import divert

    real = divert.tables_for

    def flaky(chunk, sel, data_type, masses):
        if "mH" in str(masses) or masses == (125.0, 55.0):
            raise RuntimeError("something nobody foresaw")
        return real(chunk, sel, data_type, masses)

    monkeypatch.setattr(divert, "tables_for", flaky)
    a = copy(SIG, tmp_path / "a.root")
    b = copy(BIB, tmp_path / "b.root")
    lst = tmp_path / "in.yaml"
    lst.write_text(f"- {{path: '{a}', type: sig, mH: 125, mS: 55}}\n- {{path: '{b}', type: bib}}\n")
    rc = convert(lst, "--output-dir", tmp_path / "out")
    assert rc == ExitCode.INTERNAL
    assert "a.root: unexpected error (RuntimeError: something nobody foresaw)" in caplog.text
    assert schema.is_complete(tmp_path / "out" / "b.h5", "shard")
    assert "summary: 2 file(s): 1 converted, 1 failed" in caplog.text


# --- 3. disk full ------------------------------------------------------------------------------------


def test_disk_full_while_writing_a_shard(tmp_path, synth_file):
    src = synth_file("qcd", 3000, 1)  # a 4.4 MB shard
    with tmpfs(tmp_path / "full", "3m") as d:
        stale = stale_tmp(d / "qcd_3000_1.h5")  # a killed converter's leftover
        r = crbatch("convert", "divert", src, "--type", "qcd", "--output-dir", d)
        assert r.returncode == ExitCode.TRANSIENT, r.stderr
        errs = error_lines(r.stderr)
        assert len(errs) == 1 and "qcd_3000_1.h5: no space left on the device" in errs[0], r.stderr
        assert "Traceback" not in r.stderr
        assert list(d.iterdir()) == [] and not stale.exists()  # nothing partial, the leftover removed


def test_hdf5_output_on_a_full_disk_never_crashes(tmp_path):
    """Many small datasets (a checkpoint's shape): HDF5 fails inside a dataset's close; one error,
    the original, and a clean exit — before the fix a second error replaced it and Python segfaulted."""
    code = (
        "import sys, numpy as np\nfrom pathlib import Path\nfrom crbatch import schema\n"
        "with schema.atomic_output(Path(sys.argv[1])) as tmp, schema.h5_output(tmp) as f:\n"
        "    for i in range(200):\n        f.create_dataset(f'state/{i}', data=np.random.rand(2000))\n"
        "    schema.mark_complete(f)\n"
    )
    with tmpfs(tmp_path / "full", "300k") as d:
        r = subprocess.run([sys.executable, "-c", code, str(d / "ck.h5")], capture_output=True, text=True)
        assert r.returncode == 1, r.stderr  # the Python exception, not a signal
        assert "crbatch.errors.Transient" in r.stderr and "no space left" in r.stderr
        assert "Exception ignored" not in r.stderr
        assert list(d.iterdir()) == []


def test_disk_full_while_building(tmp_path):
    shards = write_set(tmp_path / "shards", n=300, seed=2)
    with tmpfs(tmp_path / "full", "400k") as d:
        r = crbatch("build", shards, "--output-dir", d / "ds", "--tmp-dir", tmp_path / "work")
        assert r.returncode == ExitCode.TRANSIENT, r.stderr
        assert "no space left" in error_lines(r.stderr)[-1] and "Traceback" not in r.stderr
        assert not list((d / "ds").glob("*.h5")) and no_temporaries(d)


@pytest.mark.slow
def test_disk_full_while_training_and_leftovers_removed_at_the_next_start(tmp_path, datasets):
    with tmpfs(tmp_path / "full", "600k") as d:  # less than one checkpoint: fails in the first epoch
        r = crbatch("train", "--data", datasets, "--run-dir", d / "run", "--epochs", "2", *TINY)
        assert r.returncode == ExitCode.TRANSIENT, r.stderr[-3000:]
        errs = error_lines(r.stderr)
        assert len(errs) == 1 and "no space left on the device" in errs[0], r.stderr[-3000:]
        assert "Traceback" not in r.stderr and no_temporaries(d)
    run = tmp_path / "run"
    assert crbatch("train", "--data", datasets, "--run-dir", run, "--epochs", "1", *TINY).returncode == 0
    leftovers = [stale_tmp(run / "checkpoint.h5"), stale_tmp(run / "epochs" / "000.keras", directory=True),
                 stale_tmp(run / "plots" / "000_roc.png")]  # fmt: skip
    r = crbatch("train", "--data", datasets, "--run-dir", run, "--epochs", "2", *TINY)  # the resubmission
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(p.exists() for p in leftovers) and no_temporaries(run)


# --- 4. read-only output location ------------------------------------------------------------------


def _one_clear_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == ExitCode.OUTPUT_UNWRITABLE, r.stderr[-3000:]
    errs = error_lines(r.stderr)
    assert errs and all("read-only file system" in e for e in errs), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return errs[0]


@needs_ref
def test_read_only_location_convert(tmp_path):
    with tmpfs(tmp_path / "ro", readonly=True) as ro:
        _one_clear_line(crbatch("convert", "divert", BIB, "--type", "bib", "--output-dir", ro))
        _one_clear_line(crbatch("convert", "divert", BIB, "--type", "bib", "--output-dir", ro / "sub"))
    src = tmp_path / "writable"
    src.mkdir()
    with readonly_bind(src, tmp_path / "bound") as bound:
        _one_clear_line(crbatch("convert", "divert", BIB, "--type", "bib", "--output-dir", bound))
    assert list(src.iterdir()) == []


def test_read_only_location_build_plot_synth(tmp_path):
    shards = write_set(tmp_path / "shards", n=150, seed=3)
    with tmpfs(tmp_path / "ro", readonly=True) as ro:
        _one_clear_line(crbatch("build", shards, "--output-dir", ro / "ds"))
        _one_clear_line(crbatch("plot", shards / "qcd_361022_a.h5", "--output-dir", ro, "--name", "r"))
        pytest.importorskip("ROOT")
        _one_clear_line(crbatch("synth", "divert", "--type", "qcd", "--events", "10", "--out", ro / "x.root"))


def test_read_only_location_train(tmp_path, datasets):
    with tmpfs(tmp_path / "ro", readonly=True) as ro:
        _one_clear_line(crbatch("train", "--data", datasets, "--output-dir", ro, "--epochs", "1", *TINY))


def test_atomic_output_clean_up_never_masks_the_error(tmp_path, monkeypatch):
    with (
        tmpfs(tmp_path / "ro", readonly=True) as ro,
        pytest.raises(errors.OutputUnwritable, match="read-only"),
        schema.atomic_output(ro / "x.h5") as tmp,
    ):
        tmp.write_bytes(b"x")
    # A clean-up that fails for its own reason never replaces the body's error.
    real = Path.unlink

    def failing_unlink(self, *a, **k):
        if self.name.endswith(schema.TMP_MARK):
            raise OSError(5, "Input/output error")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with pytest.raises(ValueError, match="the real one"), schema.atomic_output(tmp_path / "y.h5") as tmp:
        tmp.write_bytes(b"x")
        raise ValueError("the real one")


def test_exit_code_14_is_documented_and_not_retried(capsys):
    from crbatch.batch import codes

    assert ExitCode.OUTPUT_UNWRITABLE == 14 and ExitCode.OUTPUT_UNWRITABLE in errors.DO_NOT_RETRY
    assert codes.scheduler_code(14) == codes.DO_NOT_RETRY
    assert main(["exit-codes"]) == 0
    assert " 14  OUTPUT_UNWRITABLE" in capsys.readouterr().out
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "| 14 | output location read-only or not writable" in readme


# --- 10. silent corruption of a complete shard or dataset ------------------------------------------


@needs_ref
@pytest.mark.parametrize("seed", range(4))
def test_damaged_shard_is_reconverted_by_itself_and_refused_by_build(tmp_path, seed, caplog):
    args = ("--type", "sig", "--mH", 125, "--mS", 55)
    assert convert(SIG, *args, "--output-dir", tmp_path / "ref") == 0
    out = tmp_path / "out" / SIG.with_suffix(".h5").name
    assert convert(SIG, *args, "--output-dir", out.parent) == 0
    flip_bytes(out, h5_chunk_ranges(out), seed=seed)
    assert not schema.is_complete(out, "shard")
    caplog.clear()
    assert main(["build", str(out), "--output-dir", str(tmp_path / "ds")]) == ExitCode.INPUT_CORRUPT
    assert "damaged shard" in caplog.text and "does not match its checksum" in caplog.text
    assert convert(SIG, *args, "--output-dir", out.parent) == 0  # the resubmission
    assert "redoing" in caplog.text and schema.is_complete(out, "shard")
    with h5py.File(out) as a, h5py.File(tmp_path / "ref" / out.name) as b:
        for name in ("jets", *schema.TABLES):
            assert np.array_equal(a[name][:], b[name][:])


def test_damaged_shard_is_not_done_for_status_and_a_resubmission_redoes_it(tmp_path, synth_file):
    from batch_helpers import JOBS, pipeline_yaml

    from crbatch.batch.local import LocalRunner
    from crbatch.batch.pipeline import load_pipeline
    from crbatch.batch.plan import make_plan, write_plan
    from crbatch.batch.status import collect_status

    src = synth_file("qcd", 200, 7)
    y = pipeline_yaml(tmp_path / "p.yaml", tmp_path / "storage", [{"name": "qcd", "type": "qcd", "files": [str(src)]}])
    plan = make_plan(load_pipeline(y), until="convert")
    plan_dir = write_plan(plan, tmp_path / "plan")
    assert LocalRunner(plan, plan_dir, JOBS, workers=1).run() == 0
    (task,) = plan.stage("convert")
    shard = Path(task.outputs[0])
    assert collect_status(plan)[task.job].state == "done"
    flip_bytes(shard, h5_chunk_ranges(shard, ("clusters",)), seed=1)
    assert collect_status(plan)[task.job].state != "done"
    assert LocalRunner(plan, plan_dir, JOBS, workers=1).run() == 0
    assert collect_status(plan)[task.job].state == "done" and schema.is_complete(shard, "shard")


def test_checksums_cover_every_layout_and_the_attributes(tmp_path):
    p = tmp_path / "all.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("chunked", data=np.arange(50_000, dtype="f4"), chunks=(1000,), **schema.compression())
        f.create_dataset("contiguous", data=np.arange(20_000, dtype="i8"))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        f.create_dataset("compact", data=np.arange(10, dtype="i2"), dcpl=dcpl)
        f.create_dataset("group/text", data="some JSON", dtype=h5py.string_dtype())
        f.create_dataset("empty", shape=(0,), maxshape=(None,), chunks=(16,), dtype="f4")
        f.attrs["producer"], f.attrs["schema_version"], f.attrs["n_jets"] = "crbatch", schema.SCHEMA_VERSION, 5
        schema.mark_complete(f)
    with h5py.File(p) as f:
        schema.verify_content(f)
        assert all(str(f[n].attrs[schema.A_CHECKSUM]).startswith("xxh3-64:") for n in ("chunked", "group/text"))
    for name in ("chunked", "contiguous"):
        q = copy(p, tmp_path / f"{name}.h5")
        flip_bytes(q, h5_chunk_ranges(q, (name,)), n=4)
        with pytest.raises(schema.DamagedError, match=name):
            schema.check_complete(q)
    q = copy(p, tmp_path / "attr.h5")
    with h5py.File(q, "a") as f:
        f.attrs["n_jets"] = 6  # one attribute changed after the file was sealed
    with pytest.raises(schema.DamagedError, match="attributes"):
        schema.check_complete(q)
    q = copy(p, tmp_path / "text.h5")
    with h5py.File(q, "a") as f:
        del f["group/text"]
    with pytest.raises(schema.DamagedError):
        schema.check_complete(q)
    q = copy(p, tmp_path / "old.h5")
    with h5py.File(q, "a") as f:
        del f.attrs[schema.A_CHECKSUM]
    with pytest.raises(schema.NotAcceptedError, match="no content checksum") as e:
        schema.check_complete(q)
    assert not isinstance(e.value, schema.DamagedError)


def test_datasets_carry_checksums_and_a_damaged_one_is_refused(tmp_path, datasets, caplog):
    for p in datasets.glob("*.h5"):
        with h5py.File(p) as f:
            schema.verify_content(f)
    ds = tmp_path / "ds"
    shutil.copytree(datasets, ds)
    flip_bytes(ds / "main_train.h5", h5_chunk_ranges(ds / "main_train.h5", ("tracks",)), seed=3)
    assert not schema.is_complete(ds / "main_train.h5", "dataset")
    r = crbatch("train", "--data", ds, "--output-dir", tmp_path / "tr", "--epochs", "1", *TINY)
    assert r.returncode == ExitCode.INPUT_CORRUPT, r.stderr[-2000:]
    assert "does not match its checksum" in r.stderr


# --- smaller points ------------------------------------------------------------------------------------


def test_empty_and_text_files_are_named_by_their_real_cause(tmp_path, caplog):
    (tmp_path / "zero.root").write_bytes(b"")
    (tmp_path / "notes.root").write_text("hello\n")
    (tmp_path / "head.root").write_bytes(b"root\0\0\0\0")
    rc = convert(tmp_path / "zero.root", tmp_path / "notes.root", tmp_path / "head.root", "--type", "bib",
                 "--output-dir", tmp_path / "out")  # fmt: skip
    assert rc == ExitCode.INPUT_CORRUPT
    assert "zero.root: not a ROOT file: empty file (0 bytes)" in caplog.text
    assert "notes.root: not a ROOT file: a text file of 6 bytes" in caplog.text
    assert "head.root: truncated ROOT file" in caplog.text


@needs_ref
def test_sigterm_during_convert_says_what_was_interrupted(tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "crbatch", "convert", "divert", str(SIG), "--type", "qcd",
                          "--output-dir", str(out), "--step-size", "1"], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CRBATCH_NO_BAR": "1"})  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not any(out.glob(f"*{schema.TMP_MARK}")):
        time.sleep(0.01)
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == ExitCode.INTERRUPTED
    assert "interrupted while converting" in err and SIG.name in err and "was not written" in err, err
    assert list(out.iterdir()) == []


def test_empty_shard_names_the_cut_that_removed_the_jets(tmp_path, synth_file, caplog):
    src = synth_file("qcd", 200, 3)  # multijet MC: no BIB-flagged HLT jet
    assert convert(src, "--type", "bib", "--output-dir", tmp_path) == 0
    line = next(r.getMessage() for r in caplog.records if "no jet passed" in r.getMessage())
    assert re.search(r"\d+ jets in the jet window .*, 0 events with a BIB-flagged HLT jet \(the cut that removed them\)",
                     line), line  # fmt: skip


@needs_ref
def test_successful_summaries_are_info(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert convert(BIB, "--type", "bib", "--output-dir", tmp_path / "s") == 0
    assert main(["build", str(write_set(tmp_path / "shards", n=150)), "--output-dir", str(tmp_path / "d")]) == 0
    summaries = [r for r in caplog.records if r.getMessage().startswith("summary")]
    assert summaries and all(r.levelno == logging.INFO for r in summaries)
    caplog.clear()
    assert convert(tmp_path / "nope.root", "--type", "bib", "--output-dir", tmp_path / "s") == ExitCode.INPUT_MISSING
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("summary")] == [logging.WARNING]


def test_build_searches_directories_recursively(tmp_path):
    """``crbatch build <storage>/shards`` with one folder per dataset (the pipeline's layout)."""
    flat = write_set(tmp_path / "flat", n=150, seed=5)
    nested = tmp_path / "shards"
    for p in flat.glob("*.h5"):
        dest = nested / p.name.split("_")[0] / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (nested / "qcd" / ".hidden").mkdir()
    (nested / "qcd" / ".hidden" / "x.h5").write_text("not a shard")  # hidden: never taken
    (nested / "qcd" / f".a.h5.host.1.ab{schema.TMP_MARK}").write_text("a temporary")
    assert main(["build", str(nested), "--output-dir", str(tmp_path / "a")]) == 0
    assert main(["build", str(flat), "--output-dir", str(tmp_path / "b")]) == 0
    with h5py.File(tmp_path / "a" / "main_train.h5") as a, h5py.File(tmp_path / "b" / "main_train.h5") as b:
        assert np.array_equal(a["jets"]["eventNumber"], b["jets"]["eventNumber"])


@needs_ref
def test_a_file_name_with_a_newline_stays_on_one_log_line(tmp_path):
    odd = copy(BIB, tmp_path / "in" / "two\nlines.root")
    bad = tmp_path / "in" / "bad\nname.root"
    bad.write_text("not ROOT\n")
    r = crbatch("convert", "divert", odd, bad, "--type", "bib", "--output-dir", tmp_path / "out")
    assert r.returncode == ExitCode.INPUT_CORRUPT
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert all(LOG_LINE.match(ln) or ln.startswith("  ") for ln in lines), r.stderr
    assert any("'two\\nlines.root'" in ln or "two\\nlines" in ln for ln in lines), r.stderr
    assert schema.is_complete(tmp_path / "out" / "two\nlines.h5", "shard")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--set", "epochs=abc", "--epochs", "1", "--print-config"],
        [
            "convert",
            "divert",
            "x.root",
            "--type",
            "qcd",
            "--set",
            "min_jet_pt=abc",
            "--min-jet-pt",
            "30",
            "--print-config",
        ],
    ],
)
def test_a_bad_value_is_an_error_wherever_it_comes_from(argv, caplog):
    assert main(argv) == ExitCode.CONFIG
    assert "a bad value is an error wherever it comes from" in caplog.text


def test_a_bad_value_in_the_config_file_overridden_by_a_flag(tmp_path, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: abc\n")
    assert main(["train", "--config", str(cfg), "--epochs", "2", "--print-config"]) == ExitCode.CONFIG
    assert "c.yaml: epochs='abc'" in caplog.text
    cfg.write_text("epochs: 5\n")  # a good value overridden is fine
    assert main(["train", "--config", str(cfg), "--epochs", "2", "--print-config"]) == 0
