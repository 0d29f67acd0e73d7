"""crbatch's faster uproot interpretations (crbatch.convert.fastread) decode exactly what uproot does.

Every branch the converter reads, in chunks much smaller than a basket (so baskets straddle chunk
boundaries and are handed out again from the reuse cache), on the real reference ntuples and on a
synthetic file written with zlib (the real files' compression) — and the shard written with them
equals the shard written with uproot's own decoding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from crbatch.cli import main
from crbatch.convert.fastread import FastJagged, FastObjects, use_fast_interpretations
from crbatch.convert.selection import branches_for

REF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference" / "divert"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="reference data (../shared/data/reference) absent")
needs_root = pytest.mark.skipif(importlib.util.find_spec("ROOT") is None, reason="PyROOT (synth extra) absent")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from crbatch.synth.divert import write_divert

    return write_divert(tmp_path_factory.mktemp("fastread") / "bib.root", "bib", 3000, seed=7, compression=101)


def _chunks(path: Path, typ: str, fast: bool, step) -> tuple[list, int]:
    tree = uproot.open(path, array_cache=None, object_cache=None)["trees_DV_"]
    names = [b for b in branches_for(typ) if b in tree]
    n = use_fast_interpretations(tree, names) if fast else 0
    return list(tree.iterate(names, step_size=step, library="ak")), n


def _assert_same(path: Path, typ: str, step) -> int:
    ref, _ = _chunks(path, typ, False, step)
    fast, n = _chunks(path, typ, True, step)
    assert len(ref) == len(fast)
    for a, b in zip(ref, fast, strict=True):
        for f in a.fields:
            assert str(ak.type(a[f])) == str(ak.type(b[f])), f
            assert ak.array_equal(a[f], b[f], equal_nan=True), f
    return n


@needs_ref
@pytest.mark.parametrize(("name", "typ"), [("sig_311314_bad_object_small.root", "sig"), ("bib.root", "bib"),
                                           ("short_divert_analysis_file.root", "qcd")])  # fmt: skip
def test_reference_files_decode_identically(name, typ):
    assert _assert_same(REF / name, typ, 3) > 30  # 3 events per chunk: every basket is reused


@needs_root
def test_synthetic_file_decodes_identically_across_chunk_boundaries(synthetic):
    tree = uproot.open(synthetic)["trees_DV_"]
    assert tree["clus_pt"].num_baskets > 1  # chunks below cross real basket boundaries
    n = _assert_same(synthetic, "bib", 257)
    assert n == len([b for b in branches_for("bib") if tree[b].typename.startswith("std::vector")])


@needs_root
def test_interpretations_chosen(synthetic):
    tree = uproot.open(synthetic)["trees_DV_"]
    use_fast_interpretations(tree, ["clus_pt", "track_jetIndex", "jet_isClean_LooseBadLLP", "eventNumber"])
    assert isinstance(tree["clus_pt"].interpretation, FastJagged)  # vector<double>: 2-byte words
    assert isinstance(tree["track_jetIndex"].interpretation, FastObjects)  # vector<vector<int>>: reuse only
    assert isinstance(tree["jet_isClean_LooseBadLLP"].interpretation, FastJagged)  # vector<int8>: uproot's strip
    assert not isinstance(tree["eventNumber"].interpretation, (FastJagged, FastObjects))


@needs_root
def test_shard_equals_the_one_decoded_by_uproot(synthetic, tmp_path):
    for flag, out in (("--fast-decoding", "fast"), ("--no-fast-decoding", "plain")):
        argv = ["-q", "convert", "divert", str(synthetic), "--type", "bib", "--output-dir", str(tmp_path / out)]
        assert main([*argv, flag, "--step-size", "500"]) == 0
    with h5py.File(tmp_path / "fast" / "bib.h5") as a, h5py.File(tmp_path / "plain" / "bib.h5") as b:
        for table in ("jets", "clusters", "tracks", "msegs"):
            np.testing.assert_array_equal(a[table][:], b[table][:])
        assert a.attrs["n_jets"] > 0


@needs_root
def test_uproot_with_renamed_decoding_internals_falls_back_when_installed(synthetic, tmp_path, monkeypatch, caplog):
    """The attributes FastJagged reads while decoding are checked when it is installed: an uproot that
    renamed one falls back before the first basket, and the shard equals --no-fast-decoding's."""
    from crbatch.convert.fastread import FastJagged

    argv = ["-q", "convert", "divert", str(synthetic), "--type", "bib", "--step-size", "500"]
    assert main([*argv, "--no-fast-decoding", "--output-dir", str(tmp_path / "plain")]) == 0
    monkeypatch.setattr(FastJagged, "_INTERNALS", ("_header_bytes", "_content", "_renamed_in_a_new_uproot"))
    assert main([*argv, "--fast-decoding", "--output-dir", str(tmp_path / "fallback")]) == 0
    assert "fast std::vector decoding unavailable with uproot" in caplog.text
    with h5py.File(tmp_path / "fallback" / "bib.h5") as a, h5py.File(tmp_path / "plain" / "bib.h5") as b:
        for table in ("jets", "clusters", "tracks", "msegs"):
            np.testing.assert_array_equal(a[table][:], b[table][:])


def test_uproot_without_the_internals_falls_back_to_its_own_decoding(synthetic, tmp_path, monkeypatch, caplog):
    """An uproot whose interpretation internals moved: the conversion warns, decodes with uproot's own
    code and writes the same shard as --no-fast-decoding."""

    def moved(cls, interp):
        raise AttributeError(f"{type(interp).__name__!r} object has no attribute '_typename'")

    argv = ["-q", "convert", "divert", str(synthetic), "--type", "bib", "--step-size", "500"]
    assert main([*argv, "--no-fast-decoding", "--output-dir", str(tmp_path / "plain")]) == 0
    monkeypatch.setattr(FastObjects, "of", classmethod(moved))  # after some branches got FastJagged
    assert main([*argv, "--fast-decoding", "--output-dir", str(tmp_path / "fallback")]) == 0
    assert "fast std::vector decoding unavailable with uproot" in caplog.text
    with h5py.File(tmp_path / "fallback" / "bib.h5") as a, h5py.File(tmp_path / "plain" / "bib.h5") as b:
        for table in ("jets", "clusters", "tracks", "msegs"):
            np.testing.assert_array_equal(a[table][:], b[table][:])
        assert a.attrs["n_jets"] > 0
