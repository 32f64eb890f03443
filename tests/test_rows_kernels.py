"""The row-streaming C kernels and group runner (backends/c/tp_rows.c through
backends/c/rows.py, programs from backends/c/group_program.py) against TFLite's reference
kernels (ai-edge-litert BUILTIN_REF): each row kernel row band by row band (the ring holds
only the band, every other slot poisoned), and whole chains run through tp_group_run with
rings of the exact size, bit-exact against the unmodified model."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from one_op_models import one_op_model, reference
from row_op_models import binary_model, concat_model, pool_model, reference_n

from backends.c import group_program
from backends.c import kernels as ckernels
from backends.c import rows as crows
from planner import kernels, streaming
from planner.errors import PlannerError
from planner.ir import OpKind

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

@examples(40)
@given(h=st.integers(1, 7), w=st.integers(1, 6), groups=st.integers(1, 3),
       gin=st.integers(1, 4), gout=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), padding=st.sampled_from(["same", "valid"]),
       act=st.sampled_from(["none", "relu", "relu6", "relu_n1_to_1"]),
       seed=st.integers(0, 2**16))
def test_conv_rows_match_reference(h, w, groups, gin, gout, kh, kw, sh, sw, padding, act, seed):
    """CONV_2D (grouped when groups > 1, 1x1 when kh = kw = 1), any strides and kernel."""
    rng = np.random.default_rng(seed)
    if padding == "valid" and (h < kh or w < kw):
        return
    cin, cout = groups * gin, groups * gout
    oh = math.ceil(h / sh) if padding == "same" else (h - kh) // sh + 1
    ow = math.ceil(w / sw) if padding == "same" else (w - kw) // sw + 1
    filt = rng.integers(-127, 128, (cout, kh, kw, gin)).astype(np.int8)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)  # TFLite's int8 conv needs one
    in_q, out_q = _q(rng), _q(rng, 0.05, 0.5)
    f_scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.03, cout)]
    x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
    want = reference(one_op_model("CONV_2D", x.shape, filt, bias, in_q, f_scales, out_q,
                                  (1, oh, ow, cout), (sh, sw), padding, act), x)
    mult, shift = ckernels.per_channel_multipliers(in_q[0], f_scales, out_q[0], cout)
    pt = group_program.same_padding(h, oh, kh, sh) if padding == "same" else 0
    pl = group_program.same_padding(w, ow, kw, sw) if padding == "same" else 0
    if padding == "same":
        assert (pt, pl) == (crows.same_padding(h, oh, kh, sh), crows.same_padding(w, ow, kw, sw))
    for oy in range(oh):
        ring = _band_ring(rng, x, _conv_band(oy, sh, pt, kh, h), kh)
        got = crows.conv_row(ring, oy, filt, bias, mult, shift, in_shape=x.shape,
                             out_shape=(1, oh, ow, cout), strides=(sh, sw), pads=(pt, pl),
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


def test_encoder_constants_are_the_headers():
    """group_program writes the numbers tp_rows.h defines (one source: the header)."""
    import re

    header = (crows.C_DIR / "tp_rows.h").read_text()
    enums = dict(re.findall(r"(TP_(?:VIEW|OPK)_\w+) = (\d+)", header))
    assert {k: int(v) for k, v in enums.items()} == {
        "TP_VIEW_WHOLE": group_program.WHOLE, "TP_VIEW_RING": group_program.RING,
        "TP_VIEW_STREAM_IN": group_program.STREAM_IN,
        "TP_VIEW_SPILL_ROWS": group_program.SPILL_ROWS, "TP_OPK_CONV": group_program.CONV,
        "TP_OPK_DEPTHWISE": group_program.DEPTHWISE, "TP_OPK_TCONV": group_program.TCONV,
        "TP_OPK_MAX_POOL": group_program.MAX_POOL, "TP_OPK_AVG_POOL": group_program.AVG_POOL,
        "TP_OPK_ADD": group_program.ADD, "TP_OPK_MUL": group_program.MUL,
        "TP_OPK_CONCAT": group_program.CONCAT}
    assert (crows.MAGIC, crows.VERSION) == (group_program.MAGIC, group_program.VERSION)
    assert crows._define("TP_GROUP_MAX_DIM") == group_program.MAX_DIM
    assert (crows.MAX_OPS, crows.MAX_VIEWS) == (kernels.GROUP_MAX_OPS, kernels.GROUP_MAX_VIEWS)


def test_add_row_differs_from_a_wrong_multiplier():
    """The add test could not pass on a constant: a changed multiplier changes rows."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, 64).astype(np.int8)
    b = rng.integers(-128, 128, 64).astype(np.int8)
    p = list(group_program.add_params(0.05, 3, 0.07, -2, 0.1, 5, "none"))
    base = crows.add_row(a, b, p)
    p[4] //= 2
    assert not np.array_equal(base, crows.add_row(a, b, p))


