"""Write a plan into a .tflite as TFLM's `OfflineMemoryAllocation` metadata.

TFLM reads the metadata in `AllocationInfoBuilder::GetOfflinePlannedOffsets`: a
buffer of little-endian int32 [version, subgraph, N, offset_0 .. offset_N-1], N the
tensor count over all subgraphs, -1 for "plan it online". `CreatePlan` hands the
GreedyMemoryPlanner every buffer that needs allocating (tensors by index, then the
kernels' scratch requests) and the planner places the offline ones first at their
fixed offsets, then the online ones in descending size (ties in reverse insertion
order) each into the
lowest gap among the already placed buffers that overlap it in time.

Scratch buffers can never be offline-planned: they are requested by kernels at
Prepare and TFLM always gives them `kOnlinePlannedBuffer`. So a plan's scratch
offsets are honoured only when first-fit around the fixed tensors lands them where
the plan put them. `predict_tflm_placement` replays TFLM's algorithm to find out;
when a scratch buffer lands elsewhere the writer says so (stderr and the plan
notes in `TinyPlanPeak`), it never silently differs.

The written model also carries `TinyPlanPeak`: int32 [version 1, plan peak,
predicted TFLM head, scratch count, the plan's scratch offsets in request
order...] which
`verify-tflm` checks real TFLM against.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.tflite import io
from planner.analysis import Buffer, buffers
from planner.errors import PlannerError
from planner.ir import Graph, Role
from planner.plan import Plan

TOTAL_PEAK_VERSION = 1


@dataclass(frozen=True)
class Placement:
    """What TFLM will do with an offline plan: every buffer's offset and the head."""

    offsets: dict[int, int]  # tensor id (graph) -> offset TFLM uses
    head: int
    moved: tuple[tuple[int, int, int], ...]  # (scratch tensor id, plan offset, TFLM offset)


def tflm_first_fit(bufs: Sequence[Buffer], fixed: dict[int, int]) -> list[int]:
    """TFLM GreedyMemoryPlanner::CalculateOffsetsIfNeeded with offline offsets.

    `fixed` maps buffer positions to offline offsets; those are placed first in
    insertion order, the rest by size descending (ties: reverse insertion order, as
    TFLM fills them from the tail before its stable sort), each at the first gap
    of an offset-ordered scan over the time-overlapping placed buffers.
    """
    # TFLM fills the online ids from the tail of its array, then bubble-sorts them (stable)
    # by size: ties end up in reverse insertion order.
    online = sorted((i for i in reversed(range(len(bufs))) if i not in fixed),
                    key=lambda i: -bufs[i].size)
    order = [i for i in range(len(bufs)) if i in fixed] + online
    offsets = [0] * len(bufs)
    placed: list[int] = []  # kept sorted by offset, as TFLM's linked list
    for i in order:
        b = bufs[i]
        if i in fixed:
            candidate = fixed[i]
        else:
            candidate = 0
            for j in placed:
                other = bufs[j]
                if not b.overlaps(other):
                    continue
                if offsets[j] - candidate >= b.size:
                    break
                candidate = max(candidate, offsets[j] + other.size)
        offsets[i] = candidate
        pos = next((k for k, j in enumerate(placed) if offsets[j] > candidate), len(placed))
        placed.insert(pos, i)
    return offsets


def predict_tflm_placement(graph: Graph, plan: Plan) -> Placement:
    """Replay TFLM's planner on the offline offsets this writer would emit."""
    bufs = buffers(graph)
    seg_offset = _whole_offsets(plan)
    fixed = {
        i: seg_offset[b.tensor]
        for i, b in enumerate(bufs)
        if graph.tensors[b.tensor].role != Role.SCRATCH and b.tensor in seg_offset
    }
    offsets = tflm_first_fit(bufs, fixed)
    placed = {b.tensor: off for b, off in zip(bufs, offsets, strict=True)}
    head = max((off + b.size for b, off in zip(bufs, offsets, strict=True)), default=0)
    moved = tuple(
        (b.tensor, seg_offset[b.tensor], placed[b.tensor])
        for b in bufs
        if graph.tensors[b.tensor].role == Role.SCRATCH
        and seg_offset.get(b.tensor, placed[b.tensor]) != placed[b.tensor]
    )
    return Placement(placed, head, moved)


