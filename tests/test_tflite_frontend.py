"""The TFLite frontend against the files themselves, read independently through the schema."""

from __future__ import annotations

import math
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from frontends import load_model
from frontends.tflite_frontend import load_tflite, parse_tflite
from planner.errors import PlannerError
from planner.ir import OpKind, Role
from tests.conftest import MODELS, needs_shared, shared_models

ALL_MODELS = shared_models()


def _raw(path: Path):
    """Subgraph 0 through the flatbuffer accessors (not the object API the frontend uses)."""
    model = fb.Model.GetRootAsModel(path.read_bytes(), 0)
    return model, model.Subgraphs(0)


def _has_data(model, buffer_index: int) -> bool:
    if buffer_index == 0 or buffer_index >= model.BuffersLength():
        return False
    buf = model.Buffers(buffer_index)
    return buf.DataLength() > 0 or buf.Size() > 0


@needs_shared
@pytest.mark.parametrize("path", ALL_MODELS, ids=lambda p: p.stem)
def test_every_shared_model_matches_its_file(path: Path) -> None:
    graph = load_tflite(path)
    model, sub = _raw(path)
    n = sub.TensorsLength()
    assert len(graph.ops) == sub.OperatorsLength()
    assert graph.source_format == "tflite" and graph.layout == "NHWC"
    assert graph.inputs == tuple(sub.InputsAsNumpy()) and graph.outputs == tuple(
        sub.OutputsAsNumpy())
    file_tensors, scratch = graph.tensors[:n], graph.tensors[n:]
    assert all(t.role == Role.SCRATCH and t.source_index is None for t in scratch)
    assert sorted(s for op in graph.ops for s in op.scratch) == [t.id for t in scratch]
    for i, t in enumerate(file_tensors):
        raw = sub.Tensors(i)
        assert t.id == i and t.source_index == i
        shape = tuple(int(d) for d in raw.ShapeAsNumpy()) if raw.ShapeLength() else ()
        assert t.shape == shape
        width = {"int8": 1, "uint8": 1, "int16": 2, "float16": 2, "int32": 4, "float32": 4,
                 "int64": 8}[t.dtype]
        assert t.nbytes == math.prod(shape) * width
        if _has_data(model, raw.Buffer()):
            assert t.role == Role.CONSTANT
        elif raw.IsVariable():
            assert t.role == Role.VARIABLE
        elif i in graph.inputs:
            assert t.role == Role.INPUT
        elif i in graph.outputs:
            assert t.role == Role.OUTPUT
        else:
            assert t.role == Role.ACTIVATION
        assert t.channel_axis == (3 if len(t.shape) == 4 else None)
    for k, op in enumerate(graph.ops):
        raw = sub.Operators(k)
        assert op.index == k
        assert op.inputs == tuple(int(x) for x in raw.InputsAsNumpy())
        assert op.outputs == tuple(int(x) for x in raw.OutputsAsNumpy())


@needs_shared
def test_vww_spot_checks() -> None:
    graph = load_tflite(MODELS / "mlperf_tiny" / "vww_96_int8.tflite")
    x = graph.tensors[graph.inputs[0]]
    assert (x.shape, x.dtype, x.nbytes, x.role) == ((1, 96, 96, 3), "int8", 27648, Role.INPUT)
    assert x.channels == 3
    first = graph.ops[0]
    assert (first.op_type, first.kind) == ("CONV_2D", OpKind.CONV)
    assert first.attrs["kernel"] == (3, 3) and first.attrs["strides"] == (2, 2)
    assert first.attrs["padding"] == "same" and first.attrs["fused_activation"] == "relu"
    assert first.attrs["dilations"] == (1, 1)
    kinds = {op.op_type: op.kind for op in graph.ops}
    assert kinds["DEPTHWISE_CONV_2D"] == OpKind.DEPTHWISE_CONV
    assert kinds["AVERAGE_POOL_2D"] == OpKind.POOL and kinds["RESHAPE"] == OpKind.RESHAPE
    assert kinds["FULLY_CONNECTED"] == OpKind.OTHER and kinds["SOFTMAX"] == OpKind.OTHER
    pool = next(op for op in graph.ops if op.kind == OpKind.POOL)
    assert pool.attrs["kernel"] == (3, 3) and pool.attrs["padding"] == "valid"
    assert all(not op.scratch for op in graph.ops)