# -- whole groups through tp_group_run -------------------------------------------------------

def local_group(graph, ops: tuple[int, ...]):
    """The group of consecutive `ops` as planner/streaming.py schedules it (demand-driven
    schedule, least rings)."""
    return streaming.schedule_group(graph, ops)


def _views(graph, group):
    """The group op's views as apply_groups lists them: its inputs and outputs."""
    planned = streaming.apply_groups(graph, [group])
    (op,) = [o for o in planned.ops if o.kind == OpKind.STREAMED_GROUP]
    return list(op.inputs), list(op.outputs)


class Model:
    """A built .tflite: its graph, constants and every tensor of a reference run."""

    def __init__(self, data: bytes, seed: int = 0):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from backends.tflite.io import read_model
        from frontends.tflite_frontend import parse_tflite

        self.data = data
        graph = parse_tflite(data)
        # TRANSPOSE_CONVs on the row kernel, as kernels.apply_kernels puts them.
        self.graph = kernels.with_op_kernels(graph, [(op.index, kernels.ROWS_KERNEL)
                                                     for op in graph.ops
                                                     if op.op_type == "TRANSPOSE_CONV"])
        self.fbm = read_model(data)
        it = Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        it.allocate_tensors()
        rng = np.random.default_rng(seed)
        for d in it.get_input_details():
            it.set_tensor(d["index"], rng.integers(-128, 128, d["shape"]).astype(np.int8))
        it.invoke()
        self.values = {}
        for t in range(len(self.graph.tensors)):
            try:
                self.values[t] = np.array(it.get_tensor(t), copy=True)
            except ValueError:
                pass

    def const(self, t: int) -> np.ndarray:
        buf = self.fbm.buffers[self.fbm.subgraphs[0].tensors[t].buffer]
        return np.array(bytearray(buf.data), dtype=np.uint8)

    def bases(self, program, inputs, outputs, skip=()):
        """Buffers per view: inputs hold their reference bytes (constants their data),
        outputs and rings hold rows_held rows."""
        views = group_program.views_of(program)
        out = []
        for v, view in enumerate(views):
            t = (list(inputs) + list(outputs))[v] if v < len(inputs) + len(outputs) else None
            size = view.rows_held * view.row_bytes
            if t is not None and v < len(inputs) and t not in skip:
                if self.graph.tensors[t].role.value == "constant":
                    out.append(self.const(t).copy())
                else:
                    out.append(np.ascontiguousarray(self.values[t]).view(np.uint8).ravel()
                               .copy())
            else:
                out.append(np.full(size, 0x5A, dtype=np.uint8))
            assert out[-1].size >= size
        return out


def _chain1() -> Model:
    from benchmarks.models.tflite_builder import ACT_NONE, Builder

    b = Builder("rows_chain1", seed=11)
    x = b.input("x", (1, 13, 10, 3))
    c1 = b.conv2d(x, 8, k=3, name="c1")
    c2 = b.conv2d(c1, 6, k=3, stride=2, act=ACT_NONE, name="c2")
    b.output(b.max_pool(c2, 2, 2, name="p"))
    return Model(b.finish())


