"""Configuration of the converters (``crbatch convert divert`` and ``crbatch convert legacy-pkl``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import StageConfig

DataType = Literal["sig", "qcd", "bib", "data"]


class InputEntry(BaseModel):
    """One line of a YAML input list: a file or wildcard with its type and signal masses.

    The reference's sample lists spell the masses ``mH``/``mS`` while its model wanted
    ``llp_mH``/``llp_mS`` (so every signal entry failed); both spellings are accepted here.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str = Field(validation_alias=AliasChoices("path", "input_file", "input"))
    type: DataType = Field(validation_alias=AliasChoices("type", "data_type"))
    mH: float | None = Field(None, validation_alias=AliasChoices("mH", "llp_mH"))
    mS: float | None = Field(None, validation_alias=AliasChoices("mS", "llp_mS"))
    dsid: int | None = Field(None, description="dataset id; read from mcChannelNumber when absent")
    output_dir: str | None = Field(None, description="sub-directory of the output directory for this entry")
    out: str | None = Field(None, description="output file of this entry (a batch job converting several files)")

    @model_validator(mode="after")
    def _masses(self) -> InputEntry:
        if self.type == "sig" and (self.mH is None or self.mS is None):
            raise ValueError(f"signal input {self.path!r} needs both mH and mS (GeV)")
        if self.type != "sig" and (self.mH or self.mS):
            raise ValueError(f"{self.type} input {self.path!r} has masses; only signal inputs carry mH/mS")
        return self


class ConvertDivertConfig(StageConfig):
    """DiVertAnalysis ntuple → HDF5 shard, one per input file."""

    inputs: list[InputEntry] = Field(default_factory=list, description="files to convert (YAML list form)")
    output_dir: Path = Field(Path("shards"), description="where shards are written")
    tree: str = Field("trees_DV_", description="name of the DiVertAnalysis tree")
    min_jet_pt: float = Field(40.0, description="jet pT window lower edge, GeV (inclusive)")
    max_jet_pt: float = Field(500.0, description="jet pT window upper edge, GeV (exclusive)")
    max_jet_eta: float = Field(2.5, description="jets with |eta| above this are dropped")
    jet_cleaning: bool = Field(False, description="drop jets failing jet_isClean_LooseBadLLP (reference: off)")
    llp_barrel_max_eta: float = Field(1.4, description="LLP |eta| below this is barrel, above is endcap")
    llp_barrel_lxy: tuple[float, float] = Field((1200.0, 4000.0), description="barrel LLP Lxy window, mm")
    llp_endcap_lz: tuple[float, float] = Field((3500.0, 6000.0), description="endcap LLP |Lz| window, mm")
    llp_match_dr: float = Field(0.4, description="max ΔR between an accepted LLP and its jet")
    bib_match_dr: float | None = Field(
        0.4, description="max ΔR between a BIB-flagged HLT jet and its offline jet (null: no limit, as the reference)"
    )
    dedupe_jets: bool = Field(True, description="a jet matched by two LLPs/HLT jets is written once (reference: twice)")
    reference_exact: bool = Field(
        False, description="reproduce the reference's selection bugs: no BIB ΔR limit, duplicated jets"
    )
    step_size: int | str = Field(
        "48 MB",
        description="events per chunk, or the branches' data size per chunk ('48 MB'): memory grows with this, "
        "not with the file",
    )
    fast_decoding: bool = Field(
        True,
        description="decode std::vector branches with crbatch's faster uproot interpretations (same arrays, "
        "1.4× faster); off: uproot's own",
    )
    compress: bool = Field(True, description="lz4-compress the shard's tables")
    force: bool = Field(False, description="reconvert even if a complete shard exists")
    retries: int = Field(
        3, ge=0, le=100, description="remote (root://) inputs: conversions retried after a network error, then exit 20"
    )
    retry_wait: float = Field(10.0, ge=0, description="seconds before the first retry (doubled after each)")

    @model_validator(mode="before")
    @classmethod
    def _reference_exact(cls, data):
        if isinstance(data, dict) and data.get("reference_exact"):
            data = {**data, "bib_match_dr": None, "dedupe_jets": False}
        return data

    @field_validator("step_size")
    @classmethod
    def _step(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v <= 0:
                raise ValueError("must be a positive number of events or a size such as '48 MB'")
            return v
        import re

        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*(B|kB|KB|MB|GB|KiB|MiB|GiB)\s*", v):
            raise ValueError(f"{v!r}: expected a number of events or a size such as '48 MB'")
        return v

    @model_validator(mode="after")
    def _windows(self) -> ConvertDivertConfig:
        if not self.min_jet_pt < self.max_jet_pt:
            raise ValueError(f"min_jet_pt ({self.min_jet_pt}) must be below max_jet_pt ({self.max_jet_pt})")
        for name in ("llp_barrel_lxy", "llp_endcap_lz"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name}: lower edge {lo} must be below upper edge {hi}")
        return self


class ConvertLegacyConfig(StageConfig):
    """Reference pre-training pickle → HDF5 shard."""

    output_dir: Path = Field(Path("shards"), description="where shards are written")
    scaled: bool | None = Field(
        None, description="the pickle's features are already scaled (null: detect from jet_pt range)"
    )
    type: DataType | None = Field(
        None,
        description="label every jet as this type, for files whose label column is known to be wrong "
        "(null: the label column, checked against the LLP truth, the masses and the file name)",
    )
    mH: float | None = Field(None, ge=0, description="signal jets' heavy scalar mass, GeV (null: the llp_mH column)")
    mS: float | None = Field(None, ge=0, description="signal jets' LLP mass, GeV (null: the llp_mS column)")
    fast_decoding: bool = Field(
        True,
        description="decode std::vector branches with crbatch's faster uproot interpretations (same arrays, "
        "1.4× faster); off: uproot's own",
    )
    compress: bool = Field(True, description="lz4-compress the shard's tables")
    force: bool = Field(False, description="reconvert even if a complete shard exists")

    @model_validator(mode="after")
    def _mass_pair(self) -> ConvertLegacyConfig:
        if (self.mH is None) != (self.mS is None):
            raise ValueError("give both --mH and --mS (GeV), or neither")
        if self.mH is not None and self.type not in (None, "sig"):
            raise ValueError(f"--mH/--mS are signal masses; --type {self.type} has none")
        return self
