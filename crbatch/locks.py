"""Output locks: one writer per run directory (``crbatch train``) and per dataset directory (``build``).

A lock is ``flock(LOCK_EX)`` on ``<directory>/.crbatch.lock``, held by the process that writes for
as long as it writes. The kernel releases it when that process ends, however it ends (kill -9
included), so a lock is never left behind by a dead process — while a child that outlives its
parent (the ``crbatch train`` of a local ``submit`` killed with -9) keeps it. The file records the
holder (host, pid, start time, command) for ``crbatch status`` and for the error of a second
writer, which exits 16 (:class:`~crbatch.errors.Locked`). The holder removes the file when it is
done (before it lets go of the lock); a process that locked a file of that name which is no longer
in the directory (or another file by now) lets go and starts again, so two processes never hold
two files of one name. A file left by a process that is gone (kill -9: the kernel has released the
lock, the record stays) is a stale lock: the next writer takes it over, with a log line.

What is guaranteed where (``flock(2)``, ``nfs(5)``):

* local file systems: between all processes of the host;
* NFS (Linux client ≥ 2.6.12): ``flock`` is emulated as a whole-file POSIX lock on the server
  (NLM for NFSv3, the protocol's own locks for NFSv4), so it holds between hosts — unless the file
  system is mounted with ``local_lock=flock``/``all`` or ``nolock`` (then only between the
  processes of one host). A client host that dies holding a lock keeps it until the server's lease
  expires (NFSv4, ~90 s) or the host reboots (NFSv3, NSM). (POSIX semantics: the holder never opens
  the lock file a second time, which would release it on close.)
* Lustre: only when mounted with ``-o flock`` (``localflock``: one host only);
* file systems that refuse locks (``ENOLCK``/``EOPNOTSUPP``, some FUSE mounts): a warning, and only
  the record is checked (a live process named in it on this host refuses the second writer; one on
  another host cannot be checked).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import Locked
from .schema import pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = ".crbatch.lock"
RETRY_S = 2.0  # a probe by `crbatch status` holds a shared lock for microseconds: try a little before refusing
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as recorded in the lock file."""

    host: str
    pid: int
    start: float  # epoch seconds
    command: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start))
        return f"pid {self.pid} on {self.host} since {when}" + (f" ({self.command})" if self.command else "")

    def gone(self) -> bool:
        """Known to have ended: a process of this host that does not exist any more."""
        return self.host == socket.gethostname() and not pid_alive(self.pid)


def _parse(text: str) -> Holder | None:
    try:
        d = json.loads(text)
        return Holder(str(d["host"]), int(d["pid"]), float(d["start"]), str(d.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None


def _read_fd(fd: int) -> Holder | None:
    try:
        return _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
    except OSError:
        return None


def read_record(directory: Path) -> Holder | None:
    """The holder recorded in ``directory``'s lock file (held or not), None without one."""
    try:
        return _parse((directory / LOCK_NAME).read_text(errors="replace"))
    except OSError:
        return None


def holder(directory: Path) -> Holder | None:
    """Who holds ``directory``'s lock now (None: nobody). Probes with a shared lock, released at once."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_fd(fd) or Holder("?", 0, time.time(), "record not written yet")
        except OSError:  # no locks here (ENOLCK, EOPNOTSUPP, ...): the record is all there is
            rec = _read_fd(fd)
            return rec if rec is not None and not rec.gone() and rec.pid else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _command() -> str:
    args = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:3]]
    return " ".join(a for a in args if a)[:80]


def _record(fd: int) -> None:
    me = Holder(socket.gethostname(), os.getpid(), time.time(), _command())
    data = json.dumps(asdict(me)).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    with contextlib.suppress(OSError):
        os.fsync(fd)


@contextlib.contextmanager
def hold(directory: Path, what: str) -> Iterator[None]:
    """Hold ``directory``'s lock inside the block; exit 16 if another live process holds it.
    ``what`` names the output in the error ("run directory", "dataset directory")."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    t0 = time.monotonic()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            rec = _read_fd(fd)
            os.close(fd)
            if time.monotonic() - t0 < RETRY_S:
                time.sleep(0.1)
                continue
            who = rec.describe() if rec else "a process that has not written its record yet"
            hint = "wait for it to end or stop it"
            if rec is not None and rec.gone():  # the recorded process is gone, yet the lock is held
                hint = (f"pid {rec.pid} has ended but a process it started still holds the lock "
                        f"(`fuser {path}` names it); stop that one")  # fmt: skip
            raise Locked(f"{directory}: another process is writing this {what}: {who}; {hint} "
                         "(`crbatch status` shows the holder)") from None  # fmt: skip
        except OSError as e:
            os.close(fd)
            if e.errno not in _UNSUPPORTED:
                raise
            yield from _hold_unlocked(directory, path, what, e)
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # removed by its holder (or replaced) between our open and flock: start again
            os.close(fd)
            continue
        break
    previous = _read_fd(fd)
    if previous is not None and previous.pid and previous.pid != os.getpid():
        log.info("%s: taking over the lock record of %s (not running any more)", directory, previous.describe())
    try:
        _record(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it (see above); a killed holder leaves its file
        os.close(fd)  # releases the lock


def _hold_unlocked(directory: Path, path: Path, what: str, err: OSError) -> Iterator[None]:
    """File systems without locks: the record is checked and written, nothing is enforced."""
    log.warning("%s: the file system does not support locks (%s): a second writer is refused only when it runs on "
                "this host", directory, err.strerror)  # fmt: skip
    rec = read_record(directory)
    if rec is not None and rec.pid and rec.pid != os.getpid() and rec.host == socket.gethostname() and not rec.gone():
        raise Locked(f"{directory}: another process is writing this {what}: {rec.describe()}; wait for it to end")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _record(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
