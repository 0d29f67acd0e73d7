"""Random schema-valid shards with class-dependent content, for tests and benchmarks.

Not physics: just enough structure that the classes differ (signal: few tracks, hadronic energy,
displaced; BIB: early cluster times, many muon segments; QCD: many prompt tracks, EM energy) and
that every code path sees realistic padding (most slots empty). Fully vectorised: a million jets
take a few seconds. The attributes are those ``crbatch convert divert`` writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, schema

RUN_MC = 284500  # mc16a


def _events(n: int, rng: np.random.Generator, event_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """eventNumber and jet_index for ``n`` jets spread over events with 1–3 jets each."""
    per_event = rng.integers(1, 4, size=n)
    ev = np.repeat(np.arange(n), per_event)[:n]
    start = np.r_[0, np.flatnonzero(np.diff(ev)) + 1]
    jet_index = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    # Spread event numbers so that neighbouring shards do not interleave.
    return (event_offset + ev).astype(np.uint64), jet_index.astype(np.int16)


def _valid(n: int, slots: int, counts: np.ndarray) -> np.ndarray:
    return np.arange(slots)[None, :] < np.minimum(counts, slots)[:, None]


def random_tables(
    data_type: str,
    n: int,
    rng: np.random.Generator,
    *,
    dsid: int = 0,
    mH: float = 0.0,
    mS: float = 0.0,
    event_offset: int = 0,
    run_number: int | None = None,
) -> dict[str, np.ndarray]:
    """Tables for ``n`` jets of ``data_type`` (sig, qcd, bib, data), raw units as in shards."""
    label = schema.DATA_TYPES[data_type]
    mc = data_type in schema.MC_TYPES
    t = schema.empty_tables(n)
    j = t["jets"]
    j["label"] = int(label)
    j["eventNumber"], j["jet_index"] = _events(n, rng, event_offset)
    j["runNumber"] = run_number if run_number is not None else (RUN_MC if mc else 309390)
    j["mcChannelNumber"] = dsid if mc else 0
    j["mcEventWeight"] = rng.lognormal(0.0, 0.5, n).astype(np.float32) if data_type == "qcd" else 1.0
    j["pt"] = 40.0 + rng.exponential(60.0 if data_type != "bib" else 30.0, n).clip(0, 459)
    j["eta"] = rng.uniform(-2.5, 2.5, n)
    j["phi"] = rng.uniform(-np.pi, np.pi, n)
    j["isClean_LooseBadLLP"] = 1
    f32 = np.float32

    # Object counts per class: (clusters, tracks, msegs) Poisson means.
    means = {"qcd": (14, 8, 1), "data": (15, 8, 1), "sig": (9, 2, 4), "bib": (6, 1, 12)}[data_type]
    counts = [rng.poisson(m, n) for m in means]
    j["n_clusters"], j["n_tracks"], j["n_msegs"] = counts
    if data_type == "sig":
        j["llp_mH"], j["llp_mS"] = mH, mS
        j["llp_pt"] = j["pt"] * rng.uniform(0.8, 1.5, n)
        j["llp_eta"] = j["eta"] + rng.normal(0, 0.05, n)
        j["llp_phi"] = j["phi"] + rng.normal(0, 0.05, n)
        j["llp_Lxy"] = rng.uniform(1200, 4000, n)
        j["llp_Lz"] = rng.uniform(-6000, 6000, n)
        j["match_dR"] = rng.uniform(0, 0.4, n)
    elif data_type == "bib":
        j["match_dR"] = rng.uniform(0, 0.4, n)
    else:
        j["match_dR"] = -1.0

    # Clusters: pT in MeV, descending; η/φ relative to the leading cluster.
    c = t["clusters"]
    v = _valid(n, schema.N_CLUSTERS, counts[0])
    c["valid"] = v
    pt = np.sort(rng.exponential(8000.0, (n, schema.N_CLUSTERS)).astype(f32) + 500.0, axis=1)[:, ::-1]
    c["pt"] = pt * v
    eta = rng.normal(0, 0.1, (n, schema.N_CLUSTERS)).astype(f32)
    phi = rng.normal(0, 0.1, (n, schema.N_CLUSTERS)).astype(f32)
    eta[:, 0] = phi[:, 0] = 0
    c["eta"], c["phi"] = eta * v, phi * v
    tmean = {"bib": -5.0, "sig": 2.0}.get(data_type, 0.0)
    c["time"] = (rng.normal(tmean, 1.5, (n, schema.N_CLUSTERS)).astype(f32)) * v
    had = {"sig": 0.8, "bib": 0.4}.get(data_type, 0.25)
    share = rng.dirichlet(np.ones(8), size=(n, schema.N_CLUSTERS)).astype(f32)
    share[..., 1::2] *= had / (1 - had)  # hcal layers (odd positions in LAYERS order)
    for i, name in enumerate(("l1ecal", "l1hcal", "l2ecal", "l2hcal", "l3ecal", "l3hcal", "l4ecal", "l4hcal")):
        c[name] = share[..., i] * pt * v

    # Tracks: pT in GeV, descending; η/φ relative to the jet.
    tr = t["tracks"]
    v = _valid(n, schema.N_TRACKS, counts[1])
    tr["valid"] = v
    tpt = np.sort(rng.exponential(5.0, (n, schema.N_TRACKS)).astype(f32) + 1.0, axis=1)[:, ::-1]
    tr["pt"] = tpt * v
    tr["eta"] = rng.normal(0, 0.15, (n, schema.N_TRACKS)).astype(f32) * v
    tr["phi"] = rng.normal(0, 0.15, (n, schema.N_TRACKS)).astype(f32) * v
    tr["chiSquared"] = rng.exponential(10.0, (n, schema.N_TRACKS)).astype(f32) * v
    d0w = 5.0 if data_type == "sig" else 0.05
    tr["d0"] = rng.normal(0, d0w, (n, schema.N_TRACKS)).astype(f32) * v
    tr["z0"] = rng.normal(0, 50.0, (n, schema.N_TRACKS)).astype(f32) * v
    hits = rng.integers(0, 12, (n, schema.N_TRACKS, 4)).astype(f32)
    tr["vertex_nParticles"] = hits[..., 0] * 3 * v
    tr["PixelHits"], tr["SCTHits"] = hits[..., 1] * v, (hits[..., 2] + 4) * v
    tr["SCTHoles"] = (hits[..., 3] > 10) * v
    # PixelShared/PixelHoles/SCTShared stay mostly zero, as in real tracks.

    # Muon segments (file order, not sorted).
    m = t["msegs"]
    v = _valid(n, schema.N_MSEGS, counts[2])
    m["valid"] = v
    for name, scale in (("etaPos", 0.5), ("phiPos", 0.5), ("etaDir", 1.5), ("phiDir", 0.5)):
        m[name] = rng.normal(0, scale, (n, schema.N_MSEGS)).astype(f32) * v
    m["t0"] = rng.normal(0 if data_type != "bib" else -10, 5, (n, schema.N_MSEGS)).astype(f32) * v
    m["chiSquared"] = rng.exponential(5.0, (n, schema.N_MSEGS)).astype(f32) * v
    return t


def shard_attrs(
    data_type: str,
    n_jets: int,
    *,
    dsid: int = -1,
    mH: float = 0.0,
    mS: float = 0.0,
    source: str = "synthetic",
    sum_of_weights_initial: float | None = None,
    n_events_initial: float | None = None,
) -> dict[str, Any]:
    """The attributes ``crbatch convert divert`` writes (MC shards carry the event-count metadata)."""
    attrs: dict[str, Any] = {
        schema.A_PRODUCER: "crbatch",
        schema.A_VERSION: __version__,
        schema.A_SCHEMA: schema.SCHEMA_VERSION,
        schema.A_KIND: "shard",
        schema.A_DATA_TYPE: data_type,
        schema.A_STATUS: "ok" if n_jets else "empty",
        schema.A_N_JETS: n_jets,
        schema.A_SCALED: False,
        "source_path": source,
        "source_size": -1,
        "source_entries": n_jets,
        "tree": "trees_DV_",
        "llp_mH": mH,
        "llp_mS": mS,
        "dsid": dsid,
        "cutflow": {"jets_written": n_jets},
        "metadata_histograms": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        schema.A_CONFIG: {"model": "synthetic", "values": {}},
    }
    if data_type in schema.MC_TYPES:
        n0 = float(n_events_initial if n_events_initial is not None else 10 * max(n_jets, 1))
        sw = float(sum_of_weights_initial if sum_of_weights_initial is not None else n0)
        labels = ["nEvents initial", "nEvents selected", "sumOfWeights initial", "sumOfWeights selected",
                  "sumOfWeightsSquared initial", "sumOfWeightsSquared selected"]  # fmt: skip
        attrs["metadata_histograms"] = {"MetaData_EventCount": {"values": [n0, n0, sw, sw, sw, sw], "labels": labels}}
        attrs.update(n_events_initial=n0, sum_of_weights_initial=sw, sum_of_weights_squared_initial=sw)
    return attrs


def write_shard(
    path: Path,
    tables: dict[str, np.ndarray],
    attrs: dict[str, Any],
    *,
    compress: bool = True,
    complete: bool = True,
) -> Path:
    """Write ``tables`` as a shard at ``path`` (not atomically: test and benchmark inputs only)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        w = schema.TableWriter(f, compress=compress)
        w.append(tables)
        for k, v in attrs.items():
            f.attrs[k] = schema.to_attr(v)
        if complete:
            schema.mark_complete(f)
    return path


