"""Data report, computing: the variables, the inputs, their blocks of jets, the histograms and the
data-vs-MC K-S statistics (crbatch.report.plot lays them out, crbatch.report.plot_figures draws them).

Memory stays bounded on big inputs: jets are read in contiguous blocks of ``chunk_jets``; at most
``max_jets`` per input are histogrammed (blocks spread evenly over the input, so a file sorted by
class or mass point is still sampled everywhere); at most about ``ks_max_jets`` jets per class are
kept for the K-S statistic. Binning is shared by all inputs and classes: ranges come from robust
quantiles of a sample of the first input.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import ConfigError, InputCorrupt, InputMissing, InputSchema
from ..inputs import expand
from ..progress import Progress
from ..schema import Label
from ..stats import effective_n, ks_pvalue, ks_weighted

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
CLASSES = tuple(int(c) for c in Label)
N_CLASSES = len(CLASSES)
# Legend and report names become directory names: no separators, no leading dot ("..", hidden dirs).
_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")


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


def binning(inputs: list[InputSet], variables: list[Variable], tables: list[str], cfg: Any):
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


def fill(inputs, variables, tables, edges, cfg: Any):
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


def ks_rows(inputs, variables, samples) -> list[KSRow]:
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
            mc_block, da_block = pair[Label.QCD], pair[Label.DATA]
            assert mc_block is not None and da_block is not None  # no None in pair (checked above)
            (mc, mc_rows), (da, da_rows) = (mc_block.values(v), da_block.values(v))
            mw, dw = mc_block.weights[mc_rows], da_block.weights[da_rows]
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