def _chain2() -> Model:
    from benchmarks.models.tflite_builder import Builder

    b = Builder("rows_chain2", seed=12)
    x = b.input("x", (1, 8, 10, 3))
    e = b.conv2d(x, 8, k=3, name="e")
    d = b.max_pool(e, 2, 2, name="d")
    u = b.transpose_conv(d, 8, k=2, stride=2, name="u")
    cat = b.concat([u, e], name="cat")
    b.output(b.conv2d(cat, 8, k=3, name="y"))
    return Model(b.finish())


@pytest.fixture(scope="module")
def chain1() -> Model:
    return _chain1()


@pytest.fixture(scope="module")
def chain2() -> Model:
    return _chain2()


def _run(m: Model, group, **kw):
    inputs, outputs = _views(m.graph, group)
    prog = group_program.encode_group(m.data, m.graph, group, inputs, outputs)
    bases = m.bases(prog, inputs, outputs)
    rc = crows.group_return_code(prog, bases, **kw)
    return rc, {t: bases[len(inputs) + i] for i, t in enumerate(outputs)}


def test_conv_conv_pool_chain_with_exact_rings(chain1):
    g = local_group(chain1.graph, (0, 1, 2))
    assert sorted(r for _, r in g.rings) == [2, 3]  # far below the 13 and 7 rows
    rc, outs = _run(chain1, g, poison=0xA5)
    assert rc == 0
    (t, got), = outs.items()
    want = chain1.values[t]
    np.testing.assert_array_equal(got.view(np.int8).reshape(want.shape), want)
    assert len(np.unique(want)) > 10


@pytest.mark.parametrize("name,ops", [("chain1", (0, 1, 2)), ("chain2", (2, 3, 4)),
                                      ("chain2", (0, 1, 2, 3, 4))])
def test_ring_one_row_short_gives_wrong_numbers(request, name, ops):
    """Every ring at its least size works (the tests above); each one row short, with
    poisoning, gives wrong numbers: the rings are exact, and the runner really reads them."""
    chain1 = request.getfixturevalue(name)
    g = local_group(chain1.graph, ops)
    assert streaming.verify_schedule(chain1.graph, g) == []
    assert _run(chain1, g, poison=0xA5)[0] == 0
    for i, (t, rows) in enumerate(g.rings):
        rings = list(g.rings)
        rings[i] = (t, rows - 1)
        short = type(g)(ops=g.ops, rings=tuple(rings), schedule=g.schedule)
        assert streaming.verify_schedule(chain1.graph, short), "the checker agrees"
        if rows == 1:  # a ring of no rows is refused, not run
            with pytest.raises(PlannerError, match="held in 0 rows"):
                _run(chain1, short)
            continue
        rc, outs = _run(chain1, short, poison=0xA5)
        assert rc == 0
        (o, got), = outs.items()
        assert not np.array_equal(got.view(np.int8).reshape(chain1.values[o].shape),
                                  chain1.values[o]), f"ring of tensor {t} one row short"


def test_upconv_concat_conv_chain(chain2):
    g = local_group(chain2.graph, (2, 3, 4))
    assert {chain2.graph.tensors[t].name for t, _ in g.rings} == {"u", "cat"}
    rc, outs = _run(chain2, g, poison=0x33)
    assert rc == 0
    (t, got), = outs.items()
    np.testing.assert_array_equal(got.view(np.int8).reshape(chain2.values[t].shape),
                                  chain2.values[t])


def test_whole_unet_tail_chain_from_the_first_conv(chain2):
    """Every op of the model in one group: e is both internal (pool) and read by concat."""
    g = local_group(chain2.graph, (0, 1, 2, 3, 4))
    rc, outs = _run(chain2, g, poison=0x80)
    assert rc == 0
    (t, got), = outs.items()
    np.testing.assert_array_equal(got.view(np.int8).reshape(chain2.values[t].shape),
                                  chain2.values[t])