def write_random_shard(
    path: Path,
    data_type: str,
    n_jets: int,
    seed: int,
    *,
    dsid: int | None = None,
    mH: float | None = None,
    mS: float | None = None,
    event_offset: int | None = None,
    sum_of_weights_initial: float | None = None,
    compress: bool = True,
) -> Path:
    """One random shard; defaults: DSID 361022 (QCD) / 311314 (signal), mH/mS 125/55 for signal."""
    mc = data_type in schema.MC_TYPES
    if dsid is None:
        dsid = {"qcd": 361022, "sig": 311314}.get(data_type, -1)
    if data_type == "sig":
        mH = 125.0 if mH is None else mH
        mS = 55.0 if mS is None else mS
    mH, mS = mH or 0.0, mS or 0.0
    if event_offset is None:
        event_offset = seed * 10_000_000
    rng = np.random.default_rng(seed)
    tables = random_tables(data_type, n_jets, rng, dsid=dsid if mc else 0, mH=mH, mS=mS, event_offset=event_offset)
    attrs = shard_attrs(
        data_type, n_jets, dsid=dsid if mc else -1, mH=mH, mS=mS, source=f"synthetic:{Path(path).name}",
        sum_of_weights_initial=sum_of_weights_initial,
    )  # fmt: skip
    return write_shard(Path(path), tables, attrs, compress=compress)
