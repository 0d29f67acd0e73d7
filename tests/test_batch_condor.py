"""HTCondor rendering, checked with the HTCondor Python bindings (no pool needed).

Every generated submit file is parsed by ``htcondor.Submit`` and expanded into the per-job ClassAds
with ``Submit.jobs()`` (the v1 module of ``htcondor==24.12.24``: close to ``condor_submit -dry-run``),
for every site profile, with each DAG node's ``VARS`` applied; the DAG is parsed and compared with the
same DAG written by ``htcondor.dags``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest
from batch_helpers import JOBS, REPO, simple_plan

from crbatch.batch import codes, condor
from crbatch.batch.plan import read_nul_args, write_plan
from crbatch.batch.sites import SiteProfile, available, image_parts, load_site
from crbatch.errors import ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "no condor_config": expected without a pool
    htcondor = pytest.importorskip("htcondor", reason="pip install htcondor==24.12.24")
if not hasattr(htcondor.Submit, "jobs"):
    pytest.skip("needs the v1 bindings' Submit.jobs(): pip install htcondor==24.12.24", allow_module_level=True)

WEIRD = ["plain.root", "with space.root", "quote'single.root", 'dq"uote.root', "dollar$HOME.root",
         "back`tick`.root", "ünïcödé.root", "comma,semi;colon.root", "new\nline.root", "-dash.root"]  # fmt: skip
IMAGE = "docker://ghcr.io/atlas/crbatch:1.2"


def v2_args(text: str) -> list[str]:
    """Split HTCondor's V2 argument string (the job ad's ``Arguments``)."""
    out, cur, quoted, have, i = [], [], False, False, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "'" and text[i + 1 : i + 2] == "'":
                cur.append("'")
                i += 1
            elif c == "'":
                quoted = False
            else:
                cur.append(c)
        elif c.isspace():
            if have:
                out.append("".join(cur))
                cur, have = [], False
        elif c == "'":
            quoted = have = True
        else:
            cur.append(c)
            have = True
        i += 1
    if have:
        out.append("".join(cur))
    return out


def parse_dag(text: str) -> dict:
    """The DAG's nodes (submit file, DONE, VARS, RETRY), edges and FINAL node."""
    nodes: dict[str, dict] = {}
    edges: set[tuple[str, str]] = set()
    final = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        w = line.split()
        kw = w[0].upper()
        if kw == "JOB":
            nodes[w[1]] = {"submit": w[2], "done": "DONE" in w[3:], "vars": {}, "retry": None}
        elif kw == "VARS":
            nodes[w[1]]["vars"].update(dict(re.findall(r'(\w+)="([^"]*)"', line)))
        elif kw == "RETRY":
            unless = int(w[4]) if len(w) > 4 and w[3].upper() == "UNLESS-EXIT" else None
            nodes[w[1]]["retry"] = (int(w[2]), unless)
        elif kw == "PARENT":
            i = w.index("CHILD")
            edges |= {(p, c) for p in w[1:i] for c in w[i + 1 :]}
        elif kw == "FINAL":
            final = (w[1], w[2])
    return {"nodes": nodes, "edges": edges, "final": final}


def expand(plan_dir: Path, sub: str, monkeypatch, macros: dict[str, str] | None = None) -> list:
    """The job ads of a submit file (with DAG VARS as macros), as condor_submit would queue them."""
    monkeypatch.chdir(plan_dir)  # `queue ... from convert.items` is read relative to the submit directory
    s = htcondor.Submit((plan_dir / sub).read_text())
    for k, v in (macros or {}).items():
        s[k] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(s.jobs(clusterid=1))


@pytest.fixture
def weird_plan(tmp_path):
    """A plan on weird file names, with a plan directory and storage whose paths are weird too."""
    base = tmp_path / "dir with 'q' $x `b` ü"
    plan = simple_plan(base, WEIRD, image=IMAGE)
    plan.pipeline.env["EXTRA"] = "a 'b' \"c\" $d"
    return plan, base / 'plan dir $(x) "q"'


