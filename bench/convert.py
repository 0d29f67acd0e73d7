"""Benchmark ``crbatch convert divert``: events/s and jets/s on one core, and peak RSS.

For each type, one synthetic DiVertAnalysis file of ``--events`` events (made once with the
generator and cached under ``--work``) is converted ``--repeat`` times, each in a fresh process
pinned to one core; the median wall time gives events/s and jets/s, ``wait4`` gives the child's
peak RSS. ``--big`` converts one QCD file of that many events once more, to show that peak RSS
does not grow with the file size.

``--limit`` adds, interleaved with every conversion, the read limit: a fresh process on the same
core that only reads the branches the converter reads (``selection.branches_for``), from the same
file, in the same chunks (``tree.iterate(step_size="48 MB", library="ak")``) — once with uproot's
own decoding ("bare uproot") and once with crbatch's std::vector decoding (crbatch/convert/
fastread.py, what the converter's reading costs). The converter's fraction of each is printed.

    python bench/convert.py --events 200000 --repeat 3 --big 800000
    python bench/convert.py --events 50000 --repeat 3 --limit
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


# The read limit: what a conversion cannot be faster than (see the docstring).
_LIMIT = """
import sys
import uproot
from crbatch.convert.selection import branches_for
src, typ, step, fast = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
f = uproot.open(src, array_cache=None, object_cache=None)
tree = f["trees_DV_"]
branches = branches_for(typ)
if fast:
    from crbatch.convert.fastread import use_fast_interpretations
    use_fast_interpretations(tree, branches)
n = 0
for chunk in tree.iterate(branches, step_size=step, library="ak"):
    n += len(chunk)
assert n == tree.num_entries
"""


def limit_once(src: Path, typ: str, fast: bool) -> tuple[float, float, int]:
    """(wall s, cpu s, peak RSS bytes) of reading the converter's branches only, fresh process, one core."""
    cmd = [sys.executable, "-c", _LIMIT, str(src), typ, "48 MB", "1" if fast else "0"]
    if hasattr(os, "sched_setaffinity"):
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"reading {src} failed")
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
    ap.add_argument("--limit", action="store_true",
                    help="alternate each run with the read limit (bare uproot, and uproot with the fast decoding)")  # fmt: skip
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    rows, ratios, limits = [], [], []
    runs = [(t, args.events, args.repeat) for t in args.types]
    if args.big:
        runs.append(("qcd", args.big, 1))
    for typ, events, repeat in runs:
        src = make_input(args.work, typ, events)
        out = args.work / f"{typ}_{events}.h5"
        results, plain, bare, fastread = [], [], [], []
        for _ in range(repeat):  # alternated: both see the same machine (this one is noisy)
            results.append(convert_once(src, typ, out))
            if args.limit:
                bare.append(limit_once(src, typ, fast=False))
                fastread.append(limit_once(src, typ, fast=True))
            if args.compare_plain:
                plain.append(convert_once(src, typ, args.work / f"{typ}_{events}_plain.h5", "--no-fast-decoding"))
        if plain:
            ratios.append((typ, events, statistics.median(p[1] for p in plain) / statistics.median(r[1] for r in results),
                           statistics.median(p[0] for p in plain) / statistics.median(r[0] for r in results)))  # fmt: skip
        if bare:
            med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
                   for k, v in (("conv", results), ("bare", bare), ("fast", fastread))}  # fmt: skip
            limits.append((typ, events, med))
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
    if limits:
        print("\n| type | events | conversion CPU s | bare uproot read CPU s | read with fast decoding CPU s "
              "| conversion / bare uproot (events/CPU-s) | conversion / fast read | conversion events/CPU-s "
              "| bare uproot events/CPU-s |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for typ, events, med in limits:
            c, b, f = med["conv"][1], med["bare"][1], med["fast"][1]
            print(f"| {typ} | {events:,} | {c:.2f} | {b:.2f} | {f:.2f} | {b / c:.0%} | {f / c:.0%} | "
                  f"{events / c:,.0f} | {events / b:,.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
