"""Benchmark grid storage: convert from ``root://`` vs the same file local, and convert jobs with and
without bundling on ``root://`` storage.

1. ``crbatch convert divert`` of one synthetic ntuple (``--events``), from the local file and from the
   XRootD server of .ci/xrootd-up.sh (``root://127.0.0.1``), interleaved ``--repeat`` times in this
   one process (so the machine's load hits both alike); events/s medians and their ratio.
2. ``crbatch submit --backend local --until convert`` of ``--files`` small ntuples (``--small-events``
   each) with inputs and storage on the server: one job per file, then ``convert.files_per_job =
   --bundle``; fresh storage each time, interleaved ``--pipeline-repeat`` times; wall-time medians
   and their ratio.

Absolute rates on a shared machine are not meaningful; the interleaved ratios are.

    python bench/grid.py --events 20000 --repeat 5 --files 40 --small-events 400 --bundle 10 \\
        --json bench/out/grid.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def server() -> str:
    from xrootd_helpers import server_url

    url = server_url()
    if url is None:
        sys.exit("no XRootD server answers: run .ci/xrootd-up.sh (as root)")
    return url


def convert_once(src: str, out: Path) -> float:
    from crbatch.cli import main

    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rc = main(["-q", "convert", "divert", src, "--type", "qcd", "--out", str(out), "--force"])
    dt = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"convert of {src} failed ({rc})")
    return dt


def bench_convert(work: Path, url: str, events: int, repeat: int) -> dict:
    from crbatch import storage
    from crbatch.synth.divert import write_divert

    local = work / f"qcd_{events}.root"
    if not local.exists():
        write_divert(local, "qcd", events, seed=7)
    remote = storage.location(f"{url}//crbatch-bench/{uuid.uuid4().hex[:8]}/{local.name}")
    storage.put(local, remote)
    convert_once(str(local), work / "warm.h5")  # imports, caches
    t = {"local": [], "remote": []}
    for _ in range(repeat):
        t["local"].append(convert_once(str(local), work / "local.h5"))
        t["remote"].append(convert_once(str(remote), work / "remote.h5"))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {
        "events": events, "file_mb": round(local.stat().st_size / 1e6, 2), "repeat": repeat,
        "seconds": t, "median_s": med,
        "events_per_s": {k: round(events / v) for k, v in med.items()},
        "remote_over_local_rate": round(med["local"] / med["remote"], 3),
    }  # fmt: skip


def bench_bundling(work: Path, url: str, files: int, events: int, bundle: int, repeat: int) -> dict:
    from crbatch import storage
    from crbatch.synth.divert import write_divert

    d = work / "small"
    d.mkdir(parents=True, exist_ok=True)
    base = f"{url}//crbatch-bench/{uuid.uuid4().hex[:8]}"
    urls = []
    for i in range(files):
        f = d / f"qcd_{events}_{i:03d}.root"
        if not f.exists():
            write_divert(f, "qcd", events, seed=200 + i)
        u = f"{base}/in/{f.name}"
        storage.put(f, storage.location(u))
        urls.append(u)
    walls: dict[str, list[float]] = {"per_file": [], "bundled": []}
    for r in range(repeat):
        for mode, n in (("per_file", 1), ("bundled", bundle)):
            name = f"{mode.replace('_', '')}{r}"
            doc = {"name": name, "storage": f"{base}/storage-{name}",
                   "datasets": [{"name": "qcd", "type": "qcd", "files": urls}],
                   "convert": {"files_per_job": n, "resources": {"cpus": 1, "memory": "1 GB", "retries": 0}}}  # fmt: skip
            y = work / f"{name}.yaml"
            y.write_text(yaml.safe_dump(doc))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "crbatch", "-q", "submit", str(y), "--backend", "local",
                            "--until", "convert"], check=True, stdout=subprocess.DEVNULL, cwd=work)  # fmt: skip
            walls[mode].append(time.perf_counter() - t0)
            print(f"# {mode}: {walls[mode][-1]:.1f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "files": files, "events_per_file": events, "files_per_job": bundle, "repeat": repeat,
        "wall_s": walls, "median_s": med, "per_file_over_bundled": round(med["per_file"] / med["bundled"], 2),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--small-events", type=int, default=400)
    ap.add_argument("--bundle", type=int, default=10)
    ap.add_argument("--pipeline-repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("bench/out/grid"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work = a.work.absolute()
    a.work.mkdir(parents=True, exist_ok=True)
    url = server()
    res = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared)", "date": time.strftime("%Y-%m-%d %H:%M"),
           "server": url, "load_before": os.getloadavg()[0]}  # fmt: skip
    res["convert"] = bench_convert(a.work, url, a.events, a.repeat)
    print(json.dumps(res["convert"], indent=1))
    res["bundling"] = bench_bundling(a.work, url, a.files, a.small_events, a.bundle, a.pipeline_repeat)
    print(json.dumps(res["bundling"], indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
