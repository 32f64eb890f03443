"""How a stopped search is recognised, whoever stopped it (Ctrl-C, not the clock).

The exact planner returns its best plan when SIGINT stops CP-SAT and marks it with
`stopped="interrupted"` (a Plan field; older plans carry a note instead). Callers
report it as interrupted, never as "time limit reached", and exit 130.
"""

from __future__ import annotations

from dataclasses import replace

from .plan import Plan

INTERRUPTED_NOTE = "interrupted (Ctrl-C): the best plan found so far, not proven optimal"


def was_interrupted(plan: Plan) -> bool:
    return getattr(plan, "stopped", None) == "interrupted" or \
        any(n.startswith("interrupted") for n in plan.notes)


def as_interrupted(plan: Plan) -> Plan:
    """The plan with its time-limit notes replaced by one that says it was interrupted."""
    notes = tuple(n for n in plan.notes if "time limit" not in n and not n.startswith("interr"))
    return replace(plan, notes=(*notes, INTERRUPTED_NOTE))
