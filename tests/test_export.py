"""``crbatch export``: frugally-deep JSON and ONNX of the classifier, checked against Keras.

The fdeep JSON is checked by an independent pure-NumPy evaluator (tests/fdeep_numpy.py) on
synthetic and real jets; ONNX by onnxruntime. Exports take ~5-10 s each on 2 CPU cores (TensorFlow
import, tf2onnx), so the exported files are module fixtures shared by the tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import keras  # noqa: E402
from fdeep_numpy import FdeepModel, decode  # noqa: E402

from crbatch import cli, schema  # noqa: E402
from crbatch.errors import ExitCode  # noqa: E402
from crbatch.export import SUFFIX, data_inputs, fdeep, synthetic_inputs  # noqa: E402
from crbatch.export import cli as export_cli  # noqa: E402
from crbatch.scaling import ScalingConfig  # noqa: E402
from crbatch.train.config import TrainConfig  # noqa: E402
from crbatch.train.model import build_classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared" / "data" / "reference").resolve()
REF_WEIGHTS = SHARED / "models" / "final_model_weights_1.keras"
REAL_ROOT = SHARED / "divert" / "sig_311314_bad_object_small.root"
TOL = 1e-5
SHAPES = [[30, 12], [20, 10], [30, 6], [3]]

# The documented mapping (docs/export.md, crbatch/export/reference.py) for the reference defaults.
REFERENCE_MAPPING = {
    "constit_conv1d_0": "conv1d", "constit_conv1d_1": "conv1d_1", "constit_conv1d_2": "conv1d_2",
    "constit_final_conv1d": "constit_final_conv1d",
    "track_conv1d_0": "conv1d_3", "track_conv1d_1": "conv1d_4", "track_conv1d_2": "conv1d_5",
    "track_final_conv1d": "track_final_conv1d",
    "MSeg_conv1d_0": "conv1d_6", "MSeg_conv1d_1": "conv1d_7", "MSeg_final_conv1d": "MSeg_final_conv1d",
    "constit_lstm_0": "lstm", "track_lstm_0": "lstm_1", "MSeg_lstm_0": "lstm_2",
    "main_dense_1": "dense_1", "main_dense_2": "dense_2", "main_output": "main_output",
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _export_registered():
    """Run ``crbatch export`` through ``crbatch.cli.main`` whether or not cli.py registers it yet."""
    orig = cli.build_parser

    def build_parser():
        p = orig()
        sub = p._subparsers._group_actions[0]
        if "export" not in sub.choices:
            export_cli.register(sub)
        return p

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "build_parser", build_parser)
        yield


def export(*args) -> int:
    return cli.main(["-q", "export", *map(str, args)])


def randomized(cfg: TrainConfig, seed: int) -> keras.Model:
    """A classifier with non-trivial weights everywhere (biases included, so their layout is tested)."""
    model = build_classifier(cfg)
    rng = np.random.default_rng(seed)
    model.set_weights([
        (rng.normal(size=w.shape) / np.sqrt(w.shape[-2] if w.ndim > 1 else 4.0)).astype(np.float32)
        for w in model.get_weights()
    ])  # fmt: skip
    return model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "clf.keras"
    randomized(TrainConfig(), seed=1).save(path)
    return path


@pytest.fixture(scope="module")
def model(model_file) -> keras.Model:
    return keras.saving.load_model(model_file, compile=False)


@pytest.fixture(scope="module")
def exported(model_file, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    assert export("--model", model_file, "--output-dir", out, "--check-jets", 64) == 0
    return {k: out / f"clf{s}" for k, s in SUFFIX.items()}


@pytest.fixture(scope="module")
def doc(exported) -> dict:
    return json.loads(exported["fdeep"].read_text())


@pytest.fixture(scope="module")
def sidecar(exported) -> dict:
    return json.loads(exported["sidecar"].read_text())


@pytest.fixture(scope="module")
def real_shard(tmp_path_factory) -> Path:
    """The reference's small signal ntuple converted as QCD (109 jets); skipped without ../shared."""
    if not REAL_ROOT.exists():
        pytest.skip("../shared reference data absent")
    out = tmp_path_factory.mktemp("real")
    assert cli.main(["-q", "convert", "divert", str(REAL_ROOT), "--type", "qcd", "--output-dir", str(out)]) == 0
    (shard,) = sorted(out.rglob("*.h5"))
    return shard


