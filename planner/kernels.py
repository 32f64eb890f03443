"""The one table of what the project's own kernels can do, and the checks that read it.

Every stage that decides or emits a custom kernel reads this table and nothing else:
analysis (what may fuse or stream: `analysis.fusion_groups`), the ILP and TinySeg
(through the fusion groups and `split_fits`), the checker (`plan_violations`), the
.tflite rewrite (refuses a plan that needs a kernel the table does not offer), the C
glue (writes `c_defines()` into the generated header; tests compare them with the
#defines of backends/c/) and the executor (reads `Op.attrs["kernel"]`).

The row kernels of a streamed group (`STREAMED_GROUP`, backends/c/tp_rows.c) compute one
output row of a member op at a time; `ROW_OPS` says which ops they compute and
`row_refusals` why one is not (planner/streaming.py builds groups from them).

The kernels (backends/c/tp_kernels.c, tflm_ops.cc) are int8 NHWC, as TFLite
quantised models are. An ONNX graph (float32, NCHW) therefore never fuses or streams:
no emitted kernel computes a float concat or conv, and C glue is emitted for ONNX
too. Spill, fetch and the in-place split only move bytes, so they serve every graph.

A TRANSPOSE_CONV that the row kernel can run becomes, where the profile allows the
project's custom ops, an op with `attrs["kernel"] == ROWS_KERNEL` whose scratch is
one output row of int32 accumulators (`apply_kernels`); TFLM's reference kernel
needs the whole output in int32. The plan records those ops (`Plan.op_kernels`) so
writers copy them instead of re-deriving them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import PlannerError
from .ir import Graph, Op, OpKind, Role, Tensor

if TYPE_CHECKING:  # the device and plan modules do not import this one
    from .device import DeviceProfile
    from .plan import Plan

ROWS_KERNEL = "tinyplan_rows"  # Op.attrs["kernel"] of a TRANSPOSE_CONV on the row kernel
INT8_ACTIVATIONS = frozenset({"none", "relu", "relu6", "relu_n1_to_1"})  # TFLM's quantised range


@dataclass(frozen=True)
class ConvRule:
    """The convolutions a kernel computes (TFLite CONV_2D / TRANSPOSE_CONV attributes)."""

    op_kinds: frozenset[OpKind]  # CONV is TFLite CONV_2D (DEPTHWISE_CONV_2D is its own kind)
    filter_dtypes: frozenset[str]
    bias_dtypes: frozenset[str]  # an omitted bias is always fine
    paddings: frozenset[str]
    activations: frozenset[str]
    groups: bool = False  # in_c = groups * filter_in_c, out_c a multiple of groups
    depthwise: bool = False  # filter_in_c == 1 with in_c > 1 (or DEPTHWISE_CONV_2D)
    max_kernel_h: int | None = None
    dilation: bool = True  # dilated kernels over resident inputs
    streamed_dilation_h: int | None = None  # streamed inputs need this dilation_h (rows)
    # Where the bias dtype follows the activations' (16x8: int64 bias): activation -> bias.
    bias_for: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Kernel:
    name: str
    custom_op: str  # its name in a rewritten .tflite (AddCustom)
    c_entry: str  # the C function in backends/c that computes it
    source_formats: frozenset[str]  # graphs it may serve ("tflite", "onnx")
    dtypes: frozenset[str] | None  # activation dtypes; None: any (it only moves bytes)
    layouts: frozenset[str] | None  # None: any
    concat_axis: str | None = None  # "channel": the last (NHWC) axis only
    max_slices: int | None = None  # concat inputs, a split tensor's two parts counting two
    needs_resident_input: bool = False  # one concat input must sit in the arena
    conv: ConvRule | None = None
    scratch: str = "none"  # what the kernel requests in the arena
    # C #defines that must equal the limits above (checked by tests, written to the header).
    c_limits: tuple[tuple[str, int], ...] = ()


MAX_SLICES = 8  # tp_kernels.c TP_MAX_SLICES, tflm_ops.cc TP_TFLM_MAX_INPUTS
MAX_KERNEL_H = 16  # tp_kernels.c TP_MAX_KERNEL_H

_TFLITE = frozenset({"tflite"})
_ANY_FORMAT = frozenset({"tflite", "onnx"})
_INT8 = frozenset({"int8"})
_NHWC = frozenset({"NHWC"})

FUSED_CONCAT = Kernel(
    name="fused_concat", custom_op="FusedConcat", c_entry="tp_fused_concat",
    source_formats=_TFLITE, dtypes=_INT8, layouts=_NHWC, concat_axis="channel",
    max_slices=MAX_SLICES, needs_resident_input=True,
    # One row of each streamed input (its line buffer, a planned output of the op).
    scratch="one line buffer of one row per streamed input",
    c_limits=(("TP_MAX_SLICES", MAX_SLICES), ("TP_TFLM_MAX_INPUTS", MAX_SLICES)),
)
FUSED_CONCAT_CONV = Kernel(
    name="fused_concat_conv", custom_op="FusedConcatConv2D", c_entry="tp_fused_concat_conv2d",
    source_formats=_TFLITE, dtypes=_INT8, layouts=_NHWC, concat_axis="channel",
    max_slices=MAX_SLICES, needs_resident_input=True,
    conv=ConvRule(
        op_kinds=frozenset({OpKind.CONV}), filter_dtypes=_INT8, bias_dtypes=frozenset({"int32"}),
        paddings=frozenset({"same", "valid"}), activations=INT8_ACTIVATIONS,
        groups=True, depthwise=False, max_kernel_h=MAX_KERNEL_H,
        dilation=True, streamed_dilation_h=1,
    ),
    scratch="one line buffer of kernel-height rows per streamed input",
    c_limits=(("TP_MAX_SLICES", MAX_SLICES), ("TP_MAX_KERNEL_H", MAX_KERNEL_H),
              ("TP_TFLM_MAX_INPUTS", MAX_SLICES)),
)
TRANSPOSE_CONV_ROWS = Kernel(
    name="transpose_conv_rows", custom_op="TinyPlanTransposeConv",
    c_entry="tp_transpose_conv_rows", source_formats=_TFLITE,
    dtypes=frozenset({"int8", "int16"}), layouts=_NHWC,  # int16: TFLM's 16x8 kernel
    conv=ConvRule(
        op_kinds=frozenset({OpKind.TRANSPOSE_CONV}), filter_dtypes=_INT8,
        bias_dtypes=frozenset({"int32", "int64"}), paddings=frozenset({"same", "valid"}),
        activations=INT8_ACTIVATIONS, bias_for=(("int8", "int32"), ("int16", "int64")),
    ),
    scratch="out_w * out_c accumulators (one output row): int32 for int8, int64 for 16x8",
)
GROUP_MAX_OPS = 32  # tp_rows.h TP_GROUP_MAX_OPS: members of one streamed group
GROUP_MAX_VIEWS = 64  # tp_rows.h TP_GROUP_MAX_VIEWS: the group op's inputs + outputs + rings
STREAMED_GROUP = Kernel(
    name="streamed_group", custom_op="TinyPlanStreamedGroup", c_entry="tp_group_run",
    source_formats=_TFLITE, dtypes=_INT8, layouts=_NHWC, concat_axis="channel",
    # The convolutions a member may be; pooling, ADD/MUL and concat are in ROW_OPS.
    conv=ConvRule(
        op_kinds=frozenset({OpKind.CONV, OpKind.DEPTHWISE_CONV, OpKind.TRANSPOSE_CONV}),
        filter_dtypes=_INT8, bias_dtypes=frozenset({"int32"}),
        paddings=frozenset({"same", "valid"}), activations=INT8_ACTIVATIONS,
        groups=True, depthwise=True, dilation=False,
    ),
    scratch="one ring of rows per internal tensor; line buffers for streamed inputs and "
            "outputs spilled row by row",
    c_limits=(("TP_GROUP_MAX_OPS", GROUP_MAX_OPS), ("TP_GROUP_MAX_VIEWS", GROUP_MAX_VIEWS)),
)
SPLIT_IN_PLACE = Kernel(
    name="split_in_place", custom_op="TinyPlanSplit", c_entry="tp_compact",
    source_formats=_ANY_FORMAT, dtypes=None, layouts=None, concat_axis="channel",
)
SPILL = Kernel(name="spill", custom_op="Spill", c_entry="tp_spill_data",
               source_formats=_ANY_FORMAT, dtypes=None, layouts=None)
FETCH = Kernel(name="fetch", custom_op="Fetch", c_entry="tp_fetch_data",
               source_formats=_ANY_FORMAT, dtypes=None, layouts=None)

# Completes an asynchronous spill or fetch (issue #16, backends/c/tp_async.h).
TRANSFER_WAIT = Kernel(name="transfer_wait", custom_op="TinyPlanWait",
                       c_entry="tp_transfer_wait", source_formats=_ANY_FORMAT, dtypes=None,
                       layouts=None)

KERNELS: dict[str, Kernel] = {k.name: k for k in (
    FUSED_CONCAT, FUSED_CONCAT_CONV, TRANSPOSE_CONV_ROWS, STREAMED_GROUP, SPLIT_IN_PLACE,
    SPILL, FETCH, TRANSFER_WAIT)}
# Op.attrs["kernel"] value -> table entry, for ops whose kernel a graph transform replaced.
OP_KERNELS: dict[str, Kernel] = {ROWS_KERNEL: TRANSPOSE_CONV_ROWS}


def c_defines() -> dict[str, int]:
    """Every limit the C sources must agree with, by #define name."""
    out: dict[str, int] = {}
    for k in KERNELS.values():
        for name, value in k.c_limits:
            if out.setdefault(name, value) != value:
                raise AssertionError(f"table gives {name} two values")
    return out


