"""`solve MODEL [--budget SIZE]`: plan the arena, check the plan, report and write it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..analysis import load_bound, working_set_bound
from ..checker import PlanError, assert_valid
from ..device import bundled_profiles, load_profile
from ..errors import InfeasibleBudget
from ..kernels import op_kernels_of
from ..latency import latency_fields
from ..planners.base import Request, registry
from ..planners.ilp import SOLVERS
from ..schema import stamp
from ..stopping import as_interrupted, sigint_kept, was_interrupted
from ..streaming import groups_of
from ..streaming_search import candidates as stream_candidates
from ..streaming_search import least_bound
from ..streaming_search import search as search_streaming
from ..units import parse_size
from .common import add_kernel_args, add_model_args, source_graph
from .progress import end_progress, terminal_progress
from .solve_checks import check_after_reading, check_arguments, sram_warning

DEFAULT_PLANNER = "ilp"
DEFAULT_PROFILE = "qspi-flash"
DEFAULT_TIME_LIMIT = 60.0
# --deterministic without --work-limit: work units per second of --time-limit. CP-SAT
# counted about 0.03 units per wall second on a 500-op U-Net (2 loaded cores).
DETERMINISTIC_WORK_SHARE = 0.02


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
    add_kernel_args(p)
    p.add_argument("--budget", metavar="SIZE",
                   help="whole-arena budget (head + predicted tail for TFLite; the head for "
                   "ONNX): bytes, KB/MB (x1000) or K/KiB/MiB (x1024); default: none, minimise "
                   "the peak (a budget above the profile's SRAM gets a warning)")
    p.add_argument("--head-budget", metavar="SIZE",
                   help="bound the arena head (the planned buffers) alone; default: none")
    p.add_argument("--planner", default=DEFAULT_PLANNER,
                   help=f"planner: {', '.join(sorted(registry()))}")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"device profile: {', '.join(bundled_profiles())} or a .toml file")
    p.add_argument("--objective", choices=("peak", "transfers", "latency"), default=None,
                   help="peak: smallest arena (then least transfer time, or least latency "
                   "with --latency-cap); transfers: least transfer time within the budget; "
                   "latency: least estimated end-to-end latency within the budget, transfers "
                   "overlapping compute (cpsat only) (default: transfers with a budget, peak "
                   "without)")
    p.add_argument("--latency-cap", type=float, default=None, metavar="SECONDS",
                   help="with --objective peak: the smallest arena whose estimated end-to-end "
                   "latency is at most this (cpsat only)")
    p.add_argument("--async-window", type=int, default=3, metavar="STEPS",
                   help="latency model: a fetch may be issued, a spill may complete, up to "
                   "this many steps from its op (0: every transfer blocks; default 3)")
    p.add_argument("--solver", default="cpsat", choices=SOLVERS,
                   help="the exact planner's solver")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help="stop the exact search after this long and return the best plan found "
                   "(with --pareto: per sweep point)")
    p.add_argument("--deterministic", action="store_true",
                   help="the same plan on every run, whatever the machine load: the search "
                        "stops on a work limit (default: 0.02 units per second of --time-limit)")
    p.add_argument("--work-limit", type=float, default=None, metavar="UNITS",
                   help="work budget of the exact search in CP-SAT deterministic seconds; "
                        "implies --deterministic (--time-limit stays a wall-clock cap); "
                        "default: none")
    p.add_argument("--pareto", action="store_true",
                   help="sweep budgets with the ilp planner: peak vs transfer time (honours "
                   "--profile, --solver, --time-limit, --deterministic, --json, -o)")
    p.add_argument("--pareto-axis", choices=("transfers", "latency"), default=None,
                   help="with --pareto: the cost drawn against the peak: the transfer-time "
                   "sum (default), or the estimated end-to-end latency (planner/latency.py)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("-o", "--outdir", help="write the plan and the backends' files here")
    p.add_argument("--emit", action="append", default=None, choices=("tflite", "shim", "c", "svg"),
                   help="what -o writes besides plan.json and tensors.csv/.md (repeatable; "
                   "default: tflite, shim, c, svg for TFLite input, svg for ONNX)")
    p.add_argument("--svg", metavar="FILE", help="draw the memory layout of the plan into FILE")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    budget = check_arguments(args)  # everything that needs no model: before reading it
    head_cap = parse_size(args.head_budget) if args.head_budget is not None else None
    profile = load_profile(args.profile)
    source = source_graph(args, profile)
    check_after_reading(args, source)
    # With --row-streaming: candidate partitions into streamed groups, each planned
    # (planner/streaming_search.py); the plan's graph is the winner's. The least of their
    # bounds is the one no head goes below (the old one stays beside it).
    cands = stream_candidates(source, profile) if args.row_streaming else None
    graph = cands[0].graph if cands else source
    ws = working_set_bound(source, profile.can_stream, profile.fusion)
    streamed = least_bound(cands) if cands else None
    floor = streamed if streamed is not None else ws
    from backends.tflite.tail import ArenaTail

    tails = ArenaTail(graph, Path(args.model), profile)
    summary = {
        "model": graph.name,
        "model_path": str(args.model),
        "planner": args.planner,
        "profile": profile.name,
        "sram_bytes": profile.sram_bytes,
        "op_kernels": [list(k) for k in op_kernels_of(graph)],
        "budget_bytes": budget,
        "head_budget_bytes": head_cap,
        "load_bound_bytes": load_bound(graph).bytes,
        "working_set_bound_bytes": ws.bytes,
        "streamed_bound_bytes": streamed.bytes if streamed is not None else None,
        "stream_groups": [list(g.ops) for g in groups_of(graph)],
        "stream_candidates": len(cands) if cands else None,
    }
    # --budget bounds head + tail; the tail is that of the model the plan emits, which a
    # rewrite (spills, fusions) makes larger: plan, predict, and re-plan with the head
    # budget that leaves room for it, a few rounds at most.
    work = args.work_limit
    if work is None and args.deterministic:
        work = DETERMINISTIC_WORK_SHARE * args.time_limit
    tail = tails.of_model()
    start = time.perf_counter()
    for _ in range(TAIL_ROUNDS):
        head_budget = _head_budget(budget, head_cap, tail)
        summary.update(tail_bytes=tail, head_budget_bytes=head_budget)
        if head_budget is not None and head_budget < floor.bytes:
            return _refuse(args, summary, _below_bound(budget, head_budget, tail, floor))
        if args.pareto:  # the sweep picks its own budgets
            from ..pareto import pareto_front

            return pareto_front(graph, profile, args, summary)
        request = Request(graph, profile, head_budget, args.objective, args.time_limit,
                          args.solver, deterministic=args.deterministic or work is not None,
                          work_limit=work, progress=terminal_progress(),
                          latency_cap=args.latency_cap, async_window=args.async_window)
        try:
            with sigint_kept():
                if cands is None:
                    plan = registry()[args.planner](request)
                else:
                    chosen = search_streaming(source, request, registry()[args.planner], cands)
                    graph, plan = chosen.graph, chosen.plan
                    tails = ArenaTail(graph, Path(args.model), profile)  # the winner's model
        except InfeasibleBudget as exc:
            return _refuse(args, summary, str(exc))
        finally:
            end_progress()
        planned_tail = tails.of_plan(plan)
        done = (budget is None or planned_tail is None or tail is None or planned_tail <= tail
                or plan.peak_bytes + planned_tail <= budget or was_interrupted(plan))
        tail = planned_tail
        if done:
            break
    elapsed = time.perf_counter() - start
    interrupted = was_interrupted(plan)
    if interrupted:
        plan = as_interrupted(plan)
    try:
        assert_valid(graph, plan, profile.capacities)
    except PlanError as exc:
        print(f"internal error: {exc}", file=sys.stderr)
        return 3
    head_budget = _head_budget(budget, head_cap, tail)
    summary.update(load_bound_bytes=load_bound(graph).bytes,
                   stream_groups=[list(g.ops) for g in plan.stream_groups])
    arena = tails.arena(plan.peak_bytes)
    fits = ((head_budget is None or plan.peak_bytes <= head_budget)
            and (budget is None or arena is None or arena <= budget))
    summary.update(plan_summary(plan, head_budget, elapsed))
    summary.update(arena_summary(plan.peak_bytes, tail, arena, head_budget, tails),
                   fits_budget=fits)
    summary["interrupted"] = interrupted
    summary.update(latency_fields(graph, plan, profile))
    device_bytes = arena if arena is not None else plan.peak_bytes
    summary["fits_sram"] = device_bytes <= profile.sram_bytes
    if args.outdir or args.svg:
        from backends import write_outputs

        written = write_outputs(graph, plan, Path(args.model), args.outdir, args.emit,
                                svg=args.svg, budget=budget, profile=profile)
        summary["files"] = [str(p) for p in written]
    if args.json:
        print(json.dumps(stamp("solve", summary)))
    else:
        _print_summary(summary, plan)
    # One warning, after the plan (a refusal stays one line): the device's size, or else
    # a budget that promises more than the device holds.
    if not summary["fits_sram"]:
        what = "arena total" if arena is not None else "plan"
        print(sram_warning(what, device_bytes, profile), file=sys.stderr)
    elif budget is not None and budget > profile.sram_bytes:
        print(sram_warning("budget", budget, profile), file=sys.stderr)
    if interrupted:
        print("interrupted: wrote the best valid plan found so far (not proven optimal)",
              file=sys.stderr)
        return 130
    if not fits:
        if arena is not None and budget is not None and arena > budget:
            print(f"error: the {plan.planner} plan needs an arena of {arena:,} B "
                  f"(head {plan.peak_bytes:,} + tail {tail:,}{_loading(arena, plan, tail)}), "
                  f"{arena - budget:,} B over the budget", file=sys.stderr)
        else:
            print(f"error: the {plan.planner} plan needs a head of {plan.peak_bytes:,} B, "
                  f"{plan.peak_bytes - head_budget:,} B over the budget for the head",
                  file=sys.stderr)
        return 1
    return 0


TAIL_ROUNDS = 4


def _head_budget(budget: int | None, head_cap: int | None, tail: int | None) -> int | None:
    whole = None if budget is None else max(0, budget - (tail or 0))
    caps = [c for c in (head_cap, whole) if c is not None]
    return min(caps) if caps else None


def _below_bound(budget: int | None, head_budget: int, tail: int | None, ws) -> str:
    """Why a head budget below the (streamed, with --row-streaming) working-set bound fails."""
    what = f"head budget {head_budget:,} B"
    if budget is not None and tail and head_budget == budget - tail:
        what = (f"budget {budget:,} B leaves a head of {head_budget:,} B after the predicted "
                f"tail of {tail:,} B, which")
    elif budget is not None and head_budget == budget:
        what = f"budget {budget:,} B"
    return (f"{what} is below the working-set bound: {ws.detail} needs {ws.bytes:,} B, "
            f"{ws.bytes - head_budget:,} B more")


def _loading(arena: int, plan, tail: int) -> str:
    extra = arena - plan.peak_bytes - tail
    return f" + {extra:,} TFLM uses only while loading" if extra > 0 else ""


def arena_summary(head: int, tail: int | None, arena: int | None, head_budget: int | None,
                  tails) -> dict:
    return {"head_bytes": head, "tail_bytes": tail, "arena_bytes": arena,
            "head_budget_bytes": head_budget, "tail_parts": dict(tails.parts),
            "tail_note": tails.note}


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
        # A row spill (spill_rows) is a tensor's one spill too, written as it is produced.
        "num_spills": sum(1 for t in plan.transfers if t.kind in ("spill", "spill_rows")),
        "num_row_spills": sum(1 for t in plan.transfers if t.kind == "spill_rows"),
        "num_fusions": len(plan.fusions),
        "solve_seconds": round(elapsed, 4),
        "notes": list(plan.notes),
    }


def _refuse(args: argparse.Namespace, summary: dict, message: str) -> int:
    if args.json:
        summary.update({"status": "infeasible", "fits_budget": False, "peak_bytes": None,
                        "bound_bytes": None, "gap": None, "spilled_bytes": None,
                        "fetched_bytes": None, "est_transfer_seconds": None,
                        "solve_seconds": 0.0, "head_bytes": None, "arena_bytes": None,
                        "error": message})
        summary.setdefault("tail_bytes", None)
        print(json.dumps(stamp("solve", summary)))
    print(f"error: {message}", file=sys.stderr)
    return 1


def _print_summary(s: dict, plan) -> None:
    print(f"model        {s['model']} ({s['model_path']}; profile {s['profile']}, "
          f"planner {s['planner']})")
    print(f"head         {s['head_bytes']:>10,} B   the plan's peak, status {s['status']}"
          + (f", gap {s['gap']:.2%}" if s.get("gap") else ""))
    if s["tail_bytes"] is not None:
        print(f"tail         {s['tail_bytes']:>10,} B   TFLM's persistent data, predicted "
              "(64-bit host)")
        extra = s["arena_bytes"] - s["head_bytes"] - s["tail_bytes"]
        why = (f"head + tail + {extra:,} B TFLM uses only while loading" if extra > 0
               else "head + tail: the size for MicroInterpreter")
        print(f"arena total  {s['arena_bytes']:>10,} B   {why}")
    else:
        print(f"tail         {'-':>10}     {s['tail_note']}")
    # The load bound is what no plan reaches without moving data or fusing ops; a plan
    # below it spilled or fused (or both), so say which way it was passed.
    below = " (passed by spilling/fusion)" if s["head_bytes"] < s["load_bound_bytes"] else ""
    print(f"load bound   {s['load_bound_bytes']:>10,} B   (live bytes at the busiest step: no "
          f"plan without spilling or fusion goes below){below}")
    print(f"work-set bnd {s['working_set_bound_bytes']:>10,} B   (what one op must hold: "
          "no head goes below" + (" without row streaming)" if s["stream_groups"] else ")"))
    if s["streamed_bound_bytes"] is not None:
        why = (f"the least over the {s['stream_candidates']} candidate partitions into "
               "streamed groups: no head with row streaming goes below") \
            if (s["stream_candidates"] or 0) > 1 else \
            "no chain of ops the row kernels run on this profile: nothing streams"
        print(f"streamed bnd {s['streamed_bound_bytes']:>10,} B   ({why})")
    if s["stream_groups"]:
        groups = ", ".join(f"{g[0]}-{g[-1]}" for g in s["stream_groups"])
        print(f"groups       ops {groups} streamed row by row (TinyPlanStreamedGroup)")
    verdict = "fits" if s["fits_budget"] else "DOES NOT FIT"
    if s["budget_bytes"] is not None:
        bounded = "arena total" if s["tail_bytes"] is not None else "head"
        print(f"budget       {s['budget_bytes']:>10,} B   {verdict} ({bounded})")
    if s["head_budget_bytes"] is not None and s["head_budget_bytes"] != s["budget_bytes"]:
        head_fits = s["head_bytes"] <= s["head_budget_bytes"]
        print(f"head budget  {s['head_budget_bytes']:>10,} B   "
              f"{'fits' if head_fits else 'DOES NOT FIT'}")
    print(f"sram         {s['sram_bytes']:>10,} B   ({s['profile']} profile; the stack and the "
          "rest of the firmware need room too)")
    if plan.transfers:
        rows = f" ({s['num_row_spills']} row by row)" if s["num_row_spills"] else ""
        print(f"spilled      {s['spilled_bytes']:>10,} B in {s['num_spills']} spills{rows}, "
              f"fetched {s['fetched_bytes']:,} B, est. transfer {s['est_transfer_seconds']:.4f} s")
    lat = s["latency"]
    print(f"latency      {s['est_latency_seconds'] * 1e3:>10,.2f} ms end to end, estimated: "
          f"compute {lat['compute_seconds'] * 1e3:,.2f} ms + waiting on transfers "
          f"{lat['exposed_transfer_seconds'] * 1e3:,.2f} ms (all transfers blocking: "
          f"{s['est_latency_blocking_seconds'] * 1e3:,.2f} ms; profile estimates, not "
          "measurements)")
    if plan.fusions:
        print(f"fusions      {s['num_fusions']}")
    if plan.op_kernels:
        ops = ", ".join(str(k) for k, _ in plan.op_kernels)
        print(f"kernels      TRANSPOSE_CONV ops {ops} on the row kernel (TinyPlanTransposeConv, "
              "one output row of scratch; --stock-transpose-conv keeps TFLM's)")
    for note in s["notes"]:
        print(f"note         {note}")
    print(f"solved in    {s['solve_seconds']:.2f} s")
    for f in s.get("files", []):
        print(f"wrote        {f}")