def ort_predict(path: Path, xs: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs, strict=True)})[0]


# --- frugally-deep JSON ---------------------------------------------------------------------------


def test_fdeep_json_format(doc, model, sidecar):
    assert set(doc) == {"architecture", "image_data_format", "input_shapes", "output_shapes", "tests",
                        "trainable_params", "hash", "crbatch"}  # fmt: skip
    # frugally-deep reads its keys by name; "crbatch" carries the provenance and preprocessing of the sidecar
    for k in ("crbatch_version", "model_hash", "preprocessing", "training_config", "dataset", "choice"):
        assert doc["crbatch"][k] == sidecar[k], k
    assert doc["image_data_format"] == "channels_last"
    assert doc["input_shapes"] == SHAPES and doc["output_shapes"] == [[3]]
    assert doc["architecture"] == json.loads(model.to_json())
    (test,) = doc["tests"]
    assert [t["shape"] for t in test["inputs"]] == SHAPES and [t["shape"] for t in test["outputs"]] == [[3]]
    weighted = {ly.name for ly in model.layers if ly.get_weights()}
    assert set(doc["trainable_params"]) == weighted
    for arrays in doc["trainable_params"].values():
        for chunks in arrays.values():
            assert all(len(c) == 1024 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 1024
    p = doc["trainable_params"]
    # Layouts, against Keras' own arrays.
    k = model.get_layer("track_conv1d_0").get_weights()[0]  # (1, 10, 64)
    assert np.array_equal(decode(p["track_conv1d_0"]["weights"]), np.moveaxis(k, [0, 1, 2], [1, 2, 0]).ravel())
    kern, rec, bias = model.get_layer("MSeg_lstm_0").get_weights()
    assert np.array_equal(decode(p["MSeg_lstm_0"]["weights"]), kern.ravel())
    assert np.array_equal(decode(p["MSeg_lstm_0"]["recurrent_weights"]), rec.ravel())
    assert np.array_equal(decode(p["MSeg_lstm_0"]["bias"]), bias)
    w, b = model.get_layer("main_dense_1").get_weights()
    assert np.array_equal(decode(p["main_dense_1"]["weights"]), w.ravel()) and np.array_equal(
        decode(p["main_dense_1"]["bias"]), b
    )


def test_numpy_evaluator_synthetic_jets(doc, model):
    fm = FdeepModel(doc)
    xs = synthetic_inputs(model, 200, seed=7)
    filled = (xs[0] != 0).any(axis=-1)  # zero padding after the filled slots, like real jets
    assert (np.diff(filled.astype(int), axis=1) <= 0).all() and (~filled).any() and filled.any()
    got = fm.predict(xs)[0]
    want = model.predict(xs, verbose=0)
    assert np.max(np.abs(got - want)) <= TOL
    assert fm.hash() == doc["hash"] == fdeep.model_hash(model)
    assert fm.run_tests() <= TOL  # frugally-deep's load-time self test, replayed


def test_numpy_evaluator_and_onnx_on_real_jets(doc, model, exported, real_shard):
    xs = data_inputs(model, real_shard, 256)
    assert len(xs[0]) == 109
    assert [list(x.shape[1:]) for x in xs] == SHAPES
    want = model.predict(xs, verbose=0)
    assert np.max(np.abs(FdeepModel(doc).predict(xs)[0] - want)) <= TOL
    assert np.max(np.abs(ort_predict(exported["onnx"], xs) - want)) <= TOL


def test_hash_detects_a_changed_weight(doc):
    changed = json.loads(json.dumps(doc))
    arr = decode(changed["trainable_params"]["main_output"]["bias"])
    arr[0] += 1.0
    changed["trainable_params"]["main_output"]["bias"] = fdeep.encode_floats(arr)
    assert FdeepModel(changed).hash() != doc["hash"]


# --- ONNX -----------------------------------------------------------------------------------------


def test_onnx_parity_and_interface(exported, model, sidecar):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(schema.INPUT_NAMES)
    assert [i.shape for i in sess.get_inputs()] == [["N", *s] for s in SHAPES]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("main_output", ["N", 3])]
    xs = synthetic_inputs(model, 300, seed=11)
    assert np.max(np.abs(ort_predict(exported["onnx"], xs) - model.predict(xs, verbose=0))) <= TOL
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["crbatch.preprocessing"]) == sidecar
    assert meta["crbatch.inputs"] == "clusters,tracks,msegs,jet" and meta["crbatch.outputs"] == "QCD,signal,BIB"
    assert json.loads(meta["crbatch.feature_ops"]) == sidecar["preprocessing"]
    for k in ("crbatch.version", "crbatch.epoch", "crbatch.epoch_why", "crbatch.dataset_build_id",
              "crbatch.training_config"):  # fmt: skip
        assert k in meta, k


