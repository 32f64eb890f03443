"""One-op int8 .tflite models for the row kernels' other ops (MAX_POOL_2D,
AVERAGE_POOL_2D, ADD, MUL, CONCATENATION), built like one_op_models.py; run them with
one_op_models.reference / reference_n."""

from __future__ import annotations

import numpy as np
from one_op_models import ACTS, _buf, _quant, _tensor, schema


def _model(code_id: int, version: int, tensors, inputs, options_type, options) -> bytes:
    import flatbuffers

    fb = schema()
    op = fb.OperatorT()
    op.opcodeIndex = 0
    op.inputs = list(inputs)
    op.outputs = [len(tensors) - 1]
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    sub = fb.SubGraphT()
    sub.tensors, sub.operators = tensors, [op]
    sub.inputs, sub.outputs = list(inputs), [len(tensors) - 1]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = code_id
    code.version = version
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
    model.buffers = [_buf(None)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def pool_model(kind: str, x_shape, q, out_shape, kernel, strides, padding: str,
               act: str) -> bytes:
    """MAX_POOL_2D or AVERAGE_POOL_2D; input and output share q = (scale, zero point)."""
    fb = schema()
    t = fb.TensorType.INT8
    tensors = [_tensor("x", x_shape, t, 0, _quant([q[0]], [q[1]])),
               _tensor("y", out_shape, t, 0, _quant([q[0]], [q[1]]))]
    opts = fb.Pool2DOptionsT()
    opts.padding = fb.Padding.SAME if padding == "same" else fb.Padding.VALID
    opts.strideH, opts.strideW = strides
    opts.filterHeight, opts.filterWidth = kernel
    opts.fusedActivationFunction = ACTS[act]
    code = fb.BuiltinOperator.MAX_POOL_2D if kind == "max" else fb.BuiltinOperator.AVERAGE_POOL_2D
    return _model(code, 2, tensors, [0], fb.BuiltinOptions.Pool2DOptions, opts)


def binary_model(kind: str, shape, q1, q2, qo, act: str) -> bytes:
    """ADD or MUL of two int8 tensors of one shape (no broadcast)."""
    fb = schema()
    t = fb.TensorType.INT8
    tensors = [_tensor("a", shape, t, 0, _quant([q1[0]], [q1[1]])),
               _tensor("b", shape, t, 0, _quant([q2[0]], [q2[1]])),
               _tensor("y", shape, t, 0, _quant([qo[0]], [qo[1]]))]
    if kind == "add":
        opts = fb.AddOptionsT()
        code, otype = fb.BuiltinOperator.ADD, fb.BuiltinOptions.AddOptions
    else:
        opts = fb.MulOptionsT()
        code, otype = fb.BuiltinOperator.MUL, fb.BuiltinOptions.MulOptions
    opts.fusedActivationFunction = ACTS[act]
    return _model(code, 2, tensors, [0, 1], otype, opts)


def concat_model(shapes, q) -> bytes:
    """CONCATENATION on the channel axis, every tensor on q."""
    fb = schema()
    t = fb.TensorType.INT8
    tensors = [_tensor(f"x{i}", s, t, 0, _quant([q[0]], [q[1]])) for i, s in enumerate(shapes)]
    out = list(shapes[0])
    out[3] = sum(s[3] for s in shapes)
    tensors.append(_tensor("y", out, t, 0, _quant([q[0]], [q[1]])))
    opts = fb.ConcatenationOptionsT()
    opts.axis = 3
    return _model(fb.BuiltinOperator.CONCATENATION, 2, tensors, list(range(len(shapes))),
                  fb.BuiltinOptions.ConcatenationOptions, opts)


def reference_n(model: bytes, xs) -> np.ndarray:
    """The output of a one-op model on several inputs (ai-edge-litert, BUILTIN_REF)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), xs, strict=True):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
