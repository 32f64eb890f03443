"""Exact offsets-only packing (no spills): CP-SAT over fixed lifetimes.

Used for MiniMalloc-style problems. Beyond the plain no-overlap-2D model it adds
what the plain model lacks: a redundant cumulative constraint (the load bound as
propagation), hints from the best heuristic, symmetry breaking between identical
blocks, and a unit of the sizes' greatest common divisor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from math import gcd

from ortools.sat.python import cp_model

from ...offsets import Interval, load_bound


@dataclass(frozen=True)
class OffsetResult:
    offsets: list[int]
    peak: int
    status: str  # optimal / feasible / infeasible / unknown
    bound: int


def solve_offsets(
    blocks: Sequence[Interval],
    time_limit: float = 30.0,
    capacity: int | None = None,
    hint: Sequence[int] | None = None,
    workers: int = 2,
) -> OffsetResult:
    """Offsets minimising the peak; with `capacity`, first look for a packing within it.

    When the capacity search finds nothing in half the time, the rest goes to
    minimising the peak from the heuristic start, so an answer always comes back.
    """
    if capacity is not None:
        first = _solve(blocks, time_limit / 2, capacity, hint, workers)
        if first.offsets:
            return first
        time_limit /= 2
    return _solve(blocks, time_limit, None, hint, workers)


def _solve(blocks, time_limit, capacity, hint, workers) -> OffsetResult:
    if not blocks:
        return OffsetResult([], 0, "optimal", 0)
    if hint is None:
        hint = _best_heuristic(blocks)
    unit = reduce(gcd, [b.size for b in blocks] + ([capacity] if capacity else []))
    unit = reduce(gcd, [h for h in hint or [] if h], unit)
    sizes = [b.size // unit for b in blocks]
    lower = load_bound(blocks)
    hint_peak = max(h + b.size for h, b in zip(hint, blocks, strict=True))
    upper_bytes = capacity if capacity is not None else hint_peak
    upper = upper_bytes // unit
    m = cp_model.CpModel()
    peak = m.new_int_var(-(-lower // unit), upper, "peak")
    xs, ys, offs = [], [], []
    for i, b in enumerate(blocks):
        off = m.new_int_var(0, max(0, upper - sizes[i]), f"o{i}")
        offs.append(off)
        xs.append(m.new_fixed_size_interval_var(b.first, b.last - b.first + 1, f"t{i}"))
        ys.append(m.new_fixed_size_interval_var(off, sizes[i], f"m{i}"))
        m.add(off + sizes[i] <= peak)
    m.add_no_overlap_2d(xs, ys)
    m.add_cumulative(xs, sizes, peak)
    twins: dict[tuple[int, int, int], list[int]] = {}
    for i, b in enumerate(blocks):
        twins.setdefault((b.first, b.last, b.size), []).append(i)
    for group in twins.values():
        for a, b in zip(group, group[1:], strict=False):
            m.add(offs[a] + sizes[a] <= offs[b])  # identical blocks: any order is as good
    for off, h in zip(offs, hint, strict=True):
        m.add_hint(off, h // unit)
    m.add_hint(peak, hint_peak // unit)
    m.minimize(peak)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = workers
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        name = "infeasible" if status == cp_model.INFEASIBLE else "unknown"
        return OffsetResult([], 0, name, lower)
    offsets = [solver.value(o) * unit for o in offs]
    found = int(solver.objective_value) * unit
    bound = max(lower, int(solver.best_objective_bound) * unit)
    proven = status == cp_model.OPTIMAL or found <= bound
    return OffsetResult(offsets, found, "optimal" if proven else "feasible", bound)


def _best_heuristic(blocks: Sequence[Interval]) -> list[int]:
    from ..offset_heuristics import greedy_by_size_offsets
    from ..tflm_greedy import greedy_offsets

    candidates = [greedy_offsets(blocks), greedy_by_size_offsets(blocks)]
    return min(candidates, key=lambda offs: max(o + b.size for o, b in zip(offs, blocks,
                                                                              strict=True)))
