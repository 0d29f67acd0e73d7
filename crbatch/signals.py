"""SIGTERM and SIGINT at any moment of any command: exit 21 (or 85 from training), never ignored.

A batch system evicts a job with SIGTERM and expects it to end. Two modes:

* **raise** (every command, from the first line of ``crbatch``): the handler raises
  :class:`SignalExit`, a ``SystemExit`` with code 21 that unwinds through every ``finally``, so
  temporary outputs are removed and nothing half-written stays.
* **flag** (the training loop, :func:`deferred`): the handler only records the signal; the loop
  looks at it between steps, writes a checkpoint and exits 85. A second signal raises as above.

An exception raised at an arbitrary bytecode is not always delivered, hence three safeguards:

* **Lost in a callback.** CPython drops an exception raised inside a gc callback, a weakref
  callback or ``__del__`` (it prints "Exception ignored in ..." through :data:`sys.unraisablehook`
  and carries on). JAX runs such a callback at every garbage collection, so a handler that only
  raised was now and then swallowed and the job trained to its end through its eviction. Our
  ``sys.unraisablehook`` recognises a lost :class:`SignalExit` and delivers the signal again
  (``_thread.interrupt_main`` from a bare thread): the handler runs once more, in ordinary code.
* **Inside native code.** Python code that C++ calls while TensorFlow, JAX, Keras, ONNX or ROOT are
  imported cannot always pass an exception back through the C++ frames: JAX's nanobind module
  initialisation then aborts the process (``terminate called after throwing an instance of
  'nanobind::python_error'``, status 134; seen with SIGTERM 0.4 s into ``crbatch train``). The
  imports of :data:`NATIVE` run :func:`shielded` (an import hook): the signal is recorded and raised
  when the import is done.
* **Caught by someone.** A watchdog thread started with the first :class:`SignalExit` ends the
  process with exit 21 if it is still alive ``CRBATCH_SIGNAL_DEADLINE`` seconds later (default 60:
  something caught the ``SystemExit``, or a thread keeps the interpreter from exiting). Temporaries
  it had no time to remove carry the host and pid in their names; the next start on this host
  removes them.

What remains: a signal in the few milliseconds before the interpreter runs crbatch's first line
kills the process with the default action (status 143); an exception raised in Python code that a
C++ extension calls where it cannot propagate (a C++ destructor, outside the shielded imports)
aborts it (134). ``jobs/common.sh`` maps both to 20: retry.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ExitCode

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEADLINE_ENV = "CRBATCH_SIGNAL_DEADLINE"
DEFAULT_DEADLINE_S = 60.0
KEEP_ENV = "CRBATCH_KEEP_SIGTERM"  # set: crbatch installs no handler (embedding applications keep theirs)
NATIVE = frozenset({"tensorflow", "jax", "jaxlib", "keras", "onnx", "onnxruntime", "tf2onnx", "ROOT", "cppyy"})
"""Top-level packages whose import runs under :func:`shielded` (C++ extensions that call Python)."""


class SignalExit(SystemExit):
    """Raised by the handler: exit 21, unwinding through every ``finally``."""

    def __init__(self, signum: int):
        super().__init__(int(ExitCode.INTERRUPTED))
        self.signum = signum


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.previous: dict[int, Any] = {}
        self.previous_hook: Callable[[Any], Any] | None = None
        self.flag_depth = 0  # > 0: inside deferred()
        self.shield_depth = 0  # > 0: inside shielded() (a native import)
        self.pending: int | None = None  # a signal to raise when the shield is left
        self.received: int | None = None  # the first signal of this process (or of the current deferred())
        self.count = 0  # signals received (re-deliveries not counted)
        self.redeliver = False  # the next handler call is our re-delivery of a lost SignalExit
        self.watchdog: threading.Event | None = None  # set: the running watchdog stands down
        self.deadline: float | None = _deadline_from_env()


def _deadline_from_env() -> float | None:
    try:
        v = float(os.environ.get(DEADLINE_ENV, DEFAULT_DEADLINE_S))
    except ValueError:
        return DEFAULT_DEADLINE_S
    return v if v > 0 else None


_state = _State()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, frame: Any) -> None:
    if _state.redeliver and _in_hook(frame):  # too early: raised here, it would be dropped once more
        _deliver_again(signum)
        return
    if _state.redeliver:  # our own re-delivery of a SignalExit that CPython dropped
        _state.redeliver = False
        if _state.flag_depth:
            return  # the loop has seen the flag already
        if _state.shield_depth:
            _state.pending = signum
            return
        _raise(signum)
    _state.count += 1
    if _state.received is None:
        _state.received = signum
    if _state.flag_depth and _state.count == 1:
        log.warning("%s received: checkpointing after the current step", signal_name(signum))
        return
    if _state.shield_depth:
        _state.pending = signum
        _start_watchdog()
        log.warning("%s received: stopping once the native library being imported is loaded", signal_name(signum))
        return
    if _state.flag_depth:
        log.warning("%s received again: stopping now, without a checkpoint", signal_name(signum))
    _raise(signum)


def _raise(signum: int) -> None:
    _start_watchdog()
    raise SignalExit(signum)


def _unraisable(u: Any) -> None:
    if isinstance(u.exc_value, SignalExit) and _state.installed:
        # Dropped inside a gc/weakref callback or __del__: deliver it again, once this hook has returned.
        log.info("%s: its exception was dropped inside %r; delivering it again", signal_name(u.exc_value.signum),
                 u.object)  # fmt: skip
        _state.redeliver = True
        _deliver_again(u.exc_value.signum)
        return
    (_state.previous_hook or sys.__unraisablehook__)(u)


def _deliver_again(signum: int) -> None:
    # A bare thread (threading.Thread.start would wait for it, inside the hook): it makes the main
    # thread run the handler again at its next bytecode.
    # typeshed types interrupt_main's argument as signal.Signals; any signal number works (it is an int).
    _thread.start_new_thread(_thread.interrupt_main, (signum,))  # type: ignore[arg-type]


def _in_hook(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code is _unraisable.__code__:
            return True
        frame = frame.f_back
    return False


def _start_watchdog() -> None:
    if _state.watchdog is not None or _state.deadline is None:
        return
    _state.watchdog = threading.Event()
    threading.Thread(target=_watch, args=(_state.deadline, _state.watchdog), name="crbatch-signal-deadline",
                     daemon=True).start()  # fmt: skip


def _watch(deadline: float, cancelled: threading.Event) -> None:
    if cancelled.wait(deadline):
        return
    with contextlib.suppress(Exception):
        log.error("still running %.0f s after %s: exiting now (exit %d); temporaries left are removed at the next "
                  "start", deadline, signal_name(_state.received or signal.SIGTERM), int(ExitCode.INTERRUPTED))  # fmt: skip
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stderr.flush()
    os._exit(int(ExitCode.INTERRUPTED))


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Inside, a signal is only recorded; it is raised (exit 21) when the outermost shield is left,
    unless the training loop's flag mode acts on it."""
    _state.shield_depth += 1
    try:
        yield
    finally:
        _state.shield_depth -= 1
        if not _state.shield_depth and _state.pending is not None:
            signum, _state.pending = _state.pending, None
            if not _state.flag_depth or _state.count > 1:
                _raise(signum)


