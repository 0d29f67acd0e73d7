"""Does the order of the jets on disk leak into the batches? Batch mix, training quality and reader cost.

Builds datasets from synthetic shards, writes a copy of ``main_train.h5`` whose rows are grouped by
class (the order of a reference training file: all QCD, then all signal, then BIB), and compares:

1. the class mix of the reader's batches, per shuffle window (0 = the old contiguous slices);
2. ``crbatch train`` on the shuffled and on the grouped copy (same jets, same seed), and on the
   grouped copy with the old contiguous reading — each run's last epoch scored on the same
   ``main_test.h5`` by ``crbatch score``: AUC signal vs QCD and signal vs BIB;
3. the reader's speed, contiguous and mixing, interleaved in one run (ratios are meaningful on a
   loaded machine, absolute rates are not).

    python bench/mixing.py                    # ~40k training jets, 3 epochs
    python bench/mixing.py --jets 6000 --epochs 2 --json bench/out/mixing.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_WORK = Path(__file__).resolve().parent / "out" / "mixing"


def make_datasets(work: Path, jets: int, label_noise: float) -> Path:
    from crbatch.build.synthetic import write_random_shard
    from crbatch.cli import main

    data = work / f"shuffled_noise{label_noise:g}"
    if (data / "main_test.h5").exists():
        return data
    shards = work / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    per = jets // 4
    write_random_shard(shards / "qcd.h5", "qcd", 2 * per, 1)
    write_random_shard(shards / "sig.h5", "sig", per, 2)
    write_random_shard(shards / "bib.h5", "bib", per, 3)
    write_random_shard(shards / "data.h5", "data", per, 4)
    write_random_shard(shards / "qcd_cr.h5", "qcd", per, 5, dsid=361023)
    assert main(["-q", "build", str(shards), "--output-dir", str(data)]) == 0
    if label_noise > 0:
        _add_label_noise(data / "main_train.h5", label_noise)
    return data


def _add_label_noise(path: Path, fraction: float) -> None:
    """Give a seeded ``fraction`` of the training jets a random label (in the class proportions):
    the synthetic classes separate perfectly, which hides how well a network learns."""
    import h5py
    import hdf5plugin  # noqa: F401

    from crbatch import schema

    with h5py.File(path, "r+") as f:
        j = f["jets"][:]
        rng = np.random.default_rng(11)
        hit = rng.random(len(j)) < fraction
        j["label"][hit] = rng.permutation(j["label"])[hit]
        f["jets"][:] = j
        for k in (schema.A_CHECKSUM, schema.A_COMPLETE):
            del f.attrs[k]
        schema.mark_complete(f)  # changed on purpose: sealed again


def grouped_copy(data: Path, out: Path) -> Path:
    """``data`` with main_train.h5's rows sorted by label (the other files linked)."""
    import h5py
    import hdf5plugin  # noqa: F401

    from crbatch import schema

    out.mkdir(parents=True, exist_ok=True)
    for p in data.glob("*.h5"):
        dst = out / p.name
        if p.name == "main_train.h5" or dst.exists():
            continue
        dst.symlink_to(p.resolve())
    dst = out / "main_train.h5"
    if not dst.exists():
        with h5py.File(data / "main_train.h5") as f, h5py.File(dst, "w") as o:
            order = np.argsort(f["jets"]["label"], kind="stable")
            for name in ("jets", *schema.TABLES):
                o.create_dataset(name, data=f[name][:][order], chunks=f[name].chunks, **schema.compression())
            for k, v in f.attrs.items():
                if k not in (schema.A_CHECKSUM, schema.A_COMPLETE):
                    o.attrs[k] = v
            schema.mark_complete(o)  # a new file: its own checksums
    return out


def batch_mix(path: Path, windows: list[int], batch: int) -> list[dict]:
    from crbatch.build.reader import DatasetReader

    rows = []
    for w in windows:
        with DatasetReader(path, batch_size=batch, drop_last=True, seed=1, shuffle_window=w) as r:
            fr = np.array([np.bincount(b["label"], minlength=3)[:3] / batch for b in r])
        rows.append({"window": w, "mean": fr.mean(0).round(4).tolist(), "std": fr.std(0).round(4).tolist(),
                     "batches_missing_a_class": int((fr.min(1) == 0).sum()), "batches": len(fr)})  # fmt: skip
    return rows


