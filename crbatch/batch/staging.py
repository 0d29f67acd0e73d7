"""``crbatch storage``: what jobs on root:// storage run to stage files in and out of their sandbox.

A job of a pipeline whose storage is an XRootD URL works in a sandbox directory (jobs/common.sh
makes it): the plan as ``plan/``, the storage's files it needs under ``storage/`` at their paths
relative to the storage root. Per task, ``<stage>/<index>.stage.json`` (crbatch.batch.plan.stage_spec)
says what to copy:

- ``stage-in`` before crbatch runs: the inputs (a missing required one: exit 10, the stage before
  did not finish), and the outputs that exist already, so that crbatch's own idempotence works
  (a complete shard is skipped, a training resumes from its checkpoint);
- ``stage-out`` after it: every output atomically (``crbatch.storage``: temporary name, server-side
  rename), completion marks last; files staged in and not changed since are not sent back; after a
  failure only what the spec marks ``always`` (the shards that were completed — a bad file of a
  bundle fails alone —, the training's checkpoint) and, with ``complete``, only complete files.

``put``, ``get``, ``append``, ``ls`` and ``cat`` are the same operations by hand (jobs/common.sh uses
them for the status files and logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import ConfigError, CrbatchError, ExitCode, InputMissing

log = logging.getLogger(__name__)

MANIFEST = ".crbatch-stagein.json"
LOCAL_ROOT = Path("storage")


def register(sub) -> None:
    p = sub.add_parser(
        "storage",
        help="copy files to and from the storage (root:// or a path); stage a job's files in and out",
        description="File operations on the pipeline storage, each atomic on the destination (temporary name, "
        "then rename). Jobs on root:// storage run stage-in and stage-out around crbatch (docs/batch.md).",
    )
    ssub = p.add_subparsers(dest="op", metavar="OP", required=True)
    put = ssub.add_parser("put", help="copy local files to the storage: SRC DEST [SRC DEST ...]")
    put.add_argument("pairs", nargs="*", metavar="SRC DEST")
    put.add_argument("--append", nargs=2, action="append", default=[], metavar=("SRC", "DEST"),
                     help="append SRC to DEST (DEST rewritten atomically)")  # fmt: skip
    put.add_argument("--rm", action="append", default=[], metavar="DEST", help="remove DEST (if it exists)")
    put.set_defaults(func=run_put)
    get = ssub.add_parser("get", help="copy a file from the storage: SRC DEST")
    get.add_argument("src")
    get.add_argument("dest", type=Path)
    get.add_argument("--optional", action="store_true", help="a missing SRC is not an error")
    get.set_defaults(func=run_get)
    app = ssub.add_parser("append", help="append a local file to one on the storage (rewritten atomically)")
    app.add_argument("src", type=Path)
    app.add_argument("dest")
    app.set_defaults(func=run_append)
    ls = ssub.add_parser("ls", help="list the files under a storage directory")
    ls.add_argument("where")
    ls.set_defaults(func=run_ls)
    cat = ssub.add_parser("cat", help="print a file of the storage")
    cat.add_argument("where")
    cat.set_defaults(func=run_cat)
    for name, func, text in (("stage-in", run_stage_in, "copy a task's inputs into ./storage/"),
                             ("stage-out", run_stage_out, "copy a task's outputs from ./storage/ to the storage")):  # fmt: skip
        s = ssub.add_parser(name, help=text)
        s.add_argument("plan_dir", type=Path, metavar="PLAN_DIR")
        s.add_argument("stage")
        s.add_argument("index", type=int)
        if name == "stage-out":
            s.add_argument("--rc", type=int, default=0, help="crbatch's exit code (non-zero: only 'always' outputs)")
        s.set_defaults(func=func)


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    if len(items) % 2:
        raise CrbatchError("put takes SRC DEST pairs", ExitCode.USAGE)
    return list(zip(items[::2], items[1::2], strict=True))


def run_put(args: argparse.Namespace) -> int:
    for src, dest in args.append:
        append(Path(src), dest)
    for dest in args.rm:
        storage.location(dest).unlink(missing_ok=True)
    for src, dest in _pairs(args.pairs):
        if not Path(src).is_file():
            raise InputMissing(f"{src}: no such file")
        storage.put(Path(src), storage.location(dest))
    return 0


def append(src: Path, dest_text: str) -> None:
    dest = storage.location(dest_text)
    try:
        old = dest.read_bytes()
    except FileNotFoundError:
        old = b""
    try:
        new = src.read_bytes()
    except FileNotFoundError:
        raise InputMissing(f"{src}: no such file") from None
    storage.put_bytes(old + new, dest)


def run_get(args: argparse.Namespace) -> int:
    try:
        storage.get(storage.location(args.src), args.dest)
    except FileNotFoundError:
        if args.optional:
            return 0
        raise InputMissing(f"{args.src}: no such file on the storage") from None
    return 0


def run_append(args: argparse.Namespace) -> int:
    append(args.src, args.dest)
    return 0


def run_ls(args: argparse.Namespace) -> int:
    for f in storage.walk_files(storage.location(args.where)):
        print(f)
    return 0


def run_cat(args: argparse.Namespace) -> int:
    try:
        sys.stdout.buffer.write(storage.location(args.where).read_bytes())
    except FileNotFoundError:
        raise InputMissing(f"{args.where}: no such file on the storage") from None
    return 0


# --- staging -------------------------------------------------------------------------------------


def _spec(plan_dir: Path, stage: str, index: int) -> tuple[Any, dict[str, Any]]:
    from .plan import PATHS_FILE, STAGE_SUFFIX, read_nul_args

    f = plan_dir / stage / f"{index}{STAGE_SUFFIX}"
    try:
        spec = json.loads(f.read_text())
        paths = read_nul_args(plan_dir / PATHS_FILE)
    except FileNotFoundError as e:
        raise InputMissing(f"{e.filename}: not in the plan (was it written for root:// storage?)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{f}: unreadable staging spec ({e})") from e
    if len(paths) < 3:
        raise ConfigError(f"{plan_dir / PATHS_FILE}: no storage root (a plan of an older crbatch: submit again)")
    return storage.location(paths[2]), spec


def _stamp(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def stage_in(root: Any, spec: dict[str, Any], local: Path = LOCAL_ROOT) -> int:
    """Copy the spec's inputs under ``local``; returns the number of files copied."""
    got: dict[str, list[int]] = {}
    n = 0
    for item in spec.get("in", []):
        rel = item["rel"]
        src, dest = root / rel, local / rel
        if item.get("tree"):
            files = storage.walk_files(src)
            if not files and not item.get("optional"):
                raise InputMissing(f"{src}: nothing there (has the stage that writes it finished?)")
            for f in files:
                storage.get(src / f, dest / f)
                got[f"{rel}/{f}"] = _stamp(dest / f)
                n += 1
            continue
        try:
            storage.get(src, dest)
        except FileNotFoundError:
            if item.get("optional"):
                continue
            raise InputMissing(f"{src}: no such file (has the stage that writes it finished?)") from None
        got[rel] = _stamp(dest)
        n += 1
    (local / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    (local / MANIFEST).write_text(json.dumps(got))
    log.info("staged in %d file(s) from %s", n, root)
    return n


def _unchanged(local: Path, rel: str, manifest: dict[str, list[int]]) -> bool:
    with contextlib.suppress(OSError):
        return manifest.get(rel) == _stamp(local / rel)
    return False


def stage_out(root: Any, spec: dict[str, Any], rc: int, local: Path = LOCAL_ROOT) -> int:
    """Copy the spec's outputs from ``local`` to the storage; returns the number of files copied."""
    try:
        manifest = json.loads((local / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    n = 0
    for item in spec.get("out", []):
        if rc != 0 and not item.get("always"):
            continue
        rel = item["rel"]
        src, dest = local / rel, root / rel
        if item.get("tree"):
            if not src.is_dir():
                continue
            files = storage.walk_files(src)
            if all(_unchanged(local, f"{rel}/{f}", manifest) for f in files):
                continue  # staged in and left as it was (e.g. a finished run or report)
            last = tuple(item.get("last", ()))
            n += storage.upload_tree(src, dest, last=last, delete_extra=bool(item.get("delete_extra")))
            continue
        if not src.is_file() or _unchanged(local, rel, manifest):
            continue
        if item.get("complete") and not storage.is_complete(src, item["complete"]):
            log.warning("%s: not complete; not staged out", src)
            continue
        storage.put(src, dest)
        n += 1
    log.info("staged out %d file(s) to %s", n, root)
    return n


def run_stage_in(args: argparse.Namespace) -> int:
    root, spec = _spec(args.plan_dir, args.stage, args.index)
    stage_in(root, spec)
    return 0


def run_stage_out(args: argparse.Namespace) -> int:
    root, spec = _spec(args.plan_dir, args.stage, args.index)
    stage_out(root, spec, args.rc)
    return 0
