"""Which edges stream (issue #15): a few candidate partitions, each planned exactly.

`streaming.choose_groups` fixes one partition into streamed groups before any planner
runs: the one minimising the streamed working-set bound. Under a budget that partition
can be the wrong one (with nothing in storage, a streamed graph may need more arena than
the source graph). So `solve --row-streaming` plans a small candidate set instead:

- "chosen": the DP's bound-minimising partition;
- "none": no groups (the source graph as the kernels leave it);
- per maximal run of row-capable ops, the chosen partition with that run unstreamed
  (when two runs or more hold groups), then the chosen partition without each one of
  its groups (when it has two or more), in model order, up to MAX_CANDIDATES in all.

Each candidate's planned graph is planned by the same planner under one shared clock:
every candidate still to be decided gets an equal share of the time (and work) left.
A candidate is not planned when a lower bound already shows it cannot beat the best
plan found or cannot fit the budget. Plans compare by the request's objective, with the
ring bookkeeping (costs.stream_overhead_seconds: the same for every plan of one
planned graph, so no planner minimises it) added to transfer time and latency, as the
benchmarks' Pareto sweep prices them:

- "peak": (peak, transfer time + overhead); bound: the candidate's working-set bound;
- "transfers": (transfer time + overhead, peak); bound: its overhead;
- "latency": (simulated latency + overhead, peak); bound: its compute + overhead.

The winner's `bound_bytes` (peak objective) is the least lower bound over all
candidates (a planned one's proven bound, an unplanned one's working-set bound), so a
plan meeting it is optimal over every candidate; its status says "optimal" only then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .analysis import Bound, working_set_bound
from .costs import stream_overhead_seconds
from .device import DeviceProfile
from .errors import InfeasibleBudget, PlannerError
from .ir import Graph
from .plan import Plan, StreamGroup
from .planners.base import Request
from .planners.ilp.search import Budget
from .streaming import apply_groups, choose_groups, group_candidates

MAX_CANDIDATES = 8
# A share of the clock below this is not worth starting a solve for.
MIN_SHARE_SECONDS = 0.05
EPS = 1e-9

PlanFn = Callable[[Request], Plan]


@dataclass(frozen=True)
class Candidate:
    """One partition into streamed groups and its planned graph."""

    name: str
    groups: tuple[StreamGroup, ...]
    graph: Graph  # streaming.apply_groups(source, groups)
    bound: Bound  # working-set bound of `graph`
    overhead: float  # ring bookkeeping seconds of `graph`


def _label(ops: tuple[int, ...]) -> str:
    return f"{ops[0]}-{ops[-1]}"


def _candidate(source: Graph, profile: DeviceProfile, name: str,
               groups: tuple[StreamGroup, ...]) -> Candidate:
    graph = apply_groups(source, groups)
    return Candidate(name, groups, graph,
                     working_set_bound(graph, profile.can_stream, profile.fusion),
                     stream_overhead_seconds(graph, profile) if groups else 0.0)


def candidates(source: Graph, profile: DeviceProfile,
               limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """The candidate partitions of `source` (module docstring), "chosen" first."""
    chosen = choose_groups(source, profile)
    runs = group_candidates(source, profile)
    parts: list[tuple[str, tuple[StreamGroup, ...]]] = [("chosen", chosen), ("none", ())]
    in_run = [tuple(g for g in chosen if g.ops[0] in run) for run in runs]
    if sum(1 for gs in in_run if gs) >= 2:
        for run, gs in zip(runs, in_run, strict=True):
            if gs:
                parts.append((f"chosen, run {_label(run)} unstreamed",
                              tuple(g for g in chosen if g not in gs)))
    if len(chosen) >= 2:
        for g in chosen:
            parts.append((f"chosen without group {_label(g.ops)}",
                          tuple(h for h in chosen if h is not g)))
    found: list[Candidate] = []
    seen: set[tuple[tuple[int, ...], ...]] = set()
    for name, groups in parts:
        key = tuple(g.ops for g in groups)
        if key in seen:
            continue
        seen.add(key)
        found.append(_candidate(source, profile, name, groups))
        if len(found) >= limit:
            break
    return found


def least_bound(cands: list[Candidate]) -> Bound:
    """The working-set bound no plan of any candidate goes below."""
    return min((c.bound for c in cands), key=lambda b: b.bytes)


@dataclass
class Result:
    graph: Graph  # the winner's planned graph
    plan: Plan
    winner: Candidate
    planned: list[tuple[Candidate, Plan]]  # every candidate planned, in planning order


class _Order:
    """The request's order on plans of different candidates, and lower bounds on it."""

    def __init__(self, request: Request):
        self.request, self.goal = request, request.goal

    def _latency(self, cand: Candidate, plan: Plan) -> float:
        from .planners.ilp.latency import simulated_seconds

        return simulated_seconds(cand.graph, plan, self.request.profile) + cand.overhead

    def key(self, cand: Candidate, plan: Plan) -> tuple[float, float]:
        extra = round(plan.est_transfer_seconds + cand.overhead, 9)
        if self.goal == "latency":
            return (round(self._latency(cand, plan), 9), plan.peak_bytes)
        if self.goal == "peak":
            second = extra if self.request.latency_cap is None else \
                round(self._latency(cand, plan), 9)
            return (plan.peak_bytes, second)
        return (extra, plan.peak_bytes)

    def floor(self, cand: Candidate, plan: Plan | None = None) -> float:
        """A lower bound on the primary key of every plan of `cand` (`plan`: its planner's
        answer, whose own proof may tighten it)."""
        if self.goal == "peak":
            if plan is not None and plan.bound_bytes is not None:
                return max(plan.bound_bytes, cand.bound.bytes)
            return cand.bound.bytes
        if plan is not None and plan.status == "optimal":
            return self.key(cand, plan)[0]
        if self.goal == "latency":
            from .planners.ilp.latency import compute_seconds

            return compute_seconds(cand.graph, self.request.profile) + cand.overhead
        if plan is not None and plan.bound_transfer_seconds is not None:
            return plan.bound_transfer_seconds + cand.overhead
        return cand.overhead

    def cannot_win(self, cand: Candidate, best: tuple[float, float] | None) -> str | None:
        """Why `cand` need not be planned, or None."""
        budget = self.request.budget
        if budget is not None and cand.bound.bytes > budget:
            return "bound above the budget"
        if best is None:
            return None
        low = self.floor(cand)
        if self.goal == "peak":
            if low > best[0] or (low == best[0] and cand.overhead >= best[1] - EPS
                                 and self.request.latency_cap is None):
                return "bound above the best plan"
            return None
        return "bound above the best plan" if low >= best[0] - EPS else None


