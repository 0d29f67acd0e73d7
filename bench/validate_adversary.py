"""Does the adversary do its job? λ = 0 vs λ > 0 on synthetic data with a data/MC mis-modelling.

End to end with the real commands: ``crbatch synth divert`` writes signal (two mass points), QCD,
BIB and collision-data ntuples (the synthetic data are QCD with a small systematic mis-modelling:
cluster-time offset and smear, track pT scale, EM fraction), ``crbatch convert divert`` turns them
into shards, ``crbatch build`` into datasets, and ``crbatch train`` trains the same network with the
same seed and epochs once per adversary weight λ. Then, on the TEST split (never seen in training
or epoch selection):

* signal-vs-QCD and signal-vs-BIB ROC AUC of the signal score p_signal (weighted, Mann–Whitney);
* weighted K-S data vs MC of each output on the control-region test set: all jets, per jet-pT bin
  (< 125, 125–250, ≥ 250 GeV) and their sum (the reference's ``ks_*_hist``).

Expected: with λ > 0 the data/MC K-S drop clearly while the AUCs stay close. Prints a markdown table
(and ``--json``). Inputs, shards and datasets are cached in ``--work``; runs are redone each time.

    python bench/validate_adversary.py                   # ~10 min on 2 CPU cores
    python bench/validate_adversary.py --scale 0.3 --epochs 3   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, here and in the children

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / "out" / "validate_adversary"

# (file stem, type, events, seed, mH, mS): the demo's mix, larger.
SAMPLES = (
    ("sig_mH125_mS55", "sig", 6000, 11, 125.0, 55.0),
    ("sig_mH600_mS275", "sig", 6000, 12, 600.0, 275.0),
    ("qcd", "qcd", 14000, 13, None, None),
    ("bib", "bib", 8000, 14, None, None),
    ("data", "data", 14000, 15, None, None),
)
PT_BINS_GEV = (125.0, 250.0)


# Runs ``crbatch train`` through crbatch.train.cli's own parser, for trees where the top-level
# ``crbatch`` command does not register ``train`` yet (same options, same code path below it).
_TRAIN_SHIM = (
    "import argparse, sys\n"
    "from crbatch.cli import _setup_logging\n"
    "from crbatch.train import cli\n"
    "p = argparse.ArgumentParser(prog='crbatch'); sub = p.add_subparsers(dest='command', required=True)\n"
    "cli.register(sub); a = p.parse_args(sys.argv[1:]); _setup_logging(20); sys.exit(a.func(a))"
)


def _has_command(name: str) -> bool:
    from crbatch.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return name in sub.choices


def crbatch(*args: object, log: Path | None = None) -> None:
    """Run one ``crbatch`` command in a child process (as a batch job would); stop on failure."""
    cmd = [sys.executable, "-m", "crbatch", *map(str, args)]
    if args[0] == "train" and not _has_command("train"):
        cmd = [sys.executable, "-c", _TRAIN_SHIM, *map(str, args)]
    env = {**os.environ, "CRBATCH_NO_BAR": "1"}
    out = open(log, "a") if log else None  # noqa: SIM115 - closed below
    try:
        r = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    if r.returncode != 0:
        raise SystemExit(f"failed (exit {r.returncode}): {' '.join(cmd)}" + (f"\n  see {log}" if log else ""))


def stage(name: str):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            print(f"# {name} ...", file=sys.stderr, flush=True)

        def __exit__(self, *exc):
            if exc[0] is None:
                print(f"# {name}: {time.perf_counter() - self.t0:.0f} s", file=sys.stderr, flush=True)

    return _T()


# --- statistics ------------------------------------------------------------------------------------


def weighted_auc(s_pos: np.ndarray, s_neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), weighted; ties count one half.

    The Mann–Whitney form of the area under the weighted ROC curve (sklearn's ``roc_auc_score`` with
    ``sample_weight``), in O(N log N): for each positive, the negative weight below its score.
    """
    if len(s_pos) == 0 or len(s_neg) == 0:
        return math.nan
    order = np.argsort(s_neg, kind="stable")
    sn, wn = s_neg[order].astype(np.float64), w_neg[order].astype(np.float64)
    cw = np.concatenate([[0.0], np.cumsum(wn)])
    lo = cw[np.searchsorted(sn, s_pos, side="left")]
    hi = cw[np.searchsorted(sn, s_pos, side="right")]
    wp = w_pos.astype(np.float64)
    return float(np.sum(wp * (lo + 0.5 * (hi - lo))) / (wp.sum() * cw[-1]))


