"""The streaming reader: exactly-once epochs, seeded order, exact resume, CR batches, raw and legacy
shards, bounded memory."""

from __future__ import annotations

import tracemalloc
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from shards import SHARED, random_tables, read, write_set, write_shard

from crbatch import schema
from crbatch.build import reader as reader_mod
from crbatch.build.reader import DatasetReader
from crbatch.build.synthetic import shard_attrs
from crbatch.cli import main
from crbatch.scaling import LEGACY_NAME, ScalingConfig, scale_tables

ID_FIELDS = ("runNumber", "eventNumber", "jet_index")


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    shards = write_set(tmp_path_factory.mktemp("shards"), n=1500)
    out = tmp_path_factory.mktemp("ds")
    assert main(["-q", "build", str(shards), "--output-dir", str(out)]) == 0
    out.joinpath("shards").symlink_to(shards)
    return out


def ids_of(batch: dict) -> list[tuple]:
    return list(zip(*(batch[f].tolist() for f in ID_FIELDS), batch["label"].tolist(), strict=True))


def file_ids(path: Path) -> Counter:
    j = read(path)["jets"]
    return Counter(zip(*(j[f].tolist() for f in ID_FIELDS), j["label"].tolist(), strict=True))


def epoch(r: DatasetReader) -> list[dict]:
    return list(r)