def crbatch(*args: object) -> None:
    env = dict(os.environ, CRBATCH_NO_BAR="1")
    r = subprocess.run([sys.executable, "-m", "crbatch", "-q", *map(str, args)], env=env, capture_output=True,
                       text=True)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"crbatch {args} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def train_and_score(data: Path, test: Path, work: Path, tag: str, epochs: int, batch: int, extra: list[str]) -> dict:
    import h5py
    import hdf5plugin  # noqa: F401 - the scored files are lz4-compressed

    from crbatch.evaluate.metrics import roc_curve

    runs, scored = work / f"runs_{tag}", work / f"scored_{tag}"
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(scored, ignore_errors=True)
    t0 = time.perf_counter()
    crbatch("train", "--data", data, "--output-dir", runs, "--epochs", epochs, "--batch-size", batch,
            "--frac-list", "1.0", *extra)  # fmt: skip
    train_s = time.perf_counter() - t0
    crbatch("score", test, "--model", "default/0/-1", "--base", runs, "--output-dir", scored)
    with h5py.File(next(scored.glob("*.scored.h5"))) as f:
        j = f["jets"][:]
    sig = j["label"] == 1
    out = {"tag": tag, "train_s": round(train_s, 1)}
    for name, lab in (("qcd", 0), ("bib", 2)):
        bkg = j["label"] == lab
        out[f"auc_sig_vs_{name}"] = round(roc_curve(j["jet_nn_sig"][sig], j["jet_nn_sig"][bkg]).auc, 4)
    return out


def reader_speed(paths: list[Path], windows: list[int], batch: int, repeat: int) -> list[dict]:
    from crbatch.build.reader import DatasetReader

    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(repeat):
        for path in paths:
            for w in windows:  # interleaved: every setting sees the same machine
                with DatasetReader(path, batch_size=batch, seed=1, shuffle_window=w, prefetch=0) as r:
                    n = 0
                    t0, c0 = time.perf_counter(), time.process_time()
                    for b in r:
                        n += len(b["label"])
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                res.setdefault((path.parent.name, w), []).append((n / dt, n / dc))
    return [{"file": f, "window": w, "jets_per_s": float(np.median([x[0] for x in v])),
             "jets_per_cpu_s": float(np.median([x[1] for x in v]))} for (f, w), v in res.items()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jets", type=int, default=48_000, help="jets in the shards (≈ 3/4 reach main_train)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5, help="reader speed: epochs per setting (median)")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--label-noise", type=float, default=0.0,
                    help="fraction of training jets given a random label (the test split stays clean)")  # fmt: skip
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    data = make_datasets(args.workdir, args.jets, args.label_noise)
    grouped = grouped_copy(data, args.workdir / f"grouped_noise{args.label_noise:g}")
    windows = [0, 1024, 2048, 4096, 8192]
    result: dict = {"load": os.getloadavg()[0], "cores": os.cpu_count(), "label_noise": args.label_noise,
                    "epochs": args.epochs, "batch_size": args.batch_size}  # fmt: skip
    result["mix_shuffled"] = batch_mix(data / "main_train.h5", windows, args.batch_size)
    result["mix_grouped"] = batch_mix(grouped / "main_train.h5", windows, args.batch_size)
    result["speed"] = reader_speed([data / "main_train.h5", grouped / "main_train.h5"], [0, 4096], 512, args.repeat)
    if not args.skip_training:
        test = data / "main_test.h5"
        w = args.workdir / f"train_noise{args.label_noise:g}"
        result["training"] = [
            train_and_score(data, test, w, "shuffled", args.epochs, args.batch_size, []),
            train_and_score(grouped, test, w, "grouped", args.epochs, args.batch_size, []),
            train_and_score(grouped, test, w, "grouped_contiguous", args.epochs, args.batch_size,
                            ["--shuffle-window", "0"]),
        ]  # fmt: skip
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n| file | window | mean QCD/sig/BIB per batch | spread (std) | batches missing a class |")
    print("|---|---:|---|---|---:|")
    for f in ("shuffled", "grouped"):
        for r in result[f"mix_{f}"]:
            print(f"| {f} | {r['window']} | {' / '.join(map(str, r['mean']))} | {' / '.join(map(str, r['std']))} "
                  f"| {r['batches_missing_a_class']} of {r['batches']} |")  # fmt: skip
    print("\n| file | window | reader jets/s | jets/CPU-s |\n|---|---:|---:|---:|")
    for r in result["speed"]:
        print(f"| {r['file']} | {r['window']} | {r['jets_per_s']:,.0f} | {r['jets_per_cpu_s']:,.0f} |")
    if "training" in result:
        print("\n| training data | AUC sig vs QCD | AUC sig vs BIB | train s |\n|---|---:|---:|---:|")
        for r in result["training"]:
            print(f"| {r['tag']} | {r['auc_sig_vs_qcd']} | {r['auc_sig_vs_bib']} | {r['train_s']} |")


if __name__ == "__main__":
    main()