def _trapezoid_auc(s_pos, s_neg, w_pos, w_neg) -> float:
    """The same area by the trapezoid rule over the ROC curve: an independent check of :func:`weighted_auc`."""
    s = np.concatenate([s_pos, s_neg])
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(np.concatenate([w_pos, np.zeros(len(s_neg))])[order])
    fp = np.cumsum(np.concatenate([np.zeros(len(s_pos)), w_neg])[order])
    last = np.r_[np.flatnonzero(np.diff(s[order])), len(s) - 1]  # one ROC point per distinct threshold
    tp, fp = np.r_[0.0, tp[last]], np.r_[0.0, fp[last]]
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def _check_auc() -> None:
    rng = np.random.default_rng(0)
    a, b = np.round(rng.normal(1, 1, 500), 1), np.round(rng.normal(0, 1, 700), 1)  # rounded: many ties
    wa, wb = rng.uniform(0.1, 2, 500), rng.uniform(0.1, 2, 700)
    assert abs(weighted_auc(a, b, wa, wb) - _trapezoid_auc(a, b, wa, wb)) < 1e-12


# --- pipeline --------------------------------------------------------------------------------------


def make_datasets(work: Path, scale: float) -> Path:
    inputs, shards, datasets = work / "inputs", work / "shards", work / "datasets"
    inputs.mkdir(parents=True, exist_ok=True)
    entries = []
    with stage("generate (crbatch synth divert)"):
        for stem, typ, events, seed, mH, mS in SAMPLES:
            out = inputs / f"{stem}.root"
            if not out.exists():
                masses = ["--mH", mH, "--mS", mS] if mH is not None else []
                crbatch("-q", "synth", "divert", "--type", typ, "--events", max(200, int(events * scale)),
                        "--seed", seed, *masses, "--out", out)  # fmt: skip
            entries.append(f"- {{path: '{out}', type: {typ}" + (f", mH: {mH}, mS: {mS}}}" if mH else "}"))
    listing = work / "inputs.yaml"
    listing.write_text("inputs:\n" + "".join(f"  {e}\n" for e in entries))
    with stage("convert (crbatch convert divert)"):
        crbatch("-q", "convert", "divert", listing, "--output-dir", shards, log=work / "convert.log")
    with stage("build (crbatch build)"):
        # A larger test split than the reference's 5 %: the test numbers are the point of this benchmark.
        crbatch("-q", "build", shards, "--output-dir", datasets, "--set", "split={train: 0.7, val: 0.1, test: 0.2}",
                log=work / "build.log")  # fmt: skip
    return datasets


def train(work: Path, datasets: Path, lam: float, args: argparse.Namespace) -> Path:
    """Train one model from scratch with ``crbatch train`` (same seed, epochs and data for every λ)."""
    import shutil

    run = work / "runs" / f"lambda_{lam:g}"
    shutil.rmtree(run, ignore_errors=True)  # a leftover run would be resumed, not redone
    with stage(f"train λ = {lam:g} (crbatch train, {args.epochs} epochs)"):
        crbatch("train", "--run-dir", run, "--data", datasets, "--adversary-weight", lam, "--epochs", args.epochs,
                "--seed", args.seed, "--batch-size", args.batch_size, "--frac-list", 1.0,
                "--weight-column", args.weight, "--cr-weight-column", args.cr_weight, log=work / f"train_{lam:g}.log")  # fmt: skip
    return run


def load_classifier(run: Path) -> Any:
    """The classifier of the run's last epoch (``epochs/NNN.keras``)."""
    import keras

    last = sorted((run / "epochs").glob("*.keras"))
    if not last:
        raise SystemExit(f"{run}: no epochs/*.keras: did the training finish?")
    return keras.saving.load_model(last[-1], compile=False)


# --- test-split evaluation ---------------------------------------------------------------------------


