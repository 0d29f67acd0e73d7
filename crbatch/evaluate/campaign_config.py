"""The config of a campaign comparison (``crbatch analyze`` of several runs of one scan): how runs
are grouped into option sets and the rule that picks the run that is exported.

Kept free of heavy imports: the pipeline model validates ``analyze.campaign`` with it at submission.

The selection rule (documented in docs/campaigns.md)::

    select:
      background: QCD          # the rejection that is maximised: of QCD or BIB jets ...
      efficiency: 0.5          # ... at this signal efficiency (one of the analysis' efficiencies)
      ks_max: 0.1              # only runs/option sets whose data/MC K-S distance is at most this
      ks_output: sig           # the K-S of this output, all control-region jets
      level: option_set        # option_set: best mean over seeds, then its best run; run: best run

``level: option_set`` (the default) chooses λ by the *mean* over seeds — picking the single best
seed of all would favour a lucky seed — and then exports the run of that option set with the highest
rejection that passes the ceiling. When no run or option set passes the ceiling, the one with the
smallest K-S distance is chosen and the report says the ceiling was not met.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SelectRule(BaseModel):
    """Which run of the campaign is exported."""

    model_config = ConfigDict(extra="forbid")

    background: Literal["QCD", "BIB"] = Field("QCD", description="the background whose rejection is maximised")
    efficiency: float = Field(0.5, gt=0, lt=1, description="signal efficiency of that rejection (all mass points)")
    ks_max: float | None = Field(
        None, gt=0, le=1, description="ceiling on the data/MC K-S distance of ks_output (null: no ceiling)"
    )
    ks_output: Literal["qcd", "sig", "bib"] = Field("sig", description="output whose data/MC K-S is bounded")
    level: Literal["option_set", "run"] = Field(
        "option_set", description="option_set: the best mean over seeds, then its best run; run: the best run"
    )

    def describe(self) -> str:
        ceiling = f" with data/MC K-S({self.ks_output}) ≤ {self.ks_max:g}" if self.ks_max is not None else ""
        what = "mean over seeds" if self.level == "option_set" else "run"
        return f"highest {self.background} rejection at ε_S = {self.efficiency:g} ({what}){ceiling}"


class CampaignConfig(BaseModel):
    """Several runs compared as one campaign."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="compare the runs as a campaign (with two or more runs)")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="model name → the options that make the run differ (the pipeline fills "
        "it from train.scan; default: the training config keys that differ between the runs)",
    )  # fmt: skip
    group_over: list[str] = Field(
        ["seed"], description="options that do not make an option set: runs differing only in them are averaged"
    )
    select: SelectRule = Field(default_factory=SelectRule)
    export_all: bool = Field(False, description="export every run's chosen epoch, not only the selected run's")
    details: Literal["selected", "all"] = Field(
        "selected", description="full test-split sections (every figure) for the selected run only, or for all runs "
        "(every run's numbers are in metrics.json either way)",
    )  # fmt: skip