# -- what an op needs, against a kernel ----------------------------------------------------

def _tensor(graph: Graph, op: Op, pos: int) -> Tensor | None:
    return graph.tensors[op.inputs[pos]] if len(op.inputs) > pos and op.inputs[pos] >= 0 \
        else None


def _graph_refusals(kernel: Kernel, graph: Graph) -> list[str]:
    why = []
    if graph.source_format not in kernel.source_formats:
        why.append(f"{kernel.name} runs {'/'.join(sorted(kernel.source_formats))} graphs, "
                   f"not {graph.source_format}")
    if kernel.layouts is not None and graph.layout not in kernel.layouts:
        why.append(f"{kernel.name} needs layout {'/'.join(sorted(kernel.layouts))}, "
                   f"not {graph.layout}")
    return why


def _dtype_refusals(kernel: Kernel, tensors: Iterable[Tensor | None]) -> list[str]:
    if kernel.dtypes is None:
        return []
    return [f"{kernel.name} needs {'/'.join(sorted(kernel.dtypes))}, tensor '{t.name}' is "
            f"{t.dtype}" for t in tensors if t is not None and t.dtype not in kernel.dtypes]


def concat_refusals(graph: Graph, op: Op, kernel: Kernel = FUSED_CONCAT) -> list[str]:
    """Why `kernel` cannot compute concat `op` (empty: it can)."""
    why = _graph_refusals(kernel, graph)
    if op.kind != OpKind.CONCAT or len(op.outputs) != 1 or op.outputs[0] < 0:
        return why + [f"op {op.index} is not a one-output concatenation"]
    out = graph.tensors[op.outputs[0]]
    if out.channel_axis is None or op.attrs.get("axis") != out.channel_axis or \
            out.channel_axis != len(out.shape) - 1:
        why.append(f"{kernel.name} concatenates on the last (channel) axis only")
    ins = [graph.tensors[t] for t in dict.fromkeys(op.inputs) if t >= 0]
    why += _dtype_refusals(kernel, [out, *ins])
    if any(len(t.shape) != len(out.shape) for t in ins):
        why.append(f"{kernel.name}: inputs of another rank than the output")
    if kernel.max_slices is not None and len(op.inputs) > kernel.max_slices:
        why.append(f"{kernel.name} takes at most {kernel.max_slices} inputs, op {op.index} "
                   f"has {len(op.inputs)}")
    # The concat kernel only copies bytes: a fused activation would go unapplied.
    if op.attrs.get("fused_activation", "none") != "none":
        why.append(f"{kernel.name} applies no fused activation")
    return why


