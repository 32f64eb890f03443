"""Table-driven checks for data that arrives from outside (profiles, plan JSON).

Each table maps a key to a `Field`; `check_table` returns the checked values with
defaults filled in, or raises one PlannerError line naming the place and the key.
Types are strict: a string is not a boolean, a boolean is not a number, a float is
not an integer; numbers are finite and inside the field's range; unknown keys are
reported. Adding a key to a format is one line in its table.

Hand-written rather than jsonschema/pydantic: sizes with units ("256KiB"), int32
bounds and one-line messages that name the file and key are the whole job, and a
schema library would need custom validators for each of them anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PlannerError
from .units import INT32_MAX, parse_size

_MISSING = object()


@dataclass(frozen=True)
class Field:
    kind: str  # str | bool | int | number | size | list | tables | custom
    required: bool = False
    default: Any = None
    minimum: float = 0
    maximum: float = INT32_MAX
    nullable: bool = False  # JSON null allowed (becomes None)
    choices: tuple[Any, ...] = ()
    check: Callable[[Any, str], Any] | None = None  # kind "custom": value, where -> value
    max_items: int = 1_000_000  # lists and tables


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {str: "a string", int: "an integer", float: "a number", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def check_value(value: Any, spec: Field, where: str) -> Any:
    if value is None and spec.nullable:
        return None
    kind = spec.kind
    if kind == "custom":
        assert spec.check is not None
        return spec.check(value, where)
    if kind == "str":
        if not isinstance(value, str):
            raise PlannerError(f"{where} must be a string, not {_type_name(value)}")
        if len(value) > spec.maximum:
            raise PlannerError(f"{where} is longer than {int(spec.maximum):,} characters")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise PlannerError(f"{where} must be true or false, not {_type_name(value)} "
                               f"{value!r}"[:200])
    elif kind in ("int", "number"):
        ok = (int,) if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            want = "an integer" if kind == "int" else "a number"
            raise PlannerError(f"{where} must be {want}, not {_type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise PlannerError(f"{where} must be finite, not {value}")
        if not spec.minimum <= value <= spec.maximum:
            raise PlannerError(f"{where} = {value:g} is out of range "
                               f"{spec.minimum:g}..{spec.maximum:g}")
    elif kind == "size":
        value = parse_size(value, where, int(spec.maximum), int(spec.minimum))
    elif kind in ("list", "tables"):
        if not isinstance(value, (list, tuple)):  # tuples: an in-memory to_json round trip
            raise PlannerError(f"{where} must be a list, not {_type_name(value)}")
        if len(value) > spec.max_items:
            raise PlannerError(f"{where} has {len(value):,} items, more than {spec.max_items:,}")
    else:  # pragma: no cover - a table typo
        raise AssertionError(kind)
    if spec.choices and value not in spec.choices:
        raise PlannerError(f"{where} = {value!r} is not one of "
                           f"{', '.join(map(str, spec.choices))}")
    return value


def check_table(data: Any, fields: Mapping[str, Field], where: str,
                ignored: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The checked values of `data` (a dict) by `fields`; keys in `ignored` are dropped."""
    if not isinstance(data, dict):
        raise PlannerError(f"{where} must be a table, not {_type_name(data)}")
    unknown = sorted(set(map(str, data)) - set(fields) - ignored)
    if unknown:
        raise PlannerError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(fields)})")
    out: dict[str, Any] = {}
    for key, spec in fields.items():
        value = data.get(key, _MISSING)
        if value is _MISSING:
            if spec.required:
                raise PlannerError(f"{where}: missing '{key}'")
            out[key] = spec.default
            continue
        out[key] = check_value(value, spec, f"{where}: '{key}'")
    return out


def check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PlannerError(f"{what} '{name}' appears twice: names must be unique")
        seen.add(name)
