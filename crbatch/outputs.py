"""Where a command may write: never over one of its inputs, never over something that is not its own.

Every command calls :func:`check_output` for each output path before it writes anything. The path
is refused (exit 2, :class:`~crbatch.errors.CrbatchError` with ``ExitCode.USAGE``) and left
untouched when

- it is the same file as one of the command's inputs (same inode, through any link or spelling),
  or, for an output directory that is replaced as a whole, an input lies inside it;
- it exists and is not a crbatch output of the kind the command writes there (a foreign file, a
  crbatch file of another kind, a directory where a file goes, ...).

What counts as "a crbatch output of that kind" is recognised from the file itself (its attributes,
its header, the markers the writer puts in), see ``_RECOGNISERS``. A crbatch output whose data is
damaged is still recognised (its attributes survive) and is redone; a file whose header is damaged
cannot be told apart from a foreign one and is refused: remove it by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import CrbatchError, ExitCode
from .inputs import describe_file, shown

DIRECTORY_KINDS = frozenset({"report", "run"})
PIPELINE_STATUS_FILES = frozenset({"status.md", "status.json"})

_WHAT = {
    "shard": "a crbatch shard (HDF5)",
    "dataset": "a crbatch training dataset (HDF5)",
    "scored": "a crbatch scored file (HDF5)",
    "ntuple": "a DiVertAnalysis ntuple (ROOT file with the ntuple tree)",
    "synth": "a synthetic ntuple written by `crbatch synth`",
    "summary": "a crbatch build summary (summary.json)",
    "report": "a crbatch report directory (report.md, index.html)",
    "run": "a crbatch training run directory",
    "export:fdeep": "a frugally-deep model (JSON)",
    "export:onnx": "an ONNX model exported by crbatch",
    "export:onnx-raw": "a raw-input ONNX model exported by crbatch",
    "export:sidecar": "a crbatch preprocessing description (JSON)",
}
RUN_MARKERS = ("training_details.txt", "checkpoint.h5", "history.json", "config.yaml")


def check_output(path: Path, kind: str, inputs: Iterable[Path | str] = (), *, tree: str = "trees_DV_") -> None:
    """Refuse (exit 2) to write ``path`` when it is one of ``inputs`` or holds something that is not a
    crbatch output of ``kind`` (one of ``_WHAT``'s keys); ``tree``: the ntuple tree for ``ntuple``."""
    if kind not in _WHAT:
        raise ValueError(f"unknown output kind {kind!r}")
    path = Path(path)
    for inp in inputs:
        if "://" in str(inp):
            continue
        clash = _inside(Path(inp), path) if kind in DIRECTORY_KINDS else _same_file(Path(inp), path)
        if clash:
            how = "lies inside" if kind in DIRECTORY_KINDS else "is"
            raise CrbatchError(
                f"{shown(path)}: the output {how} the input {shown(inp)}; writing it would destroy the input — "
                "choose another output path",
                ExitCode.USAGE,
            )
    if not os.path.lexists(path):
        return
    why = _RECOGNISERS[kind](path, tree) if path.exists() else "a dangling symbolic link"
    if why:
        raise CrbatchError(
            f"{shown(path)} exists and is not {_WHAT[kind]}: {why}; crbatch leaves it untouched — move it away "
            "or choose another output path",
            ExitCode.USAGE,
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(inp: Path, directory: Path) -> bool:
    try:
        return inp.resolve().is_relative_to(directory.resolve()) and directory.exists()
    except OSError:
        return False


# Each recogniser returns "" for an output of its kind, else what the path holds instead.


def _hdf5(kind: str) -> Callable[[Path, str], str]:
    def recognise(path: Path, tree: str) -> str:
        if path.is_dir():
            return "it is a directory"
        import h5py

        from .schema import A_KIND, A_PRODUCER, read_attrs

        try:
            with h5py.File(path, "r") as f:
                attrs = read_attrs(f)
        except Exception as e:
            return describe_file(path, e)
        if attrs.get(A_PRODUCER) != "crbatch":
            return "an HDF5 file not written by crbatch"
        if attrs.get(A_KIND) not in (kind, None):
            return f"a crbatch {attrs.get(A_KIND)!r} file"
        return ""

    return recognise


def _root_tree(path: Path, tree: str):
    """(the tree, "") of a readable ROOT file, or (None, what the file is instead)."""
    if path.is_dir():
        return None, "it is a directory"
    what = describe_file(path)
    if not what.startswith("a ROOT file"):
        return None, what
    import uproot

    try:
        with uproot.open(path) as f:
            if tree not in f:
                return None, f"a ROOT file without the tree {tree!r}"
            return f[tree].title, ""
    except Exception as e:
        return None, describe_file(path, e)


def _ntuple(path: Path, tree: str) -> str:
    return _root_tree(path, tree)[1]


def _synth(path: Path, tree: str) -> str:
    title, why = _root_tree(path, tree)
    if why:
        return why
    if not (str(title).startswith("crbatch ") and " synth " in str(title)):
        return "a ROOT ntuple not made by `crbatch synth` (its tree title does not say so)"
    return ""


def _json(path: Path) -> tuple[object, str]:
    if path.is_dir():
        return None, "it is a directory"
    try:
        return json.loads(path.read_text()), ""
    except (OSError, UnicodeDecodeError, ValueError):
        return None, describe_file(path)


def _summary(path: Path, tree: str) -> str:
    doc, why = _json(path)
    if why:
        return why
    return "" if isinstance(doc, dict) and "build_id" in doc and "crbatch_version" in doc else "another JSON file"


def _fdeep(path: Path, tree: str) -> str:
    doc, why = _json(path)
    if why:
        return why
    return "" if isinstance(doc, dict) and "architecture" in doc and "trainable_params" in doc else "another JSON file"


def _sidecar(path: Path, tree: str) -> str:
    doc, why = _json(path)
    if why:
        return why
    from .export.sidecar import FORMAT

    return "" if isinstance(doc, dict) and doc.get("format") == FORMAT else "another JSON file"


def _onnx(path: Path, tree: str) -> str:
    if path.is_dir():
        return "it is a directory"
    try:
        data = path.read_bytes()
    except OSError as e:
        return e.strerror or str(e)
    return "" if b"crbatch.preprocessing" in data else describe_file(path)


def _entries(path: Path) -> list[str] | None:
    if not path.is_dir():
        return None
    return [p.name for p in path.iterdir() if not _ours_hidden(p.name)]


def _ours_hidden(name: str) -> bool:
    """crbatch's own hidden files (temporaries, locks): they do not make a directory someone else's."""
    return name.startswith(".") and ("crbatch" in name or "lock" in name)


def _report(path: Path, tree: str) -> str:
    names = _entries(path)
    if names is None:
        return "it is not a directory"
    # The pipeline's report job writes its status next to the analysis (batch/layout.py), before or
    # after it: a directory holding only those is still a crbatch report directory.
    if not names or {"report.md", "index.html"} <= set(names) or set(names) <= PIPELINE_STATUS_FILES:
        return ""
    return f"a directory without report.md and index.html (it holds {_listing(names)})"


def _run(path: Path, tree: str) -> str:
    names = _entries(path)
    if names is None:
        return "it is not a directory"
    if not names or any(m in names for m in RUN_MARKERS):
        return ""
    return f"a directory that is not a run directory (no {' / '.join(RUN_MARKERS)}; it holds {_listing(names)})"


def _listing(names: list[str], limit: int = 4) -> str:
    shown_names = ", ".join(shown(n) for n in sorted(names)[:limit])
    return shown_names + (f" and {len(names) - limit} more" if len(names) > limit else "")


_RECOGNISERS: dict[str, Callable[[Path, str], str]] = {
    "shard": _hdf5("shard"),
    "dataset": _hdf5("dataset"),
    "scored": _hdf5("scored"),
    "ntuple": _ntuple,
    "synth": _synth,
    "summary": _summary,
    "report": _report,
    "run": _run,
    "export:fdeep": _fdeep,
    "export:onnx": _onnx,
    "export:onnx-raw": _onnx,
    "export:sidecar": _sidecar,
}
