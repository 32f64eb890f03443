"""`solve --pareto`: the frontier of arena peak against estimated transfer time."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace

from .analysis import working_set_bound
from .checker import assert_valid
from .device import DeviceProfile
from .errors import InfeasibleBudget, PlannerError
from .ir import ALIGNMENT, Graph, align
from .planners.base import Request, registry

DEFAULT_POINTS = 8


@dataclass(frozen=True)
class ParetoPoint:
    budget: int
    peak_bytes: int
    est_transfer_seconds: float
    status: str


def sweep(graph: Graph, profile: DeviceProfile, points: int = DEFAULT_POINTS,
          time_limit: float = 30.0, solver: str = "cpsat") -> list[ParetoPoint]:
    """Budgets evenly spaced from the spill-free optimum down to the working-set bound."""
    ilp = registry()["ilp"]
    top = ilp(Request(graph, profile, None, "peak", time_limit, solver))
    # The same device with its storages taken away: what it reaches without moving data.
    no_spill = Request(graph, replace(profile, storages=()), None, "peak",
                       time_limit, solver)
    high = ilp(no_spill).peak_bytes
    low = max(top.peak_bytes,
              working_set_bound(graph, profile.can_stream, profile.fusion).bytes)
    budgets = sorted({align(low + (high - low) * k // max(points - 1, 1), ALIGNMENT)
                      for k in range(points)} | {low, high})
    front: list[ParetoPoint] = []
    for budget in budgets:
        try:
            plan = ilp(Request(graph, profile, budget, "latency", time_limit, solver))
        except (InfeasibleBudget, PlannerError):
            continue
        assert_valid(graph, plan, profile.capacities)
        front.append(ParetoPoint(budget, plan.peak_bytes, plan.est_transfer_seconds,
                                 plan.status))
    return _non_dominated(front)


def _non_dominated(points: list[ParetoPoint]) -> list[ParetoPoint]:
    keep = []
    for p in sorted(points, key=lambda p: (p.peak_bytes, p.est_transfer_seconds)):
        if not keep or p.est_transfer_seconds < keep[-1].est_transfer_seconds:
            keep.append(p)
    return keep


def pareto_front(graph: Graph, profile: DeviceProfile, args: argparse.Namespace,
                 summary: dict) -> int:
    if not profile.storages:
        raise PlannerError(f"profile '{profile.name}' has no storage: there is no trade-off")
    front = sweep(graph, profile, time_limit=args.time_limit, solver=args.solver)
    if args.json:
        summary["pareto"] = [p.__dict__ for p in front]
        print(json.dumps(summary))
        return 0
    print(f"peak vs transfer time for {args.model} (profile {profile.name}):")
    print(f"{'peak B':>12} {'transfer s':>12}  status")
    for p in front:
        print(f"{p.peak_bytes:>12,} {p.est_transfer_seconds:>12.4f}  {p.status}")
    return 0
