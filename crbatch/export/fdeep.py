"""frugally-deep JSON writer (the C++ inference library of DiVertAnalysis).

The format is the one ``frugally-deep/keras_export/convert_model.py`` writes, as documented in
field-conventions.md ("Model export"); crbatch writes it itself so that export needs neither a
clone of frugally-deep nor TensorFlow-only code. Top-level keys, exactly:

* ``architecture``: ``json.loads(model.to_json())`` (Keras 3 functional config);
* ``image_data_format``: ``"channels_last"``;
* ``input_shapes`` / ``output_shapes``: per tensor, without the batch dimension;
* ``tests``: one entry ``{"inputs": [...], "outputs": [...]}``, each tensor ``{"shape", "values"}``
  (batch dimension dropped: one jet); frugally-deep runs it when it loads the model;
* ``trainable_params``: layer name → arrays (below);
* ``hash``: SHA-256 over, for each layer in ``model.layers`` order, the raw bytes of each of its
  ``get_weights()`` arrays followed by the layer name in ASCII.

Float arrays are float32 little-endian, base64, cut into 1024-character strings. Per layer:
Dense ``weights`` = kernel (in, out) row-major, ``bias``; Conv1D ``weights`` = kernel (k, in, out)
moved to (out, k, in), ``bias``; LSTM ``weights`` (in, 4u), ``recurrent_weights`` (u, 4u), ``bias``
(4u), Keras gate order i, f, c, o; BatchNormalization ``moving_mean``, ``moving_variance`` and
``beta``/``gamma`` when it centers/scales. Weightless layers have no entry.

One more top-level key, ``crbatch``, carries the provenance (crbatch version, training config,
dataset build id, chosen epoch and why) and the per-variable preprocessing, the same as the
sidecar's: frugally-deep reads its keys by name (``json_data["architecture"]``, ...) and ignores
others, so the file stays loadable by every version.

Only the layer types the CalRatio classifier can contain are accepted (:data:`SUPPORTED`); anything
else, a nested model, a non-ASCII or duplicate name, a stateful/unrolled/reversed LSTM or a layer
called with ``training=True`` is refused with :class:`~crbatch.errors.InputSchema` (exit 12)
before anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputSchema

CHUNK = 1024  # characters per base64 string (frugally-deep's split_every(1024, ...))
SUPPORTED = frozenset({
    "InputLayer", "Conv1D", "Dense", "LSTM", "Dropout", "Concatenate", "GlobalAveragePooling1D",
    "BatchNormalization", "Activation", "Flatten",
})  # fmt: skip
ACTIVATIONS = frozenset({"linear", "relu", "tanh", "sigmoid", "softmax", "elu", "selu", "softplus", "swish", "gelu"})
KEYS = ("architecture", "image_data_format", "input_shapes", "output_shapes", "tests", "trainable_params", "hash")
EXTRA_KEY = "crbatch"  # provenance and preprocessing (not read by frugally-deep)


# --- float encoding -----------------------------------------------------------------------------------


def encode_floats(arr: Any) -> list[str]:
    """float32 little-endian bytes of ``arr`` (C order), base64, in strings of 1024 characters."""
    raw = np.ascontiguousarray(np.asarray(arr, dtype="<f4")).tobytes()
    text = base64.b64encode(raw).decode("ascii")
    return [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]


def decode_floats(chunks: Sequence[str]) -> np.ndarray:
    """Inverse of :func:`encode_floats` (flat float32 array)."""
    return np.frombuffer(base64.b64decode("".join(chunks)), dtype="<f4").copy()


def show_tensor(x: np.ndarray) -> dict[str, Any]:
    """One tensor of the ``tests`` entry: ``x`` has a batch dimension of 1, which the shape drops."""
    x = np.asarray(x, np.float32)
    if x.shape[0] != 1:
        raise ValueError(f"a test tensor holds one jet, got batch {x.shape[0]}")
    return {"shape": [int(d) for d in x.shape[1:]], "values": encode_floats(x)}


# --- model checks -------------------------------------------------------------------------------------


def _np(v: Any) -> np.ndarray:
    """A Keras variable's value as float32 NumPy (``Variable.numpy()`` works on every backend)."""
    return np.asarray(v.numpy(), dtype=np.float32)


