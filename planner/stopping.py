"""How a stopped search is recognised, whoever stopped it (Ctrl-C, not the clock).

The exact planner returns its best plan when SIGINT stops CP-SAT and marks it with
`stopped="interrupted"`. Callers report it as interrupted, never as "time limit
reached", and exit 130.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from .plan import Plan

INTERRUPTED_NOTE = "interrupted (Ctrl-C): the best plan found so far, not proven optimal"


def was_interrupted(plan: Plan) -> bool:
    return plan.stopped == "interrupted"


def as_interrupted(plan: Plan) -> Plan:
    """The plan with its time-limit notes replaced by one that says it was interrupted."""
    notes = tuple(n for n in plan.notes if "time limit" not in n and not n.startswith("interr"))
    return replace(plan, notes=(*notes, INTERRUPTED_NOTE))


@contextmanager
def sigint_kept() -> Iterator[None]:
    """Reinstall the SIGINT handler that was there before the block.

    CP-SAT catches SIGINT during a solve and afterwards leaves the C-level handler at
    SIG_DFL, unknown to Python (signal.getsignal still names Python's): the next Ctrl-C
    would kill the process with no clean-up and no partial results. Measured with
    ortools 9.x here; harmless where a solver behaves.
    """
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)
