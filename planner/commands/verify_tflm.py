"""`verify-tflm ORIGINAL PLANNED`: prove an offline plan on the real TFLM interpreter.

Both models run in tflite-micro on the same random inputs; their outputs must be
bit-identical, and TFLM's arena head for the planned model must equal the plan's
peak recorded in its `TinyPlanPeak` metadata. Each model runs on one interpreter,
`--runs` inferences in a row, as a device runs them (state kept between inferences,
such as flash contents, is exercised).

A rewritten model (spill plans: Spill, Fetch, Fused* custom ops) runs with the
project's ops compiled against the TFLM tree the user names (`--tflm-root` or
$TINYPLAN_TFLM_ROOT; backends/tflm/custom.py) on host storages (`--storage`). Without
such a tree it is refused. Exit 0 when all holds, 1 on any difference, 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass
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
    p.add_argument("--tflm-root", help="TFLM source tree matching the installed tflite-micro "
                   "wheel, to build the custom ops of a rewritten model (default "
                   "$TINYPLAN_TFLM_ROOT)")
    p.add_argument("--storage", choices=("ram", "file", "flash", "remote"), default="ram",
                   help="host driver behind every storage of a rewritten model: RAM, a file, "
                   "NOR flash emulated in RAM, or a storage-host process over loopback TCP "
                   "(default ram)")
    p.add_argument("--profile", help="device profile giving the storages' flash geometry and "
                   "compression (by storage name)")
    p.add_argument("--compress", action="store_true",
                   help="compress every spill (TinySeg's scheme), whatever the profile says")
    p.add_argument("--async", dest="async_mode", default="off",
                   choices=("off", "blocking", "thread", "thread-latest"),
                   help="asynchronous channel behind every storage (backends/c/tp_async.h): "
                   "none, the blocking driver, a worker thread moving data as soon as it can, "
                   "or one moving it at the end of each window (default off)")
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


@dataclass(frozen=True)
class CustomSetup:
    """How a rewritten model's custom ops run: the tree they build against, the storages."""

    tflm_root: str | None = None
    storage: str = "ram"
    profile: object | None = None
    compress: bool = False
    workdir: str | None = None
    async_mode: str = "off"  # tflm_custom.ASYNC_MODES


def _custom_ops(model, setup: CustomSetup, report: dict, stack):
    """Load the project's ops and fresh storages for `model`; the registerer names to pass."""
    from backends.tflite import io
    from backends.tflm import custom as tflm_custom

    custom = sorted(set(io.custom_op_names(model)))
    if not custom:
        return ()
    if tflm_custom.tflm_root(setup.tflm_root) is None:
        raise PlannerError(
            f"the planned model contains custom ops {', '.join(custom)}: real TFLM runs them "
            f"only with the project's C glue built against a TFLM tree; set "
            f"{tflm_custom.ENV_ROOT} or --tflm-root (docs/tflm_backend.md)")
    handle = tflm_custom.load(setup.tflm_root)
    missing = sorted(set(custom) - set(tflm_custom.registered_ops(handle)))
    if missing:
        raise PlannerError(f"the planned model uses custom ops {', '.join(missing)} that the "
                           "project's registerer does not provide")
    specs = tflm_custom.storage_specs(model, setup.storage, setup.profile, setup.compress,
                                      setup.workdir)
    if setup.storage == "remote":
        import tempfile

        work = setup.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        specs = tflm_custom.start_storage_hosts(specs, stack, work)
    tflm_custom.configure_storages(handle, specs)
    stack.callback(handle.tp_py_reset)  # close files and sockets before the hosts stop
    report["custom_ops"] = custom
    report["storages"] = [{"kind": s.kind, "capacity": s.capacity, "erase_block": s.erase_block,
                           "granule": s.granule, "compress": s.compress} for s in specs]
    report["_handle"] = handle
    return (tflm_custom.REGISTERER,)


def verify(original: bytes, planned: bytes, runs: int = 3, seed: int = 0,
           setup: CustomSetup | None = None) -> dict:
    """Everything the command reports, as a dict (`ok` says whether it passed).

    Stock models run in child processes (backends/tflm/isolation.py): a TFLM abort
    becomes one TFLMAborted line. The offline array is checked before TFLM reads it.
    A model with the project's custom ops runs in one child that inherits the glue built
    against the user's TFLM tree and the storages configured here.
    """
    from backends.tflite import io
    from backends.tflite.offline import read_peak
    from backends.tflite.offline_check import check_offline_array

    if not 1 <= runs <= MAX_RUNS:
        raise PlannerError(f"--runs must be 1..{MAX_RUNS}, got {runs}")
    if not 0 <= seed <= 2**63 - 1 - runs:
        raise PlannerError(f"--seed must be 0..2^63-1, got {seed}")
    model = io.read_model(planned)
    report: dict = {}
    setup = setup or CustomSetup()
    recorded = read_peak(model)
    if recorded is None:
        raise PlannerError("the planned model carries no TinyPlanPeak metadata: write it with "
                           "`solve --emit tflite`")
    if not 0 < int(recorded["peak"]) <= 2**31 - 1:
        raise PlannerError(f"TinyPlanPeak records a peak of {recorded['peak']} B")
    check_offline_array(model, planned, int(recorded["peak"]))
    with contextlib.ExitStack() as stack:
        registerers = _custom_ops(model, setup, report, stack)
        handle = report.pop("_handle", None)
        if registerers:
            # The glue and its storages are set up in this process; a forked child inherits
            # them and runs everything, so TFLM aborting in our ops is one line too.
            from backends.tflm.isolation import isolated

            return isolated("PLANNED", _run, original, planned, runs, seed, setup, report,
                            recorded, registerers, handle, False)
        return _run(original, planned, runs, seed, setup, report, recorded, registerers, handle)