def _inbound_kwargs(arch: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for layer in arch["config"]["layers"]:
        for node in layer.get("inbound_nodes") or []:
            if isinstance(node, Mapping):  # Keras 3 node: {"args": [...], "kwargs": {...}}
                yield layer["name"], node.get("kwargs") or {}


def check_exportable(model: Any) -> dict[str, Any]:
    """Refuse (exit 12) a model frugally-deep (or this writer) cannot take; returns its architecture JSON."""
    if type(model).__name__ != "Functional":
        raise InputSchema(f"model {model.name!r} is a {type(model).__name__}: the fdeep export takes functional models")
    problems: list[str] = []
    seen: set[str] = set()
    for layer in model.layers:
        kind, name = type(layer).__name__, layer.name
        if not name.isascii():
            problems.append(f"layer name {name!r} is not ASCII")
        if name in seen:
            problems.append(f"duplicate layer name {name!r}")
        seen.add(name)
        if kind not in SUPPORTED:
            why = "a nested model (flatten it)" if hasattr(layer, "layers") else "not a layer type this writer handles"
            problems.append(f"layer {name!r} ({kind}): {why}")
            continue
        policy = getattr(getattr(layer, "dtype_policy", None), "name", "float32")
        if policy != "float32":
            problems.append(f"layer {name!r}: dtype policy {policy!r} (frugally-deep computes in float32)")
        act = getattr(layer, "activation", None)
        if act is not None and getattr(act, "__name__", str(act)) not in ACTIVATIONS:
            problems.append(f"layer {name!r}: activation {getattr(act, '__name__', act)!r} not supported")
        if kind == "LSTM":
            for flag in ("stateful", "unroll", "go_backwards", "return_state"):
                if getattr(layer, flag, False):
                    problems.append(f"LSTM {name!r} is {flag.replace('_', ' ')}: frugally-deep cannot run it")
            rec = layer.cell.recurrent_activation.__name__
            if rec not in ACTIVATIONS:
                problems.append(f"LSTM {name!r}: recurrent activation {rec!r} not supported")
        if kind == "Conv1D" and (layer.data_format != "channels_last" or layer.groups != 1):
            problems.append(f"Conv1D {name!r}: needs channels_last and groups=1")
    arch = json.loads(model.to_json())
    for name, kw in _inbound_kwargs(arch):
        if kw.get("training") is True:
            problems.append(f"layer {name!r} is called with training=True (frugally-deep runs inference only)")
    if problems:
        raise InputSchema("cannot export to frugally-deep: " + "; ".join(problems))
    return arch


# --- parameters and hash --------------------------------------------------------------------------------


def layer_arrays(layer: Any) -> dict[str, np.ndarray] | None:
    """The ``trainable_params`` arrays of one layer in frugally-deep's layout (None: no entry)."""
    kind = type(layer).__name__
    out: dict[str, np.ndarray] = {}
    if kind == "Dense":
        out["weights"] = _np(layer.kernel)
        if layer.use_bias:
            out["bias"] = _np(layer.bias)
    elif kind == "Conv1D":
        # (k, in, out) → (out, k, in): frugally-deep stores one filter after the other.
        out["weights"] = np.moveaxis(_np(layer.kernel), [0, 1, 2], [1, 2, 0])
        if layer.use_bias:
            out["bias"] = _np(layer.bias)
    elif kind == "LSTM":
        cell = layer.cell
        out["weights"] = _np(cell.kernel)
        out["recurrent_weights"] = _np(cell.recurrent_kernel)
        if cell.use_bias:
            out["bias"] = _np(cell.bias)
    elif kind == "BatchNormalization":
        out["moving_mean"] = _np(layer.moving_mean)
        out["moving_variance"] = _np(layer.moving_variance)
        if layer.center:
            out["beta"] = _np(layer.beta)
        if layer.scale:
            out["gamma"] = _np(layer.gamma)
    return out or None


def model_hash(model: Any) -> str:
    """frugally-deep's ``calculate_hash``: weights bytes then the layer name, layer by layer."""
    h = hashlib.sha256()
    for layer in model.layers:
        for w in layer.get_weights():
            h.update(np.ascontiguousarray(w).tobytes())
        h.update(layer.name.encode("ascii"))
    return h.hexdigest()


def _shape(t: Any) -> list[int]:
    dims = list(t.shape)[1:]
    if any(d is None for d in dims):
        raise InputSchema(f"tensor {getattr(t, 'name', t)} has a variable dimension {dims}: fixed shapes needed")
    return [int(d) for d in dims]


# --- document -----------------------------------------------------------------------------------------------


def to_fdeep(model: Any, test_inputs: Sequence[np.ndarray]) -> dict[str, Any]:
    """The frugally-deep document of ``model``; ``test_inputs``: one jet per input (batch 1)."""
    arch = check_exportable(model)
    xs = [np.asarray(x, np.float32) for x in test_inputs]
    ys = model.predict(xs, verbose=0)
    ys = ys if isinstance(ys, list) else [ys]
    params = {}
    for layer in model.layers:
        arrays = layer_arrays(layer)
        if arrays:
            params[layer.name] = {k: encode_floats(v) for k, v in arrays.items()}
    return {
        "architecture": arch,
        "image_data_format": "channels_last",
        "input_shapes": [_shape(t) for t in model.inputs],
        "output_shapes": [_shape(t) for t in model.outputs],
        "tests": [{"inputs": [show_tensor(x) for x in xs], "outputs": [show_tensor(np.asarray(y)) for y in ys]}],
        "trainable_params": params,
        "hash": model_hash(model),
    }


def dumps(doc: Mapping[str, Any]) -> str:
    """Serialised like convert_model.py (sorted keys; NaN refused: the C++ JSON parser rejects it)."""
    return json.dumps(doc, allow_nan=False, indent=1, sort_keys=True) + "\n"


def verify(doc: Mapping[str, Any], model: Any) -> float:
    """Check a (re-read) document against ``model``: every array decodes back exactly to the layer's
    weights, the hash matches, and Keras on the decoded test inputs reproduces the stored outputs.
    Returns the largest absolute difference of the test outputs; raises ``ValueError`` on a mismatch."""
    if set(doc) - {EXTRA_KEY} != set(KEYS):
        raise ValueError(f"fdeep JSON keys {sorted(doc)} differ from {sorted(KEYS)} (+ {EXTRA_KEY})")
    if doc["hash"] != model_hash(model):
        raise ValueError("fdeep JSON hash differs from the model's")
    for layer in model.layers:
        want = layer_arrays(layer) or {}
        got = doc["trainable_params"].get(layer.name, {})
        if set(want) != set(got):
            raise ValueError(f"layer {layer.name}: arrays {sorted(got)} in the JSON, expected {sorted(want)}")
        for k, arr in want.items():
            dec = decode_floats(got[k])
            if dec.shape != (arr.size,) or not np.array_equal(dec, arr.ravel()):
                raise ValueError(f"layer {layer.name}: {k} does not decode back to the model's weights")
    test = doc["tests"][0]
    xs = [decode_floats(t["values"]).reshape([1, *t["shape"]]) for t in test["inputs"]]
    ys = model.predict(xs, verbose=0)
    ys = ys if isinstance(ys, list) else [ys]
    diff = 0.0
    for t, y in zip(test["outputs"], ys, strict=True):
        stored = decode_floats(t["values"]).reshape([1, *t["shape"]])
        diff = max(diff, float(np.max(np.abs(stored - np.asarray(y, np.float32)))))
    return diff
