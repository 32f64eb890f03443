"""tflm-greedy equals real TFLM to the byte: its peak is the arena head tflite-micro reports.

Every arena head here is measured live with the tflite-micro interpreter. Besides
the shared models TFLM runs as they are, the segmentation models are made
runnable (the custom transposed conv becomes TRANSPOSE_CONV, float16 weights are
folded, uint8 becomes int8), and small synthetic models pin down each kernel's
scratch requests and TFLM's lifetime corner cases.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from backends.tflm.interpreter import arena_head_bytes, invoke, random_inputs
from frontends.tflite_frontend import load_tflite, parse_tflite
from planner.analysis import buffers
from planner.checker import assert_valid
from planner.device import load_profile
from planner.errors import PlannerError
from planner.ir import Graph
from planner.planners.base import Request, registry
from planner.planners.tflm_greedy import greedy_offsets
from tests.conftest import MODELS, needs_shared, shared_models

TT = fb.TensorType
BO = fb.BuiltinOperator
OPTS = fb.BuiltinOptions

# Shared models that real TFLM runs unchanged (BRIEF); the others it refuses.
RUNNABLE = {
    "ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "pretrainedResnet_large_int8",
    "str_ww_ref_model", "vww_96_int8", "hello_world_int8", "keyword_scrambled_8bit",
    "micro_speech_quantized", "person_detect",
}


def greedy_peak(graph: Graph) -> int:
    profile = load_profile("none")
    plan = registry()["tflm-greedy"](Request(graph, profile))
    assert_valid(graph, plan, profile.capacities)
    return plan.peak_bytes


def assert_matches_tflm(model: bytes) -> int:
    head = arena_head_bytes(model)
    assert greedy_peak(parse_tflite(model)) == head
    return head


@needs_shared
@pytest.mark.parametrize("path", shared_models(), ids=lambda p: p.stem)
def test_shared_model_peak_is_tflm_head(path: Path) -> None:
    model = path.read_bytes()
    if path.stem not in RUNNABLE:
        with pytest.raises(PlannerError):
            arena_head_bytes(model)
        greedy_peak(load_tflite(path))  # still plans, and the plan is valid
        return
    assert greedy_peak(load_tflite(path)) == arena_head_bytes(model)


@needs_shared
def test_all_runnable_models_are_present() -> None:
    assert RUNNABLE <= {p.stem for p in shared_models()}


@needs_shared
def test_interpreter_runs_and_is_deterministic() -> None:
    path = MODELS / "tflm" / "keyword_scrambled_8bit.tflite"
    model, graph = path.read_bytes(), load_tflite(path)
    inputs = random_inputs(model, seed=3)
    x = graph.tensors[graph.inputs[0]]
    assert (inputs[0].dtype.name, inputs[0].shape) == (x.dtype, x.shape)
    assert np.array_equal(inputs[0], random_inputs(model, seed=3)[0])
    first, second = invoke(model, inputs), invoke(model, inputs)
    assert len(first) == 1 and np.array_equal(first[0], second[0])
    with pytest.raises(PlannerError):
        invoke(model, [])


# ------------------------------------------------- segmentation models made runnable


def _load(data: bytes) -> fb.ModelT:
    return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))


def _pack(model: fb.ModelT) -> bytes:
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _const_buffer(model: fb.ModelT, array: np.ndarray) -> int:
    buf = fb.BufferT()
    buf.data = list(np.ascontiguousarray(array).tobytes())
    model.buffers.append(buf)
    return len(model.buffers) - 1


def _tflm_runnable_selfie(data: bytes) -> bytes:
    """Fold float16 DEQUANTIZE into float32 constants; custom transposed conv -> TRANSPOSE_CONV."""
    model = _load(data)
    sub = model.subgraphs[0]
    kept = []
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == BO.DEQUANTIZE and sub.tensors[op.inputs[0]].type == TT.FLOAT16:
            src, dst = sub.tensors[op.inputs[0]], sub.tensors[op.outputs[0]]
            half = bytes(bytearray(model.buffers[src.buffer].data))
            dst.buffer = _const_buffer(model, np.frombuffer(half, np.float16).astype(np.float32))
            continue
        if code.customCode == b"Convolution2DTransposeBias":
            shape = fb.TensorT()
            shape.shape, shape.type, shape.name = [4], TT.INT32, b"output_shape"
            out_shape = np.array(sub.tensors[op.outputs[0]].shape, np.int32)
            shape.buffer = _const_buffer(model, out_shape)
            sub.tensors.append(shape)
            new_code = fb.OperatorCodeT()
            new_code.builtinCode = new_code.deprecatedBuiltinCode = BO.TRANSPOSE_CONV
            new_code.version = 1
            model.operatorCodes.append(new_code)
            op.opcodeIndex = len(model.operatorCodes) - 1
            x, w, b = op.inputs
            op.inputs = [len(sub.tensors) - 1, w, x, b]
            options = fb.TransposeConvOptionsT()
            options.padding, options.strideH, options.strideW = fb.Padding.SAME, 2, 2
            op.builtinOptionsType, op.builtinOptions = OPTS.TransposeConvOptions, options
            op.customOptions = None
        kept.append(op)
    sub.operators = kept
    return _pack(model)


def _uint8_to_int8(data: bytes) -> bytes:
    """Shift every uint8 tensor (data and zero points) by -128: same sizes, TFLM-supported."""
    model = _load(data)
    for t in model.subgraphs[0].tensors:
        if t.type != TT.UINT8:
            continue
        t.type = TT.INT8
        if t.quantization is not None and t.quantization.zeroPoint is not None:
            t.quantization.zeroPoint = [int(z) - 128 for z in t.quantization.zeroPoint]
        buf = model.buffers[t.buffer]
        if buf.data is not None and len(buf.data):
            buf.data = list((np.asarray(buf.data, np.uint8) ^ 0x80).tobytes())
    return _pack(model)


@needs_shared
@pytest.mark.parametrize("name", ["selfie_segmentation", "selfie_segmentation_landscape"])
def test_selfie_segmentation_made_runnable(name: str) -> None:
    original = load_tflite(MODELS / "segmentation" / f"{name}.tflite")
    model = _tflm_runnable_selfie((MODELS / "segmentation" / f"{name}.tflite").read_bytes())
    graph = parse_tflite(model)
    assert len(graph.ops) == 136 and any(op.op_type == "TRANSPOSE_CONV" for op in graph.ops)
    head = assert_matches_tflm(model)
    # Folding the float16 weights frees nothing at the peak: same head as the original plan.
    assert head == greedy_peak(original)


@needs_shared
def test_deeplab_as_int8() -> None:
    path = MODELS / "segmentation" / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
    model = _uint8_to_int8(path.read_bytes())
    assert assert_matches_tflm(model) == greedy_peak(load_tflite(path)) > 7_000_000


# ------------------------------------------------- synthetic models, one question each


class Net:
    """A tiny .tflite writer: tensors, ops, and the quantization TFLM's int kernels need."""

    def __init__(self) -> None:
        self.model = fb.ModelT()
        self.model.version = 3
        self.model.buffers = [fb.BufferT()]
        self.model.operatorCodes = []
        self.sub = fb.SubGraphT()
        self.sub.tensors, self.sub.operators = [], []

    def tensor(self, shape, ttype, data=None, scale=None, zero=None, axis=0, variable=False):
        t = fb.TensorT()
        t.shape, t.type, t.isVariable = list(shape), ttype, variable
        t.name = f"t{len(self.sub.tensors)}".encode()
        t.buffer = 0 if data is None else _const_buffer(self.model, data)
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(0 if zero is None else zero)]
            q.quantizedDimension = axis
            t.quantization = q
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def act(self, shape, ttype=TT.INT8, scale=0.05, zero=None):
        if ttype == TT.FLOAT32:
            return self.tensor(shape, ttype)
        return self.tensor(shape, ttype, scale=scale,
                           zero=(0 if ttype == TT.INT16 else -3) if zero is None else zero)

    def op(self, builtin, ins, outs, options_type=0, options=None):
        codes = [c.builtinCode for c in self.model.operatorCodes]
        if builtin not in codes:
            code = fb.OperatorCodeT()
            code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
            code.version = 1
            self.model.operatorCodes.append(code)
            codes.append(builtin)
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(builtin), list(ins), list(outs)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.sub.operators.append(op)
        return outs[0]

    def conv(self, x, out_ch, k=3, stride=1, filt=TT.INT8, depthwise=False):
        n, h, w, c = self.sub.tensors[x].shape
        o = c if depthwise else out_ch
        wshape = [1, k, k, o] if depthwise else [o, k, k, c]
        count = int(np.prod(wshape))
        weights = np.ones((count + 1) // 2 if filt == TT.INT4 else count, np.int8)
        wt = self.tensor(wshape, filt, weights, [0.01] * o, [0] * o, 3 if depthwise else 0)
        bias = self.tensor([o], TT.INT32, np.zeros(o, np.int32), [0.0005] * o, [0] * o)
        y = self.act([n, -(-h // stride), -(-w // stride), o])
        if depthwise:
            opt = fb.DepthwiseConv2DOptionsT()
            opt.depthMultiplier = 1
            kind, opt_type = BO.DEPTHWISE_CONV_2D, OPTS.DepthwiseConv2DOptions
        else:
            opt = fb.Conv2DOptionsT()
            kind, opt_type = BO.CONV_2D, OPTS.Conv2DOptions
        opt.padding, opt.strideH, opt.strideW = fb.Padding.SAME, stride, stride
        opt.dilationHFactor = opt.dilationWFactor = 1
        return self.op(kind, [x, wt, bias], [y], opt_type, opt)

    def transpose_conv(self, x, out_ch, ttype=TT.INT8, bias=TT.INT32):
        n, h, w, c = self.sub.tensors[x].shape
        out = [n, 2 * h, 2 * w, out_ch]
        shape = self.tensor([4], TT.INT32, np.array(out, np.int32))
        if ttype == TT.FLOAT32:
            wt = self.tensor([out_ch, 3, 3, c], TT.FLOAT32, np.ones((out_ch, 3, 3, c), np.float32))
        else:
            wt = self.tensor([out_ch, 3, 3, c], TT.INT8, np.ones(out_ch * 9 * c, np.int8),
                             [0.01] * out_ch, [0] * out_ch)
        ins = [shape, wt, x]
        if bias is not None:
            dtype = {TT.INT32: np.int32, TT.INT64: np.int64, TT.INT16: np.int16,
                     TT.FLOAT32: np.float32}[bias]
            quant = ([0.0005] * out_ch, [0] * out_ch) if ttype != TT.FLOAT32 else (None, None)
            ins.append(self.tensor([out_ch], bias, np.zeros(out_ch, dtype), *quant))
        opt = fb.TransposeConvOptionsT()
        opt.padding, opt.strideH, opt.strideW = fb.Padding.SAME, 2, 2
        return self.op(BO.TRANSPOSE_CONV, ins, [self.act(out, ttype)],
                       OPTS.TransposeConvOptions, opt)

    def concat(self, xs):
        shapes = [self.sub.tensors[x].shape for x in xs]
        out = list(shapes[0][:-1]) + [sum(s[-1] for s in shapes)]
        opt = fb.ConcatenationOptionsT()
        opt.axis = -1
        return self.op(BO.CONCATENATION, xs, [self.act(out)], OPTS.ConcatenationOptions, opt)

    def reduce(self, builtin, x, axes, ttype=TT.INT8):
        shape = self.sub.tensors[x].shape
        axis = self.tensor([len(axes)], TT.INT32, np.array(axes, np.int32))
        opt = fb.ReducerOptionsT()
        opt.keepDims = False
        out = [d for i, d in enumerate(shape) if i not in axes]
        return self.op(builtin, [x, axis], [self.act(out, ttype, scale=0.07)],
                       OPTS.ReducerOptions, opt)

    def bytes(self, inputs, outputs) -> bytes:
        self.sub.inputs, self.sub.outputs = list(inputs), list(outputs)
        self.model.subgraphs = [self.sub]
        return _pack(self.model)


def tiny_unet() -> bytes:
    """Encoder-decoder with a long skip, a TRANSPOSE_CONV (int32 scratch) and a concat."""
    net = Net()
    x = net.act([1, 16, 24, 3])
    e1 = net.conv(x, 8)
    e2 = net.conv(net.conv(e1, 16, stride=2), 16)
    b = net.conv(net.conv(e2, 32, stride=2), 32)
    u2 = net.transpose_conv(b, 16)
    d2 = net.conv(net.concat([u2, e2]), 16)
    u1 = net.transpose_conv(d2, 8)
    y = net.conv(net.concat([u1, e1]), 2, k=1)
    return net.bytes([x], [y])


def test_tiny_unet_with_transpose_conv_scratch() -> None:
    model = tiny_unet()
    graph = parse_tflite(model)
    scratch = [graph.tensors[s].nbytes for op in graph.ops for s in op.scratch]
    assert scratch == [8 * 12 * 16 * 4, 16 * 24 * 8 * 4]
    assert_matches_tflm(model)
    outputs = invoke(model, random_inputs(model, seed=0))
    assert outputs[0].shape == (1, 16, 24, 2)


@pytest.mark.parametrize(
    ("ttype", "bias", "scratch"),
    [(TT.INT8, TT.INT32, [4]), (TT.INT8, None, [4]), (TT.INT16, TT.INT64, [8]),
     (TT.INT16, TT.INT16, [8, 8]), (TT.FLOAT32, TT.FLOAT32, [])],
    ids=["int8", "int8-nobias", "int16", "int16-bias16", "float"],
)
def test_transpose_conv_kinds(ttype: int, bias: int | None, scratch: list[int]) -> None:
    net = Net()
    x = net.act([1, 6, 5, 4], ttype)
    y = net.transpose_conv(x, 3, ttype, bias)
    model = net.bytes([x], [y])
    graph = parse_tflite(model)
    elems = [12 * 10 * 3, 3]  # output elements, then bias elements
    want = [n * w for n, w in zip(elems, scratch, strict=False)]
    assert [graph.tensors[s].nbytes for s in graph.ops[0].scratch] == want
    assert_matches_tflm(model)


@pytest.mark.parametrize("builtin", [BO.MEAN, BO.SUM, BO.REDUCE_MAX, BO.REDUCE_MIN],
                         ids=["mean", "sum", "max", "min"])
@pytest.mark.parametrize("ttype", [TT.INT8, TT.FLOAT32], ids=["int8", "float"])
def test_reduce_scratch(builtin: int, ttype: int) -> None:
    net = Net()
    x = net.act([3, 5, 7, 9, 2], ttype)
    y = net.reduce(builtin, x, [0, 1, 3], ttype)
    assert_matches_tflm(net.bytes([x], [y]))


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv", "depthwise"])
def test_int4_weights_are_unpacked_in_scratch(depthwise: bool) -> None:
    net = Net()
    x = net.act([1, 6, 6, 5])
    y = net.conv(x, 7, k=3, filt=TT.INT4, depthwise=depthwise)
    model = net.bytes([x], [y])
    graph = parse_tflite(model)
    assert [graph.tensors[s].nbytes for s in graph.ops[0].scratch] == [45 if depthwise else 315]
    assert_matches_tflm(model)


def test_int4_fully_connected() -> None:
    net = Net()
    x = net.act([2, 33])
    w = net.tensor([5, 33], TT.INT4, np.ones(83, np.int8), 0.01, 0)
    b = net.tensor([5], TT.INT32, np.zeros(5, np.int32), 0.0005, 0)
    y = net.op(BO.FULLY_CONNECTED, [x, w, b], [net.act([2, 5])], OPTS.FullyConnectedOptions,
               fb.FullyConnectedOptionsT())
    assert_matches_tflm(net.bytes([x], [y]))


def test_float_svdf_scratch() -> None:
    net = Net()
    batch, size, filters, memory, rank = 2, 16, 8, 4, 2
    x = net.act([batch, size], TT.FLOAT32)
    feature = net.tensor([filters, size], TT.FLOAT32, np.ones((filters, size), np.float32))
    time = net.tensor([filters, memory], TT.FLOAT32, np.ones((filters, memory), np.float32))
    bias = net.tensor([filters // rank], TT.FLOAT32, np.zeros(filters // rank, np.float32))
    state = net.tensor([batch, memory * filters], TT.FLOAT32, variable=True)
    opt = fb.SVDFOptionsT()
    opt.rank = rank
    y = net.op(BO.SVDF, [x, feature, time, bias, state], [net.act([batch, 4], TT.FLOAT32)],
               OPTS.SVDFOptions, opt)
    assert_matches_tflm(net.bytes([x], [y]))


def test_tensor_read_but_never_written_is_planned() -> None:
    # TFLM allocates it from its uninitialised creation time on: it overlaps everything.
    net = Net()
    x = net.act([1, 64], TT.FLOAT32)
    y = net.op(BO.RELU, [x], [net.act([1, 64], TT.FLOAT32)])
    ghost = net.act([1, 64], TT.FLOAT32)
    z = net.op(BO.ADD, [y, ghost], [net.act([1, 64], TT.FLOAT32)], OPTS.AddOptions,
               fb.AddOptionsT())
    assert assert_matches_tflm(net.bytes([x], [z])) == 3 * 256


def test_equal_sizes_tie_in_reverse_insertion_order() -> None:
    # vww_96's opening in miniature: insertion-order ties would give 448 B, TFLM 512 B.
    net = Net()
    x = net.act([1, 48], TT.FLOAT32)
    chain = [x]
    for width in (32, 32, 64):
        w = net.tensor([width, net.sub.tensors[chain[-1]].shape[1]], TT.FLOAT32,
                       np.ones((width, net.sub.tensors[chain[-1]].shape[1]), np.float32))
        chain.append(net.op(BO.FULLY_CONNECTED, [chain[-1], w, -1],
                            [net.act([1, width], TT.FLOAT32)], OPTS.FullyConnectedOptions,
                            fb.FullyConnectedOptionsT()))
    model = net.bytes([x], [chain[-1]])
    graph = parse_tflite(model)
    bufs = buffers(graph)
    in_order = greedy_offsets(bufs, sorted(range(len(bufs)), key=lambda i: -bufs[i].size))
    assert max(o + b.size for o, b in zip(in_order, bufs, strict=True)) == 448
    assert assert_matches_tflm(model) == 512
