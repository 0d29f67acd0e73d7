"""Per-epoch validation: losses and accuracies on the FULL validation sets, data-vs-MC K-S, plots.

The reference validated on one mini-batch of the validation set (bug 1 of reference-training.md
§9) and computed a K-S sum over three jet-pT bins whose edges dropped jets and whose empty bins
crashed (bug 9). Here the whole main and control-region (CR) validation sets are streamed through
the networks batch by batch; memory holds only running sums, fixed-binning histograms for the main
plots, and six numbers per CR jet (three scores, scaled pT, weight, target) for the exact K-S.

Conventions (the reference's Keras-2 ones, so numbers compare with old histories):

* losses: weighted per-jet losses summed and divided by the number of jets, ``Σ w·ℓ / N``, with
  probabilities clipped to ``[1e-7, 1 - 1e-7]`` (Keras' ``SUM_OVER_BATCH_SIZE`` reduction);
* accuracies: unweighted fractions ``N_correct / N``, like the reference's Keras metrics and the
  training loop's train accuracies (so the train and val curves compare); ``weighted_accuracy=True``
  gives ``Σ w·[correct] / Σ w`` instead;
* ``val_loss = CE - λ·BCE``, the classifier's objective.

Batches are mappings as the streaming reader yields them: ``clusters``, ``tracks``, ``msegs``,
``jet`` (the model inputs, jet pT scaled in ``jet[:, 0]``), ``label`` (main) and ``weight``; CR
batches carry ``target`` (1 = data, 0 = MC) or, failing that, a ``label`` where ``Label.DATA`` is
data.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import INPUT_NAMES, Label
from ..stats import effective_n, ks_pvalue, ks_weighted

log = logging.getLogger(__name__)

EPSILON = 1e-7  # Keras' backend.epsilon(): probability clipping in both cross-entropies

# Network outputs in softmax order, with the short names used in keys and file names.
OUTPUTS: tuple[tuple[str, int], ...] = (("qcd", int(Label.QCD)), ("sig", int(Label.SIGNAL)), ("bib", int(Label.BIB)))
N_OUTPUTS = len(OUTPUTS)

DEFAULT_PT_BINS_GEV: tuple[float, ...] = (125.0, 250.0)
DEFAULT_JET_PT_WINDOW: tuple[float, float] = (0.0, 500.0)  # scaling.ScalingConfig.jet_pt default
REFERENCE_PT_BIN_NAMES = ("lowPt", "midPt", "highPt")  # file-name tags of the reference's three bins

MAIN_BINS = 29  # the reference's "linear" flavour: 29 equal bins on [0, 1]

Batch = Mapping[str, np.ndarray]
BatchSource = Iterable[Batch] | Callable[[], Iterable[Batch]]
"""Batches of one split: a re-iterable (list, reader object) or a function returning a fresh iterator."""


# ------------------------------------------------------------------------------------------------
# pT bins
# ------------------------------------------------------------------------------------------------


def pt_bin_names(pt_bins_gev: Sequence[float]) -> tuple[str, ...]:
    """Key/file tags of the pT bins: the reference's lowPt/midPt/highPt for two edges, else ptbin<i>."""
    n = len(pt_bins_gev) + 1
    return REFERENCE_PT_BIN_NAMES if n == 3 else tuple(f"ptbin{i}" for i in range(n))


def pt_bin_labels(pt_bins_gev: Sequence[float]) -> tuple[str, ...]:
    """Human-readable bin ranges for plot legends, e.g. ``pT < 125 GeV``."""
    e = [f"{x:g}" for x in pt_bins_gev]
    if not e:
        return ("all jets",)
    return (
        f"$p_T$ < {e[0]} GeV",
        *(f"{a} ≤ $p_T$ < {b} GeV" for a, b in itertools.pairwise(e)),
        f"$p_T$ ≥ {e[-1]} GeV",
    )


