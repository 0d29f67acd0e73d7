"""The epoch ``crbatch analyze`` chose for a run, recorded in the run directory for ``crbatch export``.

``<run_dir>/choice.json`` (written atomically, last, after the report)::

    {"format": "crbatch-choice", "format_version": 1, "run": "default/0", "epoch": 4,
     "why": "best combined (0.125)", "criterion": "combined",
     "n_epochs": 5, "saved_epochs": [0, 1, 2, 3, 4], "history_sha256": "...",
     "epoch_file": "epochs/004.keras", "epoch_file_sha256": "...",
     "report": ".../reports/default", "metrics": ".../reports/default/metrics.json",
     "crbatch_version": "...", "created": "..."}

``crbatch export NAME/RUN/best`` exports ``epoch`` and refuses (exit 12) a **stale** choice: the run
has more epochs, a different history or a different epoch file than the analysis saw (train
resumed after the analysis), unless ``--allow-stale``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputCorrupt, InputMissing, InputSchema
from ..schema import atomic_output

FORMAT = "crbatch-choice"
FORMAT_VERSION = 1
FILENAME = "choice.json"


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def history_file(run_dir: Path) -> Path | None:
    return next((p for p in (run_dir / "history.json", run_dir / "keras" / "history_checkpoint.json") if p.exists()),
                None)  # fmt: skip


@dataclass
class Choice:
    """What the analysis chose for one run (see the module docstring)."""

    run: str
    epoch: int
    why: str
    criterion: str
    n_epochs: int
    saved_epochs: list[int]
    history_sha256: str
    epoch_file: str
    epoch_file_sha256: str
    report: str | None = None
    metrics: str | None = None
    crbatch_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_choice(run: str, run_dir: Path, epoch: int, why: str, criterion: str, n_epochs: int,
                saved: list[int]) -> Choice:  # fmt: skip
    hist = history_file(run_dir)
    ep = run_dir / "epochs" / f"{epoch:03d}.keras"
    return Choice(run, epoch, why, criterion, n_epochs, list(saved), sha256_file(hist) if hist else "",
                  str(ep.relative_to(run_dir)), sha256_file(ep))  # fmt: skip


def write_choice(run_dir: Path, choice: Choice) -> Path:
    path = run_dir / FILENAME
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(choice.as_dict(), indent=1) + "\n")
    return path


def read_choice(run_dir: Path) -> Choice:
    path = run_dir / FILENAME
    if not path.exists():
        raise InputMissing(f"{path}: no analysis of this run yet; run `crbatch analyze` on it first "
                           "(it records the chosen epoch), or give the epoch (NAME/RUN/EPOCH)")  # fmt: skip
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputCorrupt(f"{path}: unreadable ({e}); rerun `crbatch analyze`") from e
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise InputSchema(f"{path}: not a crbatch choice file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise InputSchema(f"{path}: choice format {doc.get('format_version')}, this crbatch reads {FORMAT_VERSION}; "
                          "rerun `crbatch analyze`")  # fmt: skip
    try:
        return Choice(**{k: doc[k] for k in Choice.__dataclass_fields__ if k in doc})
    except TypeError as e:
        raise InputSchema(f"{path}: incomplete choice file ({e}); rerun `crbatch analyze`") from e


def staleness(run_dir: Path, choice: Choice) -> list[str]:
    """Why ``choice`` no longer describes the run (empty: it is current)."""
    why = []
    hist = history_file(run_dir)
    n = 0
    if hist is not None:
        try:
            h = json.loads(hist.read_text())
            n = max((len(v) for v in h.values() if isinstance(v, list)), default=0)
        except (OSError, ValueError):
            why.append(f"{hist} is unreadable now")
    if n != choice.n_epochs:
        why.append(f"the analysis saw {choice.n_epochs} epochs, the run has {n} now")
    elif hist is not None and choice.history_sha256 and sha256_file(hist) != choice.history_sha256:
        why.append(f"{hist.name} changed since the analysis")
    ep = run_dir / choice.epoch_file
    if not ep.exists():
        why.append(f"{ep} no longer exists")
    elif sha256_file(ep) != choice.epoch_file_sha256:
        why.append(f"{ep} changed since the analysis")
    return why
