"""TFLM's LinearMemoryPlanner: every buffer after the previous one, no reuse."""

from __future__ import annotations

from itertools import accumulate

from ..analysis import buffers
from ..plan import Plan
from .base import Request, plan_from_offsets, register


@register("linear", heuristic=True)
def plan_linear(request: Request) -> Plan:
    bufs = buffers(request.graph)
    offsets = [0, *accumulate(b.size for b in bufs)][: len(bufs)]
    return plan_from_offsets(request.graph, bufs, offsets, "linear")