@needs_shared
def test_keyword_scrambled_variables_and_svdf_scratch() -> None:
    graph = load_tflite(MODELS / "tflm" / "keyword_scrambled_8bit.tflite")
    assert sum(t.role == Role.VARIABLE for t in graph.tensors) == 7
    svdf = [op for op in graph.ops if op.op_type == "SVDF"]
    assert len(svdf) == 7
    for op in svdf:
        x, feature = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
        batch, filters = x.shape[0], feature.shape[0]
        sizes = [graph.tensors[s].nbytes for s in op.scratch]
        # int8 SVDF: int32 per filter, then int32 per unit (filters / rank).
        assert len(sizes) == 2 and sizes[0] == batch * filters * 4
        assert filters % (sizes[1] // (4 * batch)) == 0


@needs_shared
def test_segmentation_models_kinds_and_attrs() -> None:
    selfie = load_tflite(MODELS / "segmentation" / "selfie_segmentation.tflite")
    assert len(selfie.ops) == 246
    up = [op for op in selfie.ops if op.op_type == "Convolution2DTransposeBias"]
    assert len(up) == 1 and up[0].kind == OpKind.TRANSPOSE_CONV
    assert up[0].attrs["strides"] == (2, 2) and up[0].attrs["padding"] == "same"
    assert up[0].attrs["kernel"] == (2, 2)
    assert any(op.kind == OpKind.ELEMENTWISE and op.op_type == "HARD_SWISH" for op in selfie.ops)
    assert {t.dtype for t in selfie.tensors} >= {"float32", "float16"}

    deeplab = load_tflite(MODELS / "segmentation" / "deeplabv3_mnv2_dm05_pascal_quant.tflite")
    concat = [op for op in deeplab.ops if op.kind == OpKind.CONCAT]
    assert len(concat) == 1 and concat[0].attrs["axis"] == 3
    assert deeplab.tensors[deeplab.outputs[0]].dtype == "int64"

    vela = load_tflite(MODELS / "tflm" / "person_detect_vela.tflite")
    assert [op.op_type for op in vela.ops] == ["ethos-u"] and vela.ops[0].kind == OpKind.OTHER


@needs_shared
def test_load_model_dispatches_tflite() -> None:
    path = MODELS / "tflm" / "hello_world_int8.tflite"
    assert load_model(path).tensors == load_tflite(path).tensors


# ---------------------------------------------------------------- synthetic files


def _pack(model: fb.ModelT) -> bytes:
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor(shape, ttype=fb.TensorType.INT8, buffer=0, name="t", variable=False) -> fb.TensorT:
    t = fb.TensorT()
    t.shape, t.type, t.buffer, t.name, t.isVariable = list(shape), ttype, buffer, name, variable
    return t


def _model(tensors, ops, codes, inputs, outputs, buffers=None) -> fb.ModelT:
    model = fb.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.buffers = buffers or [fb.BufferT()]
    sub = fb.SubGraphT()
    sub.tensors, sub.operators, sub.inputs, sub.outputs = tensors, ops, inputs, outputs
    model.subgraphs = [sub]
    return model


def _code(builtin: int) -> fb.OperatorCodeT:
    code = fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    return code


def _op(code_index: int, ins, outs) -> fb.OperatorT:
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code_index, list(ins), list(outs)
    return op


def _transpose_conv(in_dtype: int, bias_dtype: int | None) -> bytes:
    weights = fb.BufferT()
    weights.data = list(np.ones(8 * 3 * 3 * 4, np.int8).tobytes())
    shape = fb.BufferT()
    shape.data = list(np.array([1, 16, 16, 8], np.int32).tobytes())
    buffers = [fb.BufferT(), shape, weights]
    tensors = [
        _tensor([1, 8, 8, 4], in_dtype, name="x"),
        _tensor([4], fb.TensorType.INT32, buffer=1, name="shape"),
        _tensor([8, 3, 3, 4], fb.TensorType.INT8, buffer=2, name="w"),
        _tensor([1, 16, 16, 8], in_dtype, name="y"),
    ]
    ins = [1, 2, 0]
    if bias_dtype is not None:
        bias = fb.BufferT()
        bias.data = [0] * 8 * (8 if bias_dtype == fb.TensorType.INT64 else 2)
        buffers.append(bias)
        tensors.append(_tensor([8], bias_dtype, buffer=3, name="b"))
        ins.append(4)
    op = _op(0, ins, [3])
    op.builtinOptionsType = fb.BuiltinOptions.TransposeConvOptions
    op.builtinOptions = fb.TransposeConvOptionsT()
    op.builtinOptions.strideH = op.builtinOptions.strideW = 2
    return _pack(_model(tensors, [op], [_code(fb.BuiltinOperator.TRANSPOSE_CONV)], [0], [3],
                        buffers))


@pytest.mark.parametrize(
    ("in_dtype", "bias_dtype", "expected"),
    [
        (fb.TensorType.INT8, fb.TensorType.INT32, [2048 * 4]),
        (fb.TensorType.INT8, None, [2048 * 4]),
        (fb.TensorType.INT16, fb.TensorType.INT64, [2048 * 8]),
        (fb.TensorType.INT16, fb.TensorType.INT16, [2048 * 8, 8 * 8]),
        (fb.TensorType.FLOAT32, fb.TensorType.FLOAT32, []),
    ],
)
def test_transpose_conv_scratch(in_dtype: int, bias_dtype: int | None, expected) -> None:
    graph = parse_tflite(_transpose_conv(in_dtype, bias_dtype))
    op = graph.ops[0]
    assert op.kind == OpKind.TRANSPOSE_CONV and op.attrs["kernel"] == (3, 3)
    assert [graph.tensors[s].nbytes for s in op.scratch] == expected
    base = len(graph.tensors) - len(expected)
    assert list(op.scratch) == list(range(base, len(graph.tensors)))


def test_concat_axis_is_normalised() -> None:
    tensors = [_tensor([1, 4, 4, 2], name="a"), _tensor([1, 4, 4, 3], name="b"),
               _tensor([1, 4, 4, 5], name="c")]
    op = _op(0, [0, 1], [2])
    op.builtinOptionsType = fb.BuiltinOptions.ConcatenationOptions
    op.builtinOptions = fb.ConcatenationOptionsT()
    op.builtinOptions.axis = -1
    graph = parse_tflite(_pack(_model(tensors, [op], [_code(fb.BuiltinOperator.CONCATENATION)],
                                      [0, 1], [2])))
    assert graph.ops[0].kind == OpKind.CONCAT and graph.ops[0].attrs["axis"] == 3


# ---------------------------------------------------------------- errors


def _error(tmp_path: Path, name: str, data: bytes | None) -> str:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(PlannerError) as info:
        load_tflite(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _error(tmp_path, "absent.tflite", None)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "dir.tflite").mkdir()
    assert "not a file" in _error(tmp_path, "dir.tflite", None)


@pytest.mark.parametrize("data", [b"", b"TFL3", b"this is a text file, not a model\n"])
def test_not_a_tflite_file(tmp_path: Path, data: bytes) -> None:
    assert "not a TFLite file" in _error(tmp_path, "text.tflite", data)


@needs_shared
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    data = (MODELS / "mlperf_tiny" / "vww_96_int8.tflite").read_bytes()
    message = _error(tmp_path, "cut.tflite", data[: int(len(data) * fraction)])
    assert "truncated" in message or "unparsable" in message


@needs_shared
def test_truncated_tail_string(tmp_path: Path) -> None:
    # The file ends with the custom code "ethos-u"; flatbuffers alone would cut it short.
    data = (MODELS / "tflm" / "person_detect_vela.tflite").read_bytes()
    assert "truncated" in _error(tmp_path, "cut.tflite", data[:-4])


def test_garbage_after_identifier(tmp_path: Path) -> None:
    data = b"\xff\xff\xff\x7fTFL3" + bytes(range(256)) * 4
    assert "unparsable" in _error(tmp_path, "garbage.tflite", data)


def test_dynamic_shape_names_the_tensor(tmp_path: Path) -> None:
    tensors = [_tensor([1, 8], name="x"), _tensor([-1, 8], name="dyn_out")]
    data = _pack(_model(tensors, [_op(0, [0], [1])], [_code(fb.BuiltinOperator.RELU)], [0], [1]))
    message = _error(tmp_path, "dynamic.tflite", data)
    assert "dyn_out" in message and "dynamic" in message


def test_no_subgraphs(tmp_path: Path) -> None:
    model = fb.ModelT()
    model.version = 3
    model.buffers = [fb.BufferT()]
    assert "no subgraphs" in _error(tmp_path, "empty.tflite", _pack(model))


def test_bad_tensor_index(tmp_path: Path) -> None:
    tensors = [_tensor([1, 8], name="x"), _tensor([1, 8], name="y")]
    data = _pack(_model(tensors, [_op(0, [0], [7])], [_code(fb.BuiltinOperator.RELU)], [0], [1]))
    assert "tensor 7" in _error(tmp_path, "bad.tflite", data)


def test_buffer_past_the_end(tmp_path: Path) -> None:
    far = fb.BufferT()
    far.offset, far.size = 1 << 20, 64
    tensors = [_tensor([1, 8], name="x"), _tensor([8, 8], buffer=1, name="w"),
               _tensor([1, 8], name="y")]
    data = _pack(_model(tensors, [_op(0, [0, 1], [2])], [_code(fb.BuiltinOperator.ADD)], [0], [2],
                        [fb.BufferT(), far]))
    assert "truncated" in _error(tmp_path, "far.tflite", data)


def test_sizes_follow_dtype_and_shape() -> None:
    tensors = [_tensor([2, 3, 5], fb.TensorType.FLOAT32, name="x"),
               _tensor([2, 3, 5], fb.TensorType.INT16, name="y"),
               _tensor([], fb.TensorType.INT32, name="s", variable=True)]
    graph = parse_tflite(_pack(_model(tensors, [_op(0, [0, 2], [1])],
                                      [_code(fb.BuiltinOperator.ADD)], [0], [1])))
    x, y, s = graph.tensors
    assert x.nbytes == math.prod((2, 3, 5)) * 4 and y.nbytes == 60
    assert (s.shape, s.nbytes, s.role) == ((), 4, Role.VARIABLE)
    assert x.channel_axis is None and graph.ops[0].kind == OpKind.ELEMENTWISE
