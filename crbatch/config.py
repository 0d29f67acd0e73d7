"""Stage configs: pydantic models, loaded from YAML with command-line overrides.

Resolution order: model defaults < ``--config FILE.yaml`` (deep-merged) < ``--set a.b=v`` <
per-field flags. Unknown keys are errors (the reference silently ignored them), booleans can be
switched both ways (``--x/--no-x``), and every command can print its resolved config
(``--print-config``) instead of running.
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, InputMissing

M = TypeVar("M", bound=BaseModel)


class StageConfig(BaseModel):
    """Base of every stage's config model."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict stored in every output this config made."""
        return {"model": type(self).__name__, "values": self.model_dump(mode="json")}


def _yaml_value(text: str) -> Any:
    return yaml.safe_load(text)


def _scalar_type(annotation: Any) -> tuple[Any, bool] | None:
    """(scalar type, is_list) of an annotation a flag can carry, or None for nested/complex ones."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _scalar_type(args[0])
        # e.g. ``int | str``: the flag's text is parsed as YAML and the model validates it.
        return (_yaml_value, False) if all(a in (str, int, float) for a in args) else None
    if origin is list:
        inner = _scalar_type(typing.get_args(annotation)[0])
        return (inner[0], True) if inner and not inner[1] else None
    if origin is typing.Literal:
        return (annotation, False)
    if annotation in (str, int, float, bool, Path) or (
        isinstance(annotation, type) and issubclass(annotation, enum.Enum)
    ):
        return (annotation, False)
    return None


def add_config_arguments(
    parser: argparse.ArgumentParser, model: type[StageConfig], skip: frozenset[str] | set[str] = frozenset()
) -> None:
    """Add ``--config``, ``--set``, ``--print-config`` and one flag per scalar field of ``model``."""
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML config; flags below override it")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, also nested ones (a.b=1); VALUE is parsed as YAML",
    )  # fmt: skip
    g.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        st = _scalar_type(field.annotation)
        if st is None:
            continue
        typ, is_list = st
        flag = "--" + name.replace("_", "-")
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, enum.Enum):
            default = default.value
        shown = str(default) if isinstance(default, Path) else repr(default)
        help_text = (field.description or "").replace("%", "%%") + f" (default: {shown})"
        kw: dict[str, Any] = {"dest": f"cfg__{name}", "default": None, "help": help_text}
        if typ is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(typ) is typing.Literal:
            kw["choices"] = list(typing.get_args(typ))
            typ = type(kw["choices"][0])
        elif isinstance(typ, type) and issubclass(typ, enum.Enum):
            kw["choices"] = [e.value for e in typ]
            typ = type(kw["choices"][0])
        if is_list:
            kw["nargs"] = "+"
        metavar = None if "choices" in kw else name.upper()
        g.add_argument(flag, type=typ, metavar=metavar, **kw)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: Path, allow_list: bool = False) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} not found; check the --config path") from e
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if data is None:
        return {}
    if not isinstance(data, dict) and not (allow_list and isinstance(data, list)):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def load_input_list(path: Path, model: type[M], bare: str | None = None) -> list[M]:
    """The entries of a YAML input list (a sequence, or a mapping with key ``inputs``), validated as ``model``.

    ``bare``: the field a plain string entry fills (e.g. ``path``); without it every entry is a mapping.
    Missing file: exit 10; bad YAML, shape or entry: exit 3, naming the entry.
    """
    if not path.exists():
        raise InputMissing(f"{path}: input list not found; check the path")
    data: Any = load_yaml(path, allow_list=True)
    items = data.get("inputs", data.get("input_files")) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a list of inputs (or a mapping with key 'inputs')")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(model.model_validate({bare: item} if bare and isinstance(item, str) else item))
        except ValidationError as e:
            raise ConfigError(validation_message(e, f"{path} entry {i}")) from e
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a mapping")
    d[keys[-1]] = value


def parse_set_items(items: list[str]) -> dict[str, Any]:
    """``--set a.b=v`` items as a nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from e
        _set_dotted(out, k.strip(), value)
    return out


def validation_message(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        parts.append(f"{loc}: {msg}")
    more = f" (+{len(e.errors()) - 3} more)" if len(e.errors()) > 3 else ""
    return f"invalid config from {source}: " + "; ".join(parts) + more


def build_config(model: type[M], file: Path | None = None, overrides: dict[str, Any] | None = None) -> M:
    """Model defaults < YAML file < ``overrides`` (a nested dict), validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if file is not None:
        data = load_yaml(file)
        source = str(file)
    if overrides:
        data = deep_merge(data, overrides)
        source += " + command line"
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, source)) from e


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The per-field flags the user gave (``--epochs 3`` → ``{"epochs": 3}``)."""
    return {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}


def _leaves(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, str(k)))
        else:
            yield (*prefix, str(k)), v


def _has(d: Any, path: tuple[str, ...]) -> bool:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def _field_at(model: type[BaseModel], path: tuple[str, ...]) -> Any | None:
    """The pydantic FieldInfo of a dotted key, or None when it is not a (nested) field of ``model``."""
    field = None
    for i, k in enumerate(path):
        fields = getattr(model, "model_fields", None)
        if not fields or k not in fields:
            return None
        field = fields[k]
        if i < len(path) - 1:
            inner = _scalar_or_model(field.annotation)
            if inner is None:
                return None
            model = inner
    return field


def _scalar_or_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in typing.get_args(annotation):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def check_overridden(model: type[BaseModel], layers: list[tuple[str, dict[str, Any]]]) -> None:
    """A value a later layer overrides must still be valid: ``--set epochs=abc --epochs 1`` is an
    error (exit 3), not silently ignored. ``layers``: (source, nested dict), lowest first."""
    from pydantic import TypeAdapter

    for i, (source, layer) in enumerate(layers):
        later = [(s, d) for s, d in layers[i + 1 :] if d]
        if not later:
            continue
        for path, value in _leaves(layer):
            winner = next((s for s, d in later if _has(d, path)), None)
            if winner is None:
                continue
            field = _field_at(model, path)
            if field is None:  # unknown keys are reported by the model itself
                continue
            try:
                ann: Any = typing.Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
                TypeAdapter(ann).validate_python(value)
            except ValidationError as e:
                msg = e.errors()[0]["msg"] if e.errors() else str(e)
                raise ConfigError(
                    f"invalid config from {source}: {'.'.join(path)}={value!r}: {msg} "
                    f"(overridden by {winner}, but a bad value is an error wherever it comes from)"
                ) from e


def resolve_config(model: type[M], args: argparse.Namespace, extra: dict[str, Any] | None = None) -> M:
    """The config for a command: its YAML, ``--set`` values, per-field flags, then ``extra``."""
    sets = parse_set_items(getattr(args, "set", []) or [])
    flags = flag_values(args)
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    file = getattr(args, "config", None)
    layers = [("--set", sets), ("the command-line flags", flags), ("the command line", extra)]
    if file is not None:
        layers.insert(0, (str(file), load_yaml(file)))
    check_overridden(model, layers)
    over = deep_merge(deep_merge(sets, flags), extra)
    return build_config(model, file, over)
