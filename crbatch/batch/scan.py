"""Training campaigns: ``train.scan`` and ``train.option_sets`` expanded into named runs.

A campaign is several trainings of one pipeline on the same datasets, side by side::

    train:
      options: {epochs: 20}                               # every run
      scan: {adversary_weight: [0, 3, 10, 30], seed: [1, 2, 3]}  # product: 12 runs
      option_sets:                                        # and/or explicit sets (× the scan)
        - {nodes_lstm: 64}
        - {nodes_lstm: 150, layers_list: 2}

The runs are every option set (one empty set when none is given) combined with every point of the
product of the ``scan`` lists; each run's options are ``train.options`` updated by its own.

Each run is named by its own options only — ``adversary_weight-3.seed-1`` (keys sorted, ``key-value``
joined by ``.``), so a name is stable: adding a value to a list or a set to ``option_sets`` adds runs
and keeps every existing name (and run directory, and finished training). Adding a *key* renames the
runs (they now say a value for it). A value whose text is not made of ``[A-Za-z0-9.-]`` is written
with its unsafe characters replaced and a short hash of the value appended, so two runs never share a
name. A run's directory is ``<storage>/training_results/<model>.<name>/<run:05d>`` and its job id
``train.<name>``; a pipeline without scan keeps ``<model>/<run:05d>`` and job id ``train``.

Everything here is checked when the pipeline is loaded (``crbatch submit``): an unknown or reserved
key, an empty list, a value the training config refuses, two sets giving the same run: one line
naming the key and the run, exit 3.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESERVED = frozenset({"data", "output_dir", "main_training_file", "cr_training_file", "checkpoint_exit_code"})
"""Training keys the pipeline sets itself (storage layout); never scanned."""
NOT_SCANNED = frozenset({"model_name"})
"""Keys a scan cannot vary: the model name names the run directories."""
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9.-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
MAX_NAME = 80


@dataclass(frozen=True)
class RunPoint:
    """One training of a campaign: its name (``""`` for the single run of a pipeline without scan)
    and the options that make it differ from ``train.options``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        """The options as people read them: ``adversary_weight=3, seed=1``."""
        return ", ".join(f"{k}={_text(v)}" for k, v in self.options.items()) or "train.options"


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else format(v, "g")
    if isinstance(v, list | tuple):
        return "x".join(_text(x) for x in v)
    if v is None:
        return "null"
    return str(v)


def value_token(v: Any) -> str:
    """A value as it appears in a run name: ``3``, ``0.001``, ``1e-05``, ``64x64``, ``true``."""
    text = _text(v)
    if _SAFE_VALUE.match(text):
        return text
    digest = hashlib.sha1(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return (_UNSAFE.sub("_", text).strip("_")[:24] or "v") + "-" + digest


def _canonical(v: Any) -> Any:
    """3 and 3.0 are the same option value (YAML gives either)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    if isinstance(v, list | tuple):
        return [_canonical(x) for x in v]
    return v


def point_name(options: dict[str, Any]) -> str:
    """The run name of a set of options (keys sorted: the YAML's order does not matter)."""
    name = ".".join(f"{k}-{value_token(options[k])}" for k in sorted(options))
    if len(name) > MAX_NAME:  # long option sets: a readable head and a hash of the whole set
        digest = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = name[: MAX_NAME - 9].rstrip(".-_") + "-" + digest
    return name


def expand(scan: dict[str, Any], option_sets: list[Any]) -> list[RunPoint]:
    """The runs of a campaign (order: option sets, then the product in the scan's key order);
    ``[RunPoint("")]`` for a pipeline without scan. Raises ValueError with a one-line message."""
    if not scan and not option_sets:
        return [RunPoint("")]
    for k, values in scan.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"train.scan.{k}: give a non-empty list of values, e.g. {k}: [1, 2]")
    sets = option_sets or [{}]
    for i, s in enumerate(sets):
        if not isinstance(s, dict):
            raise ValueError(f"train.option_sets[{i}]: give a mapping of training options, e.g. {{seed: 2}}")
        both = sorted(set(s) & set(scan))
        if both:
            raise ValueError(f"train.option_sets[{i}]: {', '.join(both)} is also in train.scan; give it in one place")
    keys = list(scan)
    out: list[RunPoint] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(sets):
        for combo in itertools.product(*(scan[k] for k in keys)):
            opts = {k: _canonical(v) for k, v in {**s, **dict(zip(keys, combo, strict=True))}.items()}
            name = point_name(opts) if opts else "default"
            if name in seen:
                raise ValueError(f"train: run {name} is given twice (option_sets[{seen[name]}] and [{i}]); "
                                 "remove one")  # fmt: skip
            seen[name] = i
            out.append(RunPoint(name, opts))
    return out


def check_points(points: list[RunPoint], options: dict[str, Any]) -> None:
    """Refuse keys the training does not know or the pipeline sets, and values the training config
    refuses in any run (with the run's name): ValueError, one line."""
    from pydantic import ValidationError

    from ..train.config import TrainConfig

    keys = {k for p in points for k in p.options}
    for k in sorted(keys):
        if k in RESERVED:
            raise ValueError(f"train.scan: {k} is set by the pipeline (storage layout); remove it")
        if k in NOT_SCANNED:
            raise ValueError(f"train.scan: {k} names the run directories and cannot be scanned; remove it")
        if k not in TrainConfig.model_fields:
            raise ValueError(f"train.scan: {k}: unknown training option (typo? see crbatch train --print-config)")
    for p in points:
        if not p.name:
            continue
        try:
            TrainConfig.model_validate({**options, **p.options})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ValueError(f"train run {p.name}: {loc}: {err['msg']}") from None


def model_of(model: str, point: RunPoint) -> str:
    """The model name (run directory parent) of a run: ``<model>.<name>``, or ``<model>`` alone."""
    return f"{model}.{point.name}" if point.name else model


def run_dir_of(runs_base: Path, model: str, point: RunPoint, run: int) -> Path:
    from ..train.runs import run_path

    return run_path(runs_base / model_of(model, point), run)


def job_of(point: RunPoint) -> str:
    return f"train.{point.name}" if point.name else "train"


# --- stable task indices -----------------------------------------------------------------------

INDEX_FILE = "indices.json"


def stable_indices(names: list[str], plan_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Task indices of the training jobs that never change within a plan directory.

    A Slurm array element or DAG node that is requeued or restarted reads ``train/<index>.args`` of
    the plan directory *as it is then*: when a point is added to the scan and the campaign submitted
    again, a job of the first submission must still find its own run there. So every job id keeps the
    index it had (``train/indices.json`` remembers them, removed runs included) and new runs get new
    ones after the largest. Returns (index of each of ``names``, every index ever given).
    """
    f = plan_dir / "train" / INDEX_FILE
    try:
        known = {str(k): int(v) for k, v in json.loads(f.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        known = {}
    nxt = max(known.values(), default=-1) + 1
    out = {}
    for n in names:
        if n not in known:
            known[n] = nxt
            nxt += 1
        out[n] = known[n]
    return out, known
