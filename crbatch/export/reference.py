"""Load a classifier trained by the reference (CalRatioTrainer, Keras 2.13) into crbatch's network.

Two formats, told apart by their first bytes: the ``save_weights`` HDF5 file (below) and the
``model.save`` archive (a zip: ``config.json``, ``metadata.json``, ``model.weights.h5``; see
:func:`read_archive`). :func:`load_reference_model` takes either.

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

import io
import json
import re
import zipfile
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


MAX_MESSAGE = 400  # characters: error messages stay one readable line, whatever a file holds


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters (long lists and dumped configs are cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 12] + " … (cut)"


def _listed(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _open(path: Path) -> Any:
    import h5py

    if not path.exists():
        raise InputMissing(f"{path}: reference weights file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputCorrupt(one_line(f"{path}: neither a Keras-2 weights file (HDF5) nor a model.save archive "
                                    f"(zip) ({e}); recopy it"))  from e  # fmt: skip


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
            raise InputSchema(one_line(
                f"the reference file has {len(have)} auto-named {kind} layers with weights ({_listed(have)}), the "
                f"architecture needs {len(unnamed)}: give the run's config (--config) or check the file"
            ))  # fmt: skip
        mapping.update({ours: g for ours, (_, g) in zip(unnamed, ranked, strict=True)})
    mapping.update({ours: ref for ours, ref in slots if ref is not None})
    return mapping


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a ``model.save`` zip archive (else it should be a ``save_weights`` HDF5 file)."""
    if not path.exists():
        raise InputMissing(f"{path}: reference model file not found")
    return zipfile.is_zipfile(path)


def load_reference_model(path: Path, cfg: Any | None = None) -> Any:
    """crbatch's classifier (``keras.Model``) carrying the weights of a reference-trained model file:
    a ``save_weights`` HDF5 file (architecture from ``cfg``, default the reference's defaults) or a
    ``model.save`` archive (architecture from its own config.json; ``cfg``, if given, must agree).
    Every array is mapped exactly once; an archive is also checked against an independent rebuild
    from its config. Errors are :class:`~crbatch.errors.CrbatchError` with one-line messages."""
    return load_reference(path, cfg)[0]


def load_reference(path: Path, cfg: Any | None = None) -> tuple[Any, dict[str, str]]:
    """(classifier, crbatch layer → reference layer or group) for either reference format."""
    if is_archive(path):
        return load_archive(path, cfg)
    if cfg is None:
        from ..train.config import TrainConfig

        cfg = TrainConfig()
    return load_weights_file(path, cfg)


def load_weights_file(path: Path, cfg: Any) -> tuple[Any, dict[str, str]]:
    """A classifier of ``cfg``'s architecture carrying the weights of a ``save_weights`` HDF5 file."""
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
        problems.append(f"arrays not used by the architecture: {_listed(unused)}")
    if problems:
        raise InputSchema(one_line(f"{path}: does not fit the classifier architecture: " + "; ".join(problems)))
    return model, mapping


# --- the ``model.save`` archive (Keras 2.13–2.15 ``.keras`` zip) -------------------------------------------
#
# ``config.json`` holds the functional graph (layers in creation order, each with its inbound
# layers), ``model.weights.h5`` the arrays: one group per layer under ``_layer_checkpoint_dependencies``,
# named ``<class>_<k>`` (snake-cased Keras class, a counter that is not the layer's own name:
# ``conv1d``, ``conv1d_2``, ``conv1d_4``, ...), arrays at ``vars/<i>`` (an LSTM's at ``cell/vars/<i>``)
# in Keras order. So the n-th group of a class, by counter, belongs to the n-th layer of that class
# in config.json's order; the graph then says which branch and position each layer has.

ARCHIVE_GROUP = "_layer_checkpoint_dependencies"
ARCHIVE_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")
BRANCH_PREFIXES = ("constit", "track", "MSeg")  # the model's first three inputs, in order
SUPPORTED = ("InputLayer", "Conv1D", "Dropout", "LSTM", "Concatenate", "Dense", "GlobalAveragePooling1D")
CHECK_JETS = 64  # random jets on which the import is compared with the rebuild from the config
CHECK_TOL = 1e-5


