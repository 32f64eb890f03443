"""One small interface for every planner: a request in, a plan out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..analysis import Buffer
from ..device import DeviceProfile
from ..ir import Graph
from ..kernels import op_kernels_of
from ..plan import Plan, Segment
from ..streaming import groups_of


@dataclass(frozen=True)
class Request:
    graph: Graph
    profile: DeviceProfile
    budget: int | None = None
    objective: str | None = None  # "peak", "transfers" or "latency"; None: transfers under a
    # budget, else peak
    time_limit: float = 60.0
    solver: str = "cpsat"
    workers: int = 2
    # Reproducible search (same plan on every run), at some cost in speed on large models.
    deterministic: bool = False
    # Work budget of the exact search in CP-SAT deterministic seconds, shared by all its
    # phases: stopping on it gives the same plan whatever the machine load (it implies
    # `deterministic`). time_limit stays a wall-clock cap over the whole planning call.
    work_limit: float | None = None
    # Called with {"phase", "best", "bound", "gap", "solutions", "seconds"} whenever the
    # exact search improves its plan (best/bound in bytes for "peak", seconds for
    # "transfers" and "latency"); the CLI prints it. Runs on the solver's thread: keep it short.
    progress: Callable[[dict], None] | None = field(default=None, compare=False, repr=False)
    # The exact planner's latency model (planner/planners/ilp/windows.py, latency.py):
    # end-to-end seconds a "peak" plan may not exceed, and how many steps a transfer
    # window may span (0: every transfer blocks).
    latency_cap: float | None = None
    async_window: int = 3

    @property
    def reproducible(self) -> bool:
        return self.deterministic or self.work_limit is not None

    @property
    def goal(self) -> str:
        if self.objective:
            return self.objective
        if self.latency_cap is not None:  # the peak under a latency cap
            return "peak"
        return "transfers" if self.budget is not None else "peak"


PlannerFn = Callable[[Request], Plan]
_REGISTRY: dict[str, PlannerFn] = {}
_HEURISTICS: set[str] = set()


def register(name: str, heuristic: bool = False) -> Callable[[PlannerFn], PlannerFn]:
    """Add a planner; `heuristic`: a fast planner that proves nothing, which the exact
    planner runs as a seed (exact searches and test doubles are not)."""
    def deco(fn: PlannerFn) -> PlannerFn:
        stamped = _with_graph_records(fn)
        _REGISTRY[name] = stamped
        if heuristic:
            _HEURISTICS.add(name)
        else:
            _HEURISTICS.discard(name)
        return stamped

    return deco


def _with_graph_records(fn: PlannerFn) -> PlannerFn:
    """`fn` whose plans carry what the graph itself records: the streamed groups of a
    planned graph (planner/streaming.py). A planner plans the group ops like any op and
    needs to know nothing of them."""
    @functools.wraps(fn)
    def planner(request: Request) -> Plan:
        plan = fn(request)
        groups = groups_of(request.graph)
        return plan if plan.stream_groups == groups else replace(plan, stream_groups=groups)

    return planner


def heuristics() -> list[str]:
    """The registered heuristic planners, sorted."""
    registry()
    return sorted(_HEURISTICS)


def registry() -> dict[str, PlannerFn]:
    from . import load_all

    load_all()
    return dict(_REGISTRY)


def plan_from_offsets(
    graph: Graph, bufs: Sequence[Buffer], offsets: Sequence[int], planner: str, **extra
) -> Plan:
    """A spill-free plan: each buffer one segment over its whole lifetime."""
    segments = tuple(
        Segment(b.tensor, b.first, b.last, off, b.size)
        for b, off in zip(bufs, offsets, strict=True)
    )
    peak = max((s.end for s in segments), default=0)
    extra.setdefault("op_kernels", op_kernels_of(graph))
    extra.setdefault("stream_groups", groups_of(graph))
    return Plan(graph.name, planner, graph.num_steps, peak, segments, **extra)
