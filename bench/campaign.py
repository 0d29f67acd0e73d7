"""Benchmark a training campaign on the local backend: wall time with 1 and 2 trainings at once.

One synthetic production (``--files`` files of ``--events`` events, made once under ``--work``) is
converted and built once; then, for each repetition and for each throttle (1, 2: at most that many
trainings at once, ``train.resources.throttle``), the campaign — ``--runs`` trainings of a small
network (a scan of λ × seed) and the one analysis comparing them — runs through
``crbatch submit --backend local`` on a fresh copy of that storage (the shards and datasets, so only
the trainings and the analysis run). Throttles are interleaved within a repetition, so their ratio
is meaningful on a loaded machine; the absolute times are not.

Per campaign: the wall time of ``crbatch submit``, and from the jobs' status files the span of the
training stage (first start to last end) and of the analysis.

    python bench/campaign.py --runs 4 --epochs 2 --repeat 2 --json bench/out/campaign.json
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import make_inputs

NETWORK = {"batch_size": 128, "eval_batch_size": 1024, "filters_cnn_constit": [16], "filters_cnn_track": [16],
           "filters_cnn_MSeg": [8], "nodes_constit_lstm": 16, "nodes_track_lstm": 16, "nodes_MSeg_lstm": 8}  # fmt: skip


def crbatch(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "crbatch", "-q", *args], check=True)
    return time.monotonic() - t0


def pipeline(storage: Path, datasets: list[dict], runs: int, epochs: int, throttle: int) -> dict:
    lams = [0, 3, 10, 30][: max(1, runs // 2)]
    seeds = [1, 2] if runs > 1 else [1]
    small = {"cpus": 1, "memory": "1 GB", "runtime": "2h", "retries": 0}
    return {
        "name": "bench", "storage": str(storage), "datasets": datasets,
        "build": {"options": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}}},
        "train": {"options": {**NETWORK, "epochs": epochs}, "scan": {"adversary_weight": lams, "seed": seeds},
                  "resources": {**small, "gpus": 0, "throttle": throttle}},
        "analyze": {"options": {"overtraining_jets": 0, "pdf": False}, "export": {"format": "fdeep"},
                    "resources": small},
    }  # fmt: skip


def spans(storage: Path) -> dict[str, float]:
    """Per stage: last end − first start of its jobs (status files, sub-second)."""
    out: dict[str, list[float]] = {}
    for f in (storage / "status" / "bench").glob("*.status"):
        kv = dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)
        if kv.get("start_s") and kv.get("end_s"):
            stage = kv["stage"]
            s, e = float(kv["start_s"].replace(",", ".")), float(kv["end_s"].replace(",", "."))
            lo, hi = out.get(stage, [s, e])
            out[stage] = [min(lo, s), max(hi, e)]
    return {k: v[1] - v[0] for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/out/campaign"))
    ap.add_argument("--files", type=int, default=5)
    ap.add_argument("--events", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=4, help="trainings in the campaign (λ × 2 seeds)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--throttles", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    datasets = make_inputs(a.work, a.files, a.events)
    base = a.work / "storage-base"
    y = a.work / "base.yaml"
    y.write_text(yaml.safe_dump(pipeline(base, datasets, a.runs, a.epochs, 1)))
    t_build = crbatch("submit", str(y), "--until", "build")
    print(f"convert + build once: {t_build:.1f} s")
    rows = []
    for rep in range(a.repeat):
        for n in a.throttles:
            storage = a.work / f"storage-{rep}-{n}"
            shutil.rmtree(storage, ignore_errors=True)
            storage.mkdir()
            for d in ("shards", "datasets"):
                shutil.copytree(base / d, storage / d)
            f = a.work / f"p-{rep}-{n}.yaml"
            f.write_text(yaml.safe_dump(pipeline(storage, datasets, a.runs, a.epochs, n)))
            wall = crbatch("submit", str(f), "--workers", str(max(a.throttles)))
            sp = spans(storage)
            row = {
                "repeat": rep,
                "throttle": n,
                "wall_s": wall,
                "train_s": sp.get("train"),
                "analyze_s": sp.get("analyze"),
            }
            rows.append(row)
            print(json.dumps(row))
            shutil.rmtree(storage, ignore_errors=True)
    med = {n: {k: statistics.median(r[k] for r in rows if r["throttle"] == n and r[k] is not None)
               for k in ("wall_s", "train_s", "analyze_s")} for n in a.throttles}  # fmt: skip
    print("| trainings at once | campaign wall s | training stage s | analysis s |")
    print("|---:|---:|---:|---:|")
    for n, m in med.items():
        print(f"| {n} | {m['wall_s']:.1f} | {m['train_s']:.1f} | {m['analyze_s']:.1f} |")
    if 1 in med and 2 in med:
        print(f"speed-up of the training stage with 2 at once: {med[1]['train_s'] / med[2]['train_s']:.2f}×; "
              f"campaign: {med[1]['wall_s'] / med[2]['wall_s']:.2f}×")  # fmt: skip
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"machine": platform.uname()._asdict(), "cpus": len(os.sched_getaffinity(0)),
                                      "args": {k: str(v) for k, v in vars(a).items()}, "rows": rows,
                                      "median": med}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
