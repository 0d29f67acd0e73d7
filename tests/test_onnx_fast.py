"""crbatch.export.onnx_fast: the scoring graph's 1×1 convolutions as MatMuls give the same outputs."""

from __future__ import annotations

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from crbatch.export.onnx_fast import pointwise_convs_as_matmuls  # noqa: E402


def tf2onnx_like(kernels: list[int], rng: np.random.Generator, c_in: int = 5, length: int = 7) -> onnx.ModelProto:
    """Conv1D layers as tf2onnx writes them: (N, L, C) → Unsqueeze(1) → Transpose → [Conv 2-D → Squeeze(2) →
    Relu → Unsqueeze(2)]… → Transpose to (L, N, C), the layout an LSTM takes."""
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2")]  # fmt: skip
    nodes = [helper.make_node("Unsqueeze", ["x", "ax1"], ["u0"]),
             helper.make_node("Transpose", ["u0"], ["t0"], perm=[0, 3, 1, 2])]  # fmt: skip
    cur, c = "t0", c_in
    for i, k in enumerate(kernels):
        c_out = 4 + 3 * i
        inits += [numpy_helper.from_array(rng.standard_normal((c_out, c, 1, k)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), f"b{i}")]  # fmt: skip
        pads = [0, (k - 1) // 2, 0, k // 2]
        nodes += [helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[1, k], pads=pads),
                  helper.make_node("Squeeze", [f"c{i}", "ax2"], [f"s{i}"]),
                  helper.make_node("Relu", [f"s{i}"], [f"r{i}"])]  # fmt: skip
        if i + 1 < len(kernels):
            nodes.append(helper.make_node("Unsqueeze", [f"r{i}", "ax2"], [f"u{i + 1}"]))
            cur = f"u{i + 1}"
        c = c_out
    nodes.append(helper.make_node("Transpose", [f"r{len(kernels) - 1}"], ["y"], perm=[2, 0, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", length, c_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [length, "N", None])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]


def test_pointwise_convs_become_matmuls_with_the_same_outputs():
    rng = np.random.default_rng(1)
    model = tf2onnx_like([1, 1, 1], rng)
    x = rng.standard_normal((33, 7, 5)).astype(np.float32)
    before = outputs(model, x)
    fast = onnx.ModelProto()
    fast.CopyFrom(model)
    assert pointwise_convs_as_matmuls(fast) == 3
    onnx.checker.check_model(fast)
    ops = collections.Counter(n.op_type for n in fast.graph.node)
    assert ops["Conv"] == 0 and ops["MatMul"] == 3
    # Between consecutive convolutions nothing is left but the ReLU: the graph's own two Transposes and
    # one into and one out of the channels-last chain (onnxruntime merges each with its neighbour).
    assert ops["Transpose"] == 4 and ops["Unsqueeze"] == 1
    after = outputs(fast, x)
    assert after.shape == before.shape == (7, 33, 10)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_wider_kernels_are_left_alone():
    rng = np.random.default_rng(2)
    model = tf2onnx_like([1, 3, 1], rng)
    x = rng.standard_normal((9, 7, 5)).astype(np.float32)
    before = outputs(model, x)
    assert pointwise_convs_as_matmuls(model) == 2
    assert collections.Counter(n.op_type for n in model.graph.node)["Conv"] == 1
    np.testing.assert_allclose(outputs(model, x), before, rtol=1e-5, atol=1e-5)


def test_a_graph_without_pointwise_convs_is_unchanged():
    model = tf2onnx_like([3], np.random.default_rng(3))
    nodes = [n.SerializeToString() for n in model.graph.node]
    assert pointwise_convs_as_matmuls(model) == 0
    assert [n.SerializeToString() for n in model.graph.node] == nodes