def scaled_pt_edges(pt_bins_gev: Sequence[float], jet_pt_window: tuple[float, float]) -> np.ndarray:
    """GeV bin edges → the scaled jet pT the model sees, ``(pt - lo)/(hi - lo)`` (crbatch.scaling)."""
    lo, hi = jet_pt_window
    if not hi > lo:
        raise ValueError(f"jet pT window {jet_pt_window}: upper edge must be above lower edge")
    edges = np.asarray(pt_bins_gev, dtype=np.float64)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"pT bin edges must increase strictly, got {list(pt_bins_gev)}")
    return (edges - lo) / (hi - lo)


def jet_pt_window_from_attrs(attrs: Mapping[str, Any]) -> tuple[float, float]:
    """The jet-pT scaling window (GeV) recorded by ``crbatch build`` in a dataset's ``scaling`` attribute.

    Falls back to the reference's 0–500 GeV for files without it (legacy files scaled by the
    reference itself used that window unless configured otherwise).
    """
    scaling = attrs.get("scaling")
    if isinstance(scaling, Mapping) and "jet_pt" in scaling:
        lo, hi = scaling["jet_pt"]
        return float(lo), float(hi)
    return DEFAULT_JET_PT_WINDOW


def pt_bin_index(pt_scaled: np.ndarray, edges_scaled: np.ndarray) -> np.ndarray:
    """Half-open bins ``[e_i, e_{i+1})``: every jet lands in exactly one bin (the reference lost edge jets)."""
    return np.searchsorted(edges_scaled, pt_scaled, side="right")


# ------------------------------------------------------------------------------------------------
# Per-jet losses (numpy, the Keras formulas)
# ------------------------------------------------------------------------------------------------


def categorical_crossentropy(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-jet CE of integer ``labels`` under ``probs`` (N, C), as ``keras.losses.categorical_crossentropy``."""
    p = probs.astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)  # Keras renormalises before clipping
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return -np.log(p[np.arange(len(labels)), labels])


def binary_crossentropy(target: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Per-jet BCE of 0/1 ``target`` under ``prob`` (N,), Keras 2's formula (clip, then ``log(p + ε)``).

    The same formula as the training step (crbatch.train.adversarial.weighted_bce), so train and
    validation losses compare; Keras 3 drops the ``+ ε`` (a 1e-7 relative difference).
    """
    p = np.clip(prob.astype(np.float64), EPSILON, 1.0 - EPSILON)
    t = target.astype(np.float64)
    return -(t * np.log(p + EPSILON) + (1.0 - t) * np.log(1.0 - p + EPSILON))


# ------------------------------------------------------------------------------------------------
# Running sums
# ------------------------------------------------------------------------------------------------


@dataclass
class _WeightedMeans:
    """Σw·ℓ, Σw·[correct], Σ[correct], Σw and N over an epoch's validation batches."""

    weighted_accuracy: bool = False
    loss_w: float = 0.0
    correct_w: float = 0.0
    correct_n: int = 0
    sum_w: float = 0.0
    n: int = 0

    def add(self, loss: np.ndarray, correct: np.ndarray, w: np.ndarray) -> None:
        self.loss_w += float(np.dot(w, loss))
        self.correct_w += float(np.dot(w, correct))
        self.correct_n += int(np.count_nonzero(correct))
        self.sum_w += float(w.sum())
        self.n += len(w)

    @property
    def loss(self) -> float:
        """``Σ w·ℓ / N`` (Keras' reduction), NaN without jets."""
        return self.loss_w / self.n if self.n else math.nan

    @property
    def acc(self) -> float:
        """Fraction correct: ``Σ w·[ok] / Σ w`` when weighted, else ``N_ok / N`` (Keras metrics, the training loop)."""
        if self.weighted_accuracy:
            return self.correct_w / self.sum_w if self.sum_w else math.nan
        return self.correct_n / self.n if self.n else math.nan


@dataclass
class MainHistograms:
    """Weighted histograms of each output's score per true class, on fixed bins (streamable)."""

    edges: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, MAIN_BINS + 1))
    # [true class, output, bin]
    sumw: np.ndarray = field(default_factory=lambda: np.zeros((N_OUTPUTS, N_OUTPUTS, MAIN_BINS)))
    sumw2: np.ndarray = field(default_factory=lambda: np.zeros((N_OUTPUTS, N_OUTPUTS, MAIN_BINS)))
    n: np.ndarray = field(default_factory=lambda: np.zeros(N_OUTPUTS, dtype=np.int64))

    def add(self, labels: np.ndarray, probs: np.ndarray, w: np.ndarray) -> None:
        nb = len(self.edges) - 1
        # Equal bins: index arithmetic is several times faster than np.histogram; 1.0 goes in the last bin.
        idx = np.clip((probs * nb).astype(np.int64), 0, nb - 1)
        for c in range(N_OUTPUTS):
            sel = labels == c
            if not sel.any():
                continue
            self.n[c] += int(sel.sum())
            wc = w[sel]
            for o in range(N_OUTPUTS):
                self.sumw[c, o] += np.bincount(idx[sel, o], weights=wc, minlength=nb)
                self.sumw2[c, o] += np.bincount(idx[sel, o], weights=wc * wc, minlength=nb)


