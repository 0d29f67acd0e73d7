"""The pipeline YAML model, the plan (tasks, shard names, plan directory) and the example pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from batch_helpers import REPO, pipeline_yaml, simple_plan, touch_inputs

from crbatch.batch.pipeline import load_pipeline, parse_duration_s, parse_size_mb
from crbatch.batch.plan import load_plan, make_plan, read_nul_args, shard_names, write_plan
from crbatch.batch.status import collect_status, todo
from crbatch.demo import demo_pipeline
from crbatch.errors import ConfigError, InputMissing


def test_units():
    assert parse_size_mb("4 GB") == 4096 and parse_size_mb(512) == 512 and parse_size_mb("1.5GiB") == 1536
    assert parse_duration_s("90m") == 5400 and parse_duration_s("12:00:00") == 43200 and parse_duration_s(60) == 60
    with pytest.raises(ValueError):
        parse_size_mb("lots")


def _load(tmp_path, **kw) -> Path:
    f = touch_inputs(tmp_path / "in", ["a.root"])[0]
    sets = kw.pop("datasets", [{"name": "qcd", "type": "qcd", "files": str(f)}])
    return pipeline_yaml(tmp_path / "p.yaml", tmp_path / "s", sets, **kw)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"train": {"options": {"epochz": 3}}}, "train: options.epochz: unknown key"),
        ({"train": {"options": {"output_dir": "/x"}}}, "set by the pipeline"),
        (
            {"convert": {"options": {"min_jet_pt": "high"}}},
            "convert: options.min_jet_pt: Input should be a valid number",
        ),
        ({"build": {"resources": {"memory": "lots"}}}, "not a size"),
        ({"name": "has space"}, "pipeline name"),
        ({"datasets": [{"name": "s", "type": "sig", "files": "x.root"}]}, "needs both mH and mS"),
        ({"slurm": {"options": ["rm -rf"]}}, "not an sbatch option"),
        ({"env": {"BAD NAME": "x"}}, "not an environment variable name"),
    ],
)
def test_pipeline_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_load(tmp_path, **extra))


def test_inputs(tmp_path):
    files = touch_inputs(tmp_path / "in", ["x.root", "y.root", "z.root.1"])
    (tmp_path / "list.txt").write_text("# the rest\nin/y.root\n\n")
    y = pipeline_yaml(tmp_path / "p.yaml", "s", [
        {"name": "a", "type": "qcd", "files": ["in/x.root", "in/*.root.1"], "file_list": "list.txt"}])  # fmt: skip
    p = load_pipeline(y)
    assert p.storage == tmp_path / "s"  # relative to the YAML file
    plan = make_plan(p)
    assert sorted(t.source for t in plan.stage("convert")) == sorted(str(f) for f in files)
    assert {Path(t.outputs[0]).name for t in plan.stage("convert")} == {"x.h5", "y.h5", "z.root.h5"}
    bad = pipeline_yaml(tmp_path / "q.yaml", "s", [{"name": "a", "type": "qcd", "files": ["in/nothing*.root"]}])
    with pytest.raises(InputMissing, match="no file matches"):
        make_plan(load_pipeline(bad))
    # root:// URLs are read in place by the convert jobs (they fail with exit 10 where a file is missing)
    url = pipeline_yaml(tmp_path / "u.yaml", "s", [{"name": "a", "type": "qcd", "files": ["root://eos//x.root"]}])
    (task,) = make_plan(load_pipeline(url)).stage("convert")
    assert task.source == "root://eos//x.root" and task.job == "convert.a.x"
    web = pipeline_yaml(tmp_path / "w.yaml", "s", [{"name": "a", "type": "qcd", "files": ["https://eos/x.root"]}])
    with pytest.raises(ConfigError, match="root:// URLs"):
        make_plan(load_pipeline(web))
    twice = pipeline_yaml(tmp_path / "t.yaml", "s", [{"name": "a", "type": "qcd", "files": ["in/x.root"]},
                                                     {"name": "b", "type": "bib", "files": ["in/x.root"]}])  # fmt: skip
    with pytest.raises(ConfigError, match="belongs to one dataset"):
        make_plan(load_pipeline(twice))


def test_shard_names_never_collide():
    files = [Path("/a/x.root"), Path("/b/x.root"), Path("/c/y z.root"), Path("/c/.hidden.root"), Path("/c/-x.root")]
    names = shard_names(files)
    assert len(set(names)) == len(names)
    assert names[0].startswith("x-") and names[1].startswith("x-")  # same stem: both hashed
    assert names[2].startswith("y_z-") and not names[3].startswith(".") and not names[4].startswith("-")
    assert shard_names([Path("/a/plain.root")]) == ["plain"]


def test_plan_round_trip_and_todo(tmp_path):
    plan = simple_plan(tmp_path)
    plan_dir = write_plan(plan, tmp_path / "plan")
    again = load_plan(plan_dir)
    assert [t.job for t in again.all()] == [t.job for t in plan.all()]
    assert again.pipeline == plan.pipeline
    assert read_nul_args(plan_dir / "train" / "0.args")[:3] == ["train", "--run-dir", str(plan.layout.run_dir)]
    cfg = yaml.safe_load((plan_dir / "train.yaml").read_text())
    assert cfg["data"] == str(plan.layout.datasets) and cfg["model_name"] == "t"
    work = todo(plan, collect_status(plan))
    assert [len(work[s]) for s in ("convert", "build", "train", "analyze")] == [2, 1, 1, 1]
    conv_only = simple_plan(tmp_path / "b", until="convert")
    assert set(conv_only.tasks) == {"convert", "report"}


def test_example_pipeline_is_the_demo(tmp_path):
    """submit/example-pipeline.yaml runs the demo's inputs with the demo's options."""
    example = yaml.safe_load((REPO / "submit" / "example-pipeline.yaml").read_text())
    demo = demo_pipeline(REPO / "demo" / "inputs", REPO / "demo" / "storage")
    assert [(d["name"], d["type"], d.get("mH"), d.get("mS")) for d in example["datasets"]] == [
        (d["name"], d["type"], d.get("mH"), d.get("mS")) for d in demo["datasets"]
    ]
    for stage in ("build", "train"):
        assert example[stage]["options"] == demo[stage]["options"], stage
    # its relative paths name the demo's files
    inputs = tmp_path / "demo" / "inputs"
    touch_inputs(
        inputs, ["sig_mH125_mS55.root", "sig_mH600_mS275.root", "qcd_jz.root", "bib_data.root", "cr_data.root"]
    )
    (tmp_path / "submit").mkdir()
    (tmp_path / "submit" / "example-pipeline.yaml").write_text((REPO / "submit" / "example-pipeline.yaml").read_text())
    plan = make_plan(load_pipeline(tmp_path / "submit" / "example-pipeline.yaml"))
    assert len(plan.stage("convert")) == 5 and plan.layout.root == tmp_path / "demo" / "storage"


def test_analysis_exports_the_epoch_it_analyses(tmp_path):
    """The analyze job is one `crbatch analyze` whose config exports the chosen epoch (it used to run a
    second `crbatch export NAME/RUN/-1`: the last epoch, whatever the analysis chose); a fixed epoch is
    analysed and exported together; baselines reach the analysis, files resolved against the YAML."""
    from crbatch.batch.plan import task_commands

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "today.onnx").write_bytes(b"x")
    plan = simple_plan(tmp_path, analyze={"baselines": ["today=models/today.onnx", "ref=reference:models/today.onnx",
                                                        "other/0"]})  # fmt: skip
    plan_dir = write_plan(plan, tmp_path / "plan")
    (task,) = plan.stage("analyze")
    cmds = task_commands(plan, task, plan_dir, str(plan.layout.run_dir))
    assert list(cmds) == [""] and cmds[""][:2] == ["analyze", "t/0"]
    cfg = yaml.safe_load((plan_dir / "analyze.yaml").read_text())
    assert cfg["export_dir"] == str(plan.layout.exports) and cfg["export_format"] == "all"
    onnx = str(tmp_path / "models" / "today.onnx")
    assert cfg["baselines"] == [f"today={onnx}", f"ref=reference:{onnx}", "other/0"]
    fixed = simple_plan(tmp_path / "f", analyze={"export": {"epoch": 3}})
    (task,) = fixed.stage("analyze")
    assert task_commands(fixed, task, tmp_path / "p2", "r")[""][1] == "t/0/3"
    off = simple_plan(tmp_path / "o", analyze={"export": {"enabled": False}})
    assert "export_dir" not in write_plan(off, tmp_path / "p3").joinpath("analyze.yaml").read_text()
