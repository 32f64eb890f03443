"""Compute-time model: estimated seconds per op from the device profile's cycle table.

An op of a MAC kind (convolutions, transpose convolutions, fully connected) costs
`MACs x cycles per MAC`; any other op costs `bytes read + written x cycles per byte`
(concat, reshape, pool, element-wise, other). Cycles come from the profile's
`[compute]` table per kind and dtype (planner/device.py ComputeModel) and become
seconds through `clock_mhz`. The bundled values are estimates of CMSIS-NN-style
kernels on Cortex-M4/M7-class cores, not measurements: the figures rank plans and
show where transfers can hide, they do not predict a device to the microsecond.

A streamed group (OpKind.STREAMED_GROUP, planner/streaming.py) costs the sum of its
members in the source graph (`attrs["members"]` indexes `graph.source.ops`): row by
row the members do the same arithmetic as when run whole.
"""

from __future__ import annotations

from math import prod

from .device import DeviceProfile
from .ir import Graph, Op, OpKind, Role, Tensor

_MAC_KIND = {
    OpKind.CONV: "conv",
    OpKind.DEPTHWISE_CONV: "depthwise_conv",
    OpKind.TRANSPOSE_CONV: "transpose_conv",
}
_BYTE_KIND = {
    OpKind.CONCAT: "concat",
    OpKind.RESHAPE: "reshape",
    OpKind.POOL: "pool",
    OpKind.ELEMENTWISE: "elementwise",
}
_PER_MAC = frozenset(_MAC_KIND.values()) | {"fully_connected"}
# OTHER ops that multiply by a constant weight matrix (priced per MAC).
_MATMUL_TYPES = frozenset({"FULLY_CONNECTED", "Gemm", "MatMul", "BATCH_MATMUL"})


def _elements(t: Tensor) -> int:
    return prod(t.shape) if t.shape else 1


def _channels(t: Tensor, layout: str) -> int:
    if t.channels:
        return t.channels
    if not t.shape:
        return 1
    return t.shape[1] if layout == "NCHW" and len(t.shape) > 1 else t.shape[-1]


def _activation_in(graph: Graph, op: Op) -> Tensor | None:
    for t in op.inputs:
        if t >= 0 and graph.tensors[t].role != Role.CONSTANT:
            return graph.tensors[t]
    return None


def _weight(graph: Graph, op: Op) -> Tensor | None:
    """The op's weight tensor: its largest constant input of 2 or more dimensions."""
    ins = [graph.tensors[t] for t in op.inputs if t >= 0]
    consts = [t for t in ins if t.role == Role.CONSTANT and len(t.shape) >= 2]
    return max(consts, key=_elements, default=None)


def kind_of(op: Op) -> str:
    """The [compute] table row an op is priced by."""
    if op.kind in _MAC_KIND:
        return _MAC_KIND[op.kind]
    if op.kind == OpKind.OTHER and op.op_type in _MATMUL_TYPES:
        return "fully_connected"
    return _BYTE_KIND.get(op.kind, "other")


def dtype_of(graph: Graph, op: Op) -> str:
    """int8, int16 or float32: the class of arithmetic, from the op's first output."""
    ts = [graph.tensors[t] for t in op.outputs + op.inputs if t >= 0]
    if not ts:
        return "int8"
    d = ts[0].dtype
    if d.startswith("float") or d.startswith("bfloat") or d.startswith("complex"):
        return "float32"
    if d in ("int16", "uint16"):
        return "int16"
    if d in ("int32", "uint32", "int64", "uint64"):
        return "float32"  # wide integer arithmetic: priced like the slowest class
    return "int8"


def op_macs(graph: Graph, op: Op) -> int:
    """Multiply-accumulates of one op (0 for ops priced per byte)."""
    if op.kind == OpKind.STREAMED_GROUP:
        src = _source(graph)
        return sum(op_macs(src, src.ops[m]) for m in _members(op))
    kind = kind_of(op)
    if kind not in _PER_MAC:
        return 0
    w = _weight(graph, op)
    outs = [graph.tensors[t] for t in op.outputs if t >= 0]
    if w is None or not outs:
        return 0
    if kind == "transpose_conv":
        # Every input element is scattered through a (kh, kw, Cout) slice of the weights.
        x = _activation_in(graph, op)
        if x is None:
            return 0
        return _elements(x) * _elements(w) // max(_channels(x, graph.layout), 1)
    out = outs[0]
    if kind == "fully_connected":
        # Each output element is a dot product over the weight's inner dimension.
        return _elements(out) * _elements(w) // max(out.shape[-1] if out.shape else 1, 1)
    # conv / depthwise: each output element reads a (kh, kw, Cin/groups) window, i.e.
    # weight elements / Cout, in TFLite [Cout,kh,kw,Cin], [1,kh,kw,C] and ONNX layouts.
    return _elements(out) * _elements(w) // max(_channels(out, graph.layout), 1)


def op_bytes(graph: Graph, op: Op) -> int:
    """Bytes the op reads and writes: every input (constants included) and output."""
    if op.kind == OpKind.STREAMED_GROUP:
        src = _source(graph)
        return sum(op_bytes(src, src.ops[m]) for m in _members(op))
    ids = [t for t in dict.fromkeys(op.inputs) if t >= 0] + [t for t in op.outputs if t >= 0]
    return sum(graph.tensors[t].nbytes for t in ids)


def op_cycles(graph: Graph, op: Op, profile: DeviceProfile) -> float:
    if op.kind == OpKind.STREAMED_GROUP:
        src = _source(graph)
        return sum(op_cycles(src, src.ops[m], profile) for m in _members(op))
    kind, dtype = kind_of(op), dtype_of(graph, op)
    per = profile.compute.cycles_per_unit(kind, dtype)
    units = op_macs(graph, op) if kind in _PER_MAC else op_bytes(graph, op)
    return units * per


def op_seconds(graph: Graph, profile: DeviceProfile) -> tuple[float, ...]:
    """Estimated seconds of each op, by op index (the op at step k > 0 is op k - 1)."""
    clock = profile.compute.clock_hz
    return tuple(op_cycles(graph, op, profile) / clock for op in graph.ops)


def _source(graph: Graph) -> Graph:
    if graph.source is None:
        raise ValueError(f"graph '{graph.name}' has a streamed group but no source graph")
    return graph.source


def _members(op: Op) -> list[int]:
    """Source-graph op indices a streamed group runs (streaming.apply_groups sets them)."""
    return [int(m) for m in op.attrs.get("members", [])]
