"""Exact offsets-only packing (no spills): CP-SAT over fixed lifetimes.

Used for MiniMalloc-style problems. Beyond the plain no-overlap-2D model it adds
what the plain model lacks: a redundant cumulative constraint (the load bound as
propagation), hints from the best heuristic, symmetry breaking between identical
blocks, and a unit of the sizes' greatest common divisor.
"""

from __future__ import annotations

import time
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
    work_limit: float | None = None,
) -> OffsetResult:
    """Offsets minimising the peak; with `capacity`, first look for a packing within it.

    The search starts from the best heuristic packing (`hint`, else found here with part
    of the time). When the capacity search finds nothing, the rest of the time goes to
    minimising the peak from that start, so an answer always comes back. `work_limit`
    (CP-SAT deterministic seconds) makes the answer the same under any machine load: the
    start is then the greedy packings only (the hill climb runs by the clock).
    """
    if not blocks:
        return OffsetResult([], 0, "optimal", 0)
    if hint is None:
        spent = min(2.0, time_limit / 10) if work_limit is None else 0.0
        hint = _best_heuristic(blocks, spent)
        time_limit -= spent
    hint = _twins_in_order(blocks, hint)
    work = work_limit
    if capacity is not None:
        first = _solve(blocks, time_limit * 0.75, capacity, hint, workers,
                       work * 0.75 if work is not None else None)
        if first.offsets:
            return first
        time_limit *= 0.25
        work = work * 0.25 if work is not None else None
    found = _solve(blocks, time_limit, None, hint, workers, work)
    hint_peak = max(h + b.size for h, b in zip(hint, blocks, strict=True))
    if not found.offsets or found.peak > hint_peak:  # the search ran out of time: keep the start
        return OffsetResult(list(hint), hint_peak, "feasible", found.bound)
    return found


def _twin_groups(blocks: Sequence[Interval]) -> list[list[int]]:
    twins: dict[tuple[int, int, int], list[int]] = {}
    for i, b in enumerate(blocks):
        twins.setdefault((b.first, b.last, b.size), []).append(i)
    return [g for g in twins.values() if len(g) > 1]


def _twins_in_order(blocks: Sequence[Interval], hint: Sequence[int]) -> list[int]:
    """Swap identical blocks' offsets so the hint meets the symmetry-breaking order."""
    out = list(hint)
    for group in _twin_groups(blocks):
        for i, off in zip(group, sorted(out[i] for i in group), strict=True):
            out[i] = off
    return out


def _solve(blocks, time_limit, capacity, hint, workers, work_limit=None) -> OffsetResult:
    unit = reduce(gcd, [b.size for b in blocks] + ([capacity] if capacity else []))
    unit = reduce(gcd, [h for h in hint if h], unit)
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
    for group in _twin_groups(blocks):
        for a, b in zip(group, group[1:], strict=False):
            m.add(offs[a] + sizes[a] <= offs[b])  # identical blocks: any order is as good
    for off, h in zip(offs, hint, strict=True):
        m.add_hint(off, h // unit)
    m.add_hint(peak, hint_peak // unit)
    m.minimize(peak)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = workers
    if work_limit is not None:  # stop on work, not the clock: the same answer under load
        solver.parameters.max_deterministic_time = max(0.01, work_limit)
        solver.parameters.interleave_search = True
        solver.parameters.random_seed = 0
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        name = "infeasible" if status == cp_model.INFEASIBLE else "unknown"
        return OffsetResult([], 0, name, lower)
    offsets = [solver.value(o) * unit for o in offs]
    found = int(solver.objective_value) * unit
    bound = max(lower, int(solver.best_objective_bound) * unit)
    proven = status == cp_model.OPTIMAL or found <= bound
    return OffsetResult(offsets, found, "optimal" if proven else "feasible", bound)


def _best_heuristic(blocks: Sequence[Interval], time_limit: float) -> list[int]:
    from ..offset_heuristics import greedy_by_size_offsets, hill_climb_offsets
    from ..tflm_greedy import greedy_offsets

    starts = [greedy_offsets(blocks), greedy_by_size_offsets(blocks)]
    candidates = list(starts)
    if time_limit > 0:
        candidates.append(hill_climb_offsets(blocks, time_limit=time_limit, starts=starts)[0])
    return min(candidates, key=lambda offs: max(o + b.size for o, b in zip(offs, blocks,
                                                                              strict=True)))


# Share of the time limit the canonical search may use before CP-SAT takes over.
CANONICAL_SHARE = 0.5


def storage_free_plan(request):
    """The exact spill-free plan by canonical search, for profiles where it is the whole problem.

    With neither storages nor fused kernels every plan the ILP admits is one segment
    per buffer over its lifetime, so the ILP is offsets only: the canonical search
    solves that exactly and proves budgets infeasible. Returns None (the caller runs
    the full CP-SAT model, the second, independent solver) for other profiles, the
    MILP solvers, or when the search ends unproven.
    """
    from ...analysis import buffers
    from ...checker import check
    from ...errors import InfeasibleBudget
    from ..base import plan_from_offsets
    from ..canonical import describe, minimize_peak, pack

    profile = request.profile
    if profile.storages or profile.fusion or request.solver != "cpsat":
        return None
    start = time.perf_counter()
    graph, budget = request.graph, request.budget
    bufs = buffers(graph)
    limit = request.time_limit * CANONICAL_SHARE
    result = minimize_peak(bufs, time_limit=limit)
    notes = [describe(result)]
    if budget is not None and result.bound > budget:
        raise InfeasibleBudget(
            f"budget {budget:,} B is infeasible: the canonical offsets search proved that "
            f"no spill-free plan (profile '{profile.name}') fits it; at least "
            f"{result.bound:,} B are needed")
    if result.status != "optimal":
        if budget is None or result.peak > budget:
            left = limit - (time.perf_counter() - start)
            if budget is None or left <= 0:
                return None
            fit = pack(bufs, budget, time_limit=left)
            notes.append(describe(fit))
            if fit.status == "infeasible":
                raise InfeasibleBudget(
                    f"budget {budget:,} B is infeasible: the canonical offsets search proved "
                    f"that no spill-free plan (profile '{profile.name}') fits it")
            if fit.status != "packed":
                return None
            result = fit
    # Under a budget every fitting spill-free plan moves no bytes, so any is latency-optimal.
    optimal = result.status == "optimal" or budget is not None
    plan = plan_from_offsets(
        graph, bufs, result.offsets, "ilp", status="optimal" if optimal else "feasible",
        bound_bytes=result.bound, objective=request.goal,
        bound_transfer_seconds=0.0 if request.goal == "transfers" else None,
        solve_seconds=time.perf_counter() - start, notes=tuple(notes))
    if check(graph, plan, profile.capacities):
        return None  # never return an invalid plan; the CP-SAT model decides instead
    return plan