@pytest.mark.parametrize("site", available())
def test_every_profile_expands(weird_plan, monkeypatch, site):
    plan, plan_dir = weird_plan
    profile = load_site(site)
    write_plan(plan, plan_dir)
    if not profile.shared_storage:  # osg: refused on a storage path (tests/test_batch_remote.py runs it on root://)
        with pytest.raises(ConfigError, match="no shared file system"):
            condor.render(plan, plan_dir, JOBS, profile, {s: plan.stage(s) for s in plan.tasks})
        profile = profile.model_copy(update={"shared_storage": True})  # still: every name quoted right
    files = condor.render(plan, plan_dir, JOBS, profile, {s: plan.stage(s) for s in plan.tasks})
    assert {f.name for f in files} >= {"convert.sub", "build.sub", "train.sub", "analyze.sub", "report.sub",
                                       "pipeline.dag", "convert.items"}  # fmt: skip
    # nothing input-derived in any file a scheduler parses
    for f in files:
        text = f.read_text()
        for name in WEIRD[1:]:
            assert Path(name).stem not in text, (f.name, name)
    dag = parse_dag((plan_dir / "pipeline.dag").read_text())
    n_files = len(WEIRD)

    # convert.sub alone: one job per file; each DAG node: exactly its own file
    jobs = expand(plan_dir, "convert.sub", monkeypatch)
    assert [j["Args"] if "Args" in j else v2_args(j["Arguments"])[1] for j in jobs] == [str(i) for i in range(n_files)]
    assert all(j["JobMaxRetries"] == plan.pipeline.convert.resources.retries for j in jobs)
    for task in plan.stage("convert"):
        node = dag["nodes"][condor.node_name(task)]
        assert node["submit"] == "convert.sub" and node["retry"] == (3, codes.DO_NOT_RETRY)
        (job,) = expand(plan_dir, "convert.sub", monkeypatch, node["vars"])
        args = v2_args(job["Arguments"])
        assert args == [str(plan_dir), str(task.index)]
        assert job["Cmd"] == str(JOBS / "convert.sh")
        assert job["JobMaxRetries"] == 0  # the DAG's RETRY governs inside a DAG
        # the task the job will run converts exactly this file into exactly this shard
        argv = read_nul_args(Path(args[0]) / "convert" / f"{args[1]}.args")
        assert argv[argv.index("--out") + 1] == task.outputs[0]
        assert Path(argv[2]).read_text().count("path:") == 1
        assert job["Out"] == f"{plan.layout.logs}/condor/{task.job}.1.0.out"
        assert job["Err"].endswith(f"/{task.job}.1.0.err")
        assert f"ExitCode == {codes.DO_NOT_RETRY}" in str(job.lookup("OnExitRemove"))
        env = job["Environment"]
        assert f"CRBATCH_JOBS={JOBS}" in env or f"CRBATCH_JOBS='{JOBS}'" in env
        assert "$d" in env and "EXTRA=" in env
        assert job["RequestCpus"] == 1 and job["RequestMemory"] == 3072
        assert "RequestGPUs" not in job or job["RequestGPUs"] == 0
        _container(job, profile)

    # training: GPU, checkpoint exit code, runtime keys
    (job,) = expand(plan_dir, "train.sub", monkeypatch, dag["nodes"]["train"]["vars"])
    assert v2_args(job["Arguments"]) == [str(plan_dir), "0"]
    assert job["RequestGPUs"] == 1 and job["SuccessCheckpointExitCode"] == codes.CHECKPOINT
    assert job["Cmd"] == str(JOBS / "train.sh") and job["JobMaxRetries"] == 0
    _container(job, profile)
    _runtime(job, profile, plan.pipeline.train.resources.runtime)
    for stage in ("build", "analyze"):
        (job,) = expand(plan_dir, f"{stage}.sub", monkeypatch, dag["nodes"][stage]["vars"])
        assert job["Cmd"] == str(JOBS / f"{stage}.sh") and v2_args(job["Arguments"]) == [str(plan_dir), "0"]
        assert job["Out"].endswith(f"/{stage}.1.0.out")
    (job,) = expand(plan_dir, "report.sub", monkeypatch)
    assert job["Cmd"] == str(JOBS / "report.sh")

    # the DAG: stages in order, FINAL report
    convert_nodes = {condor.node_name(t) for t in plan.stage("convert")}
    assert dag["edges"] == {(c, "build") for c in convert_nodes} | {("build", "train"), ("train", "analyze")}
    assert dag["final"] == ("report", "report.sub")
    assert all(n["retry"][1] == codes.DO_NOT_RETRY for n in dag["nodes"].values())
    assert not any(n["done"] for n in dag["nodes"].values())


