"""Load a classifier trained by the reference (CalRatioTrainer, Keras 2.13) into crbatch's network.

The reference saved ``keras/final_model_weights_<e>.keras`` with ``model.save_weights``: despite the
suffix, a Keras-2 **HDF5** weights file, one group per layer (attribute ``layer_names``), each group
with the attribute ``weight_names`` and the arrays at ``<group>/<weight name>``
(e.g. ``lstm/lstm_cell/kernel:0``). Keras 3 cannot read it (reference-training.md §10), so this
module maps the groups onto :func:`crbatch.train.model.build_classifier` by name.

Layer names. The reference names only some layers; Keras 2 names the others from a per-class
counter in creation order (``conv1d``, ``conv1d_1``, ...), and the reference creates the branches
in the order constituents → tracks → muon segments, then the jet input (one unnamed, unused
``Dense(3)``: it takes ``dense``), then the trunk. Hence, with default settings:

==========================  =====================================================
crbatch layer               reference group
==========================  =====================================================
``constit_conv1d_0..2``     ``conv1d``, ``conv1d_1``, ``conv1d_2``
``constit_final_conv1d``    ``constit_final_conv1d``
``track_conv1d_0..2``       ``conv1d_3``, ``conv1d_4``, ``conv1d_5``
``track_final_conv1d``      ``track_final_conv1d``
``MSeg_conv1d_0..1``        ``conv1d_6``, ``conv1d_7``
``MSeg_final_conv1d``       ``MSeg_final_conv1d``
``constit_lstm_0``          ``lstm``
``track_lstm_0``            ``lstm_1``
``MSeg_lstm_0``             ``lstm_2``
``main_dense_1``            ``dense_1``
``main_dense_2``            ``dense_2``
``main_output``             ``main_output``
==========================  =====================================================

Rather than hard-coding the numbers, the unnamed layers are matched by rank: the n-th unnamed
Conv1D (LSTM, trunk Dense) in the reference's creation order takes the file's n-th auto-named group
*with weights* of that class, ordered by its counter (the jet input's ``dense`` is not part of the
saved classifier, so the trunk takes ``dense_1`` and ``dense_2``). That is the table above for a model built first in its
session, and still right if the counters started higher. Shapes are checked for every array, every
array of the file must be used exactly once, and a missing group, an unused one or a shape
mismatch is refused with exit 12.

LSTM weights need no conversion: Keras 2 and Keras 3 both store kernel (in, 4u), recurrent kernel
(u, 4u) and bias (4u) with the gates in the order i, f, c, o (the reference's trained forget-gate
biases, initialised to 1 by ``unit_forget_bias``, sit in the second quarter; the tests check it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputCorrupt, InputMissing, InputSchema

# Weight arrays per Keras class, in Keras 3 ``set_weights`` order, named by the reference's suffix.
WEIGHT_ORDER = {
    "Conv1D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "LSTM": ("kernel", "recurrent_kernel", "bias"),
}
AUTO = {"Conv1D": "conv1d", "LSTM": "lstm", "Dense": "dense"}  # Keras 2 generic names (snake-cased class)


def _auto_rank(name: str, base: str) -> int | None:
    """Creation counter of a Keras-2 auto name (``conv1d`` → 0, ``conv1d_7`` → 7), None otherwise."""
    m = re.fullmatch(rf"{base}(?:_(\d+))?", name)
    return None if m is None else int(m.group(1) or 0)


def reference_slots(cfg: Any) -> list[tuple[str, str | None]]:
    """(crbatch layer, reference name or None for an unnamed layer) of each weighted layer, in the
    reference's creation order; unnamed ones are matched by rank within their Keras class."""
    from ..train.model import BRANCHES, TRUNK_WIDTHS

    out: list[tuple[str, str | None]] = []
    for prefix, _, fattr, nattr in BRANCHES:
        filters = list(getattr(cfg, fattr))
        finals = [i for i, f in enumerate(filters) if i > 0 and f == filters[-1]]
        if len(finals) > 1:  # the reference names by value: it could not have built this (duplicate names)
            raise InputSchema(
                f"{fattr} = {filters}: the reference cannot build it (two layers named {prefix}_final_conv1d)"
            )
        for i in range(len(filters)):
            last = i == len(filters) - 1
            ours = f"{prefix}_final_conv1d" if last else f"{prefix}_conv1d_{i}"
            out.append((ours, f"{prefix}_final_conv1d" if i in finals else None))
        if getattr(cfg, nattr):
            out += [(f"{prefix}_lstm_{j}", None) for j in range(cfg.layers_list)]
    out += [(f"main_dense_{i}", None) for i in range(1, len(TRUNK_WIDTHS) + 1)]
    out.append(("main_output", "main_output"))
    return out


