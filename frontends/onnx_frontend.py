"""Read an .onnx file into the graph IR (layout NCHW, no scratch buffers).

The planner needs every tensor's byte size, so the model must come out of ONNX
shape inference (strict mode) fully static; dynamic graph inputs are fixed with
--input-shape NAME=1x3x80x120 first. Initializers and the outputs of Constant
nodes are constants: they live in flash, so Constant nodes are not ops. Float
ConvTranspose in TFLM requests no scratch, and ONNX models are float or QDQ, so
no op gets scratch buffers here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, helper

from planner.errors import PlannerError
from planner.ir import DTYPE_BYTES, Graph, Op, OpKind, Role, Tensor

_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.UINT8: "uint8",
    TensorProto.INT8: "int8",
    TensorProto.UINT16: "uint16",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.STRING: "string",
    TensorProto.BOOL: "bool",
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.INT4: "int4",
}

_KINDS: dict[str, OpKind] = {
    "ConvTranspose": OpKind.TRANSPOSE_CONV,
    "Concat": OpKind.CONCAT,
    "Reshape": OpKind.RESHAPE,
    "Flatten": OpKind.RESHAPE,
    "Squeeze": OpKind.RESHAPE,
    "Unsqueeze": OpKind.RESHAPE,
    "Transpose": OpKind.RESHAPE,
    "Identity": OpKind.RESHAPE,  # moves no data through arithmetic, like a reshape
}
_POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalMaxPool", "GlobalAveragePool",
          "GlobalLpPool"}
_ELEMENTWISE = {
    "Abs", "Acos", "Add", "And", "Asin", "Atan", "BatchNormalization", "BitShift", "Cast",
    "Ceil", "Celu", "Clip", "Cos", "Cosh", "DequantizeLinear", "Div", "Elu", "Equal", "Erf",
    "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "IsInf",
    "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mish", "Mod",
    "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "QuantizeLinear", "Reciprocal", "Relu", "Round",
    "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Sub",
    "Sum", "Tan", "Tanh", "ThresholdedRelu", "Where", "Xor",
}


def load_onnx(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None
              ) -> Graph:
    """Parse, fix input shapes, check, infer shapes strictly, and build the Graph."""
    path = Path(path)
    where = path.name
    model = _read(path)
    graph = model.graph
    if graph.sparse_initializer:
        # ONNX shape inference cannot type them; densify before planning.
        raise PlannerError(f"{where}: sparse initializer "
                           f"'{graph.sparse_initializer[0].values.name}' is not supported")
    const_names = {init.name for init in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in const_names]
    _apply_input_shapes(model, inputs, dict(input_shapes or {}), where)
    _check_structure(graph, inputs, const_names, where)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise PlannerError(f"{where}: ONNX checker: {_one_line(str(exc))}") from None
    try:
        model = onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError,
            RuntimeError) as exc:
        raise PlannerError(f"{where}: shape inference failed: {_one_line(str(exc))}") from None
    return _build(model, path, where)


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise PlannerError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except DecodeError:
        raise PlannerError(f"{path.name}: not an ONNX model (protobuf does not parse; "
                           "truncated or another format?)") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise PlannerError(f"{path.name}: cannot read: {_one_line(str(exc))}") from None
    # Arbitrary bytes can decode as an empty ModelProto; a real model names its graph IR.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise PlannerError(f"{path.name}: not an ONNX model (no IR version or no graph)")
    return model


def _apply_input_shapes(model: onnx.ModelProto, inputs: list[onnx.ValueInfoProto],
                        shapes: dict[str, tuple[int, ...]], where: str) -> None:
    by_name = {vi.name: vi for vi in inputs}
    resized = False
    for name, shape in shapes.items():
        vi = by_name.get(name)
        if vi is None:
            valid = ", ".join(repr(n) for n in by_name) or "none"
            raise PlannerError(f"{where}: --input-shape names '{name}', which is not a graph "
                               f"input; the inputs are {valid}")
        if not vi.type.HasField("tensor_type"):
            raise PlannerError(f"{where}: input '{name}' is not a tensor")
        tt = vi.type.tensor_type
        old = list(tt.shape.dim) if tt.HasField("shape") else None
        if old is not None and len(old) != len(shape):
            raise PlannerError(f"{where}: --input-shape gives '{name}' {len(shape)} dimensions, "
                               f"the model gives it {len(old)} ({_pretty(tt)})")
        if old is not None:
            resized |= any(d.HasField("dim_value") and d.dim_value != s
                           for d, s in zip(old, shape, strict=True))
        tt.shape.Clear()
        for s in shape:
            tt.shape.dim.add().dim_value = int(s)
    if resized:
        # Stored intermediate shapes describe the old size and would contradict
        # inference: drop them, keep the outputs' ranks but not their sizes.
        del model.graph.value_info[:]
        for out in model.graph.output:
            if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
                for d in out.type.tensor_type.shape.dim:
                    d.Clear()


def _check_structure(graph: onnx.GraphProto, inputs: list[onnx.ValueInfoProto],
                     const_names: set[str], where: str) -> None:
    """Topological order and no control flow, with messages that name the node."""
    producer = {}
    for k, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer.setdefault(out, k)
    defined = const_names | {vi.name for vi in inputs}
    for k, node in enumerate(graph.node):
        label = _label(node, k)
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            raise PlannerError(f"{where}: {label} holds a subgraph; control flow "
                               "(If/Loop/Scan) is not supported")
        for name in node.input:
            if not name or name in defined:
                continue
            if name in producer:
                writer = graph.node[producer[name]]
                raise PlannerError(
                    f"{where}: nodes are not in topological order: {label} reads '{name}' "
                    f"before {_label(writer, producer[name])} writes it")
            raise PlannerError(f"{where}: {label} reads '{name}', which no node, input or "
                               "initializer defines")
        defined.update(out for out in node.output if out)
    for out in graph.output:
        if out.name not in defined:
            raise PlannerError(f"{where}: graph output '{out.name}' is never written")


def _build(model: onnx.ModelProto, path: Path, where: str) -> Graph:
    graph = model.graph
    types: dict[str, onnx.TypeProto] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        types[vi.name] = vi.type
    initializers = {init.name: init for init in graph.initializer}
    output_names = {vi.name for vi in graph.output}

    # Tensor order: graph inputs, initializers, then node outputs in node order.
    order: list[tuple[str, Role, str]] = []  # name, role, who defines it (for messages)
    seen: set[str] = set()

    def add(name: str, role: Role, origin: str) -> None:
        if name and name not in seen:
            seen.add(name)
            order.append((name, role, origin))

    for vi in graph.input:
        if vi.name not in initializers:
            add(vi.name, Role.INPUT, "graph input")
    for name in initializers:
        add(name, Role.CONSTANT, "initializer")
    for k, node in enumerate(graph.node):
        is_const = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        for out in node.output:
            role = Role.CONSTANT if is_const else (
                Role.OUTPUT if out in output_names else Role.ACTIVATION)
            add(out, role, f"output of {_label(node, k)}")

    # Report dynamic graph inputs first: fixing them usually fixes everything else.
    order_checked = sorted(order, key=lambda item: item[1] != Role.INPUT)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, role, origin in order_checked:
        if name in initializers:
            init = initializers[name]
            shapes[name] = (tuple(int(d) for d in init.dims),
                            _dtype(init.data_type, name, where))
            continue
        shapes[name] = _static(types.get(name), name, role, origin, where)

    ids = {name: i for i, (name, _, _) in enumerate(order)}
    tensors = []
    for i, (name, role, _) in enumerate(order):
        shape, dtype = shapes[name]
        activation = role != Role.CONSTANT
        tensors.append(Tensor(
            id=i, name=name, shape=shape, dtype=dtype,
            nbytes=math.prod(shape) * DTYPE_BYTES[dtype], role=role,
            channel_axis=1 if activation and len(shape) == 4 else None,
        ))

    ops: list[Op] = []
    for k, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            continue
        ins = tuple(ids[n] if n else -1 for n in node.input)
        outs = tuple(ids[n] if n else -1 for n in node.output)
        in_shapes = [tensors[t].shape if t >= 0 else () for t in ins]
        out_shapes = [tensors[t].shape if t >= 0 else () for t in outs]
        kind = _kind(node, in_shapes)
        name = node.name or next((n for n in node.output if n), f"{node.op_type}_{k}")
        ops.append(Op(len(ops), name, node.op_type, kind, ins, outs, (),
                      _attrs(node, in_shapes, out_shapes)))

    graph_inputs = tuple(ids[vi.name] for vi in graph.input if vi.name not in initializers)
    graph_outputs = tuple(ids[vi.name] for vi in graph.output)
    return Graph(path.stem, "onnx", tuple(tensors), tuple(ops), graph_inputs, graph_outputs,
                 "NCHW")


def _static(tp: onnx.TypeProto | None, name: str, role: Role, origin: str,
            where: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a value, or a PlannerError saying how to make it static."""
    fix = "fix dynamic graph inputs with --input-shape NAME=1x3x80x120"
    if tp is None or not tp.HasField("tensor_type"):
        what = "no type" if tp is None else f"a non-tensor type ({tp.WhichOneof('value')})"
        raise PlannerError(f"{where}: tensor '{name}' ({origin}) has {what} after shape "
                           f"inference; the planner needs a static shape for every tensor "
                           f"({fix}; outputs of ops ONNX cannot infer need value_info)")
    tt = tp.tensor_type
    dtype = _dtype(tt.elem_type, name, where)
    dims = list(tt.shape.dim) if tt.HasField("shape") else None
    if dims is not None and all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return tuple(int(d.dim_value) for d in dims), dtype
    if role == Role.INPUT:
        symbols = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                   for d in dims or []]
        unknown = ", ".join(dict.fromkeys(s for s in symbols if not s.isdigit()))
        hint = (f"give static sizes with --input-shape {name}={'x'.join(symbols)} "
                f"(replace {unknown} by numbers, as in NAME=1x3x80x120)" if dims
                else f"give it with --input-shape {name}=DIMS (as in NAME=1x3x80x120)")
        raise PlannerError(f"{where}: input '{name}' has a dynamic shape {_pretty(tt)}; {hint}")
    raise PlannerError(f"{where}: tensor '{name}' ({origin}) has no static shape "
                       f"{_pretty(tt)} after shape inference; {fix}")