# --- sidecar ----------------------------------------------------------------------------------------


def test_sidecar_content(sidecar, doc, exported):
    assert [i["name"] for i in sidecar["inputs"]] == ["clusters", "tracks", "msegs", "jet"]
    assert [i["shape"] for i in sidecar["inputs"]] == SHAPES
    for entry, mi in zip(sidecar["inputs"], schema.MODEL_INPUTS, strict=True):
        assert entry["features"] == list(mi.features)
        if mi.slots:
            assert entry["slots"] == mi.slots and entry["padding"]["values"] == [0.0] * len(mi.features)
    assert sidecar["outputs"][0]["classes"] == ["QCD", "signal", "BIB"]
    assert sidecar["outputs"][0]["name"] == "main_output"
    assert sidecar["parametrization"] is None
    # --model without a config: crbatch's default scaling, recorded as an assumption
    assert sidecar["scaling"]["constants"] == ScalingConfig().constants()
    assert sidecar["scaling"]["origin"].startswith("crbatch.scaling defaults")
    assert sidecar["model_hash"] == doc["hash"]
    assert sidecar["files"] == {"fdeep": exported["fdeep"].name, "onnx": exported["onnx"].name}
    par = sidecar["parity"]
    assert par["onnx_max_abs_diff"] <= TOL and par["fdeep_test_vector_max_abs_diff"] <= TOL
    assert par["synthetic_jets"] == 64 and par["real_jets"] == 0
    assert sidecar["crbatch_version"] and sidecar["keras_version"] == keras.__version__
    # per-variable constants a C++ program applies (no formula string): the jet pT window as numbers
    ops = {i["name"]: i for i in sidecar["preprocessing"]["inputs"]}
    assert ops["jet"]["features"][0] == {"feature": "pt", "op": "affine", "unit": "GeV", "subtract": 0.0,
                                         "divide": 500.0}  # fmt: skip
    assert ops["clusters"]["features"][3]["op"] == "fraction" and ops["tracks"]["flip"]["weight"] == "pt"
    # --model without --config: nothing known about the training or the choice (and said so by nulls)
    assert (sidecar["training_config"], sidecar["dataset"], sidecar["choice"]) == (None, None, None)


# --- training-run input, real-jet check, scaling from the dataset ---------------------------------------


def _fake_run(base: Path, model_file: Path, data_dir: Path, scaling: ScalingConfig) -> Path:
    run_dir = base / "demo" / "00003"
    (run_dir / "epochs").mkdir(parents=True)
    for e in (0, 1):
        shutil.copy(model_file, run_dir / "epochs" / f"{e:03d}.keras")
    (run_dir / "config.yaml").write_text(TrainConfig(model_name="demo", data=data_dir).to_yaml())
    data_dir.mkdir(parents=True)
    with h5py.File(data_dir / "main_train.h5", "w") as f:  # only the attribute the export reads
        f.attrs[schema.A_SCALING] = schema.to_attr(scaling.constants())
    return run_dir


