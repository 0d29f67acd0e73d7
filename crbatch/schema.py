"""The one HDF5 layout every crbatch stage reads and writes.

FTAG style (atlas-ftag-tools, puma, salt): a 1-D structured ``jets`` table and one 2-D structured
table per constituent type, shape ``(n_jets, max_objects)``, with a boolean ``valid`` field, so that
padding is explicit and never confused with a real zero. Values in shards are raw (GeV for jets and
tracks, MeV for clusters, coordinates relative to the jet or leading cluster); scaling is done by
the build step and recorded in its output's attributes.

Stages talk to each other only through files in this layout, so every name that crosses a stage
boundary lives here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when a reader written for the old layout would misread the new one.
SCHEMA_VERSION = 1

SHARD_SUFFIX = ".h5"
TMP_MARK = ".crbatch-tmp"


class Label(IntEnum):
    """Per-jet class label. 0/1/2 are the reference's ``EventType`` (and the network's output order)."""

    QCD = 0
    SIGNAL = 1
    BIB = 2
    DATA = 3  # multijet collision data for the control region (the reference's CR file used 2)


DATA_TYPES: dict[str, Label] = {"qcd": Label.QCD, "sig": Label.SIGNAL, "bib": Label.BIB, "data": Label.DATA}
"""``--type`` values of the converters and the label each gives."""

MC_TYPES = frozenset({"qcd", "sig"})

N_CLUSTERS = 30
N_TRACKS = 20
N_MSEGS = 30

# Constituent features as stored in shards: raw, in the reference's per-slot feature names.
CLUSTER_FEATURES = (
    "pt", "eta", "phi", "time",
    "l1ecal", "l1hcal", "l2ecal", "l2hcal", "l3ecal", "l3hcal", "l4ecal", "l4hcal",
)  # fmt: skip
TRACK_FEATURES = (
    "pt", "eta", "phi", "chiSquared", "d0", "z0", "vertex_nParticles",
    "PixelShared", "PixelHoles", "PixelHits", "SCTHits", "SCTHoles", "SCTShared",
)  # fmt: skip
MSEG_FEATURES = ("etaPos", "phiPos", "etaDir", "phiDir", "t0", "chiSquared")

JET_FIELDS: tuple[tuple[str, str], ...] = (
    ("label", "i1"),
    ("eventNumber", "u8"),
    ("runNumber", "u4"),
    ("mcChannelNumber", "u4"),  # 0 for data
    ("mcEventWeight", "f4"),  # raw generator weight; 1 for data
    ("jet_index", "i2"),  # position of the jet in the ntuple's jet vector
    ("pt", "f4"),  # GeV
    ("eta", "f4"),
    ("phi", "f4"),
    ("isClean_LooseBadLLP", "i1"),
    ("n_clusters", "i2"),  # associated objects before truncation to the fixed slot count
    ("n_tracks", "i2"),
    ("n_msegs", "i2"),
    ("llp_mH", "f4"),  # GeV; 0 for backgrounds
    ("llp_mS", "f4"),
    ("llp_pt", "f4"),  # truth LLP matched to the jet (signal only, else 0)
    ("llp_eta", "f4"),
    ("llp_phi", "f4"),
    ("llp_Lxy", "f4"),  # mm
    ("llp_Lz", "f4"),  # mm, signed
    ("match_dR", "f4"),  # ΔR of the LLP (signal) or HLT-jet (BIB) match; -1 when not matched
)


def _object_dtype(features: tuple[str, ...]) -> np.dtype:
    return np.dtype([("valid", "?")] + [(f, "f4") for f in features])


JET_DTYPE = np.dtype(list(JET_FIELDS))
CLUSTER_DTYPE = _object_dtype(CLUSTER_FEATURES)
TRACK_DTYPE = _object_dtype(TRACK_FEATURES)
MSEG_DTYPE = _object_dtype(MSEG_FEATURES)


@dataclass(frozen=True)
class ObjectTable:
    """A fixed-length constituent table: dataset name, slots per jet, row dtype."""

    name: str
    slots: int
    dtype: np.dtype

    @property
    def features(self) -> tuple[str, ...]:
        assert self.dtype.names is not None  # a structured dtype
        return tuple(n for n in self.dtype.names if n != "valid")


OBJECT_TABLES = (
    ObjectTable("clusters", N_CLUSTERS, CLUSTER_DTYPE),
    ObjectTable("tracks", N_TRACKS, TRACK_DTYPE),
    ObjectTable("msegs", N_MSEGS, MSEG_DTYPE),
)
TABLES: dict[str, ObjectTable] = {t.name: t for t in OBJECT_TABLES}

# Attribute names (file level).
A_SCHEMA = "schema_version"
A_PRODUCER = "producer"
A_VERSION = "crbatch_version"
A_KIND = "kind"  # "shard" | "dataset" | "scored"
A_COMPLETE = "complete"  # set last: a file without it is not accepted by any reader
A_STATUS = "status"  # "ok" | "empty"
A_DATA_TYPE = "data_type"
A_N_JETS = "n_jets"
A_SCALED = "scaled"  # False for raw shards; the scaling name otherwise
A_CONFIG = "config"  # JSON of the resolved config that produced the file
A_LABEL_DECISION = "label_decision"  # JSON: how a converter chose the labels/masses (checks, overrides)

JETS_CHUNK = 1024  # rows per HDF5 chunk of the jets table
OBJECTS_CHUNK = 128  # jets per HDF5 chunk of the object tables (~200 kB)


def empty_tables(n: int) -> dict[str, np.ndarray]:
    """Zero-filled tables for ``n`` jets: padding is zero with ``valid=False``."""
    out = {"jets": np.zeros(n, JET_DTYPE)}
    for t in OBJECT_TABLES:
        out[t.name] = np.zeros((n, t.slots), t.dtype)
    return out


def compression() -> Mapping[str, Any]:
    """h5py dataset keywords for the fast codec (lz4 through hdf5plugin)."""
    import hdf5plugin

    return dict(hdf5plugin.LZ4())


def to_attr(value: Any) -> Any:
    """Make ``value`` storable as an HDF5 attribute (dicts and lists become JSON text)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    if isinstance(value, Path):
        return str(value)
    if value is None:
        return "null"
    return value


