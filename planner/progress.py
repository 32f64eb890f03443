"""Progress bars for long runs: tqdm on stderr when it is a terminal, silent otherwise.

Piped output (CI logs, `2>file`) gets no bar: the final summary says what happened.
"""

from __future__ import annotations

import sys
from typing import Any


def bar(total: int, desc: str, unit: str = "task", stream: Any = None, **kw: Any):
    """A tqdm bar (rate and ETA) that is disabled when `stream` is not a terminal."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not tty,
                dynamic_ncols=True, leave=True, **kw)
