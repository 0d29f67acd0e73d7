"""The adversarial training steps, written as pure functions of explicit variable lists.

Why not ``compile``/``train_on_batch``: Keras 3 does not snapshot ``trainable`` at compile time, so
the Keras-2 trick of two compiled models with opposite flags silently trains the wrong weights
(reference-training.md §10.4). Here every step says *which list of variables* it differentiates and
updates:

* discriminator step (``adversary_steps`` times per batch, reference §4.5): loss
  ``BCE_w(adversary(classifier(CR)), is_data)``; gradients w.r.t. the adversary's trainable variables
  only; classifier in training mode (its dropout active, as in the reference) but its weights are
  inputs, not outputs; adversary BatchNorm in training mode (moving statistics updated).
* classifier step: loss ``CE_w(classifier(main), y) − λ·BCE_w(adversary(classifier(CR)), is_data)``
  + the L1L2 penalties; gradients w.r.t. the classifier's trainable variables only; the adversary
  is called in inference mode (BatchNorm uses and keeps its moving statistics), exactly like the
  reference's frozen adversary.
* gradient-reversal mode (option): one joint step, loss ``CE_w + BCE_w(adversary(GRL(classifier(CR))))``
  over both variable lists with one optimizer; the reversal layer multiplies the gradient reaching
  the classifier by −λ.

Weighted losses are reduced as Keras 2 did and Keras 3.15 still does for ``sum_over_batch_size``:
``Σ wᵢ·ℓᵢ / N`` (N = jets in the batch, not Σw), pinned here by writing the reduction out. Probabilities
are clipped to [1e-7, 1 − 1e-7] as Keras does.

Keras 3 has no backend-neutral gradient function, so the two lines that take a gradient and the one
that compiles are dispatched on the backend (TensorFlow: ``GradientTape`` + ``tf.function``; JAX:
``jax.value_and_grad`` + ``jax.jit``). The model code (model.py) stays ``keras.ops`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from .config import TrainConfig
from .model import GradientReversal, build_classifier

EPS = 1e-7

# Per-epoch accumulator slots (sums; an epoch's value is sum / count). Kept on the device inside the
# training state so a step needs no host synchronisation.
ACC_NAMES = (
    "clf_ce_sum", "clf_n", "clf_correct",  # classifier step, main batch
    "clf_bce_sum", "clf_cr_n", "clf_cr_correct",  # classifier step, CR batch through the (frozen) adversary
    "clf_reg_sum", "clf_batches",  # L1L2 penalty, number of classifier steps
    "disc_bce_sum", "disc_n", "disc_correct",  # last discriminator step of each batch
)  # fmt: skip

State = dict[str, Any]  # {"clf_tv", "clf_ntv", "adv_tv", "adv_ntv": [arrays], "opt": {name: [arrays]}, "acc": array}
Batch = dict[str, Any]  # main: {"x": [4 arrays], "y": int32, "w": f32, "m": f32}; cr: {"x", "t": f32, "w": f32}


# --- losses and metrics (pinned reductions) ---------------------------------------------------------


def weighted_ce(p, y, w, m):
    """Σ m·w·CE / Σ m per Keras 2 (categorical CE on softmax probabilities, clipped)."""
    p = p / ops.sum(p, axis=-1, keepdims=True)
    p = ops.clip(p, EPS, 1.0 - EPS)
    onehot = ops.one_hot(y, ops.shape(p)[-1], dtype=p.dtype)
    ll = -ops.sum(onehot * ops.log(p), axis=-1)
    return ops.sum(m * w * ll), ops.sum(m)


def weighted_bce(p, t, w):
    """Σ w·BCE and N, Keras-2 formula (clip, then log(p + ε))."""
    p = ops.clip(ops.reshape(p, (-1,)), EPS, 1.0 - EPS)
    ll = -(t * ops.log(p + EPS) + (1.0 - t) * ops.log(1.0 - p + EPS))
    return ops.sum(w * ll), ops.cast(ops.shape(p)[0], p.dtype)


def _n_correct_cls(p, y, m):
    return ops.sum(m * ops.cast(ops.equal(ops.argmax(p, axis=-1), ops.cast(y, "int32")), p.dtype))


def _n_correct_bin(p, t):
    p = ops.reshape(p, (-1,))
    return ops.sum(ops.cast(ops.equal(ops.cast(p > 0.5, p.dtype), t), p.dtype))


# --- backend dispatch: the only backend-specific lines -----------------------------------------------


def _value_and_grad(fn: Callable) -> Callable:
    """``fn(params, *args) -> (loss, aux)`` → ``g(params, *args) -> ((loss, aux), grads)``."""
    name = keras.backend.backend()
    if name == "jax":
        import jax

        return jax.value_and_grad(fn, has_aux=True)
    if name == "tensorflow":
        import tensorflow as tf

        def vg(params, *args):
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss, aux = fn(params, *args)
            return (loss, aux), tape.gradient(loss, params)

        return vg
    raise RuntimeError(f"crbatch train supports the tensorflow and jax Keras backends, not {name!r}")


def _compile(fn: Callable) -> Callable:
    name = keras.backend.backend()
    if name == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    # reduce_retracing: a last, shorter batch of an epoch gets a shape-generic trace instead of a new one each time.
    # No XLA (jit_compile): on CPU it ran the LSTM loops 3× slower than TensorFlow's own kernels.
    return tf.function(fn, reduce_retracing=True)


def release_memory() -> None:
    """Hand the heap freed since the last call back to the system (glibc ``malloc_trim``).

    An XLA compilation (JAX) frees ~0.6 GB that glibc would otherwise keep in the process's RSS,
    where the next compilation's or the validation's allocations would pile on top of it.
    """
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def keep_tensorflow_out() -> None:
    """Under JAX, stop Keras from importing TensorFlow just to ask ``isinstance(x, tf.TensorShape)``.

    Keras' model serialisation (``model.save``) imports TensorFlow whenever it is installed; in a
    JAX training process that is ~600 MB of RSS and seconds for nothing. Keras then treats
    TensorFlow as absent, which is what a JAX-only (GPU) installation sees anyway. No effect when
    TensorFlow is already loaded or is the backend.
    """
    import sys

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        return
    try:
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False
    except (ImportError, AttributeError):
        pass


def seed_all(seed: int) -> None:
    """``keras.utils.set_random_seed`` without importing TensorFlow under another backend.

    Keras' version also seeds TensorFlow whenever it is installed, which loads it (~600 MB of RSS)
    into a JAX process. Initialisers and dropout layers draw their seeds from Python's ``random``
    and Keras' global SeedGenerator, which is reset so that it is re-created from the new seed.
    """
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    import random

    random.seed(seed)
    np.random.seed(seed)
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils import rng_utils

        global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except (ImportError, AttributeError):  # Keras internals moved: fall back to the public function
        keras.utils.set_random_seed(seed)


def configure_threads(cfg: TrainConfig) -> None:
    """TensorFlow's CPU thread pools, from ``intra_op_threads`` and ``inter_op_threads``.

    inter-op: the cores this process may run on (``sched_getaffinity``: a Slurm allocation or an
    HTCondor slot with CPU affinity), not the machine's, unless set. intra-op 1: the reference
    network's operations are small, and running independent ones side by side (the three
    constituent branches, the classifier step's forward pass during the discriminator steps) beats
    splitting each across cores: 1.15× the step rate on 2 cores (bench/RESULTS.md). Must run before
    TensorFlow starts its runtime; later (a second training in one process) it changes nothing.
    """
    if keras.backend.backend() != "tensorflow":
        return
    import os

    import tensorflow as tf

    inter = cfg.inter_op_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0)
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        if cfg.intra_op_threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.intra_op_threads)
    except RuntimeError:  # the runtime is already up: its pools stay as they are
        pass


def enable_determinism() -> None:
    """Make the backend's kernels deterministic (TF op determinism; XLA on CPU already is)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


