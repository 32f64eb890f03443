"""The spill/fusion/offset problem, independent of any solver.

Each planned tensor becomes an *item* with a few *points*: the steps where it is
created, read, or must exist as a graph output. A choice of arena *segments*
covers some points; a point not covered is either not needed (under the chosen
fusions) or streamed from storage. Candidate segments are all runs of
consecutive points [a, b], so the encodings only pick among them (a set
partition over the points) and place the picked ones in the arena.

At a streamed group op (planner/streaming.py) an input its attrs list in `stream_in`
gets a GROUP stream point (read row by row from storage), and an output listed in
`spill_rows` a ROWS_OUT creation point: not covered by a segment, the group writes
it to storage row by row as it produces it, through a line buffer, which is then the
item's one spill.

A tensor eligible for partial spilling also gets *split variants*: two items,
the kept leading channels and the spilled trailing channels, exactly one
variant (whole or one split) being active.

Solvers (cpsat.py, milp.py) encode the same rules in their own way; extract.py
turns a solution into a Plan. Sizes here are in 16-byte units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from ...analysis import fusion_groups, lifetimes, line_buffer_bytes, spatial, stream_rows
from ...costs import transfer_seconds
from ...device import DeviceProfile, Storage
from ...ir import ALIGNMENT, Graph, OpKind, Role, align
from ...kernels import FUSED_CONCAT, FUSED_CONCAT_CONV, split_fits

MAX_SPLIT_TENSORS = 8  # split variants only for the largest candidates: they multiply the model
SPLIT_FRACTIONS = (0.25, 0.5, 0.75)


class Need(Enum):
    ALWAYS = "always"
    IF_FUSED = "if_fused"  # only when the point's fusion group is fused (concat+conv)
    IF_UNFUSED = "if_unfused"


class Stream(Enum):
    NONE = "none"
    CONCAT = "concat"  # streamed into a concat's output through a one-row buffer
    CONCAT_CONV = "concat_conv"  # streamed into a fused concat+conv through kernel-height rows
    # Row streaming (planner/streaming.py), at a streamed group op's step: its attrs say which
    # inputs it may read row by row from storage (GROUP) and which outputs it may write row
    # by row to storage as it produces them (ROWS_OUT, the output's creation point), each
    # through a line buffer of the bytes the attrs give.
    GROUP = "group"
    ROWS_OUT = "rows_out"


GROUP_STREAMS = (Stream.GROUP, Stream.ROWS_OUT)


@dataclass
class Point:
    step: int
    need: Need
    group: int | None = None  # fusion group index for conditional needs and streams
    stream: Stream = Stream.NONE
    stream_op: int | None = None  # op index that streams at this point
    layout: bool = False  # needs the tensor in its produced (whole, interleaved) layout
    line_bytes: int | None = None  # a group stream's line buffer (from the op's attrs)


@dataclass
class Item:
    index: int
    tensor: int
    part: int | None  # None whole, 0 kept, 1 spilled
    variant: int  # index into Problem.variants
    nbytes: int
    units: int  # aligned size in 16-byte units
    points: list[Point]
    rows: int
    line_units: dict[int, int] = field(default_factory=dict)  # point -> line buffer units
    eliminated_by: int | None = None  # fusion group whose fusion removes this tensor

    @property
    def candidates(self) -> list[tuple[int, int]]:
        m = len(self.points)
        return [(a, b) for a in range(m) for b in range(a, m)]

    def span(self, a: int, b: int) -> tuple[int, int]:
        return self.points[a].step, self.points[b].step

    def row_spill_extra_us(self, storage: Storage) -> int:
        """What writing this item row by row (spill_rows) costs beyond one whole spill, in
        whole microseconds: the encodings price a row spill as the spill plus this."""
        write = costs_us(storage, self.nbytes, self.rows)[0]
        rows = transfer_seconds(storage, "spill_rows", self.nbytes, self.rows)
        return max(0, math.ceil(rows * 1e6) - write)


@dataclass
class Variant:
    tensor: int
    spilled_channels: int  # 0 for the whole tensor
    items: list[int]


@dataclass
class Group:
    concat: int
    conv: int | None


@dataclass
class Problem:
    graph: Graph
    profile: DeviceProfile
    items: list[Item]
    variants: list[Variant]
    groups: list[Group]
    fixed: list[tuple[int, int, int]]  # scratch buffers: (tensor, step, units)
    can_spill: bool

    def storages(self) -> tuple[Storage, ...]:
        return self.profile.storages

    def variants_of(self, tensor: int) -> list[int]:
        return [i for i, v in enumerate(self.variants) if v.tensor == tensor]

    def resident_sites(self) -> list[list[tuple[int, int]]]:
        """Per fused op whose kernel needs one resident input: its (item, point) streams.

        The encodings keep at least one of these slices resident (sum of act - s >= 1).
        """
        sites: dict[int, list[tuple[int, int]]] = {}
        for item in self.items:
            for j, p in enumerate(item.points):
                # A streamed group op reads each stream_in input on its own: no site.
                if p.stream not in (Stream.NONE, *GROUP_STREAMS) and p.stream_op is not None:
                    sites.setdefault(p.stream_op, []).append((item.index, j))
        out = []
        for op, found in sorted(sites.items()):
            group = next(g for g in self.groups if op in (g.concat, g.conv))
            concat = self.graph.ops[group.concat]
            kernel = FUSED_CONCAT_CONV if op == group.conv else FUSED_CONCAT
            # An input that is never planned (a constant) is always resident.
            if kernel.needs_resident_input and all(
                    t >= 0 and self.graph.tensors[t].planned for t in concat.inputs):
                out.append(found)
        return out


def costs_us(storage: Storage, nbytes: int, rows: int) -> tuple[int, int, int]:
    """(write, fetch, stream) cost in whole microseconds of one transfer of `nbytes`."""
    return tuple(  # type: ignore[return-value]
        math.ceil(transfer_seconds(storage, kind, nbytes, rows) * 1e6)
        for kind in ("spill", "fetch", "stream")
    )


def group_streams(graph: Graph) -> dict[int, tuple[dict[int, int], dict[int, int]]]:
    """Per streamed group op: ({stream_in tensor: line bytes}, {spill_rows tensor: line bytes})."""
    out = {}
    for op in graph.ops:
        if op.kind != OpKind.STREAMED_GROUP:
            continue
        ins = {int(t): int(n) for t, n in op.attrs.get("stream_in", ())}
        rows_out = {int(t): int(n) for t, n in op.attrs.get("spill_rows", ())}
        out[op.index] = (ins, rows_out)
    return out


def build_problem(graph: Graph, profile: DeviceProfile, allow_split: bool = True,
                  extra_splits: dict[int, set[int]] | None = None) -> Problem:
    """The problem for `graph`; `extra_splits` adds spilled-channel counts to try per tensor
    (those of a heuristic's plan, so the exact model always contains that plan)."""
    life = lifetimes(graph)
    can_spill = bool(profile.storages)
    groups = [Group(g.concat, g.conv) for g in fusion_groups(graph)] if profile.fusion else []
    group_of_concat = {g.concat: i for i, g in enumerate(groups)}
    group_of_conv = {g.conv: i for i, g in enumerate(groups) if g.conv is not None}
    last_step = graph.num_steps - 1
    scratch = {t.id for t in graph.tensors if t.role == Role.SCRATCH}
    fixed = [(t, life[t][0], align(graph.tensors[t].nbytes) // ALIGNMENT)
             for t in life if t in scratch]
    # Gated as analysis.working_set_bound gates them, so that its bound holds for the model.
    streamed = group_streams(graph) if profile.can_stream else {}

    def points_for(t: int) -> tuple[list[Point], int | None]:
        eliminated = None
        raw: list[Point] = []
        producer_op = life[t][0] - 1
        if producer_op in group_of_concat and groups[group_of_concat[producer_op]].conv is not None:
            eliminated = group_of_concat[producer_op]
        create_need = Need.IF_UNFUSED if eliminated is not None else Need.ALWAYS
        created = Point(life[t][0], create_need, eliminated, layout=True)
        if producer_op in streamed and t in streamed[producer_op][1]:
            created = Point(life[t][0], Need.ALWAYS, stream=Stream.ROWS_OUT,
                            stream_op=producer_op, line_bytes=streamed[producer_op][1][t])
        raw.append(created)
        for op in graph.ops:
            if t not in op.inputs:
                continue
            step = op.index + 1
            if op.index in streamed and t in streamed[op.index][0]:
                raw.append(Point(step, Need.ALWAYS, stream=Stream.GROUP, stream_op=op.index,
                                 line_bytes=streamed[op.index][0][t]))
            elif op.index in group_of_concat:
                g = group_of_concat[op.index]
                conv = groups[g].conv
                if conv is None:
                    raw.append(Point(step, Need.ALWAYS, g, Stream.CONCAT, op.index))
                else:
                    raw.append(Point(step, Need.IF_UNFUSED, g, Stream.CONCAT, op.index))
                    raw.append(Point(conv + 1, Need.IF_FUSED, g, Stream.CONCAT_CONV, conv))
            elif op.index in group_of_conv and op.inputs[0] == t:
                raw.append(Point(step, Need.IF_UNFUSED, group_of_conv[op.index], layout=True))
            else:
                raw.append(Point(step, Need.ALWAYS, layout=True))
        if t in graph.outputs:
            raw.append(Point(last_step, Need.ALWAYS, layout=True))
        return _merge(raw), eliminated

    items: list[Item] = []
    variants: list[Variant] = []
    split_candidates: list[tuple[int, int]] = []
    points_of: dict[int, list[Point]] = {}
    for t in sorted(life):
        if t in scratch:
            continue
        points, eliminated = points_for(t)
        points_of[t] = points
        tensor = graph.tensors[t]
        rows = stream_rows(tensor, graph.layout)
        v = len(variants)
        item = _item(graph, len(items), t, None, v, tensor.nbytes, points, rows, eliminated)
        items.append(item)
        variants.append(Variant(t, 0, [item.index]))
        streamable = any(p.stream != Stream.NONE for p in points)
        # A group op reads and writes whole tensors (or rows of them), never channel parts.
        streamable = streamable and not any(p.stream in GROUP_STREAMS for p in points)
        # Each part is one slice of the fused kernel: its concats must have room for both.
        streamable = streamable and all(
            split_fits(graph, graph.ops[groups[p.group].concat])
            for p in points if p.group is not None)
        if allow_split and can_spill and streamable and eliminated is None \
                and spatial(tensor, graph.layout) and (tensor.channels or 0) >= 2:
            split_candidates.append((tensor.nbytes, t))
    extra = extra_splits or {}
    chosen = {t for _, t in sorted(split_candidates, reverse=True)[:MAX_SPLIT_TENSORS]}
    chosen |= {t for _, t in split_candidates if t in extra}
    for t in sorted(chosen):
        tensor = graph.tensors[t]
        points = points_of[t]  # _item copies them per item
        channels = tensor.channels or 0
        per_channel = tensor.nbytes // channels
        options = {min(channels - 1, max(1, round(channels * f))) for f in SPLIT_FRACTIONS}
        options = sorted(options | {q for q in extra.get(t, ()) if 0 < q < channels})
        rows = stream_rows(tensor, graph.layout)
        for spilled in options:
            v = len(variants)
            kept_bytes = (channels - spilled) * per_channel
            kept = _item(graph, len(items), t, 0, v, kept_bytes, points, rows, None)
            items.append(kept)
            gone = _item(graph, len(items), t, 1, v, spilled * per_channel, points, rows, None)
            items.append(gone)
            variants.append(Variant(t, spilled, [kept.index, gone.index]))
    return Problem(graph, profile, items, variants, groups, fixed, can_spill)


def _item(graph: Graph, index: int, t: int, part: int | None, variant: int, nbytes: int,
          points: list[Point], rows: int, eliminated: int | None) -> Item:
    pts = [Point(p.step, p.need, p.group, p.stream, p.stream_op, p.layout, p.line_bytes)
           for p in points]
    line = {}
    for j, p in enumerate(pts):
        if p.line_bytes is not None:
            line[j] = align(min(p.line_bytes, nbytes)) // ALIGNMENT
        elif p.stream != Stream.NONE:
            conv = p.stream_op if p.stream == Stream.CONCAT_CONV else None
            line[j] = line_buffer_bytes(graph, t, conv, nbytes) // ALIGNMENT
    return Item(index, t, part, variant, nbytes, align(nbytes) // ALIGNMENT, pts, rows, line,
                eliminated)


def _merge(raw: list[Point]) -> list[Point]:
    """One point per step; needs combine, a step read two ways cannot stream."""
    by_step: dict[int, list[Point]] = {}
    for p in raw:
        by_step.setdefault(p.step, []).append(p)
    merged = []
    for step in sorted(by_step):
        ps = by_step[step]
        if len(ps) == 1:
            merged.append(ps[0])
            continue
        needs = {(p.need, p.group) for p in ps}
        conditional = {p.group for p in ps if p.need != Need.ALWAYS}
        always = any(p.need == Need.ALWAYS for p in ps) or any(
            (Need.IF_FUSED, g) in needs and (Need.IF_UNFUSED, g) in needs for g in conditional
        ) or len(conditional) > 1
        need = Need.ALWAYS if always else ps[0].need
        group = None if always else ps[0].group
        merged.append(Point(step, need, group, layout=any(p.layout for p in ps)
                            or len({p.stream for p in ps}) > 1))
    return merged
