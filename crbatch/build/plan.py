"""Pass 1 of the build: check every shard and decide, from the small ``jets`` tables only, which jets
are kept (quotas, fractions, filters) and how they are weighted (cross-section normalisation).

Nothing here reads the constituent tables, so pass 1 costs a few percent of the build; its memory
is bounded by one shard's jets table plus the quota sizes, not by the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..config import load_yaml
from ..errors import ConfigError, InputCorrupt, InputEmpty, InputMissing, InputSchema
from ..progress import Progress
from ..scaling import LEGACY_NAME, is_scaled, legacy_constants
from . import select
from .config import BuildConfig, BuildInput, ClassQuota
from .h5io import SliceReader

log = logging.getLogger(__name__)

SCAN_BLOCK = 1 << 18  # jets-table rows read at a time in pass 1 (~20 MB)
_DSID_IN_PATH = re.compile(r"(?:^|[./_])(\d{6})(?=[./_])")


@dataclass
class Shard:
    """A shard that contributes jets, with its per-file selection."""

    path: Path
    data_type: str
    roles: tuple[str, ...]
    n_jets: int
    dsid: int
    event_filter: str
    fraction: float
    max_jets: int | None
    source: int = -1  # index in the datasets' shard list
    file_threshold: int | None = None  # per-file quota: keep file_hash < this
    only_label: int | None = None  # a multi-class (legacy) shard: this entry takes the jets of one label
    prescaled: bool = False  # features scaled by the reference already (legacy): copied, not scaled again

    @property
    def label(self) -> int:
        return int(schema.DATA_TYPES[self.data_type])


@dataclass
class Plan:
    shards: list[Shard]
    skipped: list[tuple[str, str]]  # (path, reason)
    class_threshold: dict[tuple[str, str], int | None]  # (role, data_type) → keep class_hash < this
    xs_factor: dict[int, float]  # DSID → σε / Σw_initial
    sumw_initial: dict[int, float]
    candidates: dict[tuple[str, str], int]  # (role, data_type) → jets passing file-level selection
    expected: dict[tuple[str, str], int]  # (role, split) → expected jets (for sizing shuffle buckets)
    fingerprints: list[dict[str, Any]] = field(default_factory=list)
    xsec_table: dict[int, float] | None = None
    cr_wanted: bool = False
    prescaled: bool = False  # some shards were scaled by the reference: the datasets are in its scaling

    def scaling(self, cfg: BuildConfig) -> tuple[str, dict[str, Any]]:
        """(``scaled`` name, ``scaling`` constants) of the datasets this plan writes."""
        if self.prescaled:
            return LEGACY_NAME, legacy_constants()
        return cfg.scaling.name, cfg.scaling.constants()

    @property
    def roles(self) -> list[str]:
        return [r for r in schema.DATASET_ROLES if any(r in s.roles for s in self.shards)]

    def shard_list(self) -> list[str]:
        return [str(s.path) for s in self.shards]


def default_use(data_type: str, cfg: BuildConfig) -> str:
    return {"qcd": cfg.qcd_use, "sig": "main", "bib": "main", "data": "cr"}[data_type]


def roles_for(data_type: str, use: str, path: Path) -> tuple[str, ...]:
    allowed = {"qcd": {"main", "cr", "both"}, "sig": {"main"}, "bib": {"main"}, "data": {"cr"}}[data_type]
    if use not in allowed:
        raise ConfigError(
            f"{path}: a {data_type} shard cannot be used for {use!r} "
            f"(signal/BIB feed only the main dataset, data only the control region)"
        )
    return ("main", "cr") if use == "both" else (use,)


def load_xsec(path: Path) -> dict[int, float]:
    """``{DSID: σ × ε [pb]}``; a value may also be ``{xsec: pb, filter_eff: f, k_factor: k}``."""
    data = load_yaml(path)
    out: dict[int, float] = {}
    for k, v in data.items():
        try:
            dsid = int(k)
            if isinstance(v, dict):
                unknown = set(v) - {"xsec", "filter_eff", "k_factor"}
                if unknown or "xsec" not in v:
                    raise ValueError(f"expected keys xsec[, filter_eff, k_factor], got {sorted(v)}")
                val = float(v["xsec"]) * float(v.get("filter_eff", 1.0)) * float(v.get("k_factor", 1.0))
            else:
                val = float(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cross-section table {path}: entry {k!r}: {e}") from e
        if not val > 0:
            raise ConfigError(f"cross-section table {path}: DSID {dsid} has non-positive σ×ε {val}")
        out[dsid] = val
    return out


def open_h5(path: Path):
    """h5py.File for reading, with the lz4 filter registered (shards are lz4-compressed)."""
    import h5py
    import hdf5plugin  # noqa: F401 - registers the filters

    return h5py.File(path, "r")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a read error in the middle of a shard into a clear InputCorrupt naming it."""
    try:
        yield
    except OSError as e:
        raise InputCorrupt(f"{path}: read error ({e}); the shard is damaged: recopy or reconvert it") from e


