"""``crbatch convert divert``: one DiVertAnalysis ntuple → one HDF5 shard.

Streams the tree in chunks (``uproot`` iterate) reading only the branches the conversion needs,
so memory depends on the chunk size, not on the file. Output is atomic and idempotent (see
:mod:`crbatch.convert.runner`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, schema
from ..errors import CrbatchError, InputCorrupt, InputMissing, InputSchema, Transient
from ..progress import Progress
from .config import ConvertDivertConfig, InputEntry
from .fastread import use_fast_interpretations
from .selection import branches_for, select, tables_for

log = logging.getLogger(__name__)

_TRANSIENT_ERRNO = {errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ESTALE, errno.EAGAIN,
                    errno.ENOSPC, errno.EDQUOT, errno.EHOSTUNREACH, errno.ENETUNREACH}  # fmt: skip


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def classify_read_error(path: str, e: BaseException) -> CrbatchError:
    """Map an exception from reading ``path`` to a user-facing error with the right exit code."""
    if isinstance(e, CrbatchError):
        return e
    if isinstance(e, FileNotFoundError) or (_is_remote(path) and "no such file" in str(e).lower()):
        return InputMissing(f"{path}: no such file; check the path")
    if isinstance(e, PermissionError):
        return InputCorrupt(f"{path}: permission denied; make the file readable")
    if isinstance(e, OSError) and (e.errno in _TRANSIENT_ERRNO or _is_remote(path)):
        return Transient(f"{path}: I/O error ({e}); retry")
    if isinstance(e, OSError) and "expected Chunk of length" in str(e):
        return InputCorrupt(f"{path}: truncated ROOT file (a read ran past its end); recopy or regenerate it")
    if isinstance(e, (OSError, ValueError, EOFError)) or type(e).__module__.startswith("uproot"):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return InputCorrupt(f"{path}: not a readable ROOT file ({first}); recopy or regenerate it")
    raise e


def _metadata_histograms(rootfile) -> dict[str, dict[str, Any]]:
    """Every non-empty TH1 of the file (``MetaData_EventCount``, cut flows), for normalisation later."""
    out: dict[str, dict[str, Any]] = {}
    for key, cls in rootfile.classnames(recursive=False).items():
        if not cls.startswith("TH1"):
            continue
        name = key.split(";")[0]
        if name in out:
            continue
        h = rootfile[key]
        values = np.asarray(h.values(), dtype=float)
        if not values.any():
            continue
        labels = h.axis().labels()
        out[name] = {"values": values.tolist(), "labels": list(labels) if labels else None}
    return out


def _count_summary(hists: dict[str, dict[str, Any]]) -> dict[str, float]:
    ec = hists.get("MetaData_EventCount")
    if not ec or not ec["labels"]:
        return {}
    names = {
        "nEvents initial": "n_events_initial",
        "sumOfWeights initial": "sum_of_weights_initial",
        "sumOfWeightsSquared initial": "sum_of_weights_squared_initial",
    }
    return {names[lab]: v for lab, v in zip(ec["labels"], ec["values"], strict=False) if lab in names}


def _open(path: str, cfg: ConvertDivertConfig):
    import uproot

    if _is_remote(path):
        from ..storage import RemotePath, classify, single_attempt

        try:  # a missing file (exit 10) or a server that is down (exit 20; `convert` retries) in one line
            with single_attempt():
                RemotePath(path).stat()
        except Exception as e:
            raise classify(path, e) from e
    try:
        # Not uproot's MemmapSource: mapped pages count as resident, so RSS would grow with the file.
        # root://: uproot's own XRootD source (the XRootD bindings). Through fsspec-xrootd 0.5.5 with
        # xrootd 6.2.1 and uproot 5.7, basket reads fail ("integer argument expected for offset").
        remote = {"handler": uproot.source.xrootd.XRootDSource} if _is_remote(path) else {}
        f = uproot.open(path, array_cache=None, object_cache=None, **remote)
        if not _is_remote(path):
            size, end = os.path.getsize(path), int(f.file.fEND)
            if size < end:
                raise InputCorrupt(f"{path}: truncated ROOT file ({size} of {end} bytes); recopy or regenerate it")
        return f
    except Exception as e:
        raise classify_read_error(path, e) from e


def _use_fast_decoding(tree, branches: list[str]) -> None:
    import uproot

    try:
        use_fast_interpretations(tree, branches)
    except Exception as e:  # an uproot whose internals moved: its own decoding still works
        log.warning("fast std::vector decoding unavailable with uproot %s (%s); using uproot's own (slower)",
                    uproot.__version__, e)  # fmt: skip
        for name in branches:
            tree[name]._interpretation = None


def convert_divert_file(entry: InputEntry, src: Path, tmp: Path, cfg: ConvertDivertConfig) -> dict[str, Any]:
    """Convert ``src`` into the HDF5 file ``tmp``; return the attributes written."""
    import h5py
    import uproot

    path = str(src)
    f = _open(path, cfg)
    try:
        hists = _metadata_histograms(f)
        if cfg.tree not in f:
            trees = sorted({k.split(";")[0] for k, c in f.classnames().items() if c == "TTree"})
            raise InputSchema(
                f"{path}: no tree {cfg.tree!r} (trees: {', '.join(trees) or 'none'}); "
                "is this a DiVertAnalysis ntuple? set --tree otherwise"
            )
        tree = f[cfg.tree]
        n_entries = tree.num_entries
        needed = branches_for(entry.type)
        missing = [b for b in needed if b not in tree]
        if n_entries and missing:
            hint = ""
            if set(missing) <= {"mcEventWeight", "mcChannelNumber"}:
                hint = " — this looks like a data file: use --type data or bib"
            elif set(missing) & {"llp_pT", "llp_Lxy"}:
                hint = " — no LLP truth: signal needs a signal MC ntuple"
            raise InputSchema(f"{path}: missing branches {', '.join(missing[:6])}{hint}")
        if cfg.fast_decoding and n_entries:
            _use_fast_decoding(tree, needed)
        cut: Counter = Counter()
        masses = (entry.mH or 0.0, entry.mS or 0.0)
        dsid = entry.dsid
        with h5py.File(tmp, "w") as out:
            writer = schema.TableWriter(out, compress=cfg.compress)
            if n_entries:
                prog = Progress(n_entries, f"convert {src.name}", unit="events")
                try:
                    for chunk in tree.iterate(needed, step_size=cfg.step_size, library="ak"):
                        sel = select(chunk, entry.type, cfg, cut)
                        tables = tables_for(chunk, sel, entry.type, masses)
                        writer.append(tables)
                        if dsid is None and entry.type in schema.MC_TYPES and len(chunk):
                            dsid = int(chunk["mcChannelNumber"][0])
                        prog.update(len(chunk))
                except CrbatchError:
                    raise
                except (OSError, ValueError, uproot.deserialization.DeserializationError) as e:
                    raise classify_read_error(path, e) from e
                finally:
                    prog.close()
            cut["jets_written"] = writer.n
            attrs = {
                schema.A_PRODUCER: "crbatch",
                schema.A_VERSION: __version__,
                schema.A_SCHEMA: schema.SCHEMA_VERSION,
                schema.A_KIND: "shard",
                schema.A_DATA_TYPE: entry.type,
                schema.A_STATUS: "ok" if writer.n else "empty",
                schema.A_N_JETS: writer.n,
                schema.A_SCALED: False,
                "source_path": str(src.resolve()) if not _is_remote(path) else path,
                "source_size": os.path.getsize(path) if not _is_remote(path) else src.size(),
                "source_entries": n_entries,
                "tree": cfg.tree,
                "llp_mH": masses[0],
                "llp_mS": masses[1],
                "dsid": dsid if dsid is not None else -1,
                "cutflow": dict(cut),
                "metadata_histograms": hists,
                **_count_summary(hists),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                schema.A_CONFIG: cfg.to_record() | {"input": entry.model_dump(mode="json")},
            }
            for k, v in attrs.items():
                out.attrs[k] = schema.to_attr(v)
            out.attrs[schema.A_COMPLETE] = True  # last: marks the file as whole
        return attrs
    finally:
        f.close()