def conv_refusals(graph: Graph, concat: Op, conv: Op, streamed: bool = True,
                  kernel: Kernel = FUSED_CONCAT_CONV) -> list[str]:
    """Why `kernel` cannot fuse `concat` into `conv` (empty: it can).

    `streamed`: whether an input may stream into the conv (then the kernel's row
    rules apply, e.g. dilation_h == 1).
    """
    rule = kernel.conv
    assert rule is not None
    why = concat_refusals(graph, concat, kernel)
    if conv.kind not in rule.op_kinds:
        return why + [f"{kernel.name} fuses {'/'.join(sorted(k.value for k in rule.op_kinds))}"
                      f", not {conv.op_type}"]
    if not conv.inputs or conv.inputs[0] != concat.outputs[0]:
        why.append(f"op {conv.index} does not read the concat output as its input")
    why += _conv_refusals(graph, conv, rule, kernel, streamed,
                          graph.tensors[concat.outputs[0]])
    return why


def _conv_refusals(graph: Graph, op: Op, rule: ConvRule, kernel: Kernel, streamed: bool,
                   x: Tensor | None) -> list[str]:
    why = []
    out = graph.tensors[op.outputs[0]] if op.outputs and op.outputs[0] >= 0 else None
    filt = _tensor(graph, op, 1)
    why += _dtype_refusals(kernel, [x, out])
    if filt is None or filt.dtype not in rule.filter_dtypes or len(filt.shape) != 4:
        why.append(f"{kernel.name} needs a 4-D {'/'.join(sorted(rule.filter_dtypes))} filter")
    bias = _tensor(graph, op, 3 if op.kind == OpKind.TRANSPOSE_CONV else 2)
    if bias is not None and bias.dtype not in rule.bias_dtypes:
        why.append(f"{kernel.name} needs a {'/'.join(sorted(rule.bias_dtypes))} bias, "
                   f"not {bias.dtype}")
    paired = dict(rule.bias_for).get(x.dtype) if x is not None else None
    if bias is not None and paired is not None and bias.dtype != paired:
        why.append(f"{kernel.name} needs a {paired} bias with {x.dtype} activations, "
                   f"not {bias.dtype}")
    if op.attrs.get("padding", "same") not in rule.paddings:
        why.append(f"{kernel.name}: padding {op.attrs.get('padding')} not supported")
    if op.attrs.get("fused_activation", "none") not in rule.activations:
        why.append(f"{kernel.name}: fused activation {op.attrs.get('fused_activation')} "
                   "not supported")
    kh = int(filt.shape[1]) if filt is not None and len(filt.shape) == 4 else 0
    if rule.max_kernel_h is not None and kh > rule.max_kernel_h:
        why.append(f"{kernel.name}: kernel height {kh} > {rule.max_kernel_h}")
    dil = tuple(op.attrs.get("dilations", (1, 1)))
    if not rule.dilation and dil != (1, 1):
        why.append(f"{kernel.name}: dilated kernels not supported")
    if streamed and rule.streamed_dilation_h is not None and dil[:1] != \
            (rule.streamed_dilation_h,):
        why.append(f"{kernel.name}: streamed inputs need dilation_h == "
                   f"{rule.streamed_dilation_h}")
    if op.kind == OpKind.CONV and filt is not None and len(filt.shape) == 4 and x is not None:
        in_c, f_in = x.channels or 0, int(filt.shape[3])
        groups = in_c // f_in if f_in else 0
        if f_in <= 0 or in_c % f_in or (groups and int(filt.shape[0]) % groups):
            why.append(f"{kernel.name}: {in_c} input channels do not divide into groups of "
                       f"{f_in}")
        elif groups > 1 and f_in == 1 and not rule.depthwise:
            why.append(f"{kernel.name}: depthwise-style convolution not supported")
        elif groups > 1 and not rule.groups:
            why.append(f"{kernel.name}: grouped convolution ({groups} groups) not supported")
    return why


