"""Benchmark of ``crbatch score``: jets/s with Keras (TensorFlow backend) and with onnxruntime.

Writes one synthetic raw shard (a mix of QCD, signal, BIB and data jets, a few 100k in all), a
reference-size classifier (60,067 parameters, random weights) as ``.keras`` and its ONNX export,
then scores the shard with each (``score_file``: read, scale on the fly, predict, write the scored
file) and, separately, times the bare prediction on arrays already in memory. Prints a markdown
table; the first chunk of each model is a warm-up and not timed.

    python bench/score.py                     # 300k jets, chunks of 4096
    python bench/score.py --jets 100000 --batch-size 8192

Also, interleaved with the others: the bare prediction of onnxruntime on the ONNX file as written,
with onnxruntime's default session options (what ``crbatch score`` did before the graph rewrite of
crbatch/export/onnx_fast.py), for the before/after ratio; and ``--setup N``: the whole ``crbatch score``
command (a fresh process: imports, model loading, a 2,000-jet shard) N times per route, the median.

Numbers depend on the CPU and on what else runs: the load average and the CPU count are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CRBATCH_NO_BAR", "1")

DEFAULT_WORK = Path(__file__).resolve().parent / "out" / "score"
MIX = (("qcd", 0.4), ("sig", 0.3), ("bib", 0.1), ("data", 0.2))


def make_inputs(work: Path, jets: int) -> tuple[Path, Path, Path]:
    """(shard, model.keras, model.onnx) in ``work``; the shard is remade when its size differs."""
    import h5py
    import numpy as np

    from crbatch import schema
    from crbatch.build.synthetic import random_tables, shard_attrs, write_shard
    from crbatch.export import export_classifier
    from crbatch.export.sidecar import default_scaling
    from crbatch.train.config import TrainConfig
    from crbatch.train.model import build_classifier

    work.mkdir(parents=True, exist_ok=True)
    shard = work / "mix.h5"
    if not (shard.exists() and schema.is_complete(shard) and h5py.File(shard, "r")["jets"].shape[0] == jets):
        rng = np.random.default_rng(1)
        parts = [random_tables(dt, int(jets * f), rng, dsid=361022 if dt == "qcd" else 311314,
                               mH=125.0 if dt == "sig" else 0.0, mS=55.0 if dt == "sig" else 0.0)
                 for dt, f in MIX]  # fmt: skip
        tables = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        n = len(tables["jets"])
        if n < jets:  # rounding: top up with QCD
            extra = random_tables("qcd", jets - n, rng, dsid=361022)
            tables = {k: np.concatenate([tables[k], extra[k]]) for k in tables}
        write_shard(shard, tables, shard_attrs("qcd", jets, dsid=361022, source="bench:score"))
    keras_file, onnx_file = work / "model.keras", work / "model.onnx"
    if not keras_file.exists() or not onnx_file.exists():
        import keras

        keras.utils.set_random_seed(3)
        model = build_classifier(TrainConfig())
        model.save(keras_file)
        export_classifier(model, work, "model", ["onnx"], source={"kind": "bench"},
                          scaling=default_scaling("benchmark"), n_synthetic=64)  # fmt: skip
    return shard, keras_file, onnx_file


def setup_times(work: Path, keras_file: Path, onnx_file: Path, repeat: int) -> dict[str, float]:
    """Median wall s of the whole ``crbatch score`` command on a 2,000-jet shard, per route (interleaved)."""
    import statistics
    import subprocess
    import sys

    import numpy as np

    from crbatch.build.synthetic import random_tables, shard_attrs, write_shard

    small = work / "small.h5"
    if not small.exists():
        write_shard(small, random_tables("qcd", 2000, np.random.default_rng(5), dsid=361022),
                    shard_attrs("qcd", 2000, dsid=361022, source="bench:score"))  # fmt: skip
    times: dict[str, list[float]] = {"Keras (TensorFlow)": [], "onnxruntime": []}
    for _ in range(repeat):
        for label, model in (("Keras (TensorFlow)", keras_file), ("onnxruntime", onnx_file)):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "crbatch", "-q", "score", str(small), "--model", str(model),
                            "--out", str(work / "small.scored.h5"), "--force"], check=True,
                           stderr=subprocess.DEVNULL)  # fmt: skip
            times[label].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bare_predict(model, xs: list, batch: int) -> float:
    """Seconds to predict all jets of ``xs`` in chunks of ``batch`` (after a warm-up chunk)."""
    model.predict([x[:batch] for x in xs])
    t0 = time.perf_counter()
    for a in range(0, len(xs[0]), batch):
        model.predict([x[a : a + batch] for x in xs])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jets", type=int, default=300_000, help="jets in the shard (default: 300000)")
    ap.add_argument("--batch-size", type=int, default=4096, help="jets per prediction chunk (default: 4096)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work directory (default: {DEFAULT_WORK})")
    ap.add_argument("--keep", action="store_true", help="keep the scored files")
    ap.add_argument("--setup", type=int, default=0, metavar="N", help="also time the whole command N times per route")
    args = ap.parse_args()

    import keras
    import numpy as np

    from crbatch import schema
    from crbatch.build.reader import DatasetReader
    from crbatch.evaluate.score import load_scoring_model, score_file

    t0 = time.perf_counter()
    shard, keras_file, onnx_file = make_inputs(args.work, args.jets)
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s ({args.jets} jets; {args.work})")
    with DatasetReader(shard, batch_size=args.jets, shuffle=False, prefetch=0) as rd:
        b = next(iter(rd))
    xs = [np.ascontiguousarray(b[k], np.float32) for k in schema.INPUT_NAMES]

    rows = []
    for label, path in (("Keras (TensorFlow)", keras_file), ("onnxruntime", onnx_file)):
        model = load_scoring_model(str(path))
        out = args.work / f"scored_{path.suffix[1:]}.h5"
        score_file(shard, out, model, batch_size=args.batch_size, force=True)  # warm-up pass (graph tracing)
        t1 = time.perf_counter()
        score_file(shard, out, model, batch_size=args.batch_size, force=True)
        t_file = time.perf_counter() - t1
        t_bare = bare_predict(model, xs, args.batch_size)
        rows.append((label, t_file, t_bare))
        if path == onnx_file:  # before: the file's graph, onnxruntime's default options
            import onnxruntime as ort

            from crbatch.export import onnx as onnx_export

            sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            before = type("Before", (), {"predict": staticmethod(lambda x, s=sess: onnx_export.run(s, x))})
            rows.append(("onnxruntime, graph as written, default options (before)", float("nan"),
                         bare_predict(before, xs, args.batch_size)))  # fmt: skip
        if not args.keep:
            out.unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(args.work / "tmp", ignore_errors=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import onnxruntime

    print(f"\n{os.cpu_count()} CPUs, load average {load:.1f}; keras {keras.__version__} ({keras.backend.backend()}), "
          f"onnxruntime {onnxruntime.__version__}; {args.jets} jets, chunks of {args.batch_size}\n")  # fmt: skip
    print("| model | `crbatch score` (read + scale + predict + write) | jets/s | bare prediction | jets/s |")
    print("|---|---:|---:|---:|---:|")
    for label, t_file, t_bare in rows:
        f = "— | —" if t_file != t_file else f"{t_file:.2f} s | {args.jets / t_file:,.0f}"
        print(f"| {label} | {f} | {t_bare:.2f} s | {args.jets / t_bare:,.0f} |")
    if args.setup:
        print(f"\nwhole `crbatch score` on a 2,000-jet shard (fresh process), median of {args.setup}:")
        for label, t in setup_times(args.work, keras_file, onnx_file, args.setup).items():
            print(f"- {label}: {t:.2f} s ({2000 / t:,.0f} jets/s)")


if __name__ == "__main__":
    main()
