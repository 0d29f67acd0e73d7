"""Streaming reader: batches for training from datasets far larger than memory.

Mixing. A file's order must not leak into the batches: a reference training file is grouped by
class, and contiguous 512-jet slices of it are single-class batches the network cannot learn from.
So each epoch the reader (``shuffle=True``) cuts every file into units of one HDF5 chunk
(:data:`UNIT` = 128 jets: every chunk is decompressed once per epoch, as for contiguous reads),
permutes the units (seeded with seed and epoch), loads them a window of ``shuffle_window`` jets at a
time (units sorted by position, so the reads stay sequential), and permutes the jets inside the
window. A batch therefore holds jets from ``shuffle_window / UNIT`` random places of the input,
whatever its order (32 at the default 4096), and memory is one window plus the prefetched batches.
Every jet is in exactly one batch per epoch (``drop_last=False``). ``shuffle_window=0`` restores
the old "weak shuffle" (contiguous slices in a shuffled batch order, for files the build shuffled).

Subset. ``subset=k`` trains on a fixed, seeded set of exactly ``k`` jets (the reference's
``frac_list``): the same jets every epoch, reshuffled among themselves; it is part of
:meth:`state`, with a digest that a resumed reader checks.

Batches are dicts: the model inputs in the model's order (``schema.MODEL_INPUTS``: ``clusters``
(B,30,12), ``tracks`` (B,20,10), ``msegs`` (B,30,6), ``jet`` (B,3), float32), ``label`` (int64),
``weight`` (float32), any requested ``jet_fields``, and — when a control-region file is given —
``cr``: a dict with the same inputs, ``target`` (float32, 1 = data, 0 = MC) and ``weight``, of the
same batch size, drawn by an independent sampler that cycles through the control region (mixed in
the same way, reshuffled at each pass) regardless of the main epoch.

The position is ``(epoch, batches done)``: :meth:`state` / :meth:`restore` resume exactly, because
each batch (main and control region) is a pure function of the seed, the epoch and its position.

Reads crbatch datasets (already scaled: read as is), raw shards (scaled on the fly with
:mod:`crbatch.scaling`, using the constants of the datasets read alongside, if any) and legacy
shards whose features the reference already scaled (``scaled = "legacy-reference"``: as is).
Memory: a shuffle window and a few batches (the prefetch queue), never the dataset.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import InputMissing
from ..inputs import expand
from ..scaling import LEGACY_NAME, ScalingConfig, float_view, is_scaled, scale_tables
from .consistency import check_same_build
from .h5io import SliceReader

log = logging.getLogger(__name__)

PathLike = str | Path
CR_STREAM = 0x43520000  # separates the control-region sampler's random stream from the main one
SUBSET_STREAM = 0x5B5E7  # the fixed subset's random stream
WINDOW_STREAM = 0x3170  # the in-window permutations' random stream
UNIT = schema.OBJECTS_CHUNK  # jets per shuffle unit: one chunk of the constituent tables
DEFAULT_WINDOW = 4096  # jets held for mixing (32 units; ~12 MB of model inputs)
CHUNK_CACHE = 2**20  # HDF5 chunk cache per dataset, bytes (bigger caches measured slower)


def _feature_index(table: schema.ObjectTable, features: Sequence[str]) -> np.ndarray:
    stored = table.features
    assert table.dtype.fields is not None  # a structured (schema) dtype
    # The dense view below relies on the schema's layout: ``valid`` then float32 features, packed.
    off = table.dtype.fields[stored[0]][1]
    for i, name in enumerate(stored):
        dt, o = table.dtype.fields[name][:2]
        assert dt == np.float32 and o == off + 4 * i, f"{table.name}.{name}: not a packed float32 feature"
    return np.array([stored.index(f) for f in features])


_INPUT_INDEX = {m.name: _feature_index(schema.TABLES[m.table], m.features) for m in schema.MODEL_INPUTS if m.slots}


def dense(table: np.ndarray, name: str) -> np.ndarray:
    """(N, slots) structured table → (N, slots, features) float32 in the model's feature order.

    A strided float32 view over the packed features and one fancy-index gather: ~3× faster than
    copying field by field.
    """
    table = np.ascontiguousarray(table)
    dt = table.dtype
    assert dt.names is not None and dt.fields is not None  # a structured (schema) dtype
    first = dt.names[1]
    n_feat = len(dt.names) - 1
    view = np.ndarray(
        shape=(*table.shape, n_feat), dtype="<f4", buffer=table, offset=dt.fields[first][1],
        strides=(*table.strides, 4),
    )  # fmt: skip
    return view[..., _INPUT_INDEX[name]]


@dataclass
class _File:
    path: Path
    f: Any  # h5py.File
    n: int
    start: int  # first global index
    mode: str  # "dataset" | "raw" | "legacy"
    scaling: dict[str, Any] | None
    readers: dict[str, SliceReader] = field(default_factory=dict)


def _paths(spec: PathLike | Sequence[PathLike]) -> list[Path]:
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for it in items:
        try:
            out += expand(str(it), (".h5", ".hdf5"), directories=True)
        except InputMissing as e:
            raise FileNotFoundError(str(e)) from e
    if not out:
        raise FileNotFoundError(f"no HDF5 file in {spec}")
    return out


class _Source:
    """A list of files read as one virtual table of ``n`` jets."""

    def __init__(self, spec: PathLike | Sequence[PathLike], role: str):
        import h5py
        import hdf5plugin  # noqa: F401 - registers the lz4 filter

        self.role = role
        self.files: list[_File] = []
        start = 0
        try:
            for p in _paths(spec):
                try:
                    attrs = schema.check_complete(p)
                except schema.NotAcceptedError as e:
                    raise ValueError(str(e)) from e
                kind = attrs.get(schema.A_KIND)
                scaled = attrs.get(schema.A_SCALED)
                if kind == "dataset":
                    mode = "dataset"
                    check_same_build(p)  # exit 12 on a directory left with files of two builds
                elif kind == "shard":
                    mode = "legacy" if scaled == LEGACY_NAME else "raw"
                    if mode == "raw" and is_scaled(scaled):
                        raise ValueError(f"{p}: shard scaled with unknown scaling {scaled!r}")
                else:
                    raise ValueError(f"{p}: a {kind!r} file; the reader reads datasets and shards")
                f = h5py.File(p, "r", rdcc_nbytes=CHUNK_CACHE)
                readers = {name: SliceReader(f[name]) for name in ("jets", *schema.TABLES)}
                n = len(readers["jets"])
                self.files.append(_File(p, f, n, start, mode, attrs.get(schema.A_SCALING), readers))
                start += n
        except BaseException:
            self.close()
            raise
        self.n = start
        self._starts = np.array([fl.start for fl in self.files])
        self._balance: dict[int, float] | None = None
        self._buf: dict[str, np.ndarray] | None = None

    def close(self) -> None:
        for fl in self.files:
            fl.f.close()
        self.files = []

    def buffers(self, rows: int) -> dict[str, np.ndarray]:
        if self._buf is None or len(self._buf["clusters"]) < rows:
            self._buf = {t.name: np.empty((rows, t.slots), t.dtype) for t in schema.OBJECT_TABLES}
        return self._buf

    def units(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file index, first row, rows) of every shuffle unit, files in order."""
        f_idx, start, size = [], [], []
        for i, fl in enumerate(self.files):
            a = np.arange(0, fl.n, UNIT)
            f_idx.append(np.full(len(a), i))
            start.append(a)
            size.append(np.minimum(UNIT, fl.n - a))
        return np.concatenate(f_idx), np.concatenate(start), np.concatenate(size)

    def pieces(self, start: int, size: int) -> list[tuple[_File, int, int]]:
        """(file, a, b) slices covering global indices start … start+size−1, modulo n (wrapping,
        and tiling when size > n)."""
        out = []
        pos = start % self.n
        left = size
        while left > 0:
            i = int(np.searchsorted(self._starts, pos, side="right")) - 1
            fl = self.files[i]
            a = pos - fl.start
            b = min(fl.n, a + left)
            if b > a:
                out.append((fl, a, b))
            left -= b - a
            pos = (fl.start + b) % self.n
        return out

    def balance_factors(self) -> dict[int, float]:
        """Per-label factor on mcEventWeight giving the reference's rescaling, for files without a
        ``weight_balanced`` column (shards): main — QCD total = signal total; CR — MC total = data total."""
        if self._balance is None:
            tot: dict[int, float] = {}
            for fl in self.files:
                ds = fl.f["jets"]
                for a in range(0, fl.n, 1 << 20):
                    j = ds.fields(["label", "mcEventWeight"])[a : a + (1 << 20)]
                    for lab in np.unique(j["label"]):
                        tot[int(lab)] = tot.get(int(lab), 0.0) + float(j["mcEventWeight"][j["label"] == lab].sum())
            ref = int(schema.Label.SIGNAL if self.role == "main" else schema.Label.DATA)
            qcd = int(schema.Label.QCD)
            f = tot.get(ref, 0.0) / tot[qcd] if tot.get(qcd) and tot.get(ref) else 1.0
            self._balance = {qcd: f}
        return self._balance