def _open(path: Path) -> Any:
    import h5py

    if not path.exists():
        raise InputMissing(f"{path}: reference weights file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        hint = " (a Keras 3 .keras archive? export it with --model)" if path.suffix == ".keras" else ""
        raise InputCorrupt(f"{path}: not a readable HDF5 weights file{hint} ({e})") from e


def _names(value: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]


def read_groups(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Layer group → {weight suffix (``kernel``, ``recurrent_kernel``, ``bias``): array} of a Keras-2
    ``save_weights`` HDF5 file (groups without weights included, empty)."""
    with _open(path) as f:
        if "layer_names" not in f.attrs:
            raise InputSchema(f"{path}: no 'layer_names' attribute: not a Keras-2 save_weights file")
        out: dict[str, dict[str, np.ndarray]] = {}
        for layer in _names(f.attrs["layer_names"]):
            if layer not in f:
                raise InputSchema(f"{path}: layer {layer!r} is listed but has no group")
            g = f[layer]
            arrays: dict[str, np.ndarray] = {}
            for wname in _names(g.attrs.get("weight_names", [])):
                if wname not in g:
                    raise InputSchema(f"{path}: weight {layer}/{wname} is listed but missing")
                suffix = wname.rsplit("/", 1)[-1].split(":")[0]
                if suffix in arrays:
                    raise InputSchema(f"{path}: layer {layer!r} has two {suffix!r} arrays")
                arrays[suffix] = np.asarray(g[wname][()], dtype=np.float32)
            out[layer] = arrays
    return out


def layer_mapping(cfg: Any, groups: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, str]:
    """crbatch layer name → reference group name (see the module docstring)."""
    slots = reference_slots(cfg)
    kinds = {
        ours: ("LSTM" if "_lstm_" in ours else "Dense" if ours.startswith("main_") else "Conv1D") for ours, _ in slots
    }
    mapping: dict[str, str] = {}
    for kind, base in AUTO.items():
        unnamed = [ours for ours, ref in slots if ref is None and kinds[ours] == kind]
        ranked = sorted((r, g) for g in groups if (r := _auto_rank(g, base)) is not None and groups[g])
        if len(ranked) != len(unnamed):
            have = [g for _, g in ranked]
            raise InputSchema(
                f"the reference file has {len(have)} auto-named {kind} layers with weights ({have}), the "
                f"architecture needs {len(unnamed)} ({unnamed}): give the run's config (--config) or check the file"
            )
        mapping.update({ours: g for ours, (_, g) in zip(unnamed, ranked, strict=True)})
    mapping.update({ours: ref for ours, ref in slots if ref is not None})
    return mapping


def load_reference(path: Path, cfg: Any) -> tuple[Any, dict[str, str]]:
    """A classifier of ``cfg``'s architecture carrying the reference's weights, and the mapping used."""
    from ..train.model import build_classifier

    groups = read_groups(path)
    mapping = layer_mapping(cfg, groups)
    model = build_classifier(cfg)
    used: set[tuple[str, str]] = set()
    problems: list[str] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in WEIGHT_ORDER:
            if layer.get_weights():
                problems.append(f"layer {layer.name} ({kind}) has weights but no reference counterpart")
            continue
        ref = mapping.get(layer.name)
        if ref is None or ref not in groups:
            problems.append(f"layer {layer.name}: reference group {ref!r} missing from the file")
            continue
        arrays = []
        for suffix, want in zip(WEIGHT_ORDER[kind], layer.get_weights(), strict=True):
            got = groups[ref].get(suffix)
            if got is None:
                problems.append(f"{ref}: no {suffix} array (for {layer.name})")
            elif got.shape != want.shape:
                problems.append(f"{ref}/{suffix}: shape {got.shape}, {layer.name} needs {want.shape}")
            elif (ref, suffix) in used:
                problems.append(f"{ref}/{suffix}: would be used twice (also for {layer.name})")
            else:
                used.add((ref, suffix))
                arrays.append(got)
        if len(arrays) == len(WEIGHT_ORDER[kind]):
            layer.set_weights(arrays)
    unused = sorted(f"{g}/{s}" for g, arrays in groups.items() for s in arrays if (g, s) not in used)
    if unused:
        problems.append(f"arrays not used by the architecture: {unused}")
    if problems:
        raise InputSchema(f"{path}: does not fit the classifier architecture: " + "; ".join(problems))
    return model, mapping
