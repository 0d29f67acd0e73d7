"""``crbatch plot``: compare training datasets or shard sets in a data report.

For every network input variable (jet kinematics and counts; each cluster, track and muon-segment
feature for slot 0 and for all valid slots) the report has one figure of per-class histograms with
all inputs overlaid (colour = class, line style = input) and, where an input holds control-region
jets (QCD MC and collision data), one data-vs-MC figure with a ratio panel and the weighted K-S
statistic of each input.

Memory stays bounded on big inputs: jets are read in contiguous blocks of ``chunk_jets``; at most
``max_jets`` per input are histogrammed (blocks spread evenly over the input, so a file sorted by
class or mass point is still sampled everywhere); at most about ``ks_max_jets`` jets per class are
kept for the K-S statistic. Binning is shared by all inputs and classes: ranges come from robust
quantiles of a sample of the first input.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from .. import __version__, schema
from ..config import StageConfig
from ..errors import ConfigError, InputCorrupt, InputEmpty, InputMissing, InputSchema, Transient
from ..inputs import expand
from ..progress import Progress
from ..schema import Label
from ..stats import effective_n, ks_pvalue, ks_weighted
from .page import ReportPage
from .style import CLASS_NAMES

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
CLASSES = tuple(int(c) for c in Label)
N_CLASSES = len(CLASSES)
# Legend and report names become directory names: no separators, no leading dot ("..", hidden dirs).
_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")


class PlotConfig(StageConfig):
    """Data report: per-class and data-vs-MC histograms of every input variable."""

    inputs: list[str] = Field(
        default_factory=list, description="inputs as [NAME=]PATH: an HDF5 file, a directory of them, or a wildcard"
    )
    output_dir: Path = Field(Path("reports"), description="reports are written to OUTPUT_DIR/NAME/")
    name: str | None = Field(None, description="report name (default: the input names joined by _vs_)")
    bins: int = Field(
        50, ge=2, le=1000, description="bins per histogram (integer-valued variables get one bin per value)"
    )
    max_jets: int = Field(1_000_000, gt=0, description="jets histogrammed per input, in blocks spread over the input")
    chunk_jets: int = Field(50_000, gt=0, description="jets read at once (memory grows with this)")
    range_jets: int = Field(50_000, gt=0, description="jets of the first input sampled to choose histogram ranges")
    range_quantiles: tuple[float, float] = Field(
        (0.5, 99.5), description="histogram range: these percentiles of the first input's values"
    )
    ks_max_jets: int = Field(20_000, gt=0, description="jets per class and input kept for the K-S statistic")
    ks_top: int = Field(25, ge=0, description="rows of the K-S summary table (all go to ks_summary.csv)")
    weight: str | None = Field(
        "mcEventWeight", description="jets field used as weight (e.g. weight_balanced, weight_xs); 'none': unweighted"
    )
    density: bool = Field(True, description="normalise each histogram to unit sum (shapes); off: weighted counts")
    variables: list[str] = Field(
        default_factory=lambda: ["*"],
        description="variables to plot, as patterns: jet.pt, clusters.pt.0 (slot 0), tracks.*.all, msegs.*",
    )
    seed: int = Field(20190101, description="random seed of the K-S subsampling (reruns give the same report)")
    dpi: int = Field(100, ge=30, le=600, description="resolution of the PNG figures")

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: str | None) -> str | None:
        return None if v is None or v.strip().lower() in ("", "none", "null") else v.strip()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError(f"{v!r}: use letters, digits and _ . + - only, not starting with '.' (a directory name)")
        return v

    @model_validator(mode="after")
    def _quantiles(self) -> PlotConfig:
        lo, hi = self.range_quantiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"range_quantiles {self.range_quantiles}: need 0 <= low < high <= 100")
        if not self.variables:
            raise ValueError("variables: give at least one pattern ('*' for all)")
        return self


# ---------------------------------------------------------------------------------------------
# Variables


@dataclass(frozen=True)
class Variable:
    """One histogrammed quantity: a jets field, or an object feature in slot 0 or in all valid slots."""

    key: str  # selection name: jet.pt, clusters.pt.0, clusters.pt.all
    table: str  # "jets" or an object table name
    field: str
    slot: int | None  # object tables: 0 = leading slot, None = every valid slot
    section: str
    title: str
    unit: str  # unit of raw (unscaled) values; "" if none

    @property
    def stem(self) -> str:
        """File-name stem of the variable's figures."""
        if self.table == "jets":
            return f"jet_{self.field}"
        return f"{self.table}_{self.field}_" + ("all" if self.slot is None else f"slot{self.slot}")

    @property
    def per(self) -> str:
        """What one entry is (y-axis label)."""
        return "jets" if self.table == "jets" or self.slot is not None else _OBJECT_NOUN[self.table]

    @property
    def build_scales(self) -> bool:
        """Whether ``crbatch build`` rescales this feature (crbatch.scaling); the others keep their units."""
        return (self.table, self.field) in _BUILD_SCALED or (self.table == "clusters" and self.field[:1] == "l")

    def axis_label(self, scaling: str | None) -> str:
        """Title with the raw unit, or "(scaled)" for a feature the input's ``scaling`` rescaled:
        crbatch's build keeps jet pT in GeV (``pt_scaled`` is separate); the reference scaled it in place."""
        legacy_jet_pt = scaling == LEGACY_SCALING and (self.table, self.field) == ("jets", "pt")
        if scaling and (self.build_scales or legacy_jet_pt):
            return f"{self.title} (scaled)"
        return f"{self.title} [{self.unit}]" if self.unit else self.title

    @property
    def is_weight(self) -> bool:
        """A weight is histogrammed unweighted, and not compared between data (all 1) and MC."""
        return self.table == "jets" and "weight" in self.field.lower()

    def applies_to(self, inp: InputSet) -> bool:
        """Jet fields differ between shards and datasets (``pt_scaled``, weights); object tables do not."""
        return self.table != "jets" or self.field in inp.jet_fields