# --- optimizer ---------------------------------------------------------------------------------------


class Nadam:
    """Keras 3's Nadam (the reference's optimizer) as a pure function of an explicit state.

    Keras' own ``Optimizer.stateless_apply`` is refused by its TensorFlow backend, so the update is
    written out here, operation for operation as ``keras.optimizers.Nadam.update_step`` (β1 0.9,
    β2 0.999, ε 1e-7, momentum-cache schedule ``β1·(1 − 0.5·0.96^t)``); a test checks it against
    Keras. State: ``{"iteration": int32 scalar, "u_product": f32 scalar, "m": [..], "v": [..]}``.
    """

    def __init__(self, learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
        self.lr, self.beta_1, self.beta_2, self.epsilon = learning_rate, beta_1, beta_2, epsilon

    def init(self, variables: list) -> dict[str, Any]:
        return {
            "iteration": ops.zeros((), "int32"),
            "u_product": ops.ones((), "float32"),
            "m": [ops.zeros(v.shape, v.dtype) for v in variables],
            "v": [ops.zeros(v.shape, v.dtype) for v in variables],
        }

    def apply(self, state: dict[str, Any], grads: list, variables: list) -> tuple[list, dict[str, Any]]:
        dtype = "float32"
        it = state["iteration"]
        local_step = ops.cast(it + 1, dtype)
        next_step = ops.cast(it + 2, dtype)
        b1, b2 = self.beta_1, self.beta_2
        # Keras updates u_product first (in _backend_update_step), then every variable reads it.
        u_product = state["u_product"] * b1 * (1.0 - 0.5 * ops.power(0.96, local_step))
        u_t = b1 * (1.0 - 0.5 * ops.power(0.96, local_step))
        u_t_1 = b1 * (1.0 - 0.5 * ops.power(0.96, next_step))
        u_product_t_1 = u_product * u_t_1
        beta_2_power = ops.power(b2, local_step)
        new_vars, new_m, new_v = [], [], []
        for g, var, m, v in zip(grads, variables, state["m"], state["v"], strict=True):
            m = m + (g - m) * (1 - b1)
            v = v + (ops.square(g) - v) * (1 - b2)
            m_hat = (u_t_1 * m) / (1 - u_product_t_1) + ((1 - u_t) * g) / (1 - u_product)
            v_hat = v / (1 - beta_2_power)
            new_vars.append(var - (m_hat * self.lr) / (ops.sqrt(v_hat) + self.epsilon))
            new_m.append(m)
            new_v.append(v)
        return new_vars, {"iteration": it + 1, "u_product": u_product, "m": new_m, "v": new_v}


# --- the trainer ------------------------------------------------------------------------------------


class AdversarialTrainer:
    """Holds the two models and their optimizers; runs compiled, stateless steps on a :data:`State`.

    The training state lives outside the Keras variables while training (as JAX's own trainer does);
    :meth:`initial_state` copies the variables into a state and :meth:`push` writes a state back into them
    (before evaluation, saving and checkpointing).
    """

    def __init__(self, classifier: keras.Model, adversary: keras.Model, cfg: TrainConfig):
        self.classifier, self.adversary, self.cfg = classifier, adversary, cfg
        # The training steps run a twin with faster training-time layers (kernels.py; same variables)
        # on TensorFlow; inference, saving and export always use ``classifier`` itself.
        self.train_net = classifier
        if cfg.fast_kernels and keras.backend.backend() == "tensorflow":
            self.train_net = _checked_twin(
                classifier, build_classifier(cfg, name=f"{classifier.name}_training", training_twin=True)
            )
        self.lam = float(cfg.adversary_weight)
        self.mode = cfg.adversary_mode
        self.adversary_steps = int(cfg.adversary_steps)
        self.grl = GradientReversal(self.lam, name="gradient_reversal")

        self.nadam = Nadam(cfg.lr_values)
        if self.mode == "reference":
            self.optimizer_groups = {"classifier": classifier.trainable_variables,
                                     "adversary": adversary.trainable_variables}  # fmt: skip
        else:
            self.optimizer_groups = {"joint": classifier.trainable_variables + adversary.trainable_variables}
        self._fns: dict[str, Callable] = {}

    # -- state <-> Keras variables --

    def _var_lists(self) -> dict[str, list]:
        return {
            "clf_tv": self.classifier.trainable_variables,
            "clf_ntv": self.classifier.non_trainable_variables,
            "adv_tv": self.adversary.trainable_variables,
            "adv_ntv": self.adversary.non_trainable_variables,
        }

    def initial_state(self) -> State:
        """The models' current variables, fresh optimizer slots and zero accumulators."""
        v = self._var_lists()
        st: State = {k: [ops.convert_to_tensor(x.value) for x in v[k]] for k in v}
        st["opt"] = {k: self.nadam.init(vs) for k, vs in self.optimizer_groups.items()}
        st["acc"] = ops.zeros((len(ACC_NAMES),), "float32")
        return st

    def push(self, st: State) -> None:
        """Write the model variables of ``st`` into the Keras models (before evaluation or saving)."""
        for k, vs in self._var_lists().items():
            for var, val in zip(vs, st[k], strict=True):
                var.assign(val)

    # -- pure step functions --

    def _clf_forward(self, clf_tv, clf_ntv, x, training: bool):
        p, ntv, losses = self.train_net.stateless_call(clf_tv, clf_ntv, x, training=training, return_losses=True)
        reg = ops.sum(ops.stack(losses)) if losses else ops.zeros((), "float32")
        return p, ntv, reg

    def _disc_scores(self, st: State, cr: Batch, k: int) -> tuple[list, list]:
        """Classifier scores (training mode: dropout on, as in the reference) for ``k`` discriminator steps.

        The classifier's weights do not change during the discriminator steps, so the ``k`` forward
        passes (each with its own dropout masks) are one call on ``k`` stacked copies of the batch:
        fewer, larger kernels. Not differentiated.
        """
        x = cr["x"] if k == 1 else [ops.concatenate([a] * k, axis=0) for a in cr["x"]]
        p, clf_ntv, _ = self._clf_forward(st["clf_tv"], st["clf_ntv"], x, True)
        p = ops.stop_gradient(p)
        n = ops.shape(cr["t"])[0]
        return [p[i * n : (i + 1) * n] for i in range(k)], clf_ntv

    def _disc_update(self, st: State, p_cr, cr: Batch) -> tuple[State, Any]:
        """One adversary update on fixed classifier scores; BatchNorm in training mode."""

        def loss_fn(adv_tv):
            q, adv_ntv = self.adversary.stateless_call(adv_tv, st["adv_ntv"], p_cr, training=True)
            s, n = weighted_bce(q, cr["t"], cr["w"])
            return s / n, (adv_ntv, s, n, _n_correct_bin(q, cr["t"]))

        (_, (adv_ntv, s, n, corr)), grads = _value_and_grad(loss_fn)(st["adv_tv"])
        adv_tv, opt = self.nadam.apply(st["opt"]["adversary"], grads, st["adv_tv"])
        new = {**st, "adv_tv": adv_tv, "adv_ntv": adv_ntv, "opt": {**st["opt"], "adversary": opt}}
        return new, ops.stack([s, n, corr])

    def _clf_scores(self, clf_tv, clf_ntv, main: Batch, cr: Batch):
        """Training-mode scores of the main and CR batches from one classifier call (own dropout masks per jet)."""
        x = [ops.concatenate([a, b], axis=0) for a, b in zip(main["x"], cr["x"], strict=True)]
        p, ntv, reg = self._clf_forward(clf_tv, clf_ntv, x, True)
        n = ops.shape(main["y"])[0]
        return p[:n], p[n:], ntv, reg

    def _clf_step(self, st: State, main: Batch, cr: Batch) -> State:
        lam = self.lam

        def loss_fn(clf_tv):
            p, p_cr, ntv, reg = self._clf_scores(clf_tv, st["clf_ntv"], main, cr)
            # The adversary is frozen: inference mode, its variables are constants of this loss.
            q, _ = self.adversary.stateless_call(st["adv_tv"], st["adv_ntv"], p_cr, training=False)
            ce_s, ce_n = weighted_ce(p, main["y"], main["w"], main["m"])
            bce_s, bce_n = weighted_bce(q, cr["t"], cr["w"])
            loss = ce_s / ops.maximum(ce_n, 1.0) - lam * bce_s / bce_n + reg
            stats = ops.stack([ce_s, ce_n, _n_correct_cls(p, main["y"], main["m"]),
                               bce_s, bce_n, _n_correct_bin(q, cr["t"]), reg, ops.ones((), reg.dtype)])  # fmt: skip
            return loss, (ntv, stats)

        (_, (clf_ntv, stats)), grads = _value_and_grad(loss_fn)(st["clf_tv"])
        clf_tv, opt = self.nadam.apply(st["opt"]["classifier"], grads, st["clf_tv"])
        return {**st, "clf_tv": clf_tv, "clf_ntv": clf_ntv, "opt": {**st["opt"], "classifier": opt},
                "acc": st["acc"] + ops.concatenate([stats, ops.zeros((3,), stats.dtype)])}  # fmt: skip

    def _joint_step(self, st: State, main: Batch, cr: Batch) -> State:
        n_clf = len(st["clf_tv"])

        def loss_fn(params):
            clf_tv, adv_tv = params[:n_clf], params[n_clf:]
            p, p_cr, ntv, reg = self._clf_scores(clf_tv, st["clf_ntv"], main, cr)
            q, adv_ntv = self.adversary.stateless_call(adv_tv, st["adv_ntv"], self.grl(p_cr), training=True)
            ce_s, ce_n = weighted_ce(p, main["y"], main["w"], main["m"])
            bce_s, bce_n = weighted_bce(q, cr["t"], cr["w"])
            loss = ce_s / ops.maximum(ce_n, 1.0) + bce_s / bce_n + reg
            corr_q = _n_correct_bin(q, cr["t"])
            stats = ops.stack([ce_s, ce_n, _n_correct_cls(p, main["y"], main["m"]),
                               bce_s, bce_n, corr_q, reg, ops.ones((), reg.dtype), bce_s, bce_n, corr_q])  # fmt: skip
            return loss, (ntv, adv_ntv, stats)

        params = [*st["clf_tv"], *st["adv_tv"]]
        (_, (clf_ntv, adv_ntv, stats)), grads = _value_and_grad(loss_fn)(params)
        new, opt = self.nadam.apply(st["opt"]["joint"], grads, params)
        return {**st, "clf_tv": new[:n_clf], "clf_ntv": clf_ntv, "adv_tv": new[n_clf:], "adv_ntv": adv_ntv,
                "opt": {"joint": opt}, "acc": st["acc"] + stats}  # fmt: skip

    def _disc_phase(self, st: State, cr: Batch) -> State:
        """The ``adversary_steps`` discriminator steps of a batch; records the last one (as the reference)."""
        scores, clf_ntv = self._disc_scores(st, cr, self.adversary_steps)
        st = {**st, "clf_ntv": clf_ntv}
        disc: Any = None  # a tensor after the loop (adversary_steps ≥ 1)
        for p_cr in scores:  # unrolled at trace time
            st, disc = self._disc_update(st, p_cr, cr)
        st["acc"] = st["acc"] + ops.concatenate([ops.zeros((len(ACC_NAMES) - 3,), disc.dtype), disc])
        return st

    def _single_disc(self, st: State, cr: Batch) -> State:
        scores, clf_ntv = self._disc_scores(st, cr, 1)
        return self._disc_update({**st, "clf_ntv": clf_ntv}, scores[0], cr)[0]

    # -- compiled entry points --

    def _fn(self, name: str) -> Callable:
        if name not in self._fns:
            fns: dict[str, Callable[..., Any]] = {
                "disc_phase": self._disc_phase, "joint": self._joint_step, "disc": self._single_disc,
                "clf": self._clf_step, "batch": self._batch, "predict": self._predict, "predict_adv": self._predict_adv,
            }  # fmt: skip
            self._fns[name] = _compile(fns[name])
        return self._fns[name]

    def _batch(self, st: State, main: Batch, cr: Batch) -> State:
        if self.adversary_steps:
            st = self._disc_phase(st, cr)
        return self._clf_step(st, main, cr)

    def train_batch(self, st: State, main: Batch, cr: Batch) -> State:
        """One training batch: ``adversary_steps`` discriminator steps, then one classifier step.

        TensorFlow: one graph for the whole batch. The classifier step's forward pass does not
        depend on the discriminator steps (they change only the adversary), so TensorFlow's executor
        runs it on the second core while the discriminator steps' small sequential operations run:
        1.2–1.4× the rate of two separate graphs on 2 cores (bench/RESULTS.md).
        JAX: two compiled functions: the same run time, and a third less peak memory while XLA
        compiles them, the more so as the heap freed by the first compilation is handed back to the
        system before the second (:func:`release_memory`).
        """
        if self.mode == "gradient_reversal":
            return self._fn("joint")(st, main, cr)
        if keras.backend.backend() == "tensorflow":
            return self._fn("batch")(st, main, cr)
        first = "clf" not in self._fns
        if self.adversary_steps:
            st = self._fn("disc_phase")(st, cr)
            if first:
                ops.convert_to_numpy(st["acc"])
                release_memory()
        st = self._fn("clf")(st, main, cr)
        if first:
            ops.convert_to_numpy(st["acc"])
            release_memory()
        return st

    def discriminator_step(self, st: State, cr: Batch) -> State:
        """One discriminator step alone (reference mode; used by the tests)."""
        return self._fn("disc")(st, cr)

    def classifier_step(self, st: State, main: Batch, cr: Batch) -> State:
        """One classifier step alone (reference mode; used by the tests)."""
        return self._fn("clf")(st, main, cr)

    # -- inference (validation) --

    def _predict(self, st: State, x):
        p, _ = self.classifier.stateless_call(st["clf_tv"], st["clf_ntv"], x, training=False)
        return p

    def _predict_adv(self, st: State, p):
        q, _ = self.adversary.stateless_call(st["adv_tv"], st["adv_ntv"], p, training=False)
        return q

    def predict(self, st: State, x: list) -> np.ndarray:
        """Classifier scores in inference mode (dropout off)."""
        return _chunked(lambda xs: self._fn("predict")(st, xs), list(x), self.cfg.eval_batch_size)

    def predict_adversary(self, st: State, p) -> np.ndarray:
        """Adversary p(data) in inference mode (BatchNorm on its moving statistics)."""
        return _chunked(lambda xs: self._fn("predict_adv")(st, xs[0]), [np.asarray(p)], self.cfg.eval_batch_size)


def _checked_twin(classifier: keras.Model, twin: keras.Model) -> keras.Model:
    """``twin`` after checking that its variables match ``classifier``'s one for one.

    Weights by path and shape; the dropout layers' seed-generator states (named from a global
    counter) by shape and dtype.
    """
    for kind in ("trainable_variables", "non_trainable_variables"):
        a, b = getattr(classifier, kind), getattr(twin, kind)

        def key(v, kind=kind):
            return (v.path if kind == "trainable_variables" else "", tuple(v.shape), str(v.dtype))

        if [key(v) for v in a] != [key(v) for v in b]:
            raise ValueError(f"training twin of {classifier.name!r} has different {kind}")
    return twin


def _chunked(fn: Callable, xs: list, size: int) -> np.ndarray:
    """``fn`` on chunks of exactly ``size`` rows (the last one zero-padded), results concatenated.

    One input shape, hence one compilation (JAX compiles per shape), whatever the batch sizes of a
    validation pass. Rows are independent in inference mode, so the padding changes nothing.
    """
    n = int(np.shape(xs[0])[0])
    out = []
    for a in range(0, max(n, 1), size):
        part = [np.asarray(x[a : a + size]) for x in xs]
        k = int(part[0].shape[0])
        if k < size:
            part = [np.concatenate([x, np.zeros((size - k, *x.shape[1:]), x.dtype)]) for x in part]
        out.append(np.asarray(ops.convert_to_numpy(fn(part)))[:k])
    return np.concatenate(out)


def epoch_metrics(acc: np.ndarray, lam: float) -> dict[str, float]:
    """Epoch means from the accumulators, under the reference's history names (reference §5.3)."""
    a = {n: float(v) for n, v in zip(ACC_NAMES, np.asarray(acc, dtype=np.float64), strict=True)}

    def div(x: str, y: str) -> float:
        return a[x] / a[y] if a[y] > 0 else float("nan")

    ce, bce = div("clf_ce_sum", "clf_n"), div("clf_bce_sum", "clf_cr_n")
    return {
        "original_lossf": ce,
        "original_acc": div("clf_correct", "clf_n"),
        "original_adv_lossf": bce,
        "original_adv_acc": div("clf_cr_correct", "clf_cr_n"),
        "original_loss": ce - lam * bce + div("clf_reg_sum", "clf_batches"),
        "adv_loss": div("disc_bce_sum", "disc_n"),
        "adv_acc": div("disc_correct", "disc_n"),
    }
