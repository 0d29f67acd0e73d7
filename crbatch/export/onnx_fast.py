"""A faster, equivalent onnxruntime graph of an exported classifier, for scoring.

tf2onnx writes each Keras ``Conv1D(kernel_size=1)`` as a 2-D ``Conv`` on an ``(N, C, 1, L)``
tensor between an ``Unsqueeze`` and a ``Squeeze``. onnxruntime runs a 1×1 ``Conv`` as one small
GEMM per jet, plus — at its highest optimisation level — a reordering into and out of its blocked
layout around each ``Conv``: on the reference network that was half of the prediction time (bench/
RESULTS.md, "Scoring"). The same arithmetic is one ``MatMul`` over all jets and positions when the
tensor is channels-last. :func:`pointwise_convs_as_matmuls` rewrites the graph that way in memory:

    Conv(x4) → Squeeze(axis 2)   ⇒   Squeeze(x4, axis 2) → Transpose → MatMul(Wᵀ) → Add(b) → Transpose

then removes the ``Unsqueeze``/``Squeeze`` and ``Transpose``/``Relu``/``Transpose`` pairs it leaves
between consecutive convolutions. The file on disk (what Athena runs, and what the scored file's
``file_sha256`` names) is not changed; the scores agree with the original graph's to float32
rounding (tests/test_score.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SWAP = [0, 2, 1]  # (N, C, L) ↔ (N, L, C)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _const(inits: dict[str, Any], name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _is_pointwise(node: Any, inits: dict[str, Any]) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    w = inits[node.input[1]]
    a = _attrs(node)
    return (
        len(w.dims) == 4
        and tuple(w.dims[2:]) == (1, 1)
        and a.get("group", 1) == 1
        and all(s == 1 for s in a.get("strides", [1]))
        and all(p == 0 for p in a.get("pads", [0]))
        and all(d == 1 for d in a.get("dilations", [1]))
        and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
    )


def _squeezes_axis(node: Any, axis: int, inits: dict[str, Any]) -> bool:
    if len(node.input) < 2:
        return False
    axes = _const(inits, node.input[1])
    return axes is not None and [int(v) for v in np.ravel(axes)] == [axis]


def pointwise_convs_as_matmuls(proto: Any) -> int:
    """Rewrite ``proto`` (an ``onnx.ModelProto``, opset ≥ 13) in place; the number of ``Conv``s replaced."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    axes2 = "crbatch_fast__axes2"
    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes2))
    inits[axes2] = g.initializer[-1]

    out: list[Any] = []
    dropped: set[int] = set()
    replaced = 0
    for n in g.node:
        if id(n) in dropped:
            continue
        users = consumers.get(n.output[0], [])
        if not (_is_pointwise(n, inits) and len(users) == 1 and users[0].op_type == "Squeeze"
                and _squeezes_axis(users[0], 2, inits)):  # fmt: skip
            out.append(n)
            continue
        sq = users[0]
        dropped.add(id(sq))
        w = numpy_helper.to_array(inits[n.input[1]])
        base = f"crbatch_fast__{replaced}"
        wt = numpy_helper.from_array(np.ascontiguousarray(w[:, :, 0, 0].T), f"{base}_wT")
        g.initializer.append(wt)
        out += [
            helper.make_node("Squeeze", [n.input[0], axes2], [f"{base}_ncl"]),
            helper.make_node("Transpose", [f"{base}_ncl"], [f"{base}_nlc"], perm=_SWAP),
            helper.make_node("MatMul", [f"{base}_nlc", wt.name], [f"{base}_mm"]),
        ]
        last = f"{base}_mm"
        if len(n.input) > 2 and n.input[2]:
            out.append(helper.make_node("Add", [last, n.input[2]], [f"{base}_add"]))
            last = f"{base}_add"
        out.append(helper.make_node("Transpose", [last], [sq.output[0]], perm=_SWAP))
        replaced += 1
    del g.node[:]
    g.node.extend(out)
    if replaced:
        _cancel_pairs(proto)
    return replaced


def _cancel_pairs(proto: Any) -> None:
    """Remove ``Unsqueeze(axis 2) → Squeeze(axis 2)`` and ``Transpose(swap) → Relu → Transpose(swap)``
    (each intermediate used once, not a graph output): between two rewritten convolutions."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    changed = True
    while changed:
        changed = False
        producer = {o: n for n in g.node for o in n.output}
        uses: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                uses[i] = uses.get(i, 0) + 1
        rename: dict[str, str] = {}
        drop: set[int] = set()
        for n in g.node:
            src = producer.get(n.input[0]) if n.input else None
            if (
                src is None
                or uses.get(n.input[0], 0) != 1
                or n.input[0] in graph_outputs
                or n.output[0] in graph_outputs
            ):
                continue
            if (n.op_type == "Squeeze" and src.op_type == "Unsqueeze" and _squeezes_axis(n, 2, inits)
                    and _squeezes_axis(src, 2, inits)):  # fmt: skip
                rename[n.output[0]] = src.input[0]
                drop |= {id(n), id(src)}
            elif n.op_type == "Transpose" and _attrs(n).get("perm") == _SWAP and src.op_type == "Relu":
                first = producer.get(src.input[0])
                if (first is not None and first.op_type == "Transpose" and _attrs(first).get("perm") == _SWAP
                        and uses.get(src.input[0], 0) == 1 and src.input[0] not in graph_outputs):  # fmt: skip
                    src.input[0] = first.input[0]
                    rename[n.output[0]] = src.output[0]
                    drop |= {id(n), id(first)}
            if drop:
                break  # one rewrite at a time: the maps above are then still right
        if drop:
            keep = [n for n in g.node if id(n) not in drop]
            for n in keep:
                n.input[:] = [rename.get(i, i) for i in n.input]
            del g.node[:]
            g.node.extend(keep)
            changed = True
