"""``crbatch synth divert``: synthetic DiVertAnalysis ntuples in the real schema, written with real ROOT.

The file has a ``trees_DV_`` tree with every branch the converter reads, under the same name and
C++ type as the grid ntuples (``std::vector<std::vector<int>>`` association lists included, which
uproot cannot write), plus ``nn_jet_index``, ``lumiBlock``, ``HLT_jet_pT`` and, for MC, a
``MetaData_EventCount`` histogram. Data types (``bib``, ``data``) have no ``mcEventWeight``,
``mcChannelNumber`` or ``llp_*`` branches, exactly like real data.

Events are generated in fixed blocks with numpy (:mod:`crbatch.synth.physics`) and filled into the
tree by a small C++ loop over flat buffers, so memory stays bounded and millions of events take
minutes. The same arguments and seed give identical branch contents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, outputs, schema
from ..errors import ConfigError, CrbatchError, ExitCode, Transient
from ..progress import Progress
from . import physics as ph

log = logging.getLogger(__name__)

TREE = "trees_DV_"
DATA_TYPES = ("sig", "qcd", "bib", "data")
BLOCK_EVENTS = 10_000  # events per generated block: part of the seed → content mapping, do not change
EVENT_NUMBER_STRIDE = 1_000_000_000  # eventNumber = seed·stride + index: files of different seeds never collide
MC_RUN_NUMBER = 284500  # mc16a
DATA_EVENTS_PER_RUN = 200_000
SKIM_EFFICIENCY = 0.8  # the "initial" MetaData counts are the written ones divided by this
DEFAULT_COMPRESSION = 501  # ZSTD level 1: as fast as LZ4 here and smaller; uproot reads it (cramjam)
ROOT_MISSING = "PyROOT is needed: pip install 'crbatch[synth]'"
DEFAULT_SIGNAL_DSID = {(125.0, 55.0): 311314, (600.0, 275.0): 311424}
FALLBACK_SIGNAL_DSID = 311300
_TYPE_CODE = {t: i for i, t in enumerate(DATA_TYPES)}  # enters the seed: qcd and data of one seed differ


@dataclass(frozen=True)
class Branch:
    """One tree branch: name, C++ type (see ``_CXX``) and the collection its vector runs over."""

    name: str
    cxx: str  # UInt_t | ULong64_t | Float_t (per event) | double | float | int | char | vvint (per object)
    coll: str | None  # None: one value per event
    types: frozenset[str] = frozenset(DATA_TYPES)


_MC = frozenset(schema.MC_TYPES)
_NP = {"UInt_t": np.uint32, "ULong64_t": np.uint64, "Float_t": np.float32, "double": np.float64,
       "float": np.float32, "int": np.int32, "char": np.int8, "vvint": np.int32}  # fmt: skip


def _vec(coll: str, prefix: str, names: str, cxx: str = "double") -> list[Branch]:
    return [Branch(prefix + n, cxx, coll) for n in names.split()]


BRANCHES: tuple[Branch, ...] = (
    Branch("runNumber", "UInt_t", None),
    Branch("eventNumber", "ULong64_t", None),
    Branch("lumiBlock", "UInt_t", None),
    Branch("mcEventWeight", "Float_t", None, _MC),
    Branch("mcChannelNumber", "UInt_t", None, _MC),
    Branch("nn_jet_index", "int", "jet"),
    *_vec("jet", "jet_", "pT eta phi"),
    Branch("jet_isClean_LooseBadLLP", "char", "jet"),
    *_vec("clus", "clus_", "pt eta phi"),
    Branch("clus_time", "float", "clus"),
    *_vec("clus", "clus_", " ".join(ph.LAYERS)),
    Branch("cluster_jetIndex", "int", "clus"),
    *_vec("track", "track_", "pT eta phi"),
    Branch("track_chiSquared", "float", "track"),
    *_vec("track", "track_", "d0 z0 vertex_nParticles PixelShared PixelHoles PixelHits SCTHits SCTHoles SCTShared"),
    Branch("track_jetIndex", "vvint", "track"),
    *_vec("mseg", "MSeg_", "etaPos phiPos etaDir phiDir"),
    Branch("MSeg_t0", "float", "mseg"),
    Branch("MSeg_chiSquared", "float", "mseg"),
    Branch("MSeg_jetIndex", "vvint", "mseg"),
    *_vec("hlt", "HLT_jet_", "pT eta phi"),
    Branch("HLT_jet_isBIB", "int", "hlt"),
    *[Branch(b.name, b.cxx, b.coll, frozenset({"sig"})) for b in _vec("llp", "llp_", "pT eta phi Lxy Lz")],
)


def branches(data_type: str) -> list[Branch]:
    """The branches a file of ``data_type`` has."""
    return [b for b in BRANCHES if data_type in b.types]


@dataclass(frozen=True)
class Spec:
    """What to generate; validated on construction."""

    data_type: str
    events: int
    seed: int
    mH: float | None = None
    mS: float | None = None
    dsid: int | None = None
    jz: int | None = field(default=None, init=False)  # the single JZ slice of a qcd file with --dsid

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ConfigError(f"unknown type {self.data_type!r}; choose one of {', '.join(DATA_TYPES)}")
        if not 0 <= self.events < EVENT_NUMBER_STRIDE:
            raise ConfigError(f"--events {self.events}: must be between 0 and {EVENT_NUMBER_STRIDE - 1}")
        if not 0 <= self.seed < 2**64 // EVENT_NUMBER_STRIDE - 1:
            raise ConfigError(f"--seed {self.seed}: must be between 0 and {2**64 // EVENT_NUMBER_STRIDE - 2}")
        self._check_masses()
        self._check_dsid()

    def _check_masses(self) -> None:
        if self.data_type != "sig":
            if self.mH is not None or self.mS is not None:
                raise ConfigError(f"--mH/--mS are for signal only, not --type {self.data_type}")
            return
        if self.mH is None or self.mS is None:
            raise ConfigError("signal needs both --mH and --mS (GeV), e.g. --mH 125 --mS 55")
        if not 0 < 2 * self.mS < self.mH:
            raise ConfigError(f"--mH {self.mH} --mS {self.mS}: need 0 < 2·mS < mH for H → SS")

    def _check_dsid(self) -> None:
        if self.dsid is None:
            return
        if self.data_type not in schema.MC_TYPES:
            raise ConfigError(f"--dsid is for MC (sig, qcd); {self.data_type} files have no mcChannelNumber")
        if self.dsid <= 0 or self.dsid >= 2**32:
            raise ConfigError(f"--dsid {self.dsid}: must be a positive 32-bit number")
        if self.data_type == "qcd":
            jz = self.dsid - ph.JZ_DSID0
            if jz not in ph.JZ_SLICES:
                lo, hi = ph.JZ_DSID0 + min(ph.JZ_SLICES), ph.JZ_DSID0 + max(ph.JZ_SLICES)
                raise ConfigError(f"--dsid {self.dsid}: qcd DSIDs are the JZ slices {lo}–{hi} (omit for a mix)")
            object.__setattr__(self, "jz", jz)

    @property
    def signal_dsid(self) -> int:
        if self.dsid is not None:
            return self.dsid
        assert self.mH is not None and self.mS is not None  # a signal spec (checked on construction)
        return DEFAULT_SIGNAL_DSID.get((float(self.mH), float(self.mS)), FALLBACK_SIGNAL_DSID)


# --- one block of events → flat, typed buffers ----------------------------------------------------------


@dataclass
class Block:
    """Flat per-branch buffers of ``n`` events, with per-collection offsets (length n + 1)."""

    n: int
    arrays: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray]
    inner: dict[str, np.ndarray]  # nested branches: offsets of each object's list


def _offsets(evt: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(evt, minlength=n), out=out[1:])
    return out


def _by_event(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(cols["evt"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def _links(obj: dict[str, np.ndarray], jet_offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Association lists (``vector<vector<int>>``): the owner's index in the event, plus neighbours
    for objects linked to several jets; ``[-1]`` for objects in no jet. Returns (values, offsets)."""
    owner, evt = obj["jet"], obj["evt"]
    n_jets = np.diff(jet_offs)[evt]
    local = np.where(owner >= 0, owner - jet_offs[evt], -1)
    links = np.minimum(obj.get("links", np.ones(len(owner), np.int64)), np.maximum(n_jets, 1))
    inner = np.zeros(len(owner) + 1, np.int64)
    np.cumsum(links, out=inner[1:])
    rep = np.repeat(np.arange(len(owner)), links)
    step = np.arange(inner[-1]) - inner[:-1][rep]
    values = np.where(local[rep] >= 0, (local[rep] + step) % np.maximum(n_jets[rep], 1), -1)
    values = values[np.lexsort((values, rep))]  # ascending within each list, as in the ntuples
    return values.astype(np.int32), inner