def transpose_conv_refusals(graph: Graph, op: Op,
                            kernel: Kernel = TRANSPOSE_CONV_ROWS) -> list[str]:
    """Why the row kernel cannot run TRANSPOSE_CONV `op` (inputs: output_shape, filter,
    input, [bias]; one int32 scratch request)."""
    rule = kernel.conv
    assert rule is not None
    why = _graph_refusals(kernel, graph)
    if op.kind not in rule.op_kinds or op.op_type != "TRANSPOSE_CONV":
        return why + [f"op {op.index} is {op.op_type}, not TRANSPOSE_CONV"]
    out = graph.tensors[op.outputs[0]] if op.outputs and op.outputs[0] >= 0 else None
    if out is None or len(out.shape) != 4:
        return why + [f"op {op.index}: no 4-D output"]
    if len(op.scratch) != 1:
        why.append(f"op {op.index}: expected one scratch request, found {len(op.scratch)}")
    return why + _conv_refusals(graph, op, rule, kernel, False, _tensor(graph, op, 2))


ROWS_ACCUMULATOR_BYTES = {"int8": 4, "int16": 8}  # tp_tconv_scratch_bytes(_s16)


def rows_scratch_bytes(graph: Graph, op: Op) -> int:
    """The row kernel's scratch: one output row of accumulators (int32, int64 for 16x8)."""
    out = graph.tensors[op.outputs[0]]
    _, _, w, c = out.shape
    return int(w) * int(c) * ROWS_ACCUMULATOR_BYTES[out.dtype]


