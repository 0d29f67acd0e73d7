"""Benchmark of ``crbatch build`` and the streaming reader.

Makes ≥ 100 synthetic shards per size (QCD 40 %, signal 30 %, BIB 10 %, data 20 % of the jets),
builds the main and control-region datasets from them, then reads one full epoch of
``main_train.h5`` with ``cr_train.h5`` alongside. Each measurement runs in a fresh child process, so
its peak RSS (``ru_maxrss``) is its own. Prints a markdown table.

    python bench/build.py                       # 1M and 2M jets, 120 shards each
    python bench/build.py --sizes 200000 --shards 100 --keep

Targets (2-core machine): build ≥ 50k jets/s, reader ≥ 200k jets/s, peak RSS < 2 GB and flat in
the number of jets. Shards are cached in the work directory between runs (``--fresh`` remakes them).
"jets/CPU-s" (jets per second of CPU time used) and the 1-minute load average are printed too: on
a shared machine the wall-clock rates depend on what else runs. The build's memory is set by
``--read-block`` (jets per shard read, default 8192) and ``--bucket-mb`` (default 256), not by the
number of jets: both sizes use shards of ≥ 8k jets so that they are compared at the same block size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MIX = (("qcd", 0.4), ("sig", 0.3), ("bib", 0.1), ("data", 0.2))
DEFAULT_WORK = Path(__file__).resolve().parent / "out" / "build"


def _make_shard(args: tuple[str, str, int, int, int]) -> str:
    from crbatch.build.synthetic import write_random_shard

    path, data_type, n, seed, dsid = args
    mass = {"mH": 125.0, "mS": 55.0} if data_type == "sig" else {}
    write_random_shard(Path(path), data_type, n, seed, dsid=dsid, **mass)
    return path


def make_shards(directory: Path, total: int, n_shards: int, workers: int) -> tuple[int, float]:
    """``n_shards`` shards with ``total`` jets in all; cached (a marker file records what is there)."""
    marker = directory / "MADE.json"
    want = {"total": total, "shards": n_shards, "mix": MIX}
    if marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(want)):
        return n_shards, 0.0
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    jobs = []
    seed = 1
    for dt, frac in MIX:
        k = max(1, round(n_shards * frac))
        per = round(total * frac / k)
        for i in range(k):
            dsid = 361020 + i % 8 if dt == "qcd" else 311314
            jobs.append((str(directory / f"{dt}_{i:04d}.h5"), dt, per, seed, dsid))
            seed += 1
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_make_shard, jobs, chunksize=1))
    marker.write_text(json.dumps(want))
    return len(jobs), time.perf_counter() - t0


def child_build(shards: Path, out: Path, extra: list[str]) -> dict:
    from crbatch.cli import main

    t0 = time.perf_counter()
    rc = main(["-q", "build", str(shards), "--output-dir", str(out), "--force", *extra])
    dt = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    return {"rc": rc, "seconds": dt, "jets_in": sum(_n_jets(p) for p in shards.glob("*.h5")),
            "jets_out": summary["jets_written"]}  # fmt: skip


def _n_jets(p: Path) -> int:
    from crbatch import schema

    return int(schema.check_complete(p)[schema.A_N_JETS])


def child_read(out: Path, batch_size: int, prefetch: int, with_cr: bool, window: int) -> dict:
    from crbatch.build.reader import DatasetReader

    cr = out / "cr_train.h5" if with_cr else None
    with DatasetReader(out / "main_train.h5", cr, batch_size=batch_size, prefetch=prefetch, seed=1,
                       shuffle_window=window) as r:  # fmt: skip
        t0 = time.perf_counter()
        n = 0
        for b in r:
            n += len(b["label"])
        dt = time.perf_counter() - t0
    return {"seconds": dt, "jets": n}


def _median(runs: list[dict]) -> dict:
    """The run of median speed."""
    rs = sorted(runs, key=lambda r: r["jets"] / r["seconds"])
    return rs[len(rs) // 2]


def run_child(*args: str) -> dict:
    env = dict(os.environ, CRBATCH_NO_BAR="1")
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child_main(argv: list[str]) -> None:
    what = argv[0]
    if what == "build":
        res = child_build(Path(argv[1]), Path(argv[2]), argv[3:])
    else:
        res = child_read(Path(argv[1]), int(argv[2]), int(argv[3]), argv[4] == "1", int(argv[5]))
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    res["max_rss_mb"] = max(me.ru_maxrss, kids.ru_maxrss) / 1024  # workers (if any) counted separately
    res["cpu_s"] = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    res["load"] = os.getloadavg()[0]
    print(json.dumps(res))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000], help="total jets per run")
    ap.add_argument("--shards", type=int, default=120, help="shards per size (≥ 100 for the issue's benchmark)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--prefetch", type=int, default=1)
    ap.add_argument("--shuffle-window", type=int, default=4096, help="the mixing reader's window (compared with 0)")
    ap.add_argument("--repeat", type=int, default=3, help="reader runs per setting, interleaved (median)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes making shards")
    ap.add_argument("--build-args", default="", help="extra `crbatch build` options, e.g. '--no-compress'")
    ap.add_argument("--keep", action="store_true", help="keep the datasets (shards are always kept)")
    ap.add_argument("--fresh", action="store_true", help="remake the shards")
    args = ap.parse_args()

    rows = []
    for total in args.sizes:
        shards = args.workdir / f"shards_{total}"
        if args.fresh:
            shutil.rmtree(shards, ignore_errors=True)
        n_files, gen_s = make_shards(shards, total, args.shards, args.workers)
        out = args.workdir / f"datasets_{total}"
        b = run_child("build", str(shards), str(out), *args.build_args.split())
        # Mixing reader (default window) and contiguous slices (window 0), interleaved, medians.
        reads: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeat):
            for w in (args.shuffle_window, 0):
                for cr in ("1", "0"):
                    reads.setdefault((cr, w), []).append(
                        run_child("read", str(out), str(args.batch_size), str(args.prefetch), cr, str(w))
                    )

        rd, rm = _median(reads[("1", args.shuffle_window)]), _median(reads[("0", args.shuffle_window)])
        rd0, rm0 = _median(reads[("1", 0)]), _median(reads[("0", 0)])
        disk = sum(p.stat().st_size for p in shards.glob("*.h5")) / 2**30
        out_disk = sum(p.stat().st_size for p in out.glob("*.h5")) / 2**30
        rows.append({
            "jets": b["jets_in"], "shards": n_files, "shards_gb": disk, "datasets_gb": out_disk,
            "build_s": b["seconds"], "build_jps": b["jets_in"] / b["seconds"], "build_rss": b["max_rss_mb"],
            "read_jets": rd["jets"], "read_jps": rd["jets"] / rd["seconds"], "read_rss": rd["max_rss_mb"],
            "read_main_jps": rm["jets"] / rm["seconds"], "read_main_rss": rm["max_rss_mb"], "gen_s": gen_s,
            "read0_jps": rd0["jets"] / rd0["seconds"], "read0_cpu_jps": rd0["jets"] / rd0["cpu_s"],
            "read0_rss": rd0["max_rss_mb"], "read0_main_jps": rm0["jets"] / rm0["seconds"],
            "build_cpu_jps": b["jets_in"] / b["cpu_s"], "read_cpu_jps": rd["jets"] / rd["cpu_s"],
            "load": max(b["load"], rd["load"]),
        })  # fmt: skip
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        print(f"done {total}: {json.dumps(rows[-1])}", file=sys.stderr)

    print(f"\n`crbatch build` + reader, {os.cpu_count()} cores, batch {args.batch_size}, prefetch {args.prefetch}"
          f"{', build ' + args.build_args if args.build_args else ''}\n")  # fmt: skip
    print("| jets in | shards | shards GB | datasets GB | build s | build jets/s | build jets/CPU-s "
          "| build peak RSS MB | reader jets/s (main+CR) | reader jets/CPU-s | reader peak RSS MB "
          "| reader jets/s (main only) | load avg |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['jets']:,} | {r['shards']} | {r['shards_gb']:.2f} | {r['datasets_gb']:.2f} | {r['build_s']:.1f} "
              f"| {r['build_jps']:,.0f} | {r['build_cpu_jps']:,.0f} | {r['build_rss']:.0f} | {r['read_jps']:,.0f} "
              f"| {r['read_cpu_jps']:,.0f} | {r['read_rss']:.0f} | {r['read_main_jps']:,.0f} | {r['load']:.1f} |")  # fmt: skip
    print(f"\nReader, mixing (window {args.shuffle_window}) vs contiguous slices (window 0), interleaved medians:\n")
    print("| jets | main+CR jets/s mixing | contiguous | ratio | jets/CPU-s mixing | contiguous | peak RSS MB mixing "
          "| contiguous | main only jets/s mixing | contiguous |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['jets']:,} | {r['read_jps']:,.0f} | {r['read0_jps']:,.0f} | {r['read_jps'] / r['read0_jps']:.2f} "
              f"| {r['read_cpu_jps']:,.0f} | {r['read0_cpu_jps']:,.0f} | {r['read_rss']:.0f} | {r['read0_rss']:.0f} "
              f"| {r['read_main_jps']:,.0f} | {r['read0_main_jps']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
