"""Benchmark of ``crbatch train``: adversarial-step throughput, epoch time, peak RSS vs dataset size.

For each dataset size, synthetic shards (QCD 40 %, signal 30 % at two mass points, BIB 10 %, data
20 % of the jets) are built into main and control-region datasets; then, per backend, a fresh
child process (its peak RSS is its own):

1. times the adversarial steps alone — per batch: ``adversary_steps`` (2) discriminator steps on
   the control-region batch, then one classifier step on the main + control-region batches, the
   reference network, batch 512 — on batches read beforehand, after a warm-up;
2. trains one full epoch with ``crbatch.train.loop.train`` (streaming reader, per-epoch validation
   on the full validation sets with K-S and all plots, history, classifier file, checkpoint);
3. reports the epoch's wall time without the one-off compilation, the time the loop spent in its
   steps (timed around each ``train_batch`` call of the epoch) and the rest, outside the steps
   (reading, batch preparation, validation, plots, files), the CPU time of the whole ``train``
   call (start-up and compilation included), and the peak RSS (``ru_maxrss``, compilation
   included).

"jets/s" counts main-dataset jets per second (a dataset of N jets takes N / rate seconds per
epoch). Each such jet comes with one control-region jet, and the classifier runs on
2 + adversary_steps jets per main jet, so the network sees 4× as many jets. "jets/CPU-s" and the
load average are printed too: the machine may be shared.

    python bench/train.py                                     # 200k and 2M jets, TensorFlow and JAX
    python bench/train.py --sizes 50000 --backends tensorflow # quick look

Targets (2-core CPU, TensorFlow, reference network): ≥ 6,000 jets/s for the steps, time outside
the steps < 20 % of an epoch at 2M jets, peak RSS < 1.5 GB at every size.
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

import numpy as np

MIX = (("qcd", 0.4), ("sig", 0.3), ("bib", 0.1), ("data", 0.2))
MASSES = ((125.0, 55.0), (600.0, 275.0))
DEFAULT_WORK = Path(__file__).resolve().parent / "out" / "train"
SHARD_JETS = 50_000  # jets per synthetic shard


def _make_shard(args: tuple[str, str, int, int, int, float, float]) -> str:
    from crbatch.build.synthetic import write_random_shard

    path, data_type, n, seed, dsid, mh, ms = args
    mass = {"mH": mh, "mS": ms} if data_type == "sig" else {}
    write_random_shard(Path(path), data_type, n, seed, dsid=dsid, event_offset=seed * 10_000_000, **mass)
    return path


def make_datasets(work: Path, total: int, workers: int) -> Path:
    """Shards of ``total`` jets and the datasets built from them (both cached)."""
    shards, out = work / f"shards_{total}", work / f"datasets_{total}"
    marker = shards / "MADE.json"
    want = {"total": total, "mix": MIX, "masses": MASSES, "per": SHARD_JETS}
    if not (marker.exists() and json.loads(marker.read_text()) == json.loads(json.dumps(want))):
        shutil.rmtree(shards, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        shards.mkdir(parents=True)
        jobs, seed = [], 1
        for dt, frac in MIX:
            n = round(total * frac)
            k = max(1, -(-n // SHARD_JETS))
            for i in range(k):
                mh, ms = MASSES[i % len(MASSES)] if dt == "sig" else (0.0, 0.0)
                dsid = 361020 + i % 4 if dt == "qcd" else 311314 + i % len(MASSES)
                jobs.append((str(shards / f"{dt}_{i:04d}.h5"), dt, n // k, seed, dsid, mh, ms))
                seed += 1
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_make_shard, jobs, chunksize=1))
        marker.write_text(json.dumps(want))
        print(f"made {len(jobs)} shards of {total:,} jets in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not (out / "main_train.h5").exists():
        from crbatch.cli import main

        t0 = time.perf_counter()
        if main(["-q", "build", str(shards), "--output-dir", str(out)]) != 0:
            raise SystemExit("crbatch build failed")
        print(f"built {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


# --- child ------------------------------------------------------------------------------------------


def child_steps(datasets: Path, batch: int, steps: int) -> dict:
    """The adversarial steps alone, on 16 batches read beforehand (cycled), after a warm-up."""
    import keras

    from crbatch.train.adversarial import AdversarialTrainer, configure_threads, seed_all
    from crbatch.train.config import TrainConfig
    from crbatch.train.loop import TrainData
    from crbatch.train.model import build_adversary, build_classifier

    cfg = TrainConfig(data=datasets, batch_size=batch, frac_list=1.0)
    configure_threads(cfg)  # as crbatch.train.loop.train does
    seed_all(cfg.seed)
    data = TrainData(cfg)
    pre = []
    for main, cr in data.train_batches(0, 0):
        pre.append((main, cr))
        if len(pre) == 16:
            break
    n_train = data.stats.n
    data.close()
    tr = AdversarialTrainer(build_classifier(cfg), build_adversary(), cfg)
    st = tr.initial_state()
    t0 = time.perf_counter()
    st = tr.train_batch(st, *pre[0])
    keras.ops.convert_to_numpy(st["acc"])
    compile_s = time.perf_counter() - t0
    for i in range(12):  # warm-up: TensorFlow's first calls of a graph are several times slower
        st = tr.train_batch(st, *pre[i % len(pre)])
    keras.ops.convert_to_numpy(st["acc"])
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        st = tr.train_batch(st, *pre[i % len(pre)])
    keras.ops.convert_to_numpy(st["acc"])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"n_train": n_train, "compile_s": compile_s, "step_s": dt / steps, "steps_jps": steps * batch / dt,
            "steps_cpu_jps": steps * batch / cpu}  # fmt: skip


def child_epoch(datasets: Path, run_dir: Path, batch: int, frac: float) -> dict:
    """One epoch of the real loop: streaming reader, validation with K-S and plots, files, checkpoint.

    The loop's own calls of ``train_batch`` are timed too (each waits for its result: JAX dispatches
    asynchronously), so "outside the steps" is measured in the same process, at the same load.
    """
    import keras

    from crbatch.train.adversarial import AdversarialTrainer
    from crbatch.train.config import TrainConfig
    from crbatch.train.loop import train

    plain = AdversarialTrainer.train_batch
    spent = {"s": 0.0, "jets": 0, "calls": 0}

    def timed(self, st, main, cr):
        t0 = time.perf_counter()
        out = plain(self, st, main, cr)
        keras.ops.convert_to_numpy(out["acc"])
        if spent["calls"]:  # the first call compiles (counted in the history's time_compile_s)
            spent["s"] += time.perf_counter() - t0
            spent["jets"] += int(np.shape(main["y"])[0])
        spent["calls"] += 1
        return out

    AdversarialTrainer.train_batch = timed

    cfg = TrainConfig(data=datasets, batch_size=batch, epochs=1, frac_list=frac)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    c0 = time.process_time()
    r = train(cfg, run_dir)
    cpu = time.process_time() - c0  # model build, compilation, reading, steps, validation, plots, files
    assert r.status == "complete", r
    h = json.loads((run_dir / "history.json").read_text())
    meta = json.loads((run_dir / "history.json").read_text())
    return {
        "train_s": h["time_train_s"][-1] - h["time_compile_s"][-1], "epoch_compile_s": h["time_compile_s"][-1],
        "eval_s": h["time_eval_s"][-1], "loop_jps": h["train_jets_per_s"][-1], "train_cpu_s": cpu,
        "val_loss": meta.get("val_original_lossf", [float("nan")])[-1],
        "loop_steps_s": spent["s"], "loop_steps_jps": spent["jets"] / max(spent["s"], 1e-9),
    }  # fmt: skip


def run_child(backend: str, *args: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, CRBATCH_NO_BAR="1", TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child {backend} {args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _child_main(a: list[str]) -> None:
    if a[0] == "steps":
        res = child_steps(Path(a[1]), int(a[2]), int(a[3]))
    else:
        res = child_epoch(Path(a[1]), Path(a[2]), int(a[3]), float(a[4]))
    me = resource.getrusage(resource.RUSAGE_SELF)
    res.update(max_rss_mb=me.ru_maxrss / 1024, cpu_s=me.ru_utime + me.ru_stime, load=os.getloadavg()[0])
    print(json.dumps(res))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000], help="jets generated per size")
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax"])
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40, help="timed steps of the steps-only measurement")
    ap.add_argument("--frac", type=float, default=1.0, help="frac_list of the epoch (1: the whole training set)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes making shards")
    args = ap.parse_args()

    rows = []
    for total in args.sizes:
        datasets = make_datasets(args.workdir, total, args.workers)
        for backend in args.backends:
            st = run_child(backend, "steps", str(datasets), str(args.batch_size), str(args.steps))
            ep = run_child(backend, "epoch", str(datasets), str(args.workdir / f"run_{backend}_{total}"),
                           str(args.batch_size), str(args.frac))  # fmt: skip
            n_steps = max(
                1, min(-(-int(st["n_train"] * args.frac) // args.batch_size), st["n_train"] // args.batch_size)
            )
            res = {**st, **ep, "backend": backend, "total": total, "steps": n_steps, "steps_rss_mb": st["max_rss_mb"],
                   "epoch_s": ep["train_s"] + ep["eval_s"], "load": max(st["load"], ep["load"])}  # fmt: skip
            rows.append(res)
            print(f"done {backend} {total}: {json.dumps(res)}", file=sys.stderr)

    print(f"\n`crbatch train`, reference network, batch {args.batch_size}, {os.cpu_count()} cores, "
          f"epoch = frac {args.frac:g} of the training set\n")  # fmt: skip
    print("| backend | jets generated | main train jets | steps jets/s | steps jets/CPU-s | steps in the epoch "
          "jets/s | epoch s (no compile) | of which steps s | outside steps | epoch CPU-s (all) | validation + plots s "
          "| compile s | epoch jets/s | peak RSS MB epoch (steps-only) | load avg |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        outside = max(r["epoch_s"] - r["loop_steps_s"], 0.0) / r["epoch_s"]
        print(f"| {r['backend']} | {r['total']:,} | {r['n_train']:,} | {r['steps_jps']:,.0f} | {r['steps_cpu_jps']:,.0f} "
              f"| {r['loop_steps_jps']:,.0f} | {r['epoch_s']:.1f} | {r['loop_steps_s']:.1f} | {100 * outside:.0f} % "
              f"| {r['train_cpu_s']:.0f} | {r['eval_s']:.1f} "
              f"| {r['compile_s']:.1f} | {r['loop_jps']:,.0f} | {r['max_rss_mb']:.0f} ({r['steps_rss_mb']:.0f}) "
              f"| {r['load']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
