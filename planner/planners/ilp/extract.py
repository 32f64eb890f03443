"""A solver's answer, and the Plan it describes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

from ...costs import footprint, plan_transfer_seconds
from ...ir import ALIGNMENT
from ...kernels import op_kernels_of
from ...plan import Fusion, Part, Plan, Segment, Transfer
from ...streaming import groups_of
from .model import Problem, Stream


@dataclass
class Solution:
    """Chosen values, solver-neutral. Offsets and sizes in 16-byte units."""

    segments: dict[int, list[tuple[int, int, int]]]  # item -> [(a, b, offset)]
    streams: dict[int, list[tuple[int, int]]]  # item -> [(point, line-buffer offset)]
    storage: dict[int, str]  # spilled item -> storage name
    fused: set[int]  # fusion groups whose concat output is never materialised
    scratch: dict[int, int]  # scratch tensor -> offset
    status: str  # optimal / feasible
    bound_units: int | None = None  # proven lower bound on the peak (units)
    bound_cost_us: int | None = None
    notes: list[str] = field(default_factory=list)
    # Transfer windows (windows.py): (item, point) -> steps a fetch there is issued early,
    # (item, point) -> steps the spill ending first segment (0, point) completes late.
    leads: dict[tuple[int, int], int] = field(default_factory=dict)
    exts: dict[tuple[int, int], int] = field(default_factory=dict)
    exposed_us: int | None = None  # the latency model's exposed transfer time
    bound_exposed_us: int | None = None  # its proven lower bound
    # Latency objective: the least-transfer solution its search started from, kept so the
    # planner can return whichever simulates faster (the model is a relaxation).
    alternative: Solution | None = None


def window_span(sol: Solution, item, a: int, b: int) -> tuple[int, int]:
    """Steps of segment (a, b) with its transfer windows: a fetch issued early starts it
    sooner, a spill completing late holds it longer (windows.py)."""
    first, last = item.span(a, b)
    if a > 0:
        first -= sol.leads.get((item.index, a), 0)
    else:
        last += sol.exts.get((item.index, b), 0)
    return first, last


def to_plan(problem: Problem, sol: Solution, planner: str, objective: str) -> Plan:
    graph = problem.graph
    segments: list[Segment] = []
    transfers: list[Transfer] = []
    parts: list[Part] = []
    next_address: dict[str, int] = defaultdict(int)
    stream_ops: set[int] = set()
    for i in sorted(set(sol.segments) | set(sol.streams) | set(sol.storage)):
        # An item row-spilled at creation and only streamed afterwards has no segment.
        chosen = sol.segments.get(i, [])
        item = problem.items[i]
        for a, b, off in sorted(chosen):
            first, last = window_span(sol, item, a, b)
            segments.append(Segment(item.tensor, first, last, off * ALIGNMENT,
                                    item.units * ALIGNMENT, item.part))
        if item.part is not None:
            # A concat reading a split tensor's parts is a fused concat (FusedConcat op).
            for a, b, _ in chosen:
                stream_ops.update(p.stream_op for p in item.points[a:b + 1]
                                  if p.stream == Stream.CONCAT)
        for j, off in sol.streams.get(i, []):
            step = item.points[j].step
            segments.append(Segment(item.tensor, step, step, off * ALIGNMENT,
                                    item.line_units[j] * ALIGNMENT, item.part, "line_buffer"))
            if item.points[j].stream == Stream.CONCAT:
                stream_ops.add(item.points[j].stream_op)
        row_spilled = [j for j, _ in sol.streams.get(i, [])
                       if item.points[j].stream == Stream.ROWS_OUT]
        # A solution may mark spilled an item that is never in the arena (a fused-away concat
        # output, whose storage choice costs nothing in the load view): nothing to write.
        if i in sol.storage and (chosen or row_spilled):
            name = sol.storage[i]
            store = problem.profile.storage(name)
            address = next_address[name]
            next_address[name] += footprint(store, item.nbytes)
            if row_spilled:  # written row by row as the group produced it: its one spill
                transfers.append(Transfer("spill_rows", item.tensor,
                                          item.points[row_spilled[0]].step, name, item.nbytes,
                                          address, item.part))
            else:
                a, b, _ = min(chosen)
                ext = sol.exts.get((i, b), 0)
                transfers.append(Transfer("spill", item.tensor, item.points[b].step, name,
                                          item.nbytes, address, item.part,
                                          complete=item.points[b].step + ext if ext else None))
            for a, _, _ in chosen:
                if a > 0:
                    lead = sol.leads.get((i, a), 0)
                    transfers.append(Transfer("fetch", item.tensor, item.points[a].step, name,
                                              item.nbytes, address, item.part,
                                              issue=item.points[a].step - lead if lead else None))
            for j, _ in sol.streams.get(i, []):
                if j not in row_spilled:
                    transfers.append(Transfer("stream", item.tensor, item.points[j].step, name,
                                              item.nbytes, address, item.part))
    for v in problem.variants:
        if v.spilled_channels and any(sol.segments.get(i) for i in v.items):
            channels = graph.tensors[v.tensor].channels or 0
            kept, gone = (problem.items[i] for i in v.items)
            cut = channels - v.spilled_channels
            parts += [Part(v.tensor, 0, 0, cut, kept.nbytes), Part(v.tensor, 1, cut, channels,
                                                                     gone.nbytes)]
    fixed = {t: (step, units) for t, step, units in problem.fixed}
    for t, off in sol.scratch.items():
        step, units = fixed[t]
        segments.append(Segment(t, step, step, off * ALIGNMENT, units * ALIGNMENT))
    fusions = []
    for g, group in enumerate(problem.groups):
        if g in sol.fused:
            fusions.append(Fusion(group.concat, group.conv))
        elif group.concat in stream_ops:
            fusions.append(Fusion(group.concat, None))
    peak = max((s.end for s in segments), default=0)
    plan = Plan(
        model=graph.name,
        planner=planner,
        num_steps=graph.num_steps,
        peak_bytes=peak,
        segments=tuple(sorted(segments, key=lambda s: (s.first, s.offset))),
        parts=tuple(parts),
        transfers=tuple(sorted(transfers, key=lambda t: (
            t.step, t.kind not in ("spill", "spill_rows"), t.tensor))),
        fusions=tuple(fusions),
        status=sol.status,
        bound_bytes=sol.bound_units * ALIGNMENT if sol.bound_units is not None else None,
        objective=objective,
        bound_transfer_seconds=sol.bound_cost_us / 1e6 if sol.bound_cost_us is not None else None,
        notes=tuple(sol.notes),
        op_kernels=op_kernels_of(graph),
        stream_groups=groups_of(graph),  # a planned graph's groups (planner/streaming.py)
    )
    est = plan_transfer_seconds(graph, plan, problem.profile)
    # The solver prices each transfer rounded up to a microsecond; its bound is on those
    # prices, so it may sit a few microseconds above the exact estimate.
    bound = plan.bound_transfer_seconds
    if bound is not None:
        bound = min(bound, est)
    return replace(plan, est_transfer_seconds=est, bound_transfer_seconds=bound)
