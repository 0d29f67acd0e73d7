"""The adversarial steps (crbatch.train.adversarial) on TensorFlow AND JAX: which variables each step
changes, loss sign and reduction, the Nadam re-implementation, gradient reversal, the fused batch.

A process holds one Keras backend, so this file doubles as a script: each backend runs it in a
subprocess (``KERAS_BACKEND=<backend> python tests/test_train_steps.py OUT``) that writes its
findings to OUT/result.json; the tests assert on them. A small network keeps the compilations short
(the mechanics do not depend on the widths; test_train_model checks the reference sizes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# JAX's compilations take ~40 s on a 2-core CPU: its run is marked slow (it still runs by default).
BACKENDS = ("tensorflow", pytest.param("jax", marks=pytest.mark.slow))
SMALL = dict(filters_cnn_constit=[8, 4], filters_cnn_track=[8, 4], filters_cnn_MSeg=[4], nodes_constit_lstm=3,
             nodes_track_lstm=3, nodes_MSeg_lstm=2, hidden_layer_fraction=0.05)  # fmt: skip
B = 32


# ------------------------------------------------------------------------------------------------
# The subprocess part
# ------------------------------------------------------------------------------------------------


def _batches(rng, n_feat: int = 0):
    def x():
        return [rng.normal(size=(B, 30, 12 + n_feat)).astype("f4"), rng.normal(size=(B, 20, 10 + n_feat)).astype("f4"),
                rng.normal(size=(B, 30, 6 + n_feat)).astype("f4"), rng.normal(size=(B, 3 + n_feat)).astype("f4")]  # fmt: skip

    main = {"x": x(), "y": rng.integers(0, 3, B).astype("i4"), "w": rng.uniform(0.5, 2, B).astype("f4"),
            "m": np.ones(B, "f4")}  # fmt: skip
    cr = {"x": x(), "t": rng.integers(0, 2, B).astype("f4"), "w": rng.uniform(0.5, 2, B).astype("f4")}
    return main, cr


def _groups(tr, st) -> dict[str, list[np.ndarray]]:
    """Every array of a training state, labelled; the classifier's non-trainable state is its RNG."""
    from crbatch.train.checkpoint import to_host

    h = to_host(st)
    out = {"classifier": h["clf_tv"], "classifier_rng": h["clf_ntv"], "adversary": h["adv_tv"],
           "adversary_bn_stats": h["adv_ntv"]}  # fmt: skip
    for k, o in h["opt"].items():
        out[f"opt_{k}"] = [o["iteration"], o["u_product"], *o["m"], *o["v"]]
    return out


def _changes(tr, before, after) -> dict[str, list[bool]]:
    """Per group, per array: did it change (bitwise)?"""
    a, b = _groups(tr, before), _groups(tr, after)
    return {k: [not np.array_equal(x, y) for x, y in zip(a[k], b[k], strict=True)] for k in a}


def _bce_inference(tr, st, cr) -> float:
    from crbatch.train.adversarial import weighted_bce

    q = tr.predict_adversary(st, tr.predict(st, cr["x"]))
    s, n = weighted_bce(q, cr["t"], cr["w"])
    return float(s) / float(n)


def run_checks(out: Path) -> None:
    import keras
    from keras import ops

    from crbatch.train.adversarial import AdversarialTrainer, seed_all
    from crbatch.train.config import TrainConfig
    from crbatch.train.model import build_adversary, build_classifier

    res: dict = {"backend": keras.backend.backend()}
    rng = np.random.default_rng(3)
    seed_all(5)
    cfg = TrainConfig(**SMALL)
    tr = AdversarialTrainer(build_classifier(cfg), build_adversary(), cfg)
    main, cr = _batches(rng)
    st0 = tr.initial_state()
    st1 = tr.discriminator_step(st0, cr)
    res["disc"] = _changes(tr, st0, st1)
    st2 = tr.classifier_step(st1, main, cr)
    res["clf"] = _changes(tr, st1, st2)
    st3 = tr.train_batch(st2, main, cr)
    res["batch"] = _changes(tr, st2, st3)
    res["acc_of_batch"] = (ops.convert_to_numpy(st3["acc"]) - ops.convert_to_numpy(st2["acc"])).tolist()

    # The rest runs on TensorFlow only (its compilations are quick; JAX's take ~30 s each on these
    # CPUs): the functions are the same keras.ops code on both backends.
    if keras.backend.backend() == "tensorflow":
        _extended_checks(res, rng, main, cr)
    _cheap_checks(res, rng)

    # A classifier file saved on this backend, and its scores, for the cross-backend load test.
    tr.push(st3)
    tr.classifier.save(out / "classifier.keras")
    xs = _batches(np.random.default_rng(11))[0]["x"]
    np.savez(out / "scores.npz", *xs, scores=tr.predict(st3, xs))
    (out / "result.json").write_text(json.dumps(res))


