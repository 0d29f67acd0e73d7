"""Benchmark a job's start-up: process start → first event read, and ``crbatch --help``.

A batch job pays its start-up once per file; on the grid a convert job is one small file. For each
command, ``--repeat`` fresh processes (interleaved, so all see the same machine) and the median:

- ``crbatch --help``: process start to exit;
- ``crbatch convert divert`` on a small synthetic file: process start (``Popen``) to the moment the
  reading of events starts (uproot's ``iterate`` called: everything before it is start-up), to the
  moment the first chunk of events has been read (``convert.divert``'s first call of ``select``),
  both reported by a small wrapper that runs the real ``crbatch`` entry point, and to exit;
- ``python -c pass`` and ``python -c "import uproot, h5py"`` — the floor: the interpreter, and the
  two libraries a conversion cannot do without.

    python bench/startup.py --repeat 11

``--baseline DIR`` also runs both crbatch commands with the ``crbatch`` package in DIR (on
``PYTHONPATH``), interleaved with these, for before/after ratios on the same machine:

    mkdir -p /tmp/base && git archive bc79a41 crbatch | tar -x -C /tmp/base
    python bench/startup.py --repeat 11 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the real entry point (crbatch.cli.run), after wrapping uproot's ``iterate`` and convert.divert's
# ``select`` to print the time of their first calls: the reading of events starts, and the first chunk
# of events has been read. Importing crbatch.convert.divert
# first changes only the order of the imports a conversion makes anyway.
_PROBE = """
import sys, time
import crbatch.convert.divert as d
from uproot.behaviors.TBranch import HasBranches
def first(tag, f):
    def wrapped(*a, **k):
        if not getattr(wrapped, "done", False):
            wrapped.done = True
            print(f"{tag} {time.time():.6f}", file=sys.stderr, flush=True)
        return f(*a, **k)
    return wrapped
HasBranches.iterate = first("READ_STARTS", HasBranches.iterate)
d.select = first("FIRST_READ", d.select)
sys.argv = ["crbatch", *sys.argv[1:]]
from crbatch.cli import run
run()
"""


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, dict[str, float]]:
    """(process start → exit s, {probe tag: process start → that moment s})."""
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
    marks = {}
    for line in proc.stderr.splitlines():
        if line.startswith(("READ_STARTS ", "FIRST_READ ")):
            tag, t = line.split()
            marks[tag] = float(t) - t0
    return wall, marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--events", type=int, default=2000, help="events in the small signal file")
    ap.add_argument("--work", type=Path, default=Path("bench/out/startup"))
    ap.add_argument("--baseline", type=Path, help="a directory holding another crbatch package to compare with")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    src = (args.work / f"sig_{args.events}.root").resolve()
    if not src.exists():
        from crbatch.synth.divert import write_divert

        write_divert(src, "sig", args.events, seed=7, mH=125.0, mS=55.0)
    env = {**os.environ, "CRBATCH_NO_BAR": "1"}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shard.h5"
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import uproot, h5py'": [py, "-c", "import uproot, h5py"],
            "crbatch --help": [py, "-m", "crbatch", "--help"],
            "crbatch convert divert (small file)": [py, "-c", _PROBE, "-q", "convert", "divert", str(src), "--type",
                                                    "sig", "--mH", "125", "--mS", "55", "--out", str(out), "--force"],
        }  # fmt: skip
        if args.baseline:
            for name in ("crbatch --help", "crbatch convert divert (small file)"):
                cases[f"{name}, baseline"] = cases[name]
        results: dict[str, list[tuple[float, dict[str, float]]]] = {k: [] for k in cases}
        for _ in range(args.repeat):  # interleaved
            for name, cmd in cases.items():
                base = name.endswith(", baseline")
                # Run outside the checkout: its folder would come first on sys.path, before PYTHONPATH.
                run_env = {**env, "PYTHONPATH": str(args.baseline.resolve())} if base else env
                results[name].append(timed(cmd, run_env, tmp))

    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} ({os.cpu_count()} cores), "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} interleaved runs\n")  # fmt: skip
    print("| command | start → reading starts s | start → first chunk read s | start → exit s |\n|---|---:|---:|---:|")
    for name, rs in results.items():
        cells = []
        for tag in ("READ_STARTS", "FIRST_READ"):
            ts = [m[tag] for _, m in rs if tag in m]
            cells.append(f"{statistics.median(ts):.3f}" if ts else "—")
        print(f"| {name} | {' | '.join(cells)} | {statistics.median(w for w, _ in rs):.3f} |")


if __name__ == "__main__":
    main()