class _ShieldedLoader:
    """A module loader whose ``exec_module`` runs under :func:`shielded`; everything else is the
    real loader's (resource readers, ``get_source``, ...)."""

    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with shielded():
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ShieldFinder:
    """``sys.meta_path`` entry: the import of a package of :data:`NATIVE` runs shielded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in NATIVE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    # A duck-typed Loader (create_module/exec_module, everything else delegated).
                    spec.loader = _ShieldedLoader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


_FINDER = _ShieldFinder()


def install() -> bool:
    """Install the handlers (raise mode) and the unraisable hook; idempotent. False where not possible
    (not the main thread, or ``CRBATCH_KEEP_SIGTERM`` set)."""
    if os.environ.get(KEEP_ENV) is not None or threading.current_thread() is not threading.main_thread():
        return False
    for s in SIGNALS:
        current = signal.getsignal(s)
        if current is not _handler:
            _state.previous[s] = current
            signal.signal(s, _handler)
    if sys.unraisablehook is not _unraisable:
        _state.previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    _state.installed = True
    return True


def uninstall() -> None:
    """Restore the handlers and hook found by :func:`install` (tests; embedding applications)."""
    if not _state.installed:
        return
    for s, h in _state.previous.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(s, h)
    if sys.unraisablehook is _unraisable:
        sys.unraisablehook = _state.previous_hook or sys.__unraisablehook__
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    _state.previous.clear()
    _state.installed = False


def set_deadline(seconds: float | None) -> None:
    """Seconds from a :class:`SignalExit` to the forced exit (None: no deadline, e.g. a process that
    waits for its children's checkpoints on purpose)."""
    _state.deadline = seconds


def requested() -> bool:
    """Whether a signal arrived (in flag mode: since :func:`deferred` was entered, or before)."""
    return _state.received is not None


def handled() -> None:
    """The command ended because of the signal (exit 21 or 85): forget it and stop the watchdog (a
    process that runs several commands, e.g. the tests, starts the next one clean)."""
    _state.received, _state.count, _state.pending = None, 0, None
    if _state.watchdog is not None:
        _state.watchdog.set()
        _state.watchdog = None


@contextlib.contextmanager
def deferred() -> Iterator[Callable[[], bool]]:
    """Flag mode inside: the first SIGTERM/SIGINT only sets the flag (yielded: a callable saying
    whether one arrived, also before entering); a second one raises :class:`SignalExit`."""
    installed_here = not _state.installed and install()
    _state.flag_depth += 1
    try:
        yield requested
    finally:
        _state.flag_depth -= 1
        if not _state.flag_depth:
            # The loop has acted on the signal (checkpoint, exit 85) or finished its work: start clean.
            _state.received, _state.count, _state.redeliver = None, 0, False
        if installed_here:
            uninstall()
