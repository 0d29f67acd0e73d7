"""The resume checkpoint: one HDF5 file, written atomically, holding everything to continue exactly.

Layout of ``checkpoint.h5``::

    state/clf_tv/00000 …      classifier trainable variables (Keras order)
    state/clf_ntv/…           classifier non-trainable state: dropout SeedGenerator states
    state/adv_tv/…, adv_ntv/… adversary variables; adv_ntv = BatchNorm moving means/variances
    state/opt/<group>/…       optimizer state per group (iteration, u_product, m/…, v/…)
    state/acc                 partial-epoch metric accumulators (crbatch.train.adversarial.ACC_NAMES)
    rng/numpy                 numpy's global MT19937 key (the rest of its state is in ``meta``)
    attrs: meta (JSON)        format, epoch, step, phase, reader position, history, Python RNG state,
                              config, backend, variable names; complete = True (written last)

The state is read back into a template (a freshly built trainer's state): every array must have
the template's shape, so a checkpoint of another architecture is refused instead of half-loaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputCorrupt
from ..schema import atomic_output, h5_output

NAME = "checkpoint.h5"
FORMAT = 1


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        out = []
        for k in sorted(tree):
            out += _flatten(tree[k], f"{prefix}/{k}" if prefix else k)
        return out
    if isinstance(tree, (list, tuple)):
        out = []
        for i, v in enumerate(tree):
            out += _flatten(v, f"{prefix}/{i:05d}")
        return out
    return [(prefix, tree)]


def _rebuild(template: Any, values: dict[str, np.ndarray], prefix: str = "") -> Any:
    if isinstance(template, dict):
        return {k: _rebuild(v, values, f"{prefix}/{k}" if prefix else k) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_rebuild(v, values, f"{prefix}/{i:05d}") for i, v in enumerate(template)]
    return values[prefix]


def to_host(state: Any) -> Any:
    """A numpy copy of a (device) state tree."""
    import keras

    if isinstance(state, dict):
        return {k: to_host(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [to_host(v) for v in state]
    return np.array(keras.ops.convert_to_numpy(state))


def rng_state() -> tuple[dict[str, Any], np.ndarray]:
    """Python's and numpy's global RNG states (JSON part, numpy key array)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)]}, keys


def set_rng_state(meta: dict[str, Any], keys: np.ndarray) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, keys, pos, has_gauss, cached))


def write(path: Path, state: Any, meta: dict[str, Any]) -> None:
    """Write ``state`` (host or device arrays) and ``meta`` (JSON-able) to ``path`` atomically."""

    host = to_host(state)
    rng_meta, keys = rng_state()
    meta = {**meta, "format": FORMAT, "rng": rng_meta}
    with atomic_output(path) as tmp, h5_output(tmp) as f:
        for key, arr in _flatten(host):
            f.create_dataset(f"state/{key}", data=arr)
        f.create_dataset("rng/numpy", data=keys)
        f.attrs["meta"] = json.dumps(meta, allow_nan=True)
        f.attrs["complete"] = True  # last: a reader refuses a file without it


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray]:
    """(flat state arrays by path, meta, numpy RNG keys)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete"):
                raise InputCorrupt(f"{path}: incomplete checkpoint; delete it to restart the run from scratch")
            meta = json.loads(f.attrs["meta"])
            values: dict[str, np.ndarray] = {}
            f["state"].visititems(
                lambda k, obj: values.__setitem__(k, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
            keys = f["rng/numpy"][()]
    except (OSError, KeyError, ValueError) as e:
        raise InputCorrupt(f"{path}: unreadable checkpoint ({e}); delete it to restart the run from scratch") from e
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: checkpoint format {meta.get('format')}, this crbatch reads {FORMAT}")
    return values, meta, keys


def restore_state(values: dict[str, np.ndarray], template: Any, path: Path) -> Any:
    """The saved arrays arranged like ``template``; refuses missing arrays or other shapes (exit 3)."""
    import keras

    want = dict(_flatten(template))
    missing = sorted(set(want) - set(values))
    extra = sorted(set(values) - set(want))
    if missing or extra:
        raise ConfigError(
            f"{path}: the checkpoint holds another network or optimizer layout "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the run's own config.yaml"
        )
    for key, t in want.items():
        shape = tuple(int(s) for s in t.shape)
        if tuple(values[key].shape) != shape:
            raise ConfigError(f"{path}: {key} has shape {values[key].shape}, the network {shape}: architecture changed")
        dtype = np.dtype(keras.backend.standardize_dtype(t.dtype))
        if values[key].dtype != dtype:  # e.g. a SeedGenerator state saved by another backend
            values[key] = values[key].astype(dtype)
    return _rebuild(template, values)