def test_run_spec_scaling_and_real_jet_check(model_file, tmp_path, real_shard):
    scaling = ScalingConfig(track_pt=(0.0, 50.0))
    _fake_run(tmp_path / "tr", model_file, tmp_path / "data", scaling)
    out = tmp_path / "out"
    assert export("demo/-1/-1", "--base", tmp_path / "tr", "--format", "onnx", "--output-dir", out,
                  "--check-data", real_shard, "--check-jets", 16) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["demo_00003_e001.onnx", "demo_00003_e001.preprocessing.json"]
    side = json.loads((out / "demo_00003_e001.preprocessing.json").read_text())
    assert side["source"]["kind"] == "run" and (side["source"]["run"], side["source"]["epoch"]) == (3, 1)
    assert side["scaling"]["constants"] == scaling.constants()
    assert side["scaling"]["origin"] == f"attributes of {tmp_path / 'data' / 'main_train.h5'}"
    assert side["parity"]["real_jets"] == 109 and side["parity"]["onnx_max_abs_diff"] <= TOL


def test_run_spec_errors(model_file, tmp_path):
    _fake_run(tmp_path / "tr", model_file, tmp_path / "data", ScalingConfig())
    base = ("--base", tmp_path / "tr", "--output-dir", tmp_path / "out")
    assert export("demo/3/7", *base) == 10  # epoch not saved
    assert export("demo/4/0", *base) == 10  # no such run
    assert export("other/-1/0", *base) == 10  # no runs at all
    assert export("demo/3", *base) == 3  # not NAME/RUN/EPOCH
    assert export("demo/3/0", "--config", tmp_path / "x.yaml", *base) == 3  # a run has its own config
    with pytest.raises(SystemExit) as e:
        export("--output-dir", tmp_path / "out")  # no source
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        export("demo/3/0", "--format", "tflite", *base)
    assert e.value.code == 2
    assert not (tmp_path / "out").exists()


def test_model_errors(model_file, tmp_path, monkeypatch):
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert export("--model", bad, "--output-dir", tmp_path / "out") == 11
    assert export("--model", tmp_path / "absent.keras", "--output-dir", tmp_path / "out") == 10
    assert export("--model", model_file, "--scaling-from", tmp_path / "no.h5", "--output-dir", tmp_path / "out") == 10
    # A readable model that breaks the downstream contract (3 inputs) is refused before writing.
    ins = [keras.Input(s, name=n) for n, s in (("clusters", (30, 12)), ("tracks", (20, 10)), ("jet", (3,)))]
    x = keras.layers.Concatenate()([keras.layers.Flatten()(ins[0]), keras.layers.Flatten()(ins[1]), ins[2]])
    three = keras.Model(ins, keras.layers.Dense(3, activation="softmax")(x))
    three.save(tmp_path / "three.keras")
    assert export("--model", tmp_path / "three.keras", "--output-dir", tmp_path / "out") == 12
    # No ONNX route on the active backend: said so (exit 3) before anything, fdeep included, is written.
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    assert export("--model", model_file, "--output-dir", tmp_path / "out") == 3
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "layer, message",
    [
        (keras.layers.LSTM(4, go_backwards=True, name="rev"), "go backwards"),
        (keras.layers.LSTM(4, unroll=True, name="unrolled"), "unroll"),
        (keras.layers.GRU(4, name="gru"), "not a layer type"),
        (keras.layers.LSTM(4, name="lstm_é"), "not ASCII"),
    ],
)
def test_fdeep_refuses_unsupported(layer, message):
    from crbatch.errors import InputSchema

    inp = keras.Input((5, 3), name="x")
    m = keras.Model(inp, keras.layers.Dense(2)(layer(inp)))
    with pytest.raises(InputSchema, match=message):
        fdeep.check_exportable(m)


def test_fdeep_refuses_training_true():
    from crbatch.errors import InputSchema

    inp = keras.Input((3,), name="x")
    m = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dropout(0.5)(inp, training=True)))
    with pytest.raises(InputSchema, match="training=True"):
        fdeep.check_exportable(m)


# --- parametrised models -----------------------------------------------------------------------------


