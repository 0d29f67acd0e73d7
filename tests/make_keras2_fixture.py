"""Make ``tests/data/reference_keras2/``: a reference-style classifier saved by Keras 2 both ways.

Run in a scratch Keras-2 environment (TensorFlow 2.13–2.15 installs from the local indexes), never
in crbatch's own::

    python3 -m venv /work/keras2-venv && /work/keras2-venv/bin/pip install 'tensorflow-cpu==2.13.*'
    /work/keras2-venv/bin/python tests/make_keras2_fixture.py tests/data/reference_keras2

It builds the reference's network (CalRatioTrainer ``setup_model_architecture``: branches created in
the order clusters → tracks → muon segments, Keras-2 auto names for the unnamed Conv1D/LSTM/Dense
layers, the jet input's unused ``Dense(3)``, the trunk, ``main_output``) at a reduced width so the
files stay small, gives it seeded random weights, and writes:

* ``final_model.keras`` — ``model.save``: the Keras-v3 zip (``config.json``, ``metadata.json``,
  ``model.weights.h5`` with ``_layer_checkpoint_dependencies/<class>_<k>/vars`` groups);
* ``final_model_weights.keras`` — ``model.save_weights`` to a ``.keras`` name: Keras-2 HDF5, as
  the reference's ``final_model_weights_<N>.keras``;
* ``expected.npz`` — random inputs and Keras 2's own outputs for them: the ground truth the import
  is tested against;
* ``architecture.json`` — the widths used (the crbatch training config that matches).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# Reduced widths: the same layer stack as the reference defaults, ~3k instead of 60k parameters.
# Same-shaped layers on purpose (the three final convolutions 8→4, the cluster and track LSTMs), so a
# mapping by shape alone would be ambiguous and a swap must be caught.
ARCH = {
    "filters_cnn_constit": [16, 8, 4],
    "filters_cnn_track": [12, 8, 4],
    "filters_cnn_MSeg": [8, 4],
    "nodes_constit_lstm": 4,
    "nodes_track_lstm": 4,
    "nodes_MSeg_lstm": 2,
    "layers_list": 1,
    "hidden_layer_fraction": 0.0625,  # trunk 32, 4
    "dropout_array": 0.2,
    "reg_values": 1e-11,
}
SHAPES = {"constit": (30, 12), "track": (20, 10), "MSeg": (30, 6)}


def build(keras):
    layers = keras.layers
    reg = keras.regularizers.L1L2(l1=ARCH["reg_values"], l2=ARCH["reg_values"])
    p = ARCH["dropout_array"]
    inputs, feats = [], []
    for prefix, nodes in (("constit", "nodes_constit_lstm"), ("track", "nodes_track_lstm"),
                          ("MSeg", "nodes_MSeg_lstm")):  # fmt: skip
        inp = keras.Input(SHAPES[prefix], name=f"{prefix}_input_cr")
        filters = ARCH[f"filters_cnn_{prefix}"]
        x = inp
        for i, f in enumerate(filters):
            name = f"{prefix}_final_conv1d" if f == filters[-1] else None  # named by value, as the reference
            x = layers.Conv1D(f, 1, activation="relu", kernel_regularizer=reg, name=name)(x)
            if i > 0:
                x = layers.Dropout(p)(x)
        x = layers.LSTM(ARCH[nodes], kernel_regularizer=reg)(x)
        x = layers.Dropout(p)(x)
        layers.Dense(3, activation="softmax", name=f"{prefix}_output")  # the reference's dead branch head
        inputs.append(inp)
        feats.append(x)
    jet = keras.Input((3,), name="jet_input_cr")
    layers.Dense(3)  # the jet input's unused Dense: takes the auto name "dense"
    x = layers.Concatenate()([*feats, jet])
    for w in (512, 64):
        x = layers.Dense(int(w * ARCH["hidden_layer_fraction"]), activation="relu", kernel_regularizer=reg)(x)
        x = layers.Dropout(p)(x)
    out = layers.Dense(3, activation="softmax", name="main_output")(x)
    return keras.Model([*inputs, jet], out)


def main(out_dir: str) -> None:
    import tensorflow as tf
    from tensorflow import keras

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(1)
    model = build(keras)
    rng = np.random.default_rng(7)
    # Random weights of a realistic scale (not the initialiser's), so a mis-mapped array shows.
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(out / "final_model.keras")
    model.save_weights(out / "final_model_weights.keras")  # HDF5, as the reference's checkpoints
    xs = [rng.normal(0, 1, (16, *SHAPES[k])).astype(np.float32) for k in ("constit", "track", "MSeg")]
    xs.append(rng.normal(0, 1, (16, 3)).astype(np.float32))
    y = model.predict(xs, verbose=0)
    np.savez_compressed(out / "expected.npz", clusters=xs[0], tracks=xs[1], msegs=xs[2], jet=xs[3], scores=y)
    # Keras 2 saves without compression: deflate the archive (same members, a third of the size).
    import zipfile

    src = out / "final_model.keras"
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    versions = {"tensorflow": tf.__version__, "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__")
                else __import__("keras").__version__}  # fmt: skip
    (out / "architecture.json").write_text(json.dumps({"config": ARCH, "made_with": versions}, indent=1) + "\n")
    print(f"wrote {out}: {model.count_params()} parameters, {versions}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/reference_keras2")
