"""ONNX export (the route into Athena's ``AthOnnxRuntimeSvc``) through Keras' own ``model.export``.

Keras writes the graph (TensorFlow backend: through ``tf2onnx``; JAX: through ``jax2onnx``, not
installed by default, so that ``--format onnx`` on JAX stops with exit 3 and says so); crbatch then renames the output tensor to the Keras output name (``main_output``,
instead of tf2onnx's ``Identity:0``), names every batch dimension ``N``, stores the preprocessing
description as ``metadata_props`` and checks onnxruntime against Keras before the file appears.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

BATCH_DIM = "N"


def require_backend() -> str:
    """The Keras backend, if ONNX export and its check can run on it; else exit 3 with what is missing."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tf2onnx  # noqa: F401
        elif backend == "jax":
            import jax2onnx  # noqa: F401
        elif backend == "torch":
            import torch.onnx  # noqa: F401
        else:
            raise ImportError(f"Keras has no ONNX export on the {backend} backend")
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export is not possible on the Keras {backend} backend here ({e}); Keras needs tf2onnx "
            "(TensorFlow backend) or jax2onnx (JAX), and the check needs onnx and onnxruntime: install them, run "
            "with KERAS_BACKEND=tensorflow, or use --format fdeep"
        ) from e
    return backend


def _rename_value(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in [*graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _tidy(proto: Any, output_names: Sequence[str]) -> None:
    """Readable interface: Keras output names, one symbolic batch dimension ``N``."""
    graph = proto.graph
    for vi, name in zip(graph.output, output_names, strict=True):
        if vi.name != name:
            _rename_value(graph, vi.name, name)
    for vi in [*graph.input, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_param = BATCH_DIM


def session(data: bytes) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run(sess: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Outputs of an onnxruntime session on the model inputs, matched by position."""
    feed = {i.name: np.asarray(x, np.float32) for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return np.asarray(sess.run(None, feed)[0])


def build(model: Any, inputs: Sequence[np.ndarray]) -> tuple[Any, float]:
    """The ONNX ``ModelProto`` of a Keras model (tidied, checked) and the largest absolute difference of
    onnxruntime against ``model.predict`` on ``inputs``."""
    backend = require_backend()
    import onnx

    expected = np.asarray(model.predict(list(inputs), verbose=0))
    model([np.asarray(x[:1]) for x in inputs], training=False)  # Keras exports only models that were __call__ed
    with tempfile.TemporaryDirectory(prefix="crbatch-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():  # Keras' tf2onnx shim probes np.object: a FutureWarning, not ours
                warnings.simplefilter("ignore", FutureWarning)
                model.export(str(path), format="onnx", verbose=False)
        except Exception as e:  # tf2onnx/jax2onnx raise anything; the message is what helps
            raise ConfigError(f"Keras could not export the model to ONNX on the {backend} backend: {e}") from e
        proto = onnx.load(str(path))
    _tidy(proto, list(model.output_names))
    proto.doc_string = "CalRatio per-jet classifier, exported by crbatch; preprocessing in metadata_props"
    onnx.checker.check_model(proto)
    got = run(session(proto.SerializeToString()), inputs)
    if got.shape != expected.shape:
        raise ValueError(f"onnxruntime output shape {got.shape} differs from Keras' {expected.shape}")
    return proto, float(np.max(np.abs(got - expected)))


def with_metadata(proto: Any, metadata: Mapping[str, str]) -> bytes:
    """``proto`` serialised with ``metadata`` as its ``metadata_props`` (replacing any present)."""
    del proto.metadata_props[:]
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString()


def read_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (for checks and downstream tools)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
