"""Turning what a user typed (paths, wildcards, directories, YAML lists) into files."""

from __future__ import annotations

import glob
from pathlib import Path

from .errors import InputMissing

_GLOB_CHARS = set("*?[")


def is_yaml_list(arg: str) -> bool:
    return arg.lower().endswith((".yaml", ".yml"))


def expand(pattern: str, suffixes: tuple[str, ...] = (), directories: bool = False) -> list[Path]:
    """Files named by ``pattern``: an existing path (even one with glob characters in its name),
    a wildcard (``**`` recursive), or — with ``directories`` — a directory, whose files with one
    of ``suffixes`` are taken. Sorted, so a run's order never depends on the file system.
    """
    p = Path(pattern).expanduser()
    if p.is_dir() and directories:
        found = sorted(q for q in p.iterdir() if q.is_file() and (not suffixes or q.name.endswith(suffixes)))
        return [q for q in found if not q.name.startswith(".")]
    if p.exists():
        return [p]
    if _GLOB_CHARS & set(pattern):
        hits = sorted(Path(h) for h in glob.glob(str(p), recursive=True))
        hits = [h for h in hits if h.is_file() and (not suffixes or h.name.endswith(suffixes))]
        if hits:
            return hits
        raise InputMissing(f"{pattern}: no file matches this pattern; check the path and the quoting")
    raise InputMissing(f"{pattern}: no such file; check the path")