def _open_attrs(path: Path) -> dict[str, Any]:

    try:
        with open_h5(path) as f:
            attrs = schema.read_attrs(f)
            missing = [n for n in ("jets", *schema.TABLES) if n not in f]
            if f.get("jets") is not None and f["jets"].dtype != schema.JET_DTYPE:
                raise InputSchema(f"{path}: jets table has another layout than this crbatch's; reconvert it")
    except FileNotFoundError as e:
        raise InputMissing(f"{path}: no such file; check the path") from e  # vanished since expand
    except OSError as e:
        raise InputCorrupt(f"{path}: not a readable HDF5 file ({e}); recopy or reconvert it") from e
    if attrs.get(schema.A_PRODUCER) != "crbatch":
        raise InputSchema(f"{path}: not a crbatch shard (no producer=crbatch attribute)")
    if attrs.get(schema.A_SCHEMA) != schema.SCHEMA_VERSION:
        raise InputSchema(
            f"{path}: schema version {attrs.get(schema.A_SCHEMA)}, this crbatch reads {schema.SCHEMA_VERSION}; "
            "reconvert it with this version"
        )
    if not attrs.get(schema.A_COMPLETE):
        raise InputSchema(f"{path}: incomplete shard (no completion mark); rerun the convert job that writes it")
    if attrs.get(schema.A_KIND) != "shard":
        raise InputSchema(f"{path}: is a {attrs.get(schema.A_KIND)!r} file, build reads shards")
    if missing:
        raise InputSchema(f"{path}: missing tables {', '.join(missing)}")
    dt = attrs.get(schema.A_DATA_TYPE)
    if dt == "mixed":
        shard_classes(attrs, path)  # must say which classes it holds
    elif dt not in schema.DATA_TYPES:
        raise InputSchema(f"{path}: unknown data_type {dt!r}")
    scaled = attrs.get(schema.A_SCALED)
    if is_scaled(scaled) and scaled != LEGACY_NAME:
        raise InputSchema(f"{path}: features already scaled ({scaled}); build reads raw or reference-scaled shards")
    _verify(path)
    return attrs


_LABEL_TYPE = {label.name: name for name, label in schema.DATA_TYPES.items()}


def shard_classes(attrs: dict[str, Any], path: Path) -> dict[str, int]:
    """{data type: jets} of a shard: one class, or a multi-class legacy shard's ``label_counts``."""
    dt = attrs.get(schema.A_DATA_TYPE)
    if dt != "mixed":
        return {str(dt): int(attrs.get(schema.A_N_JETS, 0))}
    counts = attrs.get("label_counts")
    if not isinstance(counts, dict) or not counts or not set(counts) <= set(_LABEL_TYPE):
        raise InputSchema(f"{path}: multi-class shard without valid label_counts; reconvert it with this crbatch")
    return {_LABEL_TYPE[k]: int(v) for k, v in counts.items()}


def mixed_use(data_type: str, attrs: dict[str, Any], entry: BuildInput | None) -> str:
    """Where the jets of one class of a multi-class legacy shard go.

    A reference main training file feeds the main dataset, its control-region file the control
    region; an entry's ``use`` applies to the QCD jets (signal/BIB are main, data is cr, always).
    """
    if data_type != "qcd":
        return {"sig": "main", "bib": "main", "data": "cr"}[data_type]
    if entry is not None and entry.use:
        return entry.use
    return "cr" if attrs.get("legacy_kind") == "control-region" else "main"


def _verify(path: Path) -> None:
    """The shard's content checksums (a damaged shard is exit 11, one without checksums exit 12)."""
    try:
        with open_h5(path) as f:
            schema.verify_content(f)
    except schema.DamagedError as e:
        raise InputCorrupt(f"{path}: damaged shard: {e}; reconvert it (crbatch convert redoes it by itself)") from e
    except schema.NotAcceptedError as e:
        raise InputSchema(f"{path}: {e}") from e
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise InputCorrupt(f"{path}: damaged shard: reading its stored data failed ({e}); reconvert it") from e


