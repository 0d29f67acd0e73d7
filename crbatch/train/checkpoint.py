"""The resume checkpoint: one HDF5 file, written atomically, holding everything to continue exactly.

Layout of ``checkpoint.h5``::

    state/clf_tv/00000 …      classifier trainable variables (Keras order)
    state/clf_ntv/…           classifier non-trainable state: dropout SeedGenerator states
    state/adv_tv/…, adv_ntv/… adversary variables; adv_ntv = BatchNorm moving means/variances
    state/opt/<group>/…       optimizer state per group (iteration, u_product, m/…, v/…)
    state/acc                 partial-epoch metric accumulators (crbatch.train.adversarial.ACC_NAMES)
    rng/numpy                 numpy's global MT19937 key (the rest of its state is in ``meta``)
    attrs: meta (JSON)        format, epoch, step, phase, reader position, history, Python RNG state,
                              config, backend, variable names, build ids of the datasets;
           meta_sha256        SHA-256 of the meta text; complete = True (written last)

Every array carries the SHA-256 of its dtype, shape and bytes (attribute ``sha256``), verified when
the checkpoint is read: a damaged checkpoint is never loaded. The last two are kept: writing a new
one renames the current one to ``checkpoint.prev.h5`` first, and :func:`load_latest` falls back to
it (a kill between the two renames leaves only the previous one, which is then used). A state with
a NaN or an infinity is never written (:class:`~crbatch.errors.TrainingDiverged`, exit 15).

The state is read back into a template (a freshly built trainer's state): every array must have
the template's shape, so a checkpoint of another architecture is refused instead of half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import ConfigError, InputCorrupt, TrainingDiverged
from ..schema import atomic_output, h5_output, remove_stale_tmp

log = logging.getLogger(__name__)

NAME = "checkpoint.h5"
PREVIOUS = "checkpoint.prev.h5"  # the one before: the fallback when NAME is damaged or missing
DAMAGED = "checkpoint.damaged.h5"  # a damaged NAME is moved here (kept for inspection, never read)
FORMAT = 2  # 2: SHA-256 per array and of the meta; 1 (no checksums) is still read
A_SHA = "sha256"


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
    # The legacy tuple (get_state's default); the stubs also allow the dict of legacy=False.
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {"python": [version, list(internal), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)]}, keys


def set_rng_state(meta: dict[str, Any], keys: np.ndarray) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, keys, pos, has_gauss, cached))


def digest(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")  # type: ignore[arg-type]  # numpy: __buffer__ on 3.12+ only
    return h.hexdigest()


def non_finite(state: Any) -> list[str]:
    """Paths of the floating-point arrays of a (host) state tree holding a NaN or an infinity."""
    return [k for k, a in _flatten(state) if np.issubdtype(np.asarray(a).dtype, np.floating)
            and not np.isfinite(a).all()]  # fmt: skip


def write(path: Path, state: Any, meta: dict[str, Any]) -> None:
    """Write ``state`` (host or device arrays) and ``meta`` (JSON-able) to ``path`` atomically, keeping
    the checkpoint it replaces as ``checkpoint.prev.h5``. Refuses a non-finite state (exit 15)."""

    host = to_host(state)
    bad = non_finite(host)
    if bad:
        raise TrainingDiverged(
            f"epoch {meta.get('epoch')}, step {meta.get('step')}: the network or optimizer state holds NaN or "
            f"infinite values ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''}): training diverged; no "
            f"checkpoint written, {path.name} is the last good state — lower the learning rate (lr_values) or "
            "check the inputs, then resume"
        )
    rng_meta, keys = rng_state()
    meta = {**meta, "format": FORMAT, "rng": rng_meta}
    text = json.dumps(meta, allow_nan=True)
    remove_stale_tmp(path.parent, path.name)  # left by a killed process on this host
    with atomic_output(path) as tmp:
        with h5_output(tmp) as f:
            for key, arr in [*((f"state/{k}", a) for k, a in _flatten(host)), ("rng/numpy", keys)]:
                f.create_dataset(key, data=arr).attrs[A_SHA] = digest(np.asarray(arr))
            f.attrs["meta"] = text
            f.attrs["meta_sha256"] = hashlib.sha256(text.encode()).hexdigest()
            f.attrs["complete"] = True  # last: a reader refuses a file without it
        if path.exists():  # the last two are kept: the current one becomes the previous one
            os.replace(path, path.with_name(PREVIOUS))


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray]:
    """(flat state arrays by path, meta, numpy RNG keys), every checksum verified (exit 11 if damaged)."""
    import h5py

    def damaged(why: str) -> InputCorrupt:
        return InputCorrupt(f"{path}: damaged checkpoint ({why})")

    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete"):
                raise damaged("no completion mark")
            text = f.attrs["meta"]
            text = text.decode() if isinstance(text, bytes) else str(text)
            want_meta = f.attrs.get("meta_sha256")
            if want_meta is not None and hashlib.sha256(text.encode()).hexdigest() != str(want_meta):
                raise damaged("its metadata does not match their checksum")
            meta = json.loads(text)
            arrays: dict[str, tuple[np.ndarray, Any]] = {}
            f.visititems(
                lambda k, o: arrays.__setitem__(k, (o[()], o.attrs.get(A_SHA))) if isinstance(o, h5py.Dataset) else None
            )
    except InputCorrupt:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError … on damaged structure
        raise damaged(f"unreadable: {type(e).__name__}: {e}") from e
    if meta.get("format") not in (1, FORMAT):
        raise ConfigError(f"{path}: checkpoint format {meta.get('format')}, this crbatch reads 1 and {FORMAT}")
    if "rng/numpy" not in arrays:
        raise damaged("no rng/numpy")
    if meta.get("format") == 1:
        log.warning("%s: written by an older crbatch without checksums: not verified", path)
    else:
        bad = [k for k, (a, sha) in arrays.items() if sha is None or digest(a) != str(sha)]
        if bad:
            raise damaged(f"{len(bad)} array(s) do not match their checksum, e.g. {bad[0]}")
    values = {k.removeprefix("state/"): a for k, (a, _) in arrays.items() if k.startswith("state/")}
    return values, meta, arrays["rng/numpy"][0]


def load_latest(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray, Path] | None:
    """The newest good checkpoint of a run: ``checkpoint.h5``, else ``checkpoint.prev.h5`` (a damaged
    ``checkpoint.h5`` is moved to ``checkpoint.damaged.h5``); None when there is none at all.
    Exit 11 when every checkpoint there is damaged."""
    latest, previous = run_dir / NAME, run_dir / PREVIOUS
    errors: list[str] = []
    for p in (latest, previous):
        if not p.exists():
            continue
        try:
            values, meta, keys = read(p)
        except InputCorrupt as e:
            errors.append(str(e))
            continue
        if p == previous:
            if errors:
                os.replace(latest, run_dir / DAMAGED)  # never again the "previous" of a new checkpoint
                log.warning("%s; moved to %s. Resuming from %s (epoch %s, step %s): the work since is redone, "
                            "bit-identically", errors[0], DAMAGED, PREVIOUS, meta.get("epoch"), meta.get("step"))  # fmt: skip
            else:
                log.warning("%s missing (killed while replacing it?): resuming from %s", NAME, PREVIOUS)
        return values, meta, keys, p
    if errors:
        raise InputCorrupt(
            f"{run_dir}: no good checkpoint ({'; '.join(errors)}); delete {NAME} and {PREVIOUS} to restart the run "
            "from scratch"
        )
    return None


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
