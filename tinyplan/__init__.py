"""tinyplan's Python API, for notebooks and scripts: load, analyse, plan, check, write.

    import tinyplan

    graph = tinyplan.load("benchmarks/models/tiny_unet_int8.tflite")
    print(tinyplan.analyse(graph).load_bound_bytes)
    plan = tinyplan.plan(graph, budget="256KiB", device="qspi-flash")
    assert tinyplan.check(graph, plan) == []
    tinyplan.write(graph, plan, "out", model_path="benchmarks/models/tiny_unet_int8.tflite")

Every function is a thin layer over the same stages the `tinyplan` command runs
(frontends -> analysis -> planners -> checker -> backends); bad input raises
`tinyplan.PlannerError` with the message the command would print. docs/python_api.md
has a worked example.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.analysis import load_bound, working_set_bound
from planner.checker import check as _check
from planner.device import DeviceProfile, bundled_profiles, load_profile
from planner.errors import InfeasibleBudget, PlannerError
from planner.ir import Graph
from planner.kernels import apply_kernels
from planner.plan import Plan
from planner.planners.base import Request, registry
from planner.streaming import apply_groups, choose_groups, groups_of, planned_graph
from planner.streaming_search import search as search_streaming
from planner.units import parse_size
from planner.version import __version__

__all__ = [
    "Analysis", "Graph", "InfeasibleBudget", "Plan", "PlannerError", "__version__", "analyse",
    "check", "load", "planners", "plan", "profile", "profiles", "write",
]


@dataclass(frozen=True)
class Analysis:
    """The two lower bounds of a model on a device (bytes), and what sets them."""

    load_bound_bytes: int  # live bytes at the busiest step: no plan without spilling/fusion
    load_bound_step: int
    working_set_bound_bytes: int  # what one op must hold: no plan at all goes below
    working_set_bound_detail: str
    num_ops: int
    num_tensors: int
    # With row_streaming: the working-set bound of the graph with its streamed groups.
    streamed_bound_bytes: int | None = None
    stream_groups: tuple[tuple[int, ...], ...] = ()


def load(path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Read an .onnx or .tflite model; `input_shapes` fixes dynamic ONNX dimensions."""
    from frontends import load_model

    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    return load_model(path, shapes)


def profiles() -> list[str]:
    """The bundled device profile names."""
    return list(bundled_profiles())


def profile(name: str | Path | DeviceProfile = "qspi-flash") -> DeviceProfile:
    """A bundled profile by name, or a .toml file."""
    return name if isinstance(name, DeviceProfile) else load_profile(str(name))


def planners() -> list[str]:
    """The registered planner names (`ilp` is the exact one)."""
    return sorted(registry())


def _planned(graph: Graph, prof: DeviceProfile, stock_transpose_conv: bool,
             row_streaming: bool) -> Graph:
    """The graph `plan` plans (as the command does): the device's kernels, and with
    `row_streaming` the chosen streamed groups as one op each."""
    source = apply_kernels(graph, prof, stock_transpose_conv)
    return apply_groups(source, choose_groups(source, prof)) if row_streaming else source


def analyse(graph: Graph, device: str | DeviceProfile = "qspi-flash",
            stock_transpose_conv: bool = False, row_streaming: bool = False) -> Analysis:
    """Lower bounds of `graph` on `device` (its kernels, streaming and fusion as the
    profile allows: the graph `plan` plans); with `row_streaming`, also the bound with
    the bound-minimising streamed groups (streaming.choose_groups), the lowest bound of
    the candidates `plan(..., row_streaming=True)` searches."""
    prof = profile(device)
    planned = _planned(graph, prof, stock_transpose_conv, row_streaming)
    source = planned.source if planned.source is not None else planned
    load_b = load_bound(planned)
    ws = working_set_bound(source, prof.can_stream, prof.fusion)
    streamed = working_set_bound(planned, prof.can_stream, prof.fusion).bytes \
        if row_streaming else None
    return Analysis(load_b.bytes, load_b.step, ws.bytes, ws.detail, len(source.ops),
                    len(source.tensors), streamed,
                    tuple(g.ops for g in groups_of(planned)))


def plan(graph: Graph, budget: int | str | None = None, planner: str = "ilp",
         device: str | DeviceProfile = "qspi-flash", objective: str | None = None,
         time_limit: float = 60.0, solver: str = "cpsat", deterministic: bool = False,
         stock_transpose_conv: bool = False, row_streaming: bool = False,
         latency_cap: float | None = None, async_window: int = 3) -> Plan:
    """Plan the arena with a named planner; the plan is checked before it is returned.

    `budget`: bytes or a size such as "256KiB" (None: minimise the peak); it bounds the
    head (the command's `--budget` adds TFLM's tail). As the command does, the ops run on
    the kernels the device allows (planner/kernels.py: int8 TRANSPOSE_CONV on the row
    kernel unless `stock_transpose_conv`); the plan records them in `op_kernels`. With
    `row_streaming`, chains of row-capable ops run as streamed groups (planner/streaming.py):
    a few candidate partitions into groups are planned within `time_limit`
    (planner/streaming_search.py) and the best plan's are recorded in `stream_groups`.
    Raises InfeasibleBudget when no plan fits, PlannerError on bad input.

    `objective`: "peak" (smallest arena), "transfers" (least transfer time under the
    budget) or "latency" (least estimated end-to-end latency under the budget, transfers
    overlapping compute over windows of up to `async_window` steps); None: transfers with
    a budget, else peak. `latency_cap`: seconds; the smallest arena within it.
    """
    found = registry()
    if planner not in found:
        raise PlannerError(f"unknown planner '{planner}': use one of {', '.join(sorted(found))}")
    prof = profile(device)
    nbytes = parse_size(budget) if budget is not None else None
    source = apply_kernels(graph, prof, stock_transpose_conv)
    request = Request(source, prof, nbytes, objective, time_limit, solver,
                      deterministic=deterministic, latency_cap=latency_cap,
                      async_window=async_window)
    if row_streaming:  # a few candidate partitions, each planned: the best wins
        chosen = search_streaming(source, request, found[planner])
        graph, result = chosen.graph, chosen.plan
    else:
        graph, result = source, found[planner](request)
    errors = _check(graph, result, prof.capacities)
    if errors:  # a planner bug, never a plan to use
        raise RuntimeError(f"the {planner} plan fails the checker: {errors[0]}")
    return result


def check(graph: Graph, plan: Plan, device: str | DeviceProfile | None = None) -> list[str]:
    """The independent checker's violations ([] for a valid plan), on the kernels the
    plan says its ops run on and with the groups it streams."""
    graph = planned_graph(graph, plan)
    return _check(graph, plan, profile(device).capacities if device is not None else None)


def write(graph: Graph, plan: Plan, outdir: str | Path, model_path: str | Path,
          emits: Iterable[str] | None = None, budget: int | str | None = None,
          device: str | DeviceProfile = "qspi-flash") -> list[Path]:
    """Write what `tinyplan solve -o OUTDIR` writes (plan.json, reports, backends' files)."""
    from backends import write_outputs

    nbytes = parse_size(budget) if budget is not None else None
    graph = planned_graph(graph, plan)
    # write_outputs checks the emits for the input format before writing anything.
    return write_outputs(graph, plan, Path(model_path), outdir,
                         list(emits) if emits is not None else None, budget=nbytes,
                         profile=profile(device))
