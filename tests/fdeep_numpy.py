"""A pure-NumPy evaluator of a frugally-deep JSON model: an independent check of crbatch's writer.

It knows nothing of Keras or of crbatch.export: it parses ``architecture`` (Keras 3
``model.to_json()``), decodes the base64 float32 arrays of ``trainable_params`` in the documented
frugally-deep layouts (field-conventions.md), and runs the functional graph in topological order
with textbook formulas (LSTM: Keras gate order i, f, c, o; zero initial state). Layers: InputLayer,
Conv1D (stride 1, dilation 1, "valid" padding, any kernel size), Dense, LSTM, Dropout (identity),
GlobalAveragePooling1D, Concatenate, BatchNormalization, Activation, Flatten. It also recomputes the
``hash`` from the decoded arrays and re-runs the embedded ``tests`` vector, as frugally-deep does
on load.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def decode(chunks: Sequence[str]) -> np.ndarray:
    return np.frombuffer(base64.b64decode("".join(chunks)), dtype="<f4").astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "softmax": _softmax,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "swish": lambda x: x * _sigmoid(x),
}


def _act(name: str | None):
    return ACTIVATIONS[name or "linear"]


class FdeepModel:
    """Parsed frugally-deep document; ``predict(list of (N, ...) arrays) -> list of outputs``."""

    def __init__(self, doc: Mapping[str, Any]):
        if doc.get("image_data_format") != "channels_last":
            raise ValueError("only channels_last")
        self.doc = doc
        cfg = doc["architecture"]["config"]
        self.layers = cfg["layers"]
        self.by_name = {ly["name"]: ly for ly in self.layers}
        if len(self.by_name) != len(self.layers):
            raise ValueError("duplicate layer names")
        self.input_names = [x[0] for x in cfg["input_layers"]]
        outs = cfg["output_layers"]
        self.output_names = [outs[0]] if isinstance(outs[0], str) else [o[0] for o in outs]
        self.params = {
            name: {k: decode(v) for k, v in arrays.items()} for name, arrays in doc["trainable_params"].items()
        }

    # -- graph --
    @staticmethod
    def _sources(layer: Mapping[str, Any]) -> list[str]:
        nodes = layer.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise ValueError(f"{layer['name']}: shared layers are not supported here")
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, Mapping):
                if obj.get("class_name") == "__keras_tensor__":
                    hist = obj["config"]["keras_history"]
                    if hist[1] != 0 or hist[2] != 0:
                        raise ValueError(f"{layer['name']}: multi-node/multi-output history {hist}")
                    found.append(hist[0])
                    return
                for v in obj.values():
                    walk(v)
            elif isinstance(obj, list):
                for v in obj:
                    walk(v)

        for node in nodes:
            if node.get("kwargs", {}).get("training") is True:
                raise ValueError(f"{layer['name']} is called with training=True")
            walk(node.get("args", []))
        return found

    def predict(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        values: dict[str, np.ndarray] = {
            n: np.asarray(x, np.float32) for n, x in zip(self.input_names, inputs, strict=True)
        }
        pending = [ly for ly in self.layers if ly["name"] not in values]
        while pending:
            progressed = False
            for ly in list(pending):
                srcs = self._sources(ly)
                if all(s in values for s in srcs):
                    values[ly["name"]] = self._apply(ly, [values[s] for s in srcs])
                    pending.remove(ly)
                    progressed = True
            if not progressed:
                raise ValueError(f"graph has a cycle or a dangling input: {[ly['name'] for ly in pending]}")
        return [values[n] for n in self.output_names]

    # -- layers --
    def _apply(self, ly: Mapping[str, Any], xs: list[np.ndarray]) -> np.ndarray:
        kind, c, p = ly["class_name"], ly["config"], self.params.get(ly["name"], {})
        if kind in ("Dropout", "InputLayer"):
            return xs[0]
        if kind == "Concatenate":
            return np.concatenate(xs, axis=c.get("axis", -1))
        if kind == "Flatten":
            return xs[0].reshape(len(xs[0]), -1)
        if kind == "GlobalAveragePooling1D":
            return xs[0].mean(axis=1, keepdims=bool(c.get("keepdims", False)))
        if kind == "Activation":
            return _act(c["activation"])(xs[0])
        if kind == "Dense":
            x = xs[0]
            w = p["weights"].reshape(x.shape[-1], c["units"])
            y = x @ w + (p["bias"] if c.get("use_bias", True) else 0.0)
            return _act(c.get("activation"))(y).astype(np.float32)
        if kind == "Conv1D":
            return self._conv1d(xs[0], c, p)
        if kind == "LSTM":
            return self._lstm(xs[0], c, p)
        if kind == "BatchNormalization":
            x = xs[0]
            y = (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + c.get("epsilon", 1e-3))
            if c.get("scale", True):
                y = y * p["gamma"]
            if c.get("center", True):
                y = y + p["beta"]
            return y.astype(np.float32)
        raise ValueError(f"layer {ly['name']}: {kind} not supported by this evaluator")

    @staticmethod
    def _conv1d(x: np.ndarray, c: Mapping[str, Any], p: Mapping[str, np.ndarray]) -> np.ndarray:
        (k,) = c["kernel_size"]
        if (
            tuple(c.get("strides", [1])) != (1,)
            or tuple(c.get("dilation_rate", [1])) != (1,)
            or c["padding"] != "valid"
        ):
            raise ValueError("Conv1D: only stride 1, dilation 1, valid padding")
        n, steps, fin = x.shape
        fout = c["filters"]
        w = p["weights"].reshape(fout, k, fin)  # frugally-deep layout (out, k, in)
        out_steps = steps - k + 1
        y = np.zeros((n, out_steps, fout), np.float32)
        for j in range(k):
            y += x[:, j : j + out_steps, :] @ w[:, j, :].T
        if c.get("use_bias", True):
            y += p["bias"]
        return _act(c.get("activation"))(y).astype(np.float32)

    @staticmethod
    def _lstm(x: np.ndarray, c: Mapping[str, Any], p: Mapping[str, np.ndarray]) -> np.ndarray:
        for flag in ("stateful", "go_backwards", "unroll", "return_state"):
            if c.get(flag):
                raise ValueError(f"LSTM {flag} not supported")
        u = c["units"]
        n, steps, fin = x.shape
        wk = p["weights"].reshape(fin, 4 * u)
        wr = p["recurrent_weights"].reshape(u, 4 * u)
        b = p["bias"] if c.get("use_bias", True) else np.zeros(4 * u, np.float32)
        act, rec = _act(c.get("activation", "tanh")), _act(c.get("recurrent_activation", "sigmoid"))
        h = np.zeros((n, u), np.float32)
        cs = np.zeros((n, u), np.float32)
        seq = []
        for t in range(steps):
            z = x[:, t, :] @ wk + h @ wr + b
            i, f, g, o = z[:, :u], z[:, u : 2 * u], z[:, 2 * u : 3 * u], z[:, 3 * u :]
            cs = rec(f) * cs + rec(i) * act(g)
            h = (rec(o) * act(cs)).astype(np.float32)
            seq.append(h)
        return np.stack(seq, axis=1) if c.get("return_sequences") else h

    # -- checks frugally-deep does on load --
    def keras_weights(self, ly: Mapping[str, Any]) -> list[np.ndarray]:
        """The layer's arrays back in Keras ``get_weights()`` order and shapes (for the hash)."""
        kind, c, p = ly["class_name"], ly["config"], self.params.get(ly["name"], {})
        if kind == "Conv1D":
            fout, (k,) = c["filters"], c["kernel_size"]
            fin = p["weights"].size // (fout * k)
            w = [np.moveaxis(p["weights"].reshape(fout, k, fin), 0, 2)]  # (out, k, in) → (k, in, out)
            return w + ([p["bias"]] if "bias" in p else [])
        if kind == "Dense":
            return [p["weights"].reshape(-1, c["units"])] + ([p["bias"]] if "bias" in p else [])
        if kind == "LSTM":
            u = c["units"]
            out = [p["weights"].reshape(-1, 4 * u), p["recurrent_weights"].reshape(u, 4 * u)]
            return out + ([p["bias"]] if "bias" in p else [])
        if kind == "BatchNormalization":  # Keras order: gamma, beta, moving mean, moving variance
            return [p[k] for k in ("gamma", "beta", "moving_mean", "moving_variance") if k in p]
        return []

    def hash(self) -> str:
        h = hashlib.sha256()
        for ly in self.layers:
            for w in self.keras_weights(ly):
                h.update(np.ascontiguousarray(w, dtype="<f4").tobytes())
            h.update(ly["name"].encode("ascii"))
        return h.hexdigest()

    def run_tests(self) -> float:
        """Max absolute difference of the embedded test outputs against this evaluator."""
        worst = 0.0
        for test in self.doc.get("tests", []):
            xs = [decode(t["values"]).reshape([1, *t["shape"]]) for t in test["inputs"]]
            for t, y in zip(test["outputs"], self.predict(xs), strict=True):
                worst = max(worst, float(np.max(np.abs(decode(t["values"]).reshape([1, *t["shape"]]) - y))))
        return worst
