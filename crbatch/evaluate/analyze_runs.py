"""Training runs for ``crbatch analyze``: history, the reference's best-epoch criteria, the combined
score, the chosen epoch, and the table of config parameters that differ between runs.

Reads the crbatch.train.runs layout (``config.yaml``, ``history.json``, ``epochs/NNN.keras``) and,
as a fallback, the reference's (``keras/history_checkpoint.json``, ``training_params.yaml``).
The combined score and the criteria are documented in docs/analysis.md.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputCorrupt, InputMissing, InputSchema


@dataclass(frozen=True)
class RunSpec:
    name: str
    run: int
    epoch: int | None
    text: str


def parse_run_spec(text: str) -> RunSpec:
    """``NAME/RUN`` or ``NAME/RUN/EPOCH`` (RUN, EPOCH may be negative: counted from the latest)."""
    parts = text.strip("/").split("/")
    try:
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError
        return RunSpec(parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None, text)
    except ValueError:
        raise ConfigError(f"{text!r}: expected NAME/RUN or NAME/RUN/EPOCH, e.g. default/0, default/-1/7") from None


@dataclass
class RunInfo:
    spec: RunSpec
    run_dir: Path
    config: dict[str, Any]  # the run's config.yaml
    history: dict[str, list[float | None]]  # None: a value not recorded that epoch (JSON null)
    saved_epochs: list[int]
    label: str = ""  # NAME/RUN with the run number resolved

    @property
    def n_epochs(self) -> int:
        return max((len(v) for v in self.history.values()), default=0)

    def series(self, key: str) -> np.ndarray:
        v = self.history.get(key)
        if v is None:
            return np.full(self.n_epochs, np.nan)
        a = np.array([np.nan if x is None else x for x in v], dtype=np.float64)
        return np.pad(a, (0, self.n_epochs - len(a)), constant_values=np.nan)


def load_run(spec: RunSpec, base: Path) -> RunInfo:
    """Read a run's config and history (crbatch.train.runs layout; the reference's history as fallback)."""
    from ..train import runs

    model_dir = base / spec.name
    run_dir = runs.find_run(model_dir, spec.run)
    if not run_dir.is_dir():
        raise InputMissing(f"{run_dir}: no such run (runs of {model_dir}: {runs.numeric_runs(model_dir) or 'none'})")
    hist_path = next((p for p in (run_dir / "history.json", run_dir / "keras" / "history_checkpoint.json")
                      if p.exists()), None)  # fmt: skip
    if hist_path is None:
        raise InputMissing(f"{run_dir}: no history.json (has the run finished an epoch?)")
    try:
        history = json.loads(hist_path.read_text())
    except (OSError, ValueError) as e:
        raise InputCorrupt(f"{hist_path}: unreadable ({e})") from e
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        raise InputSchema(f"{hist_path}: expected a mapping of metric names to per-epoch lists")
    config = runs.read_saved_config(run_dir) or {}
    if not config and (run_dir / "training_params.yaml").exists():  # a reference run
        import yaml

        with contextlib.suppress(Exception):
            config = yaml.safe_load((run_dir / "training_params.yaml").read_text()) or {}
    ep_dir = run_dir / "epochs"
    saved = sorted(int(p.stem) for p in ep_dir.glob("*.keras") if p.stem.isdigit()) if ep_dir.is_dir() else []
    return RunInfo(spec, run_dir, config, history, saved, f"{spec.name}/{int(run_dir.name)}")


@dataclass(frozen=True)
class CriterionSpec:
    key: str
    title: str
    history_keys: tuple[str, ...]  # summed


REFERENCE_CRITERIA: tuple[CriterionSpec, ...] = (
    CriterionSpec("val_loss", "Best NN loss", ("val_original_lossf",)),
    CriterionSpec("adv_loss", "Best adversary loss", ("val_original_adv_lossf",)),
    CriterionSpec("disc_loss", "Best discriminator loss", ("val_adv_loss",)),
    CriterionSpec("ks_sum", "Best K-S sum", ("ks_qcd_hist", "ks_sig_hist", "ks_bib_hist")),
)
# Weights of the combined score's rank terms (docs/analysis.md): classifier loss, data/MC K-S sum,
# and — half weight — how far the adversary's loss is from its chance level.
COMBINED_WEIGHTS = {"val_loss": 1.0, "ks_sum": 1.0, "adv_gap": 0.5}


def criterion_values(info: RunInfo, key: str) -> np.ndarray:
    """Per-epoch value of a criterion (NaN where a key is missing)."""
    if key == "combined":
        return combined_score(info)
    if key == "adv_gap":
        return adversary_gap(info)
    spec = next(c for c in REFERENCE_CRITERIA if c.key == key)
    return np.sum([info.series(k) for k in spec.history_keys], axis=0)


def adversary_gap(info: RunInfo) -> np.ndarray:
    """``|val_adv_loss − chance| / chance``: 0 when the adversary knows nothing about data vs MC.

    The chance level is the BCE of a constant guess (``val_adv_loss_chance``; ln 2 when absent).
    Below it the adversary separates data from MC (bad); above it the classifier makes it confidently
    wrong (the reference's unbounded objective, bug 7) — also not what the decorrelation wants.
    """
    loss = info.series("val_adv_loss")
    chance = info.series("val_adv_loss_chance")
    chance = np.where(np.isfinite(chance) & (chance > 0), chance, math.log(2))
    return np.abs(loss - chance) / chance


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties averaged; NaN ranks last."""
    from scipy.stats import rankdata

    v = np.where(np.isfinite(values), values, np.inf)
    return rankdata(v, method="average") - 1.0


def combined_score(info: RunInfo) -> np.ndarray:
    """The combined epoch score (smaller is better; 0 = best epoch on every term).

    ``C(e) = Σ_t w_t · rank_t(e) / (Σ_t w_t · (n − 1))`` over the terms ``val_loss`` (classifier
    CE on validation), ``ks_sum`` (data/MC K-S sum) with weight 1 and ``adv_gap``
    (:func:`adversary_gap`) with weight ½, ranks 0-based over the run's epochs. A term with no
    finite value in the run is left out. Ranks make terms on different scales comparable and are
    robust against a few wild epochs (e.g. epoch 0).
    """
    n = info.n_epochs
    if n == 0:
        return np.zeros(0)
    total = np.zeros(n)
    wsum = 0.0
    for key, w in COMBINED_WEIGHTS.items():
        v = criterion_values(info, key)
        if not np.isfinite(v).any():
            continue
        total += w * _ranks(v)
        wsum += w
    if wsum == 0 or n == 1:
        return np.zeros(n)
    return total / (wsum * (n - 1))


def best_epochs(info: RunInfo, n_best: int = 2) -> list[dict[str, Any]]:
    """Rows ``{criterion, rank, epoch, value}``: the ``n_best`` smallest epochs of every criterion."""
    rows: list[dict[str, Any]] = []
    for crit in (*REFERENCE_CRITERIA, CriterionSpec("combined", "Best combined score", ())):
        v = criterion_values(info, crit.key)
        finite = np.flatnonzero(np.isfinite(v))
        order = finite[np.argsort(v[finite], kind="stable")][:n_best]
        if not order.size:
            rows.append({"criterion": crit.title, "rank": None, "epoch": None, "value": None,
                         "note": f"no values ({' + '.join(crit.history_keys) or 'combined'} not recorded)"})  # fmt: skip
        for r, e in enumerate(order, 1):
            rows.append({"criterion": crit.title, "rank": r, "epoch": int(e), "value": float(v[e])})
    return rows


def choose_epoch(info: RunInfo, criterion: str) -> tuple[int | None, str]:
    """(epoch, why): the spec's epoch, else the best saved epoch by ``criterion``."""
    saved = info.saved_epochs
    if info.spec.epoch is not None:
        e = info.spec.epoch
        if e < 0:
            if -e > len(saved):
                raise InputMissing(f"{info.run_dir}: {len(saved)} saved epochs, cannot take epoch {e}")
            e = saved[e]
        if e not in saved:
            raise InputMissing(f"{info.run_dir}/epochs/{e:03d}.keras: epoch {e} not saved")
        return e, "given in the run spec"
    v = criterion_values(info, criterion)
    candidates = [e for e in saved if e < len(v) and np.isfinite(v[e])]
    if not candidates:
        if not saved:
            return None, "no saved epoch"
        return saved[-1], f"latest saved epoch ({criterion} not recorded)"
    best = min(
        candidates, key=lambda e: (v[e], criterion_values(info, "val_loss")[e] if criterion != "val_loss" else 0)
    )
    return best, f"best {criterion} ({v[best]:.4g})"


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def parameter_tables(infos: Sequence[RunInfo]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(varying, common): config parameters that differ between runs (one column per run) and the rest."""
    flats = [_flat(i.config) for i in infos]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    varying, common = [], []
    for k in keys:
        vals = [f.get(k, "(absent)") for f in flats]
        if len({json.dumps(v, default=str) for v in vals}) > 1:
            varying.append({"parameter": k, **{i.label: _cell(v) for i, v in zip(infos, vals, strict=True)}})
        else:
            common.append({"parameter": k, "value": _cell(vals[0])})
    return varying, common


def _cell(v: Any) -> Any:
    return str(v) if isinstance(v, (bool, type(None))) or not isinstance(v, (int, float)) else v