def snake_case(name: str) -> str:
    """Keras' snake-casing of a class name (``Conv1D`` → ``conv1d``, ``InputLayer`` → ``input_layer``)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


class Archive:
    """A reference ``model.save`` archive: its config, and every layer's arrays (by config layer name)."""

    def __init__(self, path: Path, config: dict[str, Any], metadata: dict[str, Any], arrays: dict[str, list]):
        self.path = path
        self.config = config
        self.metadata = metadata
        self.arrays = arrays  # config layer name → its arrays, Keras order
        self.layers: list[dict[str, Any]] = config["config"]["layers"]
        self.by_name = {lay["config"]["name"]: lay for lay in self.layers}

    def inbound(self, layer: dict[str, Any]) -> list[str]:
        """Names of the layers feeding ``layer`` (Keras-2 node lists, or Keras-3 style dicts)."""
        nodes = layer.get("inbound_nodes") or []
        if not nodes:
            return []
        node = nodes[0]
        if isinstance(node, dict):  # Keras 3 style: {"args": [...]} with keras_history
            found = re.findall(r"'keras_history': \['([^']+)'", str(node)) or re.findall(
                r'"keras_history": \["([^"]+)"', json.dumps(node)
            )
            return found
        return [n[0] for n in node]

    def consumers(self, name: str) -> list[dict[str, Any]]:
        return [lay for lay in self.layers if name in self.inbound(lay)]

    def io_names(self, key: str) -> list[str]:
        return [x[0] for x in self.config["config"][key]]


def _group_arrays(g: Any) -> list[tuple[str, np.ndarray]]:
    """(path, array) of a layer group: its own ``vars/<i>``, then its sub-objects' (an LSTM's cell)."""
    out: list[tuple[str, np.ndarray]] = []
    if "vars" in g:
        v = g["vars"]
        for i in sorted(v, key=int):
            out.append((f"{g.name}/vars/{i}", np.asarray(v[i][()], dtype=np.float32)))
    for sub in sorted(k for k in g if k != "vars"):
        out += _group_arrays(g[sub])
    return out


def read_archive(path: Path) -> Archive:
    """Open a ``model.save`` archive and give every array to its config layer (each exactly once)."""
    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            missing = [m for m in ARCHIVE_MEMBERS if m not in z.namelist()]
            if missing:
                raise InputSchema(f"{path}: a zip without {', '.join(missing)}: not a Keras model.save archive")
            config = json.loads(z.read("config.json"))
            metadata = json.loads(z.read("metadata.json"))
            weights = z.read("model.weights.h5")
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise InputCorrupt(
            one_line(f"{path}: unreadable model.save archive ({type(e).__name__}: {e}); recopy it")
        ) from e
    version = metadata.get("keras_version", "unknown")
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Model"):
        what = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise InputSchema(f"{path}: config.json describes a {what!r}, not a functional Keras model")
    layers = config.get("config", {}).get("layers")
    if not isinstance(layers, list):
        raise InputSchema(f"{path}: config.json has no layer list")
    unknown = sorted({lay.get("class_name", "?") for lay in layers} - set(SUPPORTED))
    if unknown:
        raise InputSchema(one_line(f"{path}: layers of class {_listed(unknown)} are not part of the reference's "
                                   "network; is this a CalRatio classifier?"))  # fmt: skip
    try:
        with h5py.File(io.BytesIO(weights), "r") as f:
            if ARCHIVE_GROUP not in f:
                hint = "; it looks like a Keras 3 archive: give it with --model" if "layers" in f else ""
                raise InputSchema(f"{path}: model.weights.h5 has no {ARCHIVE_GROUP} group (Keras {version}){hint}")
            root = f[ARCHIVE_GROUP]
            groups = {name: _group_arrays(root[name]) for name in root}
    except OSError as e:
        raise InputCorrupt(one_line(f"{path}: model.weights.h5 is not readable HDF5 ({e}); recopy it")) from e
    arrays: dict[str, list] = {}
    problems: list[str] = []
    for cls in sorted({lay["class_name"] for lay in layers}):
        base = snake_case(cls)
        named = [lay["config"]["name"] for lay in layers if lay["class_name"] == cls]
        ranked = sorted(
            (int(m.group(1) or 0), g) for g in groups if (m := re.fullmatch(rf"{re.escape(base)}(?:_(\d+))?", g))
        )
        with_weights = [g for _, g in ranked if groups[g]]
        if cls == "InputLayer" or not with_weights:
            for g in (g for _, g in ranked):
                groups.pop(g)
            continue
        if len(ranked) != len(named):
            problems.append(f"{len(named)} {cls} layers in config.json, {len(ranked)} {base} weight groups")
            continue
        for (_, g), name in zip(ranked, named, strict=True):
            arrays[name] = [a for _, a in groups.pop(g)]
    left = sorted(g for g, arr in groups.items() if arr)
    if left:
        problems.append(f"weight groups of no config layer: {_listed(left)}")
    if problems:
        raise InputSchema(one_line(f"{path}: its weights do not match its config.json: " + "; ".join(problems)))
    return Archive(path, config, metadata, arrays)


