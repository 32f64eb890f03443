"""`verify-tflm ORIGINAL PLANNED`: prove an offline plan on the real TFLM interpreter.

Both models run in tflite-micro on the same random inputs; their outputs must be
bit-identical, and TFLM's arena head for the planned model must equal the plan's
peak recorded in its `TinyPlanPeak` metadata. Exit 0 when all holds, 1 on any
difference, 2 on bad input (including a rewritten model with custom ops, which
stock TFLM cannot run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import PlannerError
from ..schema import stamp


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify-tflm",
        help="run original and offline-planned .tflite on real TFLM; compare outputs and head",
        description="Run ORIGINAL and PLANNED on the tflite-micro interpreter with the same "
        "random inputs. Passes when every output is bit-identical and TFLM's arena head for "
        "PLANNED equals the plan's peak. Exit 0 pass, 1 difference, 2 bad input.",
    )
    p.add_argument("original", help="the model as given to the planner")
    p.add_argument("planned", help="<stem>.planned.tflite written by solve --emit tflite")
    p.add_argument("--runs", type=int, default=3, help="random input sets (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first input set")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(run=run)


def _read(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise PlannerError(f"{path}: no such file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise PlannerError(f"{path}: cannot read: {exc.strerror}") from None


def compare_outputs(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[bool, str]:
    """(bit-identical, short description of the first difference)."""
    if len(a) != len(b):
        return False, f"{len(a)} vs {len(b)} outputs"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.dtype != y.dtype or x.shape != y.shape:
            return False, f"output {i}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if x.tobytes() != y.tobytes():
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            n = int(np.count_nonzero(x != y)) if x.dtype.kind != "f" else \
                int(np.count_nonzero(x.view(np.uint8) != y.view(np.uint8)))
            return False, f"output {i}: {n} elements differ, max |diff| {np.nanmax(diff):g}"
    return True, "identical"


MAX_RUNS = 1000


def _reference(original: bytes, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random inputs for ORIGINAL and its outputs on them (one TFLM child)."""
    from backends import tflm_interpreter as tflm

    inputs = tflm.random_inputs(original, seed)
    return inputs, tflm.invoke(original, inputs)


def verify(original: bytes, planned: bytes, runs: int = 3, seed: int = 0) -> dict:
    """Everything the command reports, as a dict (`ok` says whether it passed).

    TFLM runs in child processes (backends/tflm_isolation.py): a TFLM abort becomes
    one TFLMAborted line, and the offline array is checked before TFLM reads it.
    """
    from backends import tflite_io as io
    from backends import tflm_interpreter as tflm
    from backends.offline_check import check_offline_array
    from backends.tflite_offline import read_peak
    from backends.tflm_isolation import TFLMAborted, isolated

    if not 1 <= runs <= MAX_RUNS:
        raise PlannerError(f"--runs must be 1..{MAX_RUNS}, got {runs}")
    if not 0 <= seed <= 2**63 - 1 - runs:
        raise PlannerError(f"--seed must be 0..2^63-1, got {seed}")
    model = io.read_model(planned)
    custom = sorted(set(io.custom_op_names(model)) & set(io.CUSTOM_OPS))
    if custom:
        raise PlannerError(
            f"the planned model contains custom ops {', '.join(custom)}: real TFLM cannot run "
            "them without the generated C glue (spill plans are checked by the executor)")
    recorded = read_peak(model)
    if recorded is None:
        raise PlannerError("the planned model carries no TinyPlanPeak metadata: write it with "
                           "`solve --emit tflite`")
    if not 0 < int(recorded["peak"]) <= 2**31 - 1:
        raise PlannerError(f"TinyPlanPeak records a peak of {recorded['peak']} B")
    check_offline_array(model, planned, int(recorded["peak"]))
    original_head = isolated("ORIGINAL", tflm.arena_head_bytes, original)
    report: dict = {
        "plan_peak_bytes": recorded["peak"],
        "predicted_head_bytes": recorded["predicted_head"],
        "original_head_bytes": original_head,
        "runs": [],
    }
    try:
        planned_head = isolated("PLANNED", tflm.arena_head_bytes, planned)
    except TFLMAborted:
        raise
    except PlannerError as exc:  # the plan itself broke the model: a failed verification
        report.update(planned_head_bytes=None, error=str(exc), ok=False)
        return report
    report["planned_head_bytes"] = planned_head
    all_same = True
    for r in range(runs):
        inputs, expected = isolated("ORIGINAL", _reference, original, seed + r)
        try:
            got = isolated("PLANNED", tflm.invoke, planned, inputs)
            same, why = compare_outputs(expected, got)
        except TFLMAborted:
            raise
        except PlannerError as exc:
            same, why = False, str(exc)
        report["runs"].append({"seed": seed + r, "identical": same, "detail": why})
        all_same &= same
    report["head_matches"] = planned_head == recorded["peak"]
    report["ok"] = all_same and report["head_matches"]
    return report


def run(args: argparse.Namespace) -> int:
    report = verify(_read(args.original), _read(args.planned), args.runs, args.seed)
    report["original"], report["planned"] = args.original, args.planned
    report["model"], report["model_path"] = Path(args.original).stem, args.original
    if args.json:
        print(json.dumps(stamp("verify-tflm", report)))
        return 0 if report["ok"] else 1
    print(f"original  {args.original}")
    print(f"planned   {args.planned}")
    print(f"{'run':>4}  {'seed':>6}  outputs")
    for i, r in enumerate(report["runs"]):
        print(f"{i:>4}  {r['seed']:>6}  {'OK  ' if r['identical'] else 'DIFF'} {r['detail']}")
    if report.get("error"):
        print(f"planned model failed on TFLM: {report['error']}")
    print(f"arena head  original (TFLM greedy) {report['original_head_bytes']:>12,} B")
    head = report.get("planned_head_bytes")
    print(f"            planned (TFLM)         {head if head is None else f'{head:,}':>12} B")
    verdict = "OK" if report.get("head_matches") else "DIFFERS"
    print(f"            plan peak              {report['plan_peak_bytes']:>12,} B   {verdict}")
    if report["predicted_head_bytes"] != report["plan_peak_bytes"]:
        print(f"            (the writer predicted {report['predicted_head_bytes']:,} B: TFLM "
              "places scratch buffers online)")
    print(f"result    {'PASS' if report['ok'] else 'FAIL'}")
    return 0 if report["ok"] else 1