@dataclass
class CRScores:
    """What the K-S and the CR plots need per control-region jet (kept for the whole val set)."""

    scores: np.ndarray  # (N, 3) float32
    pt_scaled: np.ndarray
    weight: np.ndarray
    is_data: np.ndarray  # bool

    def select(self, mask: np.ndarray) -> CRScores:
        return CRScores(self.scores[mask], self.pt_scaled[mask], self.weight[mask], self.is_data[mask])


# ------------------------------------------------------------------------------------------------
# Model calls
# ------------------------------------------------------------------------------------------------


def model_inputs(batch: Batch) -> list[np.ndarray]:
    """The model's inputs in the schema's order (clusters, tracks, msegs, jet)."""
    return [batch[name] for name in INPUT_NAMES]


InputsFn = Callable[[Batch], Any]
"""Batch → what the classifier is called with (default: the four input arrays in the schema's order)."""


def predict(model: Any, inputs: Any) -> np.ndarray:
    """Run a Keras model (compiled graph through ``predict_on_batch``) or a plain callable; numpy out."""
    out = model.predict_on_batch(inputs) if hasattr(model, "predict_on_batch") else model(inputs)
    if not isinstance(out, np.ndarray):
        try:
            import keras

            out = keras.ops.convert_to_numpy(out)
        except ImportError:  # stand-in callables in tests return array-likes
            out = np.asarray(out)
    return np.asarray(out)


def _iterate(source: BatchSource) -> Iterator[Batch]:
    return iter(source() if callable(source) else source)


def _cr_target(batch: Batch) -> np.ndarray:
    if "target" in batch:
        return np.asarray(batch["target"]).astype(bool)
    if "label" in batch:
        return np.asarray(batch["label"]) == int(Label.DATA)
    raise KeyError("control-region batch has neither 'target' (1 = data) nor 'label'")


def _weight(batch: Batch, n: int) -> np.ndarray:
    w = batch.get("weight")
    return np.ones(n) if w is None else np.asarray(w, dtype=np.float64).reshape(n)


def _progress(what: str, n: int, t0: float, last: list[float]) -> None:
    """A log line every 30 s on long validations (a rich bar would fight the training loop's own)."""
    now = time.monotonic()
    if now - last[0] >= 30.0:
        last[0] = now
        log.info("%s: %d jets (%.0f jets/s)", what, n, n / max(now - t0, 1e-9))


def run_main(
    classifier: Any, source: BatchSource, *, to_inputs: InputsFn = model_inputs, weighted_accuracy: bool = False
) -> tuple[_WeightedMeans, MainHistograms]:
    """Classifier over the whole main validation set: CE/accuracy sums and per-class score histograms."""
    means, hists = _WeightedMeans(weighted_accuracy), MainHistograms()
    t0, last = time.monotonic(), [time.monotonic()]
    for batch in _iterate(source):
        labels = np.asarray(batch["label"]).astype(np.int64).ravel()
        if len(labels) == 0:
            continue
        if labels.min() < 0 or labels.max() >= N_OUTPUTS:
            bad = sorted(set(np.unique(labels).tolist()) - {0, 1, 2})
            raise ValueError(f"main validation batch has labels {bad}; only 0 (QCD), 1 (signal), 2 (BIB) are valid")
        probs = predict(classifier, to_inputs(batch))
        w = _weight(batch, len(labels))
        means.add(categorical_crossentropy(labels, probs), np.argmax(probs, axis=1) == labels, w)
        hists.add(labels, probs, w)
        _progress("main validation", means.n, t0, last)
    return means, hists