# -- row kernels: the members of a streamed group ---------------------------------------------

@dataclass(frozen=True)
class RowOp:
    """An op the group's row kernels compute one output row at a time.

    `band` is how output row r depends on the rows of a row input (planner/streaming.py):
    "window" rows [r*sh - pad_top, r*sh - pad_top + kh - 1] (conv, depthwise, pool),
    "gather" the input rows a transpose conv scatters into row r, "same" row r itself.
    """

    op_type: str
    kind: OpKind
    band: str
    row_inputs: tuple[int, ...] | None  # input positions read row by row; None: every input
    conv: bool = False  # checked against STREAMED_GROUP.conv
    activations: frozenset[str] = INT8_ACTIVATIONS
    needs_kernel: str | None = None  # the Op.attrs["kernel"] it must already run on
    equal_shapes: bool = False  # element-wise: no broadcasting


ROW_OPS: dict[str, RowOp] = {r.op_type: r for r in (
    RowOp("CONV_2D", OpKind.CONV, "window", (0,), conv=True),
    RowOp("DEPTHWISE_CONV_2D", OpKind.DEPTHWISE_CONV, "window", (0,), conv=True),
    RowOp("MAX_POOL_2D", OpKind.POOL, "window", (0,)),
    RowOp("AVERAGE_POOL_2D", OpKind.POOL, "window", (0,)),
    RowOp("ADD", OpKind.ELEMENTWISE, "same", None, equal_shapes=True),
    RowOp("MUL", OpKind.ELEMENTWISE, "same", None, equal_shapes=True),
    # The concat kernel copies bytes: a fused activation would go unapplied.
    RowOp("CONCATENATION", OpKind.CONCAT, "same", None, activations=frozenset({"none"})),
    # Only on the row kernel (kernels.apply_kernels), int8 (not 16x8).
    RowOp("TRANSPOSE_CONV", OpKind.TRANSPOSE_CONV, "gather", (2,), conv=True,
          needs_kernel=ROWS_KERNEL),
)}


