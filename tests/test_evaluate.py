"""Per-epoch evaluation (crbatch.evaluate): losses, K-S bookkeeping, plots, history figures.

Stand-in models are plain numpy callables, so these tests need no Keras and run in seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crbatch.evaluate.epoch import EPSILON, evaluate_epoch, pt_bin_index, scaled_pt_edges
from crbatch.evaluate.history import history_plot_names, plot_history
from crbatch.evaluate.plots import epoch_plot_names
from crbatch.stats import ks_weighted

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAM = 10.0


def _batch(rng, n, *, cr=False, pt=None):
    b = {
        "clusters": rng.normal(size=(n, 30, 12)).astype(np.float32),
        "tracks": np.zeros((n, 20, 10), np.float32),
        "msegs": np.zeros((n, 30, 6), np.float32),
        "jet": np.stack(
            [rng.uniform(0, 0.9, n) if pt is None else pt, rng.normal(size=n), rng.normal(size=n)], 1
        ).astype(np.float32),
        "weight": rng.uniform(0.2, 2.0, n).astype(np.float32),
    }
    if cr:
        b["target"] = (rng.random(n) < 0.5).astype(np.float32)
    else:
        b["label"] = rng.integers(0, 3, n)
    return b


def classifier(x):
    """Fixed, input-dependent softmax probabilities (from the first cluster's features)."""
    z = x[0][:, 0, :3].astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def adversary(p):
    return (1.0 / (1.0 + np.exp(-3.0 * (p[:, 1] - p[:, 0]))))[:, None].astype(np.float32)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    main = [_batch(rng, n) for n in (300, 250, 17)]
    cr = [_batch(rng, n, cr=True) for n in (400, 123)]
    return main, cr


def _cat(batches, key):
    return np.concatenate([b[key] for b in batches])


def test_losses_and_accuracies_match_numpy(data, tmp_path):
    main, cr = data
    m = evaluate_epoch(classifier, adversary, main, cr, 0, tmp_path, adversary_weight=LAM, plots=False)

    p = np.concatenate([classifier([b["clusters"]]) for b in main]).astype(np.float64)
    y, w = _cat(main, "label"), _cat(main, "weight").astype(np.float64)
    p = np.clip(p / p.sum(1, keepdims=True), EPSILON, 1 - EPSILON)
    ce = -np.log(p[np.arange(len(y)), y])
    assert m["val_original_lossf"] == pytest.approx(np.sum(w * ce) / len(y), rel=1e-9)
    assert m["val_original_acc"] == pytest.approx(np.mean(np.argmax(p, 1) == y), rel=1e-12)

    q = np.concatenate([adversary(classifier([b["clusters"]]))[:, 0] for b in cr]).astype(np.float64)
    t, wc = _cat(cr, "target"), _cat(cr, "weight").astype(np.float64)
    qc = np.clip(q, EPSILON, 1 - EPSILON)
    bce = -(t * np.log(qc + EPSILON) + (1 - t) * np.log(1 - qc + EPSILON))
    assert m["val_original_adv_lossf"] == pytest.approx(np.sum(wc * bce) / len(t), rel=1e-9)
    assert m["val_adv_loss"] == m["val_original_adv_lossf"]
    assert m["val_original_adv_acc"] == pytest.approx(np.mean((q > 0.5) == t), rel=1e-12)
    assert m["val_adv_acc"] == m["val_original_adv_acc"]
    assert m["val_loss"] == pytest.approx(m["val_original_lossf"] - LAM * m["val_original_adv_lossf"])

    mw = evaluate_epoch(classifier, adversary, main, cr, 0, None, adversary_weight=LAM, plots=False,
                        weighted_accuracy=True)  # fmt: skip
    assert mw["val_original_acc"] == pytest.approx(np.sum(w * (np.argmax(p, 1) == y)) / w.sum(), rel=1e-9)


def test_ks_keys_equal_ks_weighted_per_bin(data):
    main, cr = data
    m = evaluate_epoch(classifier, adversary, main, cr, 3, None, adversary_weight=LAM, plots=False)
    p = np.concatenate([classifier([b["clusters"]]) for b in cr])
    pt, w, d = _cat(cr, "jet")[:, 0], _cat(cr, "weight"), _cat(cr, "target") == 1
    bins = pt_bin_index(pt, scaled_pt_edges((125, 250), (0.0, 500.0)))
    assert np.bincount(bins, minlength=3).sum() == len(pt)  # half-open bins: no jet lost
    for name, o in (("qcd", 0), ("sig", 1), ("bib", 2)):
        assert m[f"ks_{name}_all"] == pytest.approx(ks_weighted(p[d, o], p[~d, o], w[d], w[~d]), abs=1e-12)
        per = []
        for i, tag in enumerate(("lowPt", "midPt", "highPt")):
            s = bins == i
            per.append(ks_weighted(p[s & d, o], p[s & ~d, o], w[s & d], w[s & ~d]))
            assert m[f"ks_{name}_{tag}"] == pytest.approx(per[-1], abs=1e-12)
        assert m[f"ks_{name}_hist"] == pytest.approx(sum(per))
        assert 0.0 <= m[f"ks_{name}_pvalue"] <= 1.0


def test_edge_jets_and_gev_window():
    # 125 GeV with the default 0-500 window is 0.25: it belongs to the middle bin (the reference lost it).
    edges = scaled_pt_edges((125, 250), (0.0, 500.0))
    assert list(pt_bin_index(np.array([0.0, 0.2499, 0.25, 0.4999, 0.5, 1.2]), edges)) == [0, 0, 1, 1, 2, 2]
    assert scaled_pt_edges((125,), (25.0, 525.0)) == pytest.approx([0.2])


def test_empty_pt_bin_is_nan_not_a_crash(data, tmp_path):
    main, _ = data
    rng = np.random.default_rng(1)
    cr = [_batch(rng, 200, cr=True, pt=rng.uniform(0.0, 0.4, 200))]  # nothing above 250 GeV
    m = evaluate_epoch(classifier, adversary, main, cr, 1, tmp_path, adversary_weight=LAM)
    for name in ("qcd", "sig", "bib"):
        assert math.isnan(m[f"ks_{name}_highPt"])
        assert math.isfinite(m[f"ks_{name}_lowPt"]) and math.isfinite(m[f"ks_{name}_midPt"])
        assert m[f"ks_{name}_hist"] == pytest.approx(m[f"ks_{name}_lowPt"] + m[f"ks_{name}_midPt"])
    assert (tmp_path / "001_val_adversary_highPt_sig_predictions.png").read_bytes()[:8] == PNG_MAGIC


def test_empty_control_region_gives_nan(data):
    main, _ = data
    m = evaluate_epoch(classifier, adversary, main, [], 0, None, adversary_weight=LAM, plots=False)
    assert math.isfinite(m["val_original_lossf"])
    assert math.isnan(m["val_adv_loss"]) and math.isnan(m["ks_sig_all"]) and math.isnan(m["ks_sig_hist"])


def test_plots_written_weights_untouched_and_plots_off(data, tmp_path):
    main, cr = data
    before = [b["weight"].copy() for b in main + cr]
    for b in main + cr:
        b["weight"].setflags(write=False)  # as pandas 3 hands out: in-place normalisation would raise
    m = evaluate_epoch(classifier, adversary, main, cr, 12, tmp_path / "run", adversary_weight=LAM)
    for b, w in zip(main + cr, before, strict=True):
        np.testing.assert_array_equal(b["weight"], w)
    names = epoch_plot_names(12, ("lowPt", "midPt", "highPt"))
    assert len(names) == 15 and "012_val_adversary_midPt_bib_predictions.png" in names
    assert "012_main_sig_predictions_linear.png" in names
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(names)  # no temporaries left
    for n in names:
        assert (tmp_path / "run" / n).read_bytes()[:8] == PNG_MAGIC

    off = tmp_path / "off"
    m2 = evaluate_epoch(classifier, adversary, main, cr, 12, off, adversary_weight=LAM, plots=False)
    assert not off.exists()
    assert json.dumps(m2, sort_keys=True) == json.dumps(m, sort_keys=True)


def test_batch_source_may_be_a_callable_and_cr_label_fallback(data):
    main, cr = data
    relabelled = [{**{k: v for k, v in b.items() if k != "target"}, "label": np.where(b["target"] == 1, 3, 0)}
                  for b in cr]  # fmt: skip
    a = evaluate_epoch(classifier, adversary, lambda: iter(main), cr, 0, None, adversary_weight=LAM, plots=False)
    b = evaluate_epoch(classifier, adversary, main, relabelled, 0, None, adversary_weight=LAM, plots=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_bad_main_label_is_a_clear_error(data):
    main, cr = data
    bad = [{**main[0], "label": np.full(len(main[0]["label"]), 3)}]
    with pytest.raises(ValueError, match="labels"):
        evaluate_epoch(classifier, adversary, bad, cr, 0, None, adversary_weight=LAM, plots=False)


def test_history_plots(data, tmp_path):
    main, cr = data
    history: dict[str, list[float]] = {}
    for epoch in range(2):
        m = evaluate_epoch(classifier, adversary, main, cr, epoch, None, adversary_weight=LAM, plots=False)
        m.update(adv_loss=0.7, adv_acc=0.5, original_lossf=1.0, original_acc=0.4, original_adv_lossf=0.69,
                 original_adv_acc=0.5, original_loss=-5.0)  # fmt: skip
        for k, v in m.items():
            history.setdefault(k, []).append(v)
    written = plot_history(history, tmp_path)
    reference = {"train_adv_loss.png", "test_adv_loss.png", "adv_acc.png", "main_nn_loss.png",
                 "main_network_acc.png", "train_main_adv_loss.png", "test_main_adv_loss.png", "main_adv_acc.png",
                 "ks_qcd.png", "ks_sig.png", "ks_bib.png"}  # fmt: skip
    names = {p.name for p in written}
    assert reference <= names and names == set(history_plot_names(history))
    for p in written:
        assert p.read_bytes()[:8] == PNG_MAGIC
    # Validation-only history (no train keys yet): the train-only figures still come out from val curves.
    assert "main_nn_loss.png" in history_plot_names({"val_original_lossf": [1.0]})
    assert history_plot_names({}) == []
