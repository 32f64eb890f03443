"""One status line on stderr while the exact search runs (only when stderr is a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

UNITS = {"peak": ("peak", lambda v: f"{v:,.0f} B"),
         "transfers": ("transfer", lambda v: f"{v:.4g} s"),
         "latency": ("exposed transfer", lambda v: f"{v:.4g} s")}


def terminal_progress(stream: TextIO | None = None) -> Callable[[dict], None] | None:
    """A progress hook for Request.progress, or None when `stream` is not a terminal."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    start = time.perf_counter()

    def show(event: dict) -> None:
        name, fmt = UNITS.get(event["phase"], (event["phase"], str))
        line = (f"[{time.perf_counter() - start:6.1f} s] {name}: best {fmt(event['best'])}, "
                f"bound {fmt(event['bound'])}, gap {event['gap']:.2%}")
        stream.write("\r\033[K" + line)
        stream.flush()

    return show


def end_progress(stream: TextIO | None = None) -> None:
    """Finish the status line so the summary starts on a fresh one."""
    stream = stream or sys.stderr
    if stream.isatty():
        stream.write("\r\033[K")
        stream.flush()
