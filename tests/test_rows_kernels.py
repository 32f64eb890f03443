"""The row-streaming C kernels and group runner (backends/c/tp_rows.c through
backends/crows.py, programs from backends/group_program.py) against TFLite's reference
kernels (ai-edge-litert BUILTIN_REF): each row kernel row band by row band (the ring holds
only the band, every other slot poisoned), and whole chains run through tp_group_run with
rings of the exact size, bit-exact against the unmodified model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from one_op_models import one_op_model, reference
from row_op_models import binary_model, concat_model, pool_model, reference_n

from backends import ckernels, crows, group_program

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.skipif(crows.available() is not None, reason=str(crows.available()))



def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _q(rng, lo=0.01, hi=0.1):
    return float(np.float32(rng.uniform(lo, hi))), int(rng.integers(-20, 20))


def _band_ring(rng, x: np.ndarray, rows: list[int], held: int) -> np.ndarray:
    """A ring of `held` slots holding exactly `rows` of x (row y in slot y % held); every
    other slot is random garbage, so a kernel reading outside its band is caught."""
    h = x.shape[1]
    flat = x.reshape(h, -1).view(np.uint8)
    ring = rng.integers(0, 256, (held, flat.shape[1])).astype(np.uint8)
    for y in rows:
        ring[y % held] = flat[y]
    return ring


def _conv_band(oy: int, stride: int, pad: int, k: int, h: int) -> list[int]:
    return [y for y in range(oy * stride - pad, oy * stride - pad + k) if 0 <= y < h]


# -- CONV_2D / DEPTHWISE_CONV_2D ------------------------------------------------------------

@examples(30)
@given(h=st.integers(1, 7), w=st.integers(1, 6), groups=st.integers(1, 3),
       gin=st.integers(1, 4), gout=st.integers(1, 3), k=st.integers(1, 4), s=st.integers(1, 3),
       padding=st.sampled_from(["same", "valid"]), act=st.sampled_from(["none", "relu", "relu6"]),
       seed=st.integers(0, 2**16))
def test_conv_rows_match_reference(h, w, groups, gin, gout, k, s, padding, act, seed):
    rng = np.random.default_rng(seed)
    if padding == "valid" and (h < k or w < k):
        return
    cin, cout = groups * gin, groups * gout
    oh = math.ceil(h / s) if padding == "same" else (h - k) // s + 1
    ow = math.ceil(w / s) if padding == "same" else (w - k) // s + 1
    filt = rng.integers(-127, 128, (cout, k, k, gin)).astype(np.int8)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)  # TFLite's int8 conv needs one
    in_q, out_q = _q(rng), _q(rng, 0.05, 0.5)
    f_scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.03, cout)]
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    want = reference(one_op_model("CONV_2D", x.shape, filt, bias, in_q, f_scales, out_q,
                                  (1, oh, ow, cout), (s, s), padding, act), x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    pt = group_program.same_padding(h, oh, k, s) if padding == "same" else 0
    pl = group_program.same_padding(w, ow, k, s) if padding == "same" else 0
    assert (pt, pl) == (crows.same_padding(h, oh, k, s), crows.same_padding(w, ow, k, s)) or \
        padding == "valid"
    for oy in range(oh):
        ring = _band_ring(rng, x, _conv_band(oy, s, pt, k, h), k)
        got = crows.conv_row(ring, oy, filt, bias, mult, shift, in_shape=x.shape,
                             out_shape=(1, oh, ow, cout), strides=(s, s), pads=(pt, pl),
                             input_zero_point=in_q[1], output_zero_point=out_q[1],
                             act_range=ckernels.activation_range(act, *out_q))
        np.testing.assert_array_equal(got, want[0, oy].ravel(), err_msg=f"row {oy}")


@examples(20)
@given(h=st.integers(1, 7), w=st.integers(1, 6), cin=st.integers(1, 5), mult_=st.integers(1, 3),
       k=st.integers(1, 3), s=st.integers(1, 2), padding=st.sampled_from(["same", "valid"]),
       seed=st.integers(0, 2**16))
def test_depthwise_rows_match_reference(h, w, cin, mult_, k, s, padding, seed):
    rng = np.random.default_rng(seed)
    if padding == "valid" and (h < k or w < k):
        return
    cout = cin * mult_
    oh = math.ceil(h / s) if padding == "same" else (h - k) // s + 1
    ow = math.ceil(w / s) if padding == "same" else (w - k) // s + 1
    filt = rng.integers(-127, 128, (1, k, k, cout)).astype(np.int8)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    in_q, out_q = _q(rng), _q(rng, 0.05, 0.5)
    f_scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.03, cout)]
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    want = reference(one_op_model("DEPTHWISE_CONV_2D", x.shape, filt, bias, in_q, f_scales,
                                  out_q, (1, oh, ow, cout), (s, s), padding, "relu6"), x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    pt = group_program.same_padding(h, oh, k, s) if padding == "same" else 0
    pl = group_program.same_padding(w, ow, k, s) if padding == "same" else 0
    for oy in range(oh):
        ring = _band_ring(rng, x, _conv_band(oy, s, pt, k, h), k)
        got = crows.conv_row(ring, oy, filt, bias, mult, shift, in_shape=x.shape,
                             out_shape=(1, oh, ow, cout), strides=(s, s), pads=(pt, pl),
                             input_zero_point=in_q[1], output_zero_point=out_q[1],
                             act_range=ckernels.activation_range("relu6", *out_q),
                             depthwise=True)
        np.testing.assert_array_equal(got, want[0, oy].ravel(), err_msg=f"row {oy}")


# -- TRANSPOSE_CONV ----------------------------------------------------------------------

@examples(30)
@given(h=st.integers(1, 5), w=st.integers(1, 5), cin=st.integers(1, 5), cout=st.integers(1, 5),
       k=st.integers(1, 4), s=st.integers(1, 3), padding=st.sampled_from(["same", "valid"]),
       act=st.sampled_from(["none", "relu"]), has_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_transpose_conv_rows_match_reference(h, w, cin, cout, k, s, padding, act, has_bias,
                                             seed):
    rng = np.random.default_rng(seed)
    oh, ow = (h * s, w * s) if padding == "same" else ((h - 1) * s + k, (w - 1) * s + k)
    filt = rng.integers(-127, 128, (cout, k, k, cin)).astype(np.int8)
    bias = rng.integers(-5000, 5000, cout).astype(np.int32) if has_bias else None
    in_q, out_q = _q(rng), _q(rng, 0.05, 0.5)
    f_scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.03, cout)]
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    want = reference(one_op_model("TRANSPOSE_CONV", x.shape, filt, bias, in_q, f_scales, out_q,
                                  (1, oh, ow, cout), (s, s), padding, act), x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    same = padding == "same"
    pt, pl = (group_program.tconv_padding(oh, k, s, same),
              group_program.tconv_padding(ow, k, s, same))
    assert (pt, pl) == (crows.tconv_padding(oh, k, s, same), crows.tconv_padding(ow, k, s, same))
    held = -(-k // s)
    for oy in range(oh):
        band = [i for i in range(h) if i * s - pt <= oy <= i * s - pt + k - 1]
        assert len(band) <= held
        got = crows.transpose_conv_row(
            _band_ring(rng, x, band, held), oy, filt, bias, mult, shift, in_shape=x.shape,
            out_shape=(1, oh, ow, cout), strides=(s, s), pads=(pt, pl),
            input_zero_point=in_q[1], output_zero_point=out_q[1],
            act_range=ckernels.activation_range(act, *out_q))
        np.testing.assert_array_equal(got, want[0, oy].ravel(), err_msg=f"row {oy}")


# -- pooling -----------------------------------------------------------------------------

@examples(40)
@given(kind=st.sampled_from(["max", "avg"]), h=st.integers(1, 8), w=st.integers(1, 8),
       c=st.integers(1, 5), kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), padding=st.sampled_from(["same", "valid"]),
       act=st.sampled_from(["none", "relu", "relu6"]), seed=st.integers(0, 2**16))
def test_pool_rows_match_reference(kind, h, w, c, kh, kw, sh, sw, padding, act, seed):
    rng = np.random.default_rng(seed)
    if padding == "valid" and (h < kh or w < kw):
        return
    oh = math.ceil(h / sh) if padding == "same" else (h - kh) // sh + 1
    ow = math.ceil(w / sw) if padding == "same" else (w - kw) // sw + 1
    q = _q(rng, 0.01, 0.05)
    x = rng.integers(-128, 128, (1, h, w, c)).astype(np.int8)
    want = reference(pool_model(kind, x.shape, q, (1, oh, ow, c), (kh, kw), (sh, sw), padding,
                                act), x)
    pt = group_program.same_padding(h, oh, kh, sh) if padding == "same" else 0
    pl = group_program.same_padding(w, ow, kw, sw) if padding == "same" else 0
    for oy in range(oh):
        ring = _band_ring(rng, x, _conv_band(oy, sh, pt, kh, h), kh)
        got = crows.pool_row(ring, oy, in_shape=x.shape, out_shape=(1, oh, ow, c),
                             kernel=(kh, kw), strides=(sh, sw), pads=(pt, pl),
                             act_range=ckernels.activation_range(act, *q), average=kind == "avg")
        np.testing.assert_array_equal(got, want[0, oy].ravel(), err_msg=f"row {oy}")


# -- ADD / MUL / CONCATENATION -------------------------------------------------------------

@examples(40)
@given(kind=st.sampled_from(["add", "mul"]), h=st.integers(1, 4), w=st.integers(1, 6),
       c=st.integers(1, 6), act=st.sampled_from(["none", "relu", "relu6"]),
       seed=st.integers(0, 2**16))
def test_add_mul_rows_match_reference(kind, h, w, c, act, seed):
    rng = np.random.default_rng(seed)
    q1, q2 = _q(rng, 0.005, 0.2), _q(rng, 0.005, 0.2)
    qo = _q(rng, 0.01, 0.3) if kind == "add" else _q(rng, 0.0005, 0.02)
    shape = (1, h, w, c)
    a = rng.integers(-128, 128, shape).astype(np.int8)
    b = rng.integers(-128, 128, shape).astype(np.int8)
    want = reference_n(binary_model(kind, shape, q1, q2, qo, act), [a, b])
    fn = group_program.add_params if kind == "add" else group_program.mul_params
    params = fn(*q1, *q2, *qo, act)
    row = crows.add_row if kind == "add" else crows.mul_row
    for y in range(h):
        np.testing.assert_array_equal(row(a[0, y], b[0, y], params), want[0, y].ravel())
    assert len(np.unique(want)) > 1 or h * w * c < 8


@examples(20)
@given(h=st.integers(1, 4), w=st.integers(1, 5), chans=st.lists(st.integers(1, 5), min_size=1,
                                                                  max_size=4),
       seed=st.integers(0, 2**16))
def test_concat_rows_match_reference(h, w, chans, seed):
    rng = np.random.default_rng(seed)
    q = _q(rng)
    xs = [rng.integers(-128, 128, (1, h, w, c)).astype(np.int8) for c in chans]
    want = reference_n(concat_model([x.shape for x in xs], q), xs)
    for y in range(h):
        got = crows.concat_row([x[0, y] for x in xs], w)
        np.testing.assert_array_equal(got, want[0, y].ravel())


def test_add_row_differs_from_a_wrong_multiplier():
    """The add test could not pass on a constant: a changed multiplier changes rows."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, 64).astype(np.int8)
    b = rng.integers(-128, 128, 64).astype(np.int8)
    p = list(group_program.add_params(0.05, 3, 0.07, -2, 0.1, 5, "none"))
    base = crows.add_row(a, b, p)
    p[4] //= 2
    assert not np.array_equal(base, crows.add_row(a, b, p))