def _dsid(attrs: dict[str, Any], entry: BuildInput | None, path: Path) -> int:
    if entry is not None and entry.dsid is not None:
        return entry.dsid
    d = attrs.get("dsid", -1)
    if isinstance(d, (int, np.integer)) and d >= 0:
        return int(d)
    # Grid dataset names carry the DSID (mc16_13TeV.361022.Pythia8...): the only clue an empty shard has.
    m = _DSID_IN_PATH.search(str(attrs.get("source_path", "")))
    return int(m.group(1)) if m else -1


def _fingerprint(path: Path, attrs: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(path), "n_jets": attrs.get(schema.A_N_JETS), "created": attrs.get("created"),
            "source": attrs.get("source_path")}  # fmt: skip


@dataclass
class Discovered:
    usable: list[tuple[Shard, dict[str, Any]]]
    skipped: list[tuple[str, str]]
    sumw: dict[int, float]
    fingerprints: list[dict[str, Any]]
    cr_wanted: bool


def discover(inputs: list[tuple[BuildInput | None, Path]], cfg: BuildConfig) -> Discovered:
    """Check every shard; collect Σw_initial per DSID from all of them (empty ones included)."""
    seen: dict[Path, BuildInput | None] = {}
    for entry, p in inputs:
        rp = p.resolve()
        if rp in seen:
            if seen[rp] != entry:
                log.warning("%s is given twice with different options; using the first", p)
            continue
        seen[rp] = entry
    usable, skipped, prints = [], [], []
    sumw: dict[int, float] = defaultdict(float)
    sumw_unknown: list[str] = []
    cr_wanted = cfg.qcd_use == "cr"
    for rp, entry in sorted(seen.items(), key=lambda kv: str(kv[0])):
        try:
            attrs = _open_attrs(rp)
        except (InputSchema, InputCorrupt) as e:
            if not cfg.skip_bad_shards:
                raise
            log.warning("skipping %s", e)
            skipped.append((str(rp), str(e).split(": ", 1)[-1]))
            continue
        prints.append(_fingerprint(rp, attrs))
        mixed = attrs[schema.A_DATA_TYPE] == "mixed"
        prescaled = attrs.get(schema.A_SCALED) == LEGACY_NAME
        dsid = _dsid(attrs, entry, rp)
        if attrs[schema.A_DATA_TYPE] == "qcd":
            sw = attrs.get("sum_of_weights_initial")
            if sw is not None and dsid >= 0:
                sumw[dsid] += float(sw)
            elif sw is not None:
                sumw_unknown.append(str(rp))
        if int(attrs.get(schema.A_N_JETS, 0)) == 0 or attrs.get(schema.A_STATUS) == "empty":
            skipped.append((str(rp), "empty"))
            continue
        ev = (entry.event_filter if entry and entry.event_filter else None) or cfg.event_filter
        fr = entry.fraction if entry and entry.fraction is not None else 1.0
        mx = entry.max_jets if entry and entry.max_jets is not None else cfg.max_jets_per_file
        # A multi-class shard becomes one entry per class, each taking the jets of its label.
        for dt, n in shard_classes(attrs, rp).items():
            if n == 0:
                continue
            if mixed:
                use = mixed_use(dt, attrs, entry)
            else:
                use = (entry.use if entry and entry.use else None) or default_use(dt, cfg)
            roles = roles_for(dt, use, rp)
            cr_wanted |= dt == "data" or (dt == "qcd" and use == "cr" and (mixed or entry is not None))
            only = int(schema.DATA_TYPES[dt]) if mixed else None
            usable.append((Shard(rp, dt, roles, n, dsid, ev, fr, mx, only_label=only, prescaled=prescaled), attrs))
    if not cr_wanted:  # no data shards: no control region (QCD then feeds the main dataset only)
        for s, _ in usable:
            s.roles = tuple(r for r in s.roles if r != "cr")
        usable = [(s, a) for s, a in usable if s.roles]
    if sumw_unknown:
        more = f" (and {len(sumw_unknown) - 1} more)" if len(sumw_unknown) > 1 else ""
        msg = f"{sumw_unknown[0]}{more}: QCD shard of unknown DSID; its Σw_initial cannot be counted"
        if cfg.xsec is not None:
            raise InputSchema(f"{msg}. Give its dsid in the input YAML list")
        log.warning("%s (it matters only for --xsec normalisation)", msg)
    return Discovered(usable, skipped, dict(sumw), prints, cr_wanted)