# -- stream_in and spill_rows through Python callbacks ----------------------------------------

def held_rows(graph, group, t: int) -> int:
    """Rows of external input t its line buffer holds under the schedule."""
    return streaming.held_rows(graph, group)[t]


class Storage:
    def __init__(self, nbytes: int = 1 << 16):
        self.data = bytearray(nbytes)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int]] = []

    def read(self, address: int, nbytes: int) -> bytes:
        self.reads.append((address, nbytes))
        if address + nbytes > len(self.data):
            raise IndexError(f"read past the storage at {address}")
        return bytes(self.data[address:address + nbytes])

    def write(self, address: int, data: bytes) -> None:
        self.writes.append((address, len(data)))
        if address + len(data) > len(self.data):
            raise IndexError(f"write past the storage at {address}")
        self.data[address:address + len(data)] = data


def test_stream_in_and_spill_rows_give_identical_results(chain2):
    m = chain2
    g = local_group(m.graph, (1, 2, 3, 4))  # the pool and the concat both read e
    inputs, outputs = _views(m.graph, g)
    e = next(t for t in inputs if m.graph.tensors[t].name == "e")
    (y,) = outputs
    rows = held_rows(m.graph, g, e)
    assert rows == 2
    st_ = Storage()
    e_bytes = m.values[e].tobytes()
    st_.data[4096:4096 + len(e_bytes)] = e_bytes
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                      stream_in={e: (rows, 4096)}, spill_rows={y: (1, 256)})
    bases = m.bases(prog, inputs, outputs, skip={e})
    assert bases[inputs.index(e)].size == rows * m.graph.tensors[e].shape[2] * 8
    crows.run_group(prog, bases, st_.read, st_.write, poison=0x77)
    row_e = len(e_bytes) // m.graph.tensors[e].shape[1]
    assert st_.reads == [(4096 + r * row_e, row_e) for r in range(m.graph.tensors[e].shape[1])]
    y_bytes = m.values[y].tobytes()
    row_y = len(y_bytes) // m.graph.tensors[y].shape[1]
    assert st_.writes == [(256 + r * row_y, row_y) for r in range(m.graph.tensors[y].shape[1])]
    assert bytes(st_.data[256:256 + len(y_bytes)]) == y_bytes
    # One row less of line buffer for e: the pool's band no longer fits.
    short = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                       stream_in={e: (rows - 1, 4096)}, spill_rows={y: (1, 256)})
    st2 = Storage()
    st2.data[:] = st_.data
    st2.data[256:256 + len(y_bytes)] = bytes(len(y_bytes))
    crows.run_group(short, m.bases(short, inputs, outputs, skip={e}), st2.read, st2.write,
                    poison=0x77)
    assert bytes(st2.data[256:256 + len(y_bytes)]) != y_bytes


def test_spill_rows_of_a_tensor_also_read_inside(chain2):
    """e is spilled row by row while the pool and the concat still read it from its line."""
    m = chain2
    g = local_group(m.graph, (0, 1, 2, 3, 4))
    ring = dict(g.rings)
    e = next(t for t in ring if m.graph.tensors[t].name == "e")
    spilled = type(g)(ops=g.ops, rings=tuple((t, r) for t, r in g.rings if t != e),
                      schedule=g.schedule)
    inputs, _ = _views(m.graph, g)
    y = m.graph.ops[4].outputs[0]
    outputs = [e, y]  # production order
    st_ = Storage()
    prog = group_program.encode_group(m.data, m.graph, spilled, inputs, outputs,
                                      spill_rows={e: (ring[e], 8192)})
    bases = m.bases(prog, inputs, outputs)
    crows.run_group(prog, bases, None, st_.write, poison=0x11)
    e_bytes = m.values[e].tobytes()
    assert bytes(st_.data[8192:8192 + len(e_bytes)]) == e_bytes
    np.testing.assert_array_equal(bases[len(inputs) + 1].view(np.int8),
                                  m.values[y].ravel())
    # Without a write callback the runner refuses instead of dropping rows.
    rc = crows.group_return_code(prog, m.bases(prog, inputs, outputs))
    assert rc == crows.TP_EIO_CALLBACK


