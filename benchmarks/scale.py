"""`python -m benchmarks scale`: the exact planner on residual U-Nets of 250 to 2000 ops.

For each size (benchmarks/scale_models.py builds the graphs: int8 NHWC .tflite by
default, which the fused kernels and streaming serve; float32 ONNX, spill-only, with
`fmt="onnx"`) the exact planner runs
with a wall-clock limit T and a work limit (CP-SAT deterministic seconds), twice,
and the table says, per graph: wall time against 1.1 T + 2 s, peak over the
working-set bound, transfer time over its proven bound at that peak, status and
why the search stopped, the best heuristic (never to be beaten), and whether the
two runs returned the same plan. Every plan passes the checker first.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

from planner.analysis import working_set_bound
from planner.checker import assert_valid
from planner.device import load_profile
from planner.plan import Plan
from planner.planners.base import Request, registry
from planner.planners.ilp.seeds import rank
from planner.planners.tflm_greedy import plan_tflm_greedy

from .scale_models import SIZES, write_model


@dataclass
class ScaleRow:
    model: str
    ops: int
    time_limit: float
    work_limit: float | None
    wall_s: float
    wall_ok: bool  # wall < 1.1 T + 2 s
    peak_bytes: int
    ws_bound: int
    est_transfer_s: float
    transfer_bound_s: float | None
    status: str
    stopped: str
    heuristic: str
    heuristic_peak: int
    heuristic_transfer_s: float
    not_worse: bool
    same_plan: str  # "yes" / "no" / "-" (not repeated)

    @property
    def peak_over_bound(self) -> float:
        return self.peak_bytes / self.ws_bound - 1 if self.ws_bound else 0.0


def _same(a: Plan, b: Plan) -> bool:
    return (a.segments, a.transfers, a.fusions, a.parts) == (b.segments, b.transfers,
                                                             b.fusions, b.parts)


def run_size(path: Path, time_limit: float, work_limit: float | None, repeat: bool = True,
             budget_fraction: float | None = None, profile_name: str = "qspi-flash"
             ) -> ScaleRow:
    from frontends import load_model

    graph = load_model(path)
    profile = load_profile(profile_name)
    budget = None
    if budget_fraction is not None:
        peak = plan_tflm_greedy(Request(graph, profile)).peak_bytes
        budget = int(peak * budget_fraction) // 16 * 16
    request = Request(graph, profile, budget, None, time_limit, work_limit=work_limit)
    planners = registry()
    heuristics = [planners[n](request) for n in sorted(planners) if n != "ilp"]
    fitting = [p for p in heuristics if budget is None or p.peak_bytes <= budget]
    best = min(fitting, key=lambda p: rank(p, request.goal))
    plans, walls = [], []
    for _ in range(2 if repeat else 1):
        start = time.perf_counter()
        plan = planners["ilp"](request)
        walls.append(time.perf_counter() - start)
        assert_valid(graph, plan, profile.capacities)
        plans.append(plan)
    plan = plans[0]
    ws = working_set_bound(graph, profile.can_stream, profile.fusion).bytes
    return ScaleRow(
        path.stem, len(graph.ops), time_limit, work_limit, round(max(walls), 2),
        max(walls) < 1.1 * time_limit + 2, plan.peak_bytes, ws,
        round(plan.est_transfer_seconds, 6),
        None if plan.bound_transfer_seconds is None else round(plan.bound_transfer_seconds, 6),
        plan.status, plan.stopped or "completed", best.planner, best.peak_bytes,
        round(best.est_transfer_seconds, 6),
        rank(plan, request.goal) <= rank(best, request.goal),
        ("yes" if _same(plans[0], plans[1]) else "no") if repeat else "-")


def limits_for(ops: int, time_limit: float | None, work_limit: float | None
               ) -> tuple[float, float | None]:
    """The issue's goals: 60 s up to 1000 ops, 120 s above; work as `solve --deterministic`."""
    from planner.commands.solve import DETERMINISTIC_WORK_SHARE

    t = time_limit if time_limit is not None else (60.0 if ops <= 1100 else 120.0)
    return t, (work_limit if work_limit is not None else DETERMINISTIC_WORK_SHARE * t)


def run_scale(sizes: list[int], outdir: Path, time_limit: float | None = None,
              work_limit: float | None = None, repeat: bool = True,
              budget_fraction: float | None = None, echo=print,
              top_blocks: int | None = 0, fmt: str = "tflite") -> list[ScaleRow]:
    sides = dict(SIZES)
    rows = []
    for target in sizes:
        path = write_model(target, sides.get(target, 128), outdir / "models", top_blocks,
                           fmt)
        t, w = limits_for(target, time_limit, work_limit)
        row = run_size(path, t, w, repeat, budget_fraction)
        rows.append(row)
        echo(markdown([row], header=not rows[:-1]), end="")
    write_csv(rows, outdir / "scale.csv")
    (outdir / "scale.md").write_text(markdown(rows))
    return rows


def _ratio(value: float, bound: float | None) -> str:
    if bound is None:
        return "no bound"
    if value <= bound:
        return "="
    return "∞ (bound 0)" if bound == 0 else f"{value / bound:.2f}x"


def markdown(rows: list[ScaleRow], header: bool = True) -> str:
    lines = []
    if header:
        lines += ["| graph | ops | T s (work) | wall s | < 1.1T+2 | peak over ws bound | "
                  "transfer s | over its bound | status (stopped) | best heuristic "
                  "(peak over bound, transfer s) | not worse | same plan twice |",
                  "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | --- | "
                  "--- |"]
    for r in rows:
        heur_over = r.heuristic_peak / r.ws_bound - 1 if r.ws_bound else 0.0
        work = f" ({r.work_limit:g})" if r.work_limit is not None else ""
        lines.append(
            f"| {r.model} | {r.ops} | {r.time_limit:g}{work} | {r.wall_s:.1f} | "
            f"{'yes' if r.wall_ok else 'NO'} | {r.peak_over_bound:.2%} | "
            f"{r.est_transfer_s:.4g} | {_ratio(r.est_transfer_s, r.transfer_bound_s)} | "
            f"{r.status} ({r.stopped}) | {r.heuristic} ({heur_over:.2%}, "
            f"{r.heuristic_transfer_s:.4g}) | {'yes' if r.not_worse else 'NO'} | "
            f"{r.same_plan} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[ScaleRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(ScaleRow.__dataclass_fields__)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: getattr(r, k) for k in fields})
