"""The local backend on real data: the README's first command (``crbatch demo``: the whole pipeline),
resubmission, status and collect; and a property-based test that renders and runs convert jobs on
file names with spaces, quotes, ``$``, backticks, newlines and non-ASCII characters."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from batch_helpers import JOBS, pipeline_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crbatch import cli, schema
from crbatch.batch.local import LocalRunner
from crbatch.batch.pipeline import load_pipeline
from crbatch.batch.plan import make_plan, write_plan
from crbatch.batch.status import collect_status, complete, read_status_file

pytestmark = [pytest.mark.needs_root]


def crbatch(*args) -> int:
    return cli.main(["-q", *map(str, args)])


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    """`crbatch demo`: synthetic inputs → convert jobs → build → train (2 epochs) → analyze + export, locally,
    ending with the report path; the exported epoch is the one the analysis chose and the report's numbers
    are metrics.json's; a second submission redoes nothing; status and collect read storage."""
    from test_analyze import check_numbers_match_metrics

    pytest.importorskip("keras")
    pytest.importorskip("ROOT")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("the ONNX export needs the TensorFlow backend here")
    monkeypatch.chdir(tmp_path)
    assert crbatch("demo", "--output-dir", "demo", "--scale", "0.15", "--epochs", "2") == 0
    out = capsys.readouterr().out
    storage = tmp_path / "demo" / "storage"
    report = storage / "reports" / "demo" / "report.md"
    assert out.rstrip().splitlines()[-1] == f"report: {report}"
    assert report.is_file() and (report.parent / "index.html").is_file()
    assert (report.parent / "status.md").is_file()  # the final status report
    assert len(list((storage / "shards").rglob("*.h5"))) == 5
    assert all(schema.is_complete(p, "shard") for p in (storage / "shards").rglob("*.h5"))
    exports = storage / "exports" / "demo"
    hist = json.loads((storage / "training_results" / "demo" / "00000" / "history.json").read_text())
    assert hist["epoch"] == [0, 1]
    metrics = json.loads((report.parent / "metrics.json").read_text())
    chosen = metrics["runs"][0]["choice"]["epoch"]
    # the model that ships is the model in the report (the pipeline used to export epoch -1)
    stem = f"demo_00000_e{chosen:03d}"
    assert sorted(p.name for p in exports.iterdir() if not p.name.startswith(".")) == sorted(
        f"{stem}{s}" for s in (".fdeep.json", ".onnx", ".raw.onnx", ".preprocessing.json")
    )
    assert metrics["runs"][0]["export"]["epoch"] == chosen
    assert json.loads((exports / f"{stem}.preprocessing.json").read_text())["choice"]["epoch"] == chosen
    assert check_numbers_match_metrics(report.parent) > 50

    pipeline = tmp_path / "demo" / "pipeline.yaml"
    attempts = {f.name: read_status_file(f)["attempt"] for f in (storage / "status" / "demo").glob("*.status")}
    assert crbatch("submit", pipeline) == 0  # everything is complete: nothing runs again
    again = {f.name: read_status_file(f)["attempt"] for f in (storage / "status" / "demo").glob("*.status")}
    assert again == attempts

    capsys.readouterr()
    assert crbatch("status", pipeline, "--check", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] and doc["report"] == str(report)
    train = next(j for j in doc["jobs"] if j["job"] == "train")
    assert train["state"] == "done" and train["epochs"] == [2, 2]
    assert crbatch("collect", storage / "batch" / "demo" / "local", "--output-dir", tmp_path / "got") == 0
    got = tmp_path / "got"
    for f in ("report/report.md", "report/index.html", "training/history.json", "datasets/summary.json", "status.md",
              "README.md"):  # fmt: skip
        assert (got / f).is_file(), f
    assert list((got / "exports").glob("*.onnx"))


@pytest.fixture(scope="module")
def root_file(tmp_path_factory) -> Path:
    pytest.importorskip("ROOT")
    from crbatch.synth import divert

    divert.load_root()
    return divert.write_divert(tmp_path_factory.mktemp("src") / "qcd.root", "qcd", 200, 7)


NASTY = ["a b.root", "it's.root", 'say "hi".root', "$HOME.root", "$(touch PWNED).root", "`touch PWNED`.root",
         "; touch PWNED;.root", "new\nline.root", "tab\there.root", "ünï cödé.root", "-rf.root", "*.root",
         "[x].root", "a,b=c.root", ".hidden.root", "back\\slash.root", "a:b.root"]  # fmt: skip
names = st.lists(
    st.one_of(
        st.sampled_from(NASTY),
        st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=12).map(
            lambda s: s + ".root"
        ),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda s: os.fsencode(s),
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=names)
def test_any_file_name_is_safe(root_file, names, monkeypatch):
    """Render and run convert jobs locally on arbitrary file names: every file is converted into its own
    shard, and no name is ever executed (a file named `$(touch PWNED)` creates nothing)."""
    work = Path(tempfile.mkdtemp(prefix="crbatch names "))
    try:
        monkeypatch.chdir(work)
        inputs = work / "in $dir `x`"
        inputs.mkdir()
        for n in names:
            shutil.copy(root_file, inputs / n)
        y = pipeline_yaml(work / "p.yaml", work / "storage 'q'", [
            {"name": "qcd", "type": "qcd", "files": [str(inputs / n) for n in names]}])  # fmt: skip
        plan = make_plan(load_pipeline(y), until="convert")
        plan_dir = write_plan(plan, work / "plan")
        # the scheduler-facing files never hold a name
        for t in plan.stage("convert"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+\n", (plan_dir / "convert" / f"{t.index}.job").read_text())
        assert LocalRunner(plan, plan_dir, JOBS, workers=2).run() == 0
        states = collect_status(plan)
        assert complete(states), {k: (v.state, v.error) for k, v in states.items()}
        shards = {}
        for t in plan.stage("convert"):
            attrs = schema.check_complete(Path(t.outputs[0]), "shard")
            shards[t.outputs[0]] = attrs.get("source_path")
            assert attrs.get("source_path") == str(Path(t.source).resolve())
        assert len(shards) == len(names)  # one shard each, none overwritten
        assert not list(work.rglob("PWNED")) and not Path("PWNED").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
