"""Passes 2 and 3 on several processes.

HDF5 (through h5py) holds the GIL while it reads, decompresses and compresses, so threads do not
help; processes do. Pass 2: each worker scatters a share of the shards (balanced by jets) into
its own bucket directory. Pass 3: each worker writes whole output files (the largest first, to
the least-loaded worker); a bucket is read from every worker's directory and sorted by key, so the
output is byte-for-byte the same for any number of workers.

Small builds stay in one process (starting workers costs more than it saves).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import Transient
from ..progress import Progress
from .config import BuildConfig
from .plan import Plan, Shard
from .write import Arena, Buckets, Sums, gather, scatter

PARALLEL_MIN_JETS = 200_000  # below this, one process
MAX_AUTO_WORKERS = 4


def _ignore(n: int) -> None:
    pass


_report: Callable[[int], None] = _ignore  # where _advance sends progress, set per process


def available_cpus() -> int:
    """CPUs this job may use: the affinity mask (Slurm, cgroup cpusets), capped by OMP_NUM_THREADS
    (which HTCondor sets to request_cpus)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(1, n)


def n_workers(cfg: BuildConfig, total_jets: int) -> int:
    if cfg.workers:
        return cfg.workers
    if total_jets < PARALLEL_MIN_JETS:
        return 1
    return min(MAX_AUTO_WORKERS, available_cpus())


def _worker(i: int, fn: Callable, job: tuple, counter, results) -> None:
    """Run one job in a worker process; send (index, ok, result or exception) back."""
    global _report

    def add(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    _report = add
    try:
        results.put((i, True, fn(*job)))
    except BaseException as e:  # handed to the parent, which raises it
        results.put((i, False, e))


def _advance(n: int) -> None:
    _report(n)


def _scatter_job(shards: list[Shard], plan: Plan, cfg: BuildConfig, directory: Path, n_b: dict) -> tuple:
    buckets = Buckets(directory, n_b)
    sums = scatter(shards, plan, cfg, buckets, _advance)
    return dict(sums), dict(buckets.counts)


def _gather_job(jobs: list[tuple[Path, str, str, float]], buckets: Buckets, cfg: BuildConfig) -> dict:
    arena = Arena()  # one set of buffers, sized for the largest bucket, for all outputs of this process
    buckets.reserve([(role, split) for _, role, split, _ in jobs], arena)
    return {(role, split): dict(gather(tmp, role, split, buckets, factor, cfg, _advance, arena))
            for tmp, role, split, factor in jobs}  # fmt: skip


def _balance(items: list, weight: Callable, k: int) -> list[list]:
    """Greedy: heaviest first onto the lightest of ``k`` bins."""
    bins: list[list] = [[] for _ in range(k)]
    load = [0] * k
    for it in sorted(items, key=weight, reverse=True):
        i = load.index(min(load))
        bins[i].append(it)
        load[i] += weight(it)
    return [b for b in bins if b]


def _run(jobs: list[tuple], fn: Callable, total: int, what: str, workers: int) -> list:
    """Run ``fn(*job)`` for each job, in worker processes when ``workers`` > 1, with progress."""
    prog = Progress(total, what, unit="jets")
    try:
        if workers == 1:
            global _report
            _report = prog.update
            return [fn(*job) for job in jobs]
        ctx = mp.get_context("fork")  # workers inherit the imported modules: no start-up cost
        counter = ctx.Value("q", 0)
        results = ctx.SimpleQueue()
        procs = [ctx.Process(target=_worker, args=(i, fn, job, counter, results), daemon=True)
                 for i, job in enumerate(jobs)]  # fmt: skip
        out: dict[int, Any] = {}
        try:
            for p in procs:
                p.start()
            seen = 0
            while len(out) < len(procs):
                while not results.empty():
                    i, ok, value = results.get()
                    if not ok:
                        raise value
                    out[i] = value
                dead = [p for i, p in enumerate(procs) if i not in out and not p.is_alive() and results.empty()]
                if dead:
                    raise Transient(f"a build worker died (exit code {dead[0].exitcode}), probably out of memory; "
                                    "retry with more memory, fewer --workers or a smaller --bucket-mb")  # fmt: skip
                now = counter.value
                prog.update(now - seen)
                seen = now
                time.sleep(0.05)
            return [out[i] for i in range(len(procs))]
        finally:
            for p in procs:  # on an error or a signal, stop the other workers now
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join()
    finally:
        prog.close()


def run_scatter(plan: Plan, cfg: BuildConfig, work: Path, n_b: dict, workers: int) -> tuple[dict, Buckets]:
    """Pass 2. Returns the merged sums and a :class:`Buckets` that reads every worker's part."""
    groups = _balance(plan.shards, lambda s: s.n_jets, workers) if plan.shards else [[]]
    dirs = []
    jobs = []
    for i, g in enumerate(groups):
        d = work / f"w{i}"
        d.mkdir()
        dirs.append(d)
        jobs.append((g, plan, cfg, d, n_b))
    results = _run(jobs, _scatter_job, sum(s.n_jets for s in plan.shards), "build: shuffle", len(groups))
    sums: dict = defaultdict(Sums)
    buckets = Buckets(work, n_b, parts=dirs)
    for part_sums, counts in results:
        for k, s in part_sums.items():
            t = sums[k]
            t.n += s.n
            t.raw += s.raw
            t.xs += s.xs
            t.balanced += s.balanced
            t.files |= s.files
        for k, c in counts.items():
            buckets.counts[k] += c
    return sums, buckets


def run_gather(tmps: dict[tuple[str, str], Path], factors: dict, buckets: Buckets, cfg: BuildConfig,
               workers: int) -> dict:  # fmt: skip
    """Pass 3: every output written; returns the final sums per output."""
    size = {k: sum(c for (r, s, _), c in buckets.counts.items() if (r, s) == k) for k in tmps}
    items = [(tmp, role, split, factors[(role, split)]) for (role, split), tmp in tmps.items()]
    groups = _balance(items, lambda it: size[(it[1], it[2])] + 1, workers)
    jobs = [(g, buckets, cfg) for g in groups]
    out: dict = {}
    for res in _run(jobs, _gather_job, sum(size.values()), "build: write", len(groups)):
        out.update(res)
    return out
