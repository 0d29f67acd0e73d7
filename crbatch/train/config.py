"""Configuration of ``crbatch train``.

Every field of the reference's ``TrainingConfig`` (reference-training.md §2) is here under its
reference name and with its reference default, so a reference YAML loads unchanged; what differs:

* ``epochs`` is the TOTAL number of epochs of the run: a resumed run trains the remaining ones
  (the reference trained ``epochs`` *more* on ``--continue``).
* ``batch_size`` is a real mini-batch size (the reference ignored it). ``num_splits`` is the
  reference's batching, kept as a compatibility mode: when set, one epoch is ``num_splits`` steps of
  ``ceil(N_train / num_splits)`` jets each.
* ``main_training_file``/``cr_training_file`` name ``crbatch build`` outputs (HDF5), not pickles.

This module must not import Keras or a backend: ``--help`` and ``--print-config`` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import StageConfig
from ..errors import ExitCode

WeightColumn = Literal["mcEventWeight", "weight_xs", "weight_balanced", "none"]

# Fields that define the network's variables (shapes and layers) or the optimizer layout: a resumed
# run with other values would load a checkpoint into a different model, so resuming refuses (exit 3).
ARCHITECTURE_FIELDS = (
    "filters_cnn_constit", "filters_cnn_track", "filters_cnn_MSeg",
    "nodes_constit_lstm", "nodes_track_lstm", "nodes_MSeg_lstm", "layers_list",
    "hidden_layer_fraction", "mH_parametrization", "mS_parametrization", "adversary_mode",
)  # fmt: skip
# Fields that define which jets are read in which order: the saved reader position is meaningless
# under other values, so resuming refuses these too (start a new run instead).
DATA_ORDER_FIELDS = (
    "seed", "batch_size", "num_splits", "frac_list", "include_low_mass", "include_high_mass",
    "weight_column", "cr_weight_column",
)  # fmt: skip

LOW_MASS_POINTS = (60.0, 125.0, 200.0)  # mH values of include_low_mass (reference §3.6)
HIGH_MASS_POINTS = (400.0, 600.0, 1000.0)  # mH values of include_high_mass
MASS_SCALE = 1000.0  # parametrisation masses enter the network in TeV (O(1) like the scaled inputs)


class TrainConfig(StageConfig):
    """Adversarial training of the CalRatio classifier (reference defaults; see crbatch/train/config.py)."""

    # --- reference TrainingConfig fields (names and defaults of default_training_config.yaml) ---
    model_name: str = Field("default", description="runs go to <output_dir>/<model_name>/<NNNNN>/")
    lr_values: float = Field(0.0008, gt=0, description="Nadam learning rate of both classifier and adversary")
    filters_cnn_constit: list[int] = Field([64, 32, 32, 16], description="Conv1D(kernel 1) widths, cluster branch")
    filters_cnn_track: list[int] = Field([64, 32, 32, 16], description="Conv1D(kernel 1) widths, track branch")
    filters_cnn_MSeg: list[int] = Field([32, 16, 8], description="Conv1D(kernel 1) widths, muon-segment branch")
    nodes_constit_lstm: int = Field(10, ge=0, description="LSTM units, cluster branch (0: global average pooling)")
    nodes_track_lstm: int = Field(10, ge=0, description="LSTM units, track branch (0: global average pooling)")
    nodes_MSeg_lstm: int = Field(5, ge=0, description="LSTM units, muon-segment branch (0: global average pooling)")
    layers_list: int = Field(1, ge=1, description="stacked LSTM layers per branch")
    reg_values: float = Field(1e-11, ge=0, description="L1 and L2 coefficient on conv/LSTM kernels and hidden Dense")
    dropout_array: float = Field(0.2, ge=0, lt=1, description="rate of every Dropout layer")
    hidden_layer_fraction: float = Field(1.0, gt=0, description="trunk Dense widths are int(512·f), int(64·f)")
    adversary_weight: float = Field(10.0, ge=0, description="λ in the classifier loss CE − λ·BCE_adversary")
    epochs: int = Field(100, ge=1, description="TOTAL epochs of the run (a resumed run trains the remaining ones)")
    num_splits: int | None = Field(
        None, ge=1, description="reference batching: one step per 1/num_splits of the training set (reference: 50); "
        "unset: real mini-batches of batch_size",
    )  # fmt: skip
    batch_size: int = Field(512, ge=1, description="jets per training step (main and control-region batch)")
    frac_list: float = Field(
        0.5, gt=0, le=1, description="fraction of the training and validation jets used (a fixed, seeded subset)"
    )
    shuffle_window: int = Field(
        4096, ge=0, description="jets the reader holds to mix each batch from many places of the file, whatever "
        "its order (0: contiguous slices, for datasets shuffled by the build only)",
    )  # fmt: skip
    mH_parametrization: bool = Field(False, description="append mH (TeV) to every constituent and the jet vector")
    mS_parametrization: bool = Field(False, description="append mS (TeV) to every constituent and the jet vector")
    include_low_mass: bool = Field(True, description="with include_high_mass off: train on mH ∈ {60,125,200} only")
    include_high_mass: bool = Field(True, description="with include_low_mass off: train on mH ∈ {400,600,1000} only")
    main_training_file: Path | None = Field(
        None, description="main training dataset (default <data>/main_train.h5); validation: its _val sibling"
    )
    cr_training_file: Path | None = Field(
        None, description="control-region training dataset (default <data>/cr_train.h5); validation: its _val sibling"
    )

    # --- crbatch additions ---
    data: Path = Field(Path("demo/datasets"), description="directory of `crbatch build` outputs")
    output_dir: Path = Field(Path("training_results"), description="root of the run directories")
    seed: int = Field(1, description="seed of initialisation, dropout, batch order, subsets and mass sampling")
    adversary_steps: int = Field(2, ge=0, description="discriminator steps before each classifier step (reference)")
    adversary_mode: Literal["reference", "gradient_reversal"] = Field(
        "reference",
        description="reference: alternate discriminator/classifier steps, classifier loss CE − λ·BCE; "
        "gradient_reversal: one joint step through a gradient-reversal layer (adversary_steps unused)",
    )
    weight_column: WeightColumn = Field(
        "mcEventWeight", description="main per-jet training weight (reference: raw mcEventWeight; none: 1)"
    )
    cr_weight_column: WeightColumn = Field(
        "weight_balanced", description="control-region weight (reference: MC rescaled to the data total)"
    )
    fast_kernels: bool = Field(
        True,
        description="TensorFlow: train through twins of Dropout (16-bit masks) and Conv1D(kernel 1) (a matrix product) "
        "with the same weights, 1.3× faster; off: Keras' own layers",
    )
    intra_op_threads: int | None = Field(
        1,
        ge=0,
        description="TensorFlow CPU: threads per operation (1: independent operations run side by side, 1.15× faster "
        "for this network on 2 cores; null or 0: TensorFlow's default)",
    )
    inter_op_threads: int | None = Field(
        None, ge=0, description="TensorFlow CPU: operations at once (null: the cores this job may run on)"
    )
    eval_batch_size: int = Field(4096, ge=1, description="jets per prediction batch in the per-epoch validation")
    deterministic: bool = Field(True, description="deterministic ops (TensorFlow op determinism) for exact resume")
    checkpoint_exit_code: int = Field(
        int(ExitCode.CHECKPOINTED), ge=1, le=255, description="exit code after a checkpoint on SIGTERM"
    )

    @field_validator("filters_cnn_constit", "filters_cnn_track", "filters_cnn_MSeg")
    @classmethod
    def _filters(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one Conv1D width")
        if any(f < 1 for f in v):
            raise ValueError("Conv1D widths must be ≥ 1")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if int(64 * self.hidden_layer_fraction) < 1:
            raise ValueError(f"hidden_layer_fraction {self.hidden_layer_fraction} leaves a Dense layer with no unit")
        if not (self.include_low_mass or self.include_high_mass):
            raise ValueError("include_low_mass and include_high_mass are both off: no signal would be left")
        if self.checkpoint_exit_code in {int(c) for c in ExitCode if c != ExitCode.CHECKPOINTED}:
            raise ValueError(f"checkpoint_exit_code {self.checkpoint_exit_code} is taken by another exit code")
        for f in (self.main_training_file, self.cr_training_file):
            if f is not None and "_train" not in f.name:
                raise ValueError(
                    f"{f}: a training file name must contain '_train' (its _val sibling is the validation set)"
                )
        if not self.model_name or "/" in self.model_name or self.model_name.startswith("."):
            raise ValueError(f"model_name {self.model_name!r} must be a plain directory name")
        return self

    # --- derived values ---
    @property
    def n_mass_features(self) -> int:
        return int(self.mH_parametrization) + int(self.mS_parametrization)

    @property
    def mass_selection(self) -> tuple[float, ...] | None:
        """Signal mH values kept in training/validation, or None (all: the reference's both/neither rule)."""
        if self.include_low_mass and not self.include_high_mass:
            return LOW_MASS_POINTS
        if self.include_high_mass and not self.include_low_mass:
            return HIGH_MASS_POINTS
        return None

    def dataset_path(self, role: str, split: str) -> Path:
        """``main``/``cr`` dataset of ``split`` (train/val/test)."""
        given = self.main_training_file if role == "main" else self.cr_training_file
        if given is None:
            return self.data / f"{role}_{split}.h5"
        if split == "train":
            return given
        return given.with_name(given.name.replace("_train", f"_{split}"))

    def incompatible_with(self, saved: dict[str, Any]) -> list[str]:
        """Fields whose values differ from a run's saved config in a way that forbids resuming it."""
        mine = self.model_dump(mode="json")
        return [k for k in (*ARCHITECTURE_FIELDS, *DATA_ORDER_FIELDS) if k in saved and saved[k] != mine[k]]