def _extended_checks(res: dict, rng, main, cr) -> None:

    from crbatch.train.adversarial import AdversarialTrainer, seed_all
    from crbatch.train.config import TrainConfig
    from crbatch.train.model import build_adversary, build_classifier

    # Loss sign: with the main weights at 0 the classifier step only does −λ·BCE, so it must RAISE
    # the adversary's loss (the classifier fools the adversary); dropout off to compare exactly.
    seed_all(5)
    cfg0 = TrainConfig(**SMALL, dropout_array=0.0, lr_values=0.01)
    tr0 = AdversarialTrainer(build_classifier(cfg0), build_adversary(), cfg0)
    s = tr0.initial_state()
    for _ in range(3):
        s = tr0.discriminator_step(s, cr)
    zero_main = {**main, "w": np.zeros(B, "f4")}
    bce_before = _bce_inference(tr0, s, cr)
    s_after = tr0.classifier_step(s, zero_main, cr)
    res["bce_before_after_clf_step"] = [bce_before, _bce_inference(tr0, s_after, cr)]

    # Fused batch (one stacked forward for the discriminator steps) == discriminator, discriminator,
    # classifier steps one by one, when dropout is off (with dropout only the random masks differ).
    fused = tr0.train_batch(s, main, cr)
    seq = tr0.classifier_step(tr0.discriminator_step(tr0.discriminator_step(s, cr), cr), main, cr)
    ga, gb = _groups(tr0, fused), _groups(tr0, seq)
    res["fused_vs_sequential_maxdiff"] = max(
        float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))) if x.size else 0.0)
        for k in ga for x, y in zip(ga[k], gb[k], strict=True)
    )  # fmt: skip

    # Gradient reversal: one joint step changes both networks.
    seed_all(5)
    cfg_gr = TrainConfig(**SMALL, adversary_mode="gradient_reversal")
    tg = AdversarialTrainer(build_classifier(cfg_gr), build_adversary(), cfg_gr)
    g0 = tg.initial_state()
    res["gr"] = _changes(tg, g0, tg.train_batch(g0, main, cr))


