"""``crbatch build`` end to end: plan, shuffle, write all outputs atomically, summarise.

Outputs: ``DIR/main_{train,val,test}.h5`` and, when data shards are given, ``DIR/cr_{train,val,test}.h5``,
plus ``DIR/summary.json``. Every output is written under a temporary name; all are renamed into
place only after all are complete (datasets of a role this build does not make are removed first),
so a failed build leaves the previous outputs (or nothing). A build killed -9 between two of the
final renames leaves files of two builds: every reader refuses such a directory (build ids differ,
crbatch.build.consistency) and the next build redoes it. A rebuild with the same build id (config +
shard identities + xsec values) into a consistent directory is skipped unless ``force``. One build
at a time writes a directory: a second one exits 16 (crbatch.locks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from .. import __version__, locks, outputs, schema
from ..errors import InputEmpty, Transient, classify_write_error
from .config import BuildConfig, BuildInput
from .h5io import tune_malloc
from .parallel import n_workers, run_gather, run_scatter
from .plan import Plan, build_id, make_plan
from .write import Sums, balance_factor, n_buckets, temp_dir

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
CLASS_NAMES = {"qcd": "QCD", "sig": "signal", "bib": "BIB", "data": "data"}


def output_paths(cfg: BuildConfig, roles: list[str]) -> dict[tuple[str, str], Path]:
    return {(r, s): cfg.output_dir / schema.dataset_filename(r, s) for r in roles for s in schema.SPLITS}


def _up_to_date(finals: dict[tuple[str, str], Path], bid: str) -> dict[str, Any] | None:
    summary = None
    for p in finals.values():
        try:
            attrs = schema.check_complete(p, "dataset")
        except schema.NotAcceptedError:
            return None
        if attrs.get(schema.A_BUILD_ID) != bid:
            return None
        summary = attrs.get(schema.A_SUMMARY)
    return summary


def build(cfg: BuildConfig, inputs: list[tuple[BuildInput | None, Path]]) -> dict[str, Any]:
    """Build the datasets; returns the summary (also in every output's attributes and summary.json)."""
    t0 = time.monotonic()
    tune_malloc()
    plan = make_plan(inputs, cfg)
    log.info("pass 1 (check shards, plan the selection): %.1f s, peak RSS %.0f MB", time.monotonic() - t0, _peak_mb())
    bid = build_id(plan, cfg)
    finals = output_paths(cfg, plan.roles)
    shards = [s.path for s in plan.shards] + [Path(p) for p, _ in plan.skipped]
    for p in finals.values():
        outputs.check_output(p, "dataset", shards)
    outputs.check_output(cfg.output_dir / SUMMARY_FILE, "summary", shards)
    with locks.hold(cfg.output_dir, "dataset directory"):
        return _build_locked(plan, cfg, bid, finals, t0)


def _build_locked(plan: Plan, cfg: BuildConfig, bid: str, finals: dict[tuple[str, str], Path], t0: float) -> dict:
    if not cfg.force:
        done = _up_to_date(finals, bid)
        if done is not None:
            _remove_other_outputs(cfg, plan.roles)  # left by a build killed before it removed them
            summary_file = cfg.output_dir / SUMMARY_FILE
            if _summary_build(summary_file) != bid:  # killed after the renames, before the summary
                _write_summary_file(summary_file, done)
            log.info("skip: %s already holds complete datasets of this build (id %s); --force redoes it",
                        cfg.output_dir, bid)  # fmt: skip
            return done
    log.info("build %s: %d shards used, %d skipped; datasets: %s", bid, len(plan.shards), len(plan.skipped),
             ", ".join(p.name for p in finals.values()))  # fmt: skip
    for p in finals.values():
        schema.remove_stale_tmp(p.parent, p.name)

    try:
        summary = _write_all(plan, cfg, bid, finals, t0)
    except (OSError, RuntimeError) as e:  # reads of shards are mapped to InputCorrupt already: this is the output side
        err = classify_write_error(cfg.output_dir, e)
        if err is None and isinstance(e, RuntimeError):
            raise
        raise err or Transient(f"{cfg.output_dir}: cannot write the datasets ({e}); retry") from e
    _write_summary_file(cfg.output_dir / SUMMARY_FILE, summary)
    log_summary(summary)
    return summary


def _write_all(plan: Plan, cfg: BuildConfig, bid: str, finals: dict[tuple[str, str], Path], t0: float) -> dict:
    """Passes 2 and 3; all outputs renamed into place at the end (or none on failure)."""
    workers = n_workers(cfg, sum(s.n_jets for s in plan.shards))
    with temp_dir(cfg.tmp_dir or cfg.output_dir) as work:
        n_b = {k: n_buckets(plan.expected.get(k, 0), cfg) for k in finals}
        t1 = time.monotonic()
        sums, buckets = run_scatter(plan, cfg, work, n_b, workers)
        log.info("pass 2 (select, scale, scatter): %.1f s on %d process(es), peak RSS %.0f MB",
                 time.monotonic() - t1, workers, _peak_mb())  # fmt: skip
        _check_selected(plan, cfg, sums)
        factors = {k: balance_factor(*k, sums) for k in finals}
        with contextlib.ExitStack() as stack:
            tmps = {k: stack.enter_context(schema.atomic_output(p)) for k, p in finals.items()}
            t1 = time.monotonic()
            final_sums = run_gather(tmps, factors, buckets, cfg, workers)
            log.info("pass 3 (sort, write): %.1f s, peak RSS %.0f MB", time.monotonic() - t1, _peak_mb())
            summary = make_summary(plan, cfg, bid, final_sums, factors, time.monotonic() - t0)
            for (role, split), tmp in tmps.items():
                _write_attrs(tmp, role, split, plan, cfg, bid, summary)
            # Before the renames: a kill between them then leaves this build's files beside the old
            # build's of the same roles only (refused by every reader), never an old role as if current.
            _remove_other_outputs(cfg, plan.roles)
        # Leaving the stack renamed every output into place.
    return summary


def _peak_mb() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss in kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_selected(plan: Plan, cfg: BuildConfig, sums: dict[tuple[str, str, str], Sums]) -> None:
    """Pass 1 promised jets for every required class; make sure pass 2 found them (exit 13 if not)."""
    for role in plan.roles:
        needed = cfg.main_classes if role == "main" else ["qcd", "data"]
        for dt in needed:
            if not any(sums[k].n for k in sums if k[0] == role and k[2] == dt):
                what = "main dataset" if role == "main" else "control region"
                raise InputEmpty(f"{what}: class {CLASS_NAMES[dt]} has no jets after the selection")


def _write_attrs(tmp: Path, role: str, split: str, plan: Plan, cfg: BuildConfig, bid: str, summary) -> None:

    attrs = {
        schema.A_PRODUCER: "crbatch",
        schema.A_VERSION: __version__,
        schema.A_SCHEMA: schema.SCHEMA_VERSION,
        schema.A_KIND: "dataset",
        schema.A_SPLIT: split,
        schema.A_ROLE: role,
        schema.A_SCALED: cfg.scaling.name,
        schema.A_SCALING: cfg.scaling.constants(),
        schema.A_N_JETS: sum(c["jets"] for c in summary["datasets"][role][split].values()),
        schema.A_SUMMARY: summary,
        schema.A_CONFIG: cfg.to_record(),
        schema.A_SHARDS: plan.shard_list(),
        schema.A_BUILD_ID: bid,
        "labels": {str(int(v)): k for k, v in schema.DATA_TYPES.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with schema.h5_output(tmp, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = schema.to_attr(v)
        schema.mark_complete(f)  # checksums, then the completion mark: last


def make_summary(plan: Plan, cfg: BuildConfig, bid: str, final_sums, factors, seconds: float) -> dict[str, Any]:
    datasets: dict[str, Any] = {}
    for (role, split), per_type in final_sums.items():
        datasets.setdefault(role, {})[split] = {
            dt: {"jets": s.n, "sum_mcEventWeight": s.raw, "sum_weight_xs": s.xs, "sum_weight_balanced": s.balanced,
                 "files": len(s.files)}
            for dt, s in sorted(per_type.items())
        }  # fmt: skip
    reasons: dict[str, int] = {}
    for _, why in plan.skipped:
        key = "empty" if why == "empty" else why.split(" (")[0].split(";")[0]
        reasons[key] = reasons.get(key, 0) + 1
    jets = sum(c["jets"] for r in datasets.values() for sp in r.values() for c in sp.values())
    return {
        "build_id": bid,
        "crbatch_version": __version__,
        "seconds": round(seconds, 2),
        "jets_written": jets,
        "datasets": datasets,
        "balance_factor": {f"{r}_{s}": f for (r, s), f in factors.items()},
        "files": {
            "given": len(plan.shards) + len(plan.skipped),
            "used": len(plan.shards),
            "skipped": len(plan.skipped),
            "skipped_by_reason": reasons,
        },
        "skipped_files": [{"path": p, "reason": r} for p, r in plan.skipped],
        "candidates": {f"{r}/{dt}": n for (r, dt), n in sorted(plan.candidates.items())},
        "weights": {
            "base": cfg.weight_base,
            "xsec": str(cfg.xsec) if cfg.xsec else None,
            "xs_factor": {str(k): v for k, v in sorted(plan.xs_factor.items())},
            "sum_of_weights_initial": {str(k): v for k, v in sorted(plan.sumw_initial.items())},
            "weight_xs": "QCD: mcEventWeight·σε/Σw_initial(DSID); signal: mcEventWeight; BIB, data: 1"
            if cfg.xsec
            else "no cross-section table: mcEventWeight (BIB, data: 1)",
        },
        "scaling": cfg.scaling.name,
        "seed": cfg.seed,
        "split_seed": cfg.split_seed,
    }


def log_summary(summary: dict[str, Any]) -> None:
    """One line per dataset split: jets and Σ weight_balanced per class; one line for the files."""
    for role, splits in summary["datasets"].items():
        for split, per in splits.items():
            cells = [
                f"{CLASS_NAMES.get(dt, dt)} {c['jets']} (Σw {c['sum_weight_balanced']:.4g})" for dt, c in per.items()
            ]
            log.info("summary %-4s %-5s: %s", role, split, ", ".join(cells) or "no jets")
    files = summary["files"]
    why = ", ".join(f"{n} {r}" for r, n in files["skipped_by_reason"].items())
    log.info("summary files: %d given, %d used, %d skipped%s; %d jets in %.1f s", files["given"], files["used"],
                files["skipped"], f" ({why})" if why else "", summary["jets_written"], summary["seconds"])  # fmt: skip


def _remove_other_outputs(cfg: BuildConfig, roles: list[str]) -> None:
    """Datasets of a role this build did not make (e.g. cr_* from an older build with data) would mix
    two builds in one directory: remove them."""
    for role in schema.DATASET_ROLES:
        if role in roles:
            continue
        for split in schema.SPLITS:
            p = cfg.output_dir / schema.dataset_filename(role, split)
            if p.exists() and schema.is_complete(p, "dataset"):
                log.warning("removing %s: made by an earlier build, not part of this one", p)
                p.unlink()


def _summary_build(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc.get("build_id") if isinstance(doc, dict) else None


def _write_summary_file(path: Path, summary: dict[str, Any]) -> None:
    with schema.atomic_output(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