def _chain(ar: Archive, start: str) -> list[dict[str, Any]]:
    """The layers after input ``start`` up to (not including) the Concatenate that joins the branches."""
    out: list[dict[str, Any]] = []
    name = start
    while True:
        nxt = ar.consumers(name)
        if len(nxt) != 1:
            raise InputSchema(f"{ar.path}: layer {name!r} feeds {len(nxt)} layers; the reference's branches are chains")
        if nxt[0]["class_name"] == "Concatenate":
            return out
        out.append(nxt[0])
        name = nxt[0]["config"]["name"]


def _input_shape(layer: dict[str, Any]) -> list[int]:
    c = layer["config"]
    shape = c.get("batch_input_shape") or c.get("batch_shape")
    return list(shape[1:])


def archive_architecture(ar: Archive, given: Any | None = None) -> tuple[Any, dict[str, str]]:
    """(training config of the archive's architecture, crbatch layer → config layer name).

    ``given`` (a TrainConfig from --config) supplies what the graph cannot tell (which single mass
    is parametrised, training-only settings) and must agree with the graph on the architecture.
    """
    from ..train.config import TrainConfig
    from ..train.model import BRANCHES, TRUNK_WIDTHS

    inputs = ar.io_names("input_layers")
    if len(inputs) != 4:
        raise InputSchema(f"{ar.path}: {len(inputs)} model inputs, the CalRatio classifier has 4")
    shapes = [_input_shape(ar.by_name[n]) for n in inputs]
    n_mass = shapes[0][-1] - 12
    values: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    lstm_layers = set()
    for (prefix, _, fattr, nattr), name in zip(BRANCHES, inputs[:3], strict=True):
        chain = _chain(ar, name)
        convs = [lay for lay in chain if lay["class_name"] == "Conv1D"]
        lstms = [lay for lay in chain if lay["class_name"] == "LSTM"]
        values[fattr] = [int(lay["config"]["filters"]) for lay in convs]
        values[nattr] = int(lstms[0]["config"]["units"]) if lstms else 0
        lstm_layers.add(len(lstms) if lstms else None)
        for i, lay in enumerate(convs):
            mapping[f"{prefix}_final_conv1d" if i == len(convs) - 1 else f"{prefix}_conv1d_{i}"] = lay["config"]["name"]
        for j, lay in enumerate(lstms):
            mapping[f"{prefix}_lstm_{j}"] = lay["config"]["name"]
        rates = [float(lay["config"]["rate"]) for lay in chain if lay["class_name"] == "Dropout"]
        if rates:
            values["dropout_array"] = rates[0]
        reg = (convs[0]["config"].get("kernel_regularizer") or {}).get("config", {}) if convs else {}
        if "l1" in reg:
            values["reg_values"] = float(reg["l1"])
    counts = {n for n in lstm_layers if n is not None}
    if len(counts) > 1:
        raise InputSchema(f"{ar.path}: the branches have different numbers of LSTM layers ({sorted(counts)})")
    values["layers_list"] = counts.pop() if counts else 1
    trunk = [ar.by_name[ar.io_names("output_layers")[0]]]
    while trunk[0]["class_name"] != "Concatenate":
        ins = ar.inbound(trunk[0])
        if len(ins) != 1:
            raise InputSchema(f"{ar.path}: the trunk after the branches is not a chain")
        trunk.insert(0, ar.by_name[ins[0]])
    dense = [lay for lay in trunk if lay["class_name"] == "Dense"]
    if len(dense) != len(TRUNK_WIDTHS) + 1:
        raise InputSchema(f"{ar.path}: {len(dense)} Dense layers after the branches, the classifier has 3")
    d1 = int(dense[0]["config"]["units"])
    frac = d1 / TRUNK_WIDTHS[0]
    if int(TRUNK_WIDTHS[1] * frac) != int(dense[1]["config"]["units"]):
        raise InputSchema(f"{ar.path}: trunk widths {d1}, {dense[1]['config']['units']} are not 512·f, 64·f")
    values["hidden_layer_fraction"] = frac
    for i, lay in enumerate(dense[:-1], start=1):
        mapping[f"main_dense_{i}"] = lay["config"]["name"]
    mapping["main_output"] = dense[-1]["config"]["name"]
    if n_mass == 2:
        values["mH_parametrization"] = values["mS_parametrization"] = True
    elif n_mass == 1:
        if given is None or given.n_mass_features != 1:
            raise InputSchema(f"{ar.path}: one mass feature per input: say which with --config "
                              "(mH_parametrization or mS_parametrization)")  # fmt: skip
        values["mH_parametrization"], values["mS_parametrization"] = given.mH_parametrization, given.mS_parametrization
    elif n_mass != 0:
        raise InputSchema(f"{ar.path}: cluster input of shape {shapes[0]}: not the classifier's (30, 12[+masses])")
    base = given.model_dump() if given is not None else {}
    try:
        cfg = TrainConfig.model_validate({**base, **values})
    except ValueError as e:
        raise InputSchema(one_line(f"{ar.path}: its architecture is not one crbatch can build ({e})")) from e
    if given is not None:
        arch = [f for f in values if f not in ("reg_values", "dropout_array")]
        diff = [f for f in arch if getattr(given, f) != getattr(cfg, f)]
        if diff:
            f = diff[0]
            raise InputSchema(f"{ar.path}: its config.json has {f} = {getattr(cfg, f)}, --config says "
                              f"{getattr(given, f)}: leave --config out for an archive, or fix it")  # fmt: skip
    return cfg, mapping