def _container(job, profile: SiteProfile) -> None:
    parts = image_parts(IMAGE)
    if profile.universe == "docker":
        assert job["WantDocker"] and job["DockerImage"] == "ghcr.io/atlas/crbatch:1.2"
    elif profile.universe == "container":
        assert job["WantContainer"] and job["ContainerImage"] == "/cvmfs/unpacked.cern.ch/ghcr.io/atlas/crbatch:1.2"
        assert job["TransferContainer"] is False  # used in place from CVMFS
    if profile.name == "lxplus":
        assert job["SingularityImage"] == f"/cvmfs/unpacked.cern.ch/{parts['registry']}/{parts['repository']}:1.2"
    if profile.name == "osg":
        assert job["SingularityImage"] == "/cvmfs/singularity.opensciencegrid.org/atlas/crbatch:1.2"
        assert "HAS_SINGULARITY" in str(job.lookup("Requirements"))


def _runtime(job, profile: SiteProfile, seconds: int) -> None:
    if profile.name == "lxplus":
        assert job["MaxRuntime"] == seconds and job["JobFlavour"] == "tomorrow"  # 24 h
    if profile.name == "uchicago":
        assert "queue" not in job  # a 24 h job is not for the short queue


def test_gpu_memory_short_queue_and_transfer_checkpoint(tmp_path, monkeypatch):
    plan = simple_plan(tmp_path, image=IMAGE, train={"checkpoint": "transfer", "checkpoint_every": "2h",
                       "resources": {"gpus": 2, "gpu_memory": "16 GB", "runtime": "3h"}})  # fmt: skip
    plan_dir = write_plan(plan, tmp_path / "plan", condor.TRANSFER_RUN)
    condor.render(plan, plan_dir, JOBS, load_site("uchicago"), {s: plan.stage(s) for s in plan.tasks})
    (job,) = expand(plan_dir, "train.sub", monkeypatch)
    assert job["RequestGPUs"] == 2 and job["GPUsMinMemory"] == 16384
    assert job["queue"] == "short"  # 3 h < 4 h
    assert job["TransferCheckpoint"] == "run" and job["TransferOutput"] == "run"
    assert job["TransferOutputRemaps"] == f"run = {plan.layout.run_dir}"
    assert "CRBATCH_CHECKPOINT_EVERY=7200" in job["Environment"].replace("'", "")
    argv = read_nul_args(plan_dir / "train" / "0.args")
    assert argv[argv.index("--run-dir") + 1] == "run"


def test_done_nodes_and_throttle(tmp_path):
    plan = simple_plan(tmp_path, ["a.root", "b.root", "c.root"], convert={"resources": {"throttle": 7}})
    work = {s: plan.stage(s) for s in plan.tasks}
    work["convert"] = work["convert"][1:]  # the first file is converted already
    dag = condor.dag_text(plan, work)
    parsed = parse_dag(dag)
    first = condor.node_name(plan.stage("convert")[0])
    assert parsed["nodes"][first]["done"] and not parsed["nodes"]["build"]["done"]
    assert "MAXJOBS convert 7" in dag and f"CATEGORY {first} convert" in dag


