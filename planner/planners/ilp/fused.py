"""A spill-free seed with every concat+conv pair fused: fix the fusions, pack the rest.

This is the first step of the decomposition: with the fusion choices fixed and no
spills, every remaining buffer is one segment over a fixed step interval (from its
creation to its last needed point), so the arena is a plain packing problem, solved
by the offset heuristics. Its peak can go below every registered heuristic's (none
of them fuses without spilling); when it meets the working-set bound it is optimal
for the peak, and, moving nothing, also for the transfer time.
"""

from __future__ import annotations

from dataclasses import replace

from ...offsets import Block, load_bound, peak_of
from ...plan import Plan
from ..offset_heuristics import greedy_by_size_offsets, hill_climb_offsets
from ..tflm_greedy import greedy_offsets
from .extract import Solution, to_plan
from .model import Need, Problem

HILL_CLIMB_ITERS = 300  # a short polish of the greedy packings; the iteration cap binds


def fused_plan(problem: Problem, goal: str, hill_climb: bool = True) -> Plan | None:
    """The all-fused, spill-free plan of `problem`, or None if nothing can be fused."""
    fused = {g for g, group in enumerate(problem.groups) if group.conv is not None}
    if not fused:
        return None
    blocks: list[Block] = []
    owners: list[tuple[str, int, int]] = []  # ("item", index, last point) / ("scratch", t, 0)
    for item in problem.items:
        if item.part is not None:
            continue  # split variants need spilling
        if item.eliminated_by is not None and item.eliminated_by in fused:
            continue  # a fused concat's output never exists
        needed = [j for j, p in enumerate(item.points) if _needed(p.need, p.group, fused)]
        if not needed:
            continue
        last = max(needed)
        first_step, last_step = item.span(0, last)
        blocks.append(Block(str(item.index), first_step, last_step, item.units))
        owners.append(("item", item.index, last))
    for t, step, units in problem.fixed:
        blocks.append(Block(f"s{t}", step, step, units))
        owners.append(("scratch", t, 0))
    starts = [greedy_offsets(blocks), greedy_by_size_offsets(blocks)]
    offsets = min(starts, key=lambda o: peak_of(blocks, o))
    if hill_climb and peak_of(blocks, offsets) > load_bound(blocks):
        offsets, _ = hill_climb_offsets(blocks, max_iters=HILL_CLIMB_ITERS,
                                        time_limit=float("inf"), starts=starts)
    segments: dict[int, list[tuple[int, int, int]]] = {}
    scratch: dict[int, int] = {}
    for (kind, key, last), off in zip(owners, offsets, strict=True):
        if kind == "item":
            segments[key] = [(0, last, off)]
        else:
            scratch[key] = off
    solution = Solution(segments, {}, {}, fused, scratch, "heuristic")
    plan = to_plan(problem, solution, "fused-greedy", goal)
    return replace(plan, bound_bytes=None, bound_transfer_seconds=None)


def _needed(need: Need, group: int | None, fused: set[int]) -> bool:
    if need == Need.ALWAYS:
        return True
    if need == Need.IF_FUSED:
        return group in fused
    return group not in fused
