"""Benchmark ``crbatch convert divert``: events/s and jets/s on one core, and peak RSS.

For each type, one synthetic DiVertAnalysis file of ``--events`` events (made once with the
generator and cached under ``--work``) is converted ``--repeat`` times, each in a fresh process
pinned to one core; the median wall time gives events/s and jets/s, ``wait4`` gives the child's
peak RSS. ``--big`` converts one QCD file of that many events once more, to show that peak RSS
does not grow with the file size.

    python bench/convert.py --events 200000 --repeat 3 --big 800000
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
from pathlib import Path

import h5py

TYPES = {"sig": ("--mH", "125", "--mS", "55"), "qcd": (), "bib": (), "data": ()}


def make_input(work: Path, typ: str, events: int) -> Path:
    out = work / f"{typ}_{events}.root"
    if not out.exists():
        from crbatch.synth.divert import write_divert

        t0 = time.perf_counter()
        write_divert(out, typ, events, seed=1000 + events % 997, mH=125.0 if typ == "sig" else None,
                     mS=55.0 if typ == "sig" else None)  # fmt: skip
        print(f"# generated {out.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def convert_once(src: Path, typ: str, out: Path, *extra: str) -> tuple[float, float, int]:
    """(wall s, cpu s, peak RSS bytes) of one conversion in a fresh process on one core."""
    cmd = [sys.executable, "-m", "crbatch", "-q", "convert", "divert", str(src), "--type", typ, *TYPES[typ],
           "--out", str(out), "--force", *extra]  # fmt: skip
    if hasattr(os, "sched_setaffinity"):
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CRBATCH_NO_BAR": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"conversion of {src} failed")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big", type=int, default=0, help="also convert one QCD file of this many events")
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--work", type=Path, default=Path("bench/out/convert"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--compare-plain", action="store_true",
                    help="alternate each run with one using uproot's own decoding (--no-fast-decoding); print the ratios")  # fmt: skip
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    rows, ratios = [], []
    runs = [(t, args.events, args.repeat) for t in args.types]
    if args.big:
        runs.append(("qcd", args.big, 1))
    for typ, events, repeat in runs:
        src = make_input(args.work, typ, events)
        out = args.work / f"{typ}_{events}.h5"
        results, plain = [], []
        for _ in range(repeat):  # alternated: both see the same machine (this one is noisy)
            results.append(convert_once(src, typ, out))
            if args.compare_plain:
                plain.append(convert_once(src, typ, args.work / f"{typ}_{events}_plain.h5", "--no-fast-decoding"))
        if plain:
            ratios.append((typ, events, statistics.median(p[1] for p in plain) / statistics.median(r[1] for r in results),
                           statistics.median(p[0] for p in plain) / statistics.median(r[0] for r in results)))  # fmt: skip
        with h5py.File(out, "r") as f:
            jets = int(f.attrs["n_jets"])
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        rss = max(r[2] for r in results)
        rows.append({"type": typ, "events": events, "jets": jets, "repeat": repeat, "wall_s": wall, "cpu_s": cpu,
                     "events_per_s": events / wall, "jets_per_s": jets / wall, "peak_rss_mb": rss / 2**20,
                     "input_mb": src.stat().st_size / 2**20, "output_mb": out.stat().st_size / 2**20})  # fmt: skip

    print(f"\n{time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} cores), one core per conversion\n")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (events/CPU-s does not depend on other load)\n")
    print("| type | events | jets | runs | median wall s | events/s | jets/s | events/CPU-s | peak RSS MB | input MB "
          "| shard MB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['type']} | {r['events']:,} | {r['jets']:,} | {r['repeat']} | {r['wall_s']:.1f} | "
              f"{r['events_per_s']:,.0f} | {r['jets_per_s']:,.0f} | {r['events'] / r['cpu_s']:,.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['input_mb']:.0f} | {r['output_mb']:.0f} |")  # fmt: skip
    if ratios:
        print("\n| type | events | speed-up from fast decoding, CPU time | wall time |\n|---|---:|---:|---:|")
        for typ, events, cpu_ratio, wall_ratio in ratios:
            print(f"| {typ} | {events:,} | {cpu_ratio:.2f}× | {wall_ratio:.2f}× |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
