"""What pictures and reports say about streamed groups: members, rings, line buffers.

Read from a planned graph (planner/streaming.py: one STREAMED_GROUP op per group, its
rings as that op's scratch tensors) and its plan (`stream_groups` in source op indices).
Nothing is re-derived: the numbers are the plan's and the planned graph's.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.ir import Graph, OpKind, Tensor
from planner.plan import Plan, Segment


@dataclass(frozen=True)
class GroupInfo:
    op: int  # planned op index (runs at step op + 1)
    group: int  # index in plan.stream_groups
    members: tuple[int, ...]  # source op indices
    member_types: tuple[str, ...]  # their op types

    @property
    def step(self) -> int:
        return self.op + 1

    def describe(self) -> str:
        """e.g. 'group 0: source ops 3..5 (CONV_2D #3, DEPTHWISE_CONV_2D #4, ADD #5)'."""
        parts = ", ".join(f"{t} #{m}" for m, t in zip(self.members, self.member_types,
                                                        strict=True))
        span = (f"source op {self.members[0]}" if len(self.members) == 1 else
                f"source ops {self.members[0]}..{self.members[-1]}")
        return f"group {self.group}: {span} ({parts})"


@dataclass(frozen=True)
class RingInfo:
    tensor: int  # the ring's id in the planned graph (a scratch tensor of the group op)
    group: int
    source_tensor: int | None  # the internal tensor it holds rows of
    rows: int  # rows held (R): row r lives in slot r % R
    row_bytes: int  # one row of the internal tensor (W x C x dtype)
    height: int | None  # rows of the internal tensor (H)

    def describe(self, graph: Graph) -> str:
        whole = f"{self.height} rows" if self.height is not None else "?"
        name = graph.tensors[self.source_tensor].name if self.source_tensor is not None \
            else "?"
        return (f"ring of group {self.group}: {self.rows} of {whole} of #{self.source_tensor} "
                f"{name}, {self.row_bytes:,} B a row, row r in slot r % {self.rows}")


def _source_tensor(graph: Graph, t: int) -> Tensor | None:
    src = graph.source or graph
    return src.tensors[t] if 0 <= t < len(src.tensors) else None


def groups(graph: Graph, plan: Plan | None = None) -> list[GroupInfo]:
    """The group ops of a planned graph, in op order."""
    src = graph.source
    out = []
    for op in graph.ops:
        if op.kind != OpKind.STREAMED_GROUP:
            continue
        members = tuple(int(m) for m in op.attrs.get("members", ()))
        types = tuple(src.ops[m].op_type if src is not None and 0 <= m < len(src.ops) else "?"
                      for m in members)
        out.append(GroupInfo(op.index, int(op.attrs.get("group", len(out))), members, types))
    return out


def rings(graph: Graph, plan: Plan) -> dict[int, RingInfo]:
    """Ring tensor id (planned graph) -> what it holds, for every group op's scratch."""
    out: dict[int, RingInfo] = {}
    for info in groups(graph, plan):
        op = graph.ops[info.op]
        planned = plan.stream_groups[info.group].rings \
            if 0 <= info.group < len(plan.stream_groups) else ()
        for i, t in enumerate(op.scratch):
            ring = graph.tensors[t]
            source_t, rows = planned[i] if i < len(planned) and len(planned) == len(op.scratch) \
                else (None, int(ring.shape[0]) if ring.shape else 0)
            whole = _source_tensor(graph, source_t) if source_t is not None else None
            height = int(whole.shape[1]) if whole is not None and len(whole.shape) == 4 else None
            row = ring.nbytes // max(int(ring.shape[0]), 1) if ring.shape else ring.nbytes
            out[t] = RingInfo(t, info.group, source_t, int(rows), int(row), height)
    return out


def line_kind(graph: Graph, plan: Plan, seg: Segment) -> str | None:
    """What a line buffer segment carries: 'stream_in' (rows read from storage into a
    streamed group), 'spill_rows' (rows a group writes to storage), 'stream' (a fused
    concat/conv's streamed input); None for a tensor segment."""
    if seg.role != "line_buffer":
        return None
    kinds = {t.kind for t in plan.transfers
             if t.tensor == seg.tensor and t.part == seg.part and seg.first <= t.step <= seg.last
             and t.kind in ("stream", "spill_rows")}
    if "spill_rows" in kinds:
        return "spill_rows"
    op = graph.ops[seg.first - 1] if 1 <= seg.first <= len(graph.ops) else None
    return "stream_in" if op is not None and op.kind == OpKind.STREAMED_GROUP else "stream"
