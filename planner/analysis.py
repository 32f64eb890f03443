"""What planners need to know of a graph: buffers, lifetimes, cold gaps, fusion groups, bounds.

Lifetimes follow TFLM's allocation_info exactly: steps are 0..len(ops); subgraph
inputs are created at step 0, op k runs at step k + 1 (its outputs are created
there, its inputs' last use moves there), subgraph outputs live to the last step,
and a scratch buffer lives only at its op's step. Sizes are rounded up to 16 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from . import kernels
from .ir import Graph, Op, OpKind, Role, Tensor, align


@dataclass(frozen=True)
class Buffer:
    """One planned arena buffer, in TFLM's order: tensors by id, then scratch requests."""

    tensor: int
    size: int  # aligned to 16
    first: int  # closed step interval
    last: int

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


def step_of(op_index: int) -> int:
    return op_index + 1


def lifetimes(graph: Graph) -> dict[int, tuple[int, int]]:
    """Tensor id -> (first, last) step for every planned tensor that TFLM would allocate."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    planned = {t.id for t in graph.tensors if t.planned}

    def touch(t: int, step: int, create: bool) -> None:
        if t not in planned:
            return
        if create and t not in first:
            first[t] = step
        last[t] = max(last.get(t, -1), step)

    for t in graph.inputs:
        touch(t, 0, create=True)
    for op in graph.ops:
        step = step_of(op.index)
        for t in op.inputs:
            if t >= 0:
                touch(t, step, create=False)
        for t in op.outputs:
            if t >= 0:
                touch(t, step, create=True)
        for t in op.scratch:
            touch(t, step, create=True)
    for t in graph.outputs:
        # TFLM also marks outputs created here (UpdateFirstCreated) if nothing wrote them.
        touch(t, len(graph.ops), create=True)
    # TFLM still allocates a tensor that is read but never written, from its
    # uninitialised creation time (-1) on; step 0 overlaps exactly the same buffers.
    return {t: (first.get(t, 0), max(last[t], first.get(t, 0))) for t in last}


def buffers(graph: Graph) -> list[Buffer]:
    """The planned buffers in TFLM's insertion order (greedy tie-breaking depends on it)."""
    life = lifetimes(graph)
    scratch_order = [s for op in graph.ops for s in op.scratch]
    scratch = set(scratch_order)
    ordered = [t.id for t in graph.tensors if t.id not in scratch] + scratch_order
    return [
        Buffer(t, align(graph.tensors[t].nbytes), *life[t]) for t in ordered if t in life
    ]


def touches(graph: Graph, tensor: int) -> list[int]:
    """Steps at which `tensor` is written or read (its last step if it is a graph output)."""
    return _touch_map(graph).get(tensor, [])


def _touch_map(graph: Graph) -> dict[int, list[int]]:
    steps = {t: {first} for t, (first, _) in lifetimes(graph).items()}
    for op in graph.ops:
        for t in op.inputs:
            if t in steps:
                steps[t].add(step_of(op.index))
    for t in graph.outputs:
        if t in steps:
            steps[t].add(len(graph.ops))
    return {t: sorted(s) for t, s in steps.items()}


@dataclass(frozen=True)
class ColdRange:
    tensor: int
    start: int  # touch before the gap
    end: int  # next touch

    @property
    def length(self) -> int:
        return self.end - self.start


def cold_ranges(graph: Graph) -> list[ColdRange]:
    """Every gap between consecutive touches of an activation, longest first."""
    gaps = []
    for t, steps in _touch_map(graph).items():
        if graph.tensors[t].role == Role.SCRATCH:
            continue
        gaps.extend(ColdRange(t, a, b) for a, b in pairwise(steps) if b - a > 1)
    return sorted(gaps, key=lambda g: (-g.length, g.tensor, g.start))


@dataclass(frozen=True)
class FusionGroup:
    """A channel CONCATENATION, optionally with the CONV_2D that is its only consumer.

    With `conv` set, fusing the pair removes the concat output: the conv reads its
    inputs as a virtual channel concatenation at the conv's step.
    """

    concat: int  # op index
    conv: int | None  # op index of the sole consumer conv, if any


