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
from .bounds import transfer_bound_seconds
from .decompose import load_view_plan
from .extract import to_plan
from .fused import fused_plan
from .latency import LatencyInputs, latency_inputs, windowed_seeds, with_latency_notes
from .model import Problem, build_problem
from .offsets import OffsetResult, solve_offsets, storage_free_plan
from .search import Budget
from .seeds import best_seed, describe, ranker, seed_plans, within

__all__ = ["OffsetResult", "plan_ilp", "solve_offsets"]

SOLVERS = ("cpsat", "pulp-cbc", "pulp-highs")
# Notes of an unproven search; dropped when the working-set bound proves the plan anyway.
UNPROVEN_NOTES = ("time limit reached", "work limit reached", "interrupted")
# Wall time kept back from the search for turning its answer into a checked plan.
EXTRACT_SHARE, EXTRACT_SECONDS = 0.03, 2.0
# Shares of the remaining budget for the load view's search and for packing its segments.
LOAD_VIEW_SHARE, PACK_SHARE = 0.5, 0.3


@register("ilp")
def plan_ilp(request: Request) -> Plan:
    if request.solver not in SOLVERS:
        raise PlannerError(f"unknown solver '{request.solver}': use one of {', '.join(SOLVERS)}")
    start = time.perf_counter()
    timing = latency_inputs(request)  # None: no latency objective, no latency cap
    if (spill_free := storage_free_plan(request)) is not None:  # offsets-only profiles
        return with_latency_notes(spill_free, request, None)
    # One budget for the whole command: what the canonical search used is gone.
    limit = max(request.time_limit - (time.perf_counter() - start), 1e-3)
    clock = Budget.start(limit - min(EXTRACT_SECONDS, EXTRACT_SHARE * limit), request.work_limit)
    graph, profile, budget = request.graph, request.profile, request.budget
    ws = working_set_bound(graph, profile.can_stream, profile.fusion).bytes
    # The all-fused spill-free packing first: on segmentation networks it often meets the
    # working-set bound with no transfers, which no search can beat.
    problem = build_problem(graph, profile)
    fused = fused_plan(problem, request.goal)
    if fused is not None and fused.peak_bytes <= ws and fused.est_transfer_seconds == 0 \
            and (budget is None or fused.peak_bytes <= budget) \
            and not check(graph, fused, profile.capacities):
        note = ("the fused-greedy plan (every concat+conv pair fused, nothing spilled, packed "
                "by the offset heuristics) meets the working-set bound and moves nothing: "
                "optimal for peak and transfer time, no search was needed")
        plan = replace(fused, planner="ilp", status="optimal", objective=request.goal,
                       bound_bytes=fused.peak_bytes, bound_transfer_seconds=0.0,
                       notes=(*fused.notes, note),
                       solve_seconds=time.perf_counter() - start)
        return with_latency_notes(plan, request, None)
    seeds = seed_plans(request)
    if timing is not None:  # the heuristics' plans with their transfers made asynchronous
        seeds = windowed_seeds(seeds, request)
    splits: dict[int, set[int]] = {}
    for plan in seeds:
        for part in plan.parts:
            if part.index == 1:
                splits.setdefault(part.tensor, set()).add(part.channel_stop - part.channel_start)
    if splits:  # the model must contain the seeds' channel splits
        problem = build_problem(graph, profile, extra_splits=splits)
    seed = best_seed([*seeds, fused] if fused is not None else seeds, request)
    view_bound, view_note = None, ()
    if request.solver == "cpsat" and request.goal == "peak" and timing is None \
            and seed is not None and seed.peak_bytes > ws:
        seed, view_bound, view_note = _load_view(problem, request, seed, clock)
    if budget is not None:
        upper = budget // ALIGNMENT
        if request.goal == "peak" and seed is not None:
            upper = min(upper, seed.peak_bytes // ALIGNMENT)
    else:  # the best seed's peak holds the optimum (for latency: it moves the least)
        upper = seed.peak_bytes // ALIGNMENT
        if request.solver != "cpsat":  # no hints there: a tight box leaves CBC nothing
            upper = max([upper] + [p.peak_bytes // ALIGNMENT for p in seeds
                                   if p.planner == "tflm-greedy"])
    budget_units = budget // ALIGNMENT if budget is not None else None
    solution, infeasible, stopped = _solve(problem, request, upper, budget_units, seed, clock,
                                           timing)
    started = (describe(seed),) if seed is not None else ()
    if solution is None:
        if infeasible:
            raise InfeasibleBudget(
                f"budget {budget:,} B is infeasible: the solver proved that no plan with "
                f"profile '{profile.name}' fits it"
            )
        if seed is not None:
            why = {"interrupted": "interrupted before the solver found a plan",
                   "work-limit": "solver found no plan within its work limit"}.get(
                stopped or "", f"solver found no plan within {limit:g} s")
            note = f"{why}; returning the {seed.planner} plan"
            plan = replace(seed, planner="ilp", status="feasible", objective=request.goal,
                           notes=(*seed.notes, *started, *view_note, note),
                           stopped=stopped or "time-limit")
            plan = _transfer_bound(_certify(plan, request, view_bound), problem, request)
            if plan.status != "optimal":
                plan = replace(plan, notes=(*plan.notes[:-1], f"{note}, not proven optimal"))
            plan = with_latency_notes(plan, request, None)
            return replace(plan, solve_seconds=time.perf_counter() - start)
        raise PlannerError(
            f"no plan under the budget found within {limit:g} s and none proven "
            "impossible; try a longer --time-limit"
        )
    plan = _certify(to_plan(problem, solution, "ilp", request.goal), request, view_bound)
    extra = ()
    if request.reproducible and stopped == "time-limit":
        extra = (f"the {limit:g} s wall-clock cap ended the search before its work limit: "
                 "this plan may differ from run to run",)
    plan = replace(plan, notes=(*started, *view_note, *plan.notes, *extra), stopped=stopped)
    plan = _better_start(plan, problem, solution, request)
    # A stopped search can end above its own warm start; never return worse than it (nor,
    # where the latency model is a relaxation, above the latency cap in simulation).
    key = ranker(request)
    if seed is None and not within(plan, request):
        raise PlannerError(
            f"no plan found whose estimated latency meets the cap of {request.latency_cap:g} s "
            "(the solver's model is a relaxation of planner/latency.py; its best simulates "
            "above the cap); try a higher --latency-cap or a longer --time-limit")
    if seed is not None and (key(seed) < key(plan) or not within(plan, request)):
        # Same primary value: what the solver proved about it holds for the seed too.
        same = key(seed)[0] == key(plan)[0]
        status = plan.status if same else "feasible"
        note = (f"the solver's best was worse than the {seed.planner} plan it started from; "
                "returning that plan" + ("" if status == "optimal" else ", not proven optimal"))
        plan = replace(seed, planner="ilp", status=status, objective=request.goal,
                       bound_bytes=plan.bound_bytes, stopped=stopped,
                       bound_transfer_seconds=plan.bound_transfer_seconds,
                       notes=(*seed.notes, *plan.notes, note))
        solution.exposed_us = None  # the model's value is not this plan's
    plan = _transfer_bound(plan, problem, request)
    plan = with_latency_notes(plan, request, solution)
    return replace(plan, solve_seconds=time.perf_counter() - start)


def _better_start(plan: Plan, problem: Problem, solution, request: Request) -> Plan:
    """Latency: the least-transfer plan the search started from, where it simulates faster
    than the answer (planner/latency.py runs transfers whole and first in first out, which
    the model relaxes)."""
    if solution.alternative is None:
        return plan
    start = to_plan(problem, solution.alternative, "ilp", request.goal)
    key = ranker(request)
    if not within(start, request) or key(start) >= key(plan):
        return plan
    solution.exposed_us = None  # the model's value is not this plan's
    return replace(start, status="feasible", stopped=plan.stopped, notes=(*plan.notes, (
        "the least-transfer plan the latency search started from simulates faster than its "
        "answer; returning it, not proven optimal")))


def _transfer_bound(plan: Plan, problem: Problem, request: Request) -> Plan:
    """Raise the plan's transfer-time bound to the load view's (bounds.py); meeting it under
    a budget proves the transfer time optimal."""
    peak = plan.peak_bytes if request.goal == "peak" else request.budget
    if peak is None:
        return plan
    bound = max(plan.bound_transfer_seconds or 0.0, transfer_bound_seconds(problem, peak))
    bound = min(bound, plan.est_transfer_seconds)
    plan = replace(plan, bound_transfer_seconds=bound)
    if request.goal == "transfers" and plan.status != "optimal" \
            and plan.est_transfer_seconds <= bound:
        plan = replace(plan, status="optimal", notes=(*plan.notes, (
            "transfer time meets its lower bound from the load view: optimal")))
    return plan


def _solve(problem: Problem, request: Request, upper: int, budget_units: int | None,
           seed: Plan | None, clock: Budget, timing: LatencyInputs | None = None):
    """(Solution or None, proven infeasible, why the search stopped early or None)."""
    if request.solver == "cpsat":
        from .cpsat import CpSatModel

        model = CpSatModel(problem, upper, budget_units, timing=timing)
        known = None
        if seed is not None:
            model.hint(seed)
            known = _proven_primary(seed, request)
        solution = model.solve(request.goal, clock, request.workers, request.reproducible,
                               request.progress, known)
        return solution, model.infeasible, model.stopped or clock.stopped
    from .milp import solve_milp

    timed = replace(request, time_limit=max(1.0, clock.seconds_left()))
    solution, infeasible = solve_milp(problem, upper, budget_units, timed)
    stopped = "time-limit" if solution is not None and solution.status != "optimal" else None
    return solution, infeasible, stopped


def _proven_primary(seed: Plan, request: Request) -> int | None:
    """The primary objective's optimum when the seed already meets its lower bound
    (peak at the working-set bound, or no transfers): then only the secondary is searched."""
    if request.goal == "peak":
        bound = working_set_bound(request.graph, request.profile.can_stream,
                                  request.profile.fusion).bytes
        return -(-seed.peak_bytes // ALIGNMENT) if seed.peak_bytes <= bound else None
    return 0 if seed.est_transfer_seconds == 0 else None


def _load_view(problem: Problem, request: Request, seed: Plan, clock: Budget):
    """(seed, proven peak bound or None, notes): the decomposition's packed plan replaces
    the seed when it is valid and lower."""
    view = load_view_plan(problem, seed, clock, LOAD_VIEW_SHARE, PACK_SHARE, request.workers,
                          request.reproducible, request.progress)
    notes = []
    if view.plan is not None and view.plan.peak_bytes < seed.peak_bytes \
            and not check(request.graph, view.plan, request.profile.capacities):
        notes.append(f"load view + packing (decompose.py) lowered the start to "
                     f"{view.plan.peak_bytes:,} B from {seed.planner}'s {seed.peak_bytes:,} B")
        seed = view.plan
    elif view.relaxed_bytes is not None:
        notes.append(f"load view reached {view.relaxed_bytes:,} B but its segments did not "
                     f"pack below {seed.planner}'s {seed.peak_bytes:,} B")
    return seed, view.bound_bytes, tuple(notes)


def _certify(plan: Plan, request: Request, view_bound: int | None = None) -> Plan:
    """Tighten the proven peak bound with the working-set bound (and the load view's proven
    bound); meeting it proves optimality."""
    if request.goal != "peak":
        return plan
    # Valid for every plan the model admits; the load bound is not (fusion alone beats it).
    bound = max(plan.bound_bytes or 0, view_bound or 0, working_set_bound(
        request.graph, request.profile.can_stream, request.profile.fusion).bytes)
    if plan.peak_bytes <= bound:
        return replace(plan, status="optimal", bound_bytes=plan.peak_bytes,
                       notes=tuple(n for n in plan.notes if not n.startswith(UNPROVEN_NOTES)))
    return replace(plan, bound_bytes=bound)