def run_cr(
    classifier: Any,
    adversary: Any,
    source: BatchSource,
    *,
    to_inputs: InputsFn = model_inputs,
    weighted_accuracy: bool = False,
) -> tuple[_WeightedMeans, CRScores]:
    """Classifier then adversary over the whole CR validation set: BCE/accuracy sums and per-jet scores."""
    means = _WeightedMeans(weighted_accuracy)
    parts: list[tuple[np.ndarray, ...]] = []
    t0, last = time.monotonic(), [time.monotonic()]
    for batch in _iterate(source):
        is_data = _cr_target(batch).ravel()
        if len(is_data) == 0:
            continue
        probs = predict(classifier, to_inputs(batch))
        p_data = predict(adversary, probs).reshape(-1)
        w = _weight(batch, len(is_data))
        means.add(binary_crossentropy(is_data, p_data), (p_data > 0.5) == is_data, w)
        pt = np.asarray(batch["jet"])[:, 0]
        parts.append((probs.astype(np.float32), pt.astype(np.float32), w.astype(np.float32), is_data))
        _progress("control-region validation", means.n, t0, last)
    if parts:
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        cr = CRScores(*cols)
    else:
        cr = CRScores(np.zeros((0, N_OUTPUTS), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                      np.zeros(0, bool))  # fmt: skip
    return means, cr


# ------------------------------------------------------------------------------------------------
# K-S
# ------------------------------------------------------------------------------------------------


def ks_data_mc(cr: CRScores, output: int) -> tuple[float, float]:
    """Weighted K-S of one output's score, data vs MC, and its effective-N p-value; NaN when undefined.

    Undefined: a sample without jets or with non-positive total weight (e.g. an empty pT bin).
    """
    d, m = cr.is_data, ~cr.is_data
    try:
        ks = ks_weighted(cr.scores[d, output], cr.scores[m, output], cr.weight[d], cr.weight[m])
    except ValueError:
        return math.nan, math.nan
    return ks, ks_pvalue(ks, effective_n(cr.weight[d]), effective_n(cr.weight[m]))


def ks_metrics(cr: CRScores, edges_scaled: np.ndarray, bin_names: Sequence[str]) -> dict[str, float]:
    """``ks_<o>_all``, ``ks_<o>_pvalue``, ``ks_<o>_<bin>`` and the reference's ``ks_<o>_hist``.

    ``ks_<o>_hist`` sums the per-bin values like the reference (range 0 to the number of bins);
    an empty bin (NaN) is left out of the sum rather than turning every epoch's value into NaN —
    the val set is the same every epoch, so the sum stays comparable across epochs.
    """
    out: dict[str, float] = {}
    bins = pt_bin_index(cr.pt_scaled, edges_scaled)
    per_bin = [cr.select(bins == i) for i in range(len(bin_names))]
    for name, o in OUTPUTS:
        out[f"ks_{name}_all"], out[f"ks_{name}_pvalue"] = ks_data_mc(cr, o)
        values = []
        for tag, sub in zip(bin_names, per_bin, strict=True):
            values.append(ks_data_mc(sub, o)[0])
            out[f"ks_{name}_{tag}"] = values[-1]
        finite = [v for v in values if math.isfinite(v)]
        out[f"ks_{name}_hist"] = float(sum(finite)) if finite else math.nan
    return out


# ------------------------------------------------------------------------------------------------
# The per-epoch entry point
# ------------------------------------------------------------------------------------------------


def evaluate_epoch(
    classifier: Any,
    adversary: Any,
    main_val: BatchSource,
    cr_val: BatchSource,
    epoch: int,
    out_dir: str | Path | None,
    *,
    adversary_weight: float,
    pt_bins_gev: Sequence[float] = DEFAULT_PT_BINS_GEV,
    jet_pt_window: tuple[float, float] = DEFAULT_JET_PT_WINDOW,
    plots: bool = True,
    dpi: int = 80,
    to_inputs: InputsFn = model_inputs,
    weighted_accuracy: bool = False,
) -> dict[str, float]:
    """Validate one epoch on the full main and control-region validation sets; write the epoch's plots.

    ``classifier`` maps the four inputs to ``[p_QCD, p_signal, p_BIB]``; ``adversary`` maps those
    probabilities to ``p(data)``. Both are Keras models (run through ``predict_on_batch``, i.e.
    inference mode: dropout off, BatchNorm on moving statistics) or plain callables.
    ``main_val`` / ``cr_val``: re-iterable batch sources (see module doc), read once each.
    ``pt_bins_gev``: inner jet-pT bin edges in GeV for the per-bin K-S; ``jet_pt_window``: the
    dataset's jet-pT scaling window (:func:`jet_pt_window_from_attrs`) to convert them.
    ``out_dir``: where ``<eee>_*.png`` go (ignored when ``plots`` is False). ``to_inputs``: builds
    the classifier's input from a batch (e.g. to append parametrisation masses).
    ``weighted_accuracy``: accuracies as ``Σw·[ok]/Σw`` instead of the training loop's ``N_ok/N``.

    Returns the history entries of this epoch (floats; NaN where undefined), with the reference's
    key names plus ``val_loss``, ``ks_<o>_all``, ``ks_<o>_<bin>``, ``ks_<o>_pvalue`` and
    ``val_adv_loss_chance`` (the BCE of the best constant guess: the adversary's "knows nothing" level).
    """
    t0 = time.perf_counter()
    edges = scaled_pt_edges(pt_bins_gev, jet_pt_window)
    names = pt_bin_names(pt_bins_gev)
    main, hists = run_main(classifier, main_val, to_inputs=to_inputs, weighted_accuracy=weighted_accuracy)
    adv, cr = run_cr(classifier, adversary, cr_val, to_inputs=to_inputs, weighted_accuracy=weighted_accuracy)
    if main.n == 0:
        log.warning("epoch %d: the main validation set is empty; its losses are NaN", epoch)
    if len(cr.weight) == 0:
        log.warning("epoch %d: the control-region validation set is empty; adversary losses and K-S are NaN", epoch)

    m: dict[str, float] = {
        "val_original_lossf": main.loss,
        "val_original_acc": main.acc,
        "val_original_adv_lossf": adv.loss,
        "val_original_adv_acc": adv.acc,
        # The reference's discriminator_model.test_on_batch on the CR val set computes the same
        # quantity; both names are kept so old and new histories share keys.
        "val_adv_loss": adv.loss,
        "val_adv_acc": adv.acc,
        "val_loss": main.loss - adversary_weight * adv.loss,
        "val_adv_loss_chance": _chance_bce(cr),
    }
    m.update(ks_metrics(cr, edges, names))
    t_eval = time.perf_counter() - t0

    if plots and out_dir is not None:
        from .plots import plot_epoch

        t1 = time.perf_counter()
        plot_epoch(Path(out_dir), epoch, hists, cr, m, edges, names, pt_bin_labels(pt_bins_gev), dpi=dpi)
        log.debug("epoch %d: plots in %.2f s", epoch, time.perf_counter() - t1)
    log.info(
        "epoch %d validation: %d main + %d CR jets in %.1f s (with plots %.1f s); CE %.4f, BCE %.4f (chance %.4f), "
        "K-S all qcd/sig/bib %.3f/%.3f/%.3f",
        epoch, main.n, adv.n, t_eval, time.perf_counter() - t0, m["val_original_lossf"], m["val_adv_loss"],
        m["val_adv_loss_chance"], m["ks_qcd_all"], m["ks_sig_all"], m["ks_bib_all"],
    )  # fmt: skip
    return m


def _chance_bce(cr: CRScores) -> float:
    """``Σw·ℓ/N`` of a constant adversary output equal to the weighted data fraction (ln 2 for balanced unit weights)."""
    w = cr.weight.astype(np.float64)
    if len(w) == 0:
        return math.nan
    total = w.sum()
    if not total > 0:
        return math.nan
    p = float(np.clip(w[cr.is_data].sum() / total, EPSILON, 1 - EPSILON))
    return float(binary_crossentropy(cr.is_data, np.full(len(w), p)) @ w / len(w))