LEGACY_SCALING = "legacy-reference"  # crbatch.scaling.LEGACY_NAME: pickles the reference had scaled
_BUILD_SCALED = {("clusters", "pt"), ("tracks", "pt"), ("tracks", "z0")}
_OBJECT_NOUN = {"clusters": "clusters", "tracks": "tracks", "msegs": "segments"}
_SECTIONS = {"jets": "Jets", "clusters": "Clusters", "tracks": "Tracks", "msegs": "Muon segments"}
_JET_VARS = {
    "pt": (r"Jet $p_\mathrm{T}$", "GeV"),
    "pt_scaled": (r"Jet $p_\mathrm{T}$, scaled (network input)", ""),  # training datasets only
    "eta": (r"Jet $\eta$", ""),
    "phi": (r"Jet $\phi$", ""),
    "n_clusters": ("Clusters per jet", ""),
    "n_tracks": ("Tracks per jet", ""),
    "n_msegs": ("Muon segments per jet", ""),
    "mcEventWeight": ("mcEventWeight", ""),
}
_OBJECT_VARS: dict[str, dict[str, tuple[str, str]]] = {
    "clusters": {
        "pt": (r"Cluster $p_\mathrm{T}$", "MeV"),
        "eta": (r"Cluster $\Delta\eta$ to leading cluster", ""),
        "phi": (r"Cluster $\Delta\phi$ to leading cluster", ""),
        "time": ("Cluster time", "ns"),
        **{
            f"l{i}{c}": (f"Cluster layer-{i} {c[:1].upper()}Cal energy", "MeV")
            for i in range(1, 5)
            for c in ("ecal", "hcal")
        },
    },
    "tracks": {
        "pt": (r"Track $p_\mathrm{T}$", "GeV"),
        "eta": (r"Track $\Delta\eta$ to jet", ""),
        "phi": (r"Track $\Delta\phi$ to jet", ""),
        "chiSquared": (r"Track $\chi^2$", ""),
        "d0": (r"Track $d_0$", "mm"),
        "z0": (r"Track $z_0$", "mm"),
        "vertex_nParticles": ("Track vertex particles", ""),
    },
    "msegs": {
        "etaPos": (r"Segment position $\Delta\eta$ to jet", ""),
        "phiPos": (r"Segment position $\Delta\phi$ to jet", ""),
        "etaDir": (r"Segment direction $\eta$", ""),
        "phiDir": (r"Segment direction $\Delta\phi$ to jet", ""),
        "t0": ("Segment $t_0$", "ns"),
        "chiSquared": (r"Segment $\chi^2$", ""),
    },
}
_SLOT_WORD = {"clusters": "leading cluster", "tracks": "leading track", "msegs": "first segment"}


def all_variables() -> list[Variable]:
    """Every variable the report knows, in report order."""
    out = [Variable(f"jet.{f}", "jets", f, None, "Jets", t, u) for f, (t, u) in _JET_VARS.items()]
    for tab in schema.OBJECT_TABLES:
        names = _OBJECT_VARS[tab.name]
        for slot in (0, None):
            for f in tab.features:
                title, unit = names.get(f, (f"{_OBJECT_NOUN[tab.name][:-1].capitalize()} {f}", ""))
                title = f"{title} ({_SLOT_WORD[tab.name]})" if slot == 0 else title
                key = f"{tab.name}.{f}." + ("0" if slot == 0 else "all")
                out.append(Variable(key, tab.name, f, slot, _SECTIONS[tab.name], title, unit))
    return out