def _xs_factors(shards: list[Shard], sumw: dict[int, float], cfg: BuildConfig) -> tuple[dict, dict | None]:
    if cfg.xsec is None:
        return {}, None
    table = load_xsec(cfg.xsec)
    qcd = sorted({s.dsid for s in shards if s.data_type == "qcd"})
    if -1 in qcd:
        where = next(s.path for s in shards if s.data_type == "qcd" and s.dsid == -1)
        raise InputSchema(f"{where}: QCD shard without a DSID; give its dsid in the input YAML list")
    missing = [d for d in qcd if d not in table]
    if missing:
        raise ConfigError(
            f"cross-section table {cfg.xsec}: no entry for DSID {', '.join(map(str, missing))}; add them "
            "(σ × filter efficiency in pb)"
        )
    no_sumw = [d for d in qcd if not sumw.get(d, 0) > 0]
    if no_sumw:
        where = next(s.path for s in shards if s.dsid == no_sumw[0])
        raise InputSchema(
            f"{where}: DSID {no_sumw[0]} has no sum_of_weights_initial (no MetaData_EventCount in its ntuples); "
            "cannot normalise to its cross-section"
        )
    return {d: table[d] / sumw[d] for d in qcd}, table


def check_scaling(shards: list[Shard], cfg: BuildConfig) -> bool:
    """Whether the datasets are in the reference's scaling (some shards were scaled by it).

    Reference-scaled values cannot be unscaled (the layer fractions and the η flips lose
    information), so raw shards can join them only when scaled the reference's way too.
    """
    pre = [s for s in shards if s.prescaled]
    if not pre:
        return False
    raw = [s for s in shards if not s.prescaled]
    if raw and not (cfg.scaling.reference_exact and tuple(cfg.scaling.jet_pt) == (0.0, 500.0)):
        raise InputSchema(
            f"{raw[0].path} is raw, {pre[0].path} was scaled by the reference: build them together with "
            "--set scaling.reference_exact=true (the reference's pre_process, jet window 0-500 GeV) or build them apart"
        )
    return True


def make_plan(inputs: list[tuple[BuildInput | None, Path]], cfg: BuildConfig) -> Plan:
    found = discover(inputs, cfg)
    shards = [s for s, _ in found.usable]
    prescaled = check_scaling(shards, cfg)
    skipped, sumw = found.skipped, found.sumw
    for i, s in enumerate(shards):
        s.source = i
    xs_factor, xsec_table = _xs_factors(shards, sumw, cfg)

    quotas: dict[tuple[str, str], ClassQuota] = {("main", k): v for k, v in cfg.main.items()}
    quotas |= {("cr", k): v for k, v in cfg.cr.items()}
    frac_thr: dict[tuple[str, str], int | None] = {}
    smallest: dict[tuple[str, str], select.SmallestK] = {}
    for s in shards:
        for r in s.roles:
            key = (r, s.data_type)
            if key in frac_thr:
                continue
            q = quotas.get(key)
            frac_thr[key] = select.fraction_threshold(cfg.fraction * (q.fraction if q else 1.0))
            if q and q.max_jets:
                smallest[key] = select.SmallestK(q.max_jets)
    candidates: Counter = Counter()
    prog = Progress(sum(s.n_jets for s in shards), "build: scan", unit="jets")
    try:
        for s in shards:
            need_class = any(frac_thr[(r, s.data_type)] is not None or (r, s.data_type) in smallest for r in s.roles)
            fh_parts: list[Any]  # arrays wherever a hash is concatenated below (None only where unused)
            ch_parts: list[Any]
            fh_parts, ch_parts, n_pass = [], [], 0
            with reading(s.path):
                f = open_h5(s.path)
            try:
                jets_reader = SliceReader(f["jets"])
                for a in range(0, len(jets_reader), SCAN_BLOCK):
                    with reading(s.path):
                        jets = jets_reader.read(a, min(len(jets_reader), a + SCAN_BLOCK))
                    prog.update(len(jets))
                    m = base_mask(jets, s, cfg)
                    n_pass += int(m.sum())
                    # Hashes only where a quota needs them (most builds have none).
                    if s.max_jets or need_class:
                        j = jets[m]
                        fh_parts.append(select.file_hash(j, cfg.seed) if s.max_jets else None)
                        ch_parts.append(select.class_hash(j, cfg.seed) if need_class else None)
            finally:
                f.close()
            ch = np.concatenate(ch_parts) if need_class and ch_parts else None
            if s.max_jets and n_pass > s.max_jets:
                fh = np.concatenate(fh_parts)
                acc = select.SmallestK(s.max_jets)
                acc.add(fh)
                s.file_threshold = acc.threshold()
                keep = select.below(fh, s.file_threshold)
                n_pass = int(keep.sum())
                ch = ch[keep] if ch is not None else None
            for r in s.roles:
                key = (r, s.data_type)
                if ch is None:
                    candidates[key] += n_pass
                    continue
                keep = select.below(ch, frac_thr[key])
                candidates[key] += int(keep.sum())
                if key in smallest:
                    smallest[key].add(ch[keep])
    finally:
        prog.close()

    class_threshold: dict[tuple[str, str], int | None] = {}
    expected: Counter = Counter()  # (role, split): jets expected, to size the shuffle buckets
    fractions = cfg.split.model_dump()
    for key, thr in frac_thr.items():
        sk = smallest.get(key)
        class_threshold[key] = select.min_threshold(thr, sk.threshold() if sk else None)
        n = min(candidates[key], sk.k) if sk else candidates[key]
        for split in schema.SPLITS:
            expected[(key[0], split)] += int(np.ceil(n * fractions[split] * 1.05)) + 16
    plan = Plan(
        shards=shards, skipped=skipped, class_threshold=class_threshold, xs_factor=xs_factor, sumw_initial=sumw,
        candidates=dict(candidates), expected=dict(expected),
        fingerprints=found.fingerprints, xsec_table=xsec_table, cr_wanted=found.cr_wanted, prescaled=prescaled,
    )  # fmt: skip
    check_classes(plan, cfg)
    if not plan.roles:
        why = ", ".join(f"{n} {r}" for r, n in Counter(r for _, r in skipped).items()) or "none given"
        raise InputEmpty(f"no shard has jets to build from ({why})")
    return plan