def _dtype(elem_type: int, name: str, where: str) -> str:
    dtype = _DTYPES.get(elem_type)
    if dtype is None:
        if elem_type == TensorProto.UNDEFINED:
            raise PlannerError(f"{where}: tensor '{name}' has no element type")
        label = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise PlannerError(f"{where}: tensor '{name}' has element type {label}, "
                           "which the planner cannot size")
    return dtype


# Convolutions and the input position of their OIHW weights (quantized forms included).
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}


def _kind(node: onnx.NodeProto, in_shapes: list[tuple[int, ...]]) -> OpKind:
    op = node.op_type
    if op in _CONV_WEIGHT:
        group = int(_attr(node, "group", 1))
        channels = in_shapes[0][1] if in_shapes and len(in_shapes[0]) > 1 else None
        if group == 1:
            return OpKind.CONV
        if group == channels:
            return OpKind.DEPTHWISE_CONV
        # Grouped convs: TFLite's CONV_2D runs them too (filter channels < input channels).
        return OpKind.CONV
    if op in _KINDS:
        return _KINDS[op]
    if op in _POOLS:
        return OpKind.POOL
    if op in _ELEMENTWISE:
        return OpKind.ELEMENTWISE
    return OpKind.OTHER


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return default


def _attrs(node: onnx.NodeProto, in_shapes: list[tuple[int, ...]],
           out_shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    op = node.op_type
    attrs: dict[str, Any] = {}
    x = in_shapes[0] if in_shapes else ()
    y = out_shapes[0] if out_shapes else ()
    kernel: tuple[int, ...] | None = None
    weight = 1 if op == "ConvTranspose" else _CONV_WEIGHT.get(op)
    if weight is not None and len(in_shapes) > weight and len(in_shapes[weight]) > 2:
        kernel = tuple(in_shapes[weight][2:])  # OIHW (convs) or IOHW (ConvTranspose)
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = tuple(int(k) for k in _attr(node, "kernel_shape", []))
    elif op.startswith("Global") and op in _POOLS:
        kernel = tuple(x[2:])
    if kernel is not None:
        n = len(kernel)
        strides = tuple(int(s) for s in _attr(node, "strides", [1] * n))
        dilations = tuple(int(d) for d in _attr(node, "dilations", [1] * n))
        attrs["kernel"] = kernel
        attrs["strides"] = strides
        attrs["dilations"] = dilations
        auto_pad = _attr(node, "auto_pad", "NOTSET")
        attrs["padding"] = {"SAME_UPPER": "same", "SAME_LOWER": "same",
                            "VALID": "valid"}.get(auto_pad, "explicit")
        pads = _attr(node, "pads", None)
        if pads is None or auto_pad != "NOTSET":
            pads = _auto_pads(op, auto_pad, kernel, strides, dilations, x, y,
                              _attr(node, "output_padding", [0] * n))
        attrs["pads"] = tuple(int(p) for p in pads)
        if weight is not None:
            attrs["group"] = int(_attr(node, "group", 1))
            # ONNX shape inference leaves a Conv's input channels unchecked against its
            # weights, so a wrong --input-shape would otherwise plan a model that cannot run.
            w = in_shapes[weight] if len(in_shapes) > weight else ()
            if op == "Conv" and len(x) > 1 and len(w) > 1 and x[1] != w[1] * attrs["group"]:
                raise PlannerError(
                    f"node '{node.name or op}': input has {x[1]} channels but its weights "
                    f"expect {w[1] * attrs['group']}; check --input-shape"
                )
        if op == "ConvTranspose":
            attrs["output_padding"] = tuple(int(p) for p in _attr(node, "output_padding",
                                                                   [0] * n))
    axis = _attr(node, "axis", None)
    if isinstance(axis, int):
        rank = len(y) if op == "Concat" else len(x)
        attrs["axis"] = axis + rank if axis < 0 and rank else axis
    if op in ("Resize", "Upsample"):
        attrs["mode"] = _attr(node, "mode", "nearest")
        if op == "Resize":
            attrs["coordinate_transformation_mode"] = _attr(
                node, "coordinate_transformation_mode", "half_pixel")
    return attrs


def _auto_pads(op: str, auto_pad: str, kernel: tuple[int, ...], strides: tuple[int, ...],
               dilations: tuple[int, ...], x: tuple[int, ...], y: tuple[int, ...],
               output_padding: list[int]) -> list[int]:
    """Explicit [begin..., end...] pads for auto_pad, from the inferred shapes."""
    n = len(kernel)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER") or len(x) != n + 2 or len(y) != n + 2:
        return [0] * (2 * n)
    begins, ends = [], []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        if op == "ConvTranspose":
            total = strides[i] * (x[2 + i] - 1) + output_padding[i] + span - y[2 + i]
        else:
            total = (y[2 + i] - 1) * strides[i] + span - x[2 + i]
        total = max(total, 0)
        small = total // 2
        begin = small if auto_pad == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _label(node: onnx.NodeProto, k: int) -> str:
    name = node.name or (node.output[0] if node.output else "")
    op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    return f"node {k} '{name}' ({op})" if name else f"node {k} ({op})"


def _pretty(tt: onnx.TypeProto.Tensor) -> str:
    if not tt.HasField("shape"):
        return "[unknown rank]"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tt.shape.dim]
    return "[" + ", ".join(dims) + "]"


def _one_line(message: str) -> str:
    """ONNX messages span lines and repeat error-kind tags; keep the facts on one line."""
    text = re.sub(r"\[\w+Error\]\s*", "", message)
    text = text.replace("Inference error(s):", "")
    context = re.search(r"Name:\s*(\S*)\s+OpType:\s*(\S+)", text)
    first = text.split("==> Context:")[0]
    parts = [p.strip() for p in first.splitlines() if p.strip()]
    line = " ".join(parts)
    if context:
        line += f" (node '{context.group(1)}', op {context.group(2)})"
    return line or "unknown error"
