"""``--from-reference`` on both reference formats: the ``save_weights`` HDF5 file and the Keras-2
``model.save`` archive (``tests/data/reference_keras2``, made by ``tests/make_keras2_fixture.py`` with
TensorFlow 2.13 in a scratch environment; ``expected.npz`` holds Keras 2's own outputs)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from crbatch import cli  # noqa: E402
from crbatch.errors import InputSchema  # noqa: E402
from crbatch.export import cli as export_cli  # noqa: E402
from crbatch.export import reference  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "data" / "reference_keras2"
ARCHIVE = FIXTURE / "final_model.keras"
WEIGHTS = FIXTURE / "final_model_weights.keras"
TOL = 1e-5


def expected() -> tuple[list[np.ndarray], np.ndarray]:
    e = np.load(FIXTURE / "expected.npz")
    return [e["clusters"], e["tracks"], e["msegs"], e["jet"]], e["scores"]


def scores(model, xs) -> np.ndarray:
    return np.asarray(model(xs))


def export(*args) -> int:
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0]
    if "export" not in sub.choices:
        export_cli.register(sub)
    return cli.main(["export", *map(str, args)])


def test_archive_matches_keras2_outputs():
    model, mapping = reference.load_reference(ARCHIVE)
    xs, want = expected()
    assert np.max(np.abs(scores(model, xs) - want)) <= TOL
    # Every weighted layer of crbatch's network got exactly one config layer, by the graph.
    assert mapping["constit_final_conv1d"] == "constit_final_conv1d" and mapping["main_output"] == "main_output"
    assert mapping["track_conv1d_0"] == "conv1d_2" and mapping["MSeg_lstm_0"] == "lstm_2"
    assert len(set(mapping.values())) == len(mapping) == sum(1 for la in model.layers if la.get_weights())
    arch = json.loads((FIXTURE / "architecture.json").read_text())["config"]
    cfg = reference.reference_train_config(ARCHIVE)
    for k, v in arch.items():
        assert getattr(cfg, k) == pytest.approx(v), k


def test_weights_file_with_the_archives_architecture():
    cfg = reference.reference_train_config(ARCHIVE)
    model = reference.load_reference_model(WEIGHTS, cfg)
    xs, want = expected()
    assert np.max(np.abs(scores(model, xs) - want)) <= TOL


def test_a_swap_of_same_shaped_layers_is_refused(monkeypatch):
    # The three final convolutions have the same shape (8 → 4): a mapping by shape could swap them.
    orig = reference.archive_architecture

    def swapped(ar, given=None):
        cfg, mapping = orig(ar, given)
        mapping["constit_final_conv1d"], mapping["track_final_conv1d"] = (
            mapping["track_final_conv1d"], mapping["constit_final_conv1d"])  # fmt: skip
        return cfg, mapping

    monkeypatch.setattr(reference, "archive_architecture", swapped)
    with pytest.raises(InputSchema, match="differs from the archive's own graph"):
        reference.load_reference(ARCHIVE)


def _rewrite_weights(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        edit(f[reference.ARCHIVE_GROUP])
    members["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def test_swapped_groups_in_the_file_change_the_outputs(tmp_path):
    """The cluster and track LSTMs have the same shapes: swapping their groups in the file still
    loads (the file is self-consistent) but no longer gives Keras 2's outputs — the comparison with
    ``expected.npz`` is what catches a wrong group order."""

    def swap(root):
        root.move("lstm", "tmp")
        root.move("lstm_2", "lstm")
        root.move("tmp", "lstm_2")

    bad = _rewrite_weights(ARCHIVE, tmp_path / "swapped.keras", swap)
    model, _ = reference.load_reference(bad)
    xs, want = expected()
    assert np.max(np.abs(scores(model, xs) - want)) > 1e-3


def test_extra_or_missing_group_is_refused_in_one_line(tmp_path):
    def extra(root):
        g = root.create_group("dense_9/vars")
        g["0"] = np.zeros((2, 2), np.float32)

    bad = _rewrite_weights(ARCHIVE, tmp_path / "extra.keras", extra)
    with pytest.raises(InputSchema, match=r"3 Dense layers in config\.json, 4 dense weight groups"):
        reference.load_reference(bad)

    def drop(root):
        del root["lstm_4"]

    bad = _rewrite_weights(ARCHIVE, tmp_path / "missing.keras", drop)
    with pytest.raises(InputSchema) as e:
        reference.load_reference(bad)
    assert "\n" not in str(e.value) and len(str(e.value)) <= reference.MAX_MESSAGE


def test_cli_exports_the_archive(tmp_path):
    out = tmp_path / "out"
    assert export("--from-reference", ARCHIVE, "--format", "fdeep", "--output-dir", out, "--check-jets", 16) == 0
    doc = json.loads((out / "reference_final_model.fdeep.json").read_text())
    assert doc["architecture"]  # the frugally-deep JSON of the imported network


def test_cli_errors_are_one_short_line(tmp_path, capsys):
    out = ["--output-dir", tmp_path / "out"]
    # Keras 3 cannot read a Keras-2 archive: the message names the right option, not the whole config.
    assert export("--model", ARCHIVE, *out) == 11
    line = [x for x in capsys.readouterr().err.splitlines() if "ERROR" in x][-1]
    assert "--from-reference" in line and len(line) < reference.MAX_MESSAGE + 60
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(ARCHIVE.read_bytes()[:5000])
    assert export("--from-reference", truncated, *out) == 11
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(ARCHIVE) as z, zipfile.ZipFile(no_config, "w") as o:
        for n in z.namelist():
            if n != "config.json":
                o.writestr(n, z.read(n))
    assert export("--from-reference", no_config, *out) == 12
    err = capsys.readouterr().err
    assert "without config.json" in err
    wide = tmp_path / "wide.yaml"
    wide.write_text("nodes_constit_lstm: 10\n")
    assert export("--from-reference", ARCHIVE, "--config", wide, *out) == 12
    assert "filters_cnn_constit = [16, 8, 4], --config says [64, 32, 32, 16]" in capsys.readouterr().err