def search(source: Graph, request: Request, plan_fn: PlanFn,
           cands: list[Candidate] | None = None) -> Result:
    """Plan each candidate partition of `source` with `plan_fn` (module docstring) and
    return the best; `request.graph` is replaced by each candidate's planned graph."""
    cands = cands if cands is not None else candidates(source, request.profile)
    if not cands:
        raise PlannerError("no candidate partition to plan")
    start = time.perf_counter()
    order = _Order(request)
    # Peak: the lowest bound first (its plan prunes the rest); otherwise the least
    # overhead first (the unstreamed graph, whose plan moves the least when it fits).
    queue = sorted(cands, key=(lambda c: c.bound.bytes) if order.goal == "peak"
                   else (lambda c: c.overhead))
    clock = Budget.start(request.time_limit, request.work_limit)
    best: tuple[tuple[float, float], Candidate, Plan] | None = None
    planned: list[tuple[Candidate, Plan]] = []
    pruned: list[Candidate] = []
    unreached: list[Candidate] = []
    infeasible: list[str] = []
    failed: list[PlannerError] = []
    interrupted = False
    for i, cand in enumerate(queue):
        if order.cannot_win(cand, best[0] if best else None):
            pruned.append(cand)
            continue
        left = len(queue) - i
        seconds = clock.seconds_left() / left
        stop = interrupted or (best is not None and seconds < MIN_SHARE_SECONDS)
        if stop:
            unreached.append(cand)
            continue
        work = clock.work / left if clock.work is not None else None
        if clock.work is not None:  # counted as spent whatever the solve used: reproducible
            clock.work = max(0.0, clock.work - work)
        sub = replace(request, graph=cand.graph, time_limit=max(seconds, 1e-3),
                      work_limit=work)
        try:
            plan = plan_fn(sub)
        except InfeasibleBudget as exc:
            infeasible.append(str(exc))
            continue
        except PlannerError as exc:  # no plan found in its share: not ruled out either
            failed.append(exc)
            unreached.append(cand)
            continue
        planned.append((cand, plan))
        interrupted = interrupted or plan.stopped == "interrupted"  # Ctrl-C: no more solves
        key = order.key(cand, plan)
        if best is None or key < best[0]:
            best = (key, cand, plan)
    if best is None:
        if failed:
            raise failed[0]
        if not infeasible:
            raise InfeasibleBudget(f"budget {request.budget:,} B is below the working-set "
                                   f"bound of each of the {len(cands)} candidate partitions "
                                   "into streamed groups")
        others = f"; so is each of the other {len(cands) - 1} candidate partitions into " \
            "streamed groups" if len(cands) > 1 else ""
        raise InfeasibleBudget(infeasible[0] + others)
    key, winner, plan = best
    if interrupted:  # the search was cut short, whichever candidate won
        plan = replace(plan, stopped="interrupted")
    plan = _certified(plan, winner, key, order, planned, pruned, unreached, len(cands),
                      "interrupted" if interrupted else "no plan in its share of the time")
    return Result(winner.graph, replace(plan, solve_seconds=time.perf_counter() - start),
                  winner, planned)


def _certified(plan: Plan, winner: Candidate, key: tuple[float, float], order: _Order,
               planned: list[tuple[Candidate, Plan]], pruned: list[Candidate],
               unreached: list[Candidate], total: int, why: str) -> Plan:
    """The winner with what is proven over all candidates: its status and bound."""
    others = [order.floor(c, p) for c, p in planned if c is not winner]
    others += [order.floor(c) for c in pruned + unreached
               if order.request.budget is None or c.bound.bytes <= order.request.budget]
    status, notes = plan.status, list(plan.notes)
    if order.goal == "peak":
        low = min([order.floor(winner, plan), *others])
        if plan.status != "heuristic":
            status = "optimal" if plan.peak_bytes <= low else "feasible"
        plan = replace(plan, bound_bytes=low)
    elif status == "optimal" and any(o < key[0] - EPS for o in others):
        status = "feasible"
    if total > 1:  # a set of one is the fixed partition of before: nothing to say
        text = (f"row streaming: candidate partition '{winner.name}' won, "
                f"{len(winner.groups)} groups; {len(planned)} of {total} candidates planned")
        if pruned:
            text += f", {len(pruned)} ruled out by their bounds"
        if unreached:
            text += f", {len(unreached)} without a plan ({why})"
        if status != plan.status:
            text += (", optimal over all of them" if status == "optimal" else
                     ", not proven optimal over all of them")
        notes.append(text)
    return replace(plan, status=status, notes=tuple(notes))