def test_every_jet_once_per_epoch(ds):
    with DatasetReader(ds / "main_train.h5", batch_size=256, jet_fields=ID_FIELDS, seed=3) as r:
        n = r.n_jets
        assert len(r) == -(-n // 256)
        for _ in range(2):  # two epochs
            batches = epoch(r)
            assert len(batches) == len(r)
            sizes = sorted(len(b["label"]) for b in batches)
            assert sizes[1:] == [256] * (len(r) - 1) and sum(sizes) == n
            assert Counter(i for b in batches for i in ids_of(b)) == file_ids(ds / "main_train.h5")
        assert r.state()["epoch"] == 2


def test_drop_last(ds):
    with DatasetReader(ds / "main_train.h5", batch_size=300, drop_last=True, jet_fields=ID_FIELDS) as r:
        batches = epoch(r)
        assert len(batches) == r.n_jets // 300 and all(len(b["label"]) == 300 for b in batches)
        seen = [i for b in batches for i in ids_of(b)]
        assert len(seen) == len(set(seen)) and Counter(seen) <= file_ids(ds / "main_train.h5")


def test_shapes_dtypes_and_model_order(ds):
    with DatasetReader(ds / "main_train.h5", batch_size=64, shuffle=False) as r:
        b = next(iter(r))
    raw = read(ds / "main_train.h5")
    for m in schema.MODEL_INPUTS:
        assert b[m.name].shape == (64, *m.shape) and b[m.name].dtype == np.float32
        for i, feat in enumerate(m.features):
            src = raw["jets"]["pt_scaled" if (m.table, feat) == ("jets", "pt") else feat] if m.table == "jets" \
                else raw[m.table][feat]  # fmt: skip
            assert np.array_equal(b[m.name][..., i], src[:64]), (m.name, feat)
    assert b["label"].dtype == np.int64 and np.array_equal(b["label"], raw["jets"]["label"][:64])
    assert np.array_equal(b["weight"], raw["jets"]["mcEventWeight"][:64])


def test_order_seeded_and_changes_per_epoch(ds):
    def first_ids(seed, epochs=2):
        with DatasetReader(ds / "main_train.h5", batch_size=128, seed=seed, jet_fields=ID_FIELDS) as r:
            return [[ids_of(b) for b in epoch(r)] for _ in range(epochs)]

    a, b, c = first_ids(1), first_ids(1), first_ids(2)
    assert a == b
    assert a[0] != a[1]  # a new order each epoch (batch order and grid offset)
    assert a[0] != c[0]
    # Batches are not the same groups of jets every epoch (the grid is rotated).
    assert {tuple(x) for x in a[0]} != {tuple(x) for x in a[1]}


def test_resume_mid_epoch_is_exact(ds):
    kw = dict(batch_size=200, seed=5, jet_fields=ID_FIELDS, prefetch=2)
    with DatasetReader(ds / "main_train.h5", ds / "cr_train.h5", **kw) as r:
        epoch(r)  # epoch 0
        it = iter(r)
        for _ in range(7):
            next(it)
        state = r.state()
        rest = list(it)
    assert state["epoch"] == 1 and state["position"] == 7
    with DatasetReader(ds / "main_train.h5", ds / "cr_train.h5", **kw) as r2:
        r2.restore(state)
        again = list(r2)
    assert len(again) == len(rest)
    for x, y in zip(rest, again, strict=True):
        for k in x:
            if k == "cr":
                for kk in x["cr"]:
                    assert np.array_equal(x["cr"][kk], y["cr"][kk])
            else:
                assert np.array_equal(x[k], y[k]), k
    with DatasetReader(ds / "main_train.h5", **kw) as r3, pytest.raises(ValueError, match="batch_size"):
        r3.restore({**state, "batch_size": 100})


def test_prefetch_gives_identical_batches(ds):
    def run(prefetch):
        with DatasetReader(ds / "main_train.h5", ds / "cr_train.h5", batch_size=256, prefetch=prefetch) as r:
            return epoch(r)

    a, b = run(0), run(2)
    assert all(np.array_equal(x["clusters"], y["clusters"]) and np.array_equal(x["cr"]["tracks"], y["cr"]["tracks"])
               for x, y in zip(a, b, strict=True))  # fmt: skip


def test_prefetch_error_reaches_consumer(ds, monkeypatch):
    r = DatasetReader(ds / "main_train.h5", batch_size=128, prefetch=2, shuffle_window=256)  # many windows
    calls = {"n": 0}
    orig = r._prepare

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        return orig(*a, **k)

    monkeypatch.setattr(r, "_prepare", flaky)
    with pytest.raises(OSError, match="disk went away"):
        epoch(r)
    r.close()


def test_control_region_batches(ds):
    cr_ids = file_ids(ds / "cr_train.h5")
    with DatasetReader(ds / "main_train.h5", ds / "cr_train.h5", batch_size=128, jet_fields=ID_FIELDS) as r:
        batches = epoch(r) + epoch(r)
        per_cycle = r.cr.n // 128
    cr_raw = read(ds / "cr_train.h5")["jets"]
    for b in batches:
        c = b["cr"]
        assert len(c["target"]) == len(b["label"]) and c["clusters"].shape == b["clusters"].shape
        assert set(np.unique(c["target"])) <= {0.0, 1.0}
    # One pass of the CR sampler: no CR jet twice, targets match labels (1 = data).
    cycle = [i for b in batches[:per_cycle] for i in ids_of({**b["cr"], "label": b["cr"]["target"].astype(int) * 3})]
    assert len(cycle) == len(set(cycle)) and Counter(cycle) <= cr_ids
    wb = cr_raw["weight_balanced"]
    assert set(np.round(batches[0]["cr"]["weight"], 6)) <= set(np.round(wb, 6))


def _ds_by_id(path: Path) -> tuple[dict, dict]:
    t = read(path)
    key = {tuple(row): i for i, row in enumerate(zip(*(t["jets"][f].tolist() for f in ID_FIELDS),
                                                     t["jets"]["label"].tolist(), strict=True))}  # fmt: skip
    return t, key


def test_raw_shards_scaled_on_the_fly_like_the_build(ds):
    t, key = _ds_by_id(ds / "main_train.h5")
    with DatasetReader(ds / "shards" / "sig_125_55.h5", ds / "main_val.h5", batch_size=500, shuffle=False,
                       jet_fields=ID_FIELDS, weight="weight_balanced") as r:  # fmt: skip
        assert r.scaling_constants == ScalingConfig().constants()
        n = 0
        for b in r:
            for j, i in enumerate(ids_of(b)):
                if i not in key:
                    continue
                row = key[i]
                n += 1
                assert np.allclose(b["clusters"][j, :, 0], t["clusters"]["pt"][row])
                assert np.allclose(b["tracks"][j, :, 0], t["tracks"]["pt"][row])
                assert np.allclose(
                    b["jet"][j], [t["jets"]["pt_scaled"][row], t["jets"]["eta"][row], t["jets"]["phi"][row]]
                )
    assert n > 1000


def test_shard_weights_computed_when_missing(tmp_path):
    d = tmp_path / "s"
    write_shard(d / "q.h5", random_tables("qcd", 500, np.random.default_rng(1), dsid=361022),
                shard_attrs("qcd", 500, dsid=361022))  # fmt: skip
    write_shard(d / "s.h5", random_tables("sig", 300, np.random.default_rng(2), mH=125, mS=55),
                shard_attrs("sig", 300, mH=125, mS=55))  # fmt: skip
    with DatasetReader(d, batch_size=100, weight="weight_balanced") as r:
        w, lab = zip(*((b["weight"], b["label"]) for b in r), strict=True)
    w, lab = np.concatenate(w).astype(np.float64), np.concatenate(lab)
    assert w[lab == 0].sum() == pytest.approx(w[lab == 1].sum(), rel=1e-5)


def test_legacy_reference_scaled_shard_read_as_is(tmp_path):
    t = random_tables("bib", 200, np.random.default_rng(3))
    t["clusters"]["l1ecal"][~t["clusters"]["valid"]] = np.nan  # the reference's NaN layer fractions
    attrs = shard_attrs("bib", 200) | {schema.A_SCALED: LEGACY_NAME}
    write_shard(tmp_path / "legacy.h5", t, attrs)
    with DatasetReader(tmp_path / "legacy.h5", batch_size=200, shuffle=False) as r:
        b = next(iter(r))
        assert r.scaling_constants is None
    assert np.array_equal(b["jet"][:, 0], t["jets"]["pt"])  # not rescaled
    assert np.array_equal(b["tracks"][..., 0], t["tracks"]["pt"])
    assert np.isfinite(b["clusters"]).all()  # NaN → 0 as the reference's loader did


def test_raw_shard_scaling_matches_scale_tables(tmp_path):
    t = random_tables("qcd", 300, np.random.default_rng(4), dsid=361022)
    write_shard(tmp_path / "raw.h5", t, shard_attrs("qcd", 300, dsid=361022))
    cfg = ScalingConfig(track_pt=(0.0, 50.0))
    with DatasetReader(tmp_path / "raw.h5", batch_size=300, shuffle=False, scaling=cfg) as r:
        b = next(iter(r))
        assert r.scaling_constants["track_pt"] == [0.0, 50.0]
    s, jet_pt = scale_tables(t, cfg)
    assert np.array_equal(b["tracks"][..., 0], s["tracks"]["pt"])
    assert np.array_equal(b["jet"][:, 0], jet_pt)


def test_bad_inputs(tmp_path, ds):
    with pytest.raises(FileNotFoundError):
        DatasetReader(tmp_path / "missing.h5")
    p = tmp_path / "inc.h5"
    write_shard(p, random_tables("qcd", 10, np.random.default_rng(0)), shard_attrs("qcd", 10), complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        DatasetReader(p)
    with pytest.raises(ValueError, match="jet_fields"):
        DatasetReader(ds / "main_val.h5", jet_fields=["nope"])
    with pytest.raises(KeyError):
        next(iter(DatasetReader(ds / "main_val.h5", weight="nope", prefetch=0)))


def test_memory_bounded(tmp_path):
    """An epoch over a dataset ~60× the batch allocates a few batches at most, not the dataset."""
    d = tmp_path / "s"
    rng = np.random.default_rng(0)
    for i, dt in enumerate(("qcd", "sig", "bib")):
        write_shard(d / f"{dt}.h5", random_tables(dt, 8000, rng, dsid=361022 if dt == "qcd" else 0,
                                                  event_offset=i * 10**6), shard_attrs(dt, 8000))  # fmt: skip
    out = tmp_path / "ds"
    assert main(["-q", "build", str(d), "--output-dir", str(out), "--no-compress"]) == 0
    path = out / "main_train.h5"
    with h5py.File(path) as f:
        n = f["jets"].shape[0]
    padded = sum(t.dtype.itemsize * t.slots for t in schema.OBJECT_TABLES) + schema.DATASET_JET_DTYPE.itemsize
    batch = 256
    batch_bytes = batch * padded
    with DatasetReader(path, out / "cr_train.h5" if (out / "cr_train.h5").exists() else None,
                       batch_size=batch, prefetch=2) as r:  # fmt: skip
        epoch(r)  # warm up (buffers, caches)
        tracemalloc.start()
        jets = sum(len(b["label"]) for b in r)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # What the reader keeps between batches: the shuffle windows (main and CR), fixed in size.
        held = sum(v.nbytes for mix in (r._mix, r._cr_mix) if mix is not None for v in (mix._tables or {}).values())
    assert jets == n and n * padded > 60 * batch_bytes
    print(f"peak {peak / 2**20:.1f} MB, windows {held / 2**20:.1f} MB, batch {batch_bytes / 2**20:.2f} MB, "
          f"dataset {n * padded / 2**20:.0f} MB")  # fmt: skip
    assert peak < 8 * batch_bytes, (peak, batch_bytes)  # per epoch, after the first: no new window memory
    assert 0 < held <= 2 * reader_mod.DEFAULT_WINDOW * padded, held


def test_reader_module_input_order_matches_schema():
    # The dense view relies on the schema's packed float32 layout; the index maps follow MODEL_INPUTS.
    for m in schema.MODEL_INPUTS:
        if m.slots:
            idx = reader_mod._INPUT_INDEX[m.name]
            assert [schema.TABLES[m.table].features[i] for i in idx] == list(m.features)


LEGACY = SHARED / "data" / "reference" / "pretraining"


@pytest.mark.skipif(not LEGACY.exists(), reason="../shared reference files absent")
def test_reads_converted_legacy_pickles(tmp_path):
    pytest.importorskip("pandas")
    out = tmp_path / "legacy"
    files = [LEGACY / n for n in ("felix_control_region.pkl", "bib.pkl", "sig_311424_600_275.pkl")]
    masses = ["--mH", "125", "--mS", "5"]  # the signal pickle's columns (its file name says otherwise)
    assert main(["-q", "convert", "legacy-pkl", *map(str, files), *masses, "--output-dir", str(out)]) == 0
    # The reference-scaled CR file as a control region, next to the (reference-scaled) BIB file.
    with DatasetReader(out / "bib.h5", out / "felix_control_region.h5", batch_size=64, seed=1) as r:
        assert r.scaling_constants is None
        batches = epoch(r)
    assert sum(len(b["label"]) for b in batches) == 558
    targets = np.concatenate([b["cr"]["target"] for b in batches])
    assert set(np.unique(targets)) == {0.0, 1.0}  # label 2 (data) in the pickle → target 1
    assert all(np.isfinite(b[k]).all() for b in batches for k in schema.INPUT_NAMES)
    # The raw signal pickle is scaled on the fly, like a converted ntuple.
    with DatasetReader(out / "sig_311424_600_275.h5", batch_size=76, shuffle=False) as r:
        b = next(iter(r))
        assert r.scaling_constants["name"] == "crbatch-v1"
    assert len(b["label"]) == 76 and (b["label"] == 1).all() and (b["jet"][:, 0] < 1).all()


def test_control_region_smaller_than_a_batch(ds):
    with DatasetReader(ds / "main_train.h5", ds / "cr_val.h5", batch_size=1000) as r:
        n_cr = r.cr.n
        b = next(iter(r))
    assert n_cr < 1000 and len(b["cr"]["target"]) == len(b["label"]) == 1000


def test_abandoned_iteration_does_not_disturb_the_next(ds):
    with DatasetReader(ds / "main_train.h5", batch_size=128, prefetch=2, jet_fields=ID_FIELDS) as r:
        it = iter(r)
        next(it)
        next(it)  # abandoned without closing: its producer thread is stopped by the next iter()
        rest = [i for b in r for i in ids_of(b)]
        assert len(rest) == r.n_jets - 2 * 128


# --- mixing: the file's order must not leak into the batches; the fixed subset (frac_list) ----------


def _grouped_copy(src: Path, dst: Path) -> Path:
    """The same jets and attributes as ``src``, rows sorted by label (a reference built file's order)."""
    with h5py.File(src) as f, h5py.File(dst, "w") as o:
        order = np.argsort(f["jets"]["label"], kind="stable")
        for name in ("jets", *schema.TABLES):
            o.create_dataset(name, data=f[name][:][order], chunks=f[name].chunks, **schema.compression())
        for k, v in f.attrs.items():
            if k not in (schema.A_CHECKSUM, schema.A_COMPLETE):
                o.attrs[k] = v
        schema.mark_complete(o)  # a new file: its own checksums
    return dst


def _class_fractions(path: Path, **kw) -> np.ndarray:
    with DatasetReader(path, batch_size=256, drop_last=True, seed=4, **kw) as r:
        return np.array([np.bincount(b["label"], minlength=3)[:3] / 256 for b in r])


def test_class_grouped_file_gives_mixed_batches(ds, tmp_path):
    shuffled = ds / "main_train.h5"
    grouped = _grouped_copy(shuffled, tmp_path / "grouped.h5")
    with h5py.File(grouped) as f:
        assert np.all(np.diff(f["jets"]["label"]) >= 0)  # really grouped
    fs, fg = _class_fractions(shuffled), _class_fractions(grouped)
    share = np.bincount(read(shuffled)["jets"]["label"], minlength=3)[:3] / len(read(shuffled)["jets"])
    # Same class mix per batch on average, and every batch close to it (the old contiguous slices of the
    # grouped file gave single-class batches: spread ≈ 0.5).
    assert np.allclose(fg.mean(0), share, atol=0.02) and np.allclose(fs.mean(0), share, atol=0.02)
    assert fg.std(0).max() < 0.12, fg.std(0)
    assert (fg.min(0) > 0).all()  # no batch without a class
    old = _class_fractions(grouped, shuffle_window=0)
    assert old.std(0).max() > 0.35  # the bug this fixes: contiguous slices of a grouped file


def test_mixing_is_exact_once_per_epoch_and_resumable_on_grouped_file(ds, tmp_path):
    grouped = _grouped_copy(ds / "main_train.h5", tmp_path / "grouped.h5")
    kw = dict(batch_size=100, seed=2, jet_fields=ID_FIELDS, shuffle_window=512)
    with DatasetReader(grouped, **kw) as r:
        batches = epoch(r)
        assert Counter(i for b in batches for i in ids_of(b)) == file_ids(grouped)
        it = iter(r)
        first = [next(it) for _ in range(5)]
        state = r.state()
        rest = list(it)
    with DatasetReader(grouped, **kw) as r2:
        r2.restore(state)
        again = list(r2)
        r2.set_epoch(1)
        assert all(np.array_equal(a["clusters"], b["clusters"]) for a, b in zip(first, list(r2)[:5], strict=True))
    assert all(np.array_equal(a["clusters"], b["clusters"]) and np.array_equal(a["label"], b["label"])
               for a, b in zip(rest, again, strict=True))  # fmt: skip


def test_fixed_subset_same_jets_every_epoch(ds):
    path = ds / "main_train.h5"
    with DatasetReader(path, batch_size=64, seed=3, subset=1000, jet_fields=ID_FIELDS, drop_last=True) as r:
        assert r.jets_per_epoch == 1000 and len(r) == 1000 // 64
        epochs = [[i for b in epoch(r) for i in ids_of(b)] for _ in range(5)]
        state = r.state()
    seen = [set(e) for e in epochs]
    union = set().union(*seen)
    # Each epoch draws its batches from the same 1000 jets (drop_last leaves out 40 of them, not the same each
    # time); 5 epochs of the old per-epoch reshuffle at this fraction saw most of the file.
    assert all(len(e) == len(set(e)) == 15 * 64 for e in epochs)
    assert len(union) <= 1000 < r.n_jets and epochs[0] != epochs[1]
    assert state["subset"] == 1000 and state["subset_digest"]
    with DatasetReader(path, batch_size=64, seed=3, subset=1000, drop_last=True) as same:
        same.restore(state)
    with DatasetReader(path, batch_size=64, seed=4, subset=1000, drop_last=True) as other:
        assert other.state()["subset_digest"] != state["subset_digest"]
    with DatasetReader(path, batch_size=64, seed=3, subset=999, drop_last=True) as other, \
            pytest.raises(ValueError, match="subset"):  # fmt: skip
        other.restore(state)
    with pytest.raises(ValueError, match="subset needs shuffle"):
        DatasetReader(path, subset=10, shuffle=False)
