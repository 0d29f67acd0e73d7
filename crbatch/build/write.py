"""Passes 2 and 3 of the build: a memory-bounded global shuffle.

Pass 2 streams every shard once, block by block: selects, weights and scales the jets, and appends
each selected jet to a temporary bucket chosen by the top bits of its shuffle key. A bucket holds
one fixed-size record per jet (sort key, dataset jets row, the ``valid`` masks of its constituent
slots) and, per constituent table, only the valid objects (most slots are padding: this makes the
temporary data ~3× smaller than the padded tables). Pass 3 loads one bucket at a time, sorts it by
key, re-pads the constituents and appends them to the output. Buckets are key ranges, so the
output is globally sorted by the key: a seeded uniform shuffle that does not depend on file order,
on the number of shards or on the bucket size.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shutil
import socket
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .. import schema
from ..scaling import padding_rows, scale_tables
from . import select
from .config import BuildConfig
from .h5io import SliceReader, SliceWriter
from .plan import Plan, Shard, final_mask, open_h5, reading

log = logging.getLogger(__name__)

TABLE_NAMES = tuple(t.name for t in schema.OBJECT_TABLES)
JET_RECORD = np.dtype(
    [("key", "<u8"), ("jets", schema.DATASET_JET_DTYPE)]
    + [(f"valid_{t.name}", "?", (t.slots,)) for t in schema.OBJECT_TABLES]
)
PADDED_BYTES = schema.DATASET_JET_DTYPE.itemsize + sum(t.dtype.itemsize * t.slots for t in schema.OBJECT_TABLES)
TMP_DIR_PREFIX = ".build."
MAX_OPEN_FILES = 512  # bucket files kept open in pass 2 (4 per bucket)
WRITE_ROWS = 16384  # rows per HDF5 write in pass 3


@dataclass
class Sums:
    """Per (role, split, data_type): jets and Σ of each weight column."""

    n: int = 0
    raw: float = 0.0
    xs: float = 0.0
    balanced: float = 0.0  # before the pass-3 factor: Σ of the base weight
    files: set[int] = field(default_factory=set)  # shard indices that contributed

    def add(self, jets: np.ndarray) -> None:
        self.n += len(jets)
        self.files.update(np.unique(jets["source"]).tolist())
        self.raw += float(jets["mcEventWeight"].sum(dtype=np.float64))
        self.xs += float(jets["weight_xs"].sum(dtype=np.float64))
        self.balanced += float(jets["weight_balanced"].sum(dtype=np.float64))


class Buckets:
    """The temporary bucket files of one build: per (role, split, bucket) a jets file and one file
    of packed valid objects per constituent table."""

    def __init__(self, directory: Path, n_buckets: dict[tuple[str, str], int], parts: list[Path] | None = None):
        self.directory = directory  # where this process appends
        self.parts = parts or [directory]  # where load() reads: one directory per pass-2 worker
        self.n_buckets = n_buckets
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self._open: OrderedDict[Path, BinaryIO] = OrderedDict()

    def path(self, role: str, split: str, b: int, what: str) -> Path:
        return self.directory / f"{role}_{split}_{b:05d}.{what}"

    def _write(self, p: Path, arr: np.ndarray) -> None:
        fh = self._open.get(p)
        if fh is None:
            if len(self._open) >= MAX_OPEN_FILES:
                self._open.popitem(last=False)[1].close()
            fh = self._open[p] = open(p, "ab")  # noqa: SIM115 - closed in close()
        else:
            self._open.move_to_end(p)
        fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))  # type: ignore[arg-type]  # numpy: __buffer__ on 3.12+

    def append(self, role: str, split: str, b: int, jrec: np.ndarray, objects: dict[str, np.ndarray]) -> None:
        self._write(self.path(role, split, b, "jets"), jrec)
        for name, arr in objects.items():
            if len(arr):
                self._write(self.path(role, split, b, name), arr)
        self.counts[(role, split, b)] += len(jrec)

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()
        self._open.clear()

    def sizes(self, role: str, split: str, b: int) -> dict[str, int]:
        """Bytes of each of the bucket's files (summed over the workers' parts)."""
        out = {}
        for what in ("jets", *TABLE_NAMES):
            files = (part / self.path(role, split, b, what).name for part in self.parts)
            out[what] = sum(f.stat().st_size for f in files if f.exists())
        return out

    def reserve(self, outputs: list[tuple[str, str]], arena: Arena) -> None:
        """Size ``arena`` for the largest bucket of ``outputs`` before pass 3 starts."""
        big: dict[str, int] = defaultdict(int)
        for role, split in outputs:
            for b in range(self.n_buckets[(role, split)]):
                for what, size in self.sizes(role, split, b).items():
                    big[what] = max(big[what], size)
        rows = big["jets"] // JET_RECORD.itemsize
        for what, size in big.items():
            arena.reserve(f"load_{what}", size)
        arena.reserve("jets", rows * schema.DATASET_JET_DTYPE.itemsize)
        arena.reserve("objs", max(big[t] for t in TABLE_NAMES))
        arena.reserve("table", rows * max(t.dtype.itemsize * t.slots for t in schema.OBJECT_TABLES))

    def load(self, role: str, split: str, b: int, arena: Arena) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """The bucket's jet records and packed objects (in ``arena`` buffers), from every worker's
        part in part order, so records and objects stay aligned; the files are deleted."""
        parts = [part for part in self.parts if (part / self.path(role, split, b, "jets").name).exists()]
        if not parts:
            return None
        out = {}
        for what, dtype in (("jets", JET_RECORD), *((t.name, t.dtype) for t in schema.OBJECT_TABLES)):
            files = [part / self.path(role, split, b, what).name for part in parts]
            sizes = [f.stat().st_size if f.exists() else 0 for f in files]
            buf = arena.raw(f"load_{what}", sum(sizes))
            pos = 0
            for f, size in zip(files, sizes, strict=True):
                if size:
                    with open(f, "rb") as fh:
                        fh.readinto(memoryview(buf[pos : pos + size]))  # type: ignore[arg-type]  # numpy: __buffer__ on 3.12+
                    f.unlink()
                pos += size
            out[what] = buf.view(dtype)
        jrec = out.pop("jets")
        return jrec, out


def n_buckets(expected: int, cfg: BuildConfig) -> int:
    """Buckets for ``expected`` jets so that one re-padded bucket is about ``bucket_mb``."""
    return max(1, math.ceil(1.15 * expected * PADDED_BYTES / (cfg.bucket_mb * 2**20)))


@contextlib.contextmanager
def temp_dir(output_dir: Path) -> Iterator[Path]:
    """A hidden work directory in the output directory (same file system), removed on exit.

    Its name (``.build.<host>.<pid>.<rand>.crbatch-tmp``) is never read as a dataset, and lets a
    later build on the same host remove the leftovers of a killed one.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(output_dir)
    d = output_dir / f"{TMP_DIR_PREFIX}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{schema.TMP_MARK}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _remove_stale(output_dir: Path) -> None:
    host = socket.gethostname()
    for d in output_dir.glob(f"{TMP_DIR_PREFIX}*{schema.TMP_MARK}"):
        parts = d.name[len(TMP_DIR_PREFIX) : -len(schema.TMP_MARK)].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            log.info("removing %s left by a dead build", d)
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def as_void(a: np.ndarray) -> np.ndarray:
    """The same memory as opaque fixed-size records. numpy copies structured records field by
    field; as void records, gathers and masked copies are plain memcpy (several times faster)."""
    return a.view(np.dtype((np.void, a.dtype.itemsize)))