def rebuild_from_config(ar: Archive) -> Any:
    """An independent Keras 3 model built layer by layer from config.json, with each layer's own arrays."""
    import keras

    tensors: dict[str, Any] = {}
    for lay in ar.layers:
        cls, c = lay["class_name"], lay["config"]
        name = c["name"]
        if cls == "InputLayer":
            tensors[name] = keras.Input(tuple(_input_shape(lay)), name=name)
            continue
        if cls == "Conv1D":
            layer = keras.layers.Conv1D(c["filters"], c["kernel_size"], strides=c.get("strides", 1),
                                        padding=c.get("padding", "valid"), activation=c.get("activation"),
                                        use_bias=c.get("use_bias", True), name=name)  # fmt: skip
        elif cls == "Dense":
            layer = keras.layers.Dense(c["units"], activation=c.get("activation"), use_bias=c.get("use_bias", True),
                                       name=name)  # fmt: skip
        elif cls == "LSTM":
            layer = keras.layers.LSTM(c["units"], activation=c.get("activation", "tanh"),
                                      recurrent_activation=c.get("recurrent_activation", "sigmoid"),
                                      use_bias=c.get("use_bias", True), return_sequences=c.get("return_sequences", False),
                                      go_backwards=c.get("go_backwards", False), name=name)  # fmt: skip
        elif cls == "Dropout":
            layer = keras.layers.Dropout(c["rate"], name=name)
        elif cls == "Concatenate":
            layer = keras.layers.Concatenate(axis=c.get("axis", -1), name=name)
        else:
            layer = keras.layers.GlobalAveragePooling1D(name=name)
        ins = [tensors[n] for n in ar.inbound(lay)]
        tensors[name] = layer(ins if len(ins) > 1 else ins[0])
        if name in ar.arrays:
            want = [tuple(w.shape) for w in layer.get_weights()]
            got = [tuple(a.shape) for a in ar.arrays[name]]
            if want != got:
                raise InputSchema(f"{ar.path}: layer {name}: arrays of shapes {got}, its config needs {want}")
            layer.set_weights(ar.arrays[name])
    model = keras.Model([tensors[n] for n in ar.io_names("input_layers")], tensors[ar.io_names("output_layers")[0]])
    return model


