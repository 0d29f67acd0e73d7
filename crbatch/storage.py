"""Where a pipeline's files live: a local (or mounted) path, or an XRootD URL.

A location is a :class:`pathlib.Path` or a :class:`RemotePath` (``root://host[:port]//abs/path``,
also ``xroot://``), made by :func:`location`. :class:`RemotePath` has the part of the ``Path``
interface crbatch's batch layer uses (``/``, ``name``, ``parent``, ``exists``, ``is_file``,
``read_text``, ``iterdir``, ``glob`` on names, ...), so the storage layout, ``crbatch status`` and
``collect`` work on either.

Remote operations go through the XRootD Python bindings (the ``grid`` extra: the PyPI ``xrootd``
wheel). Writes are atomic: a file is uploaded under a temporary name in its directory (a name
with :data:`crbatch.schema.TMP_MARK`, never matched as an output) and then renamed on the server
(``mv``, one server-side rename that replaces the target), so a reader sees the old file or the
whole new one, and a killed upload leaves only a temporary that nothing takes for complete.

Errors: a missing file is :class:`FileNotFoundError`, a refused one :class:`PermissionError`
(like local paths); a server that cannot be reached or a request that fails for a reason that may
pass is retried ``CRBATCH_XRD_RETRIES`` times (default 3) with a pause of ``CRBATCH_XRD_RETRY_WAIT``
seconds (default 5, doubled each time), then raised as :class:`StorageUnavailable` — exit 20,
retry the job. The XRootD client's own connection timeouts are shortened unless set in the
environment (``XRD_CONNECTIONWINDOW`` 15 s, ``XRD_CONNECTIONRETRY`` 2, ``XRD_REQUESTTIMEOUT``
300 s; its defaults wait 10 minutes for a server that is down).

Locks: :mod:`crbatch.locks` takes ``flock`` locks, which do not exist on XRootD storage. A job on
remote storage locks its sandbox copy only; two jobs writing the same remote output at once are
not excluded. What keeps the result correct is that every file is replaced atomically, that a
directory is uploaded with its completion mark last (:func:`upload_tree`), and that the readers
check completion marks and build ids: a mixture of two jobs' files is not complete, and the
pipeline runs it again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import os
import posixpath
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import CrbatchError, ExitCode, InputCorrupt, InputMissing

log = logging.getLogger(__name__)

SCHEMES = ("root://", "xroot://", "roots://")
_URL_RE = re.compile(r"^(?P<server>(?:root|xroot|roots)://[^/]+)/(?P<path>/.*)?$")
_CHUNK = 8 * 1024 * 1024
_XRD_DEFAULTS = {"XRD_CONNECTIONWINDOW": "15", "XRD_CONNECTIONRETRY": "2", "XRD_REQUESTTIMEOUT": "300"}
_NOT_FOUND = {3011}  # kXR_NotFound
_PERMISSION = {3010}  # kXR_NotAuthorized
_IS_DIR = 2  # StatInfoFlags.IS_DIR
T = TypeVar("T")


class StorageUnavailable(CrbatchError):
    """The storage could not be reached or did not answer, after the retries: retry the job (exit 20)."""

    code = ExitCode.TRANSIENT


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names a remote file (``root://``, ``xroot://``, ``roots://``)."""
    return isinstance(text, str | RemotePath) and str(text).startswith(SCHEMES)


def location(text: str | os.PathLike[str]) -> Path | RemotePath:
    """A :class:`RemotePath` for an XRootD URL, else a :class:`~pathlib.Path`."""
    if isinstance(text, RemotePath | Path):
        return text
    return RemotePath(os.fspath(text)) if is_url(text) else Path(text)


def basename(text: str | os.PathLike[str]) -> str:
    """The file name of a path or URL (``Path`` would fold a URL's ``//``)."""
    return posixpath.basename(str(text).rstrip("/")) if is_url(text) else Path(text).name


# --- the XRootD client --------------------------------------------------------------------------