def select_variables(patterns: list[str]) -> list[Variable]:
    """Variables matching any pattern (fnmatch on keys); a pattern matching nothing is a config error."""
    known = all_variables()
    chosen: list[Variable] = []
    for pat in patterns:
        # "clusters" or "clusters.pt" mean the whole table / both slot variants
        hits = [v for v in known if fnmatch.fnmatchcase(v.key, pat) or fnmatch.fnmatchcase(v.key, pat + ".*")]
        if not hits:
            examples = ", ".join(v.key for v in known[:4])
            raise ConfigError(f"variables: {pat!r} matches no variable (names look like {examples}, tracks.d0.all)")
        chosen += [v for v in hits if v not in chosen]
    return [v for v in known if v in chosen]


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class InputSet:
    """One legend entry: the files of one ``[NAME=]PATH`` argument and what the cheap pass counted."""

    name: str
    spec: str
    files: list[Path]
    sizes: list[int]
    attrs: list[dict[str, Any]]
    counts: Counter = field(default_factory=Counter)  # label -> jets
    masses: Counter = field(default_factory=Counter)  # (mH, mS) -> signal jets
    jet_fields: frozenset[str] = frozenset()  # fields present in the jets table of every file

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def scalings(self) -> list[str]:
        """The ``scaled`` attribute of each file: the scaling's name, or "raw"."""
        return [str(a.get(schema.A_SCALED)) if _is_scaled(a.get(schema.A_SCALED)) else "raw" for a in self.attrs]

    @property
    def scaled(self) -> str:
        return ", ".join(sorted(set(self.scalings)))

    @property
    def scaling(self) -> str | None:
        """The first scaling name among the files (None: all raw) — what axis labels follow."""
        return next((s for s in self.scalings if s != "raw"), None)

    @property
    def kinds(self) -> str:
        return ", ".join(sorted({str(a.get(schema.A_KIND)) for a in self.attrs}))

    @property
    def has_cr(self) -> bool:
        return self.counts[Label.QCD] > 0 and self.counts[Label.DATA] > 0


def _is_scaled(attr: Any) -> bool:
    """Same reading of the ``scaled`` attribute as ``crbatch.scaling.is_scaled``."""
    return attr not in (False, None, "", 0, "false", "False", "none")


def parse_input(arg: str, index: int) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named ``file_<index>``). A path that exists wins over a split at '='."""
    if "=" in arg and not Path(arg).exists():
        name, path = arg.split("=", 1)
        if not name or not _NAME_RE.match(name):
            raise ConfigError(
                f"input {arg!r}: legend name {name!r}: use letters, digits and _ . + - only, no leading '.'"
            )
        if not path:
            raise ConfigError(f"input {arg!r}: no path after '='")
        return name, path
    return f"file_{index}", arg


def resolve_input(name: str, path: str) -> InputSet:
    """Files of one input: a file, a directory (its complete ``*.h5``), or a wildcard; all checked."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidates = expand(path, H5_SUFFIXES, directories=True)
        if not candidates:
            raise InputMissing(f"{path}: directory has no *.h5 files; check the path")
        files, attrs, rejected = [], [], []
        for f in candidates:
            try:
                attrs.append(schema.check_complete(f))
                files.append(f)
            except schema.NotAcceptedError as e:
                rejected.append(str(e))
        for r in rejected:
            log.warning("%s: skipped %s", name, r)
        if not files:
            raise InputSchema(f"{path}: no complete crbatch file in this directory (first: {rejected[0]})")
    else:
        files = expand(path, H5_SUFFIXES)
        attrs = []
        for f in files:
            try:
                attrs.append(schema.check_complete(f))
            except schema.NotAcceptedError as e:
                raise InputSchema(str(e)) from e
    sizes, fields = zip(*(_layout(f) for f in files), strict=True)
    return InputSet(name, path, files, list(sizes), attrs, jet_fields=frozenset.intersection(*fields))


def _open(path: Path):
    import h5py
    import hdf5plugin  # noqa: F401  (registers the lz4 filter the tables are written with)

    return h5py.File(path, "r")


def _layout(path: Path) -> tuple[int, frozenset[str]]:
    """(jets, jets fields) of a file, after checking it has every table of the layout."""
    with _open(path) as f:
        missing = [t for t in ("jets", *schema.TABLES) if t not in f]
        if missing:
            raise InputSchema(f"{path}: no {', '.join(missing)} table; not a file of the crbatch layout")
        names = f["jets"].dtype.names or ()
        if "label" not in names:
            raise InputSchema(f"{path}: jets table has no label field; not a file of the crbatch layout")
        return int(f["jets"].shape[0]), frozenset(names)


def count_classes(inp: InputSet, weight: str | None, chunk: int) -> None:
    """Jets per class and per signal mass point over the whole input (reads the jets table only)."""
    for path in inp.files:
        with _open(path) as f:
            ds = f["jets"]
            names = ds.dtype.names or ()
            if weight is not None and weight not in names:
                floats = [n for n in names if ds.dtype[n].kind == "f" and "weight" in n.lower()]
                raise InputSchema(
                    f"{path}: no jets field {weight!r} to weight with (weight fields here: "
                    f"{', '.join(floats) or 'none'}); choose one with --weight, or --weight none"
                )
            want = ["label"] + [n for n in ("llp_mH", "llp_mS") if n in names]
            step = max(chunk, 200_000)  # the jets table is ~70 bytes a jet: larger reads are cheap
            for a in range(0, ds.shape[0], step):
                j = ds.fields(want)[a : a + step]
                inp.counts.update(Counter(j["label"].tolist()))
                sig = j[j["label"] == Label.SIGNAL]
                if len(sig) and len(want) == 3:
                    pts, n = np.unique(np.stack([sig["llp_mH"], sig["llp_mS"]], axis=1), axis=0, return_counts=True)
                    inp.masses.update({(float(m[0]), float(m[1])): int(k) for m, k in zip(pts, n, strict=True)})


