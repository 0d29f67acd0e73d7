"""``crbatch convert xaod`` with a fake DiVertAnalysis (tests/fake_divert/produce_ntuple.py).

The command lines crbatch builds (no shell, placeholders, --nevents, models, setup scripts), the
per-file jobs (work dirs, atomic outputs, skip-if-complete, --force, --out, input lists), the models
contract (--add-training → $CRBATCH_NN_MODELS_DIR) and every failure path with its exit code.
Tests where the fake must write a real ntuple need PyROOT (the synth extra); the others do not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uproot
import yaml

from crbatch.cli import main
from crbatch.convert import xaod
from crbatch.errors import ConfigError, ExitCode

FAKE_DIR = Path(__file__).resolve().parent / "fake_divert"
FAKE = FAKE_DIR / "produce_ntuple.py"
XAOD_NAME = "DAOD_EXOT15.311314._000001.pool.root.1"
FAKE_ARGS = ["-c", "{campaign}", "-t", "{data_type}", "-a", "{analysis}", "--nopileup", "--inputDS", "{input}"]


needs_root = pytest.mark.skipif(
    importlib.util.find_spec("ROOT") is None, reason="PyROOT not installed (pip install 'crbatch[synth]')"
)


def make_xaod(path: Path) -> Path:
    """A small ROOT file standing in for an xAOD (the fake only needs it to exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as f:
        f["CollectionTree"] = {"x": [1, 2, 3]}
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A config running the fake with this Python, a record file, a work-dir parent; mode 'ok'."""
    record = tmp_path / "record.jsonl"
    work = tmp_path / "work"
    cfg = tmp_path / "xaod.yaml"
    cfg.write_text(yaml.safe_dump({"command": [sys.executable, str(FAKE), *FAKE_ARGS], "work_dir": str(work)}))
    monkeypatch.setenv("FAKE_DIVERT_RECORD", str(record))
    monkeypatch.setenv("FAKE_DIVERT_MODE", "ok")
    monkeypatch.delenv(xaod.SETUP_ENV, raising=False)
    monkeypatch.delenv("CRBATCH_NN_MODELS_DIR", raising=False)

    class Env:
        root = tmp_path
        config = cfg
        work_dir = work
        out = tmp_path / "ntuples"

        @staticmethod
        def calls() -> list[dict]:
            return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

        @staticmethod
        def run(*args: object, campaign: str | None = "mc16e") -> int:
            extra = ["--campaign", campaign] if campaign else []
            return main(["convert", "xaod", *map(str, args), "--config", str(cfg), "--output-dir", str(Env.out),
                         *extra])  # fmt: skip

    return Env


def leftovers(env) -> list[Path]:
    """Work dirs and temporaries that a finished run must not leave behind."""
    found = list(env.work_dir.glob("*")) if env.work_dir.exists() else []
    return found + (list(env.out.glob(".*")) if env.out.exists() else [])


# ---------------------------------------------------------------------------------------------------
# Command lines


def test_default_command_is_the_reference_one_with_campaign_and_type():
    cfg = xaod.ConvertXaodConfig(campaign="mc16a", data_type="qcd")
    values = {"input": "/in/a b;rm -rf x.root", "input_name": "x", "stem": "x", "campaign": "mc16a",
              "data_type": "qcd", "analysis": "cr", "nevents": "", "models_dir": "", "work_dir": "/w"}  # fmt: skip
    argv = xaod.build_argv(cfg, values, [], with_models=False)
    # One token per argument: a file name with blanks or shell syntax stays one argv item, no shell.
    assert argv == ["produce_ntuple.py", "-c", "mc16a", "-t", "qcd", "-a", "cr", "--nopileup", "--inputDS",
                    "/in/a b;rm -rf x.root"]  # fmt: skip
    cfg = xaod.ConvertXaodConfig(campaign="mc16a", nevents=7, models_args=["--nn-models", "{models_dir}"])
    argv = xaod.build_argv(cfg, {**values, "nevents": "7", "models_dir": "/w/nn_models"}, [], with_models=True)
    assert argv[-4:] == ["--nevents", "7", "--nn-models", "/w/nn_models"]
    argv = xaod.build_argv(cfg, {**values, "nevents": "7"}, ["/rel/setup.sh", "/b/setup.sh"], with_models=False)
    assert argv[:2] == ["bash", "-c"] and argv[3:7] == ["crbatch-divert-setup", "2", "/rel/setup.sh", "/b/setup.sh"]
    assert argv[7:] == ["produce_ntuple.py", "-c", "mc16a", "-t", "qcd", "-a", "cr", "--nopileup", "--inputDS",
                        "/in/a b;rm -rf x.root", "--nevents", "7"]  # fmt: skip
    assert "/in/" not in argv[2]  # the wrapper script never contains input names


@pytest.mark.parametrize(
    ("override", "text"),
    [
        ({"command": ["divert", "{inptu}"]}, "unknown placeholder {inptu}"),
        ({"command": []}, "must name the program"),
        ({"produces": "/abs/out.root"}, "inside the work dir"),
        ({"campaign": "mc16 e"}, "no spaces"),
        ({"data_type": "-x"}, "not starting with -"),
        ({"models_args": ["{models}"]}, "unknown placeholder {models}"),
    ],
)
def test_config_errors(override, text):
    from crbatch.config import build_config

    with pytest.raises(ConfigError, match=text.replace("{", r"\{").replace("}", r"\}")):
        build_config(xaod.ConvertXaodConfig, None, override)


def test_output_names_and_plan(tmp_path):
    assert xaod.output_stem(Path(XAOD_NAME)) == "DAOD_EXOT15.311314._000001"
    assert xaod.output_stem(Path("a/x.root")) == "x"
    assert xaod.output_stem(Path("odd")) == "odd"
    a, b = tmp_path / "a" / "f.root", tmp_path / "b" / "f.root"
    jobs = xaod.plan([(None, a), (None, b), (None, tmp_path / "g.pool.root.2")], tmp_path / "o", None)
    names = [j.out.name for j in jobs]
    assert names[2] == "g.root" and names[0] != names[1] and all(n.startswith("f-") for n in names[:2])
    entry = xaod.XaodInput(path="x", output_dir="sig")
    assert xaod.plan([(entry, a)], tmp_path / "o", None)[0].out == tmp_path / "o" / "sig" / "f.root"


# ---------------------------------------------------------------------------------------------------
# Jobs with the fake writing real ntuples


@needs_root
def test_jobs_atomic_idempotent_and_feeding_convert_divert(env):
    inputs = [make_xaod(env.root / "in" / XAOD_NAME), make_xaod(env.root / "in2" / "other.root")]
    assert env.run(*inputs, "--data-type", "qcd", "--nevents", "20") == 0
    calls = env.calls()
    assert len(calls) == 2
    assert calls[0]["argv"] == ["-c", "mc16e", "-t", "qcd", "-a", "cr", "--nopileup", "--inputDS",
                                str(inputs[0].resolve()), "--nevents", "20"]  # fmt: skip
    assert Path(calls[0]["cwd"]).parent == env.work_dir and calls[0]["cwd"] != calls[1]["cwd"]  # one dir per file
    outs = [env.out / "DAOD_EXOT15.311314._000001.root", env.out / "other.root"]
    for out in outs:
        assert xaod.root_entries(out, "trees_DV_") == 20
    assert leftovers(env) == []

    # A rerun skips complete outputs; --force redoes them.
    assert env.run(*inputs, "--data-type", "qcd", "--nevents", "20") == 0
    assert len(env.calls()) == 2
    assert env.run(inputs[0], "--data-type", "qcd", "--nevents", "20", "--force") == 0
    assert len(env.calls()) == 3

    # The output feeds `convert divert`.
    shards = env.root / "shards"
    assert main(["convert", "divert", *map(str, outs), "--type", "qcd", "--output-dir", str(shards)]) == 0
    assert sorted(p.name for p in shards.glob("*.h5")) == ["DAOD_EXOT15.311314._000001.h5", "other.h5"]


@needs_root
def test_incomplete_output_is_redone_and_out_names_one_file(env):
    src = make_xaod(env.root / "in" / "x.root")
    out = env.root / "single" / "named.root"
    out.parent.mkdir()
    out.write_bytes(b"half a file")  # e.g. copied by hand, or another tool's: not recognisably ours
    assert env.run(src, "--out", out, "--data-type", "bib") == ExitCode.USAGE  # refused, left untouched
    assert out.read_bytes() == b"half a file"
    out.unlink()
    assert env.run(src, "--out", out, "--data-type", "bib") == 0
    assert xaod.root_entries(out, "trees_DV_") == 50
    assert env.calls()[0]["type"] == "bib"
    assert env.run(make_xaod(env.root / "y.root"), src, "--out", out) == ExitCode.USAGE


@needs_root
def test_input_list_sets_campaign_and_type_per_file(env):
    a, b = make_xaod(env.root / "in" / "a.root"), make_xaod(env.root / "in" / "b.root")
    listing = env.root / "inputs.yaml"
    listing.write_text(yaml.safe_dump([{"path": str(a), "campaign": "mc16a", "data_type": "signal"},
                                       {"path": str(b), "output_dir": "qcd"}]))  # fmt: skip
    assert env.run(listing, "--data-type", "qcd", campaign="mc16d") == 0
    calls = {Path(c["argv"][-1]).name: c for c in env.calls()}
    assert (calls["a.root"]["campaign"], calls["a.root"]["type"]) == ("mc16a", "signal")
    assert (calls["b.root"]["campaign"], calls["b.root"]["type"]) == ("mc16d", "qcd")
    assert (env.out / "a.root").exists() and (env.out / "qcd" / "b.root").exists()


@needs_root
def test_add_training_passes_fdeep_exports_by_directory(env, monkeypatch):
    exports = env.root / "exports"
    exports.mkdir()
    model = {"architecture": {"class_name": "Functional"}, "trainable_params": {}, "hash": "x"}
    (exports / "e2e_00000_e003.fdeep.json").write_text(json.dumps(model))
    other = env.root / "mine.fdeep.json"
    other.write_text(json.dumps(model))
    src = make_xaod(env.root / "x.root")
    assert env.run(src, "--exports-dir", exports, "--add-training", "e2e/0/3", other) == 0
    m = env.calls()[0]["models"]
    assert m["files"] == ["models.json", "nn_config_e2e_0_3.json", "nn_config_mine.json"]
    assert [e["name"] for e in m["manifest"]["models"]] == ["e2e_0_3", "mine"]
    assert m["manifest"]["models"][1]["source"] == str(other.resolve())
    assert Path(m["dir"]).parent == Path(env.calls()[0]["cwd"])


@needs_root
def test_setup_scripts_are_sourced_in_the_commands_shell(env, monkeypatch):
    src = make_xaod(env.root / "x.root")
    monkeypatch.setenv(xaod.SETUP_ENV, str(FAKE_DIR / "setu?.sh"))  # the default of `setup`; globs allowed
    assert env.run(src) == 0
    assert env.calls()[0]["setup"] == "sourced setup.sh"


@needs_root
def test_one_bad_file_does_not_stop_the_others(env):
    good = make_xaod(env.root / "good.root")
    bad = env.root / "bad.root"
    bad.write_text("not root")
    assert env.run(good, bad) == ExitCode.INPUT_CORRUPT
    assert (env.out / "good.root").exists() and not (env.out / "bad.root").exists()


# ---------------------------------------------------------------------------------------------------
# Failures (no PyROOT needed: the fake fails before writing, or writes with uproot)


def test_missing_and_bad_inputs(env, caplog):
    assert env.run(env.root / "nope.root") == ExitCode.INPUT_MISSING
    bad = env.root / "bad.root"
    bad.write_text("not root")
    assert env.run(bad) == ExitCode.INPUT_CORRUPT
    assert "not a ROOT file" in caplog.text
    assert env.calls() == []  # DiVertAnalysis never ran


def test_missing_campaign_and_models(env, caplog):
    src = make_xaod(env.root / "x.root")
    assert env.run(src, campaign=None) == ExitCode.CONFIG
    assert "no campaign" in caplog.text
    assert env.run(src, "--add-training", "m/0/1", "--exports-dir", env.root) == ExitCode.INPUT_MISSING
    assert "crbatch export m/0/1 --format fdeep" in caplog.text
    notfdeep = env.root / "x.fdeep.json"
    notfdeep.write_text('{"a": 1}')
    assert env.run(src, "--add-training", notfdeep) == ExitCode.INPUT_CORRUPT
    assert env.calls() == []


@pytest.mark.parametrize(
    ("mode", "code", "text"),
    [
        ("fail", ExitCode.TRANSIENT, "exited with status 3"),
        ("crash", ExitCode.TRANSIENT, f"killed by signal {int(signal.SIGSEGV)}"),
        ("no-output", ExitCode.CONFIG, f"did not write {{work}}/submit_dir/data-trees/{XAOD_NAME}.root"),
        ("wrong-name", ExitCode.CONFIG, "found: submit_dir/data-trees/renamed.root"),
        ("corrupt", ExitCode.TRANSIENT, "unreadable"),
        ("no-tree", ExitCode.CONFIG, "has no tree 'trees_DV_'"),
    ],
)
def test_divert_failures(env, monkeypatch, caplog, mode, code, text):
    src = make_xaod(env.root / XAOD_NAME)
    monkeypatch.setenv("FAKE_DIVERT_MODE", mode)
    assert env.run(src) == code
    work = Path(env.calls()[0]["cwd"])
    assert text.format(work=work) in caplog.text
    if mode == "fail":
        assert "EventLoop: something went badly wrong" in caplog.text  # the log's tail is in the message
    assert not env.out.exists() or list(env.out.iterdir()) == []  # nothing half-written
    assert leftovers(env) == []


def test_keep_work_dir_keeps_the_log(env, monkeypatch, caplog):
    src = make_xaod(env.root / "x.root")
    monkeypatch.setenv("FAKE_DIVERT_MODE", "fail")
    assert env.run(src, "--keep-work-dir") == ExitCode.TRANSIENT
    work = Path(env.calls()[0]["cwd"])
    assert "EventLoop: something went badly wrong" in (work / "divert.log").read_text()
    assert f"kept the work dir of {src}: {work}" in caplog.text


def test_timeout_stops_divert(env, monkeypatch, caplog):
    src = make_xaod(env.root / "x.root")
    monkeypatch.setenv("FAKE_DIVERT_MODE", "hang")
    t0 = time.monotonic()
    assert env.run(src, "--timeout", "2") == ExitCode.TRANSIENT
    assert time.monotonic() - t0 < 30
    assert "longer than timeout=2 s" in caplog.text


def test_command_and_setup_problems(env, monkeypatch, caplog, tmp_path):
    src = make_xaod(env.root / "x.root")
    assert env.run(src, "--set", "command=[/nonexistent/produce_ntuple.py]") == ExitCode.CONFIG
    assert "cannot start '/nonexistent/produce_ntuple.py'" in caplog.text
    assert env.run(src, "--setup", str(FAKE_DIR / "nothing*.sh")) == ExitCode.CONFIG
    assert "must match one file, matched nothing" in caplog.text
    assert env.run(src, "--setup", str(FAKE_DIR / "setup_fail.sh")) == ExitCode.TRANSIENT
    assert "setup_fail.sh: release not found" in caplog.text
    assert env.run(src, "--setup", str(FAKE_DIR / "setup.sh"), "--set", "command=[no-such-divert]") == ExitCode.CONFIG
    assert "'no-such-divert' not found after the setup scripts (exit 127)" in caplog.text
    assert leftovers(env) == []


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as gone)."""
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_sigterm_stops_divert_and_leaves_nothing(env, tmp_path):
    """A batch eviction (SIGTERM) while DiVertAnalysis runs: its process is killed, exit 21, no output."""
    src = make_xaod(env.root / "x.root")
    environ = {**os.environ, "FAKE_DIVERT_MODE": "hang"}
    cmd = [sys.executable, "-m", "crbatch", "convert", "xaod", str(src), "--config", str(env.config),
           "--output-dir", str(env.out), "--campaign", "mc16e"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if env.calls():
            break
        time.sleep(0.05)
    pid = env.calls()[0]["pid"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert _gone(pid), "DiVertAnalysis still running after crbatch was stopped"
    assert leftovers(env) == []


def test_print_config(env, capsys):
    src = make_xaod(env.root / "x.root")
    assert env.run(src, "--print-config") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["campaign"] == "mc16e" and printed["inputs"] == [{"path": str(src), "campaign": None,
                                                                     "data_type": None, "output_dir": None}]  # fmt: skip