def _xrootd():
    for k, v in _XRD_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if "tensorflow" in sys.modules and "XRootD.client" not in sys.modules:
        # The PyPI XRootD client segfaults in its initialisation when TensorFlow (2.21) was loaded first
        # in the process; loaded the other way round both work. No crbatch command needs both: fail loudly.
        raise CrbatchError(
            "the XRootD client cannot be loaded after TensorFlow in one process (it crashes); "
            "import XRootD.client before tensorflow, or do the root:// I/O in another process (crbatch storage)",
            ExitCode.INTERNAL,
        )
    try:
        from XRootD import client
        from XRootD.client import flags
    except ImportError as e:
        raise CrbatchError(
            f"root:// storage needs the XRootD Python bindings ({e}); install crbatch's grid extra: "
            "pip install 'crbatch[grid]'",
            ExitCode.CONFIG,
        ) from None
    return client, flags


_OVERRIDE: list[tuple[int, float]] = []


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """Remote calls inside fail at once (the caller retries a larger unit of work itself)."""
    _OVERRIDE.append((0, 0.0))
    try:
        yield
    finally:
        _OVERRIDE.pop()


def _retries() -> tuple[int, float]:
    if _OVERRIDE:
        return _OVERRIDE[-1]
    try:
        n = int(os.environ.get("CRBATCH_XRD_RETRIES", "3"))
        wait = float(os.environ.get("CRBATCH_XRD_RETRY_WAIT", "5"))
    except ValueError:
        n, wait = 3, 5.0
    return max(0, n), max(0.0, wait)


class _Failed(Exception):
    def __init__(self, status: Any):
        super().__init__(str(getattr(status, "message", status)).strip())
        self.status = status


def _raise_for(status: Any, what: str) -> None:
    """Turn a failed XRootD status into the exception a local path would raise (or _Failed to retry)."""
    if status.ok:
        return
    msg = str(status.message).strip()
    if status.errno in _NOT_FOUND or "no such file" in msg.lower():
        raise FileNotFoundError(2, f"{what}: no such file or directory", what)
    if status.errno in _PERMISSION:
        raise PermissionError(13, f"{what}: permission denied ({msg})", what)
    if status.errno == 3018 or "file exists" in msg.lower():  # kXR_ItExists
        raise FileExistsError(17, f"{what}: exists", what)
    if status.errno == 3005 or "not empty" in msg.lower():
        raise OSError(39, f"{what}: directory not empty", what)
    raise _Failed(status)


def retrying(what: str, call: Callable[[], T]) -> T:
    """Run ``call`` (which raises :class:`_Failed` for a failure that may pass) with the retries."""
    n, wait = _retries()
    for attempt in range(n + 1):
        try:
            return call()
        except _Failed as e:
            if attempt == n:
                raise StorageUnavailable(
                    f"{what}: {e} (after {n + 1} attempt(s)); check that the server is up and reachable, then retry"
                ) from None
            log.warning("%s: %s; retrying in %.0f s (%d/%d)", what, e, wait, attempt + 1, n)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


_FS: dict[str, Any] = {}


def _fs(server: str):
    client, _ = _xrootd()
    if server not in _FS:
        _FS[server] = client.FileSystem(server)
    return _FS[server]