def base_mask(jets: np.ndarray, s: Shard, cfg: BuildConfig) -> np.ndarray:
    """Event filter, signal mass points and the per-file fraction."""
    m = select.event_mask(jets, s.event_filter) & select.mass_mask(jets, cfg.mass_points)
    if s.only_label is not None:
        m &= jets["label"] == s.only_label
    if s.fraction < 1.0:
        m &= select.below(select.file_hash(jets, cfg.seed), select.fraction_threshold(s.fraction))
    return m


def final_mask(jets: np.ndarray, s: Shard, role: str, plan: Plan, cfg: BuildConfig) -> np.ndarray:
    """The jets of ``jets`` (a block of shard ``s``) that go into dataset ``role``: pass 2's selection,
    the same decisions pass 1 counted."""
    m = base_mask(jets, s, cfg)
    if s.file_threshold is not None:
        m &= select.below(select.file_hash(jets, cfg.seed), s.file_threshold)
    thr = plan.class_threshold[(role, s.data_type)]
    if thr is not None:
        m &= select.below(select.class_hash(jets, cfg.seed), thr)
    return m


def check_classes(plan: Plan, cfg: BuildConfig) -> None:
    """Every required class must have jets (exit 13 naming it)."""
    given = {(r, s.data_type) for s in plan.shards for r in s.roles}
    skipped_types = Counter(reason for _, reason in plan.skipped)
    required: list[tuple[str, str]] = [("main", c) for c in cfg.main_classes]
    if plan.cr_wanted:
        required += [("cr", "qcd"), ("cr", "data")]
    names = {"qcd": "QCD", "sig": "signal", "bib": "BIB", "data": "data"}
    for role, dt in required:
        if plan.candidates.get((role, dt), 0) > 0:
            continue
        what = "main dataset" if role == "main" else "control region"
        if (role, dt) not in given:
            why = f"no {dt} shard with jets was given"
            if skipped_types:
                why += f" ({', '.join(f'{n} {r}' for r, n in skipped_types.items())} skipped)"
            hint = {
                ("main", "bib"): "; set main_classes to build without BIB",
                ("cr", "qcd"): "; the control region needs QCD shards with use cr or both",
            }.get((role, dt), "")
        else:
            why, hint = "no jet passed the event filter / mass points / fractions", ""
        raise InputEmpty(f"{what}: class {names[dt]} has no jets: {why}{hint}")


def build_id(plan: Plan, cfg: BuildConfig) -> str:
    """Hash of everything that determines the output: config values, shard identities, xsec values."""
    blob = {
        "config": cfg.identity(),
        "shards": sorted(plan.fingerprints, key=lambda d: d["path"]),
        "xsec": sorted(plan.xsec_table.items()) if plan.xsec_table else None,
        "schema": schema.SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]
