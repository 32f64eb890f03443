"""`solve MODEL [--budget SIZE]`: plan the arena, check the plan, report and write it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..analysis import load_bound, working_set_bound
from ..checker import PlanError, assert_valid
from ..device import bundled_profiles, load_profile
from ..errors import InfeasibleBudget
from ..planners.base import Request, registry
from ..schema import stamp
from ..stopping import as_interrupted, sigint_kept, was_interrupted
from .common import add_model_args, read_graph
from .solve_checks import check_after_reading, check_arguments, sram_warning

DEFAULT_PLANNER = "ilp"
DEFAULT_PROFILE = "qspi-flash"
DEFAULT_TIME_LIMIT = 60.0
SOLVERS = ("cpsat", "pulp-cbc", "pulp-highs")
SCRATCH_NOTE = ("--scratch int16: TRANSPOSE_CONV scratch stored as int16 (TinySeg's temporary "
                "quantization): half the bytes, different numerics")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "solve",
        help="plan the arena (spills, fused fetches, offsets) and write the plan",
        description="Plan a model's arena. With -o, TFLite input gets an offline-planned "
        ".tflite, a planner-shim header, the C glue and a layout SVG; ONNX input gets a "
        "layout SVG (and the C glue with --emit c); both get plan.json and the per-tensor "
        "report tensors.csv / tensors.md. Exit 0 fits (or no budget), 1 does not fit, 2 bad "
        "input, 3 internal error, 130 interrupted (the best plan so far is still written).",
    )
    add_model_args(p)
    p.add_argument("--budget", metavar="SIZE",
                   help="arena budget: bytes, KB/MB (x1000) or K/KiB/MiB (x1024); default: "
                   "none, minimise the peak (a budget above the profile's SRAM gets a warning)")
    p.add_argument("--planner", default=DEFAULT_PLANNER,
                   help=f"planner: {', '.join(sorted(registry()))}")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"device profile: {', '.join(bundled_profiles())} or a .toml file")
    p.add_argument("--objective", choices=("peak", "latency"), default=None,
                   help="peak: smallest arena; latency: least transfer time within the budget "
                   "(default: latency with a budget, peak without)")
    p.add_argument("--solver", default="cpsat", choices=SOLVERS,
                   help="the exact planner's solver")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help="stop the exact search after this long and return the best plan found "
                   "(with --pareto: per sweep point)")
    p.add_argument("--deterministic", action="store_true",
                   help="the same plan on every run (slower search on large models)")
    p.add_argument("--pareto", action="store_true",
                   help="sweep budgets with the ilp planner: peak vs transfer time (honours "
                   "--profile, --solver, --time-limit, --deterministic, --json, -o)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("-o", "--outdir", help="write the plan and the backends' files here")
    p.add_argument("--emit", action="append", default=None, choices=("tflite", "shim", "c", "svg"),
                   help="what -o writes besides plan.json and tensors.csv/.md (repeatable; "
                   "default: tflite, shim, c, svg for TFLite input, svg for ONNX)")
    p.add_argument("--svg", metavar="FILE", help="draw the memory layout of the plan into FILE")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    budget = check_arguments(args)  # everything that needs no model: before reading it
    profile = load_profile(args.profile)
    graph = read_graph(args)
    check_after_reading(args, graph)
    load = load_bound(graph)
    ws = working_set_bound(graph, profile.can_stream, profile.fusion)
    summary = {
        "model": graph.name,
        "model_path": str(args.model),
        "planner": args.planner,
        "profile": profile.name,
        "sram_bytes": profile.sram_bytes,
        "scratch": args.scratch,
        "budget_bytes": budget,
        "load_bound_bytes": load.bytes,
        "working_set_bound_bytes": ws.bytes,
    }
    if budget is not None and budget < ws.bytes:
        message = (f"budget {budget:,} B is below the working-set bound: {ws.detail} needs "
                   f"{ws.bytes:,} B, {ws.bytes - budget:,} B more")
        return _refuse(args, summary, message)
    if budget is not None and budget > profile.sram_bytes:
        print(sram_warning("budget", budget, profile), file=sys.stderr)
    if args.pareto:
        from ..pareto import pareto_front

        return pareto_front(graph, profile, args, summary)
    request = Request(graph, profile, budget, args.objective, args.time_limit, args.solver,
                      deterministic=args.deterministic)
    start = time.perf_counter()
    try:
        with sigint_kept():
            plan = registry()[args.planner](request)
    except InfeasibleBudget as exc:
        return _refuse(args, summary, str(exc))
    elapsed = time.perf_counter() - start
    interrupted = was_interrupted(plan)
    if interrupted:
        plan = as_interrupted(plan)
    if args.scratch == "int16":
        plan = replace(plan, scratch_dtype="int16", notes=(*plan.notes, SCRATCH_NOTE))
    try:
        assert_valid(graph, plan, profile.capacities)
    except PlanError as exc:
        print(f"internal error: {exc}", file=sys.stderr)
        return 3
    fits = budget is None or plan.peak_bytes <= budget
    summary.update(plan_summary(plan, budget, elapsed))
    summary["interrupted"] = interrupted
    summary["fits_sram"] = plan.peak_bytes <= profile.sram_bytes
    if args.outdir or args.svg:
        from backends import write_outputs

        written = write_outputs(graph, plan, Path(args.model), args.outdir, args.emit,
                                svg=args.svg, budget=budget, profile=profile)
        summary["files"] = [str(p) for p in written]
    if args.json:
        print(json.dumps(stamp("solve", summary)))
    else:
        _print_summary(summary, plan)
    if not summary["fits_sram"] and (budget is None or budget <= profile.sram_bytes):
        print(sram_warning("plan", plan.peak_bytes, profile), file=sys.stderr)
    if interrupted:
        print("interrupted: wrote the best valid plan found so far (not proven optimal)",
              file=sys.stderr)
        return 130
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
        print(json.dumps(stamp("solve", summary)))
    print(f"error: {message}", file=sys.stderr)
    return 1


def _print_summary(s: dict, plan) -> None:
    print(f"model        {s['model']} ({s['model_path']}; profile {s['profile']}, "
          f"planner {s['planner']})")
    print(f"peak         {s['peak_bytes']:>10,} B   status {s['status']}"
          + (f", gap {s['gap']:.2%}" if s.get("gap") else ""))
    # The load bound is what no plan reaches without moving data or fusing ops; a plan
    # below it spilled or fused (or both), so say which way it was passed.
    below = " (passed by spilling/fusion)" if s["peak_bytes"] < s["load_bound_bytes"] else ""
    print(f"load bound   {s['load_bound_bytes']:>10,} B   (live bytes at the busiest step: no "
          f"plan without spilling or fusion goes below){below}")
    print(f"work-set bnd {s['working_set_bound_bytes']:>10,} B   (what one op must hold: "
          "nothing goes below)")
    if s["budget_bytes"] is not None:
        verdict = "fits" if s["fits_budget"] else "DOES NOT FIT"
        print(f"budget       {s['budget_bytes']:>10,} B   {verdict}")
    print(f"sram         {s['sram_bytes']:>10,} B   ({s['profile']} profile; the arena tail "
          "and the stack need room too)")
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