def test_dag_matches_htcondor_dags(tmp_path):
    """Our DAG and the one htcondor.dags writes for the same graph agree node for node."""
    dags = pytest.importorskip("htcondor.dags")
    plan = simple_plan(tmp_path, ["a.root", "b.root", "c.root"])
    ours = parse_dag(condor.dag_text(plan, {s: plan.stage(s) for s in plan.tasks}))
    d = dags.DAG()
    prev = None
    for stage in ("convert", "build", "train", "analyze"):
        tasks = plan.stage(stage)
        res = getattr(plan.pipeline, stage).resources
        layers = []
        for t in tasks:
            v = {"CRBATCH_RETRIES": "0"}
            if stage == "convert":
                v = {"CRBATCH_FIRST": str(t.index), "CRBATCH_END": str(t.index + 1), **v}
            layers.append(d.layer(name=condor.node_name(t), submit_description=Path(f"{stage}.sub"), vars=[v],
                                  retries=res.retries, retry_unless_exit=codes.DO_NOT_RETRY))  # fmt: skip
        if prev:
            for p in prev:
                for c in layers:
                    p.add_children(c)
        prev = layers
    d.final(name="report", submit_description=Path("report.sub"))
    out = tmp_path / "ref"
    dag_file = dags.write_dag(d, out, dag_file_name="ref.dag")
    ref_text = Path(dag_file).read_text()
    # htcondor.dags names layer nodes <layer>:<index> and writes its submit files separately
    ref_text = re.sub(r"(\S+):0\b", r"\1", ref_text)
    ref = parse_dag(ref_text)
    assert set(ref["nodes"]) == set(ours["nodes"])
    for name, node in ours["nodes"].items():
        assert node["vars"] == ref["nodes"][name]["vars"], name
        assert node["retry"] == ref["nodes"][name]["retry"], name
    assert ref["edges"] == ours["edges"]
    assert ref["final"][0] == ours["final"][0]


def test_quoting_round_trip(monkeypatch, tmp_path):
    args = ["plain", "a b", "it's", 'say "hi"', "$HOME", "$(Cluster)", "`x`", "ü", ""]
    text = f"executable = /bin/true\narguments = {condor.quote_args(args)}\nqueue\n"
    (tmp_path / "x.sub").write_text(text)
    (job,) = expand(tmp_path, "x.sub", monkeypatch)
    assert v2_args(job["Arguments"]) == args
    with pytest.raises(ConfigError):
        condor.quote_args(["a\nb"])
    with pytest.raises(ConfigError):
        condor.submit_value(" leading")


def test_site_profile_validation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncommands: {executable: /bin/sh}\n")
    with pytest.raises(ConfigError, match="set by crbatch"):
        load_site(str(bad))
    bad.write_text("name: x\ncommands: {'+A': \"1\\nqueue\"}\n")
    with pytest.raises(ConfigError, match="one line"):
        load_site(str(bad))
    with pytest.raises(ConfigError, match="known: docker, lxplus, osg, uchicago"):
        load_site("nowhere")
    own = tmp_path / "mysite.yaml"
    own.write_text("name: mysite\nuniverse: vanilla\ncontainer: {key: +MySingularityImage, classad_string: true}\n"
                   "runtime: {key: +RequestRuntime}\ncommands: {+MySingularityArgs: '\"--nv\"'}\n")  # fmt: skip
    prof = load_site(str(own))
    assert prof.image_value("docker://x/y:1") == "x/y:1" and prof.runtime_commands(60) == {"+RequestRuntime": "60"}


def test_image_parts():
    assert image_parts("docker://ghcr.io/a/b:1") == {
        "ref": "ghcr.io/a/b:1",
        "registry": "ghcr.io",
        "repository": "a/b",
        "tag": "1",
    }
    assert image_parts("python:3.11")["repository"] == "library/python"
    assert image_parts("atlas/analysisbase")["tag"] == "latest"
    assert load_site("lxplus").image_value("/cvmfs/unpacked.cern.ch/x/y:1") == "/cvmfs/unpacked.cern.ch/x/y:1"