@pytest.mark.slow
def test_parametrised_model_exports(tmp_path):
    cfg = TrainConfig(mH_parametrization=True, mS_parametrization=True)
    path = tmp_path / "param.keras"
    model = randomized(cfg, seed=5)
    model.save(path)
    (tmp_path / "cfg.yaml").write_text(cfg.to_yaml())
    out = tmp_path / "out"
    assert export("--model", path, "--config", tmp_path / "cfg.yaml", "--output-dir", out, "--check-jets", 32) == 0
    doc = json.loads((out / "param.fdeep.json").read_text())
    assert doc["input_shapes"] == [[30, 14], [20, 12], [30, 8], [5]]
    xs = synthetic_inputs(model, 100, seed=3)
    want = model.predict(xs, verbose=0)
    assert np.max(np.abs(FdeepModel(doc).predict(xs)[0] - want)) <= TOL
    assert np.max(np.abs(ort_predict(out / "param.onnx", xs) - want)) <= TOL
    side = json.loads((out / "param.preprocessing.json").read_text())
    assert [i["features"][-2:] for i in side["inputs"]] == [["mH", "mS"]] * 4
    assert [i["shape"] for i in side["inputs"]] == doc["input_shapes"]
    assert side["parametrization"]["features"] == ["mH", "mS"] and "TeV" in side["parametrization"]["scale"]
    # The mH-only model: one extra feature, shapes follow (fdeep only: the ONNX path is the same code).
    cfg1 = TrainConfig(mH_parametrization=True)
    randomized(cfg1, seed=6).save(tmp_path / "mh.keras")
    (tmp_path / "cfg1.yaml").write_text(cfg1.to_yaml())
    ds = tmp_path / "main_train.h5"  # the constants may also come from any dataset (--scaling-from)
    with h5py.File(ds, "w") as f:
        f.attrs[schema.A_SCALING] = schema.to_attr(ScalingConfig(jet_pt=(20.0, 400.0)).constants())
    assert export("--model", tmp_path / "mh.keras", "--config", tmp_path / "cfg1.yaml", "--format", "fdeep",
                  "--output-dir", out, "--check-jets", 8, "--scaling-from", ds) == 0  # fmt: skip
    assert json.loads((out / "mh.fdeep.json").read_text())["input_shapes"] == [[30, 13], [20, 11], [30, 7], [4]]
    side1 = json.loads((out / "mh.preprocessing.json").read_text())
    assert side1["inputs"][3]["features"] == ["pt", "eta", "phi", "mH"]
    assert side1["scaling"]["constants"]["jet_pt"] == [20.0, 400.0] and side1["files"] == {"fdeep": "mh.fdeep.json"}


# --- models trained by the reference ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_export(tmp_path_factory) -> Path:
    if not REF_WEIGHTS.exists():
        pytest.skip("../shared reference model absent")
    out = tmp_path_factory.mktemp("ref")
    assert export("--from-reference", REF_WEIGHTS, "--output-dir", out, "--check-jets", 64) == 0
    return out


def test_from_reference_loads_every_weight(reference_export):
    from crbatch.export.reference import load_reference, read_groups

    model, mapping = load_reference(REF_WEIGHTS, TrainConfig())
    assert mapping == REFERENCE_MAPPING
    groups = read_groups(REF_WEIGHTS)
    n_file = sum(a.size for g in groups.values() for a in g.values())
    assert n_file == model.count_params() == 60067  # every array used, nothing left at its initial value
    with h5py.File(REF_WEIGHTS, "r") as f:  # a few arrays straight from the file
        assert np.array_equal(model.get_layer("track_conv1d_0").get_weights()[0], f["conv1d_3/conv1d_3/kernel:0"][()])
        assert np.array_equal(model.get_layer("track_lstm_0").get_weights()[1],
                              f["lstm_1/lstm_1/lstm_cell/recurrent_kernel:0"][()])  # fmt: skip
        assert np.array_equal(model.get_layer("main_dense_2").get_weights()[1], f["dense_2/dense_2/bias:0"][()])
        assert np.array_equal(
            model.get_layer("main_output").get_weights()[0], f["main_output/main_output/kernel:0"][()]
        )
    doc = json.loads((reference_export / "reference_final_model_weights_1.fdeep.json").read_text())
    xs = synthetic_inputs(model, 128, seed=2)
    want = model.predict(xs, verbose=0)
    fm = FdeepModel(doc)
    assert np.max(np.abs(fm.predict(xs)[0] - want)) <= TOL and fm.hash() == doc["hash"]
    assert np.max(np.abs(ort_predict(reference_export / "reference_final_model_weights_1.onnx", xs) - want)) <= TOL
    side = json.loads((reference_export / "reference_final_model_weights_1.preprocessing.json").read_text())
    assert side["source"]["layer_mapping"] == REFERENCE_MAPPING
    assert side["scaling"]["name"] == "reference-exact"


