"""Fault injection for the integrity tests (tests/test_faults_*.py): real damage, real mounts.

- :func:`tmpfs` mounts a real size-limited (or read-only) tmpfs for a test, and skips the test
  cleanly where mounting is not permitted (not root, no CAP_SYS_ADMIN, a container without it);
  :func:`readonly_bind` makes a read-only bind mount of a directory.
- :func:`flip_bytes` damages a file in place at seeded random positions inside given byte ranges;
  :func:`h5_chunk_ranges` and :func:`root_basket_ranges` give those ranges: the stored chunks of an
  HDF5 file, the compressed baskets of a ROOT branch (the bulk of either file: what a bit flip on
  disk or a bad copy most likely hits).
- :func:`crbatch` runs the real command in a subprocess (real exit status: a segfault is -11/139,
  a signal is a signal) with its stderr captured.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SEED = 20261203


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "3m", readonly: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (created), read-only if asked; skips the test where
    mounts are not permitted. Unmounted afterwards (lazily if something still holds it)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = _mount(["-t", "tmpfs", "-o", opts, "tmpfs", str(path)])
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); run as root to test this")
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def readonly_bind(source: Path, target: Path) -> Iterator[Path]:
    """``source`` bind-mounted read-only on ``target``; skips the test where that is not permitted."""
    target.mkdir(parents=True, exist_ok=True)
    r = _mount(["--bind", str(source), str(target)])
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({r.stderr.strip()})")
    try:
        r = _mount(["-o", "remount,ro,bind", str(target)])
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({r.stderr.strip()})")
        yield target
    finally:
        _umount(target)


def flip_bytes(path: Path, ranges: list[tuple[int, int]], n: int = 16, seed: int = SEED) -> list[int]:
    """Invert ``n`` consecutive bytes at one seeded random position inside one of ``ranges``
    ((offset, length) pairs, chosen with probability ∝ length), in place; the size stays the same.
    Returns the positions changed."""
    rng = np.random.default_rng(seed)
    sizes = np.array([max(0, length - n) for _, length in ranges], float)
    if not sizes.sum():
        raise ValueError("no range long enough to damage")
    i = rng.choice(len(ranges), p=sizes / sizes.sum())
    pos = ranges[i][0] + int(rng.integers(0, max(1, ranges[i][1] - n)))
    with open(path, "r+b") as fh:
        fh.seek(pos)
        old = fh.read(n)
        fh.seek(pos)
        fh.write(bytes(b ^ 0xFF for b in old))
    return list(range(pos, pos + n))


def h5_chunk_ranges(path: Path, datasets: tuple[str, ...] | None = None) -> list[tuple[int, int]]:
    """(file offset, size) of every stored chunk of the HDF5 file's datasets (all, or ``datasets``)."""
    import h5py

    out: list[tuple[int, int]] = []
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            if datasets is not None and name not in datasets:
                continue
            ds = f[name]
            if ds.chunks is None:
                off = ds.id.get_offset()
                if off is not None:
                    out.append((off, ds.id.get_storage_size()))
                continue
            for i in range(ds.id.get_num_chunks()):
                c = ds.id.get_chunk_info(i)
                out.append((c.byte_offset, c.size))
    return out


def root_basket_ranges(
    path: Path, tree: str = "trees_DV_", branches: tuple[str, ...] | None = None
) -> list[tuple[int, int]]:
    """(file offset, size) of the compressed payload of every basket of the tree's branches (after
    the basket's key header: damage there is a decompression error, not a bad key)."""
    import uproot

    out: list[tuple[int, int]] = []
    with uproot.open(path) as f:
        t = f[tree]
        for br in t.branches:
            if branches is not None and br.name not in branches:
                continue
            seeks, sizes = br.member("fBasketSeek"), br.member("fBasketBytes")
            for i in range(br.num_baskets):
                if sizes[i] > 200:
                    out.append((int(seeks[i]) + 100, int(sizes[i]) - 100))
    return out


def crbatch(*args: object, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m crbatch ARGS`` in a subprocess; stdout/stderr captured as text."""
    e = {**os.environ, "CRBATCH_NO_BAR": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "crbatch", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e)  # fmt: skip


def dead_pid() -> int:
    """A process id that is not running on this host (a child that has exited)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stale_tmp(final: Path, directory: bool = False) -> Path:
    """A temporary of ``final`` as a killed writer on this host leaves it (dead pid)."""
    import socket

    p = final.with_name(f".{final.name}.{socket.gethostname()}.{dead_pid()}.{uuid.uuid4().hex[:8]}.crbatch-tmp")
    p.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        p.mkdir()
        (p / final.name).write_bytes(b"half")
    else:
        p.write_bytes(b"half a file")
    return p


def error_lines(stderr: str) -> list[str]:
    """The log lines of level ERROR (crbatch's own format when not on a terminal)."""
    return [ln for ln in stderr.splitlines() if " ERROR " in ln]