def fusion_groups(graph: Graph) -> list[FusionGroup]:
    """The concats the fused kernels can compute (planner/kernels.py), with their conv.

    A conv joins its concat only where the fused concat+conv kernel can compute it with
    its inputs streamed (so a dilated conv does not: streamed rows must be adjacent).
    """
    users = graph.consumers()
    groups = []
    for op in graph.ops:
        if op.kind != OpKind.CONCAT or kernels.concat_refusals(graph, op):
            continue
        out = graph.tensors[op.outputs[0]]
        conv = None
        readers = users.get(out.id, [])
        if len(readers) == 1 and out.id not in graph.outputs:
            reader = graph.ops[readers[0]]
            if not kernels.conv_refusals(graph, op, reader, streamed=True):
                conv = reader.index
        groups.append(FusionGroup(op.index, conv))
    return groups


def spatial(tensor: Tensor, layout: str) -> tuple[int, int, int] | None:
    """(height, width, channels) of a 4-D activation, or None."""
    if len(tensor.shape) != 4:
        return None
    if layout == "NCHW":
        _, c, h, w = tensor.shape
    else:
        _, h, w, c = tensor.shape
    return h, w, c


def stream_rows(tensor: Tensor, layout: str) -> int:
    dims = spatial(tensor, layout)
    return dims[0] if dims else 1