def test_lstm_layout_keras2_equals_keras3():
    """Gate order i, f, c, o in both: the forget-gate quarter of the bias is where unit_forget_bias puts
    its ones in Keras 3, and where the reference's trained biases sit near 1."""
    if not REF_WEIGHTS.exists():
        pytest.skip("../shared reference model absent")
    lstm = keras.layers.LSTM(5)
    lstm.build((None, 7, 3))
    bias = lstm.get_weights()[2].reshape(4, 5)
    assert (bias[1] == 1).all() and (bias[[0, 2, 3]] == 0).all()
    assert [w.shape for w in lstm.get_weights()] == [(3, 20), (5, 20), (20,)]
    with h5py.File(REF_WEIGHTS, "r") as f:
        for name, units in (("lstm", 10), ("lstm_1", 10), ("lstm_2", 5)):
            quarters = np.abs(f[f"{name}/{name}/lstm_cell/bias:0"][()].reshape(4, units).mean(axis=1))
            assert 0.8 < quarters[1] < 1.2 and (quarters[[0, 2, 3]] < 0.2).all()


def _copy_without(src: Path, dst: Path, group: str, unlist: bool) -> None:
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        del f[group]
        if unlist:
            f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != group], dtype=object)


@pytest.mark.parametrize("unlist", [True, False])
def test_from_reference_missing_group(tmp_path, unlist):
    if not REF_WEIGHTS.exists():
        pytest.skip("../shared reference model absent")
    bad = tmp_path / "w.keras"
    _copy_without(REF_WEIGHTS, bad, "lstm_1", unlist)
    assert export("--from-reference", bad, "--output-dir", tmp_path / "out") == 12
    assert not (tmp_path / "out").exists()


def test_from_reference_errors(tmp_path):
    if not REF_WEIGHTS.exists():
        pytest.skip("../shared reference model absent")
    out = ("--output-dir", tmp_path / "out")
    assert export("--from-reference", tmp_path / "absent.keras", *out) == 10
    (tmp_path / "junk.keras").write_bytes(b"not hdf5 at all")
    assert export("--from-reference", tmp_path / "junk.keras", *out) == 11
    (tmp_path / "wide.yaml").write_text("nodes_track_lstm: 12\n")  # another architecture: shapes differ
    assert export("--from-reference", REF_WEIGHTS, "--config", tmp_path / "wide.yaml", *out) == 12
    assert not (tmp_path / "out").exists()


# --- per-variable preprocessing, raw-input ONNX, provenance, the analysis' choice -------------------------


