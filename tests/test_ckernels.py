"""The C kernels (backends/c/tp_kernels.c through backends/c/kernels.py) against TFLite's
reference kernels (ai-edge-litert BUILTIN_REF) on one-op int8 models: the scratch-free
TRANSPOSE_CONV, grouped and depthwise fused concat+conv, and the byte-geometry concat.
Bit-exact, over random shapes (hypothesis)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from one_op_models import one_op_model, reference

from backends.c import kernels as ckernels

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tflite_micro")
pytestmark = pytest.mark.skipif(ckernels.available() is not None,
                                reason=str(ckernels.available()))

def _params(rng, cout: int, per_channel: bool):
    in_q = (float(np.float32(rng.uniform(0.01, 0.1))), int(rng.integers(-20, 20)))
    out_q = (float(np.float32(rng.uniform(0.05, 0.5))), int(rng.integers(-20, 20)))
    n = cout if per_channel else 1
    f_scales = [float(np.float32(s)) for s in rng.uniform(0.002, 0.03, n)]
    return in_q, out_q, f_scales


# -- TRANSPOSE_CONV ----------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 6), w=st.integers(1, 6), cin=st.integers(1, 7), cout=st.integers(1, 7),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       padding=st.sampled_from(["same", "valid"]), act=st.sampled_from(["none", "relu", "relu6"]),
       has_bias=st.booleans(), per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_transpose_conv_matches_tflite_reference(h, w, cin, cout, kh, kw, sh, sw, padding, act,
                                                 has_bias, per_channel, seed):
    rng = np.random.default_rng(seed)
    if padding == "same":
        oh, ow = h * sh, w * sw
    else:
        oh, ow = (h - 1) * sh + kh, (w - 1) * sw + kw
    out_shape = (1, oh, ow, cout)
    filt = rng.integers(-127, 128, (cout, kh, kw, cin)).astype(np.int8)
    bias = rng.integers(-5000, 5000, cout).astype(np.int32) if has_bias else None
    in_q, out_q, f_scales = _params(rng, cout, per_channel)
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    model = one_op_model("TRANSPOSE_CONV", x.shape, filt, bias, in_q, f_scales, out_q,
                         out_shape, (sh, sw), padding, act)
    want = reference(model, x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    row_acc = np.empty(ckernels.tconv_scratch_bytes(out_shape), dtype=np.uint8)
    got = ckernels.transpose_conv(x, filt, bias, mult, shift, input_zero_point=in_q[1],
                                  output_zero_point=out_q[1], out_shape=out_shape,
                                  strides=(sh, sw), padding=padding,
                                  act_range=ckernels.activation_range(act, *out_q),
                                  row_acc=row_acc)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 5), w=st.integers(1, 5), cin=st.integers(1, 6), cout=st.integers(1, 6),
       k=st.integers(1, 4), s=st.integers(1, 3), padding=st.sampled_from(["same", "valid"]),
       act=st.sampled_from(["none", "relu"]), has_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_transpose_conv_16x8_matches_tflite_reference(h, w, cin, cout, k, s, padding, act,
                                                      has_bias, seed):
    """int16 activations (zero points 0), int8 filter, int64 bias: int64 row accumulators."""
    rng = np.random.default_rng(seed)
    oh, ow = (h * s, w * s) if padding == "same" else ((h - 1) * s + k, (w - 1) * s + k)
    out_shape = (1, oh, ow, cout)
    filt = rng.integers(-127, 128, (cout, k, k, cin)).astype(np.int8)
    bias = rng.integers(-200000, 200000, cout).astype(np.int64) if has_bias else None
    in_q = (float(np.float32(rng.uniform(1e-4, 1e-3))), 0)
    out_q = (float(np.float32(rng.uniform(1e-3, 1e-2))), 0)
    f_scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.03, cout)]
    x = rng.integers(-32768, 32768, (1, h, w, cin)).astype(np.int16)
    model = one_op_model("TRANSPOSE_CONV", x.shape, filt, bias, in_q, f_scales, out_q,
                         out_shape, (s, s), padding, act, activations="int16")
    want = reference(model, x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    row_acc = np.empty(ckernels.tconv_scratch_bytes(out_shape, "int16"), dtype=np.uint8)
    got = ckernels.transpose_conv(x, filt, bias, mult, shift, input_zero_point=0,
                                  output_zero_point=0, out_shape=out_shape, strides=(s, s),
                                  padding=padding, row_acc=row_acc,
                                  act_range=ckernels.activation_range(act, *out_q, "int16"))
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, want)


def test_transpose_conv_uses_only_one_output_row_of_scratch():
    """A row accumulator one byte short is refused; exactly out_w * out_c * 4 works."""
    rng = np.random.default_rng(3)
    out_shape = (1, 16, 12, 5)
    filt = rng.integers(-127, 128, (5, 2, 2, 4)).astype(np.int8)
    x = rng.integers(-128, 128, (1, 8, 6, 4)).astype(np.int8)
    in_q, out_q, f_scales = _params(rng, 5, True)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], 5)
    kw = dict(input_zero_point=in_q[1], output_zero_point=out_q[1], out_shape=out_shape,
              strides=(2, 2), padding="valid")
    need = 12 * 5 * 4
    with pytest.raises(ckernels.CKernelError, match="needs 240 B"):
        ckernels.transpose_conv(x, filt, None, mult, shift,
                                row_acc=np.empty(need - 1, np.uint8), **kw)
    got = ckernels.transpose_conv(x, filt, None, mult, shift, row_acc=np.empty(need, np.uint8),
                                  **kw)
    model = one_op_model("TRANSPOSE_CONV", x.shape, filt, None, in_q, f_scales, out_q, out_shape,
                         (2, 2), "valid", "none")
    want = reference(model, x)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 20


# -- grouped / depthwise fused concat+conv -------------------------------------------------

def _split_channels(rng, x: np.ndarray, pieces: int) -> list[np.ndarray]:
    c = x.shape[3]
    cuts = sorted(rng.choice(np.arange(1, c), size=min(pieces - 1, c - 1), replace=False)) \
        if c > 1 else []
    return [np.ascontiguousarray(p) for p in np.split(x, cuts, axis=3)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 7), w=st.integers(1, 7), groups=st.integers(1, 4),
       gin=st.integers(1, 4), gout=st.integers(1, 3), k=st.integers(1, 3), s=st.integers(1, 2),
       d=st.integers(1, 2), padding=st.sampled_from(["same", "valid"]), pieces=st.integers(1, 3),
       act=st.sampled_from(["none", "relu"]), seed=st.integers(0, 2**16))
def test_grouped_fused_conv_matches_tflite_reference(h, w, groups, gin, gout, k, s, d, padding,
                                                     pieces, act, seed):
    rng = np.random.default_rng(seed)
    eff = (k - 1) * d + 1
    if padding == "valid" and (h < eff or w < eff):
        return
    cin, cout = groups * gin, groups * gout
    oh = math.ceil(h / s) if padding == "same" else (h - eff) // s + 1
    ow = math.ceil(w / s) if padding == "same" else (w - eff) // s + 1
    filt = rng.integers(-127, 128, (cout, k, k, gin)).astype(np.int8)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    in_q, out_q, f_scales = _params(rng, cout, True)
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    model = one_op_model("CONV_2D", x.shape, filt, bias, in_q, f_scales, out_q,
                         (1, oh, ow, cout), (s, s), padding, act, (d, d))
    want = reference(model, x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    got = ckernels.fused_concat_conv2d(
        _split_channels(rng, x, pieces), filt, bias, mult, shift, input_zero_point=in_q[1],
        output_zero_point=out_q[1], out_shape=(1, oh, ow, cout), strides=(s, s),
        dilations=(d, d), padding=padding, act_range=ckernels.activation_range(act, *out_q))
    np.testing.assert_array_equal(got, want)


def test_unet_wide96_grouping_runs():
    """The issue's case: filter [16,3,3,3] on 24 input channels (8 groups), input in two
    slices whose boundary cuts through a group."""
    rng = np.random.default_rng(96)
    x = rng.integers(-128, 128, (1, 12, 16, 24)).astype(np.int8)
    filt = rng.integers(-127, 128, (16, 3, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, 16).astype(np.int32)
    in_q, out_q, f_scales = _params(rng, 16, True)
    model = one_op_model("CONV_2D", x.shape, filt, bias, in_q, f_scales, out_q, (1, 12, 16, 16),
                         (1, 1), "same", "relu")
    want = reference(model, x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], 16)
    got = ckernels.fused_concat_conv2d(
        [x[..., :16].copy(), x[..., 16:].copy()], filt, bias, mult, shift,
        input_zero_point=in_q[1], output_zero_point=out_q[1], out_shape=(1, 12, 16, 16),
        act_range=ckernels.activation_range("relu", *out_q))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 20


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(2, 7), w=st.integers(2, 7), cin=st.integers(1, 6), mult_=st.integers(1, 3),
       k=st.integers(1, 3), s=st.integers(1, 2), padding=st.sampled_from(["same", "valid"]),
       pieces=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_depthwise_fused_conv_matches_tflite_reference(h, w, cin, mult_, k, s, padding, pieces,
                                                       seed):
    rng = np.random.default_rng(seed)
    if padding == "valid" and (h < k or w < k):
        return
    cout = cin * mult_
    oh = math.ceil(h / s) if padding == "same" else (h - k) // s + 1
    ow = math.ceil(w / s) if padding == "same" else (w - k) // s + 1
    filt = rng.integers(-127, 128, (1, k, k, cout)).astype(np.int8)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    in_q, out_q, f_scales = _params(rng, cout, True)
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    model = one_op_model("DEPTHWISE_CONV_2D", x.shape, filt, bias, in_q, f_scales, out_q,
                         (1, oh, ow, cout), (s, s), padding, "relu6")
    want = reference(model, x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    got = ckernels.fused_concat_conv2d(
        _split_channels(rng, x, pieces), filt, bias, mult, shift, input_zero_point=in_q[1],
        output_zero_point=out_q[1], out_shape=(1, oh, ow, cout), strides=(s, s),
        padding=padding, act_range=ckernels.activation_range("relu6", *out_q), depthwise=True)
    np.testing.assert_array_equal(got, want)


def test_group_mismatch_is_refused():
    x = np.zeros((1, 3, 3, 24), np.int8)
    filt = np.zeros((10, 3, 3, 3), np.int8)  # 8 groups do not divide 10 output channels
    with pytest.raises(ckernels.CKernelError, match="TP_ECONFIG"):
        ckernels.fused_concat_conv2d([x], filt, None, np.zeros(10), np.zeros(10),
                                     input_zero_point=0, output_zero_point=0,
                                     out_shape=(1, 3, 3, 10))


# -- byte-geometry concat ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "int16", "float32"])
@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_fused_concat_any_dtype_and_axis(dtype: str, axis: int):
    rng = np.random.default_rng(axis)
    base = [2, 3, 4, 5]
    parts = []
    for n in (1, 3, 2):
        shape = list(base)
        shape[axis] = n
        parts.append((rng.standard_normal(shape) * 100).astype(dtype))
    got = ckernels.fused_concat(parts, axis)
    np.testing.assert_array_equal(got, np.concatenate(parts, axis=axis))


def test_missing_compiler_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(ckernels, "_LIB", None)
    monkeypatch.setenv("TINYPLAN_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = ckernels.available()
    assert reason is not None and "no C compiler" in reason and "\n" not in reason


def test_library_is_cached_by_source_hash(monkeypatch, tmp_path):
    monkeypatch.setattr(ckernels, "_LIB", None)
    monkeypatch.setenv("TINYPLAN_CACHE", str(tmp_path))
    ckernels.library()
    built = list(tmp_path.glob("ckernels/*/libtpkernels.so"))
    assert [p.parent.name for p in built] == [ckernels.source_hash()]
