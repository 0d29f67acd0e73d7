"""Benchmark the batch pipeline: wall time of the local backend on N synthetic files, and the
scheduling overhead per job on Slurm.

One synthetic production of ``--files`` DiVertAnalysis files (signal at two mass points, QCD, BIB,
data, cycled; ``--events`` each; made once under ``--work``) is run through
``crbatch submit --backend local`` (fresh storage), then — with ``--slurm`` and a cluster up
(.ci/slurm-up.sh) — through ``--backend slurm`` (fresh storage again). Per job, the status files on
the storage give start and end; per stage, the span from its first start to its last end.

Scheduling overhead on Slurm, per job: the time from the moment a job could start (its submission
or a free CPU for a convert job; the end of the stage it depends on otherwise) to its start, as the
job scripts record it — what Slurm adds on top of the work itself. The difference of the two pipelines' wall times per job is printed
too (it includes the different parallelism).

    python bench/pipeline.py --files 20 --events 1500 --epochs 2 --slurm --json bench/out/pipeline.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

TYPES = (("sig", 125.0, 55.0), ("sig", 600.0, 275.0), ("qcd", None, None), ("bib", None, None), ("data", None, None))


def make_inputs(work: Path, files: int, events: int) -> list[dict]:
    """``files`` synthetic ntuples, cycling through the types; the pipeline's datasets for them."""
    from crbatch.synth.divert import write_divert

    d = work / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    sets: dict[str, dict] = {}
    for i in range(files):
        typ, mH, mS = TYPES[i % len(TYPES)]
        name = f"{typ}_{mH:g}_{mS:g}" if mH else typ
        out = d / f"{name}_{i:03d}.root"
        if not out.exists():
            write_divert(out, typ, events, seed=100 + i, mH=mH, mS=mS)
        ds = sets.setdefault(name, {"name": name, "type": typ, "files": []})
        if mH:
            ds.update(mH=mH, mS=mS)
        ds["files"].append(str(out))
    return list(sets.values())


def pipeline(work: Path, name: str, datasets: list[dict], epochs: int) -> Path:
    small = {"cpus": 1, "memory": "1 GB", "runtime": "1h", "retries": 1}
    doc = {
        "name": name, "storage": str(work / f"storage-{name}"), "datasets": datasets,
        "convert": {"resources": small},
        "build": {"options": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "resources": small},
        "train": {"options": {"epochs": epochs, "batch_size": 128, "eval_batch_size": 1024},
                  "resources": {**small, "gpus": 1}},
        "analyze": {"export": {"check_jets": 32}, "resources": small},
    }  # fmt: skip
    y = work / f"{name}.yaml"
    y.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.rmtree(work / f"storage-{name}", ignore_errors=True)
    return y


def job_times(storage: Path, name: str) -> dict[str, dict[str, float]]:
    out = {}
    for f in (storage / "status" / name).glob("*.status"):
        kv = dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)
        if "end" in kv:  # start_s/end_s: sub-second times (bash's EPOCHREALTIME)
            start, end = float(kv.get("start_s") or kv["start"]), float(kv.get("end_s") or kv["end"])
            out[kv["job"]] = {"start": start, "end": end, "stage": kv["stage"]}
    return out


def stage_spans(times: dict[str, dict[str, float]]) -> dict[str, float]:
    spans: dict[str, list[float]] = {}
    for t in times.values():
        s = spans.setdefault(t["stage"], [t["start"], t["end"]])
        s[0], s[1] = min(s[0], t["start"]), max(s[1], t["end"])
    return {k: round(v[1] - v[0], 1) for k, v in spans.items()}


def run_local(y: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "crbatch", "-q", "submit", str(y), "--backend", "local"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def run_slurm(y: Path, name: str, storage: Path) -> tuple[float, float, list[float]]:
    """(wall s, submission time, per-job dispatch latencies s)."""
    t_submit = time.time()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "crbatch", "-q", "submit", str(y), "--backend", "slurm"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    ids = json.loads((storage / "batch" / name / "slurm" / "slurm-jobs.json").read_text())
    while subprocess.run(["squeue", "-h", "-j", ",".join(ids.values())], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    times = job_times(storage, name)
    slots = os.cpu_count() or 1  # convert jobs ask for 1 CPU: this many run at once on the one node
    conv = sorted((t for t in times.values() if t["stage"] == "convert"), key=lambda t: t["start"])
    conv_ends = sorted(t["end"] for t in conv)
    # a convert job could start at submission, or when a slot freed (the end of the job slots places earlier)
    lat = [t["start"] - (t_submit if i < slots else conv_ends[i - slots]) for i, t in enumerate(conv)]
    ends: dict[str, float] = {}
    for t in times.values():
        ends[t["stage"]] = max(ends.get(t["stage"], 0.0), t["end"])
    for before, after in itertools.pairwise(("convert", "build", "train", "analyze")):
        lat += [t["start"] - ends[before] for t in times.values() if t["stage"] == after and before in ends]
    return wall, t_submit, lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--events", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("bench/out/pipeline"))
    ap.add_argument("--slurm", action="store_true", help="also run it on the Slurm cluster (.ci/slurm-up.sh)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work = a.work.absolute()
    t0 = time.perf_counter()
    datasets = make_inputs(a.work, a.files, a.events)
    print(f"# {a.files} inputs ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    res: dict = {"files": a.files, "events_per_file": a.events, "epochs": a.epochs, "cpus": os.cpu_count(),
                 "machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "load_before": os.getloadavg()[0]}  # fmt: skip

    y = pipeline(a.work, "local", datasets, a.epochs)
    wall = run_local(y)
    times = job_times(a.work / "storage-local", "local")
    res["local"] = {"wall_s": round(wall, 1), "jobs": len(times), "stages_s": stage_spans(times)}
    print(f"local: {wall:.1f} s for {len(times)} jobs; stages {res['local']['stages_s']}")

    if a.slurm:
        if shutil.which("sbatch") is None:
            print("no sbatch: skipping Slurm", file=sys.stderr)
        else:
            y = pipeline(a.work, "slurm", datasets, a.epochs)
            wall_s, _, lat = run_slurm(y, "slurm", a.work / "storage-slurm")
            times = job_times(a.work / "storage-slurm", "slurm")
            res["slurm"] = {
                "wall_s": round(wall_s, 1), "jobs": len(times), "stages_s": stage_spans(times),
                "dispatch_latency_s": {"median": round(statistics.median(lat), 2), "mean": round(statistics.mean(lat), 2),
                                       "max": round(max(lat), 2)},
                "wall_minus_local_per_job_s": round((wall_s - wall) / max(1, len(times)), 2),
            }  # fmt: skip
            print(f"slurm: {wall_s:.1f} s for {len(times)} jobs; stages {res['slurm']['stages_s']}; dispatch latency "
                  f"per job median {res['slurm']['dispatch_latency_s']['median']} s, "
                  f"mean {res['slurm']['dispatch_latency_s']['mean']} s")  # fmt: skip
    res["load_after"] = os.getloadavg()[0]
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
