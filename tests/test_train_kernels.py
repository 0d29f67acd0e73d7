"""The training-time twins of Dropout and Conv1D(kernel 1) (crbatch.train.kernels) on TensorFlow.

What a user relies on: the twin computes the same network with the same weights (so a model
trained through it is the saved, exported model), the dropout rate and scaling are those asked for,
masks are independent draws that follow the layer's seed state (exact resume), and inference is
untouched. Runs on the test process's backend; the fast paths exist on TensorFlow only.
"""

from __future__ import annotations

import numpy as np
import pytest

from crbatch.train.config import TrainConfig

keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("the training twins have a fast path on TensorFlow only", allow_module_level=True)

from keras import layers  # noqa: E402

from crbatch.train.adversarial import AdversarialTrainer, _checked_twin  # noqa: E402
from crbatch.train.kernels import TrainingDropout, TrainingPointwiseConv1D  # noqa: E402
from crbatch.train.model import build_adversary, build_classifier  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("activation", ["relu", None])
def test_pointwise_conv_equals_conv1d(activation):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 30, 12)).astype("f4")
    ref = layers.Conv1D(16, 1, activation=activation)
    twin = TrainingPointwiseConv1D(16, 1, activation=activation)
    ref.build(x.shape)
    twin.build(x.shape)
    for a, b in zip(twin.weights, ref.weights, strict=True):
        a.assign(rng.normal(size=b.shape).astype("f4"))
        b.assign(a.value)
    np.testing.assert_allclose(_np(twin(x)), _np(ref(x)), rtol=1e-5, atol=1e-5)
    assert _np(twin(x)).shape == (7, 30, 16)


def test_dropout_rate_scale_and_independence():
    rate = 0.2
    d = TrainingDropout(rate, seed=5)
    x = np.ones((1000, 30, 33), "f4")  # odd element count: the last 16-bit half is unused
    a, b = _np(d(x, training=True)), _np(d(x, training=True))
    n = a.size
    dropped = (a == 0).mean()
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # 5σ of a binomial fraction
    np.testing.assert_allclose(np.unique(a), [0.0, 1 / (1 - rate)], rtol=1e-6)  # kept values rescaled
    assert (a != b).mean() > 0.3  # a fresh mask per call (independent draws: 2·0.2·0.8 = 0.32)
    # Independent per element: no correlation between neighbours along any axis.
    keep = (a != 0).astype("f8")
    for axis in range(3):
        c = np.corrcoef(np.moveaxis(keep, axis, 0)[:-1].ravel(), np.moveaxis(keep, axis, 0)[1:].ravel())[0, 1]
        assert abs(c) < 0.01
    np.testing.assert_array_equal(_np(d(x, training=False)), x)  # inference: identity


def test_dropout_follows_the_seed_state():
    d = TrainingDropout(0.3, seed=11)
    x = np.ones((64, 20, 10), "f4")
    d.build(x.shape)
    state = [v.value for v in d.non_trainable_variables]
    y1, s1 = d.stateless_call([], state, x, training=True)
    y2, _ = d.stateless_call([], state, x, training=True)
    y3, _ = d.stateless_call([], s1, x, training=True)
    np.testing.assert_array_equal(_np(y1), _np(y2))  # same seed state, same mask: resume is exact
    assert not np.array_equal(_np(y1), _np(y3))  # the state advances


def test_twin_is_the_same_network():
    cfg = TrainConfig(dropout_array=0.0)  # no dropout: training-mode outputs must agree exactly
    clf = build_classifier(cfg)
    twin = build_classifier(cfg, training_twin=True)
    _checked_twin(clf, twin)
    rng = np.random.default_rng(2)
    x = [rng.normal(size=(16, *inp.shape[1:])).astype("f4") for inp in clf.inputs]
    tv = [v.value for v in clf.trainable_variables]
    ntv = [v.value for v in clf.non_trainable_variables]
    p_ref, _ = clf.stateless_call(tv, ntv, x, training=True)
    p_twin, _ = twin.stateless_call(tv, ntv, x, training=True)
    np.testing.assert_allclose(_np(p_twin), _np(p_ref), rtol=1e-5, atol=1e-6)


def test_twin_with_another_architecture_is_refused():
    with pytest.raises(ValueError, match="trainable_variables"):
        _checked_twin(build_classifier(TrainConfig()), build_classifier(TrainConfig(nodes_MSeg_lstm=4)))


@pytest.mark.parametrize("fast", [True, False])
def test_trainer_uses_the_twin_only_when_asked(fast):
    cfg = TrainConfig(fast_kernels=fast)
    clf = build_classifier(cfg)
    tr = AdversarialTrainer(clf, build_adversary(), cfg)
    assert (tr.train_net is not clf) == fast
    kinds = {type(layer) for layer in tr.train_net.layers}
    assert (TrainingDropout in kinds) == fast and (TrainingPointwiseConv1D in kinds) == fast
    assert not {TrainingDropout, TrainingPointwiseConv1D} & {
        type(layer) for layer in clf.layers
    }  # saved model: Keras' own


def test_thread_pools_follow_the_config(tmp_path):
    """In a fresh process (the pools are fixed once TensorFlow's runtime starts)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, tensorflow as tf; from crbatch.train.adversarial import configure_threads; "
        "from crbatch.train.config import TrainConfig; "
        "[configure_threads(TrainConfig(**kw)) or print(json.dumps([tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads()])) for kw in ({}, {'intra_op_threads': 3, 'inter_op_threads': 5})]"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    first, second = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert first == [1, len(os.sched_getaffinity(0))]  # default: one thread per op, as many ops as allowed cores
    assert second == [3, 5]  # set before the runtime started: both applied