@pytest.mark.parametrize(
    "scaling",
    [ScalingConfig(), ScalingConfig(jet_pt=(20.0, 600.0), track_pt=(1.0, 80.0), cluster_pt=(0.5, 400.0)),
     ScalingConfig(reference_exact=True), ScalingConfig(reference_exact=True, jet_pt=(10.0, 500.0))],
)  # fmt: skip
def test_feature_ops_reproduce_the_training_scaling(scaling, real_shard):
    """The sidecar's per-variable operations, applied to raw jets, give the inputs crbatch.scaling gives."""
    from crbatch.export import preprocess, rawjets

    pre = preprocess.preprocessing_of(scaling)
    for jets in (rawjets.from_file(real_shard, 256), rawjets.synthetic_tables(300, seed=4)):
        raw, valid = jets.raw_inputs()
        got = pre.apply(raw, valid)
        want = jets.scaled_inputs(scaling)
        for name, w in zip(schema.INPUT_NAMES, want, strict=True):
            np.testing.assert_allclose(got[name], w, atol=2e-7, rtol=1e-6, err_msg=f"{name} {scaling.name}")
    # the description is plain numbers: JSON round trip, no formula strings in the operations
    doc = json.loads(json.dumps(pre.as_dict()))
    for entry in doc["inputs"]:
        for f in entry["features"]:
            assert set(f) <= {"feature", "op", "unit", "subtract", "divide", "denominator"}


def test_raw_input_onnx(model_file, model, tmp_path, real_shard):
    """--format onnx-raw: raw quantities and validity masks in, one probability per class out; it matches
    Keras on the crbatch-scaled inputs of real raw jets and carries the per-variable preprocessing."""
    import onnxruntime as ort

    from crbatch.export import onnx_raw, rawjets

    out = tmp_path / "raw"
    assert export("--model", model_file, "--format", "onnx-raw", "--output-dir", out, "--check-data", real_shard,
                  "--check-jets", 16, "--onnx-prefix", "crnn") == 0  # fmt: skip
    path = out / "clf.raw.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["clf.preprocessing.json", "clf.raw.onnx"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["clusters", "clusters_valid", "tracks", "tracks_valid", "msegs",
                                                   "msegs_valid", "jet"]  # fmt: skip
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("crnn_pqcd", ["N"]), ("crnn_psig", ["N"]),
                                                               ("crnn_pbib", ["N"])]  # fmt: skip
    jets = rawjets.from_file(real_shard, 256)
    raw, valid = jets.raw_inputs()
    got = onnx_raw.run(sess, raw, valid)
    want = model.predict(jets.scaled_inputs(ScalingConfig()), verbose=0)
    assert np.max(np.abs(got - want)) <= TOL and np.allclose(got.sum(axis=1), 1, atol=1e-5)
    side = json.loads((out / "clf.preprocessing.json").read_text())
    par = side["parity"]
    assert par["onnx_raw_real_jets"] == 109 and par["onnx_raw_max_abs_diff_real"] <= TOL
    assert par["onnx_raw_outputs"] == ["crnn_pqcd", "crnn_psig", "crnn_pbib"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["crbatch.feature_ops"]) == side["preprocessing"] and "raw inputs" in meta["crbatch.graph"]


def test_raw_input_onnx_needs_real_jets(model_file, tmp_path):
    out = tmp_path / "o"
    assert export("--model", model_file, "--format", "onnx-raw", "--output-dir", out) == 3  # nothing to check it on
    assert not out.exists()
    assert export("--model", model_file, "--output-dir", out, "--check-jets", 8) == 0  # "all": the raw one left out
    assert sorted(p.name for p in out.iterdir()) == ["clf.fdeep.json", "clf.onnx", "clf.preprocessing.json"]


def _history(run_dir: Path, n: int) -> None:
    (run_dir / "history.json").write_text(json.dumps({"val_original_lossf": [1.0 - 0.1 * i for i in range(n)]}))


