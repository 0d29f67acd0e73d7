"""ONNX with the preprocessing inside the graph: raw DiVertAnalysis quantities in, probabilities out.

The classifier graph (:mod:`.onnx`, inputs already scaled) gets a preprocessing front end built
from :class:`~crbatch.export.preprocess.Preprocessing` — the same per-variable operations the
sidecar lists — and one output per class, as ATLAS flavour tagging's ONNX exports do:

* inputs, float32, batch dimension ``N``: ``clusters`` (N, 30, 12), ``tracks`` (N, 20, 10),
  ``msegs`` (N, 30, 6) with the **raw** values in the network's feature order (GeV for jet and track
  pT, MeV for cluster pT and energies, mm, ns; coordinates as in docs/conversion.md), each with a
  ``<name>_valid`` (N, slots) mask (1 = a filled slot, 0 = empty; filled slots first), ``jet`` (N, 3)
  raw (pT [GeV], η, φ); a parametrised model also ``mass_hypothesis`` (N, k) in GeV (mH before mS);
* outputs, (N,) each: ``<prefix>_pqcd``, ``<prefix>_psig``, ``<prefix>_pbib`` (softmax order).

The graph computes the η-flip sums in float64, like crbatch.scaling, so the flip decision is the
same for every jet. It is checked against Keras on inputs scaled by crbatch.scaling (the training
path) before it is written (crbatch.export).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import schema
from .preprocess import InputOps, Preprocessing

MIN_OPSET = 13  # axes of ReduceSum/Unsqueeze as inputs
OUTPUT_CLASSES = {schema.Label.QCD: "pqcd", schema.Label.SIGNAL: "psig", schema.Label.BIB: "pbib"}
DEFAULT_PREFIX = "calratio"


def mask_name(name: str) -> str:
    return f"{name}_valid"


def output_names(prefix: str) -> list[str]:
    return [f"{prefix}_{OUTPUT_CLASSES[lab]}" for lab in schema.MODEL_OUTPUTS]


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"crbatch_pre/{stem}_{self._n}"

    def const(self, stem: str, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def op(
        self, kind: str, inputs: Sequence[str], stem: str | None = None, out: str | None = None, **attrs: Any
    ) -> str:
        from onnx import helper

        o = out or self.name(stem or kind.lower())
        self.nodes.append(helper.make_node(kind, list(inputs), [o], name=self.name(f"n_{kind}"), **attrs))
        return o


def _column(b: _Builder, x: str, j: int, axis: int) -> str:
    return b.op("Gather", [x, b.const("idx", [j], np.int64)], "col", axis=axis)


def _feature(b: _Builder, ops: InputOps, x: str, cols: list[str], j: int, axis: int) -> str:
    """Feature ``j`` after its own op (not the flip); ``cols``: raw columns (N, S, 1)."""
    f = ops.features[j]
    c = cols[j]
    if f.op == "affine":
        return b.op("Div", [b.op("Sub", [c, b.const("sub", f.subtract)]), b.const("div", f.divide)], "affine")
    if f.op == "fraction":
        idx = b.const("den", [ops.index(d) for d in f.denominator], np.int64)
        total = b.op("ReduceSum", [b.op("Gather", [x, idx], axis=axis), b.const("ax", [axis], np.int64)], keepdims=1)
        nonzero = b.op("Not", [b.op("Equal", [total, b.const("zero", 0.0)])])
        safe = b.op("Where", [nonzero, total, b.const("one", 1.0)])
        inv = b.op("Where", [nonzero, b.op("Reciprocal", [safe]), b.const("zero", 0.0)])
        return b.op("Mul", [c, inv], "fraction")
    return c


def _slots_front(b: _Builder, ops: InputOps, raw: str, mask: str, mass: str | None, out: str) -> None:
    """(N, S, F) raw + (N, S) mask → the scaled input ``out`` (N, S, F + k)."""
    from onnx import TensorProto

    cols = [_column(b, raw, j, 2) for j in range(len(ops.features))]
    m3 = b.op("Unsqueeze", [mask, b.const("ax", [2], np.int64)], "mask3")
    sign = None
    if ops.flip is not None:
        fl = ops.flip
        jw = ops.index(fl.weight)
        w = _feature(b, ops, raw, cols, jw, 2) if fl.weight_stage == "scaled" else cols[jw]
        prod = b.op("Mul", [b.op("Mul", [cols[ops.index(fl.feature)], m3]), w])
        s = b.op("ReduceSum", [b.op("Cast", [prod], to=TensorProto.DOUBLE), b.const("ax", [1, 2], np.int64)],
                 "flipsum", keepdims=1)  # fmt: skip
        sign = b.op("Where", [b.op("Less", [s, b.const("zero", 0.0, np.float64)]), b.const("m1", -1.0),
                              b.const("p1", 1.0)], "sign")  # fmt: skip
    feats = []
    for j, f in enumerate(ops.features):
        if f.op == "flip":
            feats.append(b.op("Mul", [cols[j], sign], "flipped") if sign is not None else cols[j])
        else:
            feats.append(_feature(b, ops, raw, cols, j, 2))
    y = b.op("Concat", feats, "scaled", axis=2)
    valid = b.op("Greater", [m3, b.const("half", 0.5)], "valid")
    y = b.op("Where", [valid, y, b.const("pad", np.asarray(ops.padding, np.float32))], "padded")
    if mass is not None:
        zeros = b.op("Mul", [m3, b.const("zero", 0.0)])  # (N, S, 1)
        m = b.op("Add", [zeros, b.op("Unsqueeze", [mass, b.const("ax", [1], np.int64)])], "mass_slots")
        y = b.op("Concat", [y, m], axis=2)
    b.op("Identity", [y], out=out)


def _jet_front(b: _Builder, ops: InputOps, raw: str, mass: str | None, out: str) -> None:
    cols = [_column(b, raw, j, 1) for j in range(len(ops.features))]
    feats = [_feature(b, ops, raw, cols, j, 1) for j in range(len(ops.features))]
    if mass is not None:
        feats.append(mass)
    b.op("Identity", [b.op("Concat", feats, "jet_scaled", axis=1)], out=out)


def _rename_input(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]


def build_raw(proto: Any, pre: Preprocessing, *, prefix: str = DEFAULT_PREFIX, n_mass: int = 0) -> Any:
    """A copy of the classifier ``proto`` (scaled inputs in schema order, one (N, 3) output) with the
    preprocessing front end and per-class outputs."""
    import onnx
    from onnx import TensorProto, helper

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ValueError(f"the classifier graph has opset {opset}; the preprocessing front end needs ≥ {MIN_OPSET}")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    g = model.graph
    old_inputs = list(g.input)
    if len(old_inputs) != len(pre.inputs):
        raise ValueError(f"the classifier graph has {len(old_inputs)} inputs, expected {len(pre.inputs)}")
    b = _Builder()
    new_inputs = []
    mass = None
    if n_mass:
        mass_raw = helper.make_tensor_value_info("mass_hypothesis", TensorProto.FLOAT, ["N", n_mass])
        new_inputs_mass = [mass_raw]
        mass = b.op("Div", ["mass_hypothesis", b.const("gev_per_tev", pre.mass_divide)], "mass_tev")
    else:
        new_inputs_mass = []
    for vi, ops in zip(old_inputs, pre.inputs, strict=True):
        scaled = f"crbatch_pre/{ops.name}_scaled"
        _rename_input(g, vi.name, scaled)
        nf = len(ops.features)
        if ops.slots:
            new_inputs.append(helper.make_tensor_value_info(ops.name, TensorProto.FLOAT, ["N", ops.slots, nf]))
            new_inputs.append(helper.make_tensor_value_info(mask_name(ops.name), TensorProto.FLOAT, ["N", ops.slots]))
            _slots_front(b, ops, ops.name, mask_name(ops.name), mass, scaled)
        else:
            new_inputs.append(helper.make_tensor_value_info(ops.name, TensorProto.FLOAT, ["N", nf]))
            _jet_front(b, ops, ops.name, mass, scaled)
    del g.input[:]
    g.input.extend(new_inputs + new_inputs_mass)
    # Per-class outputs from the softmax output.
    (prob,) = [o.name for o in g.output]
    outs = []
    for j, name in enumerate(output_names(prefix)):
        b.op("Gather", [prob, b.const("cls", j, np.int64)], out=name, axis=1)
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"]))
    del g.output[:]
    g.output.extend(outs)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(b.nodes[: len(b.nodes) - len(outs)] + nodes + b.nodes[len(b.nodes) - len(outs) :])
    g.initializer.extend(b.inits)
    model.doc_string = ("CalRatio per-jet classifier with its preprocessing, exported by crbatch: raw inputs and "
                        "validity masks in, one probability per class out; description in metadata_props")  # fmt: skip
    onnx.checker.check_model(model)
    return model


def feed(sess: Any, raw: dict[str, np.ndarray], valid: dict[str, np.ndarray], mass: np.ndarray | None = None) -> dict:
    """The input feed of a raw graph from raw inputs and masks (by name)."""
    names = {i.name for i in sess.get_inputs()}
    out = {}
    for name in names:
        if name == "mass_hypothesis":
            out[name] = np.asarray(mass, np.float32)
        elif name.endswith("_valid"):
            out[name] = np.asarray(valid[name.removesuffix("_valid")], np.float32)
        else:
            out[name] = np.asarray(raw[name], np.float32)
    return out


def run(sess: Any, raw: dict[str, np.ndarray], valid: dict[str, np.ndarray], mass: np.ndarray | None = None,
        prefix: str | None = None) -> np.ndarray:  # fmt: skip
    """(N, 3) probabilities of a raw graph, in softmax order."""
    names = [o.name for o in sess.get_outputs()]
    if prefix is not None:
        names = output_names(prefix)
    cols = sess.run(names, feed(sess, raw, valid, mass))
    return np.stack([np.asarray(c) for c in cols], axis=1)


def is_raw_graph(sess: Any) -> bool:
    return any(i.name.endswith("_valid") for i in sess.get_inputs())
