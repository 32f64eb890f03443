"""Every `solve` argument and combination checked before any planning starts.

Two passes: `check_arguments` needs nothing but the arguments (run before the model
is read); `check_after_reading` needs the model's format (what `--emit` can write).
A refusal is a PlannerError: one line on stderr, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import math

from ..device import DeviceProfile
from ..errors import PlannerError
from ..ir import Graph
from ..planners.base import registry
from ..units import parse_size

# Options --pareto cannot honour: it sweeps its own budgets with the exact planner,
# minimising transfer time at each, and draws no single layout.
PARETO_REFUSES = {
    "budget": "--budget (the sweep picks its budgets, from the spill-free peak down to the "
              "working-set bound)",
    "head_budget": "--head-budget (the sweep picks its head budgets)",
    "objective": "--objective (each point minimises transfer time under its budget)",
    "latency_cap": "--latency-cap (each point minimises transfer time under its budget)",
    "emit": "--emit (there is no single plan to emit; -o writes pareto.json and pareto.svg)",
    "svg": "--svg (there is no single layout; -o writes pareto.svg)",
}


def check_arguments(args: argparse.Namespace) -> int | None:
    """Validate what needs no model; returns the budget in bytes (None: no budget)."""
    planners = registry()
    if args.planner not in planners:
        raise PlannerError(f"unknown planner '{args.planner}': use one of "
                           f"{', '.join(sorted(planners))}")
    if not math.isfinite(args.time_limit) or args.time_limit <= 0:
        raise PlannerError("--time-limit must be a positive number of seconds")
    work = getattr(args, "work_limit", None)
    if work is not None and (not math.isfinite(work) or work <= 0):
        raise PlannerError("--work-limit must be a positive number of units")
    _check_latency_options(args)
    budget = parse_size(args.budget) if args.budget is not None else None
    if args.pareto:
        given = [text for key, text in PARETO_REFUSES.items()
                 if getattr(args, key) not in (None, [], False)]
        if args.planner != "ilp":
            given.append(f"--planner {args.planner} (the sweep uses the exact planner, ilp)")
        if given:
            raise PlannerError("--pareto does not take " + "; ".join(given))
    if getattr(args, "pareto_axis", None) is not None and not args.pareto:
        raise PlannerError("--pareto-axis says what the --pareto sweep draws: give --pareto too")
    if args.emit is not None and not args.outdir:
        raise PlannerError("--emit says what -o OUTDIR writes: give -o OUTDIR too")
    return budget


MAX_ASYNC_WINDOW = 64  # steps; the model grows with it


def _check_latency_options(args: argparse.Namespace) -> None:
    cap = getattr(args, "latency_cap", None)
    window = getattr(args, "async_window", 0)
    if cap is not None:
        if not math.isfinite(cap) or cap <= 0:
            raise PlannerError("--latency-cap must be a positive number of seconds")
        if args.objective not in (None, "peak"):
            raise PlannerError("--latency-cap goes with --objective peak (the smallest arena "
                               "under a latency cap)")
    if not 0 <= window <= MAX_ASYNC_WINDOW:
        raise PlannerError(f"--async-window must be 0 to {MAX_ASYNC_WINDOW} steps")
    if (cap is not None or args.objective == "latency") and args.planner == "ilp" \
            and args.solver != "cpsat":
        raise PlannerError(f"--objective latency and --latency-cap need --solver cpsat: the "
                           f"MILP encoding ({args.solver}) has no transfer windows")
    if cap is not None and args.planner != "ilp":
        raise PlannerError(f"--latency-cap needs --planner ilp ({args.planner} does not "
                           "model latency)")


def check_after_reading(args: argparse.Namespace, graph: Graph) -> None:
    if args.outdir and not args.pareto:
        from backends import check_emits

        check_emits(graph.source_format, args.emit)


def sram_warning(what: str, nbytes: int, profile: DeviceProfile) -> str:
    return (f"warning: the {what} ({nbytes:,} B) exceeds the {profile.sram_bytes:,} B of SRAM "
            f"of profile '{profile.name}': it will not fit that device")
