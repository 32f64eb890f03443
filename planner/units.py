"""Byte sizes as users write them, bounded by what the target can address.

Accepted forms (case-insensitive, optional space before the unit, decimals allowed
when the result is a whole number of bytes):

- x1000 (SI): ``KB``/``kB``, ``MB``, ``GB`` -- 256KB = 256,000 B;
- x1024 (binary): ``KiB``, ``MiB``, ``GiB`` and the bare letters ``K``, ``M``, ``G``
  (the GNU coreutils convention: ``256K`` = ``256KiB`` = 262,144 B);
- plain bytes: ``262144`` or ``262144B``; a TOML/JSON integer; an integral float.

A boolean is not a size, nor is a non-finite float. Every size is checked against
a maximum: by default INT32_MAX, since TFLite stores arena offsets and sizes as
int32 and OR-Tools / the offline writer must never see more.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from .errors import PlannerError

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_HELP = "use bytes or a unit such as 256KB (x1000), 256KiB or 256K (x1024)"


def parse_size(text: str | int | float, what: str = "size", maximum: int | None = INT32_MAX,
               minimum: int = 0) -> int:
    """Bytes in `text`; PlannerError (one line naming `what`) unless minimum..maximum.

    `maximum=None` only for unit arithmetic (tests); every boundary passes a bound.
    """
    if isinstance(text, bool):
        raise PlannerError(f"{what} must be a size, not the boolean {str(text).lower()}")
    if isinstance(text, int):
        value = Decimal(text)
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise PlannerError(f"{what} {text!r} is not a finite number")
        value = Decimal(text)
    elif isinstance(text, str):
        match = _SIZE.match(text.lower())
        if not match or match.group(2) not in _UNITS or len(match.group(1)) > 40:
            raise PlannerError(f"malformed {what} {text!r}: {_HELP}")
        try:
            value = Decimal(match.group(1)) * _UNITS[match.group(2)]
        except InvalidOperation:  # pragma: no cover - the regex admits only digits
            raise PlannerError(f"malformed {what} {text!r}: {_HELP}") from None
    else:
        raise PlannerError(f"{what} must be a size such as 256KiB, not {type(text).__name__}")
    if value != value.to_integral_value():
        raise PlannerError(f"{what} {text!r} is not a whole number of bytes")
    if value < minimum or (maximum is not None and value > maximum):
        top = "" if maximum is None else f"{maximum:,}"
        raise PlannerError(f"{what} {text!r} is out of range: must be {minimum:,}..{top} B")
    return int(value)


def format_size(nbytes: int) -> str:
    return f"{nbytes:,} B"
