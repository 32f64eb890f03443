"""The heuristic plans the exact search starts from, and the best of them per objective.

Every registered planner except the exact one runs, and the best valid plan for the
request's objective becomes the solver's hint and the floor the answer is never worse
than. Only the candidates that could be that best are checked (the checker costs
about half a second per plan at 2000 ops).

A heuristic may be slow on a large graph (TinySeg re-plans the whole arena per trial
spill: 6-20 s at 2000 ops on a loaded machine) and none of them takes a deadline, so
outside the reproducible mode each runs in a forked child that is ended when its
share of the time limit is spent. A reproducible request waits for every heuristic:
a plan that depends on which heuristic finished in time would depend on load.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from ...checker import check
from ...errors import PlannerError
from ...plan import Plan
from ..base import Request, heuristics, registry

# Wall seconds all heuristics together may take, as a share of the time limit.
SEED_SHARE = 0.35
SEED_FLOOR_SECONDS = 1.0
# Search heuristics (hill-climb) get at most this many seconds each; a share of the limit.
SEARCH_SECONDS = 10.0
# Fast heuristics run in this process; the others in a child that can be ended.
INLINE = frozenset({"linear", "tflm-greedy", "greedy-by-size", "greedy-by-breadth"})


def seed_plans(request: Request, seconds: float | None = None) -> list[Plan]:
    """Heuristic plans, best first for the request's objective, within `seconds` in all.

    Unchecked: `best_seed` checks them. tflm-greedy is always among them.
    """
    if seconds is None:  # at least a second: below that the time limit is not realistic
        seconds = max(SEED_FLOOR_SECONDS, SEED_SHARE * request.time_limit)
    deadline = time.perf_counter() + seconds
    search = SEARCH_SECONDS if request.reproducible else \
        min(SEARCH_SECONDS, max(0.2, 0.1 * request.time_limit))
    quick = replace(request, time_limit=search, progress=None)
    planners = registry()
    # tflm-greedy first (always valid), then the spilling one that most often wins.
    first = [n for n in ("tflm-greedy", "tinyseg") if n in planners]
    names = [*first, *(n for n in heuristics() if n not in first)]
    plans = []
    bounded = not request.reproducible and _can_fork()
    for name in names:
        try:
            if name in INLINE or not bounded:
                plan = planners[name](quick)
            else:
                plan = _run_bounded(name, quick, deadline - time.perf_counter())
        except PlannerError:
            continue
        if plan is not None:
            plans.append(plan)
    return sorted(plans, key=ranker(request))


def rank(plan: Plan, goal: str) -> tuple[float, float]:
    """Order for "peak" and "transfers" (the latency order needs the graph: `ranker`)."""
    if goal == "peak":
        return (plan.peak_bytes, round(plan.est_transfer_seconds, 9))
    return (round(plan.est_transfer_seconds, 9), plan.peak_bytes)


def ranker(request: Request) -> Callable[[Plan], tuple[float, float]]:
    """The request's order on plans: for "latency", the simulated end-to-end latency
    (planner/latency.py) then the peak; with a latency cap, peak then that latency."""
    if request.goal == "latency" or request.latency_cap is not None:
        from .latency import simulated_seconds

        def key(plan: Plan) -> tuple[float, float]:
            lat = round(simulated_seconds(request.graph, plan, request.profile), 9)
            return (lat, plan.peak_bytes) if request.goal == "latency" else \
                (plan.peak_bytes, lat)
        return key
    return lambda plan: rank(plan, request.goal)


def within(plan: Plan, request: Request) -> bool:
    """Within the request's budget and latency cap."""
    if request.budget is not None and plan.peak_bytes > request.budget:
        return False
    if request.latency_cap is not None:
        from .latency import simulated_seconds

        return simulated_seconds(request.graph, plan, request.profile) <= request.latency_cap
    return True


def best_seed(plans: list[Plan], request: Request) -> Plan | None:
    """The best valid plan for the request's objective among those within its budget."""
    fitting = [p for p in plans if within(p, request)]
    for plan in sorted(fitting, key=ranker(request)):
        if not check(request.graph, plan, request.profile.capacities):
            return plan
    return None


def describe(plan: Plan) -> str:
    what = "the decomposition's packed plan" if plan.planner == "load-view" else \
        "the best heuristic for this objective"
    return (f"search started from the {plan.planner} plan ({plan.peak_bytes:,} B, "
            f"{plan.est_transfer_seconds:.4g} s of transfers), {what}")


def _can_fork() -> bool:
    # A daemonic process (a pool worker) may not start children.
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def _child(conn, name: str, request: Request) -> None:
    try:
        conn.send(registry()[name](request))
    except PlannerError:
        conn.send(None)
    finally:
        conn.close()


def _run_bounded(name: str, request: Request, seconds: float) -> Plan | None:
    """Run one planner in a forked child; None if it has not answered within `seconds`."""
    if seconds <= 0:
        return None
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, name, request), daemon=True)
    proc.start()
    child.close()
    try:
        return parent.recv() if parent.poll(seconds) else None
    except EOFError:  # the child died (a crash in the heuristic): no seed from it
        return None
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(1.0)
        parent.close()
