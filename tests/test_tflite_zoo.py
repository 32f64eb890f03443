"""The int8 .tflite zoo: real TFLM runs every file, agrees bit for bit with the TFLite
reference kernels, tracks the float network it was quantized from, and the
generator reproduces the committed bytes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from backends.tflm.interpreter import arena_head_bytes, invoke
from benchmarks.models import build_tflite_zoo as zoo
from benchmarks.models.tflite_builder import ACT_NONE

NAMES = list(zoo.MODELS)
ARENA = 2 * 1024 * 1024

# The op types each architecture is meant to exercise.
EXPECTED_OPS = {
    "tiny_unet": {"CONV_2D", "MAX_POOL_2D", "TRANSPOSE_CONV", "CONCATENATION"},
    "unet_wide96": {"CONV_2D", "MAX_POOL_2D", "TRANSPOSE_CONV", "CONCATENATION"},
    "mbv2_unet": {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RESIZE_BILINEAR", "CONCATENATION"},
    "deeplab_lite": {"CONV_2D", "CONCATENATION", "RESIZE_BILINEAR"},
    "fcn_additive": {"CONV_2D", "MAX_POOL_2D", "TRANSPOSE_CONV", "ADD"},
    "irregular": {"CONV_2D", "MAX_POOL_2D", "TRANSPOSE_CONV", "ADD", "CONCATENATION"},
}
OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def traced() -> dict[str, tuple[zoo.Builder, bytes]]:
    """Every model rebuilt from scratch: the traced graph and its bytes."""
    out = {}
    for name, make in zoo.MODELS.items():
        b = make()
        out[name] = (b, b.finish())
    return out


def _committed(name: str) -> bytes:
    path = zoo.model_path(name)
    assert path.is_file(), f"{path} is missing: run python -m benchmarks.models.build_tflite_zoo"
    return path.read_bytes()


def _model(data: bytes):
    return fb.ModelT.InitFromPackedBuf(data, 0)


def _random_input(data: bytes, seed: int) -> np.ndarray:
    sub = _model(data).subgraphs[0]
    shape = tuple(int(d) for d in sub.tensors[sub.inputs[0]].shape)
    return np.random.default_rng(seed).integers(-128, 128, size=shape, dtype=np.int8)


def _litert(data: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF
    )
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def test_rebuild_is_byte_identical(traced) -> None:
    for name in NAMES:
        assert traced[name][1] == _committed(name), f"{name}: rebuild differs from the file"


def test_cli_writes_the_same_files(tmp_path: Path) -> None:
    assert zoo.main(["--out", str(tmp_path)]) == 0
    for name in NAMES:
        assert zoo.model_path(name, tmp_path).read_bytes() == _committed(name)


def test_zoo_stays_small() -> None:
    total = sum(len(_committed(name)) for name in NAMES)
    assert total < 1_000_000, total


@pytest.mark.parametrize("name", NAMES)
def test_tflm_and_reference_kernels_agree(name: str) -> None:
    data = _committed(name)
    x = _random_input(data, seed=7)
    micro = invoke(data, [x], arena_size=ARENA)[0]
    ref = _litert(data, x)
    assert micro.dtype == np.int8 and micro.shape == ref.shape
    np.testing.assert_array_equal(micro, ref)
    # The network does real work: a spread of values, few of them clipped.
    assert len(np.unique(micro)) >= 32
    assert np.mean((micro == -128) | (micro == 127)) < 0.05
    other = invoke(data, [_random_input(data, seed=8)], arena_size=ARENA)[0]
    assert not np.array_equal(micro, other), "output does not depend on the input"


@pytest.mark.parametrize("name", NAMES)
def test_int8_tracks_the_float_network(traced, name: str) -> None:
    """Dequantized TFLM output vs the float trace the scales came from: catches wrong
    weight layouts, paddings or quantization parameters that both interpreters share."""
    b, data = traced[name]
    inp, out = b.tensors[b.inputs[0]], b.tensors[b.outputs[0]]
    x = (np.round(inp.value[:1] * 255.0) - 128).astype(np.int8)
    y = invoke(data, [x], arena_size=ARENA)[0]
    got = (y.astype(np.float64) - out.zero_point[0]) * out.scale[0]
    want = out.value[:1]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98
    assert np.abs(got - want).mean() < 0.2 * np.abs(want).mean()


@pytest.mark.parametrize("name", NAMES)
def test_structure(name: str) -> None:
    model = _model(_committed(name))
    sub = model.subgraphs[0]
    codes = [model.operatorCodes[op.opcodeIndex].builtinCode for op in sub.operators]
    assert {OP_NAMES[c] for c in codes} == EXPECTED_OPS[name]
    for op, code in zip(sub.operators, codes, strict=True):
        ins = [sub.tensors[i] for i in op.inputs if i >= 0]
        out = sub.tensors[op.outputs[0]]
        assert out.type == fb.TensorType.INT8
        if code == fb.BuiltinOperator.CONCATENATION:
            # TFLM's int8 concat requires one scale and zero point for all of them.
            for t in ins:
                assert list(t.quantization.scale) == list(out.quantization.scale)
                assert list(t.quantization.zeroPoint) == list(out.quantization.zeroPoint)
        if code in (fb.BuiltinOperator.CONV_2D, fb.BuiltinOperator.DEPTHWISE_CONV_2D,
                    fb.BuiltinOperator.TRANSPOSE_CONV):
            weights = ins[1]
            axis = 3 if code == fb.BuiltinOperator.DEPTHWISE_CONV_2D else 0
            assert weights.type == fb.TensorType.INT8
            assert weights.quantization.quantizedDimension == axis
            assert len(weights.quantization.scale) == weights.shape[axis]
            assert not any(weights.quantization.zeroPoint)
            assert ins[-1].type == fb.TensorType.INT32  # bias
    # Constant payloads sit on 16-byte boundaries within the file.
    data = _committed(name)
    base = np.frombuffer(data, np.uint8).ctypes.data
    raw = fb.Model.GetRootAs(data, 0)
    for i in range(1, raw.BuffersLength()):
        buf = raw.Buffers(i)
        if buf.DataLength():
            assert (buf.DataAsNumpy().ctypes.data - base) % 16 == 0, f"buffer {i} misaligned"


def test_tiny_unet_matches_tinyseg_arena() -> None:
    """TinySeg's own int8 Tiny U-Net needs a 307,200 B arena head in real TFLM (the last
    TRANSPOSE_CONV: 38,400 in + 38,400 out + 153,600 int32 scratch + 76,800 skip)."""
    assert arena_head_bytes(_committed("tiny_unet"), ARENA) == 307_200


_HAS_FRONTEND = importlib.util.find_spec("frontends.tflite_frontend") is not None


@pytest.mark.skipif(not _HAS_FRONTEND, reason="frontends/tflite_frontend.py is absent")
@pytest.mark.parametrize("name", NAMES)
def test_frontend_parses_and_greedy_matches_tflm(name: str) -> None:
    from frontends import load_model
    from planner.analysis import buffers
    from planner.planners.tflm_greedy import greedy_offsets

    path = zoo.model_path(name)
    graph = load_model(path)
    sub = _model(path.read_bytes()).subgraphs[0]
    assert len(graph.ops) == len(sub.operators)
    assert graph.tensors[graph.inputs[0]].shape == tuple(sub.tensors[sub.inputs[0]].shape)
    bufs = buffers(graph)
    head = max(off + b.size for off, b in zip(greedy_offsets(bufs), bufs, strict=True))
    assert head == arena_head_bytes(path.read_bytes(), ARENA)


# ONNX op -> the TFLite builtin it becomes; Relu/Clip fold into the producer's
# fused activation, so they have no op of their own.
_ONNX_TO_TFLITE = {
    "Conv": {"CONV_2D", "DEPTHWISE_CONV_2D"}, "MaxPool": {"MAX_POOL_2D"},
    "ConvTranspose": {"TRANSPOSE_CONV"}, "Add": {"ADD"}, "Concat": {"CONCATENATION"},
    "Resize": {"RESIZE_BILINEAR"},
}
_FUSED = {"Relu": fb.ActivationFunctionType.RELU, "Clip": fb.ActivationFunctionType.RELU6}


@pytest.mark.parametrize("name", NAMES)
def test_same_graph_and_op_order_as_onnx(name: str) -> None:
    """The int8 file is the ONNX zoo's graph op for op: same order (for `irregular`
    the memory-hostile order is the point), same wiring, same fused activations."""
    import onnx

    from benchmarks.models import ZOO_DIR

    onnx_graph = onnx.load(ZOO_DIR / f"{name}.onnx").graph
    model = _model(_committed(name))
    sub = model.subgraphs[0]
    # ONNX tensor name -> TFLite tensor id; an activation node aliases its input.
    where = {onnx_graph.input[0].name: sub.inputs[0]}
    fused: dict[int, int] = {}  # TFLite op index -> activation its ONNX Relu/Clip asks for
    last: dict[str, int] = {}  # ONNX output name -> TFLite op index that produces it
    k = 0
    for node in onnx_graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type in _FUSED:
            assert node.input[0] in last, f"{node.name} fuses into no op"
            fused[last[node.input[0]]] = _FUSED[node.op_type]
            where[node.output[0]] = where[node.input[0]]
            continue
        assert k < len(sub.operators), "the ONNX graph has more ops than the .tflite"
        op = sub.operators[k]
        code = model.operatorCodes[op.opcodeIndex].builtinCode
        assert OP_NAMES[code] in _ONNX_TO_TFLITE[node.op_type], f"op {k}: {node.name}"
        # Activations are the inputs without constant data (weights, biases, shapes have it).
        got = [i for i in op.inputs if i >= 0 and model.buffers[sub.tensors[i].buffer].data is None]
        want = [where[i] for i in node.input if i in where]
        assert got == want, f"op {k} ({node.name}) reads other tensors than the ONNX node"
        where[node.output[0]] = op.outputs[0]
        last[node.output[0]] = k
        k += 1
    assert k == len(sub.operators), "the .tflite has ops the ONNX graph lacks"
    assert where[onnx_graph.output[0].name] == sub.outputs[0]
    for k, op in enumerate(sub.operators):
        act = getattr(op.builtinOptions, "fusedActivationFunction", None)
        if act is not None:
            assert act == fused.get(k, ACT_NONE), f"op {k}: fused activation {act}"
