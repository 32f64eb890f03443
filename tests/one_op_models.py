"""One-op int8 .tflite models (CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV) built with the
flatbuffer object API tflite-micro ships, and ai-edge-litert's reference kernels to run
them: what the C kernels are checked against."""

from __future__ import annotations

import numpy as np

ACTS = {"none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}


def schema():
    import importlib

    # The schema moved between tflite-micro wheels; either layout will do.
    for name in ("tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
                 "tflite_micro.tensorflow.lite.python.schema_py_generated"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("tflite-micro's TFLite schema is not importable")


def _quant(scales, zps, dim=0):
    fb = schema()
    q = fb.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(s) for s in scales], list(zps), dim
    return q


def _tensor(name, shape, ttype, buffer, q=None):
    fb = schema()
    t = fb.TensorT()
    t.name, t.shape, t.type, t.buffer, t.quantization = name, list(shape), ttype, buffer, q
    return t


def _buf(data: bytes | None):
    fb = schema()
    b = fb.BufferT()
    b.data = list(data) if data else None
    return b


def one_op_model(kind: str, x_shape, filt, bias, in_q, f_scales, out_q, out_shape, strides,
                 padding: str, act: str, dilations=(1, 1), activations: str = "int8") -> bytes:
    """A one-op model: CONV_2D, DEPTHWISE_CONV_2D or TRANSPOSE_CONV, int8 filter; int8
    activations with int32 bias, or (activations="int16") 16x8 with int64 bias."""
    import flatbuffers

    fb = schema()
    f_dim = 3 if kind == "DEPTHWISE_CONV_2D" else 0
    cout = out_shape[3]
    act_type = fb.TensorType.INT16 if activations == "int16" else fb.TensorType.INT8
    bias_type, bias_fmt = (fb.TensorType.INT64, "<i8") if activations == "int16" else \
        (fb.TensorType.INT32, "<i4")
    x = _tensor("x", x_shape, act_type, 0, _quant([in_q[0]], [in_q[1]]))
    w = _tensor("w", filt.shape, fb.TensorType.INT8, 1, _quant(f_scales, [0] * len(f_scales),
                                                                f_dim))
    y = _tensor("y", out_shape, act_type, 0, _quant([out_q[0]], [out_q[1]]))
    buffers = [_buf(None), _buf(filt.astype(np.int8).tobytes())]
    tensors = [x, w, y]
    b_index = -1
    if bias is not None:
        scales = [float(np.float32(in_q[0]) * np.float32(s)) for s in f_scales]
        if len(scales) == 1:
            scales = scales * cout
        tensors.append(_tensor("b", (cout,), bias_type, 2, _quant(scales, [0] * cout)))
        buffers.append(_buf(bias.astype(bias_fmt).tobytes()))
        b_index = 3
    op = fb.OperatorT()
    op.opcodeIndex = 0
    pad = fb.Padding.SAME if padding == "same" else fb.Padding.VALID
    if kind == "TRANSPOSE_CONV":
        tensors.append(_tensor("shape", (4,), fb.TensorType.INT32, len(buffers)))
        buffers.append(_buf(np.asarray(out_shape, "<i4").tobytes()))
        op.inputs = [len(tensors) - 1, 1, 0] + ([b_index] if bias is not None else [])
        opts = fb.TransposeConvOptionsT()
        op.builtinOptionsType = fb.BuiltinOptions.TransposeConvOptions
        code_id, version = fb.BuiltinOperator.TRANSPOSE_CONV, 3
    elif kind == "CONV_2D":
        op.inputs = [0, 1] + ([b_index] if bias is not None else [])
        opts = fb.Conv2DOptionsT()
        opts.dilationHFactor, opts.dilationWFactor = dilations
        op.builtinOptionsType = fb.BuiltinOptions.Conv2DOptions
        code_id, version = fb.BuiltinOperator.CONV_2D, 3
    else:
        op.inputs = [0, 1] + ([b_index] if bias is not None else [])
        opts = fb.DepthwiseConv2DOptionsT()
        opts.dilationHFactor, opts.dilationWFactor = dilations
        opts.depthMultiplier = cout // x_shape[3]
        op.builtinOptionsType = fb.BuiltinOptions.DepthwiseConv2DOptions
        code_id, version = fb.BuiltinOperator.DEPTHWISE_CONV_2D, 3
    opts.padding = pad
    opts.strideH, opts.strideW = strides
    opts.fusedActivationFunction = ACTS[act]
    op.builtinOptions = opts
    op.outputs = [2]
    sub = fb.SubGraphT()
    sub.tensors, sub.operators, sub.inputs, sub.outputs = tensors, [op], [0], [2]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = code_id
    code.version = version
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sub], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def reference(model: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
