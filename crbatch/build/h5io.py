"""Fast contiguous-slice I/O on the schema's HDF5 tables, and the allocator setting the build uses.

``h5py``'s ``Dataset.__getitem__`` recomputes the compound dtype and the selection on every call,
which costs as much as reading a 512-jet batch. :class:`SliceReader` caches them and reads
hyperslabs with the low-level API, optionally into a caller's buffer (memory reused, not
allocated per batch): about 2× faster for batch-sized reads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import numpy as np

log = logging.getLogger(__name__)


class SliceReader:
    """Reads rows ``[a, b)`` of one dataset (1-D or 2-D, any dtype)."""

    def __init__(self, ds):
        import h5py

        self._h5s = h5py.h5s
        self.id = ds.id
        self.dtype = ds.dtype
        self.shape = ds.shape
        self.row_shape = tuple(ds.shape[1:])
        self._mtype = h5py.h5t.py_create(self.dtype)
        self._space = self.id.get_space()

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, a: int, b: int, out: np.ndarray | None = None) -> np.ndarray:
        n = b - a
        out = np.empty((n, *self.row_shape), self.dtype) if out is None else out[:n]
        if n == 0:
            return out
        fs = self._space.copy()
        fs.select_hyperslab((a,) + (0,) * len(self.row_shape), (n, *self.row_shape))
        ms = self._h5s.create_simple((n, *self.row_shape))
        self.id.read(ms, fs, out, self._mtype)
        return out


def tune_malloc(mmap_threshold: int = 256 * 2**20, trim_threshold: int = 1 * 2**30) -> bool:
    """Let glibc reuse freed memory for large arrays instead of returning it to the kernel.

    By default glibc serves allocations above 32 MB with fresh ``mmap``s; every first touch of such
    a page is a page fault, which on some virtual machines makes copies ~10× slower than into
    reused memory. The build allocates block-sized arrays over and over, so it keeps them. RSS is
    still bounded by the build's peak use. Returns whether it applied (glibc only).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(-3, mmap_threshold) == 1  # M_MMAP_THRESHOLD
        ok &= libc.mallopt(-1, trim_threshold) == 1  # M_TRIM_THRESHOLD
        return bool(ok)
    except (OSError, AttributeError):
        return False


class SliceWriter:
    """Writes rows ``[a, a + len(arr))`` of one dataset of the array's dtype (low-level, no per-call
    dtype and selection rebuilding)."""

    def __init__(self, ds):
        import h5py

        self._h5s = h5py.h5s
        self.id = ds.id
        self.row_shape = tuple(ds.shape[1:])
        self._mtype = h5py.h5t.py_create(ds.dtype)
        self._space = self.id.get_space()

    def write(self, a: int, arr: np.ndarray) -> None:
        n = len(arr)
        if n == 0:
            return
        fs = self._space.copy()
        fs.select_hyperslab((a,) + (0,) * len(self.row_shape), (n, *self.row_shape))
        ms = self._h5s.create_simple((n, *self.row_shape))
        self.id.write(ms, fs, np.ascontiguousarray(arr), self._mtype)
