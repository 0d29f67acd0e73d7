"""Streaming reader: batches for training from datasets far larger than memory.

FTAG-style "weak shuffling": the build already shuffled the jets on write, so a contiguous slice
is a random sample; the reader only reads contiguous slices (fast, one HDF5 hyperslab per table)
and shuffles the ORDER of the batches each epoch (seeded with seed and epoch). The batch grid is
also rotated by a random offset each epoch, so batches are not the same groups of jets every epoch
and, with ``drop_last``, not always the same jets are dropped. Every jet is in exactly one batch
per epoch (``drop_last=False``).

Batches are dicts: the model inputs in the model's order (``schema.MODEL_INPUTS``: ``clusters``
(B,30,12), ``tracks`` (B,20,10), ``msegs`` (B,30,6), ``jet`` (B,3), float32), ``label`` (int64),
``weight`` (float32), any requested ``jet_fields``, and — when a control-region file is given —
``cr``: a dict with the same inputs, ``target`` (float32, 1 = data, 0 = MC) and ``weight``, of the
same batch size, drawn by an independent contiguous-slice sampler that cycles through the control
region (reshuffled at each pass) regardless of the main epoch.

The position is ``(epoch, batches done)``: :meth:`state` / :meth:`restore` resume exactly, because
each batch (main and control region) is a pure function of the seed, the epoch and its position.

Reads crbatch datasets (already scaled: read as is), raw shards (scaled on the fly with
:mod:`crbatch.scaling`, using the constants of the datasets read alongside, if any) and legacy
shards whose features the reference already scaled (``scaled = "legacy-reference"``: as is).
Memory: a few batches (the prefetch queue), never the dataset.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import InputMissing
from ..inputs import expand
from ..scaling import LEGACY_NAME, ScalingConfig, is_scaled, scale_tables
from .consistency import check_same_build
from .h5io import SliceReader

log = logging.getLogger(__name__)

PathLike = str | Path
CR_STREAM = 0x43520000  # separates the control-region sampler's random stream from the main one
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
        if self._buf is None:
            self._buf = {t.name: np.empty((rows, t.slots), t.dtype) for t in schema.OBJECT_TABLES}
        return self._buf

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
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
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

    def __len__(self) -> int:
        full, rem = divmod(self.main.n, self.batch_size)
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
                "n_jets": self.main.n, "cr_jets": self.cr_jets}  # fmt: skip

    def restore(self, state: dict[str, int]) -> None:
        """Continue from ``state`` (from :meth:`state`); the reader must read the same files the same way."""
        for k in ("seed", "batch_size", "n_jets", "cr_jets"):
            if k in state and state[k] != getattr(self, k):
                raise ValueError(f"cannot restore: the state has {k}={state[k]}, this reader {getattr(self, k)}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"cannot restore: position {state['position']} outside 0…{len(self)}")
        self._epoch, self._pos = int(state["epoch"]), int(state["position"])

    def set_epoch(self, epoch: int) -> None:
        self._epoch, self._pos = epoch, 0

    # --- batches ---------------------------------------------------------------------------------
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
        ranges = self.batch_ranges(epoch)
        steps = len(self)

        def produce() -> Generator[dict[str, Any], None, None]:
            for k in range(first, len(ranges)):
                start, size = ranges[k]
                batch = self._read(self.main, start, size, self.weight)
                if self.cr is not None:
                    cs, csize = self._cr_range(epoch * steps + k, size)
                    batch["cr"] = self._read(self.cr, cs, csize, self.cr_weight)
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
        buf = src.buffers(self.batch_size)
        jets = fl.readers["jets"].read(a, b)
        tables = {t.name: fl.readers[t.name].read(a, b, buf[t.name]) for t in schema.OBJECT_TABLES}
        if fl.mode == "raw":
            tables, jet_pt = scale_tables({"jets": jets, **tables}, self._scaling, inplace=True)
        elif fl.mode == "legacy":
            jet_pt = jets["pt"]
        else:
            jet_pt = jets["pt_scaled"]
        out: dict[str, Any] = {}
        for m in schema.MODEL_INPUTS:
            if m.slots:
                out[m.name] = dense(tables[m.table], m.name)
        out["jet"] = np.stack([jet_pt, jets["eta"], jets["phi"]], axis=-1).astype(np.float32)
        if fl.mode == "legacy":  # the reference's loader: NaN/inf → 0
            for m in schema.MODEL_INPUTS:
                np.nan_to_num(out[m.name], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
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