def _cheap_checks(res: dict, rng) -> None:
    """Eager checks (no compilation): gradient reversal, Nadam, loss reductions."""
    import keras
    from keras import ops

    from crbatch.train.adversarial import Nadam, _value_and_grad, weighted_bce, weighted_ce
    from crbatch.train.model import GradientReversal

    grl = GradientReversal(10.0)
    x = ops.convert_to_tensor(rng.normal(size=(4, 3)).astype("f4"))
    c = ops.convert_to_tensor(rng.normal(size=(4, 3)).astype("f4"))
    _, grad = _value_and_grad(lambda v: (ops.sum(c * grl(v)), 0.0))(x)
    res["grl_forward_equal"] = bool(np.allclose(ops.convert_to_numpy(grl(x)), ops.convert_to_numpy(x)))
    res["grl_grad_over_c"] = np.unique(np.round(ops.convert_to_numpy(grad) / ops.convert_to_numpy(c), 4)).tolist()

    # Nadam re-implementation vs keras.optimizers.Nadam, 5 steps on random variables and gradients.
    shapes = [(5, 3), (3,), (2, 2, 4)]
    init = [rng.normal(size=sh).astype("f4") for sh in shapes]
    grads = [[rng.normal(size=sh).astype("f4") for sh in shapes] for _ in range(5)]
    kv = [keras.Variable(a) for a in init]
    kopt = keras.optimizers.Nadam(learning_rate=0.0008, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    mine = Nadam(0.0008)
    vs = [ops.convert_to_tensor(a) for a in init]
    ost = mine.init(vs)
    for g in grads:
        kopt.apply([ops.convert_to_tensor(x) for x in g], kv)
        vs, ost = mine.apply(ost, [ops.convert_to_tensor(x) for x in g], vs)
    res["nadam_maxdiff"] = max(
        float(np.max(np.abs(ops.convert_to_numpy(a) - ops.convert_to_numpy(b.value)))) for a, b in zip(vs, kv, strict=True)
    )  # fmt: skip

    # Loss reduction pinned to Σ w·ℓ / N; Keras 3.15's own "sum_over_batch_size" computes the same.
    p = rng.dirichlet(np.ones(3), size=B).astype("f4")
    y = rng.integers(0, 3, B).astype("i4")
    w = rng.uniform(0.1, 3.0, B).astype("f4")
    s_ce, n_ce = weighted_ce(ops.convert_to_tensor(p), y, w, np.ones(B, "f4"))
    keras_ce = keras.losses.CategoricalCrossentropy()(keras.utils.to_categorical(y, 3), p, sample_weight=w)
    manual = float(np.sum(w * -np.log(np.clip(p[np.arange(B), y], 1e-7, 1))) / B)
    res["ce"] = [float(s_ce) / float(n_ce), float(keras_ce), manual]
    q = rng.uniform(0, 1, B).astype("f4")
    t = rng.integers(0, 2, B).astype("f4")
    s_b, n_b = weighted_bce(ops.convert_to_tensor(q), t, w)
    keras_bce = keras.losses.BinaryCrossentropy()(t[:, None], q[:, None], sample_weight=w)
    res["bce"] = [float(s_b) / float(n_b), float(keras_bce)]


# ------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def result(request, tmp_path_factory):
    for module in ("keras", request.param):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (the train / jax extras)")
    out = tmp_path_factory.mktemp(f"steps_{request.param}")
    env = {**os.environ, "KERAS_BACKEND": request.param, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((out / "result.json").read_text())
    assert res["backend"] == request.param
    res["out"] = out
    return res


def test_discriminator_step_changes_only_the_adversary(result):
    ch = result["disc"]
    assert all(ch["adversary"]), "every adversary weight is trained"
    assert all(ch["adversary_bn_stats"]), "BatchNorm in training mode updates its moving statistics"
    assert not any(ch["classifier"]), "the classifier's weights are frozen"
    assert not any(ch["opt_classifier"])
    assert all(ch["opt_adversary"])
    assert any(ch["classifier_rng"]), "the classifier runs in training mode (dropout on, as in the reference)"


def test_classifier_step_changes_only_the_classifier(result):
    ch = result["clf"]
    assert all(ch["classifier"]), "every classifier weight is trained"
    assert not any(ch["adversary"]), "the adversary is frozen"
    assert not any(ch["adversary_bn_stats"]), "the frozen adversary's BatchNorm runs in inference mode"
    assert not any(ch["opt_adversary"])
    assert all(ch["opt_classifier"])


def test_batch_trains_both_in_turn(result):
    ch = result["batch"]
    assert all(ch["classifier"]) and all(ch["adversary"]) and all(ch["adversary_bn_stats"])
    acc = result["acc_of_batch"]
    assert acc[1] == B and acc[4] == B and acc[9] == B  # main, CR (classifier step), last discriminator step


def _extended(result):
    if "gr" not in result:
        pytest.skip("checked on TensorFlow (backend-neutral keras.ops code; JAX compilations are slow here)")


def test_classifier_step_fools_the_adversary(result):
    _extended(result)
    before, after = result["bce_before_after_clf_step"]
    assert after > before  # loss CE − λ·BCE: with no CE term the step raises the adversary's BCE


def test_fused_batch_equals_the_steps_one_by_one(result):
    _extended(result)
    assert result["fused_vs_sequential_maxdiff"] < 1e-5


def test_gradient_reversal_layer(result):
    assert result["grl_forward_equal"]
    assert result["grl_grad_over_c"] == [-10.0]


def test_gradient_reversal_step_trains_both(result):
    _extended(result)
    ch = result["gr"]
    assert all(ch["classifier"]) and all(ch["adversary"])


def test_nadam_matches_keras(result):
    assert result["nadam_maxdiff"] < 1e-6


def test_loss_reduction_is_sum_w_l_over_n(result):
    mine, keras_ce, manual = result["ce"]
    assert mine == pytest.approx(manual, rel=1e-5)
    assert keras_ce == pytest.approx(manual, rel=1e-5)  # Keras 3.15 "sum_over_batch_size": the same
    mine_b, keras_b = result["bce"]
    assert mine_b == pytest.approx(keras_b, rel=1e-4)  # Keras 2's "+ε" inside the log: ~1e-7 relative


def test_classifier_file_loads_on_tensorflow(result):
    """``epochs/NNN.keras`` files load with compile=False on another backend with the same scores."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the test process runs another backend")
    m = keras.models.load_model(result["out"] / "classifier.keras", compile=False)
    z = np.load(result["out"] / "scores.npz")
    xs = [z[f"arr_{i}"] for i in range(4)]
    np.testing.assert_allclose(m.predict_on_batch(xs), z["scores"], atol=1e-5)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    run_checks(Path(sys.argv[1]))
