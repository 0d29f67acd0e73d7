"""``crbatch convert legacy-pkl``: one reference pandas pickle → one HDF5 shard.

The reference (CalRatioTrainer) kept its pre-training and training files as pickled pandas
DataFrames, one row per jet, with fixed-slot constituent columns ``clus_<feat>_<i>`` (i < 30),
``track_<feat>_<i>`` (i < 20) and ``MSeg_<feat>_<i>`` (i < 30). This module turns such a file into
a shard of the common layout (:mod:`crbatch.schema`), so old samples can be used by every later
stage. Only trusted files should be converted: unpickling runs code named in the file.

Column names. Pickle generations differ in naming and in column order, so every column is found
by name after normalising it the way the reference's loaders did: ``mH``/``mS`` → ``llp_mH``/
``llp_mS``; a ``_pT`` suffix or ``_pT_`` infix → ``_pt`` (``jet_pT``, ``track_pT_3``); leading
``nn_``/``aux_`` prefixes stripped (``nn_MSeg_t0_1``). Everything else (``track_sign``,
``track_vertex_x_*``, old NN scores, ``flatWeight``, ...) is not carried and is listed in the
``legacy_columns_dropped`` attribute.

Validity. Pickles carry no validity mask and no object counts: the reference padded missing slots
with 0 (or NaN, in some generations), so a padded slot and a real object with zero values look
alike. A slot is taken as a real object when any of its features other than pt is finite and
non-zero, or — in raw (unscaled) files only — its pt is finite and > 0. pt alone is not trusted in
scaled files, where padding pt is ``(0 - min)/(max - min)``, e.g. -0.087, and not zero. Cluster
eta/phi cannot tell either, since ``clus_eta_0 == clus_phi_0 == 0`` by construction (coordinates
are relative to the leading cluster). The reference filled slots from the front, so padding only
ever trails: every slot before the last one that looks real is also marked valid (the number of
such filled holes is recorded in ``legacy_valid_holes_filled``). Padding is written as 0 and any
NaN/inf left in a real slot becomes 0 (as the reference's loader did), counted in
``legacy_nonfinite_replaced``. ``n_clusters``/``n_tracks``/``n_msegs`` are counts of valid slots,
i.e. after truncation (``legacy_counts_are_truncated``).

Labels. Main-training pickles (those with mass columns) use 0 = QCD, 1 = signal, 2 = BIB, kept as
is. Control-region pickles (no mass columns, e.g. ``felix_control_region.pkl``) use 0 = multijet
MC and 2 = collision data; these become :attr:`Label.QCD` and :attr:`Label.DATA`.

Scaling. Some pickles were scaled by the reference (``jet_pt := (pt - min)/(max - min)``, ...).
Their values are copied unchanged and the shard's ``scaled`` attribute is ``"legacy-reference"``,
so no later stage scales them a second time. Detection (unless ``cfg.scaled`` says otherwise):
raw jet pT is in GeV and at least tens of GeV, scaled pT is at most about 1.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, schema
from ..errors import ConfigError, InputCorrupt, InputSchema, Transient
from ..progress import Progress
from .config import ConvertLegacyConfig
from .divert import classify_read_error

log = logging.getLogger(__name__)

BLOCK_ROWS = 50_000  # jets converted and written at a time: bounds the extra memory beyond the DataFrame
SCALED_MAX_JET_PT = 1.5  # a file whose largest jet_pt is at most this is taken as already scaled
SCALED_NAME = "legacy-reference"  # the shard's ``scaled`` attribute for already-scaled pickles

# Pickle column prefix of each object table.
OBJECT_PREFIX = {"clusters": "clus", "tracks": "track", "msegs": "MSeg"}
MASS_COLUMNS = ("llp_mH", "llp_mS")
REQUIRED_COLUMNS = ("label", "jet_pt", "jet_eta", "jet_phi")
LLP_COLUMNS = ("llp_pt", "llp_eta", "llp_phi", "llp_Lxy", "llp_Lz")
# Pickle column → jets field, for the float kinematics copied as they are.
JET_FLOAT_COLUMNS = {"jet_pt": "pt", "jet_eta": "eta", "jet_phi": "phi", **{c: c for c in LLP_COLUMNS}}
# Columns read into the jets table (others are reported as dropped).
JET_COLUMNS = frozenset(
    {*JET_FLOAT_COLUMNS, *MASS_COLUMNS, "label", "eventNumber", "runNumber", "mcEventWeight", "jet_isClean_LooseBadLLP"}
)
_OLD_NAMES = {"mH": "llp_mH", "mS": "llp_mS"}
_PREFIXES = ("nn_", "aux_")

# Label value in the pickle → shard label, per pickle kind.
MAIN_LABELS = {0: schema.Label.QCD, 1: schema.Label.SIGNAL, 2: schema.Label.BIB}
CONTROL_REGION_LABELS = {0: schema.Label.QCD, 2: schema.Label.DATA}
LABEL_TYPE = {label: name for name, label in schema.DATA_TYPES.items()}
DATA_LABELS = (int(schema.Label.BIB), int(schema.Label.DATA))  # collision data: weight 1


def normalise_name(name: str) -> str:
    """The current name of a legacy column (the renames of the reference's own loaders)."""
    while name.startswith(_PREFIXES):
        name = name.split("_", 1)[1]
    name = _OLD_NAMES.get(name, name)
    if name.endswith("_pT"):
        name = name[:-3] + "_pt"
    return name.replace("_pT_", "_pt_")


@dataclass
class Columns:
    """Where each wanted column sits in the DataFrame (by position: names may repeat)."""

    position: dict[str, int]  # normalised name → column position
    renames: dict[str, str]  # original → normalised, for the renamed columns that are used
    dropped: list[str]  # original names of columns not carried


def map_columns(names: list[str]) -> Columns:
    """Normalise ``names`` and choose the column of each wanted name.

    When two columns normalise to the same name (``jet_pt`` and ``jet_pT``), the one already
    spelled the current way wins (else the first); the others are listed as dropped.
    """
    wanted = set(JET_COLUMNS)
    for table in schema.OBJECT_TABLES:
        prefix = OBJECT_PREFIX[table.name]
        wanted |= {f"{prefix}_{f}_{i}" for f in table.features for i in range(table.slots)}
    position: dict[str, int] = {}
    for pos, orig in enumerate(names):
        new = normalise_name(str(orig))
        if new not in wanted:
            continue
        if new not in position or (names[position[new]] != new and orig == new):
            position[new] = pos
    used = set(position.values())
    renames = {str(names[p]): n for n, p in position.items() if names[p] != n}
    dropped = [str(n) for p, n in enumerate(names) if p not in used]
    return Columns(position, renames, dropped)


@dataclass
class FileInfo:
    """Facts about the whole pickle, decided before any block is converted."""

    src: Path
    columns: Columns
    n_rows: int
    scaled: bool
    control_region: bool
    missing: list[str]  # wanted features/columns absent from the pickle
    partial: dict[str, int]  # features present in only some slots: feature → slots present
    stats: Counter = field(default_factory=Counter)
    decision: LabelDecision | None = None


def _check_header(src: Path) -> None:
    """Refuse files that do not start like a binary pickle before unpickling them.

    pandas writes protocol 4/5 pickles, which begin with the PROTO opcode (0x80) and the version.
    Unpickling arbitrary bytes may ask for absurd allocations (a random length prefix), so garbage
    is better caught here than by a MemoryError that reads like a resource problem.
    """
    try:
        with open(src, "rb") as fh:
            head = fh.read(2)
    except OSError as e:
        raise classify_read_error(str(src), e) from e
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        what = "empty file" if not head else f"starts with {head!r}"
        raise InputCorrupt(f"{src}: not a pandas pickle ({what}, not a pickle protocol 2-5 header); "
                           "recopy or regenerate it")  # fmt: skip


def _read_pickle(src: Path) -> Any:
    """Unpickle ``src``; any failure becomes one line naming the file and the exit code for it."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ConfigError("reading legacy pickles needs pandas: pip install 'crbatch[legacy]'") from e
    _check_header(src)
    try:
        return pd.read_pickle(src)
    except MemoryError as e:
        size = os.path.getsize(src)
        if size * 8 < _available_memory():
            # A DataFrame needs about its file size in memory: a failing allocation this far below
            # the free memory comes from a corrupt length field, not from a big file.
            raise InputCorrupt(f"{src}: corrupt pickle (asks for more memory than a {size}-byte file can hold); "
                               "recopy or regenerate it") from e  # fmt: skip
        raise Transient(f"{src}: out of memory reading a {size}-byte pickle (read whole); "
                        "run on a machine with more memory") from e  # fmt: skip
    except (FileNotFoundError, PermissionError) as e:
        raise classify_read_error(str(src), e) from e
    except ModuleNotFoundError as e:
        # The file is fine, this environment is not (e.g. written with numpy >= 2, read under numpy < 2).
        raise InputCorrupt(f"{src}: cannot be unpickled here ({e}); it needs newer numpy/pandas "
                           "or a module not installed") from e  # fmt: skip
    except OSError as e:
        raise classify_read_error(str(src), e) from e
    except Exception as e:  # unpickling garbage can raise almost anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputCorrupt(
            f"{src}: not a readable pickle ({type(e).__name__}: {first}); recopy or regenerate it"
        ) from e


def _available_memory() -> int:
    """Free physical memory in bytes (a large number where the OS does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _column(df: Any, info: FileInfo, name: str, rows: slice, dtype: Any = np.float64) -> np.ndarray | None:
    """Rows ``rows`` of column ``name`` as a numpy array, or None if absent.

    Positional (``iloc``) on purpose: legacy indexes repeat (bib.pkl), so nothing may align by index.
    The rows are sliced before converting, so a float32 column is not copied whole for every block.
    """
    pos = info.columns.position.get(name)
    if pos is None:
        return None
    series = df.iloc[rows, pos]
    try:
        return series.to_numpy(dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InputSchema(f"{info.src}: column {df.columns[pos]!r} is not numeric ({series.dtype}): {e}") from e


def _detect_scaled(jet_pt: np.ndarray, cfg: ConvertLegacyConfig) -> bool:
    """Whether the pickle holds reference-scaled features (``cfg.scaled`` overrides the guess)."""
    if cfg.scaled is not None:
        return cfg.scaled
    finite = jet_pt[np.isfinite(jet_pt)]
    # Raw pickles are in GeV after a >= 40 GeV cut; scaled ones are (pt - min)/(max - min), about 0..1.
    return bool(finite.size) and float(finite.max()) <= SCALED_MAX_JET_PT


def _missing_features(position: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """Wanted columns/features absent from the pickle, and features present in only some slots."""
    missing: list[str] = [c for c in sorted(JET_COLUMNS) if c not in position]
    partial: dict[str, int] = {}
    for table in schema.OBJECT_TABLES:
        prefix = OBJECT_PREFIX[table.name]
        for f in table.features:
            n = sum(f"{prefix}_{f}_{i}" in position for i in range(table.slots))
            if n == 0:
                missing.append(f"{prefix}_{f}")
            elif n < table.slots:
                partial[f"{prefix}_{f}"] = n
    return missing, partial


def inspect(df: Any, src: Path, cfg: ConvertLegacyConfig) -> FileInfo:
    """Check the DataFrame's schema and decide the per-file facts (scaled, pickle kind)."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise InputSchema(f"{src}: holds a {type(df).__module__}.{type(df).__name__}, not a pandas DataFrame; "
                          "is this a reference pre-training/training pickle?")  # fmt: skip
    columns = map_columns(list(df.columns))
    absent = [c for c in REQUIRED_COLUMNS if c not in columns.position]
    # A frame with neither rows nor columns is an empty result (e.g. written after a filter), not a bad schema.
    if absent and (len(df) or len(df.columns)):
        raise InputSchema(f"{src}: missing columns {', '.join(absent)} (also looked for legacy spellings "
                          "such as jet_pT); is this a reference pre-training/training pickle?")  # fmt: skip
    missing, partial = _missing_features(columns.position)
    control_region = not any(m in columns.position for m in MASS_COLUMNS)
    info = FileInfo(src, columns, len(df), False, control_region, missing, partial)
    if len(df):
        jet_pt = _column(df, info, "jet_pt", slice(None))
        assert jet_pt is not None  # required above
        info.scaled = _detect_scaled(jet_pt, cfg)
    elif cfg.scaled is not None:
        info.scaled = cfg.scaled
    info.decision = decide_labels(df, info, cfg)
    return info


# --- labels: checked against the truth, the masses and the file name --------------------------------

TRUTH_COLUMNS = ("llp_pt", "llp_Lxy", "llp_Lz")  # non-zero only for a jet matched to a truth LLP (signal)
_NAME_TYPE = re.compile(r"^(sig|signal|qcd|bib|data)(?=[_.\-]|$)", re.IGNORECASE)
# The reference's signal sample names: sig_<DSID>_<mH>_<mS> (e.g. sig_311424_600_275.pkl).
_NAME_MASSES = re.compile(r"^sig(?:nal)?_(\d{6})_(\d+(?:p\d+)?)_(\d+(?:p\d+)?)(?=[_.\-]|$)", re.IGNORECASE)
_TYPE_NAMES = {"sig": "signal", "qcd": "QCD", "bib": "BIB", "data": "data"}


@dataclass
class LabelDecision:
    """How the shard's labels and masses were chosen; recorded as the ``label_decision`` attribute."""

    type: str | None  # --type override (every jet), or None: the label column
    masses: tuple[float, float] | None  # --mH/--mS for the signal jets, or None: the mass columns
    name_hint: dict[str, Any] | None  # what the file name says (type, dsid, mH, mS), if it follows a convention
    checks: dict[str, int]  # jets found by each consistency check (all 0 unless overridden)

    def record(self) -> dict[str, Any]:
        return {
            "labels": f"--type {self.type} (label column overridden)" if self.type else "label column",
            "masses": f"--mH {self.masses[0]:g} --mS {self.masses[1]:g}" if self.masses else "mass columns",
            "file_name": self.name_hint,
            "checked": ["LLP truth (" + "/".join(TRUTH_COLUMNS) + ")", "llp_mH/llp_mS", "file name"],
            "contradictions": self.checks,
        }


def name_hint(src: Path) -> dict[str, Any] | None:
    """The type (and, for ``sig_<DSID>_<mH>_<mS>``, DSID and masses) a reference file name states."""
    m = _NAME_MASSES.match(src.stem)
    if m:
        mh, ms = (float(g.replace("p", ".")) for g in m.group(2, 3))
        return {"type": "sig", "dsid": int(m.group(1)), "mH": mh, "mS": ms}
    m = _NAME_TYPE.match(src.stem)
    if m:
        t = m.group(1).lower()
        return {"type": "sig" if t == "signal" else t}
    return None


def _nonzero(df: Any, info: FileInfo, names: tuple[str, ...]) -> np.ndarray | None:
    """Per jet: any of ``names`` finite and non-zero (None when none of the columns exists)."""
    cols = [c for c in (_column(df, info, n, slice(None)) for n in names) if c is not None]
    if not cols:
        return None
    return np.logical_or.reduce([np.isfinite(c) & (c != 0) for c in cols])


def decide_labels(df: Any, info: FileInfo, cfg: ConvertLegacyConfig) -> LabelDecision:
    """Check the labels against the LLP truth, the masses and the file name; refuse a contradiction.

    Older reference versions wrote signal pickles labelled 0 (QCD today) with their truth set, and
    its CLI wrote signal masses 0/0 when none were given: such files must not become QCD, or signal
    without masses, silently. ``--type`` and ``--mH/--mS`` are the user's word for files whose
    labels or masses are known to be wrong; what was found and decided is recorded.
    """
    hint = name_hint(info.src)
    masses = (float(cfg.mH), float(cfg.mS)) if cfg.mH is not None and cfg.mS is not None else None
    decision = LabelDecision(cfg.type, masses, hint, {})
    n = info.n_rows
    if n == 0:
        return decision
    raw = _column(df, info, "label", slice(None))
    assert raw is not None  # required by inspect
    label = np.full(n, int(schema.DATA_TYPES[cfg.type]), np.int8) if cfg.type is not None else _column_labels(raw, info)
    truth = _nonzero(df, info, TRUTH_COLUMNS)
    mass = _nonzero(df, info, MASS_COLUMNS)
    sig = label == int(schema.Label.SIGNAL)
    bkg = ~sig
    checks = {
        "background_with_truth": int((bkg & truth).sum()) if truth is not None else 0,
        "background_with_masses": int((bkg & mass).sum()) if mass is not None else 0,
        "signal_without_truth": int((sig & ~truth).sum()) if truth is not None else 0,
        "signal_without_masses": int((sig & ~mass).sum()) if mass is not None else int(sig.sum()),
    }
    decision.checks = checks
    src = info.src
    fix_type = "--type sig|qcd|bib|data (the right one)"
    if cfg.type is None:
        names = {_TYPE_NAMES[LABEL_TYPE[schema.Label(v)]] for v in np.unique(label).tolist()}
        if checks["background_with_truth"] or checks["background_with_masses"]:
            k = max(checks["background_with_truth"], checks["background_with_masses"])
            what = "LLP truth" if checks["background_with_truth"] else "signal masses"
            bnames = sorted({_TYPE_NAMES[LABEL_TYPE[schema.Label(v)]] for v in np.unique(label[bkg]).tolist()})
            raise InputSchema(f"{src}: {k} of {n} jets labelled background ({'/'.join(bnames)}) carry {what}: "
                              "an older reference signal file? Give --type sig to relabel it (or --type qcd|bib "
                              "to keep the background label)")  # fmt: skip
        if checks["signal_without_truth"]:
            raise InputSchema(f"{src}: {checks['signal_without_truth']} of {n} signal-labelled jets have no LLP "
                              f"truth ({'/'.join(TRUTH_COLUMNS)} all 0): give {fix_type}")  # fmt: skip
        if hint is not None and _TYPE_NAMES[hint["type"]] not in names:  # a control-region "data_" file has MC too
            raise InputSchema(f"{src}: the file name says {_TYPE_NAMES[hint['type']]}, its labels say "
                              f"{'/'.join(sorted(names))}: give {fix_type}")  # fmt: skip
    if sig.any() and masses is None:
        if checks["signal_without_masses"]:
            raise InputSchema(f"{src}: {checks['signal_without_masses']} of {int(sig.sum())} signal jets have "
                              "llp_mH = llp_mS = 0 (masses unknown): give --mH M --mS M (GeV)")  # fmt: skip
        if hint is not None and "mH" in hint:
            have = _mass_points(df, info, sig)
            if have != [(hint["mH"], hint["mS"])]:
                said = ", ".join(f"{a:g}/{b:g}" for a, b in have[:3]) + (" ..." if len(have) > 3 else "")
                raise InputSchema(f"{src}: the file name says mH={hint['mH']:g}, mS={hint['mS']:g}, its "
                                  f"llp_mH/llp_mS columns say {said}: give the right masses with --mH M --mS M")  # fmt: skip
    if masses is not None and not sig.any():
        log.warning("%s: --mH/--mS given but the file has no signal jets: ignored (--type sig relabels it)", src)
    return decision


def _mass_points(df: Any, info: FileInfo, sig: np.ndarray) -> list[tuple[float, float]]:
    cols = [_column(df, info, m, slice(None)) for m in MASS_COLUMNS]
    mh, ms = (np.zeros(info.n_rows) if c is None else np.nan_to_num(c) for c in cols)
    return sorted({(float(a), float(b)) for a, b in zip(mh[sig], ms[sig], strict=True)})


def _labels(raw: np.ndarray, info: FileInfo) -> np.ndarray:
    """Shard labels from the pickle's labels (int or float), by the pickle kind's map (or ``--type``)."""
    if info.decision is not None and info.decision.type is not None:
        return np.full(raw.shape, int(schema.DATA_TYPES[info.decision.type]), np.int8)
    return _column_labels(raw, info)


def _column_labels(raw: np.ndarray, info: FileInfo) -> np.ndarray:
    """Shard labels from the pickle's label column."""
    mapping = CONTROL_REGION_LABELS if info.control_region else MAIN_LABELS
    ok = np.isfinite(raw) & (raw == np.round(raw))
    values = set(np.unique(raw[ok]).astype(np.int64).tolist())
    bad = sorted(values - set(mapping)) + (["NaN/non-integer"] if not ok.all() else [])
    if bad:
        kind = "control-region pickle (no llp_mH/llp_mS columns)" if info.control_region else "training pickle"
        raise InputSchema(f"{info.src}: label values {bad} are not valid in a {kind}; expected {sorted(mapping)}")
    out = np.zeros(raw.shape, np.int8)
    for old, new in mapping.items():
        out[raw == old] = int(new)
    return out


def _finite_or(a: np.ndarray, fill: float, info: FileInfo, what: str) -> np.ndarray:
    """``a`` with NaN/inf replaced by ``fill``, counted under ``what`` for the file attributes."""
    bad = ~np.isfinite(a)
    if bad.any():
        info.stats[what] += int(bad.sum())
        a = np.where(bad, fill, a)
    return a


def _jets_block(df: Any, info: FileInfo, sl: slice) -> np.ndarray:
    """The jets table of rows ``sl``."""
    n = sl.stop - sl.start
    jets = np.zeros(n, schema.JET_DTYPE)
    col = {name: _column(df, info, name, sl) for name in JET_COLUMNS - {"eventNumber"}}
    jets["label"] = label = _labels(col["label"], info)  # type: ignore[arg-type]
    for name, fld in JET_FLOAT_COLUMNS.items():
        if (c := col[name]) is not None:
            jets[fld] = _finite_or(c, 0.0, info, f"jets.{fld}")
    for name in MASS_COLUMNS:
        if (c := col[name]) is not None:
            jets[name] = _finite_or(c, 0.0, info, f"jets.{name}")
    d = info.decision
    if d is not None and (d.type is not None or d.masses is not None):
        sig = label == int(schema.Label.SIGNAL)
        for name, value in zip(MASS_COLUMNS, d.masses or (None, None), strict=True):
            jets[name][~sig] = 0.0  # backgrounds carry no masses (schema)
            if value is not None:
                jets[name][sig] = value
    if "eventNumber" in info.columns.position:
        jets["eventNumber"] = _event_numbers(df, info, sl)
    if col["runNumber"] is not None:
        run = _finite_or(col["runNumber"], 0.0, info, "jets.runNumber")
        jets["runNumber"] = np.clip(run, 0, np.iinfo(np.uint32).max)
    if col["mcEventWeight"] is None:
        jets["mcEventWeight"] = 1.0
    else:
        w = col["mcEventWeight"]
        # Collision data (BIB, CR data) has weight 1 by definition; an MC NaN weight is unknown → 0, as the reference.
        is_data = np.isin(label, DATA_LABELS)
        w = np.where(is_data & ~np.isfinite(w), 1.0, w)
        jets["mcEventWeight"] = _finite_or(w, 0.0, info, "jets.mcEventWeight")
    clean = col["jet_isClean_LooseBadLLP"]
    # -1 = unknown (no column, or NaN): neither "clean" (1) nor "bad" (0).
    jets["isClean_LooseBadLLP"] = (
        -1 if clean is None else np.where(np.isfinite(clean), np.clip(np.round(clean), -1, 1), -1)
    )
    jets["jet_index"] = -1  # position in the ntuple's jet vector: not kept by the reference
    jets["match_dR"] = -1.0
    return jets


def _event_numbers(df: Any, info: FileInfo, sl: slice) -> np.ndarray:
    """eventNumber as uint64, read without a float detour where the pickle stores integers."""
    pos = info.columns.position["eventNumber"]
    raw = df.iloc[sl, pos].to_numpy()
    if raw.dtype.kind in "iu":
        # Old files store int64; a negative value can only be a fill value, and must not wrap to 2**64 - 1.
        return np.where(raw < 0, 0, raw).astype(np.uint64) if raw.dtype.kind == "i" else raw.astype(np.uint64)
    # Some generations (felix) stored event numbers as float32: above 2**24 they are already rounded.
    info.stats["eventNumber_from_float"] += len(raw)
    f = _finite_or(np.asarray(raw, np.float64), 0.0, info, "jets.eventNumber")
    return np.rint(np.clip(f, 0, None)).astype(np.uint64)


def _object_block(df: Any, info: FileInfo, table: schema.ObjectTable, sl: slice) -> np.ndarray:
    """The constituent table ``table`` of rows ``sl``, with ``valid`` from the padding heuristic."""
    n = sl.stop - sl.start
    prefix = OBJECT_PREFIX[table.name]
    feats = table.features
    vals = np.zeros((n, table.slots, len(feats)), np.float64)
    for i in range(table.slots):
        for k, f in enumerate(feats):
            a = _column(df, info, f"{prefix}_{f}_{i}", sl)
            if a is not None:
                vals[:, i, k] = a
    finite = np.isfinite(vals)
    real = finite & (vals != 0)
    other = [k for k, f in enumerate(feats) if f != "pt"]
    looks_real = real[..., other].any(-1)
    if "pt" in feats and not info.scaled:
        k = feats.index("pt")
        looks_real |= finite[..., k] & (vals[..., k] > 0)
    # Slots are filled from the front: the last real-looking slot ends the object list.
    slots = np.arange(table.slots)
    last = np.where(looks_real, slots[None, :], -1).max(axis=1)
    valid = slots[None, :] <= last[:, None]
    info.stats[f"holes_filled.{table.name}"] += int((valid & ~looks_real).sum())
    out = np.zeros((n, table.slots), table.dtype)
    out["valid"] = valid
    keep = valid[..., None] & finite
    bad = valid[..., None] & ~finite
    for k, f in enumerate(feats):
        out[f] = np.where(keep[..., k], vals[..., k], 0.0)
        info.stats[f"{table.name}.{f}"] += int(bad[..., k].sum())
    return out


def tables_block(df: Any, info: FileInfo, sl: slice) -> dict[str, np.ndarray]:
    """All shard tables for rows ``sl`` of the DataFrame."""
    out = {"jets": _jets_block(df, info, sl)}
    for table in schema.OBJECT_TABLES:
        out[table.name] = _object_block(df, info, table, sl)
    counts = {"clusters": "n_clusters", "tracks": "n_tracks", "msegs": "n_msegs"}
    for name, fld in counts.items():
        out["jets"][fld] = out[name]["valid"].sum(axis=1)
    return out


def _constant(values: np.ndarray) -> float:
    """The value every row holds, or -1 when rows differ (or there are none)."""
    u = np.unique(values)
    return float(u[0]) if len(u) == 1 else -1.0


@dataclass
class Summary:
    """What the blocks had in common, for the file attributes."""

    labels: Counter = field(default_factory=Counter)
    masses: dict[str, set[float]] = field(default_factory=lambda: {m: set() for m in MASS_COLUMNS})

    def add(self, jets: np.ndarray) -> None:
        self.labels.update(jets["label"].tolist())
        for m in MASS_COLUMNS:
            self.masses[m] |= set(np.unique(jets[m]).tolist())

    def data_type(self) -> str:
        if len(self.labels) == 1:
            return LABEL_TYPE[schema.Label(next(iter(self.labels)))]
        return "mixed"

    def mass(self, name: str) -> float:
        return _constant(np.array(sorted(self.masses[name])))


def _attributes(src: Path, cfg: ConvertLegacyConfig, info: FileInfo, summary: Summary, n: int) -> dict[str, Any]:
    stats = info.stats
    tables = ("jets", *schema.TABLES)
    nonfinite = {k: v for k, v in sorted(stats.items()) if v and k.split(".")[0] in tables}
    label_map = CONTROL_REGION_LABELS if info.control_region else MAIN_LABELS
    return {
        schema.A_PRODUCER: "crbatch",
        schema.A_VERSION: __version__,
        schema.A_SCHEMA: schema.SCHEMA_VERSION,
        schema.A_KIND: "shard",
        schema.A_DATA_TYPE: summary.data_type(),
        schema.A_STATUS: "ok" if n else "empty",
        schema.A_N_JETS: n,
        schema.A_SCALED: SCALED_NAME if info.scaled else False,
        "source_path": str(src.resolve()),
        "source_size": os.path.getsize(src),
        "source_entries": info.n_rows,
        "source_format": "legacy-pkl",
        "llp_mH": summary.mass("llp_mH"),
        "llp_mS": summary.mass("llp_mS"),
        "dsid": (info.decision.name_hint or {}).get("dsid", -1) if info.decision else -1,
        schema.A_LABEL_DECISION: info.decision.record() if info.decision else None,
        "legacy_kind": "control-region" if info.control_region else "training",
        "legacy_label_map": {str(k): int(v) for k, v in label_map.items()},
        "label_counts": {schema.Label(k).name: v for k, v in sorted(summary.labels.items())},
        "legacy_columns_dropped": info.columns.dropped,
        "legacy_renames": info.columns.renames,
        "legacy_missing_features": info.missing,
        "legacy_partial_features": info.partial,
        "legacy_counts_are_truncated": True,
        "legacy_valid_holes_filled": {t: stats[f"holes_filled.{t}"] for t in schema.TABLES},
        "legacy_nonfinite_replaced": nonfinite,
        "legacy_event_number_from_float": bool(stats["eventNumber_from_float"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        schema.A_CONFIG: cfg.to_record(),
    }


def convert_legacy_file(src: Path, tmp: Path, cfg: ConvertLegacyConfig) -> dict[str, Any]:
    """Convert the pickle ``src`` into the HDF5 file ``tmp``; return the attributes written."""

    df = _read_pickle(src)
    info = inspect(df, src, cfg)
    _log_file_facts(src, info)
    summary = Summary()
    with schema.h5_output(tmp) as out:
        writer = schema.TableWriter(out, compress=cfg.compress)
        prog = Progress(info.n_rows, f"convert {src.name}", unit="jets")
        try:
            for start in range(0, info.n_rows, BLOCK_ROWS):
                tables = tables_block(df, info, slice(start, min(start + BLOCK_ROWS, info.n_rows)))
                summary.add(tables["jets"])
                writer.append(tables)
                prog.update(len(tables["jets"]))
        finally:
            prog.close()
        attrs = _attributes(src, cfg, info, summary, writer.n)
        for k, v in attrs.items():
            out.attrs[k] = schema.to_attr(v)
        schema.mark_complete(out)  # checksums, then the completion mark: last
    if attrs["legacy_nonfinite_replaced"]:
        log.warning("%s: NaN/inf in real values replaced by 0: %s", src, attrs["legacy_nonfinite_replaced"])
    return attrs


def _log_file_facts(src: Path, info: FileInfo) -> None:
    if any(old in info.columns.renames for old in _OLD_NAMES):
        log.warning("%s: mass columns named mH/mS (an old input file?); read as llp_mH/llp_mS", src)
    if info.control_region:
        log.info("%s: no mass columns: a control-region file (label 0 → QCD MC, 2 → data)", src)
    if info.scaled:
        log.info("%s: already scaled by the reference; values copied as they are (scaled=%s)", src, SCALED_NAME)
    if info.missing:
        log.info("%s: not in the pickle, written as 0: %s", src, ", ".join(info.missing))
