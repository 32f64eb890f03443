"""A faithful reimplementation of TFLM's GreedyMemoryPlanner.

Buffers are taken largest first; each goes into the first gap, scanning the
already placed buffers whose lifetimes overlap in increasing offset order, or
above the highest of them.

Ties between equal sizes go in REVERSE insertion order (insertion: tensors by
index, then scratch requests): GreedyMemoryPlanner::CalculateOffsetsIfNeeded fills
its sort array from the tail (idx_from_tail--) before a stable bubble sort
(ReverseSortInPlace). Real TFLM confirms it: vww_96_int8 has a head of 73,728 B,
which insertion-order ties would put at 64,512 B.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..analysis import Buffer, buffers
from ..plan import Plan
from .base import Request, plan_from_offsets, register


def greedy_offsets(bufs: Sequence[Buffer], order: Sequence[int] | None = None) -> list[int]:
    """First-fit offsets for `bufs` placed in `order` (default: TFLM's size-descending order)."""
    if order is None:
        order = tflm_order(bufs)
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


def tflm_order(bufs: Sequence[Buffer]) -> list[int]:
    """TFLM's placement order: size descending, ties in reverse insertion order."""
    return sorted(reversed(range(len(bufs))), key=lambda i: -bufs[i].size)


@register("tflm-greedy", heuristic=True)
def plan_tflm_greedy(request: Request) -> Plan:
    bufs = buffers(request.graph)
    return plan_from_offsets(request.graph, bufs, greedy_offsets(bufs), "tflm-greedy")