def plan_blocks(total: int, budget: int, block: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges covering ``total`` jets, or ``budget`` of them spread evenly.

    When sampling, at least ~20 blocks are used so that an input sorted by class or mass point is
    read all over; blocks never overlap.
    """
    if total <= 0:
        return []
    if total <= budget:
        return [(s, min(s + block, total)) for s in range(0, total, block)]
    block = max(1, min(block, budget // 20))
    n = math.ceil(budget / block)
    size = budget // n
    starts = np.linspace(0, total - size, n).astype(np.int64)
    return [(int(s), int(s) + size) for s in starts]


@dataclass
class Block:
    """The tables of some jets, with per-table valid masks computed once for all variables."""

    tables: dict[str, np.ndarray]
    weight: str | None
    _idx: dict[tuple[str, int | None], np.ndarray] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.tables["jets"]["label"].astype(np.int64)

    @property
    def weights(self) -> np.ndarray:
        j = self.tables["jets"]
        return np.ones(len(j)) if self.weight is None else j[self.weight].astype(np.float64)

    def values(self, var: Variable) -> tuple[np.ndarray, np.ndarray]:
        """(values, row of the owning jet) of ``var``, padding excluded."""
        if var.table == "jets":
            v = self.tables["jets"][var.field].astype(np.float64)
            return v, np.arange(len(v))
        tab = self.tables[var.table]
        key = (var.table, var.slot)
        if key not in self._idx:  # flat indices of the valid entries, shared by all features of the table
            valid = tab["valid"] if var.slot is None else tab["valid"][:, var.slot]
            self._idx[key] = np.flatnonzero(valid)
        flat = self._idx[key]
        # np.take with flat indices is ~8x faster than 2-D fancy or boolean indexing of a field view
        if var.slot is not None:
            return np.take(tab[var.field][:, var.slot], flat).astype(np.float64), flat
        return np.take(tab[var.field], flat).astype(np.float64), flat // tab.shape[1]


def iter_blocks(inp: InputSet, ranges: list[tuple[int, int]], tables: list[str], weight: str | None) -> Iterator[Block]:
    """Read the global jet ranges of ``inp`` (which may span files), one block per file piece."""
    offsets = np.concatenate([[0], np.cumsum(inp.sizes)])
    handles: dict[int, Any] = {}
    try:
        for a, b in ranges:
            for i, path in enumerate(inp.files):
                lo, hi = max(a, offsets[i]), min(b, offsets[i + 1])
                if lo >= hi:
                    continue
                if i not in handles:
                    handles[i] = _open(path)
                f = handles[i]
                la, lb = int(lo - offsets[i]), int(hi - offsets[i])
                try:
                    data = {t: f[t][la:lb] for t in tables}
                except (OSError, KeyError, ValueError) as e:
                    raise InputCorrupt(f"{path}: cannot read jets {la}..{lb} ({e}); the file is damaged") from e
                yield Block(data, weight)
    finally:
        for h in handles.values():
            h.close()


# ---------------------------------------------------------------------------------------------
# Histograms


def choose_edges(sample: np.ndarray, bins: int, quantiles: tuple[float, float]) -> np.ndarray | None:
    """Bin edges from robust quantiles; integer-valued variables get one bin per integer."""
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    lo, hi = (float(x) for x in np.percentile(sample, quantiles))
    if np.all(sample == np.round(sample)):
        ilo, ihi = math.floor(lo), math.ceil(hi)
        if ihi - ilo + 1 <= max(bins, 100):
            return np.arange(ilo - 0.5, ihi + 1.0, 1.0)
    if hi <= lo:  # (nearly) constant: a small window around the value
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


@dataclass
class Hist:
    """Weighted histograms of one variable of one input, one row per class."""

    edges: np.ndarray
    sumw: np.ndarray = field(init=False)
    sumw2: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)  # all finite entries' weight, in range or not
    entries: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        nb = len(self.edges) - 1
        self.sumw = np.zeros((N_CLASSES, nb))
        self.sumw2 = np.zeros((N_CLASSES, nb))
        self.total = np.zeros(N_CLASSES)
        self.entries = np.zeros(N_CLASSES, np.int64)

    def fill(self, values: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        ok = np.isfinite(values) & (labels >= 0) & (labels < N_CLASSES)
        values, labels, weights = values[ok], labels[ok], weights[ok]
        self.total += np.bincount(labels, weights, N_CLASSES)
        self.entries += np.bincount(labels, minlength=N_CLASSES)
        e = self.edges
        nb = len(e) - 1
        inr = (values >= e[0]) & (values <= e[-1])  # the last edge belongs to the last bin, as in np.histogram
        values, labels, w = values[inr], labels[inr], weights[inr]
        # Edges are uniform: arithmetic binning (4x faster than searchsorted), then the same
        # round-off correction np.histogram applies so values on an edge land in the bin above it.
        idx = np.minimum(((values - e[0]) * (nb / (e[-1] - e[0]))).astype(np.int64), nb - 1)
        idx[values < e[idx]] -= 1
        idx[(values >= e[idx + 1]) & (idx != nb - 1)] += 1
        flat = labels * nb + idx
        self.sumw += np.bincount(flat, w, N_CLASSES * nb).reshape(N_CLASSES, nb)
        self.sumw2 += np.bincount(flat, w * w, N_CLASSES * nb).reshape(N_CLASSES, nb)

    def shape(self, label: int, density: bool) -> tuple[np.ndarray, np.ndarray]:
        """(content, error) of one class, as a fraction of all its entries when ``density``."""
        norm = self.total[label] if density and self.total[label] != 0 else 1.0
        return self.sumw[label] / norm, np.sqrt(self.sumw2[label]) / abs(norm)


@dataclass
class KSRow:
    variable: Variable
    input: str
    ks: float
    pvalue: float
    n_mc: int
    n_data: int


# ---------------------------------------------------------------------------------------------
# The report


def run_report(cfg: PlotConfig) -> Path:
    """Build the report described by ``cfg``; returns its directory."""
    if not cfg.inputs:
        raise ConfigError("no inputs: give HDF5 files, directories or wildcards (NAME=PATH to set legend names)")
    variables = select_variables(cfg.variables)
    parsed = [parse_input(a, i) for i, a in enumerate(cfg.inputs)]
    dup = [n for n, k in Counter(n for n, _ in parsed).items() if k > 1]
    if dup:
        raise ConfigError(f"input name {dup[0]!r} used twice; give each input its own NAME=PATH")
    out = cfg.output_dir / _report_name(cfg, [n for n, _ in parsed])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a report directory; choose another --name or --output-dir")
    inputs = [resolve_input(n, p) for n, p in parsed]
    for inp in inputs:
        count_classes(inp, cfg.weight, cfg.chunk_jets)
        log.info("%s: %d file(s), %d jets (%s)", inp.name, len(inp.files), inp.total, _class_text(inp.counts))
    if not any(inp.total for inp in inputs):
        raise InputEmpty("no jets in any input: nothing to plot")
    if len({s for inp in inputs for s in inp.scalings}) > 1:
        log.warning("comparing inputs of different scalings (%s): the binning and labels follow %s",
                    ", ".join(inp.scaled for inp in inputs), inputs[0].name)  # fmt: skip

    tables = sorted({v.table for v in variables} | {"jets"}, key=("jets", *schema.TABLES).index)

    edges = _binning(inputs, variables, tables, cfg)
    hists, samples = _fill(inputs, variables, tables, edges, cfg)
    ks_rows = _ks(inputs, variables, samples)

    try:
        with ReportPage(out, f"Data report: {' vs '.join(inp.name for inp in inputs)}", dpi=cfg.dpi) as page:
            _write_tables(page, inputs, cfg, ks_rows, edges)
            write_figures(page, inputs, variables, edges, hists, ks_rows, cfg)
    except PermissionError as e:
        raise ConfigError(f"{out}: cannot write the report ({e.strerror}); choose another --output-dir") from e
    except OSError as e:  # disk full, network storage hiccup: worth a retry
        raise Transient(f"{out}: writing the report failed ({e.strerror or e}); nothing was left half-written") from e
    return out


def _report_name(cfg: PlotConfig, names: list[str]) -> str:
    if cfg.name:
        return cfg.name
    name = "_vs_".join(names)
    return name if len(name) <= 120 else f"{names[0]}_vs_{len(names) - 1}_more"  # keep directory names short


def _class_text(counts: Counter) -> str:
    return ", ".join(f"{CLASS_NAMES[c]} {counts[c]}" for c in CLASSES if counts[c]) or "empty"


def _binning(inputs: list[InputSet], variables: list[Variable], tables: list[str], cfg: PlotConfig):
    """Edges per variable from a sample of the first input that has values for it."""
    edges: dict[str, np.ndarray] = {}
    for inp in inputs:
        todo = [v for v in variables if v.key not in edges and v.applies_to(inp)]
        if not todo or not inp.total:
            continue
        pools: dict[str, list[np.ndarray]] = {v.key: [] for v in todo}
        for blk in iter_blocks(inp, plan_blocks(inp.total, cfg.range_jets, cfg.chunk_jets), tables, cfg.weight):
            for v in todo:
                pools[v.key].append(blk.values(v)[0])
        for v in todo:
            e = choose_edges(np.concatenate(pools[v.key]), cfg.bins, cfg.range_quantiles)
            if e is not None:
                edges[v.key] = e
    for v in variables:
        if v.key not in edges and any(v.applies_to(inp) for inp in inputs):
            log.info("%s: no entries in any input; not plotted", v.key)
    return edges


def _fill(inputs, variables, tables, edges, cfg: PlotConfig):
    """Histograms of every input and variable, plus the jets kept per class for the K-S statistic."""
    rng = np.random.default_rng(cfg.seed)
    hists: dict[tuple[str, str], Hist] = {}
    samples: dict[str, dict[int, list[Block]]] = {}
    plans = {inp.name: plan_blocks(inp.total, cfg.max_jets, cfg.chunk_jets) for inp in inputs}
    planned = {k: sum(b - a for a, b in p) for k, p in plans.items()}
    prog = Progress(sum(planned.values()), "plot: reading", unit="jets")
    try:
        for inp in inputs:
            mine = [v for v in variables if v.key in edges and v.applies_to(inp)]
            for v in mine:
                hists[(inp.name, v.key)] = Hist(edges[v.key])
            # the K-S sample keeps only the jets fields it needs: files of one input may differ in the rest
            keep_fields = sorted(
                {"label", *([cfg.weight] if cfg.weight else []), *(v.field for v in mine if v.table == "jets")}
            )
            rates: dict[int, float] = {}
            if inp.has_cr:
                frac = planned[inp.name] / inp.total
                rates = {c: min(1.0, cfg.ks_max_jets / max(1.0, inp.counts[c] * frac)) for c in (Label.QCD, Label.DATA)}
                samples[inp.name] = {c: [] for c in rates}
            if planned[inp.name] < inp.total:
                log.info("%s: histogramming %d of %d jets (max_jets)", inp.name, planned[inp.name], inp.total)
            for blk in iter_blocks(inp, plans[inp.name], tables, cfg.weight):
                labels, weights = blk.labels, blk.weights
                for v in mine:
                    vals, rows = blk.values(v)
                    hists[(inp.name, v.key)].fill(
                        vals, labels[rows], np.ones(len(rows)) if v.is_weight else weights[rows]
                    )
                for c, rate in rates.items():
                    keep = labels == c
                    if rate < 1.0:
                        keep &= rng.random(len(labels)) < rate
                    if keep.any():
                        kept = {t: a[keep] for t, a in blk.tables.items()}
                        kept["jets"] = _compact(kept["jets"], keep_fields)
                        samples[inp.name][c].append(Block(kept, cfg.weight))
                prog.update(len(labels))
    finally:
        prog.close()
    return hists, samples


def _compact(jets: np.ndarray, names: list[str]) -> np.ndarray:
    out = np.empty(len(jets), [(n, jets.dtype[n]) for n in names])
    for n in names:
        out[n] = jets[n]
    return out


def _ks(inputs, variables, samples) -> list[KSRow]:
    """Weighted K-S of data vs QCD MC for every control-region input and variable."""
    rows: list[KSRow] = []
    for inp in inputs:
        if inp.name not in samples:
            continue
        pair = {c: _concat(blocks) for c, blocks in samples[inp.name].items()}
        if any(b is None for b in pair.values()):
            continue
        for v in variables:
            if not v.applies_to(inp) or v.is_weight:
                continue
            (mc, mc_rows), (da, da_rows) = (pair[Label.QCD].values(v), pair[Label.DATA].values(v))
            mw, dw = pair[Label.QCD].weights[mc_rows], pair[Label.DATA].weights[da_rows]
            fm, fd = np.isfinite(mc), np.isfinite(da)
            mc, mw, da, dw = mc[fm], mw[fm], da[fd], dw[fd]
            if not (mc.size and da.size) or mw.sum() <= 0 or dw.sum() <= 0:
                continue
            d = ks_weighted(da, mc, dw, mw)
            p = ks_pvalue(d, effective_n(dw), effective_n(mw))
            rows.append(KSRow(v, inp.name, d, p, int(mc.size), int(da.size)))
    rows.sort(key=lambda r: -r.ks)
    return rows


def _concat(blocks: list[Block]) -> Block | None:
    if not blocks:
        return None
    return Block({t: np.concatenate([b.tables[t] for b in blocks]) for t in blocks[0].tables}, blocks[0].weight)


def _write_tables(page: ReportPage, inputs: list[InputSet], cfg: PlotConfig, ks_rows: list[KSRow], edges) -> None:
    weight = cfg.weight or "none (unweighted)"
    page.text(
        f"Made by crbatch {__version__} on {time.strftime('%Y-%m-%d %H:%M')}. "
        f"Weights: `{weight}`; histograms {'normalised to unit sum' if cfg.density else 'in weighted counts'}; "
        f"{cfg.bins} bins over the {cfg.range_quantiles[0]:g}–{cfg.range_quantiles[1]:g}% quantiles of "
        f"`{inputs[0].name}` (entries outside are counted in the normalisation, not drawn); "
        f"at most {cfg.max_jets:,} jets per input. Weight variables are histogrammed unweighted."
    )
    page.section("Inputs")
    rows = []
    for inp in inputs:
        row: dict[str, Any] = {"name": inp.name, "path": inp.spec, "files": len(inp.files), "kind": inp.kinds}
        row["jets"] = inp.total
        for c in CLASSES:
            row[CLASS_NAMES[c]] = inp.counts[c]
        row["values"] = inp.scaled
        rows.append(row)
    page.table(rows)
    if any(sum(inp.counts.values()) != inp.total for inp in inputs):
        page.text("Some jets have a label outside 0–3 and are not shown.")

    page.section("Signal mass points")
    points = sorted({m for inp in inputs for m in inp.masses})
    if points:
        page.table(
            [
                {"mH [GeV]": mh, "mS [GeV]": ms} | {inp.name: inp.masses[(mh, ms)] for inp in inputs}
                for mh, ms in points
            ],
            formats={"mH [GeV]": "{:g}".format, "mS [GeV]": "{:g}".format},
        )
    else:
        page.text("No signal jets in the inputs.")

    page.section("Data vs MC (control region)")
    cr = [inp.name for inp in inputs if inp.has_cr]
    if not cr:
        page.text("No input holds both QCD MC and data jets, so there is no data-vs-MC comparison.")
        return
    page.text(
        f"Weighted two-sample Kolmogorov-Smirnov statistic between data and QCD MC (inputs: {', '.join(cr)}), "
        f"on up to {cfg.ks_max_jets:,} jets per class and input; largest first. p-values use the effective "
        "numbers of entries and are indicative only (values of one jet's objects are not independent)."
    )
    top = [
        {"variable": r.variable.key, "input": r.input, "K-S": r.ks, "p-value": r.pvalue, "MC entries": r.n_mc}
        | {"data entries": r.n_data}
        for r in ks_rows[: cfg.ks_top]
    ]
    page.table(top, formats={"K-S": "{:.4f}".format, "p-value": "{:.3g}".format})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variable", "input", "ks", "pvalue", "mc_entries", "data_entries"])
    for r in ks_rows:
        w.writerow([r.variable.key, r.input, repr(r.ks), repr(r.pvalue), r.n_mc, r.n_data])
    page.attach("ks_summary.csv", buf.getvalue(), text=f"All {len(ks_rows)} K-S values (CSV)")


# ---------------------------------------------------------------------------------------------
# Figures


def write_figures(page: ReportPage, inputs, variables, edges, hists, ks_rows: list[KSRow], cfg: PlotConfig) -> None:
    """Per variable: the per-class figure and, with control-region inputs, the data-vs-MC figure."""
    from . import style

    style.setup()
    ks = {(r.input, r.variable.key): r for r in ks_rows}
    scaling = inputs[0].scaling
    cr = [inp for inp in inputs if inp.has_cr]
    todo = [v for v in variables if v.key in edges]
    skipped = [v.key for v in variables if v.key not in edges and any(v.applies_to(i) for i in inputs)]
    prog = Progress(len(todo) * (1 + bool(cr)), "plot: figures", unit="figures")
    section = sub = None
    try:
        for v in todo:
            if v.section != section:
                section, sub = v.section, None
                page.section(section)
            if v.table != "jets":
                want = "leading slot" if v.slot == 0 else "all slots"
                if want != sub:
                    sub = want
                    page.section(f"{section}: {want}", level=3)
            label = v.axis_label(scaling)
            fig = _class_figure(v, label, inputs, hists, cfg)
            page.figure(fig, f"{v.stem}_classes", caption=f"`{v.key}` per class")
            prog.update(1)
            cr_v = [inp for inp in cr if (inp.name, v.key) in hists and not v.is_weight]
            if cr_v:
                fig = _datamc_figure(v, label, cr_v, hists, ks, cfg)
                texts = [f"{inp.name} {ks[(inp.name, v.key)].ks:.3f}" for inp in cr_v if (inp.name, v.key) in ks]
                page.figure(fig, f"{v.stem}_datamc", caption=f"`{v.key}` data vs MC; K-S: {', '.join(texts) or 'n/a'}")
                prog.update(1)
    finally:
        prog.close()
    if skipped:
        page.section("Not plotted")
        page.text("No entries in any input for: " + ", ".join(f"`{k}`" for k in skipped))


def _ylabel(v: Variable, density: bool) -> str:
    return f"Fraction of {v.per} / bin" if density else f"Weighted {v.per} / bin"


def _class_figure(v: Variable, label: str, inputs: list[InputSet], hists, cfg: PlotConfig):
    import matplotlib.pyplot as plt
    import mplhep

    from . import style

    fig, ax = plt.subplots(figsize=(7.0, 5.2))
    fig.subplots_adjust(left=0.15, right=0.95, top=0.94, bottom=0.15)
    drawn: list[np.ndarray] = []
    for i, inp in enumerate(inputs):
        h = hists.get((inp.name, v.key))
        if h is None:
            continue
        for c in CLASSES:
            if not h.entries[c]:
                continue
            y, _ = h.shape(c, cfg.density)
            drawn.append(y)
            name = CLASS_NAMES[c] + (f" ({inp.name})" if len(inputs) > 1 else "")
            mplhep.histplot(
                y,
                h.edges,
                ax=ax,
                histtype="step",
                color=style.CLASS_COLORS[c],
                linestyle=style.linestyle(i),
                label=name,
            )
    _finish_axes(ax, drawn)
    ax.set_xlabel(label)
    ax.set_ylabel(_ylabel(v, cfg.density))
    style.atlas_label(ax)
    return fig


def _datamc_figure(v: Variable, label: str, cr: list[InputSet], hists, ks: dict, cfg: PlotConfig):
    import matplotlib.pyplot as plt
    import mplhep

    from . import style

    fig, (ax, rax) = plt.subplots(
        2, 1, sharex=True, figsize=(7.0, 6.4), gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06}
    )
    fig.subplots_adjust(left=0.15, right=0.95, top=0.95, bottom=0.12)
    drawn: list[np.ndarray] = []
    ratios: list[np.ndarray] = []
    for k, inp in enumerate(cr):
        h = hists[(inp.name, v.key)]
        col, mk = style.input_color(k), style.marker(k)
        suffix = f" ({inp.name})" if len(cr) > 1 else ""
        mc, mce = h.shape(Label.QCD, cfg.density)
        da, dae = h.shape(Label.DATA, cfg.density)
        drawn += [mc, da + dae]
        r = ks.get((inp.name, v.key))
        kstxt = f", K-S = {r.ks:.3f}" if r else ""
        mplhep.histplot(mc, h.edges, ax=ax, histtype="step", color=col, label=f"QCD MC{suffix}")
        da = np.where(h.sumw2[Label.DATA] > 0, da, np.nan)  # no marker (and no ratio point) for empty bins
        mplhep.histplot(
            da, h.edges, yerr=dae, ax=ax, histtype="errorbar", color=col, marker=mk, markersize=4,
            label=f"data{suffix}{kstxt}",
        )  # fmt: skip
        centers = 0.5 * (h.edges[1:] + h.edges[:-1])
        ok = mc > 0
        ratio = np.divide(da, mc, out=np.full_like(da, np.nan), where=ok)
        rerr = np.divide(dae, mc, out=np.full_like(da, np.nan), where=ok)
        if len(cr) == 1:  # the MC statistical band; with several inputs it would hide the points
            rel = np.divide(mce, mc, out=np.zeros_like(mc), where=ok)
            rax.stairs(1 + rel, h.edges, baseline=1 - rel, fill=True, color="0.85", label="MC stat.")
        rax.errorbar(centers, ratio, yerr=rerr, fmt=mk, color=col, markersize=3, linestyle="none")
        ratios.append(np.abs(ratio - 1))
    rax.axhline(1.0, color="0.4", linestyle="--", linewidth=1)
    rax.set_ylim(*_ratio_range(ratios))
    rax.set_ylabel("data / MC")
    rax.set_xlabel(label)
    ax.set_xlabel("")
    _finish_axes(ax, drawn)
    ax.set_ylabel(_ylabel(v, cfg.density))
    style.atlas_label(ax)
    return fig


def _ratio_range(deviations: list[np.ndarray]) -> tuple[float, float]:
    """1 ± the smallest of 0.1/0.2/0.5/1 that holds (nearly) all points: small mismodelling stays visible."""
    d = np.concatenate(deviations) if deviations else np.zeros(0)
    d = d[np.isfinite(d)]
    top = float(np.percentile(d, 95)) if d.size else 1.0
    half = next((h for h in (0.1, 0.2, 0.5) if top < 0.9 * h), 1.0)
    return 1.0 - half, 1.0 + half


def _finish_axes(ax, drawn: list[np.ndarray]) -> None:
    """Log scale for steeply falling distributions (pT, energies, chi2), which are flat lines on a
    linear scale; headroom above the curves so the legend and the ATLAS label do not cover them."""
    n = len(ax.get_legend_handles_labels()[0])
    y = np.concatenate(drawn) if drawn else np.zeros(0)
    y = y[np.isfinite(y) & (y > 0)]
    room = 1.35 + 0.07 * min(n, 8)
    if y.size >= 5 and y.max() / np.median(y) > 30:
        lo = float(y.min()) / 2
        ax.set_yscale("log")
        ax.set_ylim(lo, y.max() * (y.max() / lo) ** (room - 1))
    elif y.size:
        ax.set_ylim(0.0, y.max() * room)
    if n:
        ax.legend(loc="upper right", ncol=2 if n > 4 else 1, fontsize="x-small" if n > 4 else "small")
