"""The program of a streamed group: the int32 words backends/c/tp_rows.c runs.

`encode(model, planned, plan, op_index)` turns the STREAMED_GROUP op at `op_index` of a
planned graph (planner/streaming.py apply_groups) into the words tp_rows.h documents: a
view table (the group op's inputs, outputs, then rings: how each is held), the member ops
with their quantised parameters computed as TFLite's Prepare functions compute them from
the .tflite, and the group's row schedule. This module is the one writer of that layout
(`program_words`); the C decoder validates everything it reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.c import kernels as ckernels
from planner.errors import PlannerError
from planner.ir import Graph, Op, OpKind, Role
from planner.plan import Plan, StreamGroup

# The constants of tp_rows.h (backends/c/rows.py reads them from the header).
MAGIC, VERSION = 0x31475054, 1
WHOLE, RING, STREAM_IN, SPILL_ROWS = 0, 1, 2, 3
CONV, DEPTHWISE, TCONV, MAX_POOL, AVG_POOL, ADD, MUL, CONCAT = range(1, 9)
_POOL_KINDS = {"MAX_POOL_2D": MAX_POOL, "AVERAGE_POOL_2D": AVG_POOL}
ADD_LEFT_SHIFT = 20  # TFLite's left_shift for int8 ADD
MAX_DIM = 32767  # tp_rows.h TP_GROUP_MAX_DIM (tests check the two agree)


@dataclass(frozen=True)
class View:
    mode: int
    height: int
    row_bytes: int
    rows_held: int
    address: int = 0


@dataclass(frozen=True)
class Member:
    kind: int
    inputs: tuple[int, ...]  # view indices, -1 for an omitted bias
    output: int
    params: tuple[int, ...]


def program_words(views: Sequence[View], members: Sequence[Member],
                  schedule: Sequence[tuple[int, int]]) -> np.ndarray:
    """The program words (tp_rows.h's table), from views, member records and schedule."""
    body: list[int] = []
    for v in views:
        body += [v.mode, v.height, v.row_bytes, v.rows_held, v.address]
    for m in members:
        record = [m.kind, 0, len(m.inputs), *m.inputs, m.output, *m.params]
        record[1] = len(record)
        body += record
    for pos, row in schedule:
        body += [int(pos), int(row)]
    header = [MAGIC, VERSION, len(views), len(members), len(schedule), 0]
    header[5] = len(header) + len(body)
    words = np.array(header + body, dtype=np.int64)
    if words.min() < -(2**31) or words.max() >= 2**31:
        raise PlannerError("group program: a value does not fit in int32")
    return words.astype(np.int32)


# -- TFLite's quantised parameters ---------------------------------------------------------

def _f32(x: float) -> float:
    return float(np.float32(x))


def add_params(s1: float, zp1: int, s2: float, zp2: int, so: float, zpo: int,
               activation: str) -> tuple[int, ...]:
    """tp_add_params as TFLite's ADD Prepare computes them for int8 (left_shift 20)."""
    s1, s2, so = _f32(s1), _f32(s2), _f32(so)
    twice_max = _f32(2 * _f32(max(s1, s2)))  # float arithmetic in TFLite, exact here
    m1, sh1 = ckernels.quantize_multiplier(s1 / twice_max)
    m2, sh2 = ckernels.quantize_multiplier(s2 / twice_max)
    mo, sho = ckernels.quantize_multiplier(twice_max / _f32((1 << ADD_LEFT_SHIFT) * so))
    lo, hi = ckernels.activation_range(activation, so, zpo)
    return (-zp1, -zp2, zpo, ADD_LEFT_SHIFT, m1, sh1, m2, sh2, mo, sho, lo, hi)


def mul_params(s1: float, zp1: int, s2: float, zp2: int, so: float, zpo: int,
               activation: str) -> tuple[int, ...]:
    """tp_mul_params as TFLite's MUL Prepare computes them for int8."""
    m, sh = ckernels.quantize_multiplier(_f32(s1) * _f32(s2) / _f32(so))
    lo, hi = ckernels.activation_range(activation, so, zpo)
    return (-zp1, -zp2, zpo, m, sh, lo, hi)


def same_padding(size: int, out: int, k: int, stride: int) -> int:
    """TFLite's SAME padding (top/left), dilation 1 (tp_same_padding)."""
    return max((out - 1) * stride + k - size, 0) // 2


def tconv_padding(out: int, k: int, stride: int, same: bool) -> int:
    """TFLite's TRANSPOSE_CONV padding from the output size (tp_tconv_padding)."""
    n = (out + stride - 1) // stride if same else (out + stride - k) // stride
    if n < 0:
        return 0
    return max((n - 1) * stride + k - out, 0) // 2


# -- reading the .tflite -------------------------------------------------------------------

class _Quant:
    """Scales and zero points of a .tflite's tensors (first subgraph), by tensor index."""

    def __init__(self, model: Any):
        from backends.tflite.io import read_model

        if isinstance(model, (bytes, bytearray, str)) or hasattr(model, "read_bytes"):
            model = read_model(model)
        if not getattr(model, "subgraphs", None):
            raise PlannerError("group program: the model has no subgraph")
        self.sub = model.subgraphs[0]

    def of(self, graph: Graph, t: int) -> tuple[list[float], int]:
        tensor = graph.tensors[t]
        index = tensor.source_index if tensor.source_index is not None else t
        q = self.sub.tensors[index].quantization
        if q is None or q.scale is None or not len(q.scale):
            raise PlannerError(f"group program: tensor {t} '{tensor.name}' is not quantized")
        zps = [int(z) for z in q.zeroPoint] if q.zeroPoint is not None else [0]
        return [float(s) for s in q.scale], zps[0]

    def one(self, graph: Graph, t: int) -> tuple[float, int]:
        scales, zp = self.of(graph, t)
        return scales[0], zp


def _hwc(graph: Graph, t: int, what: str) -> tuple[int, int, int]:
    tensor = graph.tensors[t]
    if len(tensor.shape) != 4 or tensor.shape[0] != 1 or tensor.dtype != "int8":
        raise PlannerError(f"group program: {what} '{tensor.name}' is {tensor.dtype} "
                           f"{list(tensor.shape)}, the row kernels take int8 NHWC batch 1")
    if max(tensor.shape) > MAX_DIM:
        raise PlannerError(f"group program: {what} '{tensor.name}' {list(tensor.shape)} has "
                           f"a side above TP_GROUP_MAX_DIM ({MAX_DIM})")
    return tuple(int(d) for d in tensor.shape[1:4])  # type: ignore[return-value]


def _member(q: _Quant, graph: Graph, op: Op, view: Mapping[int, int]) -> Member:
    """The record of one source op, its tensors mapped to view indices."""

    def v(t: int) -> int:
        if t < 0:
            return -1
        if t not in view:
            raise PlannerError(f"group program: op {op.index} reads tensor {t}, which is no "
                               "view of the group")
        return view[t]

    act = op.attrs.get("fused_activation", "none")
    out = op.outputs[0]
    oh, ow, oc = _hwc(graph, out, f"op {op.index} output")
    so, zpo = q.one(graph, out)
    lo, hi = ckernels.activation_range(act, so, zpo)
    sh, sw = (int(s) for s in op.attrs.get("strides", (1, 1)))
    padding = op.attrs.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise PlannerError(f"group program: op {op.index} has padding '{padding}'")
    if tuple(op.attrs.get("dilations", (1, 1))) != (1, 1):
        raise PlannerError(f"group program: op {op.index} is dilated; rows need dilation 1")
    if op.op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"):
        tconv = op.op_type == "TRANSPOSE_CONV"
        # TFLite orders a transpose conv's inputs (output_shape, filter, input, bias).
        f, x = (op.inputs[1], op.inputs[2]) if tconv else (op.inputs[1], op.inputs[0])
        b_pos = 3 if tconv else 2
        b = op.inputs[b_pos] if len(op.inputs) > b_pos else -1
        ih, iw, ic = _hwc(graph, x, f"op {op.index} input")
        fshape = graph.tensors[f].shape
        kh, kw = int(fshape[1]), int(fshape[2])
        if not tconv and kh > ckernels.MAX_KERNEL_H:
            raise PlannerError(f"group program: op {op.index} kernel height {kh} exceeds "
                               f"TP_MAX_KERNEL_H ({ckernels.MAX_KERNEL_H})")
        si, zpi = q.one(graph, x)
        fscales, _ = q.of(graph, f)
        mult, shift = ckernels.per_channel_multipliers(si, fscales, so, oc)
        requant = (*mult.tolist(), *shift.tolist())
        same = padding == "same"
        if tconv:
            pt, pl = tconv_padding(oh, kh, sh, same), tconv_padding(ow, kw, sw, same)
            params = (ih, iw, ic, oh, ow, oc, kh, kw, sh, sw, pt, pl, -zpi, zpo, lo, hi,
                      *requant)
            return Member(TCONV, (v(x), v(f), v(b)), v(out), params)
        pt = same_padding(ih, oh, kh, sh) if same else 0
        pl = same_padding(iw, ow, kw, sw) if same else 0
        depthwise = op.op_type == "DEPTHWISE_CONV_2D"
        params = (ih, iw, ic, oh, ow, oc, kh, kw, sh, sw, pt, pl, -zpi, zpo, lo, hi,
                  0 if depthwise else int(fshape[3]), *requant)
        return Member(DEPTHWISE if depthwise else CONV, (v(x), v(f), v(b)), v(out), params)
    if op.op_type in _POOL_KINDS:
        x = op.inputs[0]
        ih, iw, ic = _hwc(graph, x, f"op {op.index} input")
        kh, kw = (int(k) for k in op.attrs["kernel"])
        if q.one(graph, x) != (so, zpo):
            raise PlannerError(f"group program: op {op.index} ({op.op_type}) rescales; "
                               "TFLite's int8 pooling needs one scale and zero point")
        pt = same_padding(ih, oh, kh, sh) if padding == "same" else 0
        pl = same_padding(iw, ow, kw, sw) if padding == "same" else 0
        return Member(_POOL_KINDS[op.op_type], (v(x),), v(out),
                      (ih, iw, ic, oh, ow, kh, kw, sh, sw, pt, pl, lo, hi))
    if op.op_type in ("ADD", "MUL"):
        a, b = op.inputs[0], op.inputs[1]
        for t in (a, b):
            if graph.tensors[t].shape != graph.tensors[out].shape:
                raise PlannerError(f"group program: op {op.index} ({op.op_type}) broadcasts")
        (s1, z1), (s2, z2) = q.one(graph, a), q.one(graph, b)
        fn = add_params if op.op_type == "ADD" else mul_params
        return Member(ADD if op.op_type == "ADD" else MUL, (v(a), v(b)), v(out),
                      fn(s1, z1, s2, z2, so, zpo, act))
    if op.op_type == "CONCATENATION":
        if int(op.attrs.get("axis", 3)) != 3 or act not in ("none", None):
            raise PlannerError(f"group program: op {op.index} is no plain channel concat")
        channels = []
        for t in op.inputs:
            ih, iw, ic = _hwc(graph, t, f"op {op.index} input")
            if q.one(graph, t) != (so, zpo):
                raise PlannerError(f"group program: op {op.index} (CONCATENATION) requantizes "
                                   "an input; the row kernel copies bytes")
            channels.append(ic)
        return Member(CONCAT, tuple(v(t) for t in op.inputs), v(out), (ow, *channels))
    raise PlannerError(f"group program: op {op.index} ({op.op_type}) has no row kernel")


# -- the planned graph's group op ------------------------------------------------------------

def _activation_view(graph: Graph, t: int, mode: int, rows_held: int | None,
                     address: int = 0) -> View:
    h, w, c = _hwc(graph, t, "view tensor")
    if rows_held is not None and rows_held < 1:
        raise PlannerError(f"group program: tensor {t} '{graph.tensors[t].name}' would be "
                           f"held in {rows_held} rows; a view holds at least one")
    held = h if rows_held is None else min(h, rows_held)
    return View(mode, h, w * c, held, address)


def with_stream_loads(source: Graph, group: StreamGroup,
                      stream_views: Mapping[int, int]) -> list[tuple[int, int]]:
    """The group's schedule with a load entry (-1 - view, row) just before the first member
    row that reads each row of a stream_in tensor (tensor -> view): rows arrive exactly when
    first needed, as the line sizes of planner/streaming.py assume; rows no band reads are
    never read from storage."""
    from planner import kernels, streaming

    ops = [source.ops[i] for i in group.ops]
    bands = [streaming.op_bands(source, op) for op in ops]
    reads = [[t for t in kernels.row_inputs(source, op) if t in stream_views] for op in ops]
    loaded: dict[int, set[int]] = {t: set() for t in stream_views}
    out: list[tuple[int, int]] = []
    for m, r in group.schedule:
        if reads[m]:
            lo, hi = bands[m][r]
            for t in reads[m]:
                for i in range(lo, hi + 1):
                    if i not in loaded[t]:
                        loaded[t].add(i)
                        out.append((-1 - stream_views[t], i))
        out.append((int(m), int(r)))
    return out


def encode_group(model: Any, source: Graph, group: StreamGroup, inputs: Sequence[int],
                 outputs: Sequence[int], stream_in: Mapping[int, tuple[int, int]] | None = None,
                 spill_rows: Mapping[int, tuple[int, int]] | None = None) -> np.ndarray:
    """The program of `group` (source-graph ops): views = `inputs`, `outputs` (source
    tensor ids, as the group op lists them), then `group.rings`. stream_in / spill_rows:
    tensor -> (rows held, storage address) for the views read / written row by row."""
    q = _Quant(model)
    stream_in, spill_rows = stream_in or {}, spill_rows or {}
    views: list[View] = []
    index: dict[int, int] = {}
    for t in (*inputs, *outputs):
        tensor = source.tensors[t]
        if t in stream_in:
            held, address = stream_in[t]
            views.append(_activation_view(source, t, STREAM_IN, held, address))
        elif t in spill_rows:
            held, address = spill_rows[t]
            views.append(_activation_view(source, t, SPILL_ROWS, held, address))
        elif tensor.role == Role.CONSTANT:
            views.append(View(WHOLE, 1, max(1, tensor.nbytes), 1))
        else:
            views.append(_activation_view(source, t, WHOLE, None))
        index.setdefault(t, len(views) - 1)
    for t, rows in group.rings:
        views.append(_activation_view(source, t, RING, int(rows)))
        index[t] = len(views) - 1
    members = [_member(q, source, source.ops[i], index) for i in group.ops]
    schedule = with_stream_loads(source, group, {t: index[t] for t in stream_in})
    from backends.c import rows as crows

    if len(views) > crows.MAX_VIEWS or len(members) > crows.MAX_OPS:
        raise PlannerError(f"group program: {len(views)} views / {len(members)} ops exceed "
                           f"TP_GROUP_MAX_VIEWS {crows.MAX_VIEWS} / TP_GROUP_MAX_OPS "
                           f"{crows.MAX_OPS}")
    return program_words(views, members, schedule)


def _line_rows(graph: Graph, entries: Sequence[Sequence[int]], t: int, what: str) -> int:
    for tid, line_bytes in entries:
        if int(tid) == t:
            h, w, c = _hwc(graph, t, what)
            return int(line_bytes) // (w * c)  # _activation_view refuses 0 rows
    raise PlannerError(f"group program: the plan {what}s tensor {t}, the group op does not "
                       f"list it in attrs['{what}']")


def encode(model: Any, planned: Graph, plan: Plan, op_index: int) -> np.ndarray:
    """The program of the STREAMED_GROUP op at `op_index` of the planned graph. View modes
    come from the plan's transfers at the op's step: a "stream" of an input = stream_in
    (rows held = its line buffer rows, at the transfer's address), a "spill_rows" of an
    output = spill_rows, the group's rings = ring, everything else whole."""
    if not 0 <= op_index < len(planned.ops):
        raise PlannerError(f"group program: no op {op_index} in the planned graph")
    op = planned.ops[op_index]
    if op.kind != OpKind.STREAMED_GROUP:
        raise PlannerError(f"group program: op {op_index} ({op.op_type}) is no streamed group")
    source = planned.source
    if source is None:
        raise PlannerError("group program: the planned graph has no source graph")
    g = int(op.attrs.get("group", -1))
    if not 0 <= g < len(plan.stream_groups):
        raise PlannerError(f"group program: op {op_index} names group {g}, the plan has "
                           f"{len(plan.stream_groups)}")
    group = plan.stream_groups[g]
    if tuple(int(i) for i in op.attrs.get("members", group.ops)) != tuple(group.ops):
        raise PlannerError(f"group program: op {op_index} runs ops {op.attrs.get('members')}, "
                           f"the plan's group {g} ops {list(group.ops)}")
    if len(op.scratch) != len(group.rings):
        raise PlannerError(f"group program: op {op_index} has {len(op.scratch)} ring tensors, "
                           f"group {g} {len(group.rings)} rings")
    for ring_t, (t, rows) in zip(op.scratch, group.rings, strict=True):
        ring = planned.tensors[ring_t]
        if int(ring.shape[0]) != int(rows) or tuple(ring.shape[1:]) != \
                tuple(source.tensors[t].shape[2:]):
            raise PlannerError(f"group program: ring tensor '{ring.name}' is {list(ring.shape)}, "
                               f"group {g} keeps {rows} rows of tensor {t}")
    step = op_index + 1
    stream_in: dict[int, tuple[int, int]] = {}
    spill_rows: dict[int, tuple[int, int]] = {}
    for tr in plan.transfers:
        if tr.step != step:
            continue
        if tr.kind == "stream" and tr.tensor in op.inputs:
            stream_in[tr.tensor] = (_line_rows(source, op.attrs.get("stream_in", ()), tr.tensor,
                                               "stream_in"), int(tr.address))
        elif tr.kind == "spill_rows" and tr.tensor in op.outputs:
            spill_rows[tr.tensor] = (_line_rows(source, op.attrs.get("spill_rows", ()),
                                                tr.tensor, "spill_rows"), int(tr.address))
    return encode_group(model, source, group, [t for t in op.inputs if t >= 0],
                        [t for t in op.outputs if t >= 0], stream_in, spill_rows)


def views_of(program: np.ndarray) -> list[View]:
    """The view table of a program: what each bases[v] holds (rows_held * row_bytes bytes
    at least)."""
    w = [int(x) for x in np.asarray(program, dtype=np.int32)[:6]]
    if len(w) < 6 or w[0] != MAGIC or w[1] != VERSION:
        raise PlannerError("group program: not a tp_rows program (magic or version)")
    table = np.asarray(program, dtype=np.int32)[6:6 + 5 * w[2]].reshape(-1, 5)
    return [View(*(int(x) for x in row)) for row in table]


def written_views(program: np.ndarray) -> set[int]:
    """Views the group writes: every member's output, and every non-WHOLE view (rings,
    stream_in lines, spill_rows lines). Inputs read whole may be read-only buffers."""
    w = [int(x) for x in np.asarray(program, dtype=np.int32)]
    views = views_of(program)
    out = {v for v, view in enumerate(views) if view.mode != WHOLE}
    at = 6 + 5 * len(views)
    for _ in range(w[3]):
        n_in = w[at + 2]
        out.add(w[at + 3 + n_in])
        at += w[at + 1]
    return out