def test_a_failing_callback_stops_the_run(chain2):
    m = chain2
    g = local_group(m.graph, (2, 3, 4))
    inputs, outputs = _views(m.graph, g)
    e = next(t for t in inputs if m.graph.tensors[t].name == "e")
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                      stream_in={e: (1, 1 << 20)})
    with pytest.raises(IndexError, match="read past the storage"):
        crows.run_group(prog, m.bases(prog, inputs, outputs, skip={e}), Storage().read)


# -- encode(): the group op of a planned graph --------------------------------------------------

def local_planned(source, groups):
    return streaming.apply_groups(source, groups)


def test_encode_reads_modes_from_the_plan(chain2):
    import dataclasses

    from planner.plan import Plan, Transfer

    m = chain2
    g = local_group(m.graph, (2, 3, 4))
    planned = local_planned(m.graph, [g])
    op_index = 2
    op = planned.ops[op_index]
    e = next(t for t in op.inputs if m.graph.tensors[t].name == "e")
    (y,) = op.outputs
    row_e = m.values[e].nbytes // m.graph.tensors[e].shape[1]
    row_y = m.values[y].nbytes // m.graph.tensors[y].shape[1]
    attrs = dict(op.attrs, stream_in=[[e, 16 * -(-row_e // 16)]],
                 spill_rows=[[y, 16 * -(-row_y // 16)]])
    planned = dataclasses.replace(planned, ops=(*planned.ops[:2],
                                                dataclasses.replace(op, attrs=attrs)))
    plan = Plan(model="rows_chain2", planner="test", num_steps=4, peak_bytes=0, segments=(),
                transfers=(Transfer("stream", e, 3, "flash", m.values[e].nbytes, 4096),
                           Transfer("spill_rows", y, 3, "flash", m.values[y].nbytes, 0)),
                stream_groups=(g,))
    got = group_program.encode(m.data, planned, plan, op_index)
    inputs, outputs = list(op.inputs), list(op.outputs)
    want = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                      stream_in={e: (1, 4096)}, spill_rows={y: (1, 0)})
    np.testing.assert_array_equal(got, want)
    modes = [v.mode for v in group_program.views_of(got)]
    assert modes[inputs.index(e)] == group_program.STREAM_IN
    assert modes[len(inputs)] == group_program.SPILL_ROWS
    assert modes[len(inputs) + 1:] == [group_program.RING] * len(g.rings)
    # Without the plan's transfers every external view is whole.
    whole = group_program.encode(m.data, planned, dataclasses.replace(plan, transfers=()),
                                 op_index)
    assert {v.mode for v in group_program.views_of(whole)[:len(inputs) + 1]} == \
        {group_program.WHOLE}
    st_ = Storage()
    st_.data[4096:4096 + m.values[e].nbytes] = m.values[e].tobytes()
    crows.run_group(got, m.bases(got, inputs, outputs, skip={e}), st_.read, st_.write, 0x42)
    assert bytes(st_.data[:m.values[y].nbytes]) == m.values[y].tobytes()
    with pytest.raises(PlannerError, match="no streamed group"):
        group_program.encode(m.data, planned, plan, 0)


# -- bad programs ------------------------------------------------------------------------------

def _full_bases(prog):
    """Buffers of each view's whole tensor: a fuzzed program that passes validation
    still stays inside them."""
    return [np.zeros(v.height * v.row_bytes + 64, np.uint8)
            for v in group_program.views_of(prog)]


def test_corrupted_programs_return_error_codes(chain1):
    m = chain1
    g = local_group(m.graph, (0, 1, 2))
    inputs, outputs = _views(m.graph, g)
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs)
    assert crows.check_program(prog) == 0
    n_views = int(prog[2])
    sched = len(prog) - 2 * int(prog[4])

    def code(mutate) -> int:
        bad = prog.copy()
        mutate(bad)
        return crows.group_return_code(bad, _full_bases(prog), check=False)

    assert code(lambda p: p.__setitem__(0, 0)) == crows.TP_EPROGRAM           # magic
    assert code(lambda p: p.__setitem__(5, len(p) + 1)) == crows.TP_EPROGRAM  # length
    assert code(lambda p: p.__setitem__(2, crows.MAX_VIEWS + 1)) == crows.TP_EPROGRAM
    assert code(lambda p: p.__setitem__(6 + 5 * 0 + 3, 0)) == crows.TP_EPROGRAM  # rows held
    first_op = 6 + 5 * n_views
    assert code(lambda p: p.__setitem__(first_op + 3, n_views)) == crows.TP_EPROGRAM  # view
    assert code(lambda p: p.__setitem__(first_op, 99)) == crows.TP_EPROGRAM  # kind
    assert code(lambda p: p.__setitem__(sched + 1, 1)) == crows.TP_ESCHEDULE  # row skipped
    assert code(lambda p: p.__setitem__(sched, 7)) == crows.TP_ESCHEDULE  # no such op
    short = np.concatenate([prog[:-2]])
    short[4] -= 1
    short[5] -= 2
    assert crows.group_return_code(short, _full_bases(prog)) == crows.TP_ESCHEDULE  # row missing
    assert crows.group_return_code(prog[:3], []) == crows.TP_EPROGRAM
    with pytest.raises(crows.CRowsError, match="TP_EPROGRAM"):
        crows.run_group(prog[:-1], _full_bases(prog))


def test_fuzzed_programs_never_crash(chain2):
    """Random word changes and cuts: each run returns 0 or an error code, inside the
    buffers (no crash, no write outside: guard bytes stay)."""
    m = chain2
    g = local_group(m.graph, (2, 3, 4))
    inputs, outputs = _views(m.graph, g)
    e = next(t for t in inputs if m.graph.tensors[t].name == "e")
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                      stream_in={e: (1, 64)}, spill_rows={outputs[0]: (1, 0)})
    rng = np.random.default_rng(5)
    codes = set()
    storage = Storage(1 << 20)
    for i in range(300):
        bad = prog.copy()
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(bad)))
            bad[at] = rng.choice([0, -1, 1, int(bad[at]) + int(rng.integers(-3, 4)),
                                  int(rng.integers(-2**31, 2**31 - 1))])
        if i % 10 == 0:
            bad = bad[:int(rng.integers(0, len(bad)))]
        bases = _full_bases(prog)
        for b in bases:
            b[-64:] = 0xEE
        try:
            codes.add(crows.group_return_code(bad, bases, storage.read, storage.write, 0x55,
                                              check=False))
        except IndexError:  # a fuzzed storage address past the test storage
            codes.add("callback")
        assert all((b[-64:] == 0xEE).all() for b in bases)
    assert crows.TP_EPROGRAM in codes and len(codes) >= 2


def test_stream_in_reads_only_the_rows_a_band_reads():
    """A 1x1 stride-2 conv reads rows 0, 2, 4, ... of its streamed input: the odd rows are
    never read from storage, and one row of line buffer is enough."""
    from benchmarks.models.tflite_builder import Builder

    b = Builder("rows_skip", seed=13)
    x = b.input("x", (1, 9, 6, 4))
    s = b.conv2d(x, 4, k=1, stride=2, name="s")
    b.output(b.conv2d(s, 5, k=3, name="y"))
    m = Model(b.finish())
    g = local_group(m.graph, (0, 1))
    inputs, outputs = _views(m.graph, g)
    t = m.graph.inputs[0]
    rows = held_rows(m.graph, g, t)
    assert rows == 1
    st_ = Storage()
    st_.data[1000:1000 + m.values[t].nbytes] = m.values[t].tobytes()
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                      stream_in={t: (rows, 1000)})
    bases = m.bases(prog, inputs, outputs, skip={t})
    crows.run_group(prog, bases, st_.read, None, poison=0xC3)
    assert st_.reads == [(1000 + r * 24, 24) for r in range(0, 9, 2)]
    (y,) = outputs
    np.testing.assert_array_equal(bases[len(inputs)].view(np.int8), m.values[y].ravel())
    # A load naming a view that is not streamed in is refused.
    load = next(i for i in range(6 + 5 * int(prog[2]), len(prog), 2) if prog[i] < 0
                and i >= len(prog) - 2 * int(prog[4]))
    bad = prog.copy()
    bad[load] = -1 - len(inputs)  # the output view
    assert crows.group_return_code(bad, m.bases(prog, inputs, outputs)) == crows.TP_ESCHEDULE


# -- the zoo models: every row-capable run as a group ---------------------------------------------

ZOO = ["tiny_unet_int8", "fcn_additive_int8", "deeplab_lite_int8", "mbv2_unet_int8",
       "irregular_int8", "unet_wide96_int8"]


def _chunks(graph, run: tuple[int, ...]) -> list[tuple[int, ...]]:
    """`run` cut into pieces the C limits take (ops and views per group)."""
    out, cur = [], []
    for i in run:
        trial = (*cur, i)
        if cur and (len(trial) > crows.MAX_OPS or
                    streaming.group_views(graph, streaming.schedule_group(graph, trial))
                    > crows.MAX_VIEWS):
            out.append(tuple(cur))
            cur = [i]
        else:
            cur.append(i)
    out.append(tuple(cur))
    return [c for c in out if len(c) >= 2]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_groups_are_bit_exact(name):
    """Each maximal run of row-capable ops of a zoo model runs as one group, its external
    inputs streamed in and its spillable outputs spilled row by row where the group op
    allows it, on line buffers of the sizes streaming.py gives: every output equals the
    reference interpreter's tensor."""
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / f"{name}.tflite"
    m = Model(path.read_bytes(), seed=3)
    runs = streaming.group_candidates(m.graph, SimpleNamespace(custom_kernels=True))
    groups = [c for run in runs for c in _chunks(m.graph, run)]
    assert groups, f"{name}: no row-capable run"
    checked = 0
    for ops in groups:
        g = local_group(m.graph, ops)
        planned = streaming.apply_groups(m.graph, [g])
        (op,) = [o for o in planned.ops if o.kind == OpKind.STREAMED_GROUP]
        inputs, outputs = list(op.inputs), list(op.outputs)

        def rows_of(entries):
            return {int(t): (int(nb) // streaming.row_bytes(m.graph.tensors[t]), 0)
                    for t, nb in entries}

        stream_in, spill = rows_of(op.attrs["stream_in"]), rows_of(op.attrs["spill_rows"])
        st_ = Storage(sum(m.graph.tensors[t].nbytes for t in (*stream_in, *spill)) + 16)
        at = 0
        for t in (*stream_in, *spill):
            (stream_in if t in stream_in else spill)[t] = (
                (stream_in if t in stream_in else spill)[t][0], at)
            if t in stream_in:
                st_.data[at:at + m.graph.tensors[t].nbytes] = m.values[t].tobytes()
            at += m.graph.tensors[t].nbytes
        prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs, stream_in,
                                          spill)
        bases = m.bases(prog, inputs, outputs, skip=set(stream_in))
        crows.run_group(prog, bases, st_.read, st_.write, poison=0xE7)
        for i, t in enumerate(outputs):
            want = m.values[t].tobytes()
            if t in spill:
                a = spill[t][1]
                got = bytes(st_.data[a:a + len(want)])
            else:
                got = bases[len(inputs) + i].tobytes()
            assert got == want, f"{name}: group {list(ops)} output {m.graph.tensors[t].name}"
            checked += 1
    assert checked


def test_buffers_are_checked_before_the_c_runner_sees_them(chain1):
    m = chain1
    g = local_group(m.graph, (0, 1, 2))
    inputs, outputs = _views(m.graph, g)
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs)
    bases = m.bases(prog, inputs, outputs)
    for v in range(len(inputs)):  # inputs read whole may be read-only (constants in place)
        bases[v].flags.writeable = False
    crows.run_group(prog, bases)
    ring = len(inputs) + len(outputs)
    small = list(bases)
    small[ring] = small[ring][:-1].copy()
    with pytest.raises(crows.CKernelError, match=f"group view {ring}: buffer of"):
        crows.run_group(prog, small)
    frozen = list(bases)
    frozen[len(inputs)] = bases[len(inputs)].copy()
    frozen[len(inputs)].flags.writeable = False
    with pytest.raises(crows.CKernelError, match="the group writes it"):
        crows.run_group(prog, frozen)
    with pytest.raises(crows.CKernelError, match="views, 2 buffers"):
        crows.run_group(prog, bases[:2])


