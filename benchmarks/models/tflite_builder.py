"""Build small int8 .tflite graphs without TensorFlow.

The graph is traced eagerly in float64 numpy on a calibration batch while it is
being described: each op method computes its float output at once. `finish()`
then picks activation scales from the observed ranges (post-training
quantization, as the TFLite converter does it), quantizes weights per channel
(int8, symmetric) and biases (int32, scale = input scale x weight scale), and
writes the flatbuffer through the object API that tflite-micro ships.

TFLM-specific constraints are honoured by tying tensors into one quantization
group: int8 CONCATENATION needs all inputs and its output on one scale and zero
point, and MAX_POOL_2D / RESIZE_BILINEAR do not rescale, so their output shares
the input's parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import flatbuffers
import numpy as np

from planner.tflite_schema import schema

fb = schema()

ACT_NONE = fb.ActivationFunctionType.NONE
ACT_RELU = fb.ActivationFunctionType.RELU
ACT_RELU6 = fb.ActivationFunctionType.RELU6

# Versions the TFLite converter would stamp for these int8 signatures; TFLM ignores
# them, the TFLite reference resolver only checks they are in its registered range.
_OP_VERSIONS = {
    fb.BuiltinOperator.ADD: 2,
    fb.BuiltinOperator.CONCATENATION: 2,
    fb.BuiltinOperator.CONV_2D: 3,
    fb.BuiltinOperator.DEPTHWISE_CONV_2D: 3,
    fb.BuiltinOperator.MAX_POOL_2D: 2,
    fb.BuiltinOperator.RESIZE_BILINEAR: 3,
    fb.BuiltinOperator.TRANSPOSE_CONV: 3,
}

# Constant data starts on 16-byte boundaries (as the converter lays it out) so int32
# biases are aligned when a microcontroller reads them in place.
_DATA_ALIGN = 16


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int  # fb.TensorType
    value: np.ndarray | None = None  # float trace over the calibration batch (activations)
    scale: list[float] | None = None
    zero_point: list[int] | None = None
    quantized_dimension: int = 0
    data: bytes | None = None  # constant payload (weights and biases: filled by finish())


@dataclass
class _Op:
    code: int
    inputs: list[int]
    outputs: list[int]
    options_type: int
    options: object
    # For convolutions, what finish() quantizes: (weight tensor, bias tensor, float
    # weights, float bias, output-channel axis of the weights).
    weighted: tuple[int, int, np.ndarray, np.ndarray, int] | None = None


@dataclass
class Builder:
    """An int8 graph under construction; every op returns its output tensor id."""

    name: str
    seed: int
    tensors: list[_Tensor] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._parent: dict[int, int] = {}

    # ---- tensors -------------------------------------------------------------------

    def _add(self, name: str, shape: tuple[int, ...], dtype: int, value=None) -> int:
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), dtype, value))
        return len(self.tensors) - 1

    def _activation(self, name: str, value: np.ndarray) -> int:
        # The declared batch is 1; the trace may carry a larger calibration batch.
        return self._add(name, (1, *value.shape[1:]), fb.TensorType.INT8, value)

    def input(self, name: str, shape: tuple[int, ...], batch: int = 4) -> int:
        """A graph input holding an image in [0, 1], quantized as the converter does (1/255)."""
        value = self.rng.uniform(0.0, 1.0, size=(batch, *shape[1:]))
        t = self._activation(name, value)
        self.tensors[t].scale = [1.0 / 255.0]
        self.tensors[t].zero_point = [-128]
        # The trace must see what the int8 input can represent, or ranges drift.
        self.tensors[t].value = np.round(value * 255.0) / 255.0
        self.inputs.append(t)
        return t

    def output(self, t: int) -> None:
        self.outputs.append(t)

    def shape(self, t: int) -> tuple[int, ...]:
        return self.tensors[t].shape

    def tie(self, a: int, b: int) -> None:
        """Make a and b share scale and zero point."""
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _find(self, t: int) -> int:
        while self._parent.get(t, t) != t:
            t = self._parent[t]
        return t

    def _int32_const(self, name: str, values: list[int]) -> int:
        t = self._add(name, (len(values),), fb.TensorType.INT32)
        self.tensors[t].data = np.asarray(values, dtype="<i4").tobytes()
        return t

    def _weights(self, shape: tuple[int, ...], fan_in: int, gain: float) -> np.ndarray:
        # He-style init keeps activation magnitudes steady through ReLU stacks, so a
        # random network still spreads its outputs over the int8 range.
        return self.rng.normal(0.0, math.sqrt(gain / fan_in), size=shape)

    def _bias(self, n: int) -> np.ndarray:
        return self.rng.normal(0.0, 0.05, size=n)

    # ---- ops -----------------------------------------------------------------------

    def conv2d(
        self,
        x: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        dilation: int = 1,
        act: int = ACT_RELU,
        padding: str = "SAME",
        groups: int = 1,
        name: str = "conv",
    ) -> int:
        """CONV_2D; with groups > 1 the filter holds cin / groups input channels (grouped
        convolution, which both TFLM and the TFLite reference kernels infer from it)."""
        xv = self.tensors[x].value
        cin = xv.shape[3]
        if cin % groups or cout % groups:
            raise ValueError(f"{name}: {cin} -> {cout} channels do not split into {groups} groups")
        gin, gout = cin // groups, cout // groups
        w = self._weights((cout, k, k, gin), k * k * gin, 2.0 if act != ACT_NONE else 1.0)
        b = self._bias(cout)
        patches = _patches(xv, k, stride, dilation, padding)
        y = np.concatenate(
            [
                np.tensordot(patches[..., g * gin : (g + 1) * gin],
                             w[g * gout : (g + 1) * gout], axes=([3, 4, 5], [1, 2, 3]))
                for g in range(groups)
            ],
            axis=3,
        )
        y = _activate(y + b, act)
        opts = fb.Conv2DOptionsT()
        opts.padding = _padding(padding)
        opts.strideW = opts.strideH = stride
        opts.dilationWFactor = opts.dilationHFactor = dilation
        opts.fusedActivationFunction = act
        return self._weighted_op(
            fb.BuiltinOperator.CONV_2D, fb.BuiltinOptions.Conv2DOptions, opts,
            x, w, b, 0, y, name,
        )

    def depthwise_conv2d(
        self,
        x: int,
        k: int = 3,
        stride: int = 1,
        dilation: int = 1,
        act: int = ACT_RELU6,
        padding: str = "SAME",
        name: str = "dwconv",
    ) -> int:
        xv = self.tensors[x].value
        c = xv.shape[3]
        w = self._weights((1, k, k, c), k * k, 2.0 if act != ACT_NONE else 1.0)
        b = self._bias(c)
        patches = _patches(xv, k, stride, dilation, padding)
        y = _activate(np.einsum("nyxhwc,hwc->nyxc", patches, w[0]) + b, act)
        opts = fb.DepthwiseConv2DOptionsT()
        opts.padding = _padding(padding)
        opts.strideW = opts.strideH = stride
        opts.dilationWFactor = opts.dilationHFactor = dilation
        opts.depthMultiplier = 1
        opts.fusedActivationFunction = act
        return self._weighted_op(
            fb.BuiltinOperator.DEPTHWISE_CONV_2D, fb.BuiltinOptions.DepthwiseConv2DOptions,
            opts, x, w, b, 3, y, name,
        )

    def transpose_conv(self, x: int, cout: int, k: int = 2, stride: int = 2,
                       name: str = "upconv") -> int:
        """VALID transposed convolution (Keras Conv2DTranspose, padding='valid')."""
        xv = self.tensors[x].value
        n, h, wd, cin = xv.shape
        w = self._weights((cout, k, k, cin), cin * k * k // (stride * stride), 1.0)
        b = self._bias(cout)
        oh, ow = (h - 1) * stride + k, (wd - 1) * stride + k
        y = np.zeros((n, oh, ow, cout))
        for i in range(k):
            for j in range(k):
                y[:, _grid(i, h, stride), _grid(j, wd, stride)] += np.tensordot(
                    xv, w[:, i, j, :], axes=([3], [1])
                )
        y += b
        out_shape = self._int32_const(f"{name}/output_shape", [1, oh, ow, cout])
        opts = fb.TransposeConvOptionsT()
        opts.padding = fb.Padding.VALID
        opts.strideW = opts.strideH = stride
        # TFLite orders the inputs (output_shape, weights, input, bias).
        out = self._weighted_op(
            fb.BuiltinOperator.TRANSPOSE_CONV, fb.BuiltinOptions.TransposeConvOptions, opts,
            x, w, b, 0, y, name,
        )
        op = self.ops[-1]
        op.inputs = [out_shape, op.inputs[1], x, op.inputs[2]]
        return out

    def _weighted_op(self, code, options_type, opts, x, w, b, axis, y, name) -> int:
        wt = self._add(f"{name}/weights", w.shape, fb.TensorType.INT8)
        bt = self._add(f"{name}/bias", (len(b),), fb.TensorType.INT32)
        out = self._activation(name, y)
        op = _Op(code, [x, wt, bt], [out], options_type, opts, (wt, bt, w, b, axis))
        self.ops.append(op)
        return out

    def max_pool(self, x: int, k: int = 2, stride: int = 2, name: str = "pool") -> int:
        xv = self.tensors[x].value
        n, h, w, c = xv.shape
        oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
        y = np.full((n, oh, ow, c), -np.inf)
        for i in range(k):
            for j in range(k):
                y = np.maximum(y, xv[:, _grid(i, oh, stride), _grid(j, ow, stride)])
        opts = fb.Pool2DOptionsT()
        opts.padding = fb.Padding.VALID
        opts.strideW = opts.strideH = stride
        opts.filterWidth = opts.filterHeight = k
        out = self._simple(fb.BuiltinOperator.MAX_POOL_2D, fb.BuiltinOptions.Pool2DOptions,
                           opts, [x], y, name)
        self.tie(x, out)
        return out

    def concat(self, xs: list[int], name: str = "concat") -> int:
        y = np.concatenate([self.tensors[t].value for t in xs], axis=3)
        opts = fb.ConcatenationOptionsT()
        opts.axis = 3
        out = self._simple(fb.BuiltinOperator.CONCATENATION,
                           fb.BuiltinOptions.ConcatenationOptions, opts, xs, y, name)
        for t in xs:
            self.tie(t, out)
        return out

    def add(self, a: int, b: int, act: int = ACT_NONE, name: str = "add") -> int:
        y = _activate(self.tensors[a].value + self.tensors[b].value, act)
        opts = fb.AddOptionsT()
        opts.fusedActivationFunction = act
        return self._simple(fb.BuiltinOperator.ADD, fb.BuiltinOptions.AddOptions, opts,
                            [a, b], y, name)

    def resize_bilinear(self, x: int, factor: int = 2, name: str = "resize") -> int:
        xv = self.tensors[x].value
        oh, ow = xv.shape[1] * factor, xv.shape[2] * factor
        y = _resize_bilinear(xv, oh, ow)
        size = self._int32_const(f"{name}/size", [oh, ow])
        opts = fb.ResizeBilinearOptionsT()
        opts.halfPixelCenters = True  # what tf.image.resize (TF2) and Keras UpSampling2D do
        out = self._simple(fb.BuiltinOperator.RESIZE_BILINEAR,
                           fb.BuiltinOptions.ResizeBilinearOptions, opts, [x, size], y, name)
        self.tie(x, out)
        return out

    def _simple(self, code, options_type, opts, inputs, y, name) -> int:
        out = self._activation(name, y)
        self.ops.append(_Op(code, list(inputs), [out], options_type, opts))
        return out

    # ---- quantize and serialize ----------------------------------------------------

    def finish(self) -> bytes:
        self._quantize_activations()
        for op in self.ops:
            if op.weighted is not None:
                self._quantize_weights(op)
        return self._serialize()

    def _quantize_activations(self) -> None:
        groups: dict[int, list[int]] = {}
        for t, tensor in enumerate(self.tensors):
            if tensor.value is not None:
                groups.setdefault(self._find(t), []).append(t)
        for members in groups.values():
            fixed = [t for t in members if self.tensors[t].scale is not None]
            if fixed:  # a graph input's parameters are given, the group follows them
                scale, zp = self.tensors[fixed[0]].scale, self.tensors[fixed[0]].zero_point
            else:
                lo = min(0.0, min(float(self.tensors[t].value.min()) for t in members))
                hi = max(0.0, max(float(self.tensors[t].value.max()) for t in members))
                s, z = _activation_params(lo, hi)
                scale, zp = [s], [z]
            for t in members:
                self.tensors[t].scale, self.tensors[t].zero_point = list(scale), list(zp)

    def _quantize_weights(self, op: _Op) -> None:
        wt, bt, w, b, axis = op.weighted
        reduce = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.abs(w).max(axis=reduce)
        w_scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / w_scale.astype(np.float64).reshape(shape)), -127, 127)
        wten = self.tensors[wt]
        wten.data = q.astype(np.int8).tobytes()
        wten.scale = [float(s) for s in w_scale]
        wten.zero_point = [0] * len(w_scale)
        wten.quantized_dimension = axis
        # The kernels compute bias scale as float(input) * float(weight); match them.
        data_in = op.inputs[2] if op.code == fb.BuiltinOperator.TRANSPOSE_CONV else op.inputs[0]
        in_scale = np.float32(self.tensors[data_in].scale[0])
        b_scale = (in_scale * w_scale).astype(np.float32)
        bq = np.clip(np.round(b / b_scale.astype(np.float64)), -(2**31), 2**31 - 1)
        bten = self.tensors[bt]
        bten.data = bq.astype("<i4").tobytes()
        bten.scale = [float(s) for s in b_scale]
        bten.zero_point = [0] * len(b_scale)
        bten.quantized_dimension = 0

    def _serialize(self) -> bytes:
        model = fb.ModelT()
        model.version = 3
        model.description = f"tinyplan zoo: {self.name} (int8, synthetic weights, seed {self.seed})"
        codes: list[int] = []
        buffers: list[fb.BufferT] = [fb.BufferT()]  # buffer 0: the empty sentinel
        sub = fb.SubGraphT()
        sub.name = self.name
        sub.tensors = []
        for tensor in self.tensors:
            tt = fb.TensorT()
            tt.name = tensor.name
            tt.shape = list(tensor.shape)
            tt.type = tensor.dtype
            tt.buffer = 0
            if tensor.data is not None:
                tt.buffer = len(buffers)
                buffers.append(_AlignedBuffer(tensor.data))
            if tensor.scale is not None:
                qp = fb.QuantizationParametersT()
                qp.scale = list(tensor.scale)
                qp.zeroPoint = list(tensor.zero_point)
                qp.quantizedDimension = tensor.quantized_dimension
                tt.quantization = qp
            sub.tensors.append(tt)
        sub.operators = []
        for op in self.ops:
            if op.code not in codes:
                codes.append(op.code)
            ot = fb.OperatorT()
            ot.opcodeIndex = codes.index(op.code)
            ot.inputs = list(op.inputs)
            ot.outputs = list(op.outputs)
            ot.builtinOptionsType = op.options_type
            ot.builtinOptions = op.options
            sub.operators.append(ot)
        sub.inputs = list(self.inputs)
        sub.outputs = list(self.outputs)
        model.subgraphs = [sub]
        model.buffers = buffers
        model.operatorCodes = []
        for code in codes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = _OP_VERSIONS[code]
            model.operatorCodes.append(oc)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


class _AlignedBuffer(fb.BufferT):
    """A constant buffer whose payload the object API would only byte-align."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    def Pack(self, builder):  # noqa: N802 (flatbuffers naming)
        n = len(self.payload)
        builder.StartVector(1, n, _DATA_ALIGN)
        builder.head = builder.head - n
        builder.Bytes[builder.head : builder.head + n] = self.payload
        data = builder.EndVector()
        fb.BufferStart(builder)
        fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


