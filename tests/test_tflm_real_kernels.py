"""TinyPlanTransposeConv inside the real TFLM interpreter.

Each case is a one-op TRANSPOSE_CONV model and its twin whose operator is the custom
`TinyPlanTransposeConv` (same tensors, options [1, padding, stride_h, stride_w,
activation]). Both run three inferences on one real TFLM interpreter; the outputs must be
bit-identical to each other and to ai-edge-litert's BUILTIN_REF, and TFLM's arena head
must shrink by exactly the scratch difference: the whole output's accumulators
(out elements x 4, x 8 for 16x8) against one output row's (out_w x out_c x 4, x 8).

Runs only where the custom ops can be built against a TFLM tree the user names
(backends/tflm/custom.py, TINYPLAN_TFLM_ROOT; see docs/tflm_backend.md) and the
registerer adds TinyPlanTransposeConv; skips otherwise.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from one_op_models import one_op_model, reference, schema

from planner.errors import PlannerError
from planner.ir import align

tc = pytest.importorskip("backends.tflm.custom")
pytest.importorskip("ai_edge_litert")
ACTS = {"none": 0, "relu": 1, "relu6": 3}


@pytest.fixture(scope="module")
def registerer(tmp_path_factory) -> str:
    try:
        if tc.tflm_root() is None:
            pytest.skip(f"{tc.ENV_ROOT} is not set: no TFLM tree to build the custom ops against")
        handle = tc.load(cache=tmp_path_factory.mktemp("tflm-cache"))
    except (PlannerError, ImportError, OSError) as exc:
        pytest.skip(f"the custom ops cannot be built against real TFLM here: {exc}")
    if "TinyPlanTransposeConv" not in tc.registered_ops(handle):
        pytest.skip("the registerer does not add TinyPlanTransposeConv")
    return tc.REGISTERER


def custom_twin(model: bytes, padding: str, strides: tuple[int, int], act: str) -> bytes:
    """The same model with TRANSPOSE_CONV replaced by the custom TinyPlanTransposeConv."""
    import flatbuffers

    fb = schema()
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(model, 0))
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode = b"TinyPlanTransposeConv"
    code.version = 1
    m.operatorCodes = [code]
    op = m.subgraphs[0].operators[0]
    op.builtinOptionsType, op.builtinOptions = 0, None
    op.customOptions = list(struct.pack("<5i", 1, 0 if padding == "same" else 1, *strides,
                                        ACTS[act]))
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


CASES = [  # input shape, out channels, kernel, stride, padding, activation, bias, dtype
    ((1, 40, 60, 16), 8, 2, 2, "valid", "none", True, "int8"),  # the Tiny U-Net's last one
    ((1, 7, 5, 3), 4, 3, 2, "same", "relu", True, "int8"),
    ((1, 6, 9, 5), 3, 4, 3, "same", "relu6", False, "int8"),
    ((1, 10, 12, 6), 5, 3, 2, "same", "none", True, "int16"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[4]}-s{c[3]}-k{c[2]}-{c[7]}")
def test_tinyplan_transpose_conv_on_real_tflm(registerer: str, case):
    from backends.tflm import interpreter as ti

    shape, cout, k, s, padding, act, has_bias, dtype = case
    rng = np.random.default_rng(sum(shape) + cout)
    _, h, w, cin = shape
    oh, ow = (h * s, w * s) if padding == "same" else ((h - 1) * s + k, (w - 1) * s + k)
    filt = rng.integers(-127, 128, (cout, k, k, cin)).astype(np.int8)
    fs = [float(np.float32(v)) for v in rng.uniform(0.002, 0.02, cout)]
    if dtype == "int16":
        bias = rng.integers(-100000, 100000, cout).astype(np.int64)
        in_q, out_q, width = (4e-4, 0), (4e-3, 0), 8
        xs = [[rng.integers(-32768, 32768, shape).astype(np.int16)] for _ in range(3)]
    else:
        bias = rng.integers(-3000, 3000, cout).astype(np.int32) if has_bias else None
        in_q, out_q, width = (0.05, -3), (0.2, 5), 4
        xs = [[rng.integers(-128, 128, shape).astype(np.int8)] for _ in range(3)]
    model = one_op_model("TRANSPOSE_CONV", shape, filt, bias, in_q, fs, out_q, (1, oh, ow, cout),
                         (s, s), padding, act, activations=dtype)
    stock, stock_arena = ti.invoke_runs(model, xs)
    mine, my_arena = ti.invoke_runs(custom_twin(model, padding, (s, s), act), xs,
                                    registerers=[registerer])
    for x, a, b in zip(xs, stock, mine, strict=True):
        assert not isinstance(b, str), b  # TFLM's error line
        want = reference(model, x[0])
        np.testing.assert_array_equal(a[0], want)
        np.testing.assert_array_equal(b[0], want)
    assert len(np.unique(mine[0][0])) > 20
    full, row = align(oh * ow * cout * width), align(ow * cout * width)
    assert stock_arena["head"] - my_arena["head"] == full - row


def concat_conv_models(kind: str, a_c: int, b_c: int, filt: np.ndarray, bias: np.ndarray,
                       hw: tuple[int, int], q: tuple, f_scales, out_q: tuple, act: str):
    """Two int8 inputs a, b (one scale): stock CONCATENATION + CONV_2D / DEPTHWISE_CONV_2D,
    and the same computation as one FusedConcatConv2D over both resident inputs."""
    import flatbuffers

    fb = schema()
    h, w = hw
    cout = bias.shape[0]
    depthwise = kind == "DEPTHWISE_CONV_2D"

    def quant(scales, zps, dim=0):
        qp = fb.QuantizationParametersT()
        qp.scale, qp.zeroPoint, qp.quantizedDimension = list(scales), list(zps), dim
        return qp

    def tensor(name, shape, ttype, buffer, qp):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer, t.quantization = name, list(shape), ttype, buffer, qp
        return t

    def buf(data=None):
        b = fb.BufferT()
        b.data = list(data) if data else None
        return b

    def pack(m) -> bytes:
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    i8, i32 = fb.TensorType.INT8, fb.TensorType.INT32
    base = [tensor("a", (1, h, w, a_c), i8, 0, quant([q[0]], [q[1]])),
            tensor("b", (1, h, w, b_c), i8, 0, quant([q[0]], [q[1]])),
            tensor("w", filt.shape, i8, 1, quant(f_scales, [0] * len(f_scales),
                                                 3 if depthwise else 0)),
            tensor("bias", (cout,), i32, 2, quant([q[0] * s for s in f_scales], [0] * cout)),
            tensor("y", (1, h, w, cout), i8, 0, quant([out_q[0]], [out_q[1]]))]
    buffers = [buf(), buf(filt.tobytes()), buf(bias.astype("<i4").tobytes())]

    def code(builtin, custom=None):
        c = fb.OperatorCodeT()
        c.builtinCode = c.deprecatedBuiltinCode = builtin
        c.customCode, c.version = custom, 1 if custom else 3
        return c

    def model(ops, codes, tensors):
        sub = fb.SubGraphT()
        sub.tensors, sub.operators, sub.inputs, sub.outputs = tensors, ops, [0, 1], [4]
        m = fb.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, [sub], buffers
        return pack(m)

    cat = fb.OperatorT()
    cat.opcodeIndex, cat.inputs, cat.outputs = 0, [0, 1], [5]
    cat.builtinOptionsType = fb.BuiltinOptions.ConcatenationOptions
    cat.builtinOptions = fb.ConcatenationOptionsT()
    cat.builtinOptions.axis = 3
    conv = fb.OperatorT()
    conv.opcodeIndex, conv.inputs, conv.outputs = 1, [5, 2, 3], [4]
    if depthwise:
        conv.builtinOptionsType = fb.BuiltinOptions.DepthwiseConv2DOptions
        opts = fb.DepthwiseConv2DOptionsT()
        opts.depthMultiplier = cout // (a_c + b_c)
    else:
        conv.builtinOptionsType = fb.BuiltinOptions.Conv2DOptions
        opts = fb.Conv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = fb.Padding.SAME, 1, 1
    opts.dilationHFactor = opts.dilationWFactor = 1
    opts.fusedActivationFunction = ACTS[act]
    conv.builtinOptions = opts
    cat_t = tensor("cat", (1, h, w, a_c + b_c), i8, 0, quant([q[0]], [q[1]]))
    stock = model([cat, conv], [code(fb.BuiltinOperator.CONCATENATION),
                                code(getattr(fb.BuiltinOperator, kind))], [*base, cat_t])
    fused = fb.OperatorT()
    fused.opcodeIndex, fused.inputs, fused.outputs = 0, [0, 1, 2, 3], [4]
    words = [1, 3, 2, ACTS[act], 0, 1, 1, 1, 1,
             0, -1, -1, h * w * a_c, 0, a_c, -1, 0,
             0, -1, -1, h * w * b_c, a_c, a_c + b_c, -1, 0]
    fused.customOptions = list(struct.pack(f"<{len(words)}i", *words))
    custom = model([fused], [code(fb.BuiltinOperator.CUSTOM, b"FusedConcatConv2D")], base)
    return stock, custom


@pytest.mark.parametrize("kind", ["grouped", "depthwise"])
def test_fused_concat_conv_grouped_and_depthwise_on_real_tflm(registerer: str, kind: str):
    """unet_wide96's case (filter [16,3,3,3] on 16 + 8 channels: 8 groups, a group
    boundary at the inputs' seam) and a depthwise conv (multiplier 2) as FusedConcatConv2D,
    against stock CONCATENATION + CONV_2D / DEPTHWISE_CONV_2D, three inferences each."""
    from backends.tflm import interpreter as ti

    rng = np.random.default_rng(96)
    h, w, a_c, b_c = 12, 10, 16, 8
    if kind == "grouped":
        filt, op = rng.integers(-127, 128, (16, 3, 3, 3)).astype(np.int8), "CONV_2D"
    else:
        filt, op = rng.integers(-127, 128, (1, 3, 3, 48)).astype(np.int8), "DEPTHWISE_CONV_2D"
    cout = filt.shape[0] if kind == "grouped" else filt.shape[3]
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    f_scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.02, cout)]
    stock, fused = concat_conv_models(op, a_c, b_c, filt, bias, (h, w), (0.05, -3), f_scales,
                                      (0.2, 5), "relu")
    xs = [[rng.integers(-128, 128, (1, h, w, c)).astype(np.int8) for c in (a_c, b_c)]
          for _ in range(3)]
    want, _ = ti.invoke_runs(stock, xs)
    got, _ = ti.invoke_runs(fused, xs, registerers=[registerer])
    for a, b in zip(want, got, strict=True):
        assert not isinstance(a, str) and not isinstance(b, str), (a, b)
        np.testing.assert_array_equal(b[0], a[0])
    assert len(np.unique(got[0][0])) > 20


def split_model(h: int, w: int, c: int, keep: int) -> bytes:
    """x -> TinyPlanSplit (part 0 aliases x: OfflineMemoryAllocation puts both at 0) ->
    MAX_POOL_2D 1x1 (a plain copy into y): y must be x's first `keep` channels."""
    import flatbuffers

    fb = schema()

    def tensor(name, shape, buffer=0):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), fb.TensorType.INT8, buffer
        qp = fb.QuantizationParametersT()
        qp.scale, qp.zeroPoint = [0.1], [0]
        t.quantization = qp
        return t

    def code(builtin, custom=None):
        oc = fb.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = builtin
        oc.customCode, oc.version = custom, 1
        return oc

    split = fb.OperatorT()
    split.opcodeIndex, split.inputs, split.outputs = 0, [0], [1]
    split.customOptions = list(struct.pack("<3i", 1, 3, keep))
    pool = fb.OperatorT()
    pool.opcodeIndex, pool.inputs, pool.outputs = 1, [1], [2]
    pool.builtinOptionsType = fb.BuiltinOptions.Pool2DOptions
    opts = fb.Pool2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = fb.Padding.VALID, 1, 1
    opts.filterHeight = opts.filterWidth = 1
    pool.builtinOptions = opts
    sub = fb.SubGraphT()
    sub.tensors = [tensor("x", (1, h, w, c)), tensor("x/part0", (1, h, w, keep)),
                   tensor("y", (1, h, w, keep))]
    sub.operators, sub.inputs, sub.outputs = [split, pool], [0], [2]
    plan = fb.BufferT()
    plan.data = list(struct.pack("<6i", 1, 0, 3, 0, 0, align(h * w * c)))
    meta = fb.MetadataT()
    meta.name, meta.buffer = b"OfflineMemoryAllocation", 1
    m = fb.ModelT()
    m.version, m.subgraphs, m.buffers, m.metadata = 3, [sub], [fb.BufferT(), plan], [meta]
    m.operatorCodes = [code(fb.BuiltinOperator.CUSTOM, b"TinyPlanSplit"),
                       code(fb.BuiltinOperator.MAX_POOL_2D)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_tinyplan_split_compacts_in_place_on_real_tflm(registerer: str):
    from backends.tflm import interpreter as ti

    rng = np.random.default_rng(5)
    h, w, c, keep = 6, 7, 5, 2
    xs = [[rng.integers(-128, 128, (1, h, w, c)).astype(np.int8)] for _ in range(3)]
    got, arena = ti.invoke_runs(split_model(h, w, c, keep), xs, registerers=[registerer])
    for x, y in zip(xs, got, strict=True):
        assert not isinstance(y, str), y
        np.testing.assert_array_equal(y[0], x[0][..., :keep])
    # x and its part 0 share bytes (offline plan), y follows: nothing else in the head.
    assert arena["head"] == align(h * w * c) + align(h * w * keep)