def row_inputs(graph: Graph, op: Op) -> tuple[int, ...]:
    """Tensor ids `op` reads row by row (its activations; constants are read whole)."""
    rule = ROW_OPS.get(op.op_type)
    positions = range(len(op.inputs)) if rule is None or rule.row_inputs is None \
        else rule.row_inputs
    ids = [op.inputs[p] for p in positions if p < len(op.inputs) and op.inputs[p] >= 0]
    return tuple(t for t in dict.fromkeys(ids)
                 if graph.tensors[t].role not in (Role.CONSTANT, Role.VARIABLE))


def row_refusals(graph: Graph, op: Op) -> list[str]:
    """Why the group's row kernels cannot compute `op` (empty: they can)."""
    kernel = STREAMED_GROUP
    why = _graph_refusals(kernel, graph)
    rule = ROW_OPS.get(op.op_type)
    if rule is None or op.kind != rule.kind:
        return why + [f"{kernel.name} has no row kernel for {op.op_type}"]
    if rule.needs_kernel is not None and op.attrs.get("kernel") != rule.needs_kernel:
        why.append(f"{kernel.name}: {op.op_type} only on the {rule.needs_kernel} kernel")
    if len(op.outputs) != 1 or op.outputs[0] < 0:
        return why + [f"op {op.index}: {kernel.name} members have one output"]
    out = graph.tensors[op.outputs[0]]
    rows = [graph.tensors[t] for t in row_inputs(graph, op)]
    if not rows:
        why.append(f"op {op.index}: no activation input to stream")
    for t in (out, *rows):
        if len(t.shape) != 4 or t.shape[0] != 1:
            why.append(f"{kernel.name}: tensor '{t.name}' is not 4-D NHWC with batch 1")
    why += _dtype_refusals(kernel, [out, *rows])
    if op.attrs.get("fused_activation", "none") not in rule.activations:
        why.append(f"{kernel.name}: fused activation {op.attrs.get('fused_activation')} "
                   f"not supported on {op.op_type}")
    if rule.equal_shapes:
        ins = [graph.tensors[t] for t in op.inputs if t >= 0]
        if len(op.inputs) != 2 or any(t.shape != out.shape for t in ins):
            why.append(f"{kernel.name}: {op.op_type} needs two inputs of the output's shape "
                       "(no broadcasting)")
        why += _dtype_refusals(kernel, ins)
    if rule.kind == OpKind.CONCAT:
        why += concat_refusals(graph, op, kernel)
    if rule.band == "window":
        if op.attrs.get("padding", "same") not in ("same", "valid"):
            why.append(f"{kernel.name}: padding {op.attrs.get('padding')} not supported")
        if tuple(op.attrs.get("dilations", (1, 1))) != (1, 1):
            why.append(f"{kernel.name}: dilated kernels not supported")
    if rule.conv:
        assert kernel.conv is not None
        x = graph.tensors[rows[0].id] if rows else None
        if rule.kind == OpKind.TRANSPOSE_CONV:
            why += transpose_conv_refusals(graph, op)
            if out.dtype != "int8":
                why.append(f"{kernel.name}: int8 transpose convolutions only")
        why += _conv_refusals(graph, op, kernel.conv, kernel, True, x)
    return list(dict.fromkeys(why))


# -- graph transform: which ops the plan runs on which custom kernel -----------------------

