"""`solve --pareto`: the frontier of arena peak against estimated transfer time, or (with
`--pareto-axis latency`) against estimated end-to-end latency (planner/latency.py).

Ctrl-C stops the sweep: the points solved so far are kept, reported and written,
and the command exits 130. A progress bar shows the sweep point by point on a
terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .analysis import working_set_bound
from .checker import assert_valid
from .device import DeviceProfile
from .errors import InfeasibleBudget, PlannerError
from .ir import ALIGNMENT, Graph, align
from .latency import end_to_end
from .planners.base import Request, registry
from .schema import stamp
from .stopping import sigint_kept, was_interrupted

DEFAULT_POINTS = 8


@dataclass(frozen=True)
class ParetoPoint:
    budget_bytes: int
    peak_bytes: int
    est_transfer_seconds: float
    status: str
    est_latency_seconds: float = 0.0  # end to end, as planned (planner/latency.py)

    def cost(self, axis: str) -> float:
        return self.est_latency_seconds if axis == "latency" else self.est_transfer_seconds


@dataclass
class Sweep:
    points: list[ParetoPoint]
    interrupted: bool = False
    planned: int = 0  # budgets solved
    total: int = 0  # budgets the sweep meant to solve


def sweep(graph: Graph, profile: DeviceProfile, points: int = DEFAULT_POINTS,
          time_limit: float = 30.0, solver: str = "cpsat", deterministic: bool = False,
          on_point: Callable[[int, int, ParetoPoint | None], None] | None = None,
          result: Sweep | None = None, axis: str = "transfers") -> list[ParetoPoint]:
    """Budgets evenly spaced from the spill-free optimum down to the working-set bound.

    `result` (if given) is filled as the sweep goes, so a caller that catches
    KeyboardInterrupt still has the points found so far. `axis` ("transfers" or
    "latency") is the cost the frontier keeps the points non-dominated in.
    """
    ilp = registry()["ilp"]
    state = result if result is not None else Sweep([])

    def solve(budget: int | None, prof: DeviceProfile, goal: str):
        with sigint_kept():
            plan = ilp(Request(graph, prof, budget, goal, time_limit, solver,
                               deterministic=deterministic))
        if was_interrupted(plan):
            state.interrupted = True
        return plan

    top = solve(None, profile, "peak")
    # The same device with its storages taken away: what it reaches without moving data.
    high = solve(None, replace(profile, storages=()), "peak").peak_bytes
    low = max(top.peak_bytes,
              working_set_bound(graph, profile.can_stream, profile.fusion).bytes)
    budgets = sorted({align(low + (high - low) * k // max(points - 1, 1), ALIGNMENT)
                      for k in range(points)} | {low, high})
    state.total = len(budgets)
    found: list[ParetoPoint] = []
    for budget in budgets:
        if state.interrupted:
            break
        try:
            # The latency axis: each point's plan minimises the latency itself (transfer
            # windows, planner/planners/ilp/latency.py), where the solver has the model.
            goal = "latency" if axis == "latency" and solver == "cpsat" else "transfers"
            plan = solve(budget, profile, goal)
        except (InfeasibleBudget, PlannerError):
            plan = None
        point = None
        if plan is not None:
            assert_valid(graph, plan, profile.capacities)
            point = ParetoPoint(budget, plan.peak_bytes, plan.est_transfer_seconds,
                                "interrupted" if was_interrupted(plan) else plan.status,
                                end_to_end(graph, plan, profile).total_seconds)
            found.append(point)
            state.points = _non_dominated(found, axis)
        state.planned += 1
        if on_point is not None:
            on_point(state.planned, state.total, point)
    state.points = _non_dominated(found, axis)
    return state.points


def _non_dominated(points: list[ParetoPoint], axis: str = "transfers") -> list[ParetoPoint]:
    keep: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.peak_bytes, p.cost(axis))):
        if not keep or p.cost(axis) < keep[-1].cost(axis):
            keep.append(p)
    return keep


def pareto_front(graph: Graph, profile: DeviceProfile, args: argparse.Namespace,
                 summary: dict) -> int:
    if not profile.storages:
        raise PlannerError(f"profile '{profile.name}' has no storage: there is no trade-off")
    from .progress import bar

    state = Sweep([])
    axis = getattr(args, "pareto_axis", None) or "transfers"
    what = "end-to-end latency" if axis == "latency" else "transfer time"
    progress = bar(0, "pareto: solving both ends of the sweep", unit="point")

    def on_point(done: int, total: int, point: ParetoPoint | None) -> None:
        if progress.total != total:
            progress.total = total
            progress.set_description("pareto", refresh=False)
        if point is not None:
            progress.set_postfix_str(f"{point.peak_bytes:,} B {point.cost(axis):.3g} s")
        progress.update(1)

    try:
        sweep(graph, profile, time_limit=args.time_limit, solver=args.solver,
              deterministic=args.deterministic, on_point=on_point, result=state, axis=axis)
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        progress.close()
    summary = {k: v for k, v in summary.items() if k not in ("planner", "budget_bytes")}
    summary.update(planner="ilp", axis=axis, interrupted=state.interrupted,
                   budgets_planned=state.planned,
                   budgets_total=state.total, pareto=[asdict(p) for p in state.points])
    data = stamp("pareto", summary)
    if args.outdir:
        data["files"] = [str(p) for p in _write(data, Path(args.outdir), graph.name)]
    if args.json:
        print(json.dumps(data))
    else:
        print(f"peak vs {what} for {summary['model']} (profile {profile.name}; "
              "estimates from the profile):")
        print(f"{'budget B':>12} {'peak B':>12} {'transfer s':>12} {'latency s':>12}  status")
        for p in state.points:
            print(f"{p.budget_bytes:>12,} {p.peak_bytes:>12,} {p.est_transfer_seconds:>12.4f}"
                  f" {p.est_latency_seconds:>12.4f}  {p.status}")
        for f in data.get("files", []):
            print(f"wrote        {f}")
    if state.interrupted:
        print(f"interrupted: kept {len(state.points)} points from {state.planned} of "
              f"{state.total or '?'} budgets", file=sys.stderr)
        return 130
    return 0


def _write(data: dict, out: Path, name: str) -> list[Path]:
    from backends.reports.svg import render_pareto_svg

    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "pareto.json", out / "pareto.svg"]
        paths[0].write_text(json.dumps(data, indent=1) + "\n")
        latency = data.get("axis") == "latency"
        key = "est_latency_seconds" if latency else "est_transfer_seconds"
        what = "estimated end-to-end latency" if latency else "estimated transfer time"
        pts = [{"series": "ilp", "peak_bytes": p["peak_bytes"], "seconds": p[key],
                "label": f"budget {p['budget_bytes']:,} B"} for p in data["pareto"]]
        paths[1].write_text(render_pareto_svg(
            pts, f"{name}: peak vs {what.removeprefix('estimated ')} ({data['profile']})",
            y_label=what))
    except OSError as exc:
        raise PlannerError(f"cannot write into {out}: {exc.strerror}") from None
    return paths
