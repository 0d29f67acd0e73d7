"""The CalRatio networks (crbatch.train.model) and the training config (crbatch.train.config).

Sizes and structure of the reference network (reference-training.md §4), export constraints, the
mass parametrisation's input shapes, and config validation. Runs on the test process's backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from crbatch.train.config import HIGH_MASS_POINTS, LOW_MASS_POINTS, TrainConfig

keras = pytest.importorskip("keras")

from crbatch.train.model import build_adversary, build_classifier, count_params, input_shapes  # noqa: E402

# TensorFlow tensors lack numpy 2's __array__(copy=...): Keras' convert_to_numpy warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def reference():
    return build_classifier(TrainConfig()), build_adversary()


def test_reference_parameter_counts(reference):
    clf, adv = reference
    assert count_params(clf) == (60_067, 0)
    assert count_params(adv) == (571, 90)


def test_reference_layer_stack(reference):
    clf, _ = reference
    per_layer = {layer.name: layer.count_params() for layer in clf.layers}
    # Reference §4.2: conv 832+2080+1056+528 and LSTM 1080 (clusters), 704… (tracks), 224… (MSeg), trunk.
    assert [per_layer[f"constit_conv1d_{i}"] for i in range(3)] + [per_layer["constit_final_conv1d"]] == [
        832,
        2080,
        1056,
        528,
    ]
    assert per_layer["constit_lstm_0"] == 1080 and per_layer["track_lstm_0"] == 1080 and per_layer["MSeg_lstm_0"] == 280
    assert [per_layer["main_dense_1"], per_layer["main_dense_2"], per_layer["main_output"]] == [14_848, 32_832, 195]
    dropouts = [layer.name for layer in clf.layers if isinstance(layer, keras.layers.Dropout)]
    # No dropout after the first conv of a branch; one after each other conv, each LSTM, each dense.
    assert sorted(dropouts) == sorted(
        [f"constit_conv1d_dropout_{i}" for i in (1, 2, 3)] + [f"track_conv1d_dropout_{i}" for i in (1, 2, 3)]
        + [f"MSeg_conv1d_dropout_{i}" for i in (1, 2)]
        + ["constit_lstm_dropout_0", "track_lstm_dropout_0", "MSeg_lstm_dropout_0", "main_dropout_1", "main_dropout_2"]
    )  # fmt: skip
    assert all(layer.rate == 0.2 for layer in clf.layers if isinstance(layer, keras.layers.Dropout))
    assert [i.name for i in clf.inputs] == ["clusters", "tracks", "msegs", "jet"]
    assert clf.output.shape[-1] == 3 and clf.layers[-1].name == "main_output"


def test_regularizers_where_the_reference_has_them(reference):
    clf, _ = reference
    reg = {layer.name for layer in clf.layers if getattr(layer, "kernel_regularizer", None) is not None}
    convs_lstms = {layer.name for layer in clf.layers if isinstance(layer, (keras.layers.Conv1D, keras.layers.LSTM))}
    assert reg == convs_lstms | {"main_dense_1", "main_dense_2"}
    r = clf.get_layer("main_dense_1").kernel_regularizer.get_config()
    assert r == {"l1": pytest.approx(1e-11), "l2": pytest.approx(1e-11)}
    assert clf.get_layer("constit_lstm_0").recurrent_regularizer is None


def test_export_constraints(reference):
    """frugally-deep / ONNX: unique ASCII names, LSTMs not stateful or unrolled, no training=True calls."""
    for model in reference:
        names = [layer.name for layer in model.layers]
        assert len(names) == len(set(names))
        assert all(n.isascii() and n.replace("_", "").isalnum() for n in names)
        config = model.get_config()
        for layer in config["layers"]:
            for node in layer.get("inbound_nodes", []):
                # Keras records training=False on symbolic Dropout calls; True would bake dropout into inference.
                assert node.get("kwargs", {}).get("training") is not True, layer["name"]
    lstms = [layer for layer in reference[0].layers if isinstance(layer, keras.layers.LSTM)]
    assert lstms and all(not lstm.stateful and not lstm.unroll for lstm in lstms)


def test_adversary_structure(reference):
    _, adv = reference
    assert [type(layer).__name__ for layer in adv.layers[1:]] == ["BatchNormalization", "Dense"] * 4
    assert [layer.name for layer in adv.layers[1:]] == [
        "adversary_norm_1", "adversary_1", "adversary_norm_2", "adversary_2", "adversary_norm_3", "adversary_3",
        "adversary_norm_4", "adversary_out",
    ]  # fmt: skip
    assert [adv.get_layer(f"adversary_{i}").units for i in (1, 2, 3)] == [24, 12, 6]
    assert all(adv.get_layer(f"adversary_{i}").activation.__name__ == "tanh" for i in (1, 2, 3))
    assert adv.get_layer("adversary_out").activation.__name__ == "sigmoid"


def test_repeated_filter_widths_and_pooling_and_stacked_lstms():
    """The reference named layers by width (duplicate names for [32, 16, 16]); here by position."""
    cfg = TrainConfig(filters_cnn_constit=[16, 16, 16], nodes_track_lstm=0, layers_list=2, hidden_layer_fraction=0.5)
    clf = build_classifier(cfg)
    names = [layer.name for layer in clf.layers]
    assert len(names) == len(set(names))
    assert "track_pooling" in names and "constit_lstm_1" in names
    assert clf.get_layer("main_dense_1").units == 256 and clf.get_layer("main_dense_2").units == 32
    assert clf.get_layer("constit_lstm_0").return_sequences and not clf.get_layer("constit_lstm_1").return_sequences


@pytest.mark.parametrize(("mh", "ms", "k"), [(True, False, 1), (False, True, 1), (True, True, 2)])
def test_parametrisation_adds_features_to_every_input(mh, ms, k):
    cfg = TrainConfig(mH_parametrization=mh, mS_parametrization=ms)
    assert input_shapes(cfg) == {
        "clusters": (30, 12 + k),
        "tracks": (20, 10 + k),
        "msegs": (30, 6 + k),
        "jet": (3 + k,),
    }
    clf = build_classifier(cfg)
    x = [np.zeros((2, *s), np.float32) for s in input_shapes(cfg).values()]
    assert clf.predict_on_batch(x).shape == (2, 3)


def test_saved_classifier_loads_without_compile(reference, tmp_path):
    clf, _ = reference
    x = [np.random.default_rng(0).normal(size=(4, *s)).astype(np.float32) for s in input_shapes(TrainConfig()).values()]
    clf.save(tmp_path / "000.keras")
    again = keras.models.load_model(tmp_path / "000.keras", compile=False)
    np.testing.assert_allclose(again.predict_on_batch(x), clf.predict_on_batch(x), atol=1e-6)


# --- config -----------------------------------------------------------------------------------------


def test_defaults_are_the_reference_ones():
    c = TrainConfig()
    assert (c.model_name, c.lr_values, c.adversary_weight, c.epochs, c.batch_size) == (
        "default",
        0.0008,
        10.0,
        100,
        512,
    )
    assert (c.filters_cnn_constit, c.filters_cnn_track, c.filters_cnn_MSeg) == (
        [64, 32, 32, 16],
        [64, 32, 32, 16],
        [32, 16, 8],
    )
    assert (c.nodes_constit_lstm, c.nodes_track_lstm, c.nodes_MSeg_lstm, c.layers_list) == (10, 10, 5, 1)
    assert (c.reg_values, c.dropout_array, c.hidden_layer_fraction, c.frac_list) == (1e-11, 0.2, 1.0, 0.5)
    assert (c.mH_parametrization, c.mS_parametrization, c.include_low_mass, c.include_high_mass) == (
        False,
        False,
        True,
        True,
    )
    assert (c.adversary_steps, c.adversary_mode, c.weight_column, c.checkpoint_exit_code) == (
        2,
        "reference",
        "mcEventWeight",
        85,
    )
    assert c.num_splits is None and c.mass_selection is None


def test_mass_selection_rule():
    assert TrainConfig(include_high_mass=False).mass_selection == LOW_MASS_POINTS
    assert TrainConfig(include_low_mass=False).mass_selection == HIGH_MASS_POINTS


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0}, {"filters_cnn_MSeg": []}, {"dropout_array": 1.0}, {"hidden_layer_fraction": 0.001},
        {"include_low_mass": False, "include_high_mass": False}, {"adversary_mode": "wgan"}, {"batch_size": 0},
        {"checkpoint_exit_code": 3}, {"model_name": "a/b"}, {"unknown_key": 1}, {"main_training_file": "x.h5"},
    ],
)  # fmt: skip
def test_bad_config_is_refused(bad):
    with pytest.raises(ValidationError):
        TrainConfig(**bad)


def test_dataset_paths(tmp_path):
    c = TrainConfig(data=tmp_path)
    assert c.dataset_path("main", "val") == tmp_path / "main_val.h5"
    c = TrainConfig(main_training_file=tmp_path / "x_train.h5")
    assert c.dataset_path("main", "val") == tmp_path / "x_val.h5"


def test_resume_compatibility():
    saved = TrainConfig().model_dump(mode="json")
    assert TrainConfig(epochs=300, lr_values=1e-3).incompatible_with(saved) == []
    assert TrainConfig(nodes_track_lstm=22, seed=3).incompatible_with(saved) == ["nodes_track_lstm", "seed"]
