"""The CalRatio networks: the per-jet classifier and the data/MC adversary (reference-training.md §4).

Backend-neutral Keras 3 (``keras.ops`` only). The classifier and the adversary are two separate
models, so "which variables does a step train" is decided by which model's variables a step
differentiates, never by ``trainable`` flags (Keras 3 does not snapshot them at compile time).

Constraints from the C++ export (frugally-deep) and the ONNX export: unique ASCII layer names, no
layer called with ``training=True``, LSTMs neither stateful nor unrolled, four inputs in the order
[clusters, tracks, msegs, jet] and one 3-vector softmax output ``main_output`` [QCD, signal, BIB].
"""

from __future__ import annotations

import keras
from keras import layers, ops

from .. import schema
from . import kernels
from .config import TrainConfig

# (branch prefix of the reference's layer names, model input, config attribute stems)
BRANCHES = (
    ("constit", "clusters", "filters_cnn_constit", "nodes_constit_lstm"),
    ("track", "tracks", "filters_cnn_track", "nodes_track_lstm"),
    ("MSeg", "msegs", "filters_cnn_MSeg", "nodes_MSeg_lstm"),
)
ADVERSARY_WIDTHS = (24, 12, 6)
TRUNK_WIDTHS = (512, 64)


def input_shapes(cfg: TrainConfig) -> dict[str, tuple[int, ...]]:
    """Per-jet shape of each model input; the mass parametrisation adds features to every input."""
    k = cfg.n_mass_features
    out = {}
    for mi in schema.MODEL_INPUTS:
        shape = mi.shape
        out[mi.name] = (*shape[:-1], shape[-1] + k)
    return out


def _reg(cfg: TrainConfig) -> keras.regularizers.Regularizer | None:
    # L1 and L2 both equal to reg_values, as the reference's L1L2(r, r).
    return keras.regularizers.L1L2(l1=cfg.reg_values, l2=cfg.reg_values) if cfg.reg_values > 0 else None


def _branch(x, prefix: str, filters: list[int], units: int, cfg: TrainConfig, kinds: dict):
    """Conv1D(k=1) stack → LSTM(s) for one constituent type (reference §4.1)."""
    p = cfg.dropout_array
    conv, dropout = kinds["conv"], kinds["dropout"]
    for i, f in enumerate(filters):
        last = i == len(filters) - 1
        name = f"{prefix}_final_conv1d" if last else f"{prefix}_conv1d_{i}"
        x = conv(f, 1, activation="relu", kernel_regularizer=_reg(cfg), name=name)(x)
        if i > 0:  # the reference has no dropout after the first convolution
            x = dropout(p, name=f"{prefix}_conv1d_dropout_{i}")(x)
    if units == 0:
        x = layers.GlobalAveragePooling1D(name=f"{prefix}_pooling")(x)
        for j in range(cfg.layers_list):
            x = dropout(p, name=f"{prefix}_pooling_dropout_{j}")(x)
        return x
    for j in range(cfg.layers_list):
        x = layers.LSTM(
            units,
            kernel_regularizer=_reg(cfg),
            return_sequences=j < cfg.layers_list - 1,
            name=f"{prefix}_lstm_{j}",
        )(x)
        x = dropout(p, name=f"{prefix}_lstm_dropout_{j}")(x)
    return x


def build_classifier(cfg: TrainConfig, name: str = "final_model", training_twin: bool = False) -> keras.Model:
    """The deployable per-jet classifier: 4 inputs → ``main_output`` softmax [QCD, signal, BIB].

    With reference defaults it has 60,067 parameters (reference §4.2). ``training_twin``: the same
    network with the faster training-time layers of :mod:`.kernels` (same variables in the same order),
    for the training steps only; never saved.
    """
    kinds = {"conv": layers.Conv1D, "dropout": layers.Dropout}
    if training_twin:
        kinds = {"conv": kernels.TrainingPointwiseConv1D, "dropout": kernels.TrainingDropout}
    shapes = input_shapes(cfg)
    inputs = [keras.Input(shapes[mi.name], name=mi.name) for mi in schema.MODEL_INPUTS]
    feats = [
        _branch(inp, prefix, getattr(cfg, fattr), getattr(cfg, nattr), cfg, kinds)
        for inp, (prefix, _, fattr, nattr) in zip(inputs[:3], BRANCHES, strict=True)
    ]
    x = layers.Concatenate(name="merge")([*feats, inputs[3]])  # the jet vector enters raw
    for i, w in enumerate(TRUNK_WIDTHS, start=1):
        x = layers.Dense(int(w * cfg.hidden_layer_fraction), activation="relu", kernel_regularizer=_reg(cfg),
                         name=f"main_dense_{i}")(x)  # fmt: skip
        x = kinds["dropout"](cfg.dropout_array, name=f"main_dropout_{i}")(x)
    out = layers.Dense(len(schema.MODEL_OUTPUTS), activation="softmax", name="main_output")(x)
    return keras.Model(inputs, out, name=name)


def build_adversary(name: str = "discriminator_model") -> keras.Model:
    """Data-vs-MC adversary on the 3 classifier scores (reference §4.3): 571 trainable + 90 non-trainable."""
    inp = keras.Input((len(schema.MODEL_OUTPUTS),), name="adversary_input")
    x = inp
    for i, w in enumerate(ADVERSARY_WIDTHS, start=1):
        x = layers.BatchNormalization(name=f"adversary_norm_{i}")(x)
        x = layers.Dense(w, activation="tanh", name=f"adversary_{i}")(x)
    x = layers.BatchNormalization(name=f"adversary_norm_{len(ADVERSARY_WIDTHS) + 1}")(x)
    out = layers.Dense(1, activation="sigmoid", name="adversary_out")(x)
    return keras.Model(inp, out, name=name)


class GradientReversal(layers.Layer):
    """Identity forward; multiplies the gradient by −λ: ``stop_gradient((1+λ)·x) − λ·x``.

    Written with ``keras.ops`` only, so it works on every backend without a custom gradient.
    """

    def __init__(self, lam: float, **kwargs):
        super().__init__(**kwargs)
        self.lam = float(lam)

    def call(self, x):
        return ops.stop_gradient((1.0 + self.lam) * x) - self.lam * x

    def get_config(self):
        return {**super().get_config(), "lam": self.lam}


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts (Keras' ``summary`` numbers; RNG seeds excluded)."""
    tr = sum(int(ops.size(w)) for w in model.trainable_weights)
    nt = sum(int(ops.size(w)) for w in model.non_trainable_weights)
    return tr, nt