class RemotePath:
    """An XRootD location ``root://host[:port]//abs/path``: the subset of ``Path`` crbatch uses."""

    __slots__ = ("path", "server")

    def __init__(self, url: str, _path: str | None = None):
        if _path is not None:
            self.server, self.path = url, _path
            return
        m = _URL_RE.match(url)
        if not m:
            raise CrbatchError(f"{url!r}: not an XRootD URL (root://host[:port]//absolute/path)", ExitCode.CONFIG)
        self.server = m.group("server")
        self.path = posixpath.normpath(m.group("path") or "/")
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")

    # -- names --
    def __str__(self) -> str:
        return f"{self.server}/{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.server, self.path) == (other.server, other.path)

    def __hash__(self) -> int:
        return hash((self.server, self.path))

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str | os.PathLike[str]) -> RemotePath:
        return RemotePath(self.server, posixpath.normpath(posixpath.join(self.path, str(part))))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.server, posixpath.dirname(self.path) or "/")

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.parent / (self.stem + suffix)

    def absolute(self) -> RemotePath:
        return self

    resolve = absolute

    def relative_to(self, other: RemotePath) -> str:
        return posixpath.relpath(self.path, other.path)

    # -- queries --
    def stat(self) -> Any:
        """XRootD's StatInfo (``size``, ``modtime``, ``flags``); FileNotFoundError when absent."""

        def call():
            st, info = _fs(self.server).stat(self.path)
            _raise_for(st, str(self))
            return info

        return retrying(f"stat {self}", call)

    def exists(self) -> bool:
        try:
            self.stat()
        except (FileNotFoundError, PermissionError):
            return False
        return True

    def is_dir(self) -> bool:
        try:
            return bool(self.stat().flags & _IS_DIR)
        except (FileNotFoundError, PermissionError):
            return False

    def is_file(self) -> bool:
        try:
            return not self.stat().flags & _IS_DIR
        except (FileNotFoundError, PermissionError):
            return False

    def size(self) -> int:
        return int(self.stat().size)

    def iterdir(self) -> Iterator[RemotePath]:
        _, flags = _xrootd()

        def call():
            st, listing = _fs(self.server).dirlist(self.path, flags.DirListFlags.NONE)
            _raise_for(st, str(self))
            return sorted(e.name for e in listing)

        for name in retrying(f"list {self}", call):
            yield self / name

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Entries whose name matches ``pattern`` (one level: no ``/`` or ``**``)."""
        try:
            entries = list(self.iterdir())
        except (FileNotFoundError, PermissionError):
            return
        for e in entries:
            if fnmatch.fnmatchcase(e.name, pattern):
                yield e

    # -- reading --
    def open(self, mode: str = "rb", buffering: int = 1024 * 1024) -> io.BufferedReader:
        if mode not in ("r", "rb"):
            raise ValueError("RemotePath.open reads only; write with put() (atomic upload)")
        raw = _RemoteRaw(self)
        return io.BufferedReader(raw, buffering)

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    # -- writing --
    def mkdir(self, parents: bool = False, exist_ok: bool = False, mode: int = 0o755) -> None:
        del mode
        _, flags = _xrootd()
        if exist_ok and self.is_dir():
            return

        def call():
            st, _ = _fs(self.server).mkdir(self.path, flags.MkDirFlags.MAKEPATH if parents else flags.MkDirFlags.NONE)
            if not st.ok and exist_ok and self.is_dir():
                return
            _raise_for(st, str(self))

        retrying(f"mkdir {self}", call)

    def unlink(self, missing_ok: bool = False) -> None:
        def call():
            st, _ = _fs(self.server).rm(self.path)
            _raise_for(st, str(self))

        try:
            retrying(f"rm {self}", call)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmdir(self) -> None:
        def call():
            st, _ = _fs(self.server).rmdir(self.path)
            _raise_for(st, str(self))

        retrying(f"rmdir {self}", call)

    def rename(self, target: RemotePath) -> RemotePath:
        """Server-side rename, replacing ``target`` (one atomic step on the server)."""
        if target.server != self.server:
            raise CrbatchError(f"cannot rename {self} to {target}: another server", ExitCode.CONFIG)

        def call():
            st, _ = _fs(self.server).mv(self.path, target.path)
            _raise_for(st, f"{self} -> {target}")

        retrying(f"mv {self} {target}", call)
        return target

    def write_bytes(self, data: bytes) -> int:
        """Write ``data`` atomically (temporary name, then server-side rename)."""
        put_bytes(data, self)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))


class _RemoteRaw(io.RawIOBase):
    """A seekable read-only file on XRootD (for h5py, which reads through Python file objects)."""

    def __init__(self, where: RemotePath):
        client, _ = _xrootd()
        self.where, self.pos = where, 0
        self.f = client.File()

        def call():
            st, _ = self.f.open(str(where))
            _raise_for(st, str(where))

        retrying(f"open {where}", call)

        def stat():
            st, info = self.f.stat()
            _raise_for(st, str(where))
            return info.size

        self.length = int(retrying(f"stat {where}", stat))

    def __str__(self) -> str:  # error messages of readers name the URL
        return str(self.where)

    __repr__ = __str__

    @property
    def name(self) -> str:
        return str(self.where)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), max(0, self.length - self.pos))
        if n == 0:
            return 0

        def call():
            st, data = self.f.read(self.pos, n)
            _raise_for(st, str(self.where))
            return data

        data = retrying(f"read {self.where}", call)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.f.close()
        super().close()


# --- moving files --------------------------------------------------------------------------------


def _tmp_name(final_name: str) -> str:
    from .schema import TMP_MARK

    return f".{final_name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_MARK}"


def _upload(chunks: Iterable[bytes], dest: RemotePath, size_hint: int | None = None) -> None:
    client, flags = _xrootd()
    tmp = dest.parent / _tmp_name(dest.name)
    f = client.File()

    def open_():
        st, _ = f.open(str(tmp), flags.OpenFlags.NEW | flags.OpenFlags.MAKEPATH)
        _raise_for(st, str(tmp))

    retrying(f"create {tmp}", open_)
    done = False
    try:
        offset = 0
        for chunk in chunks:

            def write(chunk=chunk, offset=offset):
                st, _ = f.write(chunk, offset)
                _raise_for(st, str(tmp))

            retrying(f"write {tmp}", write)
            offset += len(chunk)

        def close():
            st, _ = f.close()
            _raise_for(st, str(tmp))

        retrying(f"close {tmp}", close)
        got = tmp.size()
        if got != offset or (size_hint is not None and got != size_hint):
            raise StorageUnavailable(f"upload of {dest}: {got} bytes arrived of {offset}; retry")
        tmp.rename(dest)
        done = True
    finally:
        if not done:
            with contextlib.suppress(Exception):
                f.close()
            with contextlib.suppress(Exception):
                tmp.unlink(missing_ok=True)
    remove_stale_tmps(dest)


def remove_stale_tmps(dest: RemotePath) -> int:
    """Remove the temporaries of ``dest`` that killed uploads left (older than
    ``CRBATCH_XRD_STALE_AGE`` seconds, default 3600: a live upload of the same file by another job
    is younger and kept). Best effort; returns how many went."""
    import time

    from .schema import TMP_MARK

    age = float(os.environ.get("CRBATCH_XRD_STALE_AGE", "3600"))
    prefix, n = f".{dest.name}.", 0
    with contextlib.suppress(Exception), single_attempt():
        for e in dest.parent.iterdir():
            if e.name.startswith(prefix) and e.name.endswith(TMP_MARK) and time.time() - e.stat().modtime >= age:
                e.unlink(missing_ok=True)
                log.info("removed %s (left by a killed upload)", e)
                n += 1
    return n


def put_bytes(data: bytes, dest: RemotePath | Path) -> None:
    """Write ``data`` to ``dest`` atomically (local: temporary file + rename)."""
    if isinstance(dest, RemotePath):
        _upload([data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""], dest, len(data))
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(_tmp_name(dest.name))
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def put(src: Path, dest: RemotePath | Path) -> None:
    """Copy the local file ``src`` to ``dest`` atomically (upload under a temporary name, rename)."""
    if not isinstance(dest, RemotePath):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(_tmp_name(dest.name))
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return
    size = src.stat().st_size

    def chunks():
        with open(src, "rb") as fh:
            while block := fh.read(_CHUNK):
                yield block

    _upload(chunks(), dest, size)


def get(src: RemotePath | Path, dest: Path) -> None:
    """Copy ``src`` to the local file ``dest`` (temporary file + rename: ``dest`` is whole or absent)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(_tmp_name(dest.name))
    try:
        if isinstance(src, RemotePath):
            with src.open() as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def walk_files(root: RemotePath | Path) -> list[str]:
    """Paths (relative to ``root``, ``/``-separated) of every file under ``root``; hidden names and
    temporaries are left out. Empty when ``root`` does not exist."""
    out: list[str] = []

    def visit(d, rel: str) -> None:
        try:
            entries = sorted(d.iterdir(), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            sub = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir():
                visit(e, sub)
            else:
                out.append(sub)

    visit(root, "")
    return out


def download_tree(src: RemotePath | Path, dest: Path) -> int:
    """Copy every file under ``src`` into ``dest`` (files already there with the same size are
    kept). Returns the number of files copied."""
    n = 0
    for rel in walk_files(src):
        target = dest / rel
        remote = src / rel
        if target.is_file():
            size = remote.size() if isinstance(remote, RemotePath) else remote.stat().st_size
            if target.stat().st_size == size:
                continue
        get(remote, target)
        n += 1
    return n


def upload_tree(src: Path, dest: RemotePath | Path, last: tuple[str, ...] = (), delete_extra: bool = False) -> int:
    """Copy every file under the local ``src`` to ``dest``, each atomically.

    ``last``: names of completion marks (``summary.json``, ``history.json``): they are removed from
    ``dest`` first and uploaded after everything else, so a killed upload never leaves a mark
    beside files it does not describe. ``delete_extra``: remove the files under ``dest`` that
    ``src`` does not have (after the upload, before the marks). Returns the number of files copied.
    """
    files = walk_files(src)
    marks = [f for f in files if posixpath.basename(f) in last]
    for f in marks:
        with contextlib.suppress(FileNotFoundError):
            (dest / f).unlink()
    n = 0
    for f in (f for f in files if f not in marks):
        put(src / f, dest / f)
        n += 1
    if delete_extra:
        keep = set(files)
        for f in walk_files(dest):
            if f not in keep:
                with contextlib.suppress(FileNotFoundError):
                    (dest / f).unlink()
    for f in marks:
        put(src / f, dest / f)
        n += 1
    return n


# --- completeness of crbatch files on the storage ------------------------------------------------


@contextlib.contextmanager
def h5_source(where: RemotePath | Path) -> Iterator[Any]:
    """What ``h5py.File`` opens: the path, or a seekable remote file object (reads only what it needs)."""
    if not isinstance(where, RemotePath):
        yield where
        return
    f = where.open()
    try:
        yield f
    finally:
        f.close()


def check_complete(where: RemotePath | Path, kind: str | None = None) -> dict[str, Any]:
    """:func:`crbatch.schema.check_complete` of a local or remote file, content checksums included.

    The remote file is copied to a temporary local file and checked there: the checksum verification
    reads every stored byte anyway, and it reads them through a real file."""
    import tempfile

    from . import schema

    if not isinstance(where, RemotePath):
        return schema.check_complete(where, kind)
    with tempfile.TemporaryDirectory(prefix="crbatch-check.") as tmp:
        local = Path(tmp) / where.name
        try:
            get(where, local)
        except FileNotFoundError as e:
            raise schema.UnreadableError(f"{where}: no such file") from e
        try:
            return schema.check_complete(local, kind)
        except schema.NotAcceptedError as e:
            raise type(e)(str(e).replace(str(local), str(where))) from e


def is_complete(where: RemotePath | Path, kind: str | None = None) -> bool:
    from . import schema

    try:
        check_complete(where, kind)
    except schema.NotAcceptedError:
        return False
    return True


def classify(where: str, e: BaseException) -> CrbatchError:
    """A user-facing error for a failed read of ``where``: missing → 10, refused → 11, else 20."""
    if isinstance(e, CrbatchError):
        return e
    if isinstance(e, FileNotFoundError):
        return InputMissing(f"{where}: no such file on the storage; check the URL")
    if isinstance(e, PermissionError):
        return InputCorrupt(f"{where}: permission denied by the storage; check your grid credentials")
    return StorageUnavailable(f"{where}: {e}; retry")
