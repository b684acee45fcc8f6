"""Strict YAML configs: frozen dataclass schemas, dotted ``--set`` overrides, and a saved resolved copy.

Precedence is dataclass defaults < YAML file < ``--set key.sub=value``. Unknown keys are errors with a
"did you mean" suggestion, values are checked and coerced to the schema's types (``5e-4`` in YAML is a
float, ``--set meta.enabled=false`` is ``False``), and a field may restrict its values with
``field(metadata={"choices": (...)})``. Every problem is a :class:`~mlbseg.errors.UserError` naming the
file and the dotted key.

The shipped configs (``mlbseg/configs/<task>/<name>.yaml``, package data) are listed by
:func:`shipped_configs` and found by name with :func:`resolve_config_path`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mlbseg.errors import UserError

T = TypeVar("T")

SHIPPED_DIR = Path(__file__).with_name("configs")  # the shipped configs: SHIPPED_DIR/<task>/<name>.yaml
TASKS = {"seg": "segmentation", "cls": "classification"}


@dataclasses.dataclass(frozen=True)
class ShippedConfig:
    """One config shipped with the package, e.g. ``seg/promise12_mlbseg``."""

    task: str  # "seg" or "cls"
    name: str  # the file name without ``.yaml``
    path: Path
    summary: str  # the file's first comment line

    @property
    def qualified(self) -> str:
        """``<task>/<name>``, the name that is never ambiguous."""
        return f"{self.task}/{self.name}"


def shipped_configs(task: str | None = None) -> list[ShippedConfig]:
    """The shipped configs (of one task: ``seg`` or ``cls``; None: both), segmentation first, by name."""
    found = []
    for name in TASKS if task is None else (task,):
        for path in sorted((SHIPPED_DIR / name).glob("*.yaml")):
            found.append(ShippedConfig(name, path.stem, path, _summary(path)))
    return found


def resolve_config_path(name_or_path: str | Path, task: str | None = None) -> Path:
    """The config file that ``name_or_path`` names: a path that exists wins, else a shipped config.

    A shipped config is named ``<name>`` or ``<task>/<name>`` (``.yaml`` optional), e.g.
    ``promise12_mlbseg``, ``cifar10`` or ``cls/cifar10``. With ``task`` only that task's configs count.

    Raises:
        UserError: Neither a file nor exactly one shipped config; the message lists the shipped names.

    Example:
        >>> resolve_config_path("cls/cifar10").relative_to(SHIPPED_DIR).as_posix()
        'cls/cifar10.yaml'
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    text = str(name_or_path).removesuffix(".yaml")
    wanted_task, _, name = text.rpartition("/")
    candidates = shipped_configs(task)
    matches = [c for c in candidates if c.name == name and wanted_task in ("", c.task)]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        options = " or ".join(match.qualified for match in matches)
        raise UserError(f"{name_or_path}: more than one shipped config has this name; give {options}")
    names = ", ".join(c.name if task is not None else c.qualified for c in candidates) or "none"
    kind = f"shipped {TASKS[task]} config" if task is not None else "shipped config"
    raise UserError(
        f"{name_or_path}: no such file and no {kind} of that name; shipped: {names} (see `mlbseg configs`)"
    )


def absolute_path(value: str | None) -> str | None:
    """``value`` as an absolute path (``~`` expanded, relative to the working directory); None stays None.

    Symbolic links are kept as given (``os.path.abspath``), so the path reads as the user typed it.

    Example:
        >>> absolute_path("/data/./prepared/")
        '/data/prepared'
    """
    if value is None:
        return None
    return os.path.abspath(os.path.expanduser(value))


def _summary(path: Path) -> str:
    """The first comment line of a YAML file, without its ``#``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def choice(default: Any, choices: Sequence[Any]) -> Any:
    """A dataclass field whose value must be one of ``choices``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def load_config(schema: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Build a validated ``schema`` instance from a YAML file and ``key.sub=value`` overrides.

    Args:
        schema: A frozen dataclass whose fields are scalars, tuples or nested dataclasses.
        path: The YAML file (a mapping); None uses the schema's defaults only.
        overrides: Dotted assignments, values parsed as YAML (``--set optim.lr=0.01``).
    """
    source = str(path) if path is not None else "defaults"
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
        _assign(values, key.strip().split("."), _parse_value(item, raw))
    if overrides:
        source = f"{source} (with --set)"
    return _build(schema, values, prefix="", source=source)


def config_text(config: Any) -> str:
    """``config`` as YAML that :func:`load_config` reads back to an equal object."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists), for YAML, JSON and checkpoints."""
    return _plain(dataclasses.asdict(config))


def config_from_dict(schema: type[T], values: Mapping[str, Any], source: str = "checkpoint") -> T:
    """Rebuild a config from :func:`to_dict` output (e.g. the copy embedded in a checkpoint)."""
    return _build(schema, dict(values), prefix="", source=source)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _parse_value(item: str, raw: str) -> Any:
    """The YAML value of one ``--set KEY=VALUE`` (empty = null)."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise UserError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the config file (YAML)")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: not a text file; give the config file (YAML)") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the config file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def _assign(values: dict[str, Any], keys: list[str], value: Any) -> None:
    node = values
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def _build(schema: type[T], values: dict[str, Any], prefix: str, source: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(schema)
    for key in values:
        if key not in fields:
            where = f"{prefix}{key}"
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise UserError(f"{source}: unknown config key '{where}'{hint}")
    kwargs = {}
    for name, field in fields.items():
        if name not in values:
            continue
        key = f"{prefix}{name}"
        value = _coerce(hints[name], values[name], key, source)
        allowed = field.metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise UserError(f"{source}: '{key}' must be one of {list(allowed)}, got {value!r}")
        kwargs[name] = value
    return schema(**kwargs)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' is a section; expected a mapping, got {value!r}")
        return _build(hint, value, prefix=f"{key}.", source=source)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _coerce(inner[0], value, key, source)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{source}: '{key}' must be a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(item_type, item, key, source) for item in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{source}: '{key}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{source}: '{key}' must be an integer, got {value!r}")
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{source}: '{key}' must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{source}: '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config field type {hint!r} for '{key}'")


def check_range(
    key: str, value: float | None, low: float | None = None, high: float | None = None, *, strict: str = ""
) -> None:
    """UserError unless ``low ≤ value ≤ high`` (a None ``value`` passes: the key is unset).

    ``strict`` names the bounds that are excluded: ``"low"``, ``"high"`` or ``"both"``.

    Example:
        >>> check_range("optim.momentum", 0.9, 0.0, 1.0, strict="high")
        >>> check_range("train.epochs", 0, 1)
        Traceback (most recent call last):
        mlbseg.errors.UserError: train.epochs: must be 1 or more, got 0
    """
    if value is None:
        return
    low_ok = low is None or (value > low if strict in ("low", "both") else value >= low)
    high_ok = high is None or (value < high if strict in ("high", "both") else value <= high)
    if low_ok and high_ok:
        return
    if high is None:
        bound = f"above {low:g}" if strict in ("low", "both") else f"{low:g} or more"
        raise UserError(f"{key}: must be {bound}, got {value!r}")
    left = "(" if strict in ("low", "both") else "["
    right = ")" if strict in ("high", "both") else "]"
    raise UserError(f"{key}: must be in {left}{low:g}, {high:g}{right}, got {value!r}")