def take(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[index]`` (integer or boolean index) for structured arrays, fast."""
    return as_void(a)[index].view(a.dtype)


def take_into(a: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``a[index]`` (integer index, along axis 0) written into ``out``; as void records with
    ``mode="clip"`` (no bounds buffering) this is ~5× faster than indexing into fresh memory."""
    np.take(as_void(a), index, axis=0, out=as_void(out), mode="clip")
    return out


class Arena:
    """Named scratch buffers reused from block to block and bucket to bucket.

    Fresh memory costs a page fault per page on first touch (slow on virtual machines) and arrays
    of varying size fragment the heap, so a build's memory would creep up with the number of
    buckets. Reusing buffers keeps it at the high-water mark of the largest block / bucket. An
    array from :meth:`get` is valid until the next :meth:`get` of the same name.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def reserve(self, name: str, nbytes: int) -> None:
        """Allocate ``name`` at its final size up front (no growth steps, no fragmentation)."""
        if name not in self._bufs or len(self._bufs[name]) < nbytes:
            self._bufs.pop(name, None)
            self._bufs[name] = np.empty(max(nbytes, 4096), np.uint8)

    def raw(self, name: str, nbytes: int) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or len(buf) < nbytes:
            size = max(nbytes, int(len(buf) * 1.25) if buf is not None else 0, 4096)
            buf = self._bufs[name] = np.empty(size, np.uint8)
        return buf[:nbytes]

    def get(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        dtype = np.dtype(dtype)
        return self.raw(name, int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)


def ragged_index(counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in a packed array (row-major runs of ``counts[i]`` items per row) of the items of
    ``rows``, in the order of ``rows``."""
    starts = np.cumsum(counts) - counts
    c = counts[rows]
    total = int(c.sum())
    if total == 0:
        return np.empty(0, np.int64)
    return np.repeat(starts[rows] - (np.cumsum(c) - c), c) + np.arange(total)


def _weights(jets: np.ndarray, out: np.ndarray, data_type: str, dsid: int, plan: Plan, cfg: BuildConfig) -> None:
    raw = jets["mcEventWeight"].astype(np.float64)
    if data_type in ("bib", "data"):
        xs = np.ones(len(jets))
    elif data_type == "qcd" and plan.xs_factor:
        xs = raw * plan.xs_factor[dsid]
    else:  # signal, or QCD without a cross-section table: the raw generator weight
        xs = raw
    out["weight_xs"] = xs
    out["weight_balanced"] = xs if cfg.weight_base == "xs" else raw  # the per-split factor comes in pass 3


class _ShardBlocks:
    """Reads a shard block by block into buffers reused for the whole build (no per-block allocation)."""

    def __init__(self, block: int):
        self.block = block
        self.buf = {t.name: np.empty((block, t.slots), t.dtype) for t in schema.OBJECT_TABLES}

    def blocks(self, s: Shard) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(jets, tables) per block; the tables are views of the buffers, valid until the next block.
        Only reads are reported as a damaged shard (a full disk while writing buckets is not)."""
        with reading(s.path):
            f = open_h5(s.path)
        try:
            with reading(s.path):
                readers = {name: SliceReader(f[name]) for name in ("jets", *TABLE_NAMES)}
            n = len(readers["jets"])
            for a in range(0, n, self.block):
                b = min(n, a + self.block)
                with reading(s.path):
                    jets = readers["jets"].read(a, b)
                    tables = {name: readers[name].read(a, b, self.buf[name]) for name in TABLE_NAMES}
                yield jets, tables
        finally:
            f.close()


def scatter(
    shards: list[Shard], plan: Plan, cfg: BuildConfig, buckets: Buckets, advance: Callable[[int], None]
) -> dict[tuple[str, str, str], Sums]:
    """Pass 2 for ``shards``: every selected jet into its bucket; returns the sums per
    (role, split, data_type). ``advance(n)`` reports progress."""
    sums: dict[tuple[str, str, str], Sums] = defaultdict(Sums)
    jet_names = [n for n, _ in schema.JET_FIELDS]
    reader = _ShardBlocks(cfg.read_block)
    arena = Arena()
    try:
        for s in shards:
            for jets, tables in reader.blocks(s):
                advance(len(jets))
                masks = {r: final_mask(jets, s, r, plan, cfg) for r in s.roles}
                union = np.logical_or.reduce(list(masks.values()))
                if not union.any():
                    continue
                if not union.all():
                    idx = np.flatnonzero(union)
                    jets = take(jets, idx)
                    tables = {k: take_into(v, idx, arena.get(f"sel_{k}", v.dtype, (len(idx), v.shape[1])))
                              for k, v in tables.items()}  # fmt: skip
                    masks = {r: m[idx] for r, m in masks.items()}
                if s.prescaled:  # a reference-scaled legacy shard: its values are the model's inputs already
                    scaled, jet_pt = tables, jets["pt"].astype(np.float32)
                else:
                    scaled, jet_pt = scale_tables({"jets": jets, **tables}, cfg.scaling, inplace=True)
                # One jets record per selected jet; objects packed (valid slots only), row-major.
                jrec = arena.get("jrec", JET_RECORD, (len(jets),))  # every field is assigned below
                rj = jrec["jets"]
                for name in jet_names:
                    rj[name] = jets[name]
                rj["pt_scaled"] = jet_pt
                rj["source"] = s.source
                _weights(jets, rj, s.data_type, s.dsid, plan, cfg)
                jrec["key"] = select.shuffle_key(jets, cfg.seed)
                counts, packed = {}, {}
                for name in TABLE_NAMES:
                    valid = scaled[name]["valid"]
                    jrec[f"valid_{name}"] = valid
                    counts[name] = np.count_nonzero(valid, axis=1)
                    flat = np.flatnonzero(valid)
                    packed[name] = take_into(scaled[name].reshape(-1), flat,
                                             arena.get(f"packed_{name}", scaled[name].dtype, (len(flat),)))  # fmt: skip
                split = select.split_index(jets, cfg.split, cfg.split_seed)
                for role, m in masks.items():
                    _distribute(np.flatnonzero(m), jrec, counts, packed, split, role, s.data_type, buckets, sums, arena)
    finally:
        buckets.close()
    return sums


def _distribute(rows, jrec, counts, packed, split, role: str, data_type: str, buckets: Buckets, sums,
                arena: Arena) -> None:  # fmt: skip
    """Append the jets ``rows`` of a block to their buckets, grouped (split, bucket)."""
    k_of = np.array([buckets.n_buckets[(role, sp)] for sp in schema.SPLITS], np.uint64)
    sp = split[rows]
    # Top bits of the key choose the bucket: buckets are key ranges, so bucket order = key order.
    b = ((jrec["key"][rows] >> np.uint64(32)) * k_of[sp]) >> np.uint64(32)
    group = sp.astype(np.int64) * (1 << 32) + b.astype(np.int64)
    order = np.argsort(group, kind="stable")
    rows, group = rows[order], group[order]
    jr = take_into(jrec, rows, arena.get("jr", JET_RECORD, (len(rows),)))
    objs = {}
    for name in TABLE_NAMES:
        idx = ragged_index(counts[name], rows)
        objs[name] = take_into(packed[name], idx, arena.get(f"objs_{name}", packed[name].dtype, (len(idx),)))
    ocum = {name: np.r_[0, np.cumsum(counts[name][rows])] for name in TABLE_NAMES}
    cuts = np.r_[0, np.flatnonzero(np.diff(group)) + 1, len(rows)]
    for g0, g1 in itertools.pairwise(cuts):
        split_name = schema.SPLITS[int(group[g0] >> 32)]
        bucket = int(group[g0] & 0xFFFFFFFF)
        part = jr[g0:g1]
        sums[(role, split_name, data_type)].add(part["jets"])
        buckets.append(role, split_name, bucket, part,
                       {n: objs[n][ocum[n][g0] : ocum[n][g1]] for n in TABLE_NAMES})  # fmt: skip


def balance_factor(role: str, split: str, sums: dict[tuple[str, str, str], Sums]) -> float:
    """The reference's rescaling: main — QCD total = signal total; CR — MC (QCD) total = data total."""
    ref = "sig" if role == "main" else "data"
    num = sums[(role, split, ref)].balanced if (role, split, ref) in sums else 0.0
    den = sums[(role, split, "qcd")].balanced if (role, split, "qcd") in sums else 0.0
    if den > 0 and num > 0:
        return num / den
    if den > 0:
        log.warning("%s %s: no %s weight to balance QCD against; weight_balanced = base weight", role, split, ref)
    return 1.0


def create_tables(f, n: int, compress: bool) -> None:
    opts = schema.compression() if compress else {}
    f.create_dataset("jets", shape=(n,), maxshape=(None,), dtype=schema.DATASET_JET_DTYPE,
                     chunks=(schema.JETS_CHUNK,), **opts)  # fmt: skip
    for t in schema.OBJECT_TABLES:
        f.create_dataset(t.name, shape=(n, t.slots), maxshape=(None, t.slots), dtype=t.dtype,
                         chunks=(schema.OBJECTS_CHUNK, t.slots), **opts)  # fmt: skip


def gather(tmp: Path, role: str, split: str, buckets: Buckets, factor: float, cfg: BuildConfig,
           advance: Callable[[int], None], arena: Arena | None = None) -> dict[str, Sums]:  # fmt: skip
    """Pass 3 for one output: buckets in key order, each sorted by key and re-padded, appended to
    ``tmp``. Returns the final sums per data type (weight_balanced after the factor)."""

    k = buckets.n_buckets[(role, split)]
    n = sum(buckets.counts.get((role, split, b), 0) for b in range(k))
    out: dict[str, Sums] = defaultdict(Sums)
    qcd = int(schema.Label.QCD)
    pad = padding_rows(cfg.scaling)  # buckets hold valid slots only; empty slots get these values
    if arena is None:
        arena = Arena()
        buckets.reserve([(role, split)], arena)
    with schema.h5_output(tmp) as f:
        create_tables(f, n, cfg.compress)
        writers = {name: SliceWriter(f[name]) for name in ("jets", *TABLE_NAMES)}
        pos = 0
        for b in range(k):
            loaded = buckets.load(role, split, b, arena)
            if loaded is None:
                continue
            jrec, packed = loaded
            m = len(jrec)
            order = np.argsort(jrec["key"], kind="stable")
            jets = take_into(jrec["jets"], order, arena.get("jets", schema.DATASET_JET_DTYPE, (m,)))
            if factor != 1.0:
                is_qcd = jets["label"] == qcd
                jets["weight_balanced"][is_qcd] = jets["weight_balanced"][is_qcd] * np.float32(factor)
            _add_sums(out, jets)
            writers["jets"].write(pos, jets)
            for t in schema.OBJECT_TABLES:
                valid = jrec[f"valid_{t.name}"]
                idx = ragged_index(np.count_nonzero(valid, axis=1), order)
                objs = take_into(packed[t.name], idx, arena.get("objs", t.dtype, (len(idx),)))
                table = arena.get("table", t.dtype, (m, t.slots))
                as_void(table)[...] = as_void(pad[t.name][None])[0]
                as_void(table)[valid[order]] = as_void(objs)
                for a in range(0, m, WRITE_ROWS):
                    writers[t.name].write(pos + a, table[a : a + WRITE_ROWS])
            pos += m
            advance(m)
        assert pos == n, (pos, n)
    return out


_TYPE_OF_LABEL = {int(v): k for k, v in schema.DATA_TYPES.items()}


def _add_sums(out: dict[str, Sums], jets: np.ndarray) -> None:
    """Per-class sums of a sorted bucket, with bincounts instead of one boolean gather per class."""
    lab = jets["label"].astype(np.int64)
    n = np.bincount(lab, minlength=4)
    sums = {
        c: np.bincount(lab, weights=jets[c], minlength=4) for c in ("mcEventWeight", "weight_xs", "weight_balanced")
    }
    pairs = np.unique(lab * (1 << 32) + jets["source"].astype(np.int64))
    for i in np.flatnonzero(n):
        s = out[_TYPE_OF_LABEL[int(i)]]
        s.n += int(n[i])
        s.raw += float(sums["mcEventWeight"][i])
        s.xs += float(sums["weight_xs"][i])
        s.balanced += float(sums["weight_balanced"][i])
        s.files.update((pairs[(pairs >> 32) == i] & 0xFFFFFFFF).tolist())