def read_attrs(f) -> dict[str, Any]:
    """All file attributes, JSON text decoded back into Python objects."""
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if (isinstance(v, str) and v[:1] in ("[", "{")) or v == "null":
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


class TableWriter:
    """Append jets and their constituents to an open HDF5 file in the common layout."""

    def __init__(self, h5file, compress: bool = True):
        self.f = h5file
        self.n = 0
        opts = compression() if compress else {}
        self.f.create_dataset("jets", shape=(0,), maxshape=(None,), dtype=JET_DTYPE, chunks=(JETS_CHUNK,), **opts)
        for t in OBJECT_TABLES:
            self.f.create_dataset(
                t.name,
                shape=(0, t.slots),
                maxshape=(None, t.slots),
                dtype=t.dtype,
                chunks=(OBJECTS_CHUNK, t.slots),
                **opts,
            )

    def append(self, tables: Mapping[str, np.ndarray]) -> None:
        raise_write_error(self.f)  # a full disk: stop now, not after converting the rest of the file
        k = len(tables["jets"])
        if k == 0:
            return
        for name in ("jets", *TABLES):
            ds = self.f[name]
            ds.resize(self.n + k, axis=0)
            ds[self.n : self.n + k] = tables[name]
        self.n += k


def tmp_path_for(final: Path) -> Path:
    """A temporary name next to ``final``, unique per host and process, never matched as a shard."""
    tag = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return final.with_name(f".{final.name}.{tag}{TMP_MARK}")


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it onto ``final``.

    On any exception the temporary file is removed and ``final`` is untouched, so a reader never
    sees half a file. Two writers of the same ``final`` both produce complete files and the last
    rename wins. A write error (disk full, read-only or forbidden location) becomes the
    :func:`crbatch.errors.classify_write_error` error naming ``final``; the clean-up never replaces
    the original error (on a read-only file system even removing a file that is not there fails).
    """
    from .errors import CrbatchError, classify_write_error

    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path_for(final)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        tmp = None
        with contextlib.suppress(OSError):  # directory fsync makes the rename durable; not all FS allow it
            dfd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except (OSError, RuntimeError) as e:
        err = None if isinstance(e, CrbatchError) else classify_write_error(final, e)
        if err is None:
            raise
        raise err from e
    finally:
        if tmp is not None:
            _discard(tmp)


def _discard(tmp: Path) -> None:
    """Remove a temporary file; errors are logged, never raised (they would hide the real one)."""
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.debug("could not remove %s: %s", tmp, e)


def remove_stale_tmp(directory: Path, final_name: str | None = None) -> int:
    """Delete temporaries left by dead processes on this host: those of ``final_name``, or (None)
    every ``*.crbatch-tmp`` file in ``directory``. Returns the count. Called when the command that
    owns the outputs starts, so a kill -9 or a crash leaves nothing behind for long."""
    host = socket.gethostname()
    removed = 0
    try:
        candidates = list(directory.glob(f".{final_name}.*{TMP_MARK}" if final_name else f".*{TMP_MARK}"))
    except OSError:
        return 0
    for p in candidates:
        # .<final>.<host>.<pid>.<rand>.crbatch-tmp; the final name and the host may contain dots.
        parts = p.name[: -len(TMP_MARK)].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        head = parts[0]
        name = final_name if final_name else None
        if name is not None:
            if not head.startswith(f".{name}.") or head[len(name) + 2 :] != host:
                continue
        elif not head.endswith(f".{host}"):
            continue
        if not pid_alive(int(parts[1])):
            try:
                if p.is_dir() and not p.is_symlink():  # e.g. the folder a .keras model is saved through
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed += 1
                log.info("removed %s, left by a dead process", p)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.debug("could not remove %s: %s", p, e)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- Writing HDF5 outputs --------------------------------------------------------------------------


class _Sink:
    """The file object HDF5 writes through (h5py's ``fileobj`` driver): positioned reads and writes
    on one descriptor. After the first write error (disk full, quota, I/O error) it records the
    error and drops every later write as if it had succeeded, so the HDF5 library never sees a
    failure: HDF5 cannot recover from one (a failed flush inside a dataset's close is ignored by
    h5py, the next close fails again, the original error is replaced, and the process segfaults in
    the library's clean-up). :func:`h5_output` raises the recorded error instead."""

    def __init__(self, path: Path, mode: str):
        flags = {"w": os.O_RDWR | os.O_CREAT | os.O_TRUNC, "x": os.O_RDWR | os.O_CREAT | os.O_EXCL}.get(mode, os.O_RDWR)
        self.path = Path(path)
        self.fd = os.open(path, flags, 0o666)
        self.pos = 0
        self.error: OSError | None = None

    def readinto(self, b: Any) -> int:
        n = os.preadv(self.fd, [b], self.pos)
        self.pos += n
        return n

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, os.fstat(self.fd).st_size - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = len(mv)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self.fd, mv[done:], self.pos + done)
            except OSError as e:
                self.error = e
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: None}[whence]
        self.pos = (os.fstat(self.fd).st_size if base is None else base) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                self.error = e
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def h5_output(path: Path, mode: str = "w", **kw: Any) -> Iterator[Any]:
    """An ``h5py.File`` for writing ``path`` (a temporary of :func:`atomic_output`) that fails cleanly:
    a write error (disk full, ...) is raised once, as the original ``OSError``, after the file is
    closed — never a second error from HDF5's close, never a crash (see :class:`_Sink`). Long
    writers call :func:`raise_write_error` to stop early instead of computing into a doomed file."""
    import h5py

    sink = _Sink(path, mode)
    try:
        f = h5py.File(sink, mode if mode != "x" else "w", **kw)
    except BaseException:
        sink.close()
        raise
    _SINKS[id(f.id)] = sink
    try:
        try:
            yield f
            f.flush()
        except BaseException as e:
            _close_quietly(f)
            if sink.error is not None and not isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise sink.error from e  # the write error is the cause of whatever followed it
            raise
        f.close()
    finally:
        _SINKS.pop(id(f.id), None)
        sink.close()
    if sink.error is not None:
        raise sink.error