def scores(classifier: Any, path: Path, weight: str, batch: int = 4096) -> dict[str, np.ndarray]:
    """Classifier outputs, labels/targets, weights and scaled jet pT over a whole dataset file."""
    from crbatch.build.reader import DatasetReader
    from crbatch.evaluate.epoch import model_inputs, predict

    parts: dict[str, list[np.ndarray]] = {"p": [], "label": [], "w": [], "pt": []}
    with DatasetReader(path, batch_size=batch, shuffle=False, weight=weight, prefetch=0) as r:
        for b in r:
            parts["p"].append(predict(classifier, model_inputs(b)))
            parts["label"].append(b["label"])
            parts["w"].append(b["weight"])
            parts["pt"].append(b["jet"][:, 0])
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate(run: Path, datasets: Path, cr_weight: str) -> dict[str, float]:
    from crbatch import schema
    from crbatch.evaluate.epoch import CRScores, jet_pt_window_from_attrs, ks_metrics, pt_bin_names, scaled_pt_edges

    classifier = load_classifier(run)
    out: dict[str, float] = {}
    m = scores(classifier, datasets / "main_test.h5", "mcEventWeight")
    sig, qcd, bib = (m["label"] == int(c) for c in (schema.Label.SIGNAL, schema.Label.QCD, schema.Label.BIB))
    p1 = m["p"][:, 1]
    out["auc_sig_vs_qcd"] = weighted_auc(p1[sig], p1[qcd], m["w"][sig], m["w"][qcd])
    out["auc_sig_vs_bib"] = weighted_auc(p1[sig], p1[bib], m["w"][sig], m["w"][bib])
    one = np.ones_like(m["w"])
    out["auc_sig_vs_qcd_unweighted"] = weighted_auc(p1[sig], p1[qcd], one[sig], one[qcd])
    out["auc_sig_vs_bib_unweighted"] = weighted_auc(p1[sig], p1[bib], one[sig], one[bib])
    out["n_main_test"] = float(len(p1))

    c = scores(classifier, datasets / "cr_test.h5", "mcEventWeight" if cr_weight == "none" else cr_weight)
    is_data = c["label"] == int(schema.Label.DATA)
    w = np.ones_like(c["w"]) if cr_weight == "none" else c["w"]
    cr = CRScores(c["p"].astype(np.float32), c["pt"], w, is_data)
    import h5py

    with h5py.File(datasets / "cr_test.h5", "r") as f:
        window = jet_pt_window_from_attrs(schema.read_attrs(f))
    out.update(ks_metrics(cr, scaled_pt_edges(PT_BINS_GEV, window), pt_bin_names(PT_BINS_GEV)))
    out["n_cr_test"] = float(len(is_data))
    return out


def table(results: dict[float, dict[str, float]]) -> str:
    lams = sorted(results)
    rows = [
        ("AUC signal vs QCD (p_signal)", "auc_sig_vs_qcd"),
        ("AUC signal vs BIB (p_signal)", "auc_sig_vs_bib"),
        ("AUC signal vs QCD, unweighted", "auc_sig_vs_qcd_unweighted"),
        ("AUC signal vs BIB, unweighted", "auc_sig_vs_bib_unweighted"),
        *((f"K-S data/MC {o} score, all jets", f"ks_{o}_all") for o in ("qcd", "sig", "bib")),
        *((f"K-S data/MC {o} score, sum of 3 pT bins", f"ks_{o}_hist") for o in ("qcd", "sig", "bib")),
        *((f"K-S data/MC {o} score, p-value (all jets)", f"ks_{o}_pvalue") for o in ("qcd", "sig", "bib")),
    ]
    head = "| metric (test split) | " + " | ".join(f"λ = {lam:g}" for lam in lams) + " |"
    lines = [head, "|---|" + "---:|" * len(lams)]
    for label, key in rows:
        vals = [results[lam].get(key, math.nan) for lam in lams]
        fmt = "{:.2g}" if key.endswith("pvalue") else "{:.4f}"
        lines.append(f"| {label} | " + " | ".join(fmt.format(v) for v in vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the generated events")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 10.0])
    # Unit weights by default: the synthetic QCD MC mixes JZ slices with generator weights spanning four
    # orders of magnitude (effective N ~ 3 % of the jets), which would drown the mis-modelling in weight noise.
    ap.add_argument("--weight", default="none", help="main training weight column (train's --weight-column)")
    ap.add_argument("--cr-weight", default="none", help="control-region weight column, training and K-S")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    _check_auc()
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    datasets = make_datasets(args.work, args.scale)
    results: dict[float, dict[str, float]] = {}
    for lam in args.lambdas:
        run = train(args.work, datasets, lam, args)
        with stage(f"evaluate λ = {lam:g} on the test split"):
            results[lam] = evaluate(run, datasets, args.cr_weight)
    print(table(results))
    print(f"\n{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}, weights main {args.weight} / "
          f"CR {args.cr_weight}; AUCs weighted with mcEventWeight unless marked; total {time.perf_counter() - t0:.0f} s "
          f"on {os.cpu_count()} CPU(s)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
