"""The pipeline YAML: inputs, shared storage, image, site profile, per-stage options and resources.

Example (``submit/example-pipeline.yaml``; reference in docs/batch.md)::

    name: demo
    storage: ../demo/storage          # relative paths: to this file's directory
    datasets:
      - {name: sig_mH125_mS55, type: sig, mH: 125, mS: 55, files: [../demo/inputs/sig_mH125_mS55.root]}
      - {name: qcd, type: qcd, files: ["../demo/inputs/qcd_*.root"]}
    train:
      options: {epochs: 2, batch_size: 128}
      resources: {gpus: 1, memory: 8 GB, runtime: 4h}

Stage ``options`` are the stage's own config keys (``crbatch <stage> --print-config``) and are
validated against the stage's model here, so a typo fails at submission, not on a worker. The keys
the pipeline sets itself (inputs and output locations) are refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,  # fmt: skip
)

from ..config import deep_merge, load_yaml, validation_message
from ..errors import ConfigError
from ..evaluate.campaign_config import CampaignConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
"""Names that become directory names, job names and scheduler tokens: no quoting needed anywhere."""

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_SIZE_MB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}
_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*$")
_DURATION_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size_mb(value: Any) -> int:
    """Megabytes (MiB) from ``4000``, ``"4 GB"``, ``"512M"``, ``"1.5GiB"`` (a bare number is MB)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        return max(1, round(value))
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 4000, '4 GB', '512 MB')")
    return max(1, round(float(m.group(1)) * _SIZE_MB[m.group(2).lower()]))


def parse_duration_s(value: Any) -> int:
    """Seconds from ``3600``, ``"1h"``, ``"90m"``, ``"2d"`` or ``"HH:MM:SS"`` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return max(1, round(value))
    text = str(value).strip()
    if re.fullmatch(r"\d+:\d{2}(:\d{2})?", text):
        parts = [int(p) for p in text.split(":")]
        h, m, s = parts if len(parts) == 3 else (parts[0], parts[1], 0)
        return max(1, h * 3600 + m * 60 + s)
    found = _DURATION_RE.match(text)
    if not found:
        raise ValueError(f"{value!r} is not a duration (e.g. 3600, '90m', '4h', '2d', '12:00:00')")
    return max(1, round(float(found.group(1)) * _DURATION_S[found.group(2)]))


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r}: use letters, digits, '_', '.', '-' (not first), at most 100")
    return value


def _storage_root(v: Any) -> Any:
    from ..storage import location

    if isinstance(v, str | os.PathLike):
        if any(c in str(v) for c in "\n\r\0"):
            raise ValueError(f"{str(v)!r}: a path with a line break cannot be passed to a scheduler")
        return location(str(v))
    return v


StorageRoot = Annotated[Any, BeforeValidator(_storage_root), PlainSerializer(str, return_type=str)]
"""A local path or a ``root://`` URL (:class:`crbatch.storage.RemotePath`)."""