def line_buffer_bytes(
    graph: Graph, tensor: int, fused_conv: int | None, nbytes: int | None = None
) -> int:
    """Arena bytes a streamed input needs: one row into a concat, kernel-height rows into a conv.

    `nbytes` sizes a channel part of the tensor instead of the whole tensor.
    """
    t = graph.tensors[tensor]
    total = t.nbytes if nbytes is None else nbytes
    rows = 1
    if fused_conv is not None:
        rows = int(graph.ops[fused_conv].attrs.get("kernel", (1, 1))[0])
    per_row = -(-total // stream_rows(t, graph.layout))
    return align(min(total, rows * per_row))


@dataclass(frozen=True)
class Bound:
    bytes: int
    step: int  # the step (op k at step k + 1) that sets it
    op: int | None  # op index, None for step 0
    detail: str


def load_bound(graph: Graph) -> Bound:
    """Max over steps of the bytes alive: no plan without spilling goes below it."""
    bufs = buffers(graph)
    best = Bound(0, 0, None, "empty graph")
    for step in range(graph.num_steps):
        live = sum(b.size for b in bufs if b.first <= step <= b.last)
        if live > best.bytes:
            op = step - 1 if step > 0 else None
            best = Bound(live, step, op, f"{live} B alive at step {step}")
    return best


def op_working_set(graph: Graph, op_index: int, can_stream: bool = True,
                   can_fuse: bool = True) -> tuple[int, str]:
    """Bytes op `op_index` must hold even with spilling and fused fetching, and why.

    Concat+conv fusion needs no storage, only the fused kernels (`can_fuse`); streaming
    an input through a line buffer instead of holding it also needs storage (`can_stream`).
    """
    return _WorkingSets(graph, can_stream, can_fuse).of(op_index)


def op_working_sets(graph: Graph, can_stream: bool = True, can_fuse: bool = True,
                    pair_fusion: bool = True) -> list[int]:
    """`op_working_set` of every op, in op order (the graph's analysis done once);
    `pair_fusion` False: as if no concat fused into its conv (concats still stream)."""
    sets = _WorkingSets(graph, can_stream, can_fuse, pair_fusion)
    return [sets.of(op.index)[0] for op in graph.ops]


def group_working_set(tensors: Sequence[Tensor], op: Op, can_stream: bool) -> tuple[int, str]:
    """Bytes a streamed-group op (planner/streaming.py) must hold, and why: its rings, each
    input whole or (storage to stream from) its stream_in line buffer, each output whole
    or (storage to spill to) its spill_rows line buffer. Constants take no arena."""
    lines_in = dict(op.attrs.get("stream_in", [])) if can_stream else {}
    lines_out = dict(op.attrs.get("spill_rows", [])) if can_stream else {}

    def held(ts: Sequence[int], lines: dict) -> int:
        return sum(min(align(tensors[t].nbytes), lines.get(t, align(tensors[t].nbytes)))
                   for t in dict.fromkeys(ts) if t >= 0 and tensors[t].planned)

    rings = sum(align(tensors[t].nbytes) for t in op.scratch)
    ins, outs = held(op.inputs, lines_in), held(op.outputs, lines_out)
    return rings + ins + outs, f"rings {rings} B, inputs {ins} B, outputs {outs} B"


class _WorkingSets:
    """What every op's working set needs to know of the graph, computed once."""

    def __init__(self, graph: Graph, can_stream: bool, can_fuse: bool, pair_fusion: bool = True):
        self.graph = graph
        self.storage = can_stream  # a group streams and spills rows without the fused kernels
        self.can_stream = can_stream and can_fuse
        self.groups = {g.concat: g if pair_fusion else FusionGroup(g.concat, None)
                       for g in fusion_groups(graph)} if can_fuse else {}
        self.fused_conv_of = {g.conv: g for g in self.groups.values() if g.conv is not None}
        self.planned = lifetimes(graph)

    def of(self, op_index: int) -> tuple[int, str]:
        graph, groups, planned = self.graph, self.groups, self.planned
        can_stream, fused_conv_of = self.can_stream, self.fused_conv_of
        op = graph.ops[op_index]
        if op.kind == OpKind.STREAMED_GROUP:
            return group_working_set(graph.tensors, op, self.storage)
        if op_index in groups and groups[op_index].conv is not None:
            return 0, "concat fuses into its conv"

        def size(t: int) -> int:
            return align(graph.tensors[t].nbytes)

        def held(t: int, conv: int | None) -> int:
            return min(size(t), line_buffer_bytes(graph, t, conv)) if can_stream else size(t)

        base = sum(size(t) for t in dict.fromkeys(op.outputs + op.scratch) if t in planned)
        ins = [t for t in dict.fromkeys(op.inputs) if t >= 0 and t in planned]
        whole = base + sum(size(t) for t in ins)
        if op_index in fused_conv_of:
            # Either the concat output is read whole, or the conv reads the concat's inputs.
            concat = graph.ops[fused_conv_of[op_index].concat]
            others = sum(size(t) for t in ins if t != op.inputs[0])
            streamed = sum(held(c, op_index) for c in dict.fromkeys(concat.inputs) if c in planned)
            fused = base + others + streamed
            if fused < whole:
                why = f"outputs+scratch {base} B, inputs {others} B, concat inputs {streamed} B"
                return fused, why
            return whole, f"outputs+scratch {base} B, inputs {whole - base} B"
        if op_index in groups and can_stream:
            streamed = sum(held(t, None) for t in ins)
            return base + streamed, f"output {base} B, streamed lines {streamed} B"
        return whole, f"outputs+scratch {base} B, inputs {whole - base} B"


def working_set_bound(graph: Graph, can_stream: bool = True, can_fuse: bool = True) -> Bound:
    """Max over ops of `op_working_set`, and over the graph inputs at step 0 and the graph
    outputs at the last step (resident together there): no plan, spilling or not, goes
    below it. The two ends only tell where ops stream their inputs and spill their
    outputs (streamed groups): an op otherwise holds its inputs or outputs whole."""
    best = Bound(0, 0, None, "empty graph")
    sets = _WorkingSets(graph, can_stream, can_fuse)
    for op in graph.ops:
        need, why = sets.of(op.index)
        if need > best.bytes:
            best = Bound(need, step_of(op.index), op.index,
                         f"op {op.index} {op.op_type} '{op.name}': {why}")
    last = graph.num_steps - 1
    for step, tensors, what in ((0, graph.inputs, "graph inputs"),
                                (last, graph.outputs, "graph outputs")):
        need = sum(align(graph.tensors[t].nbytes) for t in dict.fromkeys(tensors)
                   if t in sets.planned)
        if need > best.bytes:
            best = Bound(need, step, step - 1 if step else None,
                         f"{what} resident at step {step}: {need} B")
    return best
