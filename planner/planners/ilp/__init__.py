"""The exact planner: spills, storages, fusions, channel splits and offsets in one model."""

from __future__ import annotations

import time
from dataclasses import replace

from ...analysis import working_set_bound
from ...checker import check
from ...errors import InfeasibleBudget, PlannerError
from ...ir import ALIGNMENT
from ...plan import Plan
from ..base import Request, register
from ..tflm_greedy import plan_tflm_greedy
from .extract import to_plan
from .model import Problem, build_problem
from .offsets import OffsetResult, solve_offsets, storage_free_plan

__all__ = ["OffsetResult", "plan_ilp", "solve_offsets"]

SOLVERS = ("cpsat", "pulp-cbc", "pulp-highs")
TIME_LIMIT_NOTE = "time limit reached"


@register("ilp")
def plan_ilp(request: Request) -> Plan:
    if request.solver not in SOLVERS:
        raise PlannerError(f"unknown solver '{request.solver}': use one of {', '.join(SOLVERS)}")
    if (spill_free := storage_free_plan(request)) is not None:  # offsets-only profiles
        return spill_free
    start = time.perf_counter()
    graph, profile, budget = request.graph, request.profile, request.budget
    seeds = _seed_plans(request)
    splits: dict[int, set[int]] = {}
    for seed in seeds:
        for part in seed.parts:
            if part.index == 1:
                splits.setdefault(part.tensor, set()).add(part.channel_stop - part.channel_start)
    problem = build_problem(graph, profile, extra_splits=splits)
    fitting = [p for p in seeds if budget is None or p.peak_bytes <= budget]
    if budget is not None:
        upper = budget // ALIGNMENT
    else:
        upper = min(p.peak_bytes for p in seeds) // ALIGNMENT
    budget_units = budget // ALIGNMENT if budget is not None else None
    solution, infeasible = _solve(problem, request, upper, budget_units, fitting)
    if solution is None:
        if infeasible:
            raise InfeasibleBudget(
                f"budget {budget:,} B is infeasible: the solver proved that no plan with "
                f"profile '{profile.name}' fits it"
            )
        if fitting:
            best = min(fitting, key=lambda p: (p.peak_bytes, p.est_transfer_seconds))
            note = (f"solver found no plan within {request.time_limit:g} s; returning the "
                    f"{best.planner} plan, not proven optimal")
            return replace(best, planner="ilp", status="feasible", notes=(*best.notes, note))
        raise PlannerError(
            f"no plan under the budget found within {request.time_limit:g} s and none proven "
            "impossible; try a longer --time-limit"
        )
    plan = _certify(to_plan(problem, solution, "ilp", request.goal), request)
    # A time-limited search can end above its own warm start; never return worse than it.
    better = [s for s in fitting if _rank(s, request.goal) < _rank(plan, request.goal)]
    if better:
        seed = min(better, key=lambda s: _rank(s, request.goal))
        note = (f"the solver's best in {request.time_limit:g} s was worse than the "
                f"{seed.planner} plan it started from; returning that plan, not proven optimal")
        plan = replace(seed, planner="ilp", status="feasible", objective=request.goal,
                       bound_bytes=plan.bound_bytes, notes=(*seed.notes, note))
    return replace(plan, solve_seconds=time.perf_counter() - start)


def _rank(plan: Plan, goal: str) -> tuple[float, float]:
    if goal == "peak":
        return (plan.peak_bytes, round(plan.est_transfer_seconds, 9))
    return (round(plan.est_transfer_seconds, 9), plan.peak_bytes)


def _seed_plans(request: Request) -> list[Plan]:
    """Valid heuristic plans: hints for the solver and the fallback on a time-out."""
    plans = [plan_tflm_greedy(request)]
    try:
        from ..tinyseg import plan_tinyseg
    except ImportError:
        plan_tinyseg = None
    if plan_tinyseg is not None and request.profile.storages and request.budget is not None:
        try:
            plans.append(plan_tinyseg(request))
        except PlannerError:
            pass
    return [p for p in plans if not check(request.graph, p, request.profile.capacities)]


def _solve(problem: Problem, request: Request, upper: int, budget_units: int | None,
           hints: list[Plan]):
    if request.solver == "cpsat":
        from .cpsat import CpSatModel

        model = CpSatModel(problem, upper, budget_units)
        if hints:
            model.hint(min(hints, key=lambda p: (p.est_transfer_seconds, p.peak_bytes)))
        solution = model.solve(request.goal, request.time_limit, request.workers,
                               request.deterministic)
        return solution, model.infeasible
    from .milp import solve_milp

    return solve_milp(problem, upper, budget_units, request)


def _certify(plan: Plan, request: Request) -> Plan:
    """Tighten the proven peak bound with the working-set bound; meeting it proves optimality."""
    if request.goal != "peak":
        return plan
    # Valid for every plan the model admits; the load bound is not (fusion alone beats it).
    bound = max(plan.bound_bytes or 0, working_set_bound(
        request.graph, request.profile.can_stream, request.profile.fusion).bytes)
    if plan.peak_bytes <= bound:
        return replace(plan, status="optimal", bound_bytes=plan.peak_bytes,
                       notes=tuple(n for n in plan.notes if not n.startswith(TIME_LIMIT_NOTE)))
    return replace(plan, bound_bytes=bound)