_SINKS: dict[int, _Sink] = {}


def _sink_of(f: Any) -> _Sink | None:
    return _SINKS.get(id(f.id))


def raise_write_error(f: Any) -> None:
    """Raise the write error already met on ``f`` (an :func:`h5_output` file), if any."""
    sink = _sink_of(f)
    if sink is not None and sink.error is not None:
        raise sink.error


def _close_quietly(f: Any) -> None:
    try:
        f.close()
    except Exception as e:  # the original error matters, not this one
        log.debug("closing an abandoned HDF5 file: %s", e)


# --- Content checksums -----------------------------------------------------------------------------
#
# Every dataset of a crbatch HDF5 output carries the checksum of its stored bytes (the compressed
# chunks as they are on disk, with the dtype, shape and the dataset's attributes), and the file one
# checksum over its attributes and all dataset checksums. Verifying reads the file once and
# decompresses nothing; any changed byte of data or attributes, a truncated or a missing dataset
# makes the file "damaged", which every reader refuses and every producer redoes.

A_CHECKSUM = "checksum"  # on each dataset and on the file: "xxh3-64:<16 hex digits>"
CHECKSUM_ALGO = "xxh3-64"
_READ_PIECE = 4 * 2**20


def _value_bytes(v: Any) -> bytes:
    """A canonical byte form of an attribute value as h5py returns it."""
    if isinstance(v, bytes):
        return b"b" + v
    if isinstance(v, str):
        return b"s" + v.encode("utf-8", "surrogatepass")
    a = np.asarray(v)
    if a.dtype.kind == "O":
        return b"o" + repr(a.tolist()).encode()
    return a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()