def _whole_offsets(plan: Plan) -> dict[int, int]:
    """Tensor id -> offset for a spill-free plan (one whole-tensor segment each)."""
    out: dict[int, int] = {}
    for s in plan.segments:
        if s.role != "tensor":
            continue
        if s.part is not None or s.tensor in out:
            raise PlannerError(f"tensor {s.tensor} has several segments: the plan spills, "
                               "write it with the rewrite backend")
        out[s.tensor] = s.offset
    return out


def offline_offsets(graph: Graph, plan: Plan, total: int) -> list[int]:
    """The N offsets of the metadata: the plan's offset per planned tensor, -1 elsewhere."""
    entries = [-1] * total
    for tensor, offset in _whole_offsets(plan).items():
        t = graph.tensors[tensor]
        if t.role == Role.SCRATCH:
            continue  # TFLM plans scratch online, always
        if t.source_index is None or not 0 <= t.source_index < total:
            raise PlannerError(f"tensor {tensor} '{t.name}' has no index in the .tflite file")
        entries[t.source_index] = offset
    return entries


def peak_entry(plan: Plan, placement: Placement, scratch_offsets: Sequence[int]) -> bytes:
    return io.pack_int32([TOTAL_PEAK_VERSION, plan.peak_bytes, placement.head,
                          len(scratch_offsets), *scratch_offsets])


def read_peak(model) -> dict[str, int | list[int]] | None:
    """The TinyPlanPeak metadata of a written model, or None if it has none."""
    raw = io.get_metadata(model, io.PEAK_METADATA)
    if raw is None:
        return None
    v = io.unpack_int32(raw)
    if len(v) < 4 or v[0] != TOTAL_PEAK_VERSION or len(v) != 4 + v[3]:
        raise PlannerError("malformed TinyPlanPeak metadata")
    return {"peak": v[1], "predicted_head": v[2], "scratch": v[4:]}


def planned_path(model_path: Path, outdir: Path) -> Path:
    return Path(outdir) / f"{Path(model_path).stem}.planned.tflite"


def write_offline_tflite(graph: Graph, plan: Plan, model_path: Path, outdir: Path,
                         **ctx) -> list[Path]:
    """`<stem>.planned.tflite`: the model plus the plan as offline offsets (and TinyPlanPeak)."""
    if plan.transfers or plan.fusions or plan.parts or plan.op_kernels or plan.stream_groups:
        from backends.tflite.rewrite import write_rewritten_tflite

        return write_rewritten_tflite(graph, plan, model_path, outdir, **ctx)
    if graph.source_format != "tflite":
        raise PlannerError("an offline-planned .tflite needs a .tflite model")
    model = io.read_model(model_path)
    if len(model.subgraphs or []) > 1:
        # TFLM indexes the offline offsets per subgraph from the start of the array, so
        # entries meant for subgraph 0 would also land on every other subgraph's tensors.
        raise PlannerError("offline planning of models with several subgraphs is not supported")
    entries = offline_offsets(graph, plan, io.tensor_count(model))
    placement = predict_tflm_placement(graph, plan)
    plan_at = {s.tensor: s.offset for s in plan.segments if s.role == "tensor"}
    scratch = [plan_at[s] for op in graph.ops for s in op.scratch if s in plan_at]
    for tensor, want, got in placement.moved:
        print(f"note: TFLM places scratch buffer '{graph.tensors[tensor].name}' online at "
              f"{got}, not at the plan's {want} (scratch cannot be offline-planned)",
              file=sys.stderr)
    if placement.head != plan.peak_bytes:
        print(f"note: TFLM's arena head for this offline plan will be {placement.head:,} B, "
              f"the plan's peak is {plan.peak_bytes:,} B", file=sys.stderr)
    io.set_metadata(model, io.OFFLINE_METADATA, io.offline_entry(entries))
    io.set_metadata(model, io.PEAK_METADATA, peak_entry(plan, placement, scratch))
    out = planned_path(model_path, outdir)
    out.write_bytes(io.write_model(model))
    return [out]