def test_submit_without_condor_prints_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    plan = simple_plan(tmp_path, image=IMAGE)
    plan_dir = write_plan(plan, tmp_path / "p")
    assert condor.submit(plan, plan_dir, dry_run=False) == 0
    out = capsys.readouterr().out
    assert "condor_submit_dag -force -batch-name crbatch-t pipeline.dag" in out and str(plan_dir) in out


def test_submit_runs_condor_submit_dag(tmp_path, monkeypatch, capsys):
    """With condor_submit_dag on the PATH, `crbatch submit --backend condor` runs it in the plan directory."""
    from crbatch import cli

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "condor_submit_dag"
    fake.write_text('#!/bin/sh\npwd > "$0.cwd"\nprintf "%s\\n" "$@" > "$0.args"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # osg's keys on shared storage (osg itself needs root:// storage: tests/test_batch_remote.py)
    site = tmp_path / "osg-shared.yaml"
    site.write_text((REPO / "submit" / "sites" / "osg.yaml").read_text().replace("shared_storage: false", ""))
    simple_plan(tmp_path, image=IMAGE, site=str(site))
    assert cli.main(["-q", "submit", str(tmp_path / "pipeline.yaml"), "--backend", "condor", "--output-dir",
                     str(tmp_path / "plan")]) == 0  # fmt: skip
    assert Path(f"{fake}.cwd").read_text().strip() == str(tmp_path / "plan")
    assert Path(f"{fake}.args").read_text().split() == ["-force", "-batch-name", "crbatch-t", "pipeline.dag"]
    assert "MY.SingularityImage" not in (tmp_path / "plan" / "train.sub").read_text()
    assert "+SingularityImage" in (tmp_path / "plan" / "train.sub").read_text()  # the pipeline's site
    assert "/opt/crbatch/jobs/train.sh" in (tmp_path / "plan" / "train.sub").read_text()  # the image's jobs/
    assert cli.main(["-q", "submit", str(tmp_path / "pipeline.yaml"), "--backend", "condor", "--dry-run"]) == 0
    assert "dry run; to submit, run:" in capsys.readouterr().out


def test_campaign_has_one_train_node_per_run(tmp_path, monkeypatch):
    """train.scan: one DAG node per run (throttled by MAXJOBS train), each job ad running its own run."""
    plan = simple_plan(tmp_path, image=IMAGE, train={"scan": {"adversary_weight": [0, 10], "seed": [1, 2]},
                                                     "resources": {"throttle": 2, "gpus": 1}})  # fmt: skip
    plan_dir = write_plan(plan, tmp_path / "plan")
    work = {s: plan.stage(s) for s in plan.tasks}
    work["train"] = plan.stage("train")[1:]  # the first run is trained already
    condor.render(plan, plan_dir, JOBS, load_site("docker"), work)
    text = (plan_dir / "pipeline.dag").read_text()
    dag = parse_dag(text)
    train = plan.stage("train")
    nodes = {n: v for n, v in dag["nodes"].items() if v["submit"] == "train.sub"}
    assert sorted(nodes) == sorted(t.job for t in train) and len(nodes) == 4
    assert [nodes[t.job]["done"] for t in train] == [True, False, False, False]
    assert "MAXJOBS train 2" in text and all(f"CATEGORY {t.job} train" in text for t in train)
    assert dag["edges"] >= {("build", t.job) for t in train} | {(t.job, "analyze") for t in train}
    for t in train:
        (job,) = expand(plan_dir, "train.sub", monkeypatch, nodes[t.job]["vars"])
        args = v2_args(job["Arguments"])
        assert args == [str(plan_dir), str(t.index)] and job["RequestGPUs"] == 1
        assert job["Out"].endswith(f"/{t.job}.1.0.out"), job["Out"]
        argv = read_nul_args(plan_dir / "train" / f"{t.index}.args")
        assert argv[argv.index("--run-dir") + 1] == t.outputs[0]
    (alone,) = expand(plan_dir, "train.sub", monkeypatch)  # condor_submit train.sub alone: the first run
    assert v2_args(alone["Arguments"])[1] == "0"