class Resources(BaseModel):
    """What one job of a stage asks the scheduler for."""

    model_config = ConfigDict(extra="forbid")

    cpus: int = Field(1, ge=1, le=1024, description="CPU cores")
    memory: int = Field(2048, description="host memory, MB (accepts '4 GB')")
    disk: int = Field(4096, description="scratch disk, MB (accepts '10 GB')")
    runtime: int = Field(4 * 3600, description="wall-time limit, seconds (accepts '90m', '4h', '12:00:00')")
    gpus: int = Field(0, ge=0, le=64, description="GPUs")
    gpu_memory: int | None = Field(None, description="minimum memory per GPU, MB (HTCondor gpus_minimum_memory)")
    retries: int = Field(2, ge=0, le=100, description="reruns after a retryable failure")
    throttle: int | None = Field(None, ge=1, description="at most this many jobs of the stage at once")

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        return parse_size_mb(v)

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _gpu_size(cls, v: Any) -> int | None:
        return None if v is None else parse_size_mb(v)

    @field_validator("runtime", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> int:
        return parse_duration_s(v)


def _resources(**kw: Any) -> Any:
    return Field(default_factory=lambda: Resources(**kw), description="scheduler resources of each job")


def _check_options(model: type[BaseModel], options: dict[str, Any], reserved: set[str]) -> None:
    """Validate ``options`` against a stage's config model; refuse the keys the pipeline sets."""
    taken = sorted(reserved & set(options))
    if taken:
        raise ValueError(f"options: {', '.join(taken)} set by the pipeline (storage layout); remove them")
    try:
        model.model_validate(options)
    except ValidationError as e:
        parts = []
        for err in e.errors()[:3]:
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            parts.append(f"options.{'.'.join(str(x) for x in err['loc'])}: {msg}")
        raise ValueError("; ".join(parts)) from None


class Dataset(BaseModel):
    """One input dataset: ntuples of one type (and mass point)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="directory name of its shards: <storage>/shards/<name>/")
    type: Literal["sig", "qcd", "bib", "data"]
    mH: float | None = Field(None, description="signal: heavy scalar mass, GeV")
    mS: float | None = Field(None, description="signal: LLP mass, GeV")
    dsid: int | None = Field(None, description="dataset id (default: mcChannelNumber of each file)")
    files: list[str] = Field(default_factory=list, description="files, wildcards or URLs (root://...)")
    did: list[str] = Field(default_factory=list, description="rucio DIDs (scope:name): their files' replicas")
    file_list: Path | None = Field(None, description="text file: one file, wildcard or URL per line (# comments)")
    build: dict[str, Any] = Field(
        default_factory=dict, description="build options of these shards (use, max_jets, ...)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "dataset name")

    @field_validator("files", "did", mode="before")
    @classmethod
    def _one_file(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("did")
    @classmethod
    def _did(cls, v: list[str]) -> list[str]:
        for d in v:
            scope, sep, name = d.partition(":")
            if not sep or not scope or not name or any(c.isspace() for c in d):
                raise ValueError(f"did {d!r}: a rucio DID is scope:name (e.g. user.jdoe:user.jdoe.311423.ntuple)")
        return v

    @model_validator(mode="after")
    def _check(self) -> Dataset:
        from ..convert.config import InputEntry

        if not self.files and self.file_list is None and not self.did:
            raise ValueError(f"dataset {self.name}: give files, file_list or did")
        try:
            InputEntry(path="x", type=self.type, mH=self.mH, mS=self.mS, dsid=self.dsid)
        except ValidationError as e:
            raise ValueError(f"dataset {self.name}: " + e.errors()[0]["msg"].removeprefix("Value error, ")) from None
        from ..build.config import BuildInput

        if "path" in self.build:
            raise ValueError(f"dataset {self.name}: build.path is set by the pipeline")
        try:
            BuildInput.model_validate({"path": "x", **self.build})
        except ValidationError as e:
            raise ValueError(
                validation_message(e, f"dataset {self.name} build").removeprefix("invalid config from ")
            ) from None
        return self


class ConvertStage(BaseModel):
    """``crbatch convert divert``: one job per input file, or per bundle of files."""

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(default_factory=dict, description="crbatch convert divert config keys")
    resources: Resources = _resources(cpus=1, memory="3 GB", disk="4 GB", runtime="2h", retries=3)
    files_per_job: int = Field(1, ge=1, le=10000, description="input files converted by one job (each its own shard)")
    target_runtime: int | None = Field(
        None, description="instead: group files into jobs of about this long (seconds, '20m'), estimated from the "
        "file sizes at mb_per_s",
    )  # fmt: skip
    mb_per_s: float = Field(80.0, gt=0, description="conversion speed assumed by target_runtime, MB of ntuple per s")

    @field_validator("target_runtime", mode="before")
    @classmethod
    def _target(cls, v: Any) -> int | None:
        return None if v is None else parse_duration_s(v)

    @model_validator(mode="after")
    def _check(self) -> ConvertStage:
        from ..convert.config import ConvertDivertConfig

        _check_options(ConvertDivertConfig, self.options, {"inputs", "output_dir"})
        return self


class BuildStage(BaseModel):
    """``crbatch build``: all shards → training datasets."""

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(default_factory=dict, description="crbatch build config keys")
    resources: Resources = _resources(cpus=2, memory="8 GB", disk="50 GB", runtime="6h", retries=2)

    @model_validator(mode="after")
    def _check(self) -> BuildStage:
        from ..build.config import BuildConfig

        _check_options(BuildConfig, self.options, {"inputs", "output_dir"})
        return self


class TrainStage(BaseModel):
    """``crbatch train``: one GPU job that checkpoints every epoch and resumes by itself."""

    model_config = ConfigDict(extra="forbid")

    run: int = Field(0, ge=0, description="run number: <storage>/training_results/<model_name>/<run:05d>")
    options: dict[str, Any] = Field(default_factory=dict, description="crbatch train config keys")
    resources: Resources = _resources(cpus=4, memory="16 GB", disk="10 GB", runtime="24h", gpus=1, retries=3)
    checkpoint: Literal["shared", "transfer"] = Field(
        "shared", description="shared: the run directory on shared storage holds the checkpoint; transfer: "
        "HTCondor carries it across evictions (transfer_checkpoint_files)",
    )  # fmt: skip
    checkpoint_every: int | None = Field(
        None, description="seconds: also checkpoint and exit 85 this often (HTCondor self-checkpointing)"
    )
    max_requeues: int = Field(50, ge=0, description="Slurm: requeue a checkpointed job at most this many times")
    scan: dict[str, list[Any]] = Field(
        default_factory=dict, description="campaign: training options and their values; every combination is one "
        "run (crbatch/batch/scan.py)",
    )  # fmt: skip
    option_sets: list[dict[str, Any]] = Field(
        default_factory=list, description="campaign: explicit sets of training options, each combined with the scan"
    )

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _every(cls, v: Any) -> int | None:
        return None if v is None else parse_duration_s(v)

    @model_validator(mode="after")
    def _check(self) -> TrainStage:
        from ..train.config import TrainConfig

        reserved = {"data", "output_dir", "main_training_file", "cr_training_file", "checkpoint_exit_code"}
        _check_options(TrainConfig, self.options, reserved)
        if "model_name" in self.options:
            check_name(str(self.options["model_name"]), "train.options.model_name")
        from .scan import check_points, expand

        points = expand(self.scan, self.option_sets)
        check_points(points, self.options)
        if len(points) > 1 and self.checkpoint == "transfer":
            raise ValueError("train.checkpoint: transfer holds one run directory per job description; "
                             "a campaign (train.scan) needs checkpoint: shared")  # fmt: skip
        return self

    @property
    def points(self) -> list[Any]:
        """The runs: one :class:`~crbatch.batch.scan.RunPoint` per training (one unnamed without scan)."""
        from .scan import expand

        return expand(self.scan, self.option_sets)

    def epochs_of(self, point: Any) -> int:
        from ..train.config import TrainConfig

        return int({**self.options, **point.options}.get("epochs", TrainConfig.model_fields["epochs"].default))


class ExportOptions(BaseModel):
    """What the analysis exports: the epoch it chose (and evaluated), so the model that ships is the one
    in the report."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="export the analysed epoch (crbatch analyze --export-dir)")
    format: Literal["fdeep", "onnx", "onnx-raw", "all"] = Field(
        "all", description="frugally-deep JSON, ONNX, ONNX with the preprocessing inside, or all"
    )
    epoch: int | None = Field(
        None, description="null: the epoch the analysis chooses; a number: analyse (and export) that epoch instead"
    )
    check_jets: int = Field(256, ge=1, description="synthetic jets of the export's parity check")


class AnalyzeStage(BaseModel):
    """``crbatch analyze`` (the report) and ``crbatch export`` (the deployable model), one job."""

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(default_factory=dict, description="crbatch analyze config keys")
    baselines: list[str] = Field(
        default_factory=list, description="models the report compares the run with (crbatch analyze --baseline; "
        "relative file paths: to the pipeline YAML)",
    )  # fmt: skip
    export: ExportOptions = Field(default_factory=ExportOptions)
    campaign: CampaignConfig = Field(
        default_factory=CampaignConfig, description="a campaign (train.scan): option-set grouping and the rule "
        "that picks the exported run (docs/campaigns.md)",
    )  # fmt: skip
    resources: Resources = _resources(cpus=2, memory="8 GB", disk="4 GB", runtime="4h", retries=2)

    @model_validator(mode="after")
    def _check(self) -> AnalyzeStage:
        if self.options:  # importing the analysis costs seconds: only when there is something to check
            from ..evaluate.analyze import AnalyzeConfig

            _check_options(AnalyzeConfig, self.options, {"runs", "base", "output_dir", "name", "baselines", "campaign",
                                                         "export_dir", "export_format", "export_check_jets"})  # fmt: skip
        return self


class RucioOptions(BaseModel):
    """How ``submit`` turns rucio DIDs into file replicas (the rucio client's own configuration —
    ``rucio.cfg``, ``$RUCIO_CONFIG``, the account and credentials — is used as it is)."""

    model_config = ConfigDict(extra="forbid")

    rse_preference: list[str] = Field(
        default_factory=list, description="RSEs in order of preference; a file without a replica there takes any other"
    )
    rse_expression: str | None = Field(None, description="only replicas on RSEs matching this rucio expression")
    strict: bool = Field(False, description="refuse a file that has no replica on a preferred RSE")
    scheme: str = Field("root", description="replica protocol (crbatch reads root://)")


class SlurmOptions(BaseModel):
    """Site-specific sbatch options (the HTCondor equivalent is the site profile)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    gpu_partition: str | None = Field(None, description="partition of the training job (default: partition)")
    account: str | None = None
    qos: str | None = None
    signal_before: int = Field(300, ge=10, description="seconds before the time limit to checkpoint (--signal)")
    options: list[str] = Field(default_factory=list, description="more sbatch options, e.g. ['--constraint=a100']")

    @field_validator("options")
    @classmethod
    def _opts(cls, v: list[str]) -> list[str]:
        for o in v:
            if not o.startswith("-") or "\n" in o:
                raise ValueError(f"slurm.options: {o!r} is not an sbatch option (e.g. '--constraint=a100')")
        return v


class Pipeline(BaseModel):
    """A whole pipeline: convert → build → train → analyze/export on one storage root."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="names the datasets, model, reports, logs and job status on the storage")
    storage: StorageRoot = Field(
        description="storage root: a shared path every job sees (relative: to the YAML file), or root://host//path "
        "(jobs stage their inputs and outputs through XRootD)"
    )
    image: str | None = Field(None, description="container image: docker://..., a /cvmfs path or a .sif (null: host)")
    site: str = Field("docker", description="HTCondor site profile: a name in submit/sites/ or a YAML file")
    jobs_dir: Path | None = Field(
        None,
        description="jobs/*.sh as the worker sees them (default: this checkout's jobs/; HTCondor with an image: "
        "/opt/crbatch/jobs)",
    )
    env: dict[str, str] = Field(default_factory=dict, description="environment of every job (e.g. CRBATCH)")
    datasets: list[Dataset] = Field(min_length=1)
    convert: ConvertStage = Field(default_factory=ConvertStage)
    build: BuildStage = Field(default_factory=BuildStage)
    train: TrainStage = Field(default_factory=TrainStage)
    analyze: AnalyzeStage = Field(default_factory=AnalyzeStage)
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)
    rucio: RucioOptions = Field(default_factory=RucioOptions)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "pipeline name")

    @field_validator("jobs_dir")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        if v is not None and any(c in str(v) for c in "\n\r\0"):
            raise ValueError(f"{str(v)!r}: a path with a line break cannot be passed to a scheduler")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ValueError(f"env: {k!r} is not an environment variable name")
            if any(c in str(val) for c in "\n\r\0"):
                raise ValueError(f"env.{k}: a value with a line break cannot be passed to a scheduler")
        return {k: str(val) for k, val in v.items()}

    @model_validator(mode="after")
    def _check(self) -> Pipeline:
        names = [d.name for d in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names must be unique: {', '.join(dup)}")
        if self.remote and self.train.checkpoint == "transfer":
            raise ValueError("train.checkpoint: transfer is for shared storage; with root:// storage the run "
                             "directory is staged out at every checkpoint (use checkpoint: shared)")  # fmt: skip
        return self

    @property
    def remote(self) -> bool:
        """Storage is an XRootD URL: jobs stage inputs in and outputs out (no shared file system)."""
        from ..storage import RemotePath

        return isinstance(self.storage, RemotePath)

    @property
    def model_name(self) -> str:
        """The training's model name: ``train.options.model_name`` or the pipeline name."""
        return str(self.train.options.get("model_name", self.name))

    @property
    def epochs(self) -> int:
        from ..train.config import TrainConfig

        return int(self.train.options.get("epochs", TrainConfig.model_fields["epochs"].default))


def _absolute(base: Path, p: Path | str) -> Path:
    # abspath also folds "..": the paths end up in logs and status tables people read
    return Path(os.path.abspath(base / Path(p).expanduser()))


def is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def is_remote(text: str) -> bool:
    from ..storage import is_url as xrootd_url

    return xrootd_url(text)


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the YAML's relative paths absolute against ``base`` (the YAML file's directory)."""
    out = dict(data)
    for key in ("storage", "jobs_dir"):
        if out.get(key) is not None and not (isinstance(out[key], str) and is_url(out[key])):
            out[key] = str(_absolute(base, out[key]))
    sets = []
    for d in out.get("datasets") or []:
        if not isinstance(d, dict):
            sets.append(d)
            continue
        d = dict(d)
        files = d.get("files")
        if isinstance(files, str):
            files = [files]
        if isinstance(files, list):
            d["files"] = [f if not isinstance(f, str) or is_url(f) else str(_absolute(base, f)) for f in files]
        if d.get("file_list") is not None:
            d["file_list"] = str(_absolute(base, d["file_list"]))
        sets.append(d)
    if sets:
        out["datasets"] = sets
    an = out.get("analyze")
    if isinstance(an, dict) and isinstance(an.get("baselines"), list):  # files relative to the YAML; run specs kept
        an = dict(an)
        an["baselines"] = [_baseline_path(base, b) for b in an["baselines"]]
        out["analyze"] = an
    site = out.get("site")
    if isinstance(site, str) and ("/" in site or site.endswith((".yaml", ".yml"))):
        out["site"] = str(_absolute(base, site))
    return out


def _baseline_path(base: Path, spec: Any) -> Any:
    """``[LABEL=][reference:]FILE`` with FILE made absolute when it exists relative to ``base``."""
    if not isinstance(spec, str):
        return spec
    label, _, rest = spec.partition("=") if "=" in spec and not (base / spec).exists() else ("", "", spec)
    prefix = "reference:" if rest.startswith("reference:") else ""
    path = rest[len(prefix) :]
    if path and not Path(path).is_absolute() and (base / path).exists():
        path = str(_absolute(base, path))
    return f"{label}={prefix}{path}" if label else f"{prefix}{path}"


def load_pipeline(path: Path, overrides: dict[str, Any] | None = None) -> Pipeline:
    """Read and validate a pipeline YAML (``overrides``: nested ``--set`` values, applied first)."""
    path = Path(path)
    data = load_yaml(path)
    if overrides:
        data = deep_merge(data, overrides)
    data = resolve_paths(data, path.resolve().parent)
    try:
        return Pipeline.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, str(path)).replace("Value error, ", "")) from None
