"""Training campaigns: ``train.scan`` / ``train.option_sets`` expansion, run names, bad keys, the plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from batch_helpers import pipeline_yaml, simple_plan, touch_inputs

from crbatch.batch.pipeline import load_pipeline
from crbatch.batch.plan import keep_indices, load_plan, make_plan, read_nul_args, write_plan
from crbatch.batch.scan import RunPoint, expand, point_name, value_token
from crbatch.errors import ConfigError, ExitCode

SCAN = {"adversary_weight": [0, 3, 10, 30], "seed": [1, 2, 3]}


def test_product_is_every_combination_with_names_that_say_the_options():
    pts = expand(SCAN, [])
    assert len(pts) == 12
    assert [p.options for p in pts[:4]] == [
        {"adversary_weight": 0, "seed": 1}, {"adversary_weight": 0, "seed": 2},
        {"adversary_weight": 0, "seed": 3}, {"adversary_weight": 3, "seed": 1},
    ]  # fmt: skip
    assert pts[3].name == "adversary_weight-3.seed-1"
    assert len({p.name for p in pts}) == 12
    assert pts[3].label() == "adversary_weight=3, seed=1"


def test_explicit_option_sets_alone_and_times_the_scan():
    sets = [{"nodes_lstm": 64}, {"nodes_lstm": 150, "layers_list": 2}]
    alone = expand({}, sets)
    assert [p.name for p in alone] == ["nodes_lstm-64", "layers_list-2.nodes_lstm-150"]
    both = expand({"seed": [1, 2]}, sets)
    assert [p.options for p in both] == [
        {"nodes_lstm": 64, "seed": 1}, {"nodes_lstm": 64, "seed": 2},
        {"nodes_lstm": 150, "layers_list": 2, "seed": 1}, {"nodes_lstm": 150, "layers_list": 2, "seed": 2},
    ]  # fmt: skip
    assert both[2].name == "layers_list-2.nodes_lstm-150.seed-1"
    assert expand({}, []) == [RunPoint("")]  # no campaign: the one run of old
    assert expand({}, [{}])[0].name == "default"


def test_names_are_stable_when_points_are_added_and_do_not_depend_on_key_order():
    before = {p.name: p.options for p in expand(SCAN, [])}
    after = {p.name: p.options for p in expand({"seed": [1, 2, 3, 4], "adversary_weight": [0, 3, 10, 30, 100]}, [])}
    assert set(before) < set(after) and all(after[n] == o for n, o in before.items())
    assert len(after) == 20
    # 3 and 3.0 are one value (YAML gives either): one name, and the same point twice is refused
    assert point_name({"adversary_weight": 3.0}) == point_name({"adversary_weight": 3}) == "adversary_weight-3"
    with pytest.raises(ValueError, match="given twice"):
        expand({"adversary_weight": [3, 3.0]}, [])


def test_value_tokens_are_safe_and_never_collide():
    assert value_token(0.001) == "0.001" and value_token(1e-5) == "1e-05" and value_token(True) == "true"
    assert value_token([64, 32]) == "64x32" and value_token(-1) == "-1"
    a, b = value_token("a b"), value_token("a/b")
    assert a != b and all(c.isalnum() or c in "._-" for c in a + b)
    long = point_name({f"option_{i}": i for i in range(20)})
    assert len(long) <= 80 and long != point_name({f"option_{i}": i + 1 for i in range(20)})


def _yaml(tmp_path, train):
    f = touch_inputs(tmp_path / "in", ["a.root"])[0]
    return pipeline_yaml(tmp_path / "p.yaml", tmp_path / "s", [{"name": "qcd", "type": "qcd", "files": str(f)}],
                         train=train)  # fmt: skip


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"scan": {"adversary_wieght": [1, 2]}}, r"train\.scan: adversary_wieght: unknown training option"),
        ({"scan": {"output_dir": ["/a", "/b"]}}, r"train\.scan: output_dir is set by the pipeline"),
        ({"scan": {"model_name": ["a", "b"]}}, r"model_name names the run directories"),
        ({"scan": {"seed": []}}, r"train\.scan\.seed: give a non-empty list"),
        ({"scan": {"seed": 3}}, r"train\.scan\.seed"),
        ({"scan": {"adversary_weight": [1, -2]}}, r"train run adversary_weight--2: adversary_weight: Input should be"),
        ({"option_sets": [{"seed": 1}, {"sede": 2}]}, r"sede: unknown training option"),
        ({"scan": {"seed": [1]}, "option_sets": [{"seed": 2}]}, r"seed is also in train\.scan"),
        ({"scan": {"seed": [1, 2]}, "checkpoint": "transfer"}, r"needs checkpoint: shared"),
    ],
)
def test_bad_scans_are_refused_at_load(tmp_path, train, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_pipeline(_yaml(tmp_path, train))
    assert "\n" not in str(e.value)


def test_bad_scan_is_refused_by_submit_with_the_config_exit_code(tmp_path):
    y = _yaml(tmp_path, {"scan": {"adversary_wieght": [1, 2]}})
    r = subprocess.run([sys.executable, "-m", "crbatch", "submit", str(y), "--dry-run"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == ExitCode.CONFIG, r.stderr
    err = [ln for ln in r.stderr.splitlines() if "adversary_wieght" in ln]
    assert len(err) == 1 and "unknown training option" in err[0]
    assert not (tmp_path / "s" / "batch").exists()  # nothing rendered


def test_plan_has_one_training_per_run_with_its_own_config_and_directory(tmp_path):
    plan = simple_plan(tmp_path, train={"options": {"epochs": 3, "batch_size": 64},
                                        "scan": {"adversary_weight": [0, 10], "seed": [1, 2]}})  # fmt: skip
    train = plan.stage("train")
    assert [t.job for t in train] == ["train.adversary_weight-0.seed-1", "train.adversary_weight-0.seed-2",
                                      "train.adversary_weight-10.seed-1", "train.adversary_weight-10.seed-2"]  # fmt: skip
    runs = plan.layout.runs
    assert train[2].outputs == (str(runs / "t.adversary_weight-10.seed-1" / "00000"),)
    d = write_plan(plan, tmp_path / "plan")
    cfg = yaml.safe_load((d / "train" / "2.yaml").read_text())
    assert cfg["adversary_weight"] == 10 and cfg["seed"] == 1 and cfg["epochs"] == 3 and cfg["batch_size"] == 64
    assert cfg["model_name"] == "t.adversary_weight-10.seed-1" and cfg["output_dir"] == str(runs)
    assert read_nul_args(d / "train" / "2.args") == ["train", "--run-dir", train[2].outputs[0], "--config",
                                                     str(d / "train" / "2.yaml")]  # fmt: skip
    args = read_nul_args(d / "analyze" / "0.args")
    assert args[0] == "analyze" and args[1:5] == [f"t.{t.run}/0" for t in train]
    an = yaml.safe_load((d / "analyze.yaml").read_text())
    assert an["campaign"]["options"]["t.adversary_weight-10.seed-1"] == {"adversary_weight": 10, "seed": 1}
    again = load_plan(d)
    assert [(t.job, t.index, t.run) for t in again.stage("train")] == [(t.job, t.index, t.run) for t in train]


def test_a_pipeline_without_scan_keeps_its_one_training(tmp_path):
    plan = simple_plan(tmp_path)
    (t,) = plan.stage("train")
    assert t.job == "train" and t.run is None and t.outputs == (str(plan.layout.run_dir),)
    d = write_plan(plan, tmp_path / "plan")
    assert read_nul_args(d / "train" / "0.args")[-1] == str(d / "train.yaml")
    assert "campaign" not in yaml.safe_load((d / "analyze.yaml").read_text())


def test_task_indices_stay_with_their_run_when_points_are_added(tmp_path):
    plan = simple_plan(tmp_path, train={"scan": {"adversary_weight": [0, 10]}})
    d = tmp_path / "plan"
    keep_indices(plan, d)
    write_plan(plan, d)
    first = {t.job: t.index for t in plan.stage("train")}
    # a value inserted before the others: the product order changes, the indices do not
    y = tmp_path / "pipeline.yaml"
    doc = yaml.safe_load(y.read_text())
    doc["train"]["scan"]["adversary_weight"] = [3, 0, 10]
    y.write_text(yaml.safe_dump(doc))
    plan2 = make_plan(load_pipeline(y))
    assert plan2.stage("train")[0].job == "train.adversary_weight-3"
    keep_indices(plan2, d)
    write_plan(plan2, d)
    second = {t.job: t.index for t in plan2.stage("train")}
    assert {k: second[k] for k in first} == first and second["train.adversary_weight-3"] == 2
    for job, i in second.items():
        assert (d / "train" / f"{i}.job").read_text().strip() == job
    assert json.loads((d / "train" / "indices.json").read_text()) == second


def test_slurm_campaign_is_one_gpu_array_of_the_missing_runs(tmp_path):
    from batch_helpers import JOBS

    from crbatch.batch import slurm

    plan = simple_plan(tmp_path, train={"scan": {"adversary_weight": [0, 3, 10, 30]},
                                        "resources": {"gpus": 1, "throttle": 2}})  # fmt: skip
    d = write_plan(plan, tmp_path / "plan")
    work = {"train": [t for t in plan.stage("train") if t.index != 1], "analyze": plan.stage("analyze")}
    calls = {c.name: c for c in slurm.sbatch_calls(plan, d, JOBS, work)}
    assert list(calls) == ["train", "analyze", "report"]
    opts = calls["train"].options
    assert "--array=0,2-3%2" in opts and "--gres=gpu:1" in opts and any(o.startswith("--signal=B:TERM@") for o in opts)
    assert any(o.endswith("%x-%A_%a.out") for o in opts) and calls["analyze"].after == ["train"]


def test_train_job_runs_the_run_of_its_array_element(tmp_path):
    """jobs/train.sh: the index is the argument, else the Slurm array element."""
    from batch_helpers import JOBS, fake_crbatch, job_env

    plan = simple_plan(tmp_path, train={"scan": {"seed": [1, 2, 3]}})
    d = write_plan(plan, tmp_path / "plan")
    fake, fake_dir = fake_crbatch(tmp_path)
    env = job_env(fake, fake_dir, SLURM_ARRAY_TASK_ID="2", SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="70")
    r = subprocess.run(["bash", str(JOBS / "train.sh"), str(d)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (call,) = fake_dir.glob("call.train.*")
    assert read_nul_args(call)[1:3] == ["--run-dir", plan.stage("train")[2].outputs[0]]
    st = (plan.layout.status / "train.seed-3.status").read_text()
    assert "state=done" in st and "scheduler=slurm:70_2" in st


def test_resubmitting_runs_only_the_missing_trainings_and_a_new_point_only_its_own(tmp_path):
    from crbatch.batch.status import collect_status, todo

    y = tmp_path / "pipeline.yaml"
    plan = simple_plan(tmp_path, train={"options": {"epochs": 2}, "scan": {"seed": [1, 2]}})
    first = plan.stage("train")[0]
    run = tmp_path / first.outputs[0]
    run.mkdir(parents=True)
    (run / "history.json").write_text(json.dumps({"epoch": [0, 1]}))  # seed 1: trained

    def work(plan):
        states = collect_status(plan)
        for t in [*plan.stage("convert"), *plan.stage("build")]:
            states[t.job].state = "done"  # the datasets are there
        return {s: [t.job for t in ts] for s, ts in todo(plan, states).items()}

    assert work(plan) == {"convert": [], "build": [], "train": ["train.seed-2"], "analyze": ["analyze"]}
    st = collect_status(plan)
    assert st["train.seed-1"].state == "done" and st["train.seed-1"].epochs == (2, 2)
    assert st["train.seed-2"].epochs == (0, 2)
    doc = yaml.safe_load(y.read_text())
    doc["train"]["scan"]["seed"] = [1, 2, 3]
    y.write_text(yaml.safe_dump(doc))
    assert work(make_plan(load_pipeline(y)))["train"] == ["train.seed-2", "train.seed-3"]


def test_status_shows_the_campaign_at_a_glance(tmp_path, capsys):
    from crbatch import cli

    plan = simple_plan(
        tmp_path, train={"options": {"epochs": 3}, "scan": {"adversary_weight": [0, 10], "seed": [1, 2]}}
    )
    t0, t1, t2, _ = plan.stage("train")
    for t, n in ((t0, 3), (t1, 1)):
        Path(t.outputs[0]).mkdir(parents=True)
        (Path(t.outputs[0]) / "history.json").write_text(json.dumps({"epoch": list(range(n))}))
    status = plan.layout.status
    status.mkdir(parents=True)
    (status / f"{t2.job}.status").write_text(f"job={t2.job}\nstate=failed\nexit=13\nattempt=1\n")
    assert cli.main(["-q", "status", str(tmp_path / "pipeline.yaml"), "--out", str(tmp_path / "st.md")]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith("  adversary_weight")}
    assert lines == {
        "adversary_weight-0.seed-1": ["3/3", "done"],
        "adversary_weight-0.seed-2": ["1/3", "missing"],
        "adversary_weight-10.seed-1": ["0/3", "failed"],
        "adversary_weight-10.seed-2": ["0/3", "missing"],
    }
    assert "campaign: 4 runs, 1 done" in out
    md = (tmp_path / "st.md").read_text()
    assert "| adversary_weight-0.seed-2 | adversary_weight=0, seed=2 | 1/3 | missing |" in md
    js = json.loads((tmp_path / "st.json").read_text())
    assert [r["epochs_done"] for r in js["campaign"]] == [3, 1, 0, 0]


def test_example_campaign_renders_for_every_backend(tmp_path):
    """submit/example-campaign.yaml: 8 runs; the HTCondor DAG has 8 train nodes, Slurm one array of 8."""
    from batch_helpers import JOBS, REPO

    from crbatch.batch import condor, slurm
    from crbatch.batch.sites import load_site

    doc = yaml.safe_load((REPO / "submit" / "example-campaign.yaml").read_text())
    f = touch_inputs(tmp_path / "in", ["a.root"])[0]
    doc["datasets"] = [{"name": "qcd", "type": "qcd", "files": str(f)}]
    doc["storage"] = str(tmp_path / "s")
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump(doc))
    plan = make_plan(load_pipeline(y))
    assert len(plan.stage("train")) == 8
    d = write_plan(plan, tmp_path / "plan")
    work = {s: plan.stage(s) for s in plan.tasks}
    condor.render(plan, d, JOBS, load_site("docker"), work)
    dag = (d / "pipeline.dag").read_text()
    assert sum(ln.startswith("JOB train.") for ln in dag.splitlines()) == 8 and "MAXJOBS train 4" in dag
    (train,) = [c for c in slurm.sbatch_calls(plan, d, JOBS, work) if c.stage == "train"]
    assert "--array=0-7%4" in train.options


def test_collect_copies_every_run_of_a_campaign(tmp_path):
    from crbatch.batch.collect import collect

    plan = simple_plan(tmp_path, train={"scan": {"seed": [1, 2]}})
    for t in plan.stage("train"):
        d = Path(t.outputs[0])
        (d / "plots").mkdir(parents=True)
        (d / "history.json").write_text(json.dumps({"epoch": [0], "seed": t.run}))
        (d / "plots" / "loss.png").write_bytes(b"png")
    got = collect(plan, tmp_path / "out")
    assert len(got["training"]) == 2
    for t in plan.stage("train"):
        assert json.loads((tmp_path / "out" / "training" / t.run / "history.json").read_text())["seed"] == t.run
        assert (tmp_path / "out" / "training" / t.run / "plots" / "loss.png").is_file()
