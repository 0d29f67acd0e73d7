"""Benchmark the content checksums of crbatch's HDF5 outputs (crbatch.schema, issue 11).

A resubmission judges every shard complete or not: ``schema.check_complete`` reads the attributes
and, by default, verifies the checksums (one read of the stored chunks, no decompression). This
script converts one synthetic 200k-event QCD ntuple (the largest shard of bench/convert.py, made
once and cached under ``--work``) and times, interleaved over ``--repeat`` rounds (medians):

- ``attrs``: ``check_complete(verify=False)`` — the completeness check before checksums existed;
- ``verify (warm)``: ``check_complete()`` with the file in the page cache;
- ``verify (cold)``: the same after ``posix_fadvise(DONTNEED)`` evicted the file (a read from disk);
- ``read all``: reading and decompressing every table (what a reader of the whole file pays);
- ``seal``: ``mark_complete`` on a copy (the cost added to every write).

    python bench/checksum.py --events 200000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_shard(work: Path, events: int) -> Path:
    src = work / f"qcd_{events}.root"
    if not src.exists():
        from crbatch.synth.divert import write_divert

        t0 = time.perf_counter()
        write_divert(src, "qcd", events, seed=1197)
        print(f"# generated {src.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = work / f"qcd_{events}.h5"
    if not out.exists():
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "crbatch", "-q", "convert", "divert", str(src), "--type", "qcd", "--out", str(out)]
        subprocess.run(cmd, check=True, env={**os.environ, "CRBATCH_NO_BAR": "1"})
        print(f"# converted in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("bench/out/checksum"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    import h5py
    import hdf5plugin  # noqa: F401

    from crbatch import schema

    shard = make_shard(args.work, args.events)
    copy = args.work / "copy.h5"
    mb = shard.stat().st_size / 1e6
    with h5py.File(shard) as f:
        jets = f["jets"].shape[0]
        raw_mb = sum(f[n].size * f[n].dtype.itemsize for n in ("jets", *schema.TABLES)) / 1e6

    def read_all() -> None:
        with h5py.File(shard) as f:
            for n in ("jets", *schema.TABLES):
                ds = f[n]
                for a in range(0, ds.shape[0], 16384):
                    ds[a : a + 16384]

    def seal() -> None:
        with schema.h5_output(copy, "a") as f:
            schema.mark_complete(f)

    cases = {
        "attrs": lambda: schema.check_complete(shard, "shard", verify=False),
        "verify (warm)": lambda: schema.check_complete(shard, "shard"),
        "verify (cold)": lambda: schema.check_complete(shard, "shard"),
        "read all": read_all,
        "seal": seal,
    }
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.repeat):
        for name, fn in cases.items():
            if name == "verify (cold)":
                evict(shard)
            if name == "seal":
                shutil.copyfile(shard, copy)
            res[name].append(timed(fn))
            if name == "verify (warm)":
                read_all()  # keep the file warm for the next round's warm case
    copy.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    print(f"# {platform.node()} {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load:.1f}, {args.repeat} rounds")  # fmt: skip
    print(f"# shard: {jets:,} jets, {mb:.0f} MB on disk, {raw_mb:.0f} MB of tables uncompressed")
    print("| check | wall s (median) | CPU s (median) | MB/s of the file |")
    print("|---|---:|---:|---:|")
    for name, v in res.items():
        w = statistics.median(x[0] for x in v)
        c = statistics.median(x[1] for x in v)
        print(f"| {name} | {w:.3f} | {c:.3f} | {mb / w:,.0f} |")


if __name__ == "__main__":
    main()
