"""`solve MODEL [--budget SIZE]`: plan the arena, check the plan, report and write it."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..analysis import load_bound, working_set_bound
from ..checker import PlanError, assert_valid
from ..device import bundled_profiles, load_profile
from ..errors import InfeasibleBudget, PlannerError
from ..planners.base import Request, registry
from ..units import parse_size
from .common import add_model_args, read_graph
from .progress import end_progress, terminal_progress

DEFAULT_PLANNER = "ilp"
DEFAULT_PROFILE = "qspi-flash"
# --deterministic without --work-limit: work units per second of --time-limit. CP-SAT
# counted about 0.03 units per wall second on a 500-op U-Net (2 loaded cores).
DETERMINISTIC_WORK_SHARE = 0.02
SCRATCH_NOTE = ("--scratch int16: TRANSPOSE_CONV scratch stored as int16 (TinySeg's temporary "
                "quantization): half the bytes, different numerics")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "solve",
        help="plan the arena (spills, fused fetches, offsets) and write the plan",
        description="Plan a model's arena. TFLite input gets an offline-planned .tflite and a "
        "planner-shim header in OUTDIR; ONNX input gets the plan JSON and C glue (--emit c).",
    )
    add_model_args(p)
    p.add_argument("--budget", help="arena budget: bytes, KB/MB (x1000) or KiB/MiB (x1024)")
    p.add_argument("--planner", default=None, help=f"planner name (default {DEFAULT_PLANNER})")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"device profile: {', '.join(bundled_profiles())} or a .toml file")
    p.add_argument("--objective", choices=("peak", "latency"), default=None,
                   help="peak: smallest arena; latency: least transfer time within the budget")
    p.add_argument("--solver", default="cpsat", help="cpsat, pulp-cbc or pulp-highs")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--deterministic", action="store_true",
                   help="the same plan on every run, whatever the machine load: the search "
                        "stops on a work limit (default: 0.02 units per second of --time-limit)")
    p.add_argument("--work-limit", type=float, default=None, metavar="UNITS",
                   help="work budget of the exact search in CP-SAT deterministic seconds; "
                        "implies --deterministic (--time-limit stays a wall-clock cap)")
    p.add_argument("--pareto", action="store_true", help="sweep budgets: peak vs transfer time")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("-o", "--outdir", help="write the plan and the backends' files here")
    p.add_argument("--emit", action="append", default=None,
                   help="what -o writes besides plan.json: tflite, shim, c, svg (repeatable)")
    p.add_argument("--svg", help="draw the memory layout of the plan into this SVG file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    planners = registry()
    name = args.planner or DEFAULT_PLANNER
    if name not in planners:
        raise PlannerError(f"unknown planner '{name}': use one of {', '.join(sorted(planners))}")
    if not math.isfinite(args.time_limit) or args.time_limit <= 0:
        raise PlannerError("--time-limit must be a positive number of seconds")
    budget = parse_size(args.budget) if args.budget is not None else None
    profile = load_profile(args.profile)
    graph = read_graph(args)
    load = load_bound(graph)
    ws = working_set_bound(graph, profile.can_stream, profile.fusion)
    summary = {
        "model": str(args.model),
        "planner": name,
        "profile": profile.name,
        "scratch": args.scratch,
        "budget_bytes": budget,
        "load_bound_bytes": load.bytes,
        "working_set_bound_bytes": ws.bytes,
    }
    if budget is not None and budget < ws.bytes:
        message = (f"budget {budget:,} B is below the working-set bound: {ws.detail} needs "
                   f"{ws.bytes:,} B, {ws.bytes - budget:,} B more")
        return _refuse(args, summary, message)
    if args.pareto:
        from ..pareto import pareto_front

        return pareto_front(graph, profile, args, summary)
    work = args.work_limit
    if work is not None and (not math.isfinite(work) or work <= 0):
        raise PlannerError("--work-limit must be a positive number of units")
    if work is None and args.deterministic:
        work = DETERMINISTIC_WORK_SHARE * args.time_limit
    request = Request(graph, profile, budget, args.objective, args.time_limit, args.solver,
                      deterministic=args.deterministic or work is not None, work_limit=work,
                      progress=terminal_progress())
    start = time.perf_counter()
    try:
        plan = planners[name](request)
    except InfeasibleBudget as exc:
        return _refuse(args, summary, str(exc))
    finally:
        end_progress()
    elapsed = time.perf_counter() - start
    if args.scratch == "int16":
        plan = replace(plan, scratch_dtype="int16", notes=(*plan.notes, SCRATCH_NOTE))
    try:
        assert_valid(graph, plan, profile.capacities)
    except PlanError as exc:
        print(f"internal error: {exc}", file=sys.stderr)
        return 3
    fits = budget is None or plan.peak_bytes <= budget
    summary.update(plan_summary(plan, budget, elapsed))
    if args.outdir or args.svg:
        from backends import write_outputs

        written = write_outputs(graph, plan, Path(args.model), args.outdir, args.emit,
                                svg=args.svg, budget=budget, profile=profile)
        summary["files"] = [str(p) for p in written]
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, plan)
    if not fits:
        print(f"error: the {plan.planner} plan needs {plan.peak_bytes:,} B, "
              f"{plan.peak_bytes - budget:,} B over the budget", file=sys.stderr)
        return 1
    return 0


def plan_summary(plan, budget: int | None, elapsed: float) -> dict:
    gap = None
    if plan.bound_bytes:
        gap = (plan.peak_bytes - plan.bound_bytes) / plan.peak_bytes if plan.peak_bytes else 0.0
    return {
        "planner": plan.planner,
        "peak_bytes": plan.peak_bytes,
        "fits_budget": budget is None or plan.peak_bytes <= budget,
        "status": plan.status,
        "bound_bytes": plan.bound_bytes,
        "gap": gap,
        "objective": plan.objective,
        "spilled_bytes": plan.spilled_bytes,
        "fetched_bytes": plan.fetched_bytes,
        "est_transfer_seconds": plan.est_transfer_seconds,
        "num_spills": sum(1 for t in plan.transfers if t.kind == "spill"),
        "num_fusions": len(plan.fusions),
        "solve_seconds": round(elapsed, 4),
        "notes": list(plan.notes),
    }


def _refuse(args: argparse.Namespace, summary: dict, message: str) -> int:
    if args.json:
        summary.update({"status": "infeasible", "fits_budget": False, "peak_bytes": None,
                        "bound_bytes": None, "gap": None, "spilled_bytes": None,
                        "fetched_bytes": None, "est_transfer_seconds": None,
                        "solve_seconds": 0.0, "error": message})
        print(json.dumps(summary))
    print(f"error: {message}", file=sys.stderr)
    return 1


def _print_summary(s: dict, plan) -> None:
    print(f"model        {s['model']}  (profile {s['profile']}, planner {s['planner']})")
    print(f"peak         {s['peak_bytes']:>10,} B   status {s['status']}"
          + (f", gap {s['gap']:.2%}" if s.get("gap") else ""))
    print(f"load bound   {s['load_bound_bytes']:>10,} B   (no spilling can go below)")
    print(f"work-set bnd {s['working_set_bound_bytes']:>10,} B   (nothing can go below)")
    if s["budget_bytes"] is not None:
        verdict = "fits" if s["fits_budget"] else "DOES NOT FIT"
        print(f"budget       {s['budget_bytes']:>10,} B   {verdict}")
    if plan.transfers:
        print(f"spilled      {s['spilled_bytes']:>10,} B in {s['num_spills']} spills, "
              f"fetched {s['fetched_bytes']:,} B, est. transfer {s['est_transfer_seconds']:.4f} s")
    if plan.fusions:
        print(f"fusions      {s['num_fusions']}")
    for note in s["notes"]:
        print(f"note         {note}")
    print(f"solved in    {s['solve_seconds']:.2f} s")
    for f in s.get("files", []):
        print(f"wrote        {f}")