def apply_kernels(graph: Graph, profile: DeviceProfile,
                  stock_transpose_conv: bool = False) -> Graph:
    """`graph` with every TRANSPOSE_CONV the row kernel can run moved onto it, where the
    profile allows the project's custom kernels (and `stock_transpose_conv` is off)."""
    if not getattr(profile, "custom_kernels", True) or stock_transpose_conv:
        return graph
    chosen = [(op.index, ROWS_KERNEL) for op in graph.ops
              if op.kind == OpKind.TRANSPOSE_CONV and not transpose_conv_refusals(graph, op)]
    return with_op_kernels(graph, chosen)


def with_op_kernels(graph: Graph, op_kernels: Iterable[tuple[int, str]]) -> Graph:
    """`graph` with the named ops on the named kernels (a plan's `op_kernels`)."""
    ops = list(graph.ops)
    tensors = list(graph.tensors)
    changed = False
    for index, name in op_kernels:
        if not 0 <= index < len(ops) or name not in OP_KERNELS:
            raise PlannerError(f"unknown kernel '{name}' for op {index}")
        op = ops[index]
        if op.attrs.get("kernel") == name:
            continue
        why = transpose_conv_refusals(graph, op, OP_KERNELS[name])
        if why:
            raise PlannerError(f"op {index} cannot run on kernel {name}: {why[0]}")
        nbytes = rows_scratch_bytes(graph, op)
        s = tensors[op.scratch[0]]
        tensors[s.id] = replace(s, shape=(nbytes // 4,), dtype="int32", nbytes=nbytes)
        attrs = dict(op.attrs)
        # The filter's (kh, kw) stays readable next to the agreed kernel marker.
        if "kernel" in attrs:
            attrs["kernel_size"] = attrs["kernel"]
        attrs["kernel"] = name
        ops[index] = replace(op, attrs=attrs)
        changed = True
    if not changed:
        return graph
    return replace(graph, tensors=tuple(tensors), ops=tuple(ops))


def op_kernels_of(graph: Graph) -> tuple[tuple[int, str], ...]:
    """(op index, kernel) of every op a graph transform moved onto a custom kernel.

    For a graph with streamed groups (`graph.source` set), of the source graph: plans
    name its op indices (planner/plan.py)."""
    if graph.source is not None:
        graph = graph.source
    return tuple((op.index, op.attrs["kernel"]) for op in graph.ops
                 if isinstance(op.attrs.get("kernel"), str) and op.attrs["kernel"] in OP_KERNELS)


# -- a plan against the table ----------------------------------------------------------------

def split_fits(graph: Graph, concat: Op) -> bool:
    """Whether every input of fused `concat` may be channel-split and still fit the slices."""
    kernel = FUSED_CONCAT
    return kernel.max_slices is None or 2 * len(concat.inputs) <= kernel.max_slices


def kernels_used(plan: Plan) -> list[Kernel]:
    """The custom kernels `plan` relies on, from its own records (nothing re-derived)."""
    used = []
    if any(f.conv is None for f in plan.fusions):
        used.append(FUSED_CONCAT)
    if any(f.conv is not None for f in plan.fusions):
        used.append(FUSED_CONCAT_CONV)
    if any(name == ROWS_KERNEL for _, name in plan.op_kernels):
        used.append(TRANSPOSE_CONV_ROWS)
    if plan.stream_groups:
        used.append(STREAMED_GROUP)
    if any(t.part is not None for t in plan.transfers):  # a part that never moves stays put
        used.append(SPLIT_IN_PLACE)
    kinds = {t.kind for t in plan.transfers}
    if kinds:
        used.append(SPILL)
    if kinds & {"fetch", "stream"}:
        used.append(FETCH)
    return used


def plan_violations(graph: Graph, plan: Plan) -> list[str]:
    """Every way `plan` relies on a kernel the table does not offer (empty: none)."""
    errors = fusion_violations(graph, plan)
    if tuple(plan.op_kernels) != op_kernels_of(graph):
        errors.append(f"plan runs ops on kernels {list(plan.op_kernels)}, the graph on "
                      f"{list(op_kernels_of(graph))}: not the graph it was planned for")
    source = graph.source if graph.source is not None else graph  # op_kernels' indices
    for index, name in plan.op_kernels:
        if name not in OP_KERNELS or not 0 <= index < len(source.ops):
            errors.append(f"op {index}: unknown kernel '{name}'")
            continue
        errors += [f"op {index}: {w}" for w in
                   transpose_conv_refusals(source, source.ops[index], OP_KERNELS[name])]
    return errors + group_violations(graph, plan)


def group_violations(graph: Graph, plan: Plan) -> list[str]:
    """Streamed groups of `plan` that are not the graph's, or that the row kernels cannot run."""
    from .streaming import group_views, groups_of  # streaming reads this table

    errors: list[str] = []
    if tuple(plan.stream_groups) != groups_of(graph):
        errors.append(f"plan streams groups {[list(g.ops) for g in plan.stream_groups]}, the "
                      f"graph {[list(g.ops) for g in groups_of(graph)]} (or their rings and "
                      "schedules differ): not the graph it was planned for")
    source = graph.source if graph.source is not None else graph
    for g in plan.stream_groups:
        name = f"group {list(g.ops)[:3]}..." if len(g.ops) > 3 else f"group {list(g.ops)}"
        if not g.ops or list(g.ops) != list(range(g.ops[0], g.ops[0] + len(g.ops))) or \
                not 0 <= g.ops[0] <= g.ops[-1] < len(source.ops):
            errors.append(f"{name}: not consecutive ops of the source graph")
            continue
        if len(g.ops) > GROUP_MAX_OPS:
            errors.append(f"{name}: {len(g.ops)} members > {GROUP_MAX_OPS}")
        refused = [f"{name}: op {m}: {w}" for m in g.ops
                   for w in row_refusals(source, source.ops[m])]
        errors += refused
        views = 0 if refused else group_views(source, g)
        if views > GROUP_MAX_VIEWS:
            errors.append(f"{name}: {views} views > {GROUP_MAX_VIEWS}")
    return errors


def fusion_violations(graph: Graph, plan: Plan) -> list[str]:
    """Fusions and streams of `plan` that the fused kernels cannot compute."""
    errors: list[str] = []
    split = {p.tensor for p in plan.parts}
    streamed = {(t.tensor, t.part, t.step) for t in plan.transfers if t.kind == "stream"}
    for f in plan.fusions:
        if not 0 <= f.concat < len(graph.ops) or \
                (f.conv is not None and not 0 <= f.conv < len(graph.ops)):
            errors.append(f"fusion {f.concat}/{f.conv}: no such op")
            continue
        concat = graph.ops[f.concat]
        kernel = FUSED_CONCAT if f.conv is None else FUSED_CONCAT_CONV
        step = (f.concat if f.conv is None else f.conv) + 1
        ins = list(dict.fromkeys(concat.inputs))
        any_stream = any(k[0] in ins and k[2] == step for k in streamed)
        if f.conv is None:
            why = concat_refusals(graph, concat, kernel)
        else:
            why = conv_refusals(graph, concat, graph.ops[f.conv], any_stream, kernel)
        errors += [f"fusion {f.concat}/{f.conv}: {w}" for w in why]
        slices = sum(2 if t in split else 1 for t in concat.inputs)
        if kernel.max_slices is not None and slices > kernel.max_slices:
            errors.append(f"fusion {f.concat}/{f.conv}: {slices} slices > {kernel.max_slices}")
        if kernel.needs_resident_input and ins:
            # A split input with one part streamed and one resident gives a resident slice.
            resident = [t for t in ins if t < 0 or not all(
                (t, k, step) in streamed for k in ([0, 1] if t in split else [None]))]
            if not resident:
                errors.append(f"fusion {f.concat}/{f.conv}: every input streams; "
                              f"{kernel.custom_op} needs one resident input")
    return errors
