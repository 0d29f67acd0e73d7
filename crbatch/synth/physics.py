"""Toy detector physics of the synthetic DiVertAnalysis events, vectorised over a block of events.

Nothing here is a simulation; the distributions are shaped so that the features the CalRatio
network reads separate the classes for the reasons they do in ATLAS:

* QCD multijets: prompt, on-time (cluster time ~ 0), EM-rich clusters, many tracks;
* signal: jets from LLPs decaying inside the calorimeter: energy deep in the hadronic layers,
  late (slow LLP: ``t = L/c (1/β - 1)``), narrow, with almost no tracks;
* BIB: muons travelling parallel to the beam in the horizontal plane: early clusters spread
  along η with a time that depends on η, muon segments parallel to the beam, no tracks;
* collision data: QCD with a small, systematic mis-modelling (:data:`DATA_TUNE`), the thing the
  adversary learns to ignore.

Every generator takes a :class:`numpy.random.Generator` and is deterministic given it.
Units follow DiVertAnalysis: GeV for jets, tracks, LLPs and HLT jets; MeV for clusters; mm; ns.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

C_MM_PER_NS = 299.792458
JET_PT_MIN = 8.0  # GeV: DiVertAnalysis keeps jets down to ~8 GeV
MAX_ETA_JET = 4.5
MAX_ETA_ID = 2.5  # inner detector (tracks) acceptance
MAX_ETA_MS = 2.7  # muon spectrometer acceptance

# LLP decay volume boundaries (mm), as in the CalRatio fiducial selection.
BARREL_MAX_ETA = 1.4
CALO_BARREL_LXY = (1200.0, 4000.0)
CALO_ENDCAP_LZ = (3500.0, 6000.0)
PROMPT_DECAY_MM = 10.0
MEAN_LAB_DECAY_MM = 1500.0  # cτ is chosen per mass point so a typical LLP flies about this far

# JZ slices of the multijet MC (leading-jet pT window, GeV) and their share of a mixed file.
JZ_SLICES: dict[int, tuple[float, float]] = {0: (12.0, 20.0), 1: (20.0, 60.0), 2: (60.0, 160.0),
                                              3: (160.0, 400.0), 4: (400.0, 800.0)}  # fmt: skip
JZ_SHARE: dict[int, float] = {0: 0.10, 1: 0.35, 2: 0.30, 3: 0.18, 4: 0.07}
JZ_DSID0 = 361020  # mcChannelNumber of JZ0; slice k is JZ_DSID0 + k
QCD_PT_INDEX = 4.0  # dσ/dpT ∝ pT^-4 within a slice


class Kind(IntEnum):
    """What made a jet: decides how its clusters, tracks and segments look."""

    PROMPT = 0  # QCD / ISR / pile-up jet
    CALRATIO = 1  # LLP decayed inside the calorimeter
    DISPLACED = 2  # LLP decayed inside the inner detector
    BIB = 3  # fake jet from a beam-induced muon


@dataclass(frozen=True)
class Tune:
    """Detector-response knobs. Data differs from MC by a small, systematic amount."""

    time_shift: float = 0.0  # ns added to collision cluster times (calibration offset)
    time_sigma: float = 0.5  # ns cluster time resolution at high energy
    track_scale: float = 1.0  # multiplies the mean number of tracks of prompt jets
    em_shift: float = 0.0  # added to the EM fraction of prompt-jet clusters


MC_TUNE = Tune()
DATA_TUNE = Tune(time_shift=0.2, time_sigma=0.6, track_scale=0.9, em_shift=-0.04)


@dataclass
class Jets:
    """One row per generated jet of a block; ``evt`` is the event within the block."""

    evt: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    kind: np.ndarray
    delay: np.ndarray  # ns: late arrival of a slow LLP's decay products
    depth: np.ndarray  # 0..1: where in the calorimeter the LLP decayed
    lxy: np.ndarray  # mm: LLP decay radius (displaced tracks)
    side: np.ndarray  # ±1: direction of a BIB muon along z

    @classmethod
    def make(cls, evt, pt, eta, phi, kind, **extra) -> Jets:
        n = len(evt)
        zeros = np.zeros(n)
        cols = {"delay": zeros, "depth": zeros, "lxy": zeros, "side": np.ones(n, np.int8)} | extra
        return cls(np.asarray(evt, np.int64), np.asarray(pt, float), np.asarray(eta, float),
                   wrap_phi(np.asarray(phi, float)), np.broadcast_to(np.asarray(kind, np.int8), (n,)).copy(),
                   **{k: np.asarray(v) for k, v in cols.items()})  # fmt: skip

    @classmethod
    def concat(cls, parts: list[Jets]) -> Jets:
        """All jets of ``parts`` ordered by event, then by pT descending (as DiVertAnalysis orders them)."""
        cols = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        order = np.lexsort((-cols["pt"], cols["evt"]))
        return cls(**{k: v[order] for k, v in cols.items()})

    def __len__(self) -> int:
        return len(self.evt)


def wrap_phi(x: np.ndarray) -> np.ndarray:
    return (x + np.pi) % (2 * np.pi) - np.pi


def group_sum(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(group, weights=values, minlength=n)


def shares(rng: np.random.Generator, owner: np.ndarray, n_owners: int, spread: float) -> np.ndarray:
    """Random fractions that sum to 1 over each owner's objects: exponential weights to the power
    ``spread`` (1 is a flat Dirichlet; larger makes the leading object harder). Exponentials are
    ~10× cheaper to draw than gamma variates."""
    w = rng.standard_exponential(len(owner)) ** spread + 1e-12
    return w / group_sum(w, owner, n_owners)[owner]


def bernoulli_sum(rng: np.random.Generator, n: int, p: float, size: int) -> np.ndarray:
    """Binomial(n, p) as a sum of n uniform draws (cheaper than numpy's binomial for small n)."""
    return (rng.random((n, size)) < p).sum(0).astype(float)


def power_law(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, index: float) -> np.ndarray:
    """Samples of pT^-index between lo and hi (inverse CDF)."""
    a = 1.0 - index
    u = rng.random(len(lo))
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def jz_weights() -> dict[int, float]:
    """Event weight per slice so the weighted mixture follows one pT^-4 spectrum (JZ1 weight ≈ 1)."""
    xs = {k: lo ** (1 - QCD_PT_INDEX) - hi ** (1 - QCD_PT_INDEX) for k, (lo, hi) in JZ_SLICES.items()}
    w = {k: xs[k] / JZ_SHARE[k] for k in JZ_SLICES}
    return {k: v / w[1] for k, v in w.items()}


def soft_jets(rng: np.random.Generator, counts: np.ndarray, scale: np.ndarray | float = 8.0) -> Jets:
    """ISR / underlying-event / pile-up jets: steeply falling from the 8 GeV threshold, |η| up to 4.5."""
    evt = np.repeat(np.arange(len(counts)), counts)
    scale = np.broadcast_to(np.asarray(scale, float), (len(counts),))[evt]
    pt = JET_PT_MIN + rng.exponential(scale)
    eta = np.clip(rng.normal(0.0, 2.0, len(evt)), -MAX_ETA_JET, MAX_ETA_JET)
    return Jets.make(evt, pt, eta, rng.uniform(-np.pi, np.pi, len(evt)), Kind.PROMPT)


def qcd_events(rng: np.random.Generator, n: int, jz: int | None = None) -> tuple[Jets, dict[str, np.ndarray]]:
    """Multijet events: a balanced leading dijet from a JZ slice plus softer jets.

    Returns the jets and per-event ``slice`` and ``weight`` (the generator weight that makes the
    mixture of slices a single falling spectrum, with a little per-event spread).
    """
    keys = np.array(sorted(JZ_SLICES))
    sl = rng.choice(keys, size=n, p=[JZ_SHARE[k] for k in keys]) if jz is None else np.full(n, jz)
    lo = np.array([JZ_SLICES[k][0] for k in keys])[sl]
    hi = np.array([JZ_SLICES[k][1] for k in keys])[sl]
    pt1 = power_law(rng, lo, hi, QCD_PT_INDEX)
    pt2 = np.maximum(pt1 * rng.uniform(0.55, 1.0, n), JET_PT_MIN)  # recoiling jet, some energy lost to a third
    eta1, eta2 = rng.normal(0.0, 1.4, n), rng.normal(0.0, 1.4, n)
    phi1 = rng.uniform(-np.pi, np.pi, n)
    phi2 = phi1 + np.pi + rng.normal(0.0, 0.25, n)
    evt = np.arange(n)
    lead = Jets.make(np.concatenate([evt, evt]), np.concatenate([pt1, pt2]),
                     np.clip(np.concatenate([eta1, eta2]), -MAX_ETA_JET, MAX_ETA_JET),
                     np.concatenate([phi1, phi2]), Kind.PROMPT)  # fmt: skip
    n_soft = np.minimum(rng.poisson(5.0 + 0.004 * pt1), 15)
    soft = soft_jets(rng, n_soft, scale=6.0 + 0.03 * pt1)
    w = np.array([jz_weights()[k] for k in keys])[sl] * rng.lognormal(0.0, 0.3, n)
    return Jets.concat([lead, soft]), {"slice": sl, "weight": w.astype(np.float32)}


def llp_pairs(rng: np.random.Generator, n: int, mH: float, mS: float) -> dict[str, np.ndarray]:
    """H → SS: two LLPs per event (event-major), with decay positions from an exponential lifetime.

    The heavy scalar gets a ggF-like pT and a rapidity spread; the decay is isotropic in its rest
    frame, so heavier mH gives harder LLPs and a larger mS/mH gives slower ones (later jets).
    """
    p_star = np.sqrt(mH**2 / 4.0 - mS**2)
    h_pt = rng.gamma(1.5, 30.0 + 0.05 * mH, n)
    h_y = rng.normal(0.0, max(1.2, 1.8 - 0.0005 * mH), n)
    h_phi = rng.uniform(-np.pi, np.pi, n)
    mt = np.hypot(mH, h_pt)
    h_p = np.stack([h_pt * np.cos(h_phi), h_pt * np.sin(h_phi), mt * np.sinh(h_y)], axis=1)
    h_e = mt * np.cosh(h_y)
    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    phi_s = rng.uniform(-np.pi, np.pi, n)
    p1 = p_star * np.stack([sin_t * np.cos(phi_s), sin_t * np.sin(phi_s), cos_t], axis=1)
    e_star = mH / 2.0
    beta = h_p / h_e[:, None]
    b2 = np.maximum((beta**2).sum(1), 1e-18)
    gamma = h_e / mH
    out_p, out_e = [], []
    for p in (p1, -p1):  # the two LLPs are back to back in the H frame
        bp = (beta * p).sum(1)
        coef = (gamma - 1.0) * bp / b2 + gamma * e_star
        out_p.append(p + coef[:, None] * beta)
        out_e.append(gamma * (e_star + bp))
    p = np.stack(out_p, axis=1).reshape(-1, 3)  # (2n, 3), LLP 0 and 1 of each event adjacent
    e = np.stack(out_e, axis=1).reshape(-1)
    pt = np.hypot(p[:, 0], p[:, 1])
    eta = np.arcsinh(p[:, 2] / np.maximum(pt, 1e-9))
    phi = np.arctan2(p[:, 1], p[:, 0])
    pabs = np.sqrt((p**2).sum(1))
    ctau = MEAN_LAB_DECAY_MM * mS / p_star
    decay = (pabs / mS) * ctau * rng.exponential(1.0, 2 * n)
    return {"pt": pt, "eta": eta, "phi": phi, "Lxy": decay / np.cosh(eta), "Lz": decay * np.tanh(eta),
            "L": decay, "beta": pabs / e}  # fmt: skip


def llp_jets(rng: np.random.Generator, llp: dict[str, np.ndarray], mS: float) -> Jets:
    """The jet each LLP makes, by where it decayed: ID (displaced tracks), calorimeter (CalRatio), beyond (none)."""
    evt = np.repeat(np.arange(len(llp["pt"]) // 2), 2)
    barrel = np.abs(llp["eta"]) < BARREL_MAX_ETA
    r_in = np.where(barrel, llp["Lxy"] / CALO_BARREL_LXY[0], np.abs(llp["Lz"]) / CALO_ENDCAP_LZ[0])
    depth = np.where(barrel, (llp["Lxy"] - CALO_BARREL_LXY[0]) / (CALO_BARREL_LXY[1] - CALO_BARREL_LXY[0]),
                     (np.abs(llp["Lz"]) - CALO_ENDCAP_LZ[0]) / (CALO_ENDCAP_LZ[1] - CALO_ENDCAP_LZ[0]))  # fmt: skip
    kind = np.where(r_in < 1.0, Kind.DISPLACED, Kind.CALRATIO).astype(np.int8)
    kind[llp["L"] < PROMPT_DECAY_MM] = Kind.PROMPT
    # Calorimeter response to the decay products, plus pile-up / ISR energy in the jet cone.
    response = rng.lognormal(np.where(kind == Kind.CALRATIO, -0.05, 0.0), 0.25)
    pt = llp["pt"] * response + rng.exponential(8.0, len(kind))
    # Decay products spread more when the LLP is not boosted; the jet axis follows them.
    smear = 0.03 + 0.04 * np.minimum(2.0 * mS / np.maximum(llp["pt"], 1.0), 2.0)
    eta = llp["eta"] + rng.normal(0.0, 1.0, len(pt)) * smear
    phi = llp["phi"] + rng.normal(0.0, 1.0, len(pt)) * smear
    delay = llp["L"] / C_MM_PER_NS * (1.0 / np.maximum(llp["beta"], 1e-3) - 1.0)
    keep = (depth < 1.0) & (pt >= JET_PT_MIN) & (np.abs(eta) < MAX_ETA_JET)
    return Jets.make(evt[keep], pt[keep], eta[keep], phi[keep], kind[keep],
                     delay=delay[keep], depth=np.clip(depth[keep], 0.0, 1.0), lxy=llp["Lxy"][keep])  # fmt: skip


def signal_events(rng: np.random.Generator, n: int, mH: float, mS: float) -> tuple[Jets, dict[str, np.ndarray]]:
    llp = llp_pairs(rng, n, mH, mS)
    extra = soft_jets(rng, rng.poisson(6.0, n), scale=10.0)
    return Jets.concat([llp_jets(rng, llp, mS), extra]), llp


def bib_events(rng: np.random.Generator, n: int) -> Jets:
    """Data events triggered by BIB: one (sometimes two) BIB fake jets plus soft collision jets.

    BIB muons travel along the beam at the radius of the LHC optics' horizontal plane, so the
    deposits sit near φ = 0 or π; their pT is what the calorimeter sees of a brem shower.
    """
    n_bib = 1 + (rng.random(n) < 0.1)
    evt = np.repeat(np.arange(n), n_bib)
    m = len(evt)
    pt = 20.0 + rng.exponential(35.0, m)
    phi = np.where(rng.random(m) < 0.5, 0.0, np.pi) + rng.normal(0.0, 0.12, m)
    side = np.where(rng.random(m) < 0.5, 1, -1).astype(np.int8)
    bib = Jets.make(evt, pt, rng.uniform(-2.2, 2.2, m), phi, Kind.BIB, side=side)
    soft = soft_jets(rng, 1 + rng.poisson(6.0, n), scale=8.0)
    return Jets.concat([bib, soft])


# --- objects -------------------------------------------------------------------------------------------

# Per jet kind (index = Kind): mean multiplicity a + b·pT.
CLUS_A, CLUS_B = np.array([6.0, 4.0, 6.0, 6.0]), np.array([0.10, 0.07, 0.08, 0.08])
# Per jet kind: probability that a cluster is purely EM / purely hadronic, and the logit-centre of
# the EM fraction of the mixed ones.
P_PURE_EM = np.array([0.7, 0.0, 0.6, 0.35])
P_PURE_HAD = np.array([0.0, 0.5, 0.0, 0.35])
EM_LOGIT = np.array([0.3, -1.8, 0.3, 0.0])
# Mean share of each layer: EM (presampler, strips, middle, back), hadronic front to back. The
# hadronic profile of a CalRatio jet moves from shallow to deep with the LLP decay depth.
ECAL_SHARE = np.array([0.07, 0.36, 0.47, 0.10])
HCAL_SHALLOW = np.array([0.51, 0.32, 0.12, 0.05])
HCAL_DEEP = np.array([0.09, 0.29, 0.37, 0.25])
LAYERS = ("l1ecal", "l2ecal", "l3ecal", "l4ecal", "l1hcal", "l2hcal", "l3hcal", "l4hcal")
BIB_TIME_SLOPE = 3.0  # ns per unit η: BIB arrives along z, so time varies along the deposit


def _owner(rng: np.random.Generator, mean: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Owner row for each object, given the mean multiplicity of each owner."""
    counts = np.clip(rng.poisson(np.maximum(mean, 0.0)), lo, hi)
    return np.repeat(np.arange(len(mean)), counts)


def clusters(rng: np.random.Generator, jets: Jets, tune: Tune) -> dict[str, np.ndarray]:
    """Topo-clusters of every jet (every cluster belongs to one jet, as in the ntuples)."""
    k = jets.kind
    own = _owner(rng, CLUS_A[k] + CLUS_B[k] * jets.pt, 1, 80)
    m, kk = len(own), k[own]
    pt = shares(rng, own, len(jets), 1.3) * jets.pt[own] * 900.0  # MeV; ~10% of the jet is not clustered
    width = np.clip(0.9 / np.sqrt(jets.pt[own]), 0.03, 0.25)
    width = np.where(kk == Kind.CALRATIO, 0.6 * width, width)  # late decays make narrow jets
    s_eta = np.where(kk == Kind.BIB, 0.3, width)  # BIB deposits are elongated along η ...
    s_phi = np.where(kk == Kind.BIB, 0.02, width)  # ... and thin in φ
    d_eta = rng.normal(0.0, 1.0, m) * s_eta
    eta = np.clip(jets.eta[own] + d_eta, -4.9, 4.9)
    phi = wrap_phi(jets.phi[own] + rng.normal(0.0, 1.0, m) * s_phi)
    energy = pt * np.cosh(eta)
    out = {"jet": own, "pt": pt, "eta": eta, "phi": phi, "time": _cluster_time(rng, jets, own, d_eta, energy, tune)}
    out |= _layers(rng, jets, own, energy, tune)
    return out


def _cluster_time(rng, jets: Jets, own, d_eta, energy, tune: Tune) -> np.ndarray:
    m, kk = len(own), jets.kind[own]
    # Soft clusters time badly (noise term ~ 1/E), up to the few-ns spread of the softest ones.
    sigma = np.minimum(tune.time_sigma * np.sqrt(1.0 + (1000.0 / np.maximum(energy, 1.0)) ** 2), 4.0)
    base = jets.delay[own] + np.where(kk == Kind.CALRATIO, 0.3 * jets.depth[own], 0.0)
    # BIB: early (it runs ahead of the bunch) and later/earlier along η depending on its direction.
    t_bib = rng.uniform(-5.0, -2.0, len(jets))[own] - jets.side[own] * BIB_TIME_SLOPE * d_eta
    t = np.where(kk == Kind.BIB, t_bib, base) + tune.time_shift + rng.normal(0.0, 1.0, m) * sigma
    # Below the cell timing threshold DiVertAnalysis stores exactly 0 (a third of the clusters, mostly soft).
    t[rng.random(m) < np.exp(-energy / 500.0)] = 0.0
    return t


def _layers(rng, jets: Jets, own, energy, tune: Tune) -> dict[str, np.ndarray]:
    """Energy (MeV) per calorimeter layer: an EM fraction by jet kind, then a random split around
    each layer's mean share (a uniform ±70% spread: cheap, and close enough to a Dirichlet here)."""
    m, kk = len(own), jets.kind[own]
    prompt = kk == Kind.PROMPT
    u = rng.random(m)
    p_em = P_PURE_EM[kk] + np.where(prompt, tune.em_shift, 0.0)
    mixed = 1.0 / (1.0 + np.exp(-(EM_LOGIT[kk] + rng.normal(0.0, 1.0, m))))
    mixed = mixed + np.where(prompt, tune.em_shift, 0.0)
    f_em = np.clip(np.where(u < p_em, 1.0, np.where(u < p_em + P_PURE_HAD[kk], 0.0, mixed)), 0.0, 1.0)
    depth = np.where(kk == Kind.CALRATIO, jets.depth[own], np.where(kk == Kind.BIB, 0.3, 0.0))
    # Layer-major (8, m): every per-layer row is contiguous, and is the branch buffer as it is.
    e = 0.3 + 1.4 * rng.random((8, m))
    e[:4] *= ECAL_SHARE[:, None]
    e[4:] *= HCAL_SHALLOW[:, None] + depth[None, :] * (HCAL_DEEP - HCAL_SHALLOW)[:, None]
    e[:4] *= energy * f_em / e[:4].sum(0)
    e[4:] *= energy * (1.0 - f_em) / e[4:].sum(0)
    # Electronic noise where the EM energy is small (presampler, back), so negative energies occur as in the ntuples.
    has_em = f_em > 0
    e[0] += np.where(has_em, 8.0 * rng.standard_normal(m), 0.0)
    e[3] += np.where(has_em, 8.0 * rng.standard_normal(m), 0.0)
    return dict(zip(LAYERS, e, strict=True))


def tracks(rng: np.random.Generator, jets: Jets, n_events: int, tune: Tune) -> dict[str, np.ndarray]:
    """Tracks of the jets (``jet`` = owner row) plus pile-up tracks not in any jet (``jet`` = -1)."""
    k = jets.kind
    prompt_mean = np.select([k == Kind.PROMPT, k == Kind.DISPLACED, k == Kind.CALRATIO],
                            [tune.track_scale * (1.5 + 0.08 * jets.pt), 0.5 + 0.0 * jets.pt, 0.4 + 0.0 * jets.pt],
                            0.3)  # fmt: skip
    # Displaced decay products leave tracks only if the LLP decayed inside the silicon (< ~300 mm).
    disp_mean = np.where((k == Kind.DISPLACED) & (jets.lxy < 300.0), 0.06 * jets.pt, 0.0)
    in_id = np.abs(jets.eta) < MAX_ETA_ID + 0.1
    hi = np.where(k == Kind.PROMPT, 60, 3)
    n_prompt = np.where(in_id, np.minimum(rng.poisson(prompt_mean), hi), 0)
    n_disp = np.where(in_id, rng.poisson(disp_mean), 0)
    own = np.concatenate([np.repeat(np.arange(len(jets)), n_prompt), np.repeat(np.arange(len(jets)), n_disp)])
    displaced = np.concatenate([np.zeros(n_prompt.sum(), bool), np.ones(n_disp.sum(), bool)])
    order = np.argsort(own, kind="stable")  # a jet's tracks together
    own, displaced = own[order], displaced[order]
    m = len(own)
    pt = 0.5 + shares(rng, own, len(jets), 1.4) * 0.6 * jets.pt[own]
    eta = np.clip(jets.eta[own] + rng.normal(0.0, 0.08, m), -MAX_ETA_ID, MAX_ETA_ID)
    phi = wrap_phi(jets.phi[own] + rng.normal(0.0, 0.08, m))
    evt = jets.evt[own]
    # Pile-up tracks: soft, anywhere, from other vertices.
    n_pu = rng.poisson(30.0, n_events)
    pu_evt = np.repeat(np.arange(n_events), n_pu)
    q = len(pu_evt)
    jet = np.concatenate([own, np.full(q, -1)])
    out = {
        "evt": np.concatenate([evt, pu_evt]),
        "jet": jet,
        "pt": np.concatenate([pt, 0.5 + rng.exponential(0.5, q)]),
        "eta": np.concatenate([eta, rng.uniform(-MAX_ETA_ID, MAX_ETA_ID, q)]),
        "phi": np.concatenate([phi, rng.uniform(-np.pi, np.pi, q)]),
    }
    lxy = np.concatenate([np.where(displaced, jets.lxy[own], 0.0), np.zeros(q)])
    disp = np.concatenate([displaced, np.zeros(q, bool)])
    pileup = jet < 0
    out |= _track_quality(rng, out["evt"], n_events, lxy, disp, pileup)
    return out


def _track_quality(rng, evt, n_events, lxy, disp, pileup) -> dict[str, np.ndarray]:
    m = len(evt)
    pv_z = rng.normal(0.0, 45.0, n_events)
    pv_n = np.maximum(rng.normal(55.0, 15.0, n_events).round(), 5.0)
    # Prompt tracks: narrow core with a 3% tail; displaced ones: |d0| grows with the decay radius.
    d0 = rng.standard_normal(m) * np.where(rng.random(m) < 0.03, 0.5, 0.015)
    idx = np.flatnonzero(disp)
    sign = np.where(rng.random(len(idx)) < 0.5, -1.0, 1.0)
    d0[idx] = sign * rng.standard_exponential(len(idx)) * np.minimum(0.05 * lxy[idx] + 0.1, 40.0)
    z_sigma = np.where(pileup, 45.0, np.where(disp, 3.0, 0.08))
    z0 = np.where(pileup, 0.0, pv_z[evt]) + rng.standard_normal(m) * z_sigma
    u = rng.random((4, m))
    n_part = np.where(disp | (pileup & (u[0] < 0.5)), -1.0, pv_n[evt])
    # Silicon hits: a decay beyond a layer cannot leave hits in it.
    pix = 3.0 + bernoulli_sum(rng, 3, 0.35, m)
    pix = np.where(disp & (lxy > 122.0), 0.0, np.where(disp & (lxy > 50.0), np.minimum(pix, 2.0), pix))
    return {
        "chiSquared": 5.0 * rng.standard_gamma(8.0, m, dtype=np.float32),
        "d0": d0,
        "z0": z0,
        "vertex_nParticles": n_part,
        "PixelShared": (u[1] < 0.01).astype(float),
        "PixelHoles": ((pix > 0) & (u[2] < 0.04)).astype(float),
        "PixelHits": pix,
        "SCTHits": 6.0 + bernoulli_sum(rng, 5, 0.38, m),
        "SCTHoles": bernoulli_sum(rng, 2, 0.07, m),
        "SCTShared": (u[3] < 0.09).astype(float),
    }


def msegs(rng: np.random.Generator, jets: Jets, n_events: int) -> dict[str, np.ndarray]:
    """Muon segments behind jets (punch-through, late LLP decays, BIB muons) plus a few unassociated ones.

    ``links`` is the number of jets a segment is associated with (1–3; DiVertAnalysis matches by
    ΔR, so a segment between jets can belong to several).
    """
    k = jets.kind
    punch = rng.random(len(jets)) < np.minimum(0.25, jets.pt / 1500.0)
    mean = np.select([k == Kind.CALRATIO, k == Kind.BIB], [0.5 + 20.0 * jets.depth**2, 6.0 + 0.0 * jets.pt],
                     np.where(punch, 8.0 + 0.1 * jets.pt, 0.01 * jets.pt))  # fmt: skip
    own = _owner(rng, mean, 0, 80)
    m, kk = len(own), k[own]
    bib = kk == Kind.BIB
    eta_pos = jets.eta[own] + rng.normal(0.0, 1.0, m) * np.where(bib, 0.6, 0.12)
    phi_pos = jets.phi[own] + rng.normal(0.0, 1.0, m) * np.where(bib, 0.04, 0.12)
    # Collision segments point back to the IP; BIB segments run parallel to the beam (|η| large).
    eta_dir = np.where(bib, -jets.side[own] * rng.uniform(2.0, 4.0, m), eta_pos + rng.normal(0.0, 0.08, m))
    phi_dir = phi_pos + rng.normal(0.0, 1.0, m) * np.where(bib, 0.1, 0.03)
    t0 = np.where(bib, rng.normal(-30.0, 8.0, m), rng.normal(0.0, 3.0, m))
    t0[rng.random(m) < np.where(bib, 0.1, 0.5)] = 0.0  # no timing measurement
    n_free = rng.poisson(5.0, n_events)
    f_evt = np.repeat(np.arange(n_events), n_free)
    q = len(f_evt)
    u = rng.random(m)
    return {
        "evt": np.concatenate([jets.evt[own], f_evt]),
        "jet": np.concatenate([own, np.full(q, -1)]),
        "links": np.concatenate([1 + (u < 0.12) + (u < 0.03), np.ones(q, np.int64)]),
        "etaPos": np.clip(np.concatenate([eta_pos, rng.uniform(-MAX_ETA_MS, MAX_ETA_MS, q)]), -MAX_ETA_MS, MAX_ETA_MS),
        "phiPos": wrap_phi(np.concatenate([phi_pos, rng.uniform(-np.pi, np.pi, q)])),
        "etaDir": np.concatenate([eta_dir, rng.normal(0.0, 1.5, q)]),
        "phiDir": wrap_phi(np.concatenate([phi_dir, rng.uniform(-np.pi, np.pi, q)])),
        "t0": np.concatenate([t0, rng.normal(0.0, 10.0, q)]).astype(np.float32),
        "chiSquared": rng.lognormal(1.6, 1.1, m + q).astype(np.float32),
    }


def hlt_jets(rng: np.random.Generator, jets: Jets) -> dict[str, np.ndarray]:
    """Trigger jets on top of offline jets; the BIB-tagging trigger flags those on BIB deposits."""
    bib = jets.kind == Kind.BIB
    seen = np.where(bib, rng.random(len(jets)) < 0.95,
                    (jets.pt > 25.0) & (np.abs(jets.eta) < MAX_ETA_ID) & (rng.random(len(jets)) < 0.6))  # fmt: skip
    idx = np.flatnonzero(seen)
    m = len(idx)
    return {
        "evt": jets.evt[idx],
        "pt": jets.pt[idx] * rng.normal(0.95, 0.08, m),
        "eta": jets.eta[idx] + rng.normal(0.0, 0.03, m),
        "phi": wrap_phi(jets.phi[idx] + rng.normal(0.0, 0.03, m)),
        "isBIB": (bib[idx] & (rng.random(m) < 0.92)).astype(np.int32),
    }
