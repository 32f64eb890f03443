"""`run MODEL PLAN.json`: execute a plan op by op in an arena of exactly its peak and compare.

Exit 0 when the outputs match the model run whole (integers identical, floats within
1e-6 relative), 1 on a mismatch (one line says why), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import same_file
from ..checker import check
from ..device import bundled_profiles, load_profile
from ..errors import PlannerError
from ..plan import Plan
from ..plan_check import check_plan_for
from ..schema import stamp
from ..streaming import planned_graph
from .common import add_model_args, read_graph


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="execute a plan in a real byte arena with real kernels and compare outputs",
        description="Run MODEL op by op inside one arena of exactly the plan's peak, spilling "
        "to and fetching from storage as the plan says, and compare the outputs with the "
        "model run whole (onnxruntime / ai-edge-litert reference kernels).",
    )
    add_model_args(p)
    p.add_argument("plan", help="plan.json written by `solve -o OUTDIR`")
    p.add_argument("--storage", choices=("local", "remote"), default="local",
                   help="local: a temp file per storage; remote: the storage host on loopback "
                   "TCP, started and stopped by this command")
    p.add_argument("--inputs", metavar="FILE.npz",
                   help="model inputs keyed by input name (or arr_0, arr_1, ...); "
                   "default: random inputs from --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (>= 0)")
    p.add_argument("--profile", default=None,
                   help="refuse the plan unless it was made for this profile (name or .toml); "
                   "the plan's own storages and capacities are checked either way")
    p.add_argument("--runtime", choices=("auto", "litert", "tflm"), default="auto",
                   help="TFLite kernels: ai-edge-litert reference kernels, real TFLM, or auto "
                   "(litert unless it cannot run the model)")
    p.add_argument("--unchecked", action="store_true",
                   help="execute even a plan the checker rejects (to watch it fail)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from backends.executor import load_inputs, run_plan

    if not 0 <= args.seed < 2**63:
        raise PlannerError(f"--seed must be 0..2^63-1, got {args.seed}")
    plan = Plan.load(args.plan)  # strict: planner/plan_check.py
    if same_file(args.plan, args.model):
        raise PlannerError("the plan and the model are the same file")
    profile = load_profile(args.profile) if args.profile else None
    if profile is None and plan.profile is not None and plan.profile.name in bundled_profiles():
        profile = load_profile(plan.profile.name)  # a bundled name must mean the bundled one
    made_for = check_plan_for(plan, args.model, profile)
    # The graph the plan was made for: the same ops on the same custom kernels, the same
    # streamed groups.
    graph = planned_graph(read_graph(args), plan)
    if plan.num_steps != graph.num_steps:
        raise PlannerError(f"plan {args.plan} has {plan.num_steps} steps, model "
                           f"{Path(args.model).name} has {graph.num_steps}: not its plan")
    errors = check(graph, plan, made_for.capacities)
    if errors and not args.unchecked:
        raise PlannerError(f"plan {args.plan} is invalid ({errors[0]}); --unchecked runs it anyway")
    inputs = load_inputs(graph, args.inputs) if args.inputs else None
    result = run_plan(graph, plan, args.model, args.storage, inputs, args.seed,
                      runtime=args.runtime)
    ex = result.execution
    summary = {
        "model": graph.name,
        "model_path": str(args.model),
        "plan_path": str(args.plan),
        "planner": plan.planner,
        "arena_bytes": plan.peak_bytes,
        "ops": len(graph.ops),
        "storage_kind": args.storage,
        "runtime": getattr(result.kernels, "runtime", "onnxruntime"),
        "match": result.mismatch is None,
        "reason": result.mismatch,
        "checker_errors": len(errors),
        "run_seconds": ex.seconds,
        "kernel_seconds": ex.kernel_seconds,
        "poisoned_bytes": ex.poisoned_bytes,
        "storages": [s.to_json() for s in ex.storage.values()],
        "est_transfer_seconds": plan.est_transfer_seconds,
    }
    if args.json:
        print(json.dumps(stamp("run", summary)))
    else:
        _print(summary)
    if result.mismatch is not None:
        print(f"mismatch: {result.mismatch}", file=sys.stderr)
        return 1
    return 0


def _print(s: dict) -> None:
    print(f"model        {s['model']}  (plan {s['planner']}, {s['ops']} ops, "
          f"kernels {s['runtime']})")
    print(f"arena        {s['arena_bytes']:>10,} B, {s['poisoned_bytes']:,} B poisoned on free")
    if s["checker_errors"]:
        print(f"checker      {s['checker_errors']} violations (run with --unchecked)")
    for st in s["storages"]:
        print(f"storage      {st['name']} ({st['kind']}): wrote {st['bytes_written']:,} B "
              f"in {st['writes']} writes, read {st['bytes_read']:,} B in {st['reads']} reads, "
              f"{st['seconds']:.4f} s")
    if not s["storages"]:
        print("storage      none (the plan moves no data)")
    elif s["est_transfer_seconds"]:
        print(f"estimate     {s['est_transfer_seconds']:.4f} s of transfers on the device profile")
    print(f"time         {s['run_seconds']:.3f} s ({s['kernel_seconds']:.3f} s in kernels)")
    print("outputs      " + ("match the unplanned model" if s["match"] else "MISMATCH"))