def _generate(spec: Spec, rng: np.random.Generator, n: int) -> tuple[ph.Jets, ph.Tune, dict[str, np.ndarray]]:
    """The jets of ``n`` events, the detector tune and the per-event/truth extras."""
    if spec.data_type == "qcd":
        jets, ev = ph.qcd_events(rng, n, spec.jz)
        return jets, ph.MC_TUNE, {"mcEventWeight": ev["weight"], "mcChannelNumber": ph.JZ_DSID0 + ev["slice"]}
    if spec.data_type == "data":
        jets, _ = ph.qcd_events(rng, n)
        return jets, ph.DATA_TUNE, {}
    if spec.data_type == "bib":
        return ph.bib_events(rng, n), ph.DATA_TUNE, {}
    assert spec.mH is not None and spec.mS is not None  # a signal spec (checked on construction)
    jets, llp = ph.signal_events(rng, n, float(spec.mH), float(spec.mS))
    extra = {"llp_pT": llp["pt"]} | {f"llp_{k}": llp[k] for k in ("eta", "phi", "Lxy", "Lz")}
    extra |= {"mcEventWeight": np.ones(n, np.float32), "mcChannelNumber": np.full(n, spec.signal_dsid)}
    return jets, ph.MC_TUNE, extra


def make_block(spec: Spec, index: int) -> Block:
    """Block ``index`` of the file: events ``index·BLOCK_EVENTS`` onwards, from its own seed."""
    start = index * BLOCK_EVENTS
    n = min(BLOCK_EVENTS, spec.events - start)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([spec.seed, _TYPE_CODE[spec.data_type], index])))
    jets, tune, extra = _generate(spec, rng, n)
    jet_offs = _offsets(jets.evt, n)
    clus = ph.clusters(rng, jets, tune)
    clus["evt"] = jets.evt[clus["jet"]]
    trk = _by_event(ph.tracks(rng, jets, n, tune))
    seg = _by_event(ph.msegs(rng, jets, n))
    hlt = _by_event(ph.hlt_jets(rng, jets))

    a: dict[str, np.ndarray] = {}
    gi = start + np.arange(n, dtype=np.uint64)
    a["eventNumber"] = np.uint64(spec.seed) * np.uint64(EVENT_NUMBER_STRIDE) + gi
    a |= _run_lumi(spec, rng, gi)
    a["nn_jet_index"] = np.arange(len(jets)) - jet_offs[jets.evt]
    a |= {"jet_pT": jets.pt, "jet_eta": jets.eta, "jet_phi": jets.phi}
    clean = np.where(jets.kind == ph.Kind.BIB, 0.85, 0.98)
    a["jet_isClean_LooseBadLLP"] = rng.random(len(jets)) < clean
    a |= {f"clus_{k}": v for k, v in clus.items() if k not in ("jet", "evt")}
    a["cluster_jetIndex"] = clus["jet"] - jet_offs[clus["evt"]]
    a |= {("track_pT" if k == "pt" else f"track_{k}"): v for k, v in trk.items() if k not in ("jet", "evt")}
    a |= {f"MSeg_{k}": v for k, v in seg.items() if k not in ("jet", "evt", "links")}
    a |= {f"HLT_jet_{'pT' if k == 'pt' else k}": v for k, v in hlt.items() if k != "evt"}
    a |= extra
    a["track_jetIndex"], t_inner = _links(trk, jet_offs)
    a["MSeg_jetIndex"], m_inner = _links(seg, jet_offs)
    offsets = {"jet": jet_offs, "clus": _offsets(clus["evt"], n), "track": _offsets(trk["evt"], n),
               "mseg": _offsets(seg["evt"], n), "hlt": _offsets(hlt["evt"], n),
               "llp": np.arange(n + 1, dtype=np.int64) * 2}  # fmt: skip
    typed = {b.name: _as_type(a[b.name], b) for b in branches(spec.data_type)}
    return Block(n, typed, offsets, {"track_jetIndex": t_inner, "MSeg_jetIndex": m_inner})


