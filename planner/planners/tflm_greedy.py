"""A faithful reimplementation of TFLM's GreedyMemoryPlanner.

Buffers are taken largest first (a stable sort, so equal sizes keep TFLM's
insertion order: tensors by index, then scratch requests); each goes into the
first gap, scanning the already placed buffers whose lifetimes overlap in
increasing offset order, or above the highest of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..analysis import Buffer, buffers
from ..plan import Plan
from .base import Request, plan_from_offsets, register


def greedy_offsets(bufs: Sequence[Buffer], order: Sequence[int] | None = None) -> list[int]:
    """First-fit offsets for `bufs` placed in `order` (default: TFLM's size-descending order)."""
    if order is None:
        order = sorted(range(len(bufs)), key=lambda i: -bufs[i].size)
    offsets = [0] * len(bufs)
    placed: list[int] = []  # indices kept sorted by offset, as TFLM's linked list
    for i in order:
        b = bufs[i]
        candidate = 0
        for j in placed:
            other = bufs[j]
            if not b.overlaps(other):
                continue
            if offsets[j] >= candidate + b.size:
                break  # the gap below this buffer is large enough
            candidate = max(candidate, offsets[j] + other.size)
        offsets[i] = candidate
        # Insert after every buffer at a lower or equal offset, as TFLM does.
        pos = len(placed)
        for k, j in enumerate(placed):
            if offsets[j] > candidate:
                pos = k
                break
        placed.insert(pos, i)
    return offsets


@register("tflm-greedy")
def plan_tflm_greedy(request: Request) -> Plan:
    bufs = buffers(request.graph)
    return plan_from_offsets(request.graph, bufs, greedy_offsets(bufs), "tflm-greedy")
