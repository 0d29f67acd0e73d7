"""Turning what a user typed (paths, wildcards, directories, YAML lists) into files."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from .errors import InputMissing

_GLOB_CHARS = set("*?[")


def is_yaml_list(arg: str) -> bool:
    return arg.lower().endswith((".yaml", ".yml"))


def expand(
    pattern: str, suffixes: tuple[str, ...] = (), directories: bool = False, recursive: bool = False
) -> list[Path]:
    """Files named by ``pattern``: an existing path (even one with glob characters in its name),
    a wildcard (``**`` recursive), or — with ``directories`` — a directory, whose files with one
    of ``suffixes`` are taken (with ``recursive``, from its sub-directories too). Hidden files and
    directories (temporaries, work directories) are never taken from a directory. Sorted, so a
    run's order never depends on the file system.
    """
    p = Path(pattern).expanduser()
    if p.is_dir() and directories:
        found = sorted(q for q in (p.rglob("*") if recursive else p.iterdir())
                       if q.is_file() and (not suffixes or q.name.endswith(suffixes)))  # fmt: skip
        return [q for q in found if not any(part.startswith(".") for part in q.relative_to(p).parts)]
    if p.exists():
        return [p]
    if _GLOB_CHARS & set(pattern):
        hits = sorted(Path(h) for h in glob.glob(str(p), recursive=True))
        hits = [h for h in hits if h.is_file() and (not suffixes or h.name.endswith(suffixes))]
        if hits:
            return hits
        raise InputMissing(f"{pattern}: no file matches this pattern; check the path and the quoting")
    raise InputMissing(f"{pattern}: no such file; check the path")


_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"root", "a ROOT file"),
    (b"\x1f\x8b", "a gzip file"),
    (b"PK\x03\x04", "a zip file (a .keras model?)"),
    (b"\x80", "a Python pickle"),
)


def describe_file(path: Path, error: BaseException | None = None) -> str:
    """What ``path`` really is, for an error message: empty, text, another format, or the reader's
    own complaint about a file of the right format (``error``)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as e:
        return e.strerror or str(e)
    if size == 0:
        return "empty file (0 bytes)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            detail = _first_line(error) if error is not None else ""
            return f"{what} of {size} bytes" + (f" that cannot be read ({detail})" if detail else "")
    text = _as_text(head)
    if text is not None:
        return f"a text file of {size} bytes (it starts {text[:40]!r})"
    return f"unknown binary data ({size} bytes, starts {head[:8].hex(' ')})"


def _as_text(head: bytes) -> str | None:
    """``head`` decoded if it looks like text (UTF-8, printable), else None."""
    for cut in range(4):  # a multi-byte character cut at the end of the sample is still text
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None
    return None


def _first_line(e: BaseException | None) -> str:
    text = str(e).strip() if e is not None else ""
    return text.splitlines()[0] if text else (type(e).__name__ if e is not None else "")


_PLAIN = re.compile(r"[\w./+,:=@%~-]+")


def shown(path: object) -> str:
    """A file name as log lines show it: as is when it is plain, else quoted with Python's escapes,
    so a name with spaces is unambiguous and one with a newline stays on one line."""
    text = str(path)
    return text if _PLAIN.fullmatch(text) else repr(text)
