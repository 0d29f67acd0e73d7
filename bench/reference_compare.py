"""crbatch's network and a reference-trained network, side by side, on the same test jets.

1. Synthetic DiVertAnalysis-like shards (signal, QCD, BIB, data) are built in the reference's
   scaling (``--set scaling.reference_exact=true``, so that both networks take the same inputs)
   and ``crbatch train`` trains crbatch's network on them.
2. The reference-trained model (``../shared/data/reference/models/final_model_weights_1.keras``,
   epoch 1 of a reference training on jets we do not have) is imported with
   ``crbatch export --from-reference`` (ONNX, with the reference's scaling in its metadata).
3. ``crbatch score`` scores, with each model, (a) held-out synthetic shards never used in the build
   and (b) the real reference jets: the raw signal pre-training pickle (76 jets), the
   reference-scaled BIB pickle (558) and the QCD MC of the reference-scaled control-region pickle
   (226), converted with ``crbatch convert legacy-pkl``.
4. AUC signal vs QCD and signal vs BIB (unweighted) of each model on each test set.

    python bench/reference_compare.py --json bench/out/reference_compare.json

Everything runs through the ``crbatch`` command line. The numbers say what each network does on
these jets; see bench/RESULTS.md for what they can and cannot mean.
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

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"
DEFAULT_WORK = REPO / "bench" / "out" / "reference_compare"


def crbatch(*args: object) -> None:
    env = dict(os.environ, CRBATCH_NO_BAR="1")
    r = subprocess.run([sys.executable, "-m", "crbatch", "-q", *map(str, args)], env=env, capture_output=True,
                       text=True)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"crbatch {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def synthetic(work: Path, jets: int) -> tuple[Path, Path]:
    """Training shards and held-out test shards (other seeds and event numbers)."""
    from crbatch.build.synthetic import write_random_shard

    train, test = work / "shards", work / "test_shards"
    for d in (train, test):
        shutil.rmtree(d, ignore_errors=True)
    per = jets // 5
    for i, (dt, n) in enumerate((("qcd", 2 * per), ("sig", per), ("bib", per), ("data", per))):
        write_random_shard(train / f"{dt}.h5", dt, n, 10 + i)
        if dt != "data":
            write_random_shard(test / f"{dt}.h5", dt, max(500, n // 10), 100 + i)
    return train, test


def real_jets(work: Path) -> Path:
    pre = REFERENCE / "pretraining"
    out = work / "real_shards"
    shutil.rmtree(out, ignore_errors=True)
    # The signal pickle's masses disagree with its file name; the columns' 125/5 are used (masses do not
    # enter an unparametrised network).
    crbatch("convert", "legacy-pkl", pre / "sig_311424_600_275.pkl", pre / "bib.pkl", pre / "felix_control_region.pkl",
            "--mH", 125, "--mS", 5, "--output-dir", out)  # fmt: skip
    return out


def aucs(scored: Path) -> dict[str, float | int]:
    import h5py
    import hdf5plugin  # noqa: F401 - the scored files are lz4-compressed

    from crbatch.evaluate.metrics import roc_curve

    jets = []
    for p in sorted(scored.glob("*.scored.h5")):
        with h5py.File(p) as f:
            jets.append(f["jets"][:])
    j = np.concatenate(jets)
    sig = j["label"] == 1
    out: dict[str, float | int] = {"signal": int(sig.sum())}
    for name, lab in (("qcd", 0), ("bib", 2)):
        bkg = j["label"] == lab
        out[name] = int(bkg.sum())
        out[f"auc_sig_vs_{name}"] = round(roc_curve(j["jet_nn_sig"][sig], j["jet_nn_sig"][bkg]).auc, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jets", type=int, default=40_000, help="synthetic training jets (shards)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    weights = REFERENCE / "models" / "final_model_weights_1.keras"
    if not weights.exists():
        raise SystemExit(f"{weights}: the reference-trained model is not here")
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test = synthetic(w, args.jets)
    data, runs = w / "datasets", w / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    crbatch("build", train, "--output-dir", data, "--force", "--set", "scaling.reference_exact=true")
    crbatch("train", "--data", data, "--output-dir", runs, "--epochs", args.epochs, "--batch-size", args.batch_size)
    exported = w / "reference_export"
    crbatch("export", "--from-reference", weights, "--format", "onnx", "--output-dir", exported)
    onnx = exported / "reference_final_model_weights_1.onnx"
    real = real_jets(w)
    models = {"crbatch (trained here)": ["default/0/-1", "--base", runs], "reference (imported)": [onnx]}
    sets = {"synthetic held-out": sorted(test.glob("*.h5")), "real reference jets": sorted(real.glob("*.h5"))}
    rows = []
    for mname, margs in models.items():
        for sname, files in sets.items():
            out = w / "scored" / f"{mname.split()[0]}_{sname.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)
            crbatch("score", *files, "--model", *margs, "--output-dir", out)
            rows.append({"model": mname, "test jets": sname, **aucs(out)})
    result = {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "epochs": args.epochs,
              "jets": args.jets, "load": os.getloadavg()[0]}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print("\n| model | test jets | signal / QCD / BIB jets | AUC sig vs QCD | AUC sig vs BIB |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['test jets']} | {r['signal']} / {r['qcd']} / {r['bib']} "
              f"| {r['auc_sig_vs_qcd']} | {r['auc_sig_vs_bib']} |")  # fmt: skip


if __name__ == "__main__":
    main()
