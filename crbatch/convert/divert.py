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
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__, schema
from ..errors import CrbatchError, InputCorrupt, InputMissing, InputSchema, Transient
from ..inputs import describe_file, shown
from ..progress import Progress
from .config import ConvertDivertConfig, InputEntry
from .fastread import use_fast_interpretations
from .selection import branches_for, select, tables_for

if TYPE_CHECKING:
    from ..storage import RemotePath

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
        return InputMissing(f"{shown(path)}: no such file; check the path")
    if isinstance(e, PermissionError):
        return InputCorrupt(f"{shown(path)}: permission denied; make the file readable")
    if isinstance(e, OSError) and _is_remote(path) and "expected Chunk of length" in str(e):
        size = _remote_size(path)  # the server answers: the file is shorter than its own index says
        if size is not None:
            return InputCorrupt(f"{shown(path)}: truncated ROOT file ({size} bytes on the storage; a read ran past "
                                "its end); recopy or regenerate it")  # fmt: skip
    if isinstance(e, OSError) and (e.errno in _TRANSIENT_ERRNO or _is_remote(path)):
        return Transient(f"{shown(path)}: I/O error ({e}); retry")
    if isinstance(e, (OSError, ValueError, EOFError)) or type(e).__module__.startswith("uproot"):
        return InputCorrupt(f"{shown(path)}: {_what_is_wrong(path, e)}; recopy or regenerate it")
    raise e


def _remote_size(path: str) -> int | None:
    """The size of a remote file, None when the storage does not answer (then the error may pass)."""
    from ..storage import location, single_attempt

    try:
        with single_attempt():
            return location(path).size()  # type: ignore[union-attr]
    except Exception:
        return None


def _what_is_wrong(path: str, e: BaseException) -> str:
    """The real cause of an unreadable ROOT file: empty, not ROOT at all, truncated or corrupt."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if _is_remote(path):
        return f"not a readable ROOT file ({first})"
    what = describe_file(Path(path))
    if not what.startswith("a ROOT file"):
        return f"not a ROOT file: {what}"
    if "expected Chunk of length" in str(e):
        return f"truncated ROOT file ({os.path.getsize(path)} bytes; a read ran past its end)"
    return f"not a readable ROOT file ({first})"


def _locate_damage(tree, branches: list[str], start: int, stop: int) -> str | None:
    """Which branch and basket of entries [start, stop) cannot be read, e.g. ``branch 'jet_pT',
    entries 1000–1999 (basket 3)``; None if every basket reads (the error is elsewhere)."""
    for name in branches:
        br = tree[name]
        for i in range(br.num_baskets):
            a, b = (int(x) for x in br.basket_entry_start_stop(i))
            if b <= start or a >= stop:
                continue
            try:
                br.basket(i)
            except Exception as e:
                return f"branch {name!r}, entries {a}–{b - 1} (basket {i}: {_first_line(e)})"
    for name in branches:
        try:
            tree[name].array(entry_start=start, entry_stop=stop, library="np")
        except Exception as e:
            return f"branch {name!r}, entries {start}–{stop - 1} ({_first_line(e)})"
    return None


def _first_line(e: BaseException) -> str:
    mod = type(e).__module__
    name = type(e).__qualname__ if mod == "builtins" else f"{mod.split('.')[0]}.{type(e).__qualname__}"
    text = str(e).strip()
    return f"{name}: {text.splitlines()[0]}" if text else name


def chunk_read_error(path: str, tree, branches: list[str], start: int, step: int, e: Exception) -> CrbatchError:
    """The error for a failure reading the chunk starting at entry ``start``: a damaged basket
    (decompression or decoding) is exit 11 naming the branch and entry range; I/O errors as
    :func:`classify_read_error`."""
    if isinstance(e, CrbatchError):
        return e
    if isinstance(e, OSError) and e.errno is not None:
        return classify_read_error(path, e)
    stop = min(int(tree.num_entries), start + max(step, 1))
    try:
        where = _locate_damage(tree, branches, start, stop)
    except Exception as probe:  # the probe itself failed: report what we know
        log.debug("locating the damage in %s failed: %s", path, probe)
        where = None
    where = where or f"entries {start}–{stop - 1}"
    return InputCorrupt(f"{shown(path)}: damaged data in {where}; recopy or regenerate the file")


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
                raise InputCorrupt(
                    f"{shown(path)}: truncated ROOT file ({size} of {end} bytes); recopy or regenerate it"
                )
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


def _entry_step(tree, branches: list[str], step_size: int | str) -> int:
    """Entries per chunk of ``tree.iterate`` (to name the entry range of a damaged chunk)."""
    try:
        return int(tree.num_entries_for(step_size, branches)) if isinstance(step_size, str) else int(step_size)
    except Exception:
        return int(tree.num_entries)


def convert_divert_file(
    entry: InputEntry, src: Path | RemotePath, tmp: Path, cfg: ConvertDivertConfig
) -> dict[str, Any]:
    """Convert ``src`` into the HDF5 file ``tmp``; return the attributes written."""
    path = str(src)
    f = _open(path, cfg)
    try:
        hists = _metadata_histograms(f)
        if cfg.tree not in f:
            trees = sorted({k.split(";")[0] for k, c in f.classnames().items() if c == "TTree"})
            raise InputSchema(
                f"{shown(path)}: no tree {cfg.tree!r} (trees: {', '.join(trees) or 'none'}); "
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
            raise InputSchema(f"{shown(path)}: missing branches {', '.join(missing[:6])}{hint}")
        if cfg.fast_decoding and n_entries:
            _use_fast_decoding(tree, needed)
        cut: Counter = Counter()
        masses = (entry.mH or 0.0, entry.mS or 0.0)
        dsid = entry.dsid
        with schema.h5_output(tmp) as out:
            writer = schema.TableWriter(out, compress=cfg.compress)
            if n_entries:
                prog = Progress(n_entries, f"convert {shown(src.name)}", unit="events")
                step = _entry_step(tree, needed, cfg.step_size)
                chunks = tree.iterate(needed, step_size=cfg.step_size, library="ak")
                start = 0
                try:
                    while True:
                        # Only reading is classified as damaged input; a write error goes up to
                        # schema.atomic_output, which names the output.
                        try:
                            chunk = next(chunks)
                        except StopIteration:
                            break
                        except (MemoryError, CrbatchError):
                            raise
                        except Exception as e:
                            raise chunk_read_error(path, tree, needed, start, step, e) from e
                        sel = select(chunk, entry.type, cfg, cut)
                        tables = tables_for(chunk, sel, entry.type, masses)
                        writer.append(tables)
                        if dsid is None and entry.type in schema.MC_TYPES and len(chunk):
                            dsid = int(chunk["mcChannelNumber"][0])
                        start += len(chunk)
                        step = max(step, len(chunk))
                        prog.update(len(chunk))
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
                "source_size": os.path.getsize(path) if not _is_remote(path) else src.size(),  # type: ignore[union-attr]  # remote: a RemotePath
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
            schema.mark_complete(out)  # checksums, then the completion mark: last
        return attrs
    finally:
        f.close()
