"""TinyPlanTransposeConv inside the real TFLM interpreter.

Each case is a one-op TRANSPOSE_CONV model and its twin whose operator is the custom
`TinyPlanTransposeConv` (same tensors, options [1, padding, stride_h, stride_w,
activation]). Both run three inferences on one real TFLM interpreter; the outputs must be
bit-identical to each other and to ai-edge-litert's BUILTIN_REF, and TFLM's arena head
must shrink by exactly the scratch difference: the whole output's accumulators
(out elements x 4, x 8 for 16x8) against one output row's (out_w x out_c x 4, x 8).

Runs only where the custom ops can be built against a TFLM tree the user names
(backends/tflm_custom.py, TINYPLAN_TFLM_ROOT; see docs/tflm_backend.md) and the
registerer adds TinyPlanTransposeConv; skips otherwise.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from one_op_models import _schema, one_op_model, reference

from planner.errors import PlannerError
from planner.ir import align

tc = pytest.importorskip("backends.tflm_custom")
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

    fb = _schema()
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
    from backends import tflm_interpreter as ti

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