def check_against_rebuild(model: Any, ar: Archive, n: int = CHECK_JETS, seed: int = 0) -> float:
    """Largest |Δ| between ``model`` and :func:`rebuild_from_config` on random jets; refuses above tolerance."""
    rebuilt = rebuild_from_config(ar)
    rng = np.random.default_rng(seed)
    xs = [rng.normal(0, 1, (n, *inp.shape[1:])).astype(np.float32) for inp in rebuilt.inputs]
    diff = float(np.max(np.abs(np.asarray(model(xs)) - np.asarray(rebuilt(xs)))))
    if not diff <= CHECK_TOL:
        raise InputSchema(f"{ar.path}: the imported network differs from the archive's own graph "
                          f"(max |Δ score| = {diff:.3g} on {n} random jets): layers mapped wrongly")  # fmt: skip
    return diff


def load_archive(path: Path, cfg: Any | None = None) -> tuple[Any, dict[str, str]]:
    """crbatch's classifier from a ``model.save`` archive (architecture from its config.json), the
    crbatch layer → config layer mapping, checked against an independent rebuild from that config."""
    from ..train.model import build_classifier

    ar = read_archive(path)
    arch_cfg, mapping = archive_architecture(ar, cfg)
    model = build_classifier(arch_cfg)
    used: set[str] = set()
    problems: list[str] = []
    for layer in model.layers:
        if not layer.get_weights():
            continue
        ref = mapping.get(layer.name)
        if ref is None or ref not in ar.arrays:
            problems.append(f"{layer.name}: no weights in the archive (config layer {ref!r})")
            continue
        if ref in used:
            problems.append(f"{ref}: would be used twice (also for {layer.name})")
            continue
        want = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in ar.arrays[ref]]
        if want != got:
            problems.append(f"{ref}: arrays of shapes {got}, {layer.name} needs {want}")
            continue
        layer.set_weights(ar.arrays[ref])
        used.add(ref)
    unused = sorted(set(ar.arrays) - used)
    if unused:
        problems.append(f"layers with weights not used: {_listed(unused)}")
    if problems:
        raise InputSchema(one_line(f"{path}: does not fit the classifier architecture: " + "; ".join(problems)))
    check_against_rebuild(model, ar)
    return model, mapping


def reference_train_config(path: Path, cfg: Any | None = None) -> Any:
    """The training config describing a reference model file's architecture: an archive's own, or
    ``cfg`` (default: the reference defaults) for a weights-only file."""
    from ..train.config import TrainConfig

    if is_archive(path):
        return archive_architecture(read_archive(path), cfg)[0]
    return cfg if cfg is not None else TrainConfig()


def keras2_archive_version(path: Path) -> str | None:
    """The Keras version of a Keras-2 ``model.save`` archive at ``path`` (None for anything else)."""
    try:
        with zipfile.ZipFile(path) as z:
            v = str(json.loads(z.read("metadata.json")).get("keras_version", ""))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return None
    return v if v.startswith("2.") else None