# ---- float reference helpers ---------------------------------------------------------


def _grid(start: int, count: int, stride: int) -> slice:
    """`count` positions from `start`, `stride` apart."""
    return slice(start, start + (count - 1) * stride + 1, stride)


def _padding(padding: str) -> int:
    return {"SAME": fb.Padding.SAME, "VALID": fb.Padding.VALID}[padding]


def _activate(y: np.ndarray, act: int) -> np.ndarray:
    if act == ACT_RELU:
        return np.maximum(y, 0.0)
    if act == ACT_RELU6:
        return np.clip(y, 0.0, 6.0)
    return y


def _patches(x: np.ndarray, k: int, stride: int, dilation: int, padding: str) -> np.ndarray:
    """[N, OH, OW, k, k, C] windows with TensorFlow's SAME/VALID padding."""
    n, h, w, c = x.shape
    span = (k - 1) * dilation + 1
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-w // stride)
        ph = max((oh - 1) * stride + span - h, 0)
        pw = max((ow - 1) * stride + span - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - span) // stride + 1, (w - span) // stride + 1
    out = np.empty((n, oh, ow, k, k, c))
    for i in range(k):
        for j in range(k):
            r, s = i * dilation, j * dilation
            out[:, :, :, i, j, :] = x[:, _grid(r, oh, stride), _grid(s, ow, stride), :]
    return out


def _resize_bilinear(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """TFLite's RESIZE_BILINEAR with half_pixel_centers=True, align_corners=False."""

    def axis(out_size: int, in_size: int):
        pos = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        lo = np.floor(pos)
        frac = pos - lo
        i0 = np.clip(lo, 0, in_size - 1).astype(int)
        i1 = np.clip(np.ceil(pos), 0, in_size - 1).astype(int)
        return i0, i1, frac

    y0, y1, fy = axis(oh, x.shape[1])
    x0, x1, fx = axis(ow, x.shape[2])
    fy = fy[None, :, None, None]
    fx = fx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


def _round_out(v: float) -> float:
    """Round a range bound away from zero onto a coarse grid (1/16 of its power of two).

    Calibration runs in float64 numpy whose last bits may differ between BLAS builds;
    the grid makes the chosen scales, and so the file bytes, stable across machines.
    """
    if v == 0.0:
        return 0.0
    step = 2.0 ** math.floor(math.log2(abs(v))) / 16.0
    return math.copysign(math.ceil(abs(v) / step) * step, v)


def _activation_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = _round_out(lo), _round_out(hi)
    if hi - lo <= 0.0:
        hi = lo + 1.0
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zp