def _run(original: bytes, planned: bytes, runs: int, seed: int, setup: CustomSetup,
         report: dict, recorded: dict, registerers, handle, isolate: bool = True) -> dict:
    """Both models on TFLM; `isolate`: each in its own child (False: already in one)."""
    from backends.tflm import interpreter as tflm
    from backends.tflm.isolation import TFLMAborted, isolated

    def call(label: str, fn, *args):
        return isolated(label, fn, *args) if isolate else fn(*args)

    inputs = [tflm.random_inputs(original, seed + r) for r in range(runs)]
    expected, original_arena = call("ORIGINAL", tflm.invoke_runs, original, inputs)
    report.update({
        "plan_peak_bytes": recorded["peak"],
        "predicted_head_bytes": recorded["predicted_head"],
        "original_head_bytes": original_arena["head"],
        "runs": [],
    })
    if handle is not None and setup.async_mode != "off":
        from backends.tflm import custom as tflm_custom

        # Worker threads do not survive a fork: made here, in the process that invokes.
        tflm_custom.set_async(handle, setup.async_mode)
    try:
        got, arena = call("PLANNED", tflm.invoke_runs, planned, inputs, None, registerers)
    except TFLMAborted:
        raise
    except PlannerError as exc:  # the plan itself broke the model: a failed verification
        report.update(planned_head_bytes=None, error=str(exc), ok=False)
        return report
    report["planned_head_bytes"] = arena["head"]
    report["planned_arena_bytes"] = {k: arena.get(k) for k in ("total", "head", "tail")}
    all_same = True
    for r in range(runs):
        if isinstance(expected[r], str):
            raise PlannerError(f"the original model fails on TFLM: {expected[r]}")
        if isinstance(got[r], str):
            same, why = False, got[r]
        else:
            same, why = compare_outputs(expected[r], got[r])
        report["runs"].append({"seed": seed + r, "identical": same, "detail": why})
        all_same &= same
    if handle is not None and setup.storage == "flash":
        from backends.tflm import custom as tflm_custom

        report["flash_erases"] = [tflm_custom.flash_erases(handle, i)
                                  for i in range(len(report["storages"]))]
    if handle is not None and setup.async_mode != "off":
        from backends.tflm import custom as tflm_custom

        started, on_worker = tflm_custom.async_counts(handle)
        report["async"] = {"mode": setup.async_mode, "windows_started": started,
                           "on_worker": on_worker}
    report["head_matches"] = arena["head"] == recorded["peak"]
    report["ok"] = all_same and report["head_matches"]
    return report


def run(args: argparse.Namespace) -> int:
    import tempfile

    profile = None
    if args.profile:
        from ..device import load_profile

        profile = load_profile(args.profile)
    original, planned = _read(args.original), _read(args.planned)
    with tempfile.TemporaryDirectory(prefix="tinyplan-storage-") as work:
        setup = CustomSetup(args.tflm_root, args.storage, profile, args.compress, work,
                            args.async_mode)
        report = verify(original, planned, args.runs, args.seed, setup)
    report["original"], report["planned"] = args.original, args.planned
    report["model"], report["model_path"] = Path(args.original).stem, args.original
    if args.json:
        print(json.dumps(stamp("verify-tflm", report)))
        return 0 if report["ok"] else 1
    print(f"original  {args.original}")
    print(f"planned   {args.planned}")
    if report.get("custom_ops"):
        kinds = ", ".join(f"{s['kind']}{' compressed' if s['compress'] else ''}"
                          for s in report["storages"])
        print(f"custom    {', '.join(report['custom_ops'])} (project ops on real TFLM; "
              f"storages: {kinds or 'none'})")
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
    whole = report.get("planned_arena_bytes") or {}
    if whole.get("total") is not None:
        print(f"arena       planned total (TFLM)   {whole['total']:>12,} B   = head + tail "
              f"{whole['tail']:,} B")
    if report.get("flash_erases") is not None:
        print(f"flash       blocks erased          {report['flash_erases']}")
    print(f"result    {'PASS' if report['ok'] else 'FAIL'}")
    return 0 if report["ok"] else 1