def test_export_best_is_the_analysis_choice_and_refuses_a_stale_one(model_file, tmp_path, real_shard):
    from crbatch.evaluate.analyze_choice import make_choice, write_choice

    run_dir = _fake_run(tmp_path / "tr", model_file, tmp_path / "data", ScalingConfig())
    with h5py.File(tmp_path / "data" / "main_train.h5", "a") as f:
        f.attrs[schema.A_BUILD_ID] = "b1d-1234"
    base = ("--base", tmp_path / "tr", "--format", "fdeep", "--check-data", real_shard, "--check-jets", 8)
    assert export("demo/3/best", *base, "--output-dir", tmp_path / "x") == 10  # no analysis yet
    _history(run_dir, 2)
    write_choice(run_dir, make_choice("demo/3", run_dir, 0, "best combined (0.1)", "combined", 2, [0, 1]))
    out = tmp_path / "out"
    assert export("demo/3/best", *base, "--output-dir", out) == 0
    side = json.loads((out / "demo_00003_e000.preprocessing.json").read_text())  # epoch 0: the choice, not -1
    assert side["choice"]["epoch"] == 0 and side["choice"]["why"] == "best combined (0.1)"
    assert side["choice"]["stale"] == []
    assert side["dataset"]["build_id"] == "b1d-1234" and side["dataset"]["identity"] == "b1d-1234"
    assert side["training_config"]["model_name"] == "demo" and side["source"]["epoch"] == 0
    fd = json.loads((out / "demo_00003_e000.fdeep.json").read_text())
    assert fd["crbatch"]["choice"]["epoch"] == 0
    # the run trained on after the analysis: the choice is stale
    _history(run_dir, 3)
    assert export("demo/3/best", *base, "--output-dir", tmp_path / "stale") == ExitCode.INPUT_SCHEMA
    assert not (tmp_path / "stale").exists()
    assert export("demo/3/best", *base, "--output-dir", tmp_path / "stale", "--allow-stale") == 0
    side = json.loads((tmp_path / "stale" / "demo_00003_e000.preprocessing.json").read_text())
    assert side["choice"]["stale"] == ["the analysis saw 2 epochs, the run has 3 now"]
    # the chosen epoch file replaced after the analysis: stale too
    _history(run_dir, 2)
    shutil.copy(model_file, run_dir / "epochs" / "000.keras")
    (run_dir / "epochs" / "000.keras").write_bytes((run_dir / "epochs" / "000.keras").read_bytes() + b"\0")
    assert export("demo/3/best", *base, "--output-dir", tmp_path / "s2") == ExitCode.INPUT_SCHEMA


def test_dataset_record_without_a_build_id(tmp_path):
    """Datasets written before build ids: an identity hashed from the provenance they carry."""
    from crbatch.export.sidecar import dataset_record

    p = tmp_path / "d.h5"
    with h5py.File(p, "w") as f:
        f.attrs[schema.A_CONFIG] = '{"a": 1}'
        f.attrs[schema.A_SHARDS] = '["s1.h5"]'
    rec = dataset_record(p)
    assert rec["build_id"] is None and rec["identity"].startswith("sha256:") and rec["shards"] == 1
    with h5py.File(p, "a") as f:
        f.attrs[schema.A_SHARDS] = '["s2.h5"]'
    assert dataset_record(p)["identity"] != rec["identity"]


def test_raw_input_onnx_of_a_parametrised_model(tmp_path, real_shard):
    """mH and mS in GeV as one more input; the graph divides by 1000 and appends them to every slot."""
    import onnxruntime as ort

    from crbatch.export import onnx_raw, rawjets

    cfg = TrainConfig(mH_parametrization=True, mS_parametrization=True)
    model = randomized(cfg, seed=8)
    model.save(tmp_path / "p.keras")
    (tmp_path / "cfg.yaml").write_text(cfg.to_yaml())
    out = tmp_path / "out"
    assert export("--model", tmp_path / "p.keras", "--config", tmp_path / "cfg.yaml", "--format", "onnx-raw",
                  "--output-dir", out, "--check-data", real_shard, "--check-jets", 16) == 0  # fmt: skip
    sess = ort.InferenceSession(str(out / "p.raw.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in sess.get_inputs()][-1] == ("mass_hypothesis", ["N", 2])
    jets = rawjets.from_file(real_shard, 256)
    raw, valid = jets.raw_inputs()
    m = np.tile(np.array([[600.0, 275.0]], np.float32), (len(jets), 1))
    got = onnx_raw.run(sess, raw, valid, m)
    want = model.predict(rawjets.with_masses_tev(jets.scaled_inputs(ScalingConfig()), m), verbose=0)
    assert np.max(np.abs(got - want)) <= TOL
    side = json.loads((out / "p.preprocessing.json").read_text())
    assert side["preprocessing"]["mass_hypothesis"]["features"] == ["mH", "mS"]