def _run_lumi(spec: Spec, rng: np.random.Generator, gi: np.ndarray) -> dict[str, np.ndarray]:
    if spec.data_type in schema.MC_TYPES:
        return {"runNumber": np.full(len(gi), MC_RUN_NUMBER), "lumiBlock": rng.integers(1, 41, len(gi))}
    # Data: a seed-dependent first run in 2017–2018 (300000+), a new run every DATA_EVENTS_PER_RUN events.
    first = 300_000 + (spec.seed * 7919) % 30_000
    run = first + 11 * (gi // DATA_EVENTS_PER_RUN).astype(np.int64)
    return {"runNumber": run, "lumiBlock": 1 + (gi % DATA_EVENTS_PER_RUN) // 1000}


def _as_type(values: np.ndarray, b: Branch) -> np.ndarray:
    out = np.ascontiguousarray(values, dtype=_NP[b.cxx])
    if b.cxx == "double" and b.coll != "jet":
        # DiVertAnalysis fills its double vectors from float quantities: keep float precision,
        # which also lets the files compress like real ones.
        out = out.astype(np.float32).astype(np.float64)
    return out


# --- the ROOT side ---------------------------------------------------------------------------------------

_CXX = r"""
#include <TClass.h>
#include <TCollectionProxyInfo.h>
#include <TFile.h>
#include <TH1D.h>
#include <TTree.h>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace crbatch_synth {

// ROOT ships no dictionary for vector<vector<int>>. Give its TClass the compiled collection proxy
// a rootcling dictionary would register (this code is JIT-compiled), so no compiler is needed.
inline bool ensure_nested_proxy() {
  static bool done = false;
  if (done) return true;
  TClass* cl = TClass::GetClass("vector<vector<int> >");
  if (!cl) return false;
  using Info = ROOT::Detail::TCollectionProxyInfo;
  std::unique_ptr<Info> info(Info::Generate(Info::Pushback<std::vector<std::vector<int>>>()));
  cl->SetCollectionProxy(*info);
  done = true;
  return true;
}

struct Column {
  virtual ~Column() = default;
  virtual void bind(std::uintptr_t data, std::uintptr_t outer, std::uintptr_t inner) = 0;
  virtual void load(Long64_t i) = 0;
};

template <class T> struct Scalar final : Column {
  T value{};
  const T* data = nullptr;
  void bind(std::uintptr_t d, std::uintptr_t, std::uintptr_t) override { data = reinterpret_cast<const T*>(d); }
  void load(Long64_t i) override { value = data[i]; }
};

template <class T> struct Vector final : Column {
  std::vector<T> value;
  const T* data = nullptr;
  const Long64_t* offs = nullptr;
  void bind(std::uintptr_t d, std::uintptr_t o, std::uintptr_t) override {
    data = reinterpret_cast<const T*>(d);
    offs = reinterpret_cast<const Long64_t*>(o);
  }
  void load(Long64_t i) override { value.assign(data + offs[i], data + offs[i + 1]); }
};

template <class T> struct Nested final : Column {
  std::vector<std::vector<T>> value;
  const T* data = nullptr;
  const Long64_t* outer = nullptr;
  const Long64_t* inner = nullptr;
  void bind(std::uintptr_t d, std::uintptr_t o, std::uintptr_t in) override {
    data = reinterpret_cast<const T*>(d);
    outer = reinterpret_cast<const Long64_t*>(o);
    inner = reinterpret_cast<const Long64_t*>(in);
  }
  void load(Long64_t i) override {
    const Long64_t a = outer[i], b = outer[i + 1];
    value.resize(b - a);
    for (Long64_t k = a; k < b; ++k) value[k - a].assign(data + inner[k], data + inner[k + 1]);
  }
};

class Writer {
 public:
  Writer(const std::string& path, const std::string& tree, const std::string& title, int compress)
      : file_(TFile::Open(path.c_str(), "RECREATE", "", compress)) {
    if (!file_ || file_->IsZombie()) return;
    file_->cd();
    tree_ = new TTree(tree.c_str(), title.c_str());  // owned by file_
  }
  ~Writer() { abandon(); }
  bool ok() const { return tree_ != nullptr; }

  int add(const std::string& name, const std::string& type) {
    Column* c = nullptr;
    if (type == "UInt_t") c = scalar<UInt_t>(name, "i");
    else if (type == "ULong64_t") c = scalar<ULong64_t>(name, "l");
    else if (type == "Float_t") c = scalar<Float_t>(name, "F");
    else if (type == "double") c = vec<double>(name);
    else if (type == "float") c = vec<float>(name);
    else if (type == "int") c = vec<int>(name);
    else if (type == "char") c = vec<char>(name);
    else if (type == "vvint" && ensure_nested_proxy()) c = nested<int>(name);
    if (!c) return -1;
    cols_.emplace_back(c);
    return static_cast<int>(cols_.size()) - 1;
  }

  void bind(int i, std::uintptr_t data, std::uintptr_t outer, std::uintptr_t inner) {
    cols_[i]->bind(data, outer, inner);
  }

  // Fill n events from the bound buffers; false on a write error.
  bool fill(Long64_t n) {
    for (Long64_t i = 0; i < n; ++i) {
      for (auto& c : cols_) c->load(i);
      if (tree_->Fill() < 0) return false;
    }
    return true;
  }

  void event_count(const std::vector<double>& values, const std::vector<std::string>& labels) {
    file_->cd();
    TH1D h("MetaData_EventCount", "MetaData_EventCount", values.size(), 0.5, values.size() + 0.5);
    h.SetDirectory(nullptr);
    for (size_t i = 0; i < values.size(); ++i) {
      h.GetXaxis()->SetBinLabel(i + 1, labels[i].c_str());
      h.SetBinContent(i + 1, values[i]);
    }
    h.SetEntries(values[0]);
    h.Write();
  }

  // Write and close; false on a write error (disk full, quota).
  bool close() {
    if (!file_) return false;
    file_->cd();
    bool ok = tree_->Write("", TObject::kOverwrite) > 0;
    file_->Close();
    ok = ok && !file_->TestBit(TFile::kWriteError);
    delete file_;
    file_ = nullptr;
    tree_ = nullptr;
    return ok;
  }

  void abandon() {
    if (file_) {
      file_->Close();
      delete file_;
    }
    file_ = nullptr;
    tree_ = nullptr;
  }

 private:
  template <class T> Column* scalar(const std::string& name, const char* code) {
    auto* c = new Scalar<T>();
    tree_->Branch(name.c_str(), &c->value, (name + "/" + code).c_str());
    return c;
  }
  template <class T> Column* vec(const std::string& name) {
    auto* c = new Vector<T>();
    if (!tree_->Branch(name.c_str(), &c->value)) { delete c; return nullptr; }
    return c;
  }
  template <class T> Column* nested(const std::string& name) {
    auto* c = new Nested<T>();
    if (!tree_->Branch(name.c_str(), &c->value)) { delete c; return nullptr; }
    return c;
  }
  TFile* file_ = nullptr;
  TTree* tree_ = nullptr;
  std::vector<std::unique_ptr<Column>> cols_;
};

}  // namespace crbatch_synth
"""

_ROOT = None
_WRITE_LOCK = threading.Lock()


def load_root():
    """Import PyROOT (once) and compile the tree writer; a CONFIG error when PyROOT is not installed."""
    global _ROOT
    if _ROOT is not None:
        return _ROOT
    # ROOT installs its own handlers for some signals while it starts; crbatch's SIGTERM/SIGINT
    # handling (clean removal of temporary outputs) must survive that.
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the PyPI build announces itself as alpha on import
            import ROOT
    except ImportError as e:
        raise CrbatchError(ROOT_MISSING, ExitCode.CONFIG) from e
    try:
        ROOT.gROOT.SetBatch(True)
        ROOT.gErrorIgnoreLevel = ROOT.kWarning
        if not ROOT.gInterpreter.Declare(_CXX):
            raise CrbatchError("PyROOT could not compile the synthetic-ntuple writer (see the messages above)")
        # Filling (C++) runs while the next block is generated (numpy) in another thread.
        ROOT.crbatch_synth.Writer.fill.__release_gil__ = True
    finally:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for s, h in saved.items():
                if h is not None:
                    signal.signal(s, h)
    _ROOT = ROOT
    return ROOT


@contextlib.contextmanager
def _tree_writer(path: Path, spec: Spec, compression: int) -> Iterator[tuple[Any, dict[str, int]]]:
    ROOT = load_root()
    # The tree title records what made the file (the generator's whole config), like every crbatch output.
    title = (f"crbatch {__version__} synth divert type={spec.data_type} events={spec.events} seed={spec.seed} "
             f"mH={spec.mH} mS={spec.mS} dsid={spec.dsid} compression={compression}")  # fmt: skip
    w = ROOT.crbatch_synth.Writer(str(path), TREE, title, compression)
    if not w.ok():
        open(path, "ab").close()  # ROOT gives no reason: a read-only or forbidden place raises it here (exit 14)
        raise Transient(f"{path}: cannot create the ROOT file; check the directory is writable")
    try:
        cols = {}
        for b in branches(spec.data_type):
            i = w.add(b.name, b.cxx)
            if i < 0:
                raise CrbatchError(f"ROOT refused branch {b.name} ({b.cxx})")
            cols[b.name] = i
        yield w, cols
    except BaseException:
        w.abandon()
        raise


def _fill(w, cols: dict[str, int], spec: Spec, block: Block) -> None:
    for b in branches(spec.data_type):
        data = block.arrays[b.name]
        # 0 where the branch has no collection (or no inner vectors), else an offsets array.
        outer: Any = 0 if b.coll is None else block.offsets[b.coll]
        inner: Any = block.inner.get(b.name, 0)
        n_obj = block.n if b.coll is None else int(outer[-1])
        n_val = n_obj if b.cxx != "vvint" else int(inner[-1])
        if data.dtype != _NP[b.cxx] or not data.flags.c_contiguous or len(data) != n_val:
            raise AssertionError(f"{b.name}: buffer {data.dtype}[{len(data)}] does not match {b.cxx}[{n_val}]")
        w.bind(cols[b.name], data.ctypes.data, _address(outer), _address(inner))
    if not w.fill(block.n):
        raise Transient("ROOT could not write the tree (disk full or quota?); retry")


def _blocks(spec: Spec) -> Generator[Block, None, None]:
    """The file's blocks in order, the next one generated (numpy, GIL released) while ROOT fills this one."""
    n_blocks = -(-spec.events // BLOCK_EVENTS)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth")
    try:
        pending = pool.submit(make_block, spec, 0) if n_blocks else None
        for i in range(n_blocks):
            assert pending is not None  # submitted for every i < n_blocks
            block = pending.result()
            pending = pool.submit(make_block, spec, i + 1) if i + 1 < n_blocks else None
            yield block
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _address(a) -> int:
    return 0 if isinstance(a, int) else a.ctypes.data


EVENT_COUNT_LABELS = ("nEvents initial", "nEvents selected", "sumOfWeights initial", "sumOfWeights selected",
                      "sumOfWeightsSquared initial", "sumOfWeightsSquared selected")  # fmt: skip


def _event_count(n: int, sumw: float, sumw2: float) -> list[float]:
    """MetaData_EventCount as after a skim that kept SKIM_EFFICIENCY of the events (and weights)."""
    k = 1.0 / SKIM_EFFICIENCY
    return [float(round(n * k)), float(n), sumw * k, sumw, sumw2 * k, sumw2]


def write_divert(
    out: Path,
    data_type: str,
    events: int,
    seed: int,
    mH: float | None = None,
    mS: float | None = None,
    dsid: int | None = None,
    compression: int = DEFAULT_COMPRESSION,
) -> Path:
    """Write a synthetic DiVertAnalysis ntuple to ``out`` (atomically) and return ``out``.

    ``data_type`` is one of ``sig`` (needs ``mH`` and ``mS``, GeV), ``qcd``, ``bib``, ``data``.
    ``dsid`` sets mcChannelNumber of MC (for qcd: a JZ slice 361020–361024 instead of a mix).
    ``compression`` is ROOT's algorithm·100 + level (501 = ZSTD 1, 404 = LZ4, 101 = zlib, 0 = none).
    """
    spec = Spec(data_type, int(events), int(seed), mH, mS, dsid)
    if not (0 <= compression < 600 and compression // 100 in (0, 1, 2, 4, 5)):
        raise ConfigError(f"--compression {compression}: use algorithm·100 + level, e.g. 501 (ZSTD), 404 (LZ4)")
    out = Path(out)
    outputs.check_output(out, "synth", tree=TREE)
    schema.remove_stale_tmp(out.parent, out.name)
    t0 = time.monotonic()
    sumw = sumw2 = 0.0
    prog = Progress(spec.events, f"synth {spec.data_type} → {out.name}", unit="events")
    try:
        # ROOT's file/directory state is global: one writer at a time per process.
        with _WRITE_LOCK, schema.atomic_output(out) as tmp, _tree_writer(tmp, spec, compression) as (w, cols):
            with contextlib.closing(_blocks(spec)) as blocks:  # closing: the prefetch thread stops on any error
                for block in blocks:
                    _fill(w, cols, spec, block)
                    if "mcEventWeight" in block.arrays:
                        wt = block.arrays["mcEventWeight"].astype(np.float64)
                        sumw, sumw2 = sumw + wt.sum(), sumw2 + (wt**2).sum()
                    prog.update(block.n)
                    del block
            if spec.data_type in schema.MC_TYPES:
                w.event_count(_event_count(spec.events, sumw, sumw2), list(EVENT_COUNT_LABELS))
            if not w.close():
                raise Transient(f"{out}: ROOT could not finish writing (disk full or quota?); retry")
    finally:
        prog.close()
    dt = time.monotonic() - t0
    log.info("wrote %s: %d %s events in %.1f s (%.0f events/s, %.1f MB)", out, spec.events, spec.data_type, dt,
             spec.events / max(dt, 1e-9), os.path.getsize(out) / 1e6)  # fmt: skip
    return out
