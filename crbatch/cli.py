"""The ``crbatch`` command: ``crbatch <stage> [<sub>] INPUTS... [options]``."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from . import __version__, signals
from .errors import DISK_FULL_ERRNO, EXIT_CODE_HELP, CrbatchError, ExitCode, classify_write_error, error_errno

log = logging.getLogger("crbatch")


class _OneLineFormatter(logging.Formatter):
    """Escapes control characters (a newline, a carriage return, ...) in the text arguments of a log
    record, so a file name that contains a newline cannot split a log line in two or fake one."""

    def format(self, record: logging.LogRecord) -> str:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_one_line(a) for a in record.args)
        return super().format(record)


def _one_line(a: object) -> object:
    if isinstance(a, (str, os.PathLike)):
        text = os.fspath(a)
        if isinstance(text, str) and any(c < " " and c != "\t" for c in text):
            return text.encode("unicode_escape").decode("ascii", "replace")
    return a


def _setup_logging(level: int) -> None:
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, show_time=False, markup=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_OneLineFormatter(fmt, "%H:%M:%S"))
    handler._crbatch = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Replace our own handler from an earlier call (tests call main() many times); keep others.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_crbatch", False)] + [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("crbatch").setLevel(level)


def _exit_codes(args: argparse.Namespace) -> int:
    for code, text in EXIT_CODE_HELP.items():
        print(f"{int(code):3d}  {code.name:<17} {text}")
    return 0


# Every command: (module, its register function, the help line of `crbatch --help`). ``main`` imports
# only the module of the command it runs, so a convert job does not pay for TensorFlow, matplotlib or
# the other stages' configuration models (tests/test_startup.py checks the help lines stay the
# modules' own).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("crbatch.synth.cli", "register", "write synthetic DiVertAnalysis-like inputs (needs PyROOT)"),
    "convert": ("crbatch.convert.cli", "register", "convert inputs to HDF5 shards (one job per file)"),
    "build": ("crbatch.build.cli", "register",
              "shards → training datasets (main: QCD/signal/BIB; control region: MC/data), train/val/test"),
    "plot": ("crbatch.report.plot_cli", "register",
             "compare datasets or shard sets in a report (per-class and data-vs-MC plots)"),
    "train": ("crbatch.train.cli", "register",
              "adversarial training of the CalRatio classifier, with epoch checkpoints and automatic resume"),
    "analyze": ("crbatch.evaluate.analyze_cli", "register",
                "best epochs of training runs, test-split performance against baselines, one report, the export"),
    "export": ("crbatch.export.cli", "register",
               "export a trained classifier to frugally-deep JSON (DiVertAnalysis) and ONNX (Athena)"),
    "score": ("crbatch.evaluate.score_cli", "register",
              "apply a trained classifier (run epoch, .keras or .onnx) to shards or datasets; write the scores"),
    "demo": ("crbatch.demo", "register",
             "the whole pipeline on embedded synthetic inputs, through the local batch backend"),
    "submit": ("crbatch.batch.cli", "register_submit",
               "run a pipeline YAML as batch jobs: local (default), HTCondor DAG or Slurm"),
    "status": ("crbatch.batch.cli", "register_status",
               "what is done, failed (with the error), running or missing — from the storage alone"),
    "collect": ("crbatch.batch.cli", "register_collect",
                "gather a pipeline's reports from the shared storage into one folder"),
    "storage": ("crbatch.batch.staging", "register",
                "copy files to and from the storage (root:// or a path); stage a job's files in and out"),
}  # fmt: skip


def _register(sub: argparse._SubParsersAction, name: str) -> None:
    import importlib

    module, func, _ = COMMANDS[name]
    getattr(importlib.import_module(module), func)(sub)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``crbatch`` parser with every command, or — ``only`` — with that command complete and the
    others as their help lines (enough for ``crbatch --help`` and for argparse's "invalid choice")."""
    p = argparse.ArgumentParser(
        prog="crbatch",
        description="Batch training of the ATLAS CalRatio per-jet classifier: convert, build, train, analyze, export.",
    )
    p.add_argument("--version", action="version", version=f"crbatch {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, help_line) in COMMANDS.items():
        if only is None or name == only:
            _register(sub, name)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    ec = sub.add_parser("exit-codes", help="print the exit codes and what a batch system should do with each")
    ec.set_defaults(func=_exit_codes)
    return p


def command_of(argv: list[str]) -> str:
    """The command an argument list runs ("" for none: ``crbatch --help``, ``crbatch -v``); the
    top-level options take no values, so it is the first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), "")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    if build_parser.__module__ != __name__:  # replaced (the tests add commands this way): use it as is
        return build_parser()
    return build_parser(only=command_of(argv))


def main(argv: list[str] | None = None) -> int:
    # SIGTERM/SIGINT raise crbatch.signals.SignalExit (exit 21), which unwinds through every
    # ``finally``: temporary outputs are removed, nothing half-written stays.
    signals.install()
    if argv is None:
        argv = sys.argv[1:]
    parser = _parser(argv)
    args = parser.parse_args(argv)
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(args.verbose - args.quiet, logging.DEBUG)
    if args.verbose - args.quiet < -2:
        level = logging.ERROR
    _setup_logging(level)
    try:
        return int(args.func(args))
    except signals.SignalExit as e:
        signals.handled()
        log.error("stopped by %s before finishing: nothing half-written was kept; rerun to do the work",
                  signals.signal_name(e.signum))  # fmt: skip
        return int(ExitCode.INTERRUPTED)
    except CrbatchError as e:
        log.error("%s", e)
        return int(e.code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception as e:
        # A full disk or a read-only location met outside schema.atomic_output (a log, a plot, a
        # library's own file): the same one line and exit code as everywhere else.
        err = classify_write_error(getattr(e, "filename", None) or "output", e) if _is_write_error(e) else None
        if err is not None:
            log.debug("where the write failed:", exc_info=True)
            log.error("%s", err)
            return int(err.code)
        log.exception("internal error (please report this with the log above)")
        return int(ExitCode.INTERNAL)


def _is_write_error(e: BaseException) -> bool:
    """Errors that can only come from writing (disk full, quota, read-only file system): EACCES is
    not one of them, it can come from reading an input."""
    return isinstance(e, (OSError, RuntimeError)) and error_errno(e) in (*DISK_FULL_ERRNO, errno.EROFS)


def run() -> None:
    signals.install()  # before anything else: no moment of the command without a handler
    try:
        code = main()
    except signals.SignalExit as e:  # before the logging was set up (or after the command's own try)
        print(f"crbatch: stopped by {signals.signal_name(e.signum)} before finishing; rerun to do the work",
              file=sys.stderr)  # fmt: skip
        code = int(ExitCode.INTERRUPTED)
    sys.exit(code)