class _Mixer:
    """The mixed order of one source's jets (or of its fixed subset) for each key (main: the epoch;
    control region: the pass), read a window at a time."""

    def __init__(self, src: _Source, seed: int, stream: tuple[int, ...], window: int, subset: int | None):
        self.src, self.seed, self.stream = src, seed, stream
        self.u_file, self.u_start, self.u_size = src.units()
        if subset is not None and subset < 1:
            raise ValueError("subset must be ≥ 1 jet")
        self.subset = subset if subset is not None and subset < src.n else None
        if self.subset is None:
            self.u_sel = self.u_size.copy()
        else:  # exactly ``subset`` jets, spread over the units as a uniform draw would
            rng = np.random.default_rng([seed, SUBSET_STREAM, *stream])
            self.u_sel = rng.multivariate_hypergeometric(self.u_size, self.subset, method="marginals")
        self.m = int(self.u_sel.sum())
        self.wu = max(1, window // UNIT)
        self._layout_key: tuple[int, ...] | None = None
        self._layout: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64), np.zeros(1, np.int64))
        self._win: tuple[tuple[int, ...], int, dict[str, np.ndarray], np.ndarray] | None = None
        self._tables: dict[str, np.ndarray] | None = None
        self._bounds = np.zeros(1, np.int64)

    def digest(self) -> str | None:
        """Identifies the subset (None: all jets), so that a resumed run can check it draws the same."""
        if self.subset is None:
            return None
        return hashlib.sha256(self.u_sel.astype("<i8").tobytes()).hexdigest()[:16]

    def layout(self, key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(units in ``key``'s order, first position of each window)."""
        if self._layout_key != key:
            perm = np.random.default_rng([self.seed, *self.stream, *key]).permutation(len(self.u_size))
            perm = perm[self.u_sel[perm] > 0]
            # Windows of equal unit counts (no small last window whose batches would be poorly mixed).
            n_win = -(-len(perm) // self.wu)
            self._bounds = np.linspace(0, len(perm), n_win + 1).astype(np.int64)
            counts = np.add.reduceat(self.u_sel[perm], self._bounds[:-1]) if len(perm) else np.zeros(0, np.int64)
            self._layout_key, self._layout = key, (perm, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        return self._layout

    def _selected(self, unit: int) -> np.ndarray | None:
        """Rows of ``unit`` in the subset (None: all of them)."""
        size, sel = int(self.u_size[unit]), int(self.u_sel[unit])
        if sel == size:
            return None
        rng = np.random.default_rng([self.seed, SUBSET_STREAM, *self.stream, unit])
        return np.sort(rng.choice(size, sel, replace=False))

    def window(self, key: tuple[int, ...], w: int, prepare: Callable[..., dict[str, Any]]):
        """Window ``w`` of ``key``'s order: its units' raw constituent rows (one read per file and
        table, in file order, into buffers reused from window to window; scaled in place), their
        per-jet outputs, and the order that mixes the selected jets."""
        if self._win is not None and self._win[:2] == (key, w):
            return self._win[2], self._win[3]
        perm, _ = self.layout(key)
        units = np.sort(perm[self._bounds[w] : self._bounds[w + 1]])
        if self._tables is None:
            self._tables = {t.name: np.empty((self.wu * UNIT, t.slots), t.dtype) for t in schema.OBJECT_TABLES}
        small: dict[str, list[np.ndarray]] = {}
        keep: list[np.ndarray] = []
        pos = 0
        for fi in np.unique(self.u_file[units]):
            us = units[self.u_file[units] == fi]
            fl = self.src.files[int(fi)]
            ranges = [(int(self.u_start[u]), int(self.u_start[u] + self.u_size[u])) for u in us]
            rows = sum(b - a for a, b in ranges)
            # One read per unit (a union selection in one call is ~5× slower in HDF5 for compound rows).
            jets = np.empty(rows, fl.readers["jets"].dtype)
            tables = {n: v[pos : pos + rows] for n, v in self._tables.items()}
            o = 0
            for a, b in _merged(ranges):
                fl.readers["jets"].read(a, b, jets[o:])
                for n, v in tables.items():
                    fl.readers[n].read(a, b, v[o:])
                o += b - a
            for name, v in prepare(fl, jets, tables).items():
                small.setdefault(name, []).append(v)
            o = pos
            for u in us:
                sel = self._selected(int(u))
                keep.append(o + (np.arange(self.u_size[u]) if sel is None else sel))
                o += int(self.u_size[u])
            pos += rows
        data = {**self._tables, **{k: np.concatenate(v) for k, v in small.items()}}
        chosen = np.concatenate(keep) if keep else np.empty(0, np.int64)
        rng = np.random.default_rng([self.seed, WINDOW_STREAM, *self.stream, *key, w])
        order = chosen[rng.permutation(len(chosen))]
        self._win = (key, w, data, order)
        return data, order

    def rows(self, key: tuple[int, ...], start: int, size: int, prepare) -> dict[str, np.ndarray]:
        """Jets ``start`` … ``start + size − 1`` (modulo the jet count) of ``key``'s order, fresh arrays."""
        _, starts = self.layout(key)
        parts = []
        pos, left = start % self.m, size
        while left > 0:
            w = int(np.searchsorted(starts, pos, side="right")) - 1
            data, order = self.window(key, w, prepare)
            a = pos - int(starts[w])
            b = min(int(starts[w + 1] - starts[w]), a + left)
            idx = order[a:b]
            part: dict[str, np.ndarray] = {}
            for name, v in data.items():
                if name in schema.TABLES:
                    # Gather whole records (memcpy), then the model's feature order, as contiguous reads do.
                    buf = self.src.buffers(len(idx))[name][: len(idx)]
                    np.take(_void(v), idx, axis=0, out=_void(buf), mode="clip")
                    for m in _INPUTS_OF[name]:
                        part[m] = dense(buf, m)
                else:
                    part[name] = v[idx]
            parts.append(part)
            left -= b - a
            pos = (pos + b - a) % self.m
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``[a, b)`` ranges with touching neighbours joined (fewer, longer reads)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _void(a: np.ndarray) -> np.ndarray:
    """Structured rows as opaque records: gathers become plain memcpy."""
    return a.view(np.dtype((np.void, a.dtype.itemsize)))


_INPUTS_OF = {t.name: [m.name for m in schema.MODEL_INPUTS if m.table == t.name] for t in schema.OBJECT_TABLES}


class DatasetReader:
    """Iterate over batches of a training dataset, one epoch per ``iter()``; resumable.

    Args:
        main: dataset file(s) (``main_train.h5``), or shard files / directories / wildcards.
        cr: control-region file(s) (``cr_train.h5``), optional; one CR batch comes with each main batch.
        batch_size: jets per batch (main and CR).
        seed: seeds the per-epoch batch order and grid offset and the CR sampler.
        drop_last: drop the partial batch of each epoch (otherwise it is yielded, smaller).
        weight / cr_weight: ``jets`` column used as the weight (``mcEventWeight``: what the reference
            trained the classifier with; ``weight_balanced``: its rescaled weight, which it used for
            the adversary; ``weight_xs``). Shards lack the derived columns: they are computed from
            ``mcEventWeight`` over all given files.
        jet_fields: extra ``jets`` columns to add to each batch (e.g. ``eventNumber``, ``llp_mH``).
        shuffle: False reads batches in file order with no offset (evaluation).
        shuffle_window: jets held for mixing (see the module docstring); 0: contiguous slices in a
            shuffled order (only for inputs that are shuffled already, e.g. by the build).
        subset / cr_subset: train on a fixed, seeded set of exactly this many main / control-region
            jets (None: all), the same every epoch.
        prefetch: batches prepared ahead in a background thread (0: none).
        scaling: scaling for raw shards when no dataset gives its constants (default: crbatch's).
    """

    def __init__(
        self,
        main: PathLike | Sequence[PathLike],
        cr: PathLike | Sequence[PathLike] | None = None,
        *,
        batch_size: int = 512,
        seed: int = 0,
        drop_last: bool = False,
        weight: str = "mcEventWeight",
        cr_weight: str = "weight_balanced",
        jet_fields: Sequence[str] = (),
        shuffle: bool = True,
        prefetch: int = 1,
        scaling: ScalingConfig | None = None,
        shuffle_window: int = DEFAULT_WINDOW,
        subset: int | None = None,
        cr_subset: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        if shuffle_window < 0:
            raise ValueError("shuffle_window must be ≥ 0")
        if (subset is not None or cr_subset is not None) and not (shuffle and shuffle_window):
            raise ValueError("a fixed subset needs shuffle=True and shuffle_window > 0")
        self.batch_size, self.seed, self.drop_last, self.shuffle = batch_size, seed, drop_last, shuffle
        self.weight, self.cr_weight, self.jet_fields = weight, cr_weight, tuple(jet_fields)
        self.prefetch = prefetch
        self._active: Generator[dict[str, Any], None, None] | None = None
        self.main = _Source(main, "main")
        self.cr: _Source | None = None
        try:
            if cr is not None:
                self.cr = _Source(cr, "cr")
            self._scaling = self._resolve_scaling(scaling)
            assert schema.DATASET_JET_DTYPE.names is not None
            for name in self.jet_fields:
                if name not in schema.DATASET_JET_DTYPE.names:
                    raise ValueError(f"jet_fields: no jets column {name!r}")
            if self.main.n == 0:
                raise ValueError(f"{self.main.files[0].path}: no jets")
            if self.cr is not None and self.cr.n == 0:
                raise ValueError(f"{self.cr.files[0].path}: no jets in the control region")
            mixing = shuffle and shuffle_window > 0
            self._mix = _Mixer(self.main, seed, (), shuffle_window, subset) if mixing else None
            self._cr_mix = (
                _Mixer(self.cr, seed, (CR_STREAM,), shuffle_window, cr_subset) if mixing and self.cr else None
            )
        except BaseException:
            self.close()
            raise
        self._epoch, self._pos = 0, 0
        self._cr_cache: tuple[int, int, np.ndarray] | None = None

    # --- set-up ----------------------------------------------------------------------------------
    def _resolve_scaling(self, requested: ScalingConfig | None) -> ScalingConfig:
        files = self.main.files + (self.cr.files if self.cr else [])
        consts = {repr(sorted(fl.scaling.items())): fl.scaling for fl in files if fl.mode == "dataset" and fl.scaling}
        if len(consts) > 1:
            raise ValueError("the given datasets were scaled differently; read them with separate readers")
        modes = {fl.mode for fl in files}
        if "legacy" in modes and len(modes) > 1:
            log.warning("mixing legacy (reference-scaled) files with crbatch-scaled ones: their scalings differ")
        if consts:
            ds_scaling = ScalingConfig.from_constants(next(iter(consts.values())))
            if requested is not None and requested.constants() != ds_scaling.constants() and "raw" in modes:
                log.warning("raw shards are scaled like the datasets given with them, not as requested")
            return ds_scaling
        return requested or ScalingConfig()

    @property
    def scaling_constants(self) -> dict[str, Any] | None:
        """The scaling of what this reader yields (None for legacy reference-scaled files only)."""
        if all(fl.mode == "legacy" for fl in self.main.files):
            return None
        return self._scaling.constants()

    @property
    def n_jets(self) -> int:
        return self.main.n

    @property
    def cr_jets(self) -> int:
        return self.cr.n if self.cr is not None else 0

    @property
    def jets_per_epoch(self) -> int:
        """Main jets read per epoch (the subset's size, or all)."""
        return self._mix.m if self._mix is not None else self.main.n

    def _cr_m(self) -> int:
        assert self.cr is not None
        return self._cr_mix.m if self._cr_mix is not None else self.cr.n

    def __len__(self) -> int:
        full, rem = divmod(self.jets_per_epoch, self.batch_size)
        return full + (1 if rem and not self.drop_last else 0)

    @property
    def epoch(self) -> int:
        return self.state()["epoch"]

    # --- position --------------------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """Where the next batch comes from: resume with :meth:`restore` (also in a new process)."""
        epoch, pos = self._epoch, self._pos
        if pos >= len(self):
            epoch, pos = epoch + 1, 0
        return {"epoch": epoch, "position": pos, "seed": self.seed, "batch_size": self.batch_size,
                "n_jets": self.main.n, "cr_jets": self.cr_jets, **self.subset_state()}  # fmt: skip

    def subset_state(self) -> dict[str, Any]:
        """The mixing and the fixed subsets (sizes and digests): what must match to resume exactly."""
        mix, cr = self._mix, self._cr_mix
        return {"shuffle_window": mix.wu * UNIT if mix else 0,
                "subset": mix.subset if mix else None, "subset_digest": mix.digest() if mix else None,
                "cr_subset": cr.subset if cr else None, "cr_subset_digest": cr.digest() if cr else None}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state`); the reader must read the same files the same way."""
        mine = {**self.subset_state(), "seed": self.seed, "batch_size": self.batch_size, "n_jets": self.main.n,
                "cr_jets": self.cr_jets}  # fmt: skip
        for k, v in mine.items():
            if k in state and state[k] != v:
                raise ValueError(f"cannot restore: the state has {k}={state[k]}, this reader {v}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"cannot restore: position {state['position']} outside 0…{len(self)}")
        self._epoch, self._pos = int(state["epoch"]), int(state["position"])

    def set_epoch(self, epoch: int) -> None:
        self._epoch, self._pos = epoch, 0

    # --- batches ---------------------------------------------------------------------------------
    def _main_rows(self, epoch: int, k: int) -> dict[str, Any]:
        """Batch ``k`` of ``epoch``."""
        if self._mix is not None:
            start = k * self.batch_size
            size = min(self.batch_size, self._mix.m - start)
            return self._mix.rows((epoch,), start, size, self._reader_for(self.main, self.weight))
        start, size = self._ranges[k]
        return self._read(self.main, start, size, self.weight)

    def _cr_rows(self, step: int, size: int) -> dict[str, Any]:
        """The control-region batch of global step ``step``."""
        assert self.cr is not None
        if self._cr_mix is not None:
            per_cycle = max(1, self._cr_mix.m // self.batch_size)
            cycle, j = divmod(step, per_cycle)
            return self._cr_mix.rows((cycle,), j * self.batch_size, size, self._reader_for(self.cr, self.cr_weight))
        cs, csize = self._cr_range(step, size)
        return self._read(self.cr, cs, csize, self.cr_weight)

    def _reader_for(self, src: _Source, weight: str) -> Callable[..., dict[str, Any]]:
        return lambda fl, jets, tables: self._prepare(src, fl, jets, tables, weight)

    def _epoch_plan(self, epoch: int) -> tuple[int, np.ndarray]:
        if not self.shuffle:
            return 0, np.arange(len(self))
        rng = np.random.default_rng([self.seed, epoch])
        return self._offset(rng, self.main.n), rng.permutation(len(self))

    def _offset(self, rng: np.random.Generator, n: int) -> int:
        """Random start of the batch grid; a multiple of the HDF5 chunk when the batch size is one,
        so that no chunk is decompressed twice for two batches."""
        align = schema.OBJECTS_CHUNK if self.batch_size % schema.OBJECTS_CHUNK == 0 and n > self.batch_size else 1
        return int(rng.integers(-(-n // align))) * align % n

    def batch_ranges(self, epoch: int) -> list[tuple[int, int]]:
        """(start, size) in global indices (modulo n) of each batch of ``epoch``, in yield order."""
        offset, order = self._epoch_plan(epoch)
        full = self.main.n // self.batch_size
        out = []
        for k in order:
            size = self.batch_size if k < full else self.main.n - full * self.batch_size
            out.append((offset + int(k) * self.batch_size, size))
        return out

    def _cr_range(self, step: int, size: int) -> tuple[int, int]:
        assert self.cr is not None
        per_cycle = max(1, self.cr.n // self.batch_size)
        cycle, j = divmod(step, per_cycle)
        if self._cr_cache is None or self._cr_cache[0] != cycle:
            rng = np.random.default_rng([self.seed, CR_STREAM, cycle])
            self._cr_cache = (cycle, self._offset(rng, self.cr.n), rng.permutation(per_cycle))
        _, offset, perm = self._cr_cache
        return offset + int(perm[j]) * self.batch_size, size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, first = self._epoch, self._pos
        if first >= len(self):
            epoch, first = epoch + 1, 0
        steps = len(self)
        if self._mix is None:
            self._ranges = self.batch_ranges(epoch)

        def produce() -> Generator[dict[str, Any], None, None]:
            for k in range(first, steps):
                batch = self._main_rows(epoch, k)
                if self.cr is not None:
                    batch["cr"] = self._cr_rows(epoch * steps + k, len(batch["label"]))
                yield batch

        # An abandoned earlier iteration must stop first: its producer shares the read buffers.
        if self._active is not None:
            self._active.close()
        gen = _prefetched(produce(), self.prefetch) if self.prefetch > 0 else produce()
        self._active = gen
        self._epoch, self._pos = epoch, first
        try:
            for k, batch in enumerate(gen, first):
                self._pos = k + 1
                yield batch
        finally:
            gen.close()
            if self._active is gen:
                self._active = None

    def _read(self, src: _Source, start: int, size: int, weight: str) -> dict[str, Any]:
        parts = [self._read_piece(src, fl, a, b, weight) for fl, a, b in src.pieces(start, size)]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _read_piece(self, src: _Source, fl: _File, a: int, b: int, weight: str) -> dict[str, Any]:
        # Read into buffers reused from batch to batch (only the producer reads; what is yielded
        # is always a fresh array), so no memory is allocated for the raw rows.
        buf = src.buffers(max(self.batch_size, b - a))
        jets = fl.readers["jets"].read(a, b)
        tables = {t.name: fl.readers[t.name].read(a, b, buf[t.name]) for t in schema.OBJECT_TABLES}
        out = self._prepare(src, fl, jets, tables, weight)
        for m in schema.MODEL_INPUTS:
            if m.slots:
                out[m.name] = dense(tables[m.table], m.name)
        return out

    def _prepare(
        self, src: _Source, fl: _File, jets: np.ndarray, tables: dict[str, np.ndarray], weight: str
    ) -> dict[str, Any]:
        """Scale ``tables`` in place as ``fl`` needs (raw: crbatch.scaling; legacy: NaN/inf → 0, as the
        reference's loader) and return the per-jet outputs: ``jet``, ``label``/``target``, ``weight``, fields."""
        if fl.mode == "raw":
            _, jet_pt = scale_tables({"jets": jets, **tables}, self._scaling, inplace=True)
        elif fl.mode == "legacy":
            jet_pt = jets["pt"]
            for t in schema.OBJECT_TABLES:
                v = float_view(tables[t.name])
                np.nan_to_num(v, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            jet_pt = jets["pt_scaled"]
        out: dict[str, Any] = {}
        out["jet"] = np.stack([jet_pt, jets["eta"], jets["phi"]], axis=-1).astype(np.float32)
        if fl.mode == "legacy":
            np.nan_to_num(out["jet"], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        label = jets["label"].astype(np.int64)
        if src.role == "main":
            out["label"] = label
        else:
            out["target"] = (label == int(schema.Label.DATA)).astype(np.float32)
        out["weight"] = self._weight(src, jets, weight)
        assert jets.dtype.names is not None  # a structured (schema) table
        for name in self.jet_fields:
            out[name] = (
                jets[name].copy() if name in jets.dtype.names else np.zeros(len(jets), schema.DATASET_JET_DTYPE[name])
            )
        return out

    def _weight(self, src: _Source, jets: np.ndarray, weight: str) -> np.ndarray:
        assert jets.dtype.names is not None  # a structured (schema) table
        if weight in jets.dtype.names:
            return jets[weight].astype(np.float32)
        w = jets["mcEventWeight"].astype(np.float32)
        if weight == "weight_balanced":
            for lab, f in src.balance_factors().items():
                w[jets["label"] == lab] *= np.float32(f)
        elif weight != "weight_xs":
            raise KeyError(f"no weight column {weight!r} in the jets table")
        return w

    # --- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
        self.main.close()
        if self.cr is not None:
            self.cr.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_END = object()


def _prefetched(gen: Iterator[Any], depth: int) -> Generator[Any, None, None]:
    """Run ``gen`` in a background thread, ``depth`` items ahead (h5py releases nothing, but the
    numpy work and the consumer's own work overlap). Exceptions are re-raised in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in gen:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(e)

    t = threading.Thread(target=work, name="crbatch-reader-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
