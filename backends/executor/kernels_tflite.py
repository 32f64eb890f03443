"""TFLite reference kernels for the arena machine: each op run as a one-op .tflite model.

The one-op model is cut from the source file with the flatbuffer object API that
tflite-micro ships (`ModelT`): the operator, its operator code, the tensors it names
(constants keep their buffers, so weights stay out of the arena as on a device) and
nothing else. ai-edge-litert runs it with `OpResolverType.BUILTIN_REF`, the same
reference kernels that run the whole model for the comparison, so an integer model
must come out bit-identical.

Where ai-edge-litert cannot run the model (it rejects person_detect's quantization
metadata; its reference SVDF corrupts the heap) the same one-op models run on real
TFLM (the tflite-micro package) instead, against the whole model on TFLM.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import PlannerError
from planner.ir import Graph, Op

# Ops whose ai-edge-litert reference kernel cannot run safely in-process: seen on
# keyword_scrambled_8bit, the interpreter aborts the whole process with "double free
# or corruption" once an SVDF has run (a heap overrun in the kernel).
LITERT_UNSAFE = frozenset({"SVDF"})
RUNTIMES = ("auto", "litert", "tflm")


def _schema():
    from planner.tflite_schema import schema

    return schema()


def _interpreter(what: str, content: bytes | None = None, path: Path | None = None):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        # From a file where there is one: keyword_scrambled (int16 SVDF) aborts the
        # process with "double free" when the same bytes come in as model_content.
        interp = Interpreter(model_path=str(path) if path else None, model_content=content,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "error")
        raise PlannerError(f"TFLite reference interpreter cannot run {what}: {first}") from None
    return interp


def _pack(fb, model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class TfliteKernels:
    """One cached reference interpreter (or one-op model for TFLM) per op of a .tflite model.

    runtime: "litert" (ai-edge-litert reference kernels), "tflm" (real TFLM), or "auto":
    litert unless it refuses the model or the model has an op litert runs unsafely.
    """

    def __init__(self, graph: Graph, model_path: str | Path, runtime: str = "auto"):
        self.graph = graph
        self.path = Path(model_path)
        self.data = self.path.read_bytes()
        fb = _schema()
        self.fb = fb
        self.model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(self.data, 0))
        if not self.model.subgraphs:
            raise PlannerError(f"{self.path}: no subgraph")
        self.sub = self.model.subgraphs[0]
        if len(self.sub.operators or []) != len(graph.ops):
            raise PlannerError(f"{self.path}: {len(self.sub.operators or [])} operators, "
                               f"the graph has {len(graph.ops)} ops")
        if runtime not in RUNTIMES:
            raise PlannerError(f"unknown TFLite runtime '{runtime}': use {', '.join(RUNTIMES)}")
        unsafe = sorted({op.op_type for op in graph.ops} & LITERT_UNSAFE)
        if runtime == "litert" and unsafe:
            raise PlannerError(f"ai-edge-litert's reference {unsafe[0]} kernel corrupts the "
                               "heap; use the tflm runtime")
        self.litert_refusal: str | None = None
        if runtime == "auto":
            runtime = "tflm" if unsafe or not self._litert_runs() else "litert"
        self.runtime = runtime
        self._cache: dict[int, tuple[Any, list[int], list[int]]] = {}
        self._device: DeviceKernels | None = None

    def _litert_runs(self) -> bool:
        try:
            _interpreter(str(self.path), path=self.path)
        except PlannerError as exc:
            self.litert_refusal = str(exc)
            return False
        return True

    def _one_op(self, op: Op):
        """Interpreter, source input tensor ids it takes in order, source output ids."""
        if op.index in self._cache:
            return self._cache[op.index]
        fb = self.fb
        rop = self.sub.operators[op.index]
        ins = [int(t) for t in (rop.inputs if rop.inputs is not None else [])]
        outs = [int(t) for t in (rop.outputs if rop.outputs is not None else [])]
        inter = [int(t) for t in (rop.intermediates if rop.intermediates is not None else [])]
        if tuple(ins) != tuple(op.inputs) or tuple(outs) != tuple(op.outputs):
            raise PlannerError(f"op {op.index} does not match operator {op.index} of {self.path}")
        used = list(dict.fromkeys(t for t in ins + outs + inter if t >= 0))
        remap = {t: i for i, t in enumerate(used)}
        buffers = [fb.BufferT()]
        tensors = []
        feeds: list[int] = []
        for t in used:
            src = self.sub.tensors[t]
            tensor = copy.copy(src)
            buf = self.model.buffers[src.buffer] if 0 < src.buffer < len(self.model.buffers) \
                else None
            if buf is not None and buf.data is not None and len(buf.data):
                new = fb.BufferT()
                new.data = buf.data
                buffers.append(new)
                tensor.buffer = len(buffers) - 1
            else:
                tensor.buffer = 0
                if t in ins and not src.isVariable:
                    feeds.append(t)
            tensors.append(tensor)
        new_op = copy.copy(rop)
        new_op.opcodeIndex = 0
        new_op.inputs = [remap[t] if t >= 0 else -1 for t in ins]
        new_op.outputs = [remap[t] if t >= 0 else -1 for t in outs]
        new_op.intermediates = [remap[t] for t in inter] if inter else None
        sub = fb.SubGraphT()
        sub.tensors = tensors
        sub.inputs = [remap[t] for t in feeds]
        sub.outputs = [remap[t] for t in outs if t >= 0]
        sub.operators = [new_op]
        sub.name = f"op{op.index}"
        model = fb.ModelT()
        model.version = self.model.version or 3
        model.operatorCodes = [self.model.operatorCodes[rop.opcodeIndex]]
        model.subgraphs = [sub]
        model.buffers = buffers
        model.description = f"op {op.index} of {self.path.name}"
        content = _pack(fb, model)
        interp = content if self.runtime == "tflm" else \
            _interpreter(f"op {op.index} {op.op_type}", content=content)
        self._cache[op.index] = (interp, feeds, [t for t in outs if t >= 0])
        return self._cache[op.index]

    def compute(self, op: Op, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        interp, feeds, outs = self._one_op(op)
        values = {t: v for t, v in zip(op.inputs, inputs, strict=True) if t >= 0}
        if self.runtime == "tflm":
            from backends.tflm.interpreter import invoke
            from backends.tflm.isolation import isolated

            arrays = []
            for t in feeds:
                if values.get(t) is None:
                    raise PlannerError(f"op {op.index}: no value for input tensor {t}")
                arrays.append(values[t])
            # In a child: a kernel that aborts on a user's model is one line (issue 14).
            got = dict(zip(outs, isolated(f"op {op.index} ({op.op_type})", invoke, interp,
                                          arrays), strict=True))
            return [got.get(t) if t >= 0 else None for t in op.outputs]
        details = interp.get_input_details()
        for detail, t in zip(details, feeds, strict=True):
            value = values.get(t)
            if value is None:
                raise PlannerError(f"op {op.index}: no value for input tensor {t}")
            interp.set_tensor(detail["index"], np.asarray(value, dtype=detail["dtype"])
                              .reshape(detail["shape"]))
        interp.invoke()
        got = {t: np.array(interp.get_tensor(d["index"]), copy=True)
               for t, d in zip(outs, interp.get_output_details(), strict=True)}
        return [got.get(t) if t >= 0 else None for t in op.outputs]

    def device_kernels(self) -> DeviceKernels:
        """The C kernels a device runs for the fused and scratch-free ops (built at first
        use; PlannerError with one line when they cannot be)."""
        if self._device is None:
            self._device = DeviceKernels(self)
        return self._device

    def reference(self, inputs: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        if self.runtime == "tflm":
            from backends.tflm.interpreter import invoke
            from backends.tflm.isolation import isolated

            sub_inputs = [int(t) for t in self.sub.inputs]
            missing = [t for t in sub_inputs if t not in inputs]
            if missing:
                raise PlannerError(f"no value for model input tensor {missing[0]}")
            try:
                outs = isolated(self.path.name, invoke, self.data,
                                [inputs[t] for t in sub_inputs])
            except PlannerError as exc:
                if self.litert_refusal:  # both refused: say why each did
                    raise PlannerError(f"{self.litert_refusal}; {exc}") from None
                raise
            return dict(zip((int(t) for t in self.sub.outputs), outs, strict=True))
        interp = _interpreter(str(self.path), path=self.path)
        for detail in interp.get_input_details():
            t = int(detail["index"])
            if t not in inputs:
                raise PlannerError(f"no value for model input tensor {t}")
            interp.set_tensor(t, np.asarray(inputs[t], dtype=detail["dtype"])
                              .reshape(detail["shape"]))
        interp.invoke()
        return {int(d["index"]): np.array(interp.get_tensor(d["index"]), copy=True)
                for d in interp.get_output_details()}



class DeviceKernels:
    """The project's C kernels (backends/c/kernels.py) for the ops a device runs through
    them: fused concat+conv (CONV_2D, grouped, DEPTHWISE_CONV_2D), fused concat, and the
    scratch-free TRANSPOSE_CONV. Constants and quantization come from the model, as the
    TFLM Prepare functions take them."""

    def __init__(self, kernels: TfliteKernels):
        from backends.c import kernels as ckernels

        self.ck = ckernels
        self.ck.library()  # fails here, with one line, when no C compiler is present
        self.sub = kernels.sub
        self.model = kernels.model
        self.graph = kernels.graph

    def _const(self, t: int) -> np.ndarray | None:
        if t < 0:
            return None
        src = self.sub.tensors[t]
        buf = self.model.buffers[src.buffer] if 0 < src.buffer < len(self.model.buffers) \
            else None
        if buf is None or buf.data is None or not len(buf.data):
            raise PlannerError(f"tensor {t} '{self.graph.tensors[t].name}' has no constant data")
        from backends.executor.common import numpy_dtype

        dtype = numpy_dtype(self.graph.tensors[t])
        raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape(self.graph.tensors[t].shape)

    def _quant(self, t: int) -> tuple[list[float], list[int]]:
        q = self.sub.tensors[t].quantization
        if q is None or q.scale is None or not len(q.scale):
            raise PlannerError(f"tensor {t} '{self.graph.tensors[t].name}' is not quantized")
        zps = [int(z) for z in q.zeroPoint] if q.zeroPoint is not None else [0]
        return [float(s) for s in q.scale], zps

    def _conv_quant(self, data_in: int, filt: int, out: int, channels: int):
        (in_s,), (in_zp,) = (v[:1] for v in self._quant(data_in))
        f_scales, _ = self._quant(filt)
        (out_s,), (out_zp,) = (v[:1] for v in self._quant(out))
        mult, shift = self.ck.per_channel_multipliers(in_s, f_scales, out_s, channels)
        return in_zp, out_s, out_zp, mult, shift

    def fused_conv(self, conv: Op, slices: Sequence[np.ndarray]) -> np.ndarray:
        """The conv of a fused concat+conv over the concat's input slices."""
        x, filt_t = conv.inputs[0], conv.inputs[1]
        bias_t = conv.inputs[2] if len(conv.inputs) > 2 else -1
        out_t = conv.outputs[0]
        out_shape = self.graph.tensors[out_t].shape
        in_zp, out_s, out_zp, mult, shift = self._conv_quant(x, filt_t, out_t, out_shape[3])
        return self.ck.fused_concat_conv2d(
            slices, self._const(filt_t), self._const(bias_t), mult, shift,
            input_zero_point=in_zp, output_zero_point=out_zp, out_shape=out_shape,
            strides=conv.attrs.get("strides", (1, 1)),
            dilations=conv.attrs.get("dilations", (1, 1)),
            padding=conv.attrs.get("padding", "valid"),
            act_range=self.ck.activation_range(conv.attrs.get("fused_activation", "none"),
                                               out_s, out_zp),
            depthwise=conv.op_type == "DEPTHWISE_CONV_2D")

    def fused_concat(self, concat: Op, slices: Sequence[np.ndarray]) -> np.ndarray:
        return self.ck.fused_concat(slices, int(concat.attrs.get("axis", -1)))

    def transpose_conv(self, op: Op, x: np.ndarray, row_acc: np.ndarray) -> np.ndarray:
        """TRANSPOSE_CONV (inputs output_shape, filter, input[, bias]) on the row kernel.
        row_acc is the scratch the plan gave it (one output row): 16x8 accumulates there in
        int64; int8 (gather form, tp_kernels.h) reserves it but no longer writes it."""
        filt_t, data_t = op.inputs[1], op.inputs[2]
        bias_t = op.inputs[3] if len(op.inputs) > 3 else -1
        out_t = op.outputs[0]
        out_shape = self.graph.tensors[out_t].shape
        in_zp, out_s, out_zp, mult, shift = self._conv_quant(data_t, filt_t, out_t, out_shape[3])
        return self.ck.transpose_conv(
            x, self._const(filt_t), self._const(bias_t), mult, shift, input_zero_point=in_zp,
            output_zero_point=out_zp, out_shape=out_shape,
            strides=op.attrs.get("strides", (1, 1)), padding=op.attrs.get("padding", "valid"),
            act_range=self.ck.activation_range(op.attrs.get("fused_activation", "none"),
                                               out_s, out_zp, self.graph.tensors[out_t].dtype),
            row_acc=row_acc)


def uses_row_transpose_conv(op: Op) -> bool:
    """Whether the plan runs this TRANSPOSE_CONV on the scratch-free kernel
    (TinyPlanTransposeConv): the IR marks it attrs["kernel"] == "tinyplan_rows"
    (attrs["kernel_impl"] is accepted too, since "kernel" also names the kernel size)."""
    return op.op_type == "TRANSPOSE_CONV" and "tinyplan_rows" in (
        op.attrs.get("kernel"), op.attrs.get("kernel_impl"))
