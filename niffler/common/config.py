"""Typed, validated JSON configs with CLI overrides.

Each module declares its config as a frozen dataclass whose fields are made
with :func:`setting`, giving every key a default, a type and a one-line
description. :func:`load_config` reads one or more JSON files (upstream
cold-extraction splits ``config.json`` and ``system.json``), applies CLI
overrides on top and returns an instance, or raises
:class:`~niffler.common.errors.ConfigError` naming the bad key and the file.

Key names keep upstream Niffler's CamelCase so an existing config loads
unchanged. Keys that upstream needed but Niffler does not (``DCM4CHEBin``)
are accepted and ignored with a log line; ``NifflerSystem`` is honoured: it
names a second file, relative to the first, whose keys are merged under it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from niffler.common.errors import ConfigError, NifflerError

__all__ = [
    "LEGACY_IGNORED_KEYS",
    "describe_config",
    "load_config",
    "log_config",
    "parse_bool",
    "setting",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Upstream keys that configure tools Niffler no longer shells out to.
LEGACY_IGNORED_KEYS = frozenset({"DCM4CHEBin"})
#: Upstream key naming a second config file to merge under the first.
SYSTEM_FILE_KEY = "NifflerSystem"

_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0", ""})
_MASK = "********"


def setting(
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    choices: Iterable[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """Return a dataclass field carrying a config key's default, doc and limits."""
    metadata = {
        "doc": doc,
        "secret": secret,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
    }
    if isinstance(default, (list, dict, set)):
        frozen = tuple(default) if not isinstance(default, dict) else dict(default)
        return dataclasses.field(default_factory=lambda: type(default)(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def parse_bool(value: Any, key: str = "value") -> bool:
    """Return the boolean meant by a JSON or CLI value ("false" means False)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{key}: expected true or false, got {value!r}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Return *value* converted to the annotated type *hint*, or raise ValueError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected an object, got {type(value).__name__}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        return parse_bool(value, key)
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list, bool)) or value is None:
            raise ValueError(f"{key}: expected text, got {value!r}")
        return str(value)
    if hint is Path:
        if not isinstance(value, (str, Path)) or str(value) == "":
            raise ValueError(f"{key}: expected a path, got {value!r}")
        return Path(value).expanduser()
    raise ValueError(f"{key}: unsupported config type {hint!r}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at top level")
    return data


def _collect(paths: Sequence[Path]) -> dict[str, tuple[Any, str]]:
    """Return key -> (value, source) from the files, later files winning."""
    merged: dict[str, tuple[Any, str]] = {}
    for path in paths:
        data = _read_json(path)
        system = data.pop(SYSTEM_FILE_KEY, None)
        if system is not None:
            system_path = Path(str(system))
            if not system_path.is_absolute():
                system_path = path.parent / system_path
            if system_path.exists():
                merged.update({k: (v, str(system_path)) for k, v in _read_json(system_path).items()})
            else:
                log.info("%s names %s, which does not exist; ignored", path, system_path)
        merged.update({k: (v, str(path)) for k, v in data.items()})
    return merged


def load_config(
    model: type[T],
    paths: Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Return an instance of *model* from JSON files plus CLI overrides.

    Parameters
    ----------
    model
        A dataclass whose fields were made with :func:`setting`.
    paths
        JSON files, merged in order (a later file overrides an earlier one).
    overrides
        Key -> value from the command line; ``None`` values are skipped, so an
        unset CLI option never hides the file's value.

    Raises
    ------
    ConfigError
        A file is missing or not JSON, a key is unknown, or a value has the
        wrong type or is out of range. The message names the key and file.
    """
    if not dataclasses.is_dataclass(model):
        raise TypeError(f"{model!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(model)}
    hints = typing.get_type_hints(model)
    raw = _collect([Path(p) for p in paths])
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = (value, "command line")

    values: dict[str, Any] = {}
    for key, (value, source) in raw.items():
        if key in LEGACY_IGNORED_KEYS:
            log.info("config key %s (%s) is not used by Niffler; ignored", key, source)
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        meta = fields[key].metadata
        try:
            coerced = _coerce(value, hints[key], key)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if meta.get("choices") and coerced not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{source}: {key}: {coerced!r} is not one of {allowed}")
        low, high = meta.get("minimum"), meta.get("maximum")
        if isinstance(coerced, (int, float)) and not isinstance(coerced, bool):
            if low is not None and coerced < low:
                raise ConfigError(f"{source}: {key}: {coerced} is below the minimum {low}")
            if high is not None and coerced > high:
                raise ConfigError(f"{source}: {key}: {coerced} is above the maximum {high}")
        values[key] = coerced
    _resolve_paths(values, raw, fields, hints, [Path(p) for p in paths])
    try:
        return model(**values)
    except ConfigError:
        raise
    except (ValueError, NifflerError) as exc:
        # A model's __post_init__ cross-checks keys and names them itself.
        raise ConfigError(str(exc)) from None


#: Keys holding a path that are typed str (upstream's): the rule for relative paths applies to them too.
_STR_PATH_KEYS = frozenset({"CsvFile"})


def _resolve_paths(
    values: dict[str, Any],
    raw: Mapping[str, tuple[Any, str]],
    fields: Mapping[str, Any],
    hints: Mapping[str, Any],
    paths: Sequence[Path],
) -> None:
    """Apply the one rule for relative paths (in place).

    A relative path in a config file is relative to that file's folder; a
    relative default is relative to the (first) config file's folder; a
    relative path given on the command line is relative to the current
    folder. So a daemon that systemd starts with ``/`` as its working folder
    finds what its config names, and the defaults of the shipped configs land
    beside them, in ``configs/``, never in the folder a user happens to be in.
    Without a config file, everything is relative to the current folder.
    """
    first = paths[0].parent if paths else None
    for key, f in fields.items():
        if not (_is_path_type(hints[key]) or key in _STR_PATH_KEYS):
            continue
        source = raw[key][1] if key in raw else None
        if source == "command line":
            continue
        value = values[key] if key in values else _default(f)
        if value is None or value == "" or Path(value).is_absolute():
            continue
        base = Path(source).parent if source is not None else first
        if base is None:
            continue
        resolved = base.absolute() / Path(value)
        values[key] = str(resolved) if isinstance(value, str) else resolved


def _is_path_type(hint: Any) -> bool:
    return hint is Path or Path in typing.get_args(hint)


def _default(f: Any) -> Any:
    factory: Any = f.default_factory
    return f.default if f.default is not dataclasses.MISSING else factory()


def describe_config(config: Any) -> dict[str, Any]:
    """Return the effective config as a JSON-able dict with secrets masked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("secret") and value:
            value = _MASK
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def log_config(config: Any, logger: logging.Logger | None = None) -> None:
    """Log the effective config at DEBUG (``-v``), one key per line, secrets masked."""
    target = logger or log
    target.debug("effective config (%s):", type(config).__name__)
    for key, value in describe_config(config).items():
        target.debug("  %s = %s", key, json.dumps(value))


def config_help(model: type[Any]) -> list[tuple[str, str, Any, str]]:
    """Return (key, type, default, doc) for every key of *model*, for docs and --help."""
    hints = typing.get_type_hints(model)
    rows = []
    for f in dataclasses.fields(model):
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
        rows.append((f.name, type_name, default, f.metadata.get("doc", "")))
    return rows
