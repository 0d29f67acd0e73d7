"""HTCondor site profiles: the submit keys that differ between pools (submit/sites/*.yaml).

A profile says how a site names the container image (``MY.SingularityImage`` at CERN,
``+SingularityImage`` on the OSG, ``docker_image`` in the docker universe, ``container_image`` in
the container universe), how it wants the runtime (``+MaxRuntime``/``+JobFlavour`` at CERN, a short
queue under 4 h at UChicago), its requirements and any other commands. Everything else (executable,
arguments, resources, retries, checkpointing, logs) is crbatch's and the same everywhere.

``site:`` in a pipeline is a profile name (``submit/sites/<name>.yaml``) or the path of a profile
file — users add their own site by writing one (docs/batch.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import load_yaml, validation_message
from ..errors import ConfigError
from .pipeline import parse_duration_s

SITES_DIR = Path(__file__).resolve().parents[2] / "submit" / "sites"
KEY_RE = re.compile(r"^(\+|MY\.)?[A-Za-z_][A-Za-z0-9_.]*$")
RESERVED = frozenset({"executable", "arguments", "output", "error", "log", "queue", "environment"})
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


def _check_commands(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, val in v.items():
        if not KEY_RE.match(k):
            raise ValueError(f"{k!r} is not a submit command or attribute name")
        if k.lower() in RESERVED:
            raise ValueError(f"{k} is set by crbatch; a site profile cannot change it")
        text = str(val).lower() if isinstance(val, bool) else str(val)
        if any(c in text for c in "\n\r\0"):
            raise ValueError(f"{k}: the value must be one line")
        out[k] = text.strip()
    return out


class ContainerRule(BaseModel):
    """How the site names the pipeline's image."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="submit command or attribute: docker_image, container_image, MY.SingularityImage, ...")
    template: str = Field("{ref}", description="for docker references: {ref}, {registry}, {repository}, {tag}")
    classad_string: bool = Field(False, description="the value is a ClassAd string (+/MY. attributes): quote it")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not KEY_RE.match(v):
            raise ValueError(f"{v!r} is not a submit command or attribute name")
        return v


class RuntimeRule(BaseModel):
    """How the site wants the job's wall-time limit."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, description="submit command or attribute taking seconds (e.g. +MaxRuntime)")
    flavour_key: str | None = Field(None, description="attribute naming a runtime class (e.g. +JobFlavour)")
    flavours: dict[str, int] = Field(
        default_factory=dict, description="class name → its limit (the smallest that fits)"
    )

    @field_validator("flavours", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> Any:
        return {k: parse_duration_s(s) for k, s in v.items()} if isinstance(v, dict) else v


class RuntimeCommands(BaseModel):
    """Commands for jobs whose runtime is at most ``max_runtime`` (e.g. a short queue)."""

    model_config = ConfigDict(extra="forbid")

    max_runtime: int
    commands: dict[str, str]

    @field_validator("max_runtime", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> int:
        return parse_duration_s(v)

    @field_validator("commands", mode="before")
    @classmethod
    def _cmds(cls, v: Any) -> Any:
        return _check_commands(v) if isinstance(v, dict) else v


class SiteProfile(BaseModel):
    """One HTCondor site."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    universe: Literal["vanilla", "docker", "container"] = "vanilla"
    container: ContainerRule | None = Field(None, description="how the image is named (null: no container)")
    runtime: RuntimeRule = Field(default_factory=RuntimeRule)
    requirements: str | None = Field(None, description="a ClassAd expression every job needs")
    commands: dict[str, str] = Field(default_factory=dict, description="more submit commands, every job")
    gpu_commands: dict[str, str] = Field(default_factory=dict, description="more submit commands, GPU jobs")
    by_runtime: list[RuntimeCommands] = Field(default_factory=list, description="the first that fits applies")
    shared_storage: bool = Field(
        True, description="the jobs see the submit side's file systems (false: storage must be a root:// URL)"
    )

    @field_validator("commands", "gpu_commands", mode="before")
    @classmethod
    def _cmds(cls, v: Any) -> Any:
        return _check_commands(v) if isinstance(v, dict) else v

    @field_validator("requirements")
    @classmethod
    def _req(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "\n\r\0"):
            raise ValueError("requirements must be one line")
        return v

    def image_value(self, image: str) -> str | None:
        """The value of ``container.key`` for ``image`` (None when the profile runs no container)."""
        if self.container is None:
            return None
        return self.container.template.format(**image_parts(image)) if is_reference(image) else image

    def runtime_commands(self, seconds: int) -> dict[str, str]:
        out: dict[str, str] = {}
        r = self.runtime
        if r.flavour_key and r.flavours:
            fits = sorted((limit, name) for name, limit in r.flavours.items() if limit >= seconds)
            name = fits[0][1] if fits else max(r.flavours, key=lambda k: r.flavours[k])
            out[r.flavour_key] = f'"{name}"'
        if r.key:
            out[r.key] = str(seconds)
        for rule in self.by_runtime:
            if seconds <= rule.max_runtime:
                out.update(rule.commands)
                break
        return out


def is_reference(image: str) -> bool:
    """A docker reference (``docker://x/y:t`` or ``x/y:t``), as opposed to a path or a .sif."""
    return not (
        image.startswith("/") or image.endswith(".sif") or ("://" in image and not image.startswith("docker://"))
    )


def image_parts(image: str) -> dict[str, str]:
    """``docker://ghcr.io/org/img:1.0`` → ref, registry, repository, tag (Docker Hub's defaults filled in)."""
    ref = image.removeprefix("docker://")
    name, tag = ref, "latest"
    if "@" in ref:
        name, digest = ref.split("@", 1)
        tag = f"@{digest}"
    elif ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "registry.hub.docker.com", name if "/" in name else f"library/{name}"
    return {"ref": ref, "registry": registry, "repository": repository, "tag": tag.removeprefix(":")}


def check_image(image: str) -> str:
    if not IMAGE_RE.match(image.removeprefix("docker://")):
        raise ConfigError(f"image {image!r}: only letters, digits and . _ / : @ + - are allowed")
    return image


def available() -> list[str]:
    return sorted(p.stem for p in SITES_DIR.glob("*.yaml"))


def load_site(site: str) -> SiteProfile:
    """A profile by name (submit/sites/<name>.yaml) or by file path."""
    path = Path(site)
    if not (site.endswith((".yaml", ".yml")) or "/" in site):
        path = SITES_DIR / f"{site}.yaml"
        if not path.exists():
            raise ConfigError(f"site {site!r}: no such profile; known: {', '.join(available()) or 'none'} "
                              "(or give the path of a profile YAML)")  # fmt: skip
    try:
        return SiteProfile.model_validate(load_yaml(path))
    except ValidationError as e:
        raise ConfigError(validation_message(e, str(path)).replace("Value error, ", "")) from None
