"""Configuration of ``crbatch build`` (shards → training datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import StageConfig
from ..scaling import ScalingConfig

EventFilter = Literal["none", "odd", "even"]
Use = Literal["main", "cr", "both"]
MainClass = Literal["qcd", "sig", "bib"]
CrClass = Literal["qcd", "data"]


class ClassQuota(BaseModel):
    """How many jets of one class to keep (after the file-level selection)."""

    model_config = ConfigDict(extra="forbid")

    max_jets: int | None = Field(None, ge=1, description="keep at most this many jets (a seeded, order-free draw)")
    fraction: float = Field(1.0, gt=0, le=1, description="keep this fraction of the jets (seeded)")


class SplitFractions(BaseModel):
    """Train / validation / test fractions (the reference: 90 / 5 / 5)."""

    model_config = ConfigDict(extra="forbid")

    train: float = Field(0.90, ge=0, le=1)
    val: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sum(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1 (train+val+test = {total:g})")
        return self


class BuildInput(BaseModel):
    """One entry of a YAML input list: shards (file, directory or wildcard) and per-entry options."""

    model_config = ConfigDict(extra="forbid")

    path: str
    use: Use | None = Field(
        None, description="which dataset the shards feed (default: qcd both, sig/bib main, data cr)"
    )
    max_jets: int | None = Field(None, ge=1, description="per file: keep at most this many jets")
    fraction: float | None = Field(None, gt=0, le=1, description="per file: keep this fraction of the jets")
    event_filter: EventFilter | None = Field(None, description="override the global event filter")
    dsid: int | None = Field(None, description="DSID of these shards (when the shard does not know it)")


class BuildConfig(StageConfig):
    """Shards → main (QCD/signal/BIB) and control-region (multijet MC/data) training datasets."""

    inputs: list[BuildInput] = Field(default_factory=list, description="shards to build from (YAML list form)")
    output_dir: Path = Field(Path("datasets"), description="where main_*.h5 / cr_*.h5 and summary.json go")
    seed: int = Field(42, description="seed of the quotas/fractions draw and of the shuffle")
    split_seed: int = Field(0, description="seed of the eventNumber-hash split (keep it fixed across builds)")
    split: SplitFractions = Field(default_factory=SplitFractions, description="train/val/test fractions")
    fraction: float = Field(1.0, gt=0, le=1, description="keep this fraction of every class (class fractions kept)")
    main: dict[MainClass, ClassQuota] = Field(default_factory=dict, description="per-class quotas, main dataset")
    cr: dict[CrClass, ClassQuota] = Field(default_factory=dict, description="per-class quotas, control region")
    main_classes: list[MainClass] = Field(
        ["qcd", "sig", "bib"], description="classes the main dataset must have (exit 13 when one has no jets)"
    )
    max_jets_per_file: int | None = Field(None, ge=1, description="keep at most this many jets from each shard")
    event_filter: EventFilter = Field("none", description="keep only odd or even eventNumber")
    mass_points: list[tuple[float, float]] | None = Field(
        None, description="signal (mH, mS) points to keep, GeV (null: all)"
    )
    qcd_use: Use = Field("both", description="default use of QCD shards: main, cr (control-region MC) or both")
    weight_base: Literal["raw", "xs"] = Field(
        "raw", description="weight that weight_balanced rescales: raw mcEventWeight or the xs-normalised one"
    )
    xsec: Path | None = Field(None, description="YAML {DSID: cross-section × filter efficiency, pb} for QCD")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="feature scaling")
    compress: bool = Field(True, description="lz4-compress the datasets")
    tmp_dir: Path | None = Field(
        None,
        description="where the shuffle buckets go (null: a hidden directory in output_dir); local scratch "
        "($TMPDIR) is faster when output_dir is on shared storage",
    )
    bucket_mb: int = Field(256, ge=16, description="size of one shuffle bucket in memory, MB (peak RSS ~2-3×)")
    workers: int = Field(
        1, ge=0, description="processes for passes 2-3 (0: the CPUs this job may use, at most 4; small builds use 1)"
    )
    read_block: int = Field(8192, ge=256, description="jets read from a shard at a time")
    skip_bad_shards: bool = Field(
        False, description="skip (and count) incomplete or other-schema shards instead of failing (exit 12)"
    )
    force: bool = Field(False, description="rebuild even if complete outputs with the same config exist")

    @field_validator("mass_points")
    @classmethod
    def _masses(cls, v):
        if v is not None and not v:
            raise ValueError("mass_points is an empty list: give at least one (mH, mS) or null for all")
        return v

    @model_validator(mode="after")
    def _weights(self) -> BuildConfig:
        if self.weight_base == "xs" and self.xsec is None:
            raise ValueError("weight_base xs needs a cross-section table (xsec: FILE.yaml or --xsec)")
        return self

    def identity(self) -> dict:
        """The values that change what is written (not where, not whether to redo)."""
        d = self.model_dump(mode="json")
        skip = (
            "inputs",
            "output_dir",
            "tmp_dir",
            "force",
            "bucket_mb",
            "read_block",
            "workers",
            "skip_bad_shards",
            "xsec",
        )
        for k in skip:
            d.pop(k, None)
        return d