_ASAN_FUZZ = """
import sys
from pathlib import Path
import numpy as np
import backends.c.kernels as ck
_build = ck.build_shared
ck.build_shared = lambda s, h, name, lib: Path(sys.argv[1]) if name == "crows" else \\
    _build(s, h, name, lib)
import test_rows_kernels as T
from backends.c import rows as crows
from backends.c import group_program
m = T._chain2()
for ops in ((2, 3, 4), (0, 1, 2, 3, 4)):
    g = T.local_group(m.graph, ops)
    inputs, outputs = T._views(m.graph, g)
    e = [t for t in inputs if m.graph.tensors[t].name == "e"]
    prog = group_program.encode_group(m.data, m.graph, g, inputs, outputs,
                                      stream_in={t: (1, 64) for t in e},
                                      spill_rows={outputs[0]: (1, 0)})
    rng = np.random.default_rng(9)
    st = T.Storage(1 << 22)
    for i in range(int(sys.argv[2])):
        bad = prog.copy()
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(0, len(bad)))
            bad[at] = rng.choice([0, -1, 1, 2, int(bad[at]) + int(rng.integers(-3, 4)),
                                  int(rng.integers(-2**31, 2**31 - 1))])
        try:
            crows.group_return_code(bad, T._full_bases(prog), st.read, st.write, 0x55,
                                    check=False)
        except IndexError:
            pass
print("fuzzed")
"""


def test_fuzzed_programs_are_clean_under_asan_and_ubsan(tmp_path):
    """The runner built with AddressSanitizer and UndefinedBehaviorSanitizer (aborting on
    the first report) over fuzzed programs: no out-of-bounds access, no overflow."""
    import shutil
    import subprocess
    import sys

    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc for the sanitizer build")
    asan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                          text=True).stdout.strip()
    if not asan.startswith("/"):
        pytest.skip("gcc has no libasan here")
    lib = tmp_path / "libtprows_asan.so"
    build = subprocess.run(
        [cc, "-std=c99", "-O1", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=undefined", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
         "-I", str(crows.C_DIR), "-o", str(lib), *(str(crows.C_DIR / s) for s in crows.SOURCES)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    script = tmp_path / "fuzz.py"
    script.write_text(_ASAN_FUZZ)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0",
               PYTHONPATH=f"{root}{os.pathsep}{root / 'tests'}")
    done = subprocess.run([sys.executable, str(script), str(lib), "250"], capture_output=True,
                          text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0 and "fuzzed" in done.stdout, done.stderr[-2000:]
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr
