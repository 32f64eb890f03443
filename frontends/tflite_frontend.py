"""Read a .tflite file into the graph IR, with the scratch buffers TFLM's kernels request.

The flatbuffer is read through the schema module that the `tflite-micro` package
ships (no TensorFlow). Tensor ids equal TFLite tensor indices of subgraph 0; the
scratch buffers that TFLM's reference kernels ask for in Prepare
(RequestScratchBufferInArena) follow as extra tensors, in request order, so that
`planner.analysis.buffers` sees exactly the buffers TFLM's planner sees.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.ir import DTYPE_BYTES, Graph, Op, OpKind, Role, Tensor
from planner.units import INT32_MAX

TFLITE_MAGIC = b"TFL3"

# TensorType names the IR's DTYPE_BYTES does not know; resource handles are int32 in TFLM.
_EXTRA_BYTES = {"complex128": 16, "int2": 1, "uint4": 1, "float8_e4m3fn": 1, "resource": 4}

_KINDS: dict[str, OpKind] = {
    "CONV_2D": OpKind.CONV,
    "DEPTHWISE_CONV_2D": OpKind.DEPTHWISE_CONV,
    "TRANSPOSE_CONV": OpKind.TRANSPOSE_CONV,
    # MediaPipe's custom transposed convolution (input, weights OHWI, bias).
    "Convolution2DTransposeBias": OpKind.TRANSPOSE_CONV,
    "CONCATENATION": OpKind.CONCAT,
    "AVERAGE_POOL_2D": OpKind.POOL,
    "MAX_POOL_2D": OpKind.POOL,
    "L2_POOL_2D": OpKind.POOL,
    "RESHAPE": OpKind.RESHAPE,
    "SQUEEZE": OpKind.RESHAPE,
    "EXPAND_DIMS": OpKind.RESHAPE,
}
_ELEMENTWISE = {
    "ABS", "ADD", "CEIL", "COS", "DEQUANTIZE", "DIV", "ELU", "EXP", "FLOOR", "FLOOR_DIV",
    "FLOOR_MOD", "GELU", "HARD_SWISH", "LEAKY_RELU", "LOG", "LOGISTIC", "MAXIMUM", "MINIMUM",
    "MUL", "NEG", "POW", "PRELU", "QUANTIZE", "RELU", "RELU6", "RELU_0_TO_1", "RELU_N1_TO_1",
    "ROUND", "RSQRT", "SIGN", "SIN", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "SUB", "TANH",
}


def _schema():
    from planner.tflite_schema import schema

    return schema()


def _enum_names(cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def load_tflite(path: str | Path) -> Graph:
    """Subgraph 0 of a .tflite file as a Graph; bad files raise a one-line PlannerError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PlannerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PlannerError(f"{path}: not a file") from None
    except OSError as exc:
        raise PlannerError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_tflite(data, name=path.stem, where=str(path))


def parse_tflite(data: bytes, name: str = "model", where: str = "model") -> Graph:
    """Like load_tflite, from the file's bytes."""
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise PlannerError(f"{where}: not a TFLite file (no 'TFL3' identifier)")
    fb = _schema()
    try:
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(_Strict(data), 0))
    except (struct.error, IndexError, ValueError, TypeError, AttributeError, UnicodeError) as exc:
        # Flatbuffers reads past the end of a cut file with struct/numpy errors.
        raise PlannerError(f"{where}: truncated or unparsable TFLite flatbuffer ({exc})") from None
    if not model.subgraphs:
        raise PlannerError(f"{where}: TFLite model has no subgraphs")
    try:
        return _build(fb, model, data, name, where)
    except (IndexError, TypeError, AttributeError) as exc:
        raise PlannerError(f"{where}: inconsistent TFLite flatbuffer ({exc})") from None


class _Strict(bytes):
    """Bytes whose slices fail past the end: flatbuffers would cut strings short silently."""

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, slice) and key.stop is not None and key.stop > len(self):
            raise IndexError(f"read up to byte {key.stop} of {len(self)}")
        return super().__getitem__(key)


def _buffer_has_data(buf: Any, size: int, where: str, index: int) -> bool:
    if buf is None:
        return False
    if buf.offset and buf.offset > 1:
        # Large models keep constant data after the flatbuffer, addressed by offset/size.
        if buf.offset + buf.size > size:
            raise PlannerError(f"{where}: truncated TFLite file (buffer {index} ends past the end)")
        return buf.size > 0
    return buf.data is not None and len(buf.data) > 0


def _dtype(fb, type_code: int) -> tuple[str, int]:
    name = _enum_names(fb.TensorType).get(type_code)
    if name is None:
        raise PlannerError(f"unknown TFLite tensor type {type_code}")
    dtype = name.lower()
    width = DTYPE_BYTES.get(dtype, _EXTRA_BYTES.get(dtype))
    if width is None:
        raise PlannerError(f"TFLite tensor type {name} has no fixed size")
    return dtype, width


def _build(fb, model: Any, data: bytes, name: str, where: str) -> Graph:
    sub = model.subgraphs[0]
    raw_tensors = sub.tensors or []
    buffers = model.buffers or []
    inputs = tuple(int(t) for t in (sub.inputs if sub.inputs is not None else []))
    outputs = tuple(int(t) for t in (sub.outputs if sub.outputs is not None else []))
    n = len(raw_tensors)
    for t in (*inputs, *outputs):
        if not 0 <= t < n:
            raise PlannerError(f"{where}: subgraph input/output {t} is not a tensor index")

    tensors: list[Tensor] = []
    for i, rt in enumerate(raw_tensors):
        tname = rt.name.decode("utf-8", "replace") if rt.name else f"tensor_{i}"
        shape = tuple(int(d) for d in (rt.shape if rt.shape is not None else []))
        if any(d < 0 for d in shape):
            raise PlannerError(
                f"{where}: tensor {i} '{tname}' has a dynamic shape {list(shape)}; "
                "TFLM needs static shapes"
            )
        dtype, width = _dtype(fb, rt.type)
        has_data = 0 < rt.buffer < len(buffers) and _buffer_has_data(
            buffers[rt.buffer], len(data), where, rt.buffer
        )
        if has_data:
            role = Role.CONSTANT
        elif rt.isVariable:
            role = Role.VARIABLE
        elif i in inputs:
            role = Role.INPUT
        elif i in outputs:
            role = Role.OUTPUT
        else:
            role = Role.ACTIVATION
        tensors.append(Tensor(
            id=i, name=tname, shape=shape, dtype=dtype, nbytes=math.prod(shape) * width,
            role=role, source_index=i, channel_axis=3 if len(shape) == 4 else None,
        ))

    codes = model.operatorCodes or []
    builtin_names = _enum_names(fb.BuiltinOperator)
    ops: list[Op] = []
    scratch: list[Tensor] = []
    for k, rop in enumerate(sub.operators or []):
        if not 0 <= rop.opcodeIndex < len(codes):
            raise PlannerError(f"{where}: operator {k} has opcode index {rop.opcodeIndex} "
                               f"but the model lists {len(codes)} operator codes")
        code = codes[rop.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == fb.BuiltinOperator.CUSTOM:
            op_type = code.customCode.decode("utf-8", "replace") if code.customCode else "CUSTOM"
        else:
            op_type = builtin_names.get(builtin, f"BUILTIN_{builtin}")
        ins = tuple(int(t) for t in (rop.inputs if rop.inputs is not None else []))
        outs = tuple(int(t) for t in (rop.outputs if rop.outputs is not None else []))
        for t in (*ins, *outs):
            if not -1 <= t < n:
                raise PlannerError(f"{where}: operator {k} ({op_type}) names tensor {t}, "
                                   f"but the subgraph has {n} tensors")
        kind = _KINDS.get(op_type, OpKind.ELEMENTWISE if op_type in _ELEMENTWISE else OpKind.OTHER)
        attrs = _attrs(fb, op_type, rop, ins, outs, tensors)
        first_out = tensors[outs[0]].name if outs and outs[0] >= 0 else ""
        op_name = first_out or f"{op_type.lower()}_{k}"
        requests = _scratch_requests(op_type, rop, ins, outs, tensors)
        ids = []
        for j, (nbytes, dtype, elems) in enumerate(requests):
            sid = n + len(scratch)
            scratch.append(Tensor(
                id=sid, name=f"{op_name}/scratch{j}", shape=(elems,), dtype=dtype,
                nbytes=nbytes, role=Role.SCRATCH,
            ))
            ids.append(sid)
        ops.append(Op(k, op_name, op_type, kind, ins, outs, tuple(ids), attrs))

    _check_structure(tensors + scratch, ops, inputs, where)
    return Graph(name, "tflite", tuple(tensors + scratch), tuple(ops), inputs, outputs, "NHWC")


def _check_structure(tensors: list[Tensor], ops: list[Op], inputs: tuple[int, ...],
                     where: str) -> None:
    """Refuse what TFLM would refuse or what planners would mis-plan, naming the op.

    TFLM runs operators in file order and plans lifetimes from it, so every activation
    an op reads must be written by an earlier op (or be a subgraph input); a tensor has
    at most one writer, and no op writes a subgraph input or a constant. Sizes fit
    int32 (TFLite's offline array). CONCATENATION inputs must agree with the output on
    every axis but the concat axis, whose extents add up (planners split channels).
    """
    for t in tensors:
        if t.nbytes > INT32_MAX:
            raise PlannerError(f"{where}: tensor {t.id} '{t.name}' needs {t.nbytes:,} B, "
                               "beyond what TFLite addresses (int32)")
    fixed = {t.id for t in tensors if t.role in (Role.CONSTANT, Role.VARIABLE)}
    writer: dict[int, int] = {}
    for op in ops:
        for t in op.outputs:
            if t < 0:
                continue
            if t in writer:
                raise PlannerError(f"{where}: tensor {t} '{tensors[t].name}' is written by "
                                   f"op {writer[t]} and again by op {op.index} ({op.op_type})")
            if t in inputs or t in fixed:
                what = "a subgraph input" if t in inputs else "a constant or variable"
                raise PlannerError(f"{where}: op {op.index} ({op.op_type}) writes tensor {t} "
                                   f"'{tensors[t].name}', which is {what}")
            writer[t] = op.index
    for op in ops:
        for t in op.inputs:
            if t < 0 or t in fixed or t in inputs:
                continue
            # A tensor no op writes is legal (Vela's scratch areas): its life starts at use.
            if t in writer and writer[t] >= op.index:
                raise PlannerError(f"{where}: operators are not in topological order: op "
                                   f"{op.index} ({op.op_type}) reads '{tensors[t].name}', "
                                   f"written by op {writer[t]}")
    for op in ops:
        if op.op_type == "CONCATENATION":
            _check_concat(op, tensors, where)


def _check_concat(op: Op, tensors: list[Tensor], where: str) -> None:
    ins = [t for t in op.inputs if t >= 0]
    if len(op.outputs) != 1 or op.outputs[0] < 0 or not ins:
        raise PlannerError(f"{where}: op {op.index} (CONCATENATION) needs inputs and one output")
    out = tensors[op.outputs[0]].shape
    axis = op.attrs.get("axis", len(out) - 1)
    if not 0 <= axis < len(out):
        raise PlannerError(f"{where}: op {op.index} (CONCATENATION) has axis {axis} for a "
                           f"rank-{len(out)} output")
    total = 0
    for t in ins:
        shape = tensors[t].shape
        same = len(shape) == len(out) and all(
            a == b for d, (a, b) in enumerate(zip(shape, out, strict=True)) if d != axis)
        if not same:
            raise PlannerError(f"{where}: op {op.index} (CONCATENATION) input "
                               f"'{tensors[t].name}' {list(shape)} does not fit output "
                               f"{list(out)} on axis {axis}")
        total += shape[axis]
    if total != out[axis]:
        raise PlannerError(f"{where}: op {op.index} (CONCATENATION) inputs add up to {total} "
                           f"on axis {axis}, the output has {out[axis]}")


_PADDING = {0: "same", 1: "valid"}
_ACTIVATIONS = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}


def _attrs(fb, op_type: str, rop: Any, ins: tuple[int, ...], outs: tuple[int, ...],
           tensors: list[Tensor]) -> dict[str, Any]:
    opts = rop.builtinOptions
    attrs: dict[str, Any] = {}

    def shape_of(pos: int) -> tuple[int, ...]:
        return tensors[ins[pos]].shape if len(ins) > pos and ins[pos] >= 0 else ()

    if op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV",
                   "Convolution2DTransposeBias"):
        # Filters are OHWI (conv, transpose conv) or 1HWO (depthwise): H, W at 1, 2.
        filt = shape_of(1)
        if len(filt) == 4:
            attrs["kernel"] = (filt[1], filt[2])
        attrs["dilations"] = (1, 1)
    if op_type in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D") and opts is not None:
        attrs["kernel"] = (int(opts.filterHeight), int(opts.filterWidth))
    if opts is not None:
        if hasattr(opts, "strideH") and hasattr(opts, "strideW"):
            attrs["strides"] = (int(opts.strideH), int(opts.strideW))
        if hasattr(opts, "dilationHFactor"):
            attrs["dilations"] = (int(opts.dilationHFactor), int(opts.dilationWFactor))
        if hasattr(opts, "padding") and op_type != "PAD":
            attrs["padding"] = _PADDING.get(int(opts.padding), str(opts.padding))
        if hasattr(opts, "fusedActivationFunction"):
            attrs["fused_activation"] = _ACTIVATIONS.get(int(opts.fusedActivationFunction),
                                                         str(opts.fusedActivationFunction))
    if op_type == "CONCATENATION" and opts is not None:
        rank = len(tensors[outs[0]].shape) if outs and outs[0] >= 0 else 0
        axis = int(opts.axis)
        attrs["axis"] = axis + rank if axis < 0 and rank else axis
    if op_type == "Convolution2DTransposeBias" and rop.customOptions is not None:
        # MediaPipe stores a raw TfLiteTransposeConvParams: padding enum, stride_w, stride_h.
        raw = bytes(bytearray(rop.customOptions))
        if len(raw) >= 12:
            pad, sw, sh = struct.unpack_from("<iii", raw)
            attrs["padding"] = {1: "same", 2: "valid"}.get(pad, "unknown")
            attrs["strides"] = (sh, sw)
    return attrs


def _scratch_requests(op_type: str, rop: Any, ins: tuple[int, ...], outs: tuple[int, ...],
                      tensors: list[Tensor]) -> list[tuple[int, str, int]]:
    """(bytes, dtype, elements) per RequestScratchBufferInArena call, in the kernel's order.

    These follow the reference kernels of the tflite-micro package (what
    `backends.tflm.interpreter` runs); tests compare the resulting plan with its
    arena head.
    """

    def tensor(pos: int, group: tuple[int, ...] = ins) -> Tensor | None:
        return tensors[group[pos]] if len(group) > pos and group[pos] >= 0 else None

    def elems(t: Tensor | None) -> int:
        return math.prod(t.shape) if t is not None else 0

    out = tensor(0, outs)
    if op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        # Packed int4 weights are unpacked to one int8 per element before the kernel runs.
        filt = tensor(1)
        if filt is not None and filt.dtype == "int4":
            return [(elems(filt), "int8", elems(filt))]
        return []
    if op_type in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"):
        x, axis = tensor(0), tensor(1)
        if x is None or axis is None:
            return []
        reqs = []
        if op_type in ("MEAN", "SUM") and x.dtype in ("int8", "uint8", "int16") and out:
            # Quantized sums accumulate in int32, one per output element.
            reqs.append((elems(out) * 4, "int32", elems(out)))
        # Index scratch: one int per input dimension, one per (resolved) axis.
        reqs.append((4 * len(x.shape), "int32", len(x.shape)))
        reqs.append((4 * elems(axis), "int32", elems(axis)))
        return reqs
    if op_type == "TRANSPOSE_CONV":
        x = tensor(2)  # inputs: output_shape, filter, input, [bias]
        if x is None or out is None:
            return []
        if x.dtype == "int8":
            return [(elems(out) * 4, "int32", elems(out))]
        if x.dtype == "int16":
            reqs = [(elems(out) * 8, "int64", elems(out))]
            bias = tensor(3)
            if bias is not None and bias.dtype == "int16":
                # 16-bit biases get widened to int64 in a second scratch buffer.
                reqs.append((elems(bias) * 8, "int64", elems(bias)))
            return reqs
        return []
    if op_type == "SVDF":
        x, feature = tensor(0), tensor(1)
        if x is None or feature is None or len(x.shape) != 2 or not feature.shape:
            return []
        batch, filters = x.shape[0], feature.shape[0]
        if x.dtype == "int8":
            rank = max(1, int(getattr(rop.builtinOptions, "rank", 1) or 1))
            units = filters // rank
            return [(batch * filters * 4, "int32", batch * filters),
                    (batch * units * 4, "int32", batch * units)]
        if x.dtype == "float32":
            return [(batch * filters * 4, "float32", batch * filters)]
        return []
    return []
