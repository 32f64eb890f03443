"""Byte sizes as users write them: 256KB (x1000), 256KiB (x1024), 262144."""

from __future__ import annotations

import re
from decimal import Decimal

from .errors import PlannerError

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise PlannerError(
            f"malformed size {text!r}: use bytes or a unit such as 256KB, 256KiB, 1MB, 1MiB"
        )
    value = Decimal(match.group(1)) * _UNITS[match.group(2)]
    if value != value.to_integral_value():
        raise PlannerError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(nbytes: int) -> str:
    return f"{nbytes:,} B"