def _hash_attrs(h: Any, attrs: Any) -> None:
    for k in sorted(attrs.keys()):
        if k in (A_CHECKSUM, A_COMPLETE):
            continue
        v = _value_bytes(attrs[k])
        h.update(k.encode() + b"\0" + len(v).to_bytes(8, "little"))
        h.update(v)


def _datasets(f: Any) -> list[tuple[str, Any]]:
    import h5py

    out: list[tuple[str, Any]] = []
    f.visititems(lambda name, obj: out.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return sorted(out, key=lambda t: t[0])


def _pread(fd: int, size: int, offset: int, h: Any) -> None:
    pos = 0
    while pos < size:
        piece = os.pread(fd, min(_READ_PIECE, size - pos), offset + pos)
        if not piece:
            raise DamagedError(f"stored data ends {size - pos} bytes early (truncated file)")
        h.update(piece)
        pos += len(piece)


def dataset_checksum(ds: Any, fd: int) -> str:
    """Checksum of one dataset's stored bytes (read through ``fd``, the file opened for reading)."""
    import h5py
    import xxhash

    h = xxhash.xxh3_64()
    h.update(repr((ds.dtype.descr, ds.shape)).encode())
    _hash_attrs(h, ds.attrs)
    layout = ds.id.get_create_plist().get_layout()
    vlen = ds.dtype.kind == "O" or h5py.check_vlen_dtype(ds.dtype) is not None
    if vlen or layout == h5py.h5d.COMPACT:  # values stored elsewhere (heap) or in the header: hash them
        h.update(_value_bytes(ds[()]))
    elif layout == h5py.h5d.CHUNKED:
        chunks: list[tuple[tuple[int, ...], int, int, int]] = []
        if hasattr(ds.id, "chunk_iter"):
            ds.id.chunk_iter(lambda c: chunks.append((c.chunk_offset, c.filter_mask, c.byte_offset, c.size)))
        else:  # HDF5 < 1.14
            for i in range(ds.id.get_num_chunks()):
                c = ds.id.get_chunk_info(i)
                chunks.append((c.chunk_offset, c.filter_mask, c.byte_offset, c.size))
        for offset, mask, addr, size in sorted(chunks):
            h.update(repr((offset, mask, size)).encode())
            _pread(fd, size, addr, h)
    else:
        addr = ds.id.get_offset()
        if addr is not None:
            _pread(fd, ds.id.get_storage_size(), addr, h)
    return f"{CHECKSUM_ALGO}:{h.hexdigest()}"


def _file_checksum(f: Any, sums: list[tuple[str, str]]) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    _hash_attrs(h, f.attrs)
    for name, c in sums:
        h.update(f"{name}\0{c}\0".encode())
    return f"{CHECKSUM_ALGO}:{h.hexdigest()}"


def mark_complete(f: Any) -> None:
    """Seal an output HDF5 file opened for writing: store the checksum of every dataset and of the
    file's attributes, then the completion mark (last: a file without it is accepted by no reader).
    Call it once everything else is written; nothing may change the file afterwards."""
    f.flush()
    raise_write_error(f)
    sink = _sink_of(f)
    with open(sink.path if sink is not None else f.filename, "rb") as fh:
        sums = [(name, dataset_checksum(ds, fh.fileno())) for name, ds in _datasets(f)]
    for name, c in sums:
        f[name].attrs[A_CHECKSUM] = c
    f.attrs[A_CHECKSUM] = _file_checksum(f, sums)
    f.attrs[A_COMPLETE] = True


def verify_content(f: Any) -> None:
    """Raise :class:`DamagedError` unless every dataset and the attributes of the open file ``f``
    match the checksums stored by :func:`mark_complete` (:class:`NotAcceptedError` if it has none)."""
    want = f.attrs.get(A_CHECKSUM)
    if want is None:
        raise NotAcceptedError("no content checksum (written by an older crbatch); rerun the step that writes it")
    if isinstance(want, bytes):
        want = want.decode()
    if not str(want).startswith(CHECKSUM_ALGO + ":"):
        raise NotAcceptedError(f"unknown checksum {want!r}; this crbatch checks {CHECKSUM_ALGO}")
    sums = []
    with open(f.filename, "rb") as fh:
        for name, ds in _datasets(f):
            stored = ds.attrs.get(A_CHECKSUM)
            try:
                got = dataset_checksum(ds, fh.fileno())
            except DamagedError as e:
                raise DamagedError(f"dataset {name!r}: {e}") from e
            if stored is None or (stored.decode() if isinstance(stored, bytes) else stored) != got:
                raise DamagedError(f"dataset {name!r} does not match its checksum: the file was changed or "
                                   "damaged after it was written")  # fmt: skip
            sums.append((name, got))
    if _file_checksum(f, sums) != want:
        raise DamagedError("its attributes or list of datasets do not match the checksum: the file was changed "
                           "or damaged after it was written")  # fmt: skip


class NotAcceptedError(Exception):
    """A file that exists but is not a complete file of the current schema."""


class UnreadableError(NotAcceptedError):
    """Not a readable HDF5 file at all (truncated, corrupt, something else)."""


class DamagedError(UnreadableError):
    """A complete file whose content no longer matches its checksums."""


def check_complete(path: Path, kind: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Return the attributes of a complete crbatch file, or raise :class:`NotAcceptedError`.

    ``verify`` (the default) also checks the content checksums (:func:`verify_content`): about one
    read of the file, no decompression (bench/RESULTS.md, "Checksums").
    """
    import h5py

    from .inputs import describe_file

    try:
        with h5py.File(path, "r") as f:
            attrs = read_attrs(f)
            _check_attrs(path, attrs, kind)
            if verify:
                try:
                    verify_content(f)
                except NotAcceptedError as e:
                    raise type(e)(f"{path}: {e}") from e
                except (OSError, ValueError, RuntimeError, KeyError) as e:  # HDF5 structures behind the data
                    raise DamagedError(f"{path}: damaged: reading its stored data failed ({_first_line(e)})") from e
    except NotAcceptedError:
        raise
    except FileNotFoundError as e:
        raise UnreadableError(f"{path}: no such file") from e
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UnreadableError(f"{path}: not a readable HDF5 file: {describe_file(path, e)}") from e
    return attrs


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_attrs(path: Path, attrs: dict[str, Any], kind: str | None) -> None:
    if attrs.get(A_PRODUCER) != "crbatch":
        raise NotAcceptedError(f"{path}: not written by crbatch")
    if not attrs.get(A_COMPLETE):
        raise NotAcceptedError(f"{path}: incomplete (no completion mark); rerun the step that writes it")
    if attrs.get(A_SCHEMA) != SCHEMA_VERSION:
        raise NotAcceptedError(
            f"{path}: schema version {attrs.get(A_SCHEMA)}, this crbatch reads {SCHEMA_VERSION}; "
            "reconvert it with this version"
        )
    if kind is not None and attrs.get(A_KIND) != kind:
        raise NotAcceptedError(f"{path}: is a {attrs.get(A_KIND)!r} file, expected {kind!r}")


def check_input(path: Path, kind: str | None = None) -> dict[str, Any]:
    """:func:`check_complete` for a stage's input file: exit 11 if unreadable or damaged, 12 if
    otherwise not accepted."""
    from .errors import InputCorrupt, InputSchema

    try:
        return check_complete(path, kind)
    except DamagedError as e:
        raise InputCorrupt(f"{e}; recopy it or rerun the step that writes it") from e
    except UnreadableError as e:
        raise InputCorrupt(str(e)) from e
    except NotAcceptedError as e:
        raise InputSchema(str(e)) from e


def is_complete(path: Path, kind: str | None = None, verify: bool = True) -> bool:
    """Whether ``path`` is a complete crbatch file (of ``kind``) whose content matches its checksums."""
    try:
        check_complete(path, kind, verify)
    except NotAcceptedError:
        return False
    return True


# --- Training datasets (written by ``crbatch build``) and the model's input spec ------------------

DATASET_JET_FIELDS: tuple[tuple[str, str], ...] = (
    *JET_FIELDS,
    ("pt_scaled", "f4"),  # jet pT after the dataset's scaling: the model's jet input (``pt`` stays GeV)
    ("weight_xs", "f4"),  # mcEventWeight · σε / Σw_initial(DSID) for QCD; raw for signal; 1 for data/BIB
    ("weight_balanced", "f4"),  # the reference's rescaling (main: QCD total = signal total; CR: MC = data)
    ("source", "i4"),  # index into the file's ``shards`` attribute
)
DATASET_JET_DTYPE = np.dtype(list(DATASET_JET_FIELDS))

SPLITS = ("train", "val", "test")
DATASET_ROLES = ("main", "cr")  # main: QCD/signal/BIB classifier; cr: control region (multijet MC vs data)

# Dataset file attributes (besides the common ones above).
A_SPLIT = "split"
A_ROLE = "role"
A_SCALING = "scaling"  # JSON: the scaling constants (crbatch.scaling), so an exported model can carry them
A_SUMMARY = "summary"  # JSON: per class and split jets / Σweights, files used and skipped
A_SHARDS = "shards"  # JSON list of shard paths; ``jets.source`` indexes it
A_BUILD_ID = "build_id"  # hash of config + inputs: a rebuild with the same id is skipped


def dataset_filename(role: str, split: str) -> str:
    """``main_train.h5``, ``cr_val.h5``, ...: the build's output names."""
    return f"{role}_{split}{SHARD_SUFFIX}"


@dataclass(frozen=True)
class ModelInput:
    """One network input: name, source table, slots (None for the per-jet vector), features in ORDER."""

    name: str
    table: str
    slots: int | None
    features: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.slots, len(self.features)) if self.slots else (len(self.features),)


# The reference's tensorisation (reference-training.md §3.5); the exported model depends on this order.
MODEL_INPUTS: tuple[ModelInput, ...] = (
    ModelInput("clusters", "clusters", N_CLUSTERS, (
        "pt", "eta", "phi", "l1hcal", "l1ecal", "l2hcal", "l2ecal", "l3hcal", "l3ecal", "l4ecal", "l4hcal", "time",
    )),
    ModelInput("tracks", "tracks", N_TRACKS, (
        "pt", "eta", "phi", "vertex_nParticles", "d0", "z0", "chiSquared", "SCTShared", "SCTHoles", "SCTHits",
    )),
    ModelInput("msegs", "msegs", N_MSEGS, ("etaPos", "phiPos", "etaDir", "phiDir", "chiSquared", "t0")),
    ModelInput("jet", "jets", None, ("pt", "eta", "phi")),
)  # fmt: skip
INPUT_NAMES = tuple(m.name for m in MODEL_INPUTS)
MODEL_OUTPUTS: tuple[Label, ...] = (Label.QCD, Label.SIGNAL, Label.BIB)  # softmax order
DATASET_JET_INPUT_FIELDS = ("pt_scaled", "eta", "phi")  # fields of a dataset's ``jets`` forming the jet input
