"""Settings tables: a TOML document and environment variables made into typed
dataclasses, with one-line errors naming the setting. What the settings are, and
which values are valid, is config.py's; this is only the reading and the types.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

MiB = 1024 * 1024
GiB = 1024 * MiB


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; str() is a one-line explanation."""


class ByteSize(int):
    """An int setting that also accepts '6MiB', '512 KiB', '1GB' and the like."""


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 6291456 or '6MiB')")
    # Decimal, not float: "2.01KB" is 2010 bytes, and integers above 2**53 stay exact.
    return int(Decimal(match.group(1)) * _UNITS[match.group(2).lower()])


def build_settings(cls: type, raw: dict[str, Any], environ: Mapping[str, str], prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the tables ``raw``, each setting
    ``a.b`` overridden by the variable ``{prefix}A_B`` of ``environ``."""
    return _build(cls, _merge(raw, _env_overrides(cls, (), environ, prefix)), ())


def _env_overrides(
    cls: type, path: tuple[str, ...], environ: Mapping[str, str], prefix: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, hint in get_type_hints(cls).items():
        here = (*path, name)
        table = _table_of(hint)
        if table is not None:
            nested = _env_overrides(table, here, environ, prefix)
            if nested:
                out[name] = nested
            continue
        if _tables_of(hint) is not None:
            continue  # lists of tables (auth.tokens, auth.signing_keys): the file only
        var = prefix + "_".join(here).upper()
        if var in environ:
            out[name] = environ[var]
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, raw: Any, path: tuple[str, ...]) -> Any:
    where = ".".join(path) or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        # Escaped, so that a key with a newline cannot break the one-line message.
        name = ".".join((*path, unknown[0])).encode("unicode_escape").decode("ascii")
        raise ConfigError(f"{name}: unknown setting")
    values = {}
    for name, hint in hints.items():
        if name not in raw:
            continue
        here = (*path, name)
        table, tables = _table_of(hint), _tables_of(hint)
        if table is not None:
            values[name] = _build(table, raw[name], here)
        elif tables is not None:
            values[name] = _build_tables(hint, tables, raw[name], here)
        else:
            values[name] = _coerce(hint, raw[name], ".".join(here))
    return cls(**values)


def _table_of(hint: Any) -> type | None:
    """The dataclass a setting of type ``X`` or ``X | None`` is a table of."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next((a for a in get_args(hint) if a is not type(None)), None)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _tables_of(hint: Any) -> type | None:
    """The dataclass of the tables of a ``tuple[X, ...]`` or ``dict[str, X]`` setting."""
    args, origin = get_args(hint), get_origin(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _table_of(args[0])
    if origin is dict and len(args) == 2:
        return _table_of(args[1])
    return None


def _build_tables(hint: Any, table: type, raw: Any, path: tuple[str, ...]) -> Any:
    where = ".".join(path)
    if get_origin(hint) is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table of tables")
        return {name: _build(table, value, (*path, name)) for name, value in raw.items()}
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected an array of tables ([[{where}]])")
    return tuple(_build(table, value, (*path[:-1], f"{path[-1]}[{i}]")) for i, value in enumerate(raw))


def _coerce(hint: Any, value: Any, name: str) -> Any:
    optional = hint in (str | None, Path | None)
    if optional and value in ("", None):
        return None
    target = {str | None: str, Path | None: Path}.get(hint, hint)
    try:
        if target is ByteSize:
            if isinstance(value, bool):
                raise ValueError("expected a size")
            return ByteSize(parse_size(value) if isinstance(value, str) else int(value))
        if target is bool:
            return _to_bool(value)
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected a whole number, got {value!r}")
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {value!r}")
            return number
        if target is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value
        if target is Path:
            if not isinstance(value, str):
                raise ValueError(f"expected a path string, got {value!r}")
            return Path(value)
        if target == tuple[str, ...]:
            # A TOML list, or from the environment a comma-separated string.
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"expected a list of strings, got {value!r}")
            return tuple(i.strip() for i in items if i.strip() or not isinstance(value, str))
        if target == tuple[int, ...]:
            # A TOML list of whole numbers, or from the environment "360,720".
            items = [i for i in value.split(",") if i.strip()] if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise ValueError(f"expected a list of whole numbers, got {value!r}")
            return tuple(_coerce(int, i, name) for i in items)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"expected true or false, got {value!r}")
