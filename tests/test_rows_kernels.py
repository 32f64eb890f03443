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
from planner.errors import PlannerError

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


# -- whole groups through tp_group_run -------------------------------------------------------

def _last_row(graph, op, t: int, r: int) -> int:
    """The last row of input tensor t that output row r of op reads (as tp_rows.c)."""
    h = graph.tensors[t].shape[1]
    oh = graph.tensors[op.outputs[0]].shape[1]
    k = op.attrs.get("kernel", (1, 1))[0]
    s = op.attrs.get("strides", (1, 1))[0]
    if op.op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
        pt = group_program.same_padding(h, oh, k, s) if op.attrs.get("padding") == "same" else 0
        return min(h - 1, r * s - pt + k - 1)
    if op.op_type == "TRANSPOSE_CONV":
        pt = group_program.tconv_padding(oh, k, s, op.attrs.get("padding") == "same")
        return min(h - 1, (r + pt) // s)
    return r


def _row_inputs(op) -> list[int]:
    if op.op_type == "TRANSPOSE_CONV":
        return [op.inputs[2]]
    if op.op_type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return [op.inputs[0]]
    return list(op.inputs)


def local_group(graph, ops: tuple[int, ...]):
    """A StreamGroup for consecutive `ops`: a demand-driven schedule (each sink's rows in
    order, producers' rows computed just before they are first needed) and the least ring
    per internal tensor under it (what planner/streaming.py derives; a test stand-in)."""
    from planner.plan import StreamGroup

    members = [graph.ops[i] for i in ops]
    made = {op.outputs[0]: pos for pos, op in enumerate(members)}
    used_in = {t for op in members for t in op.inputs}
    consumers = graph.consumers()
    outside = {t for t in made if t in graph.outputs or
               any(c not in ops for c in consumers.get(t, []))}
    done = [0] * len(members)
    schedule: list[tuple[int, int]] = []
    newest: dict[int, int] = {}
    span: dict[int, int] = {}

    def compute(pos: int, r: int) -> None:
        op = members[pos]
        for t in _row_inputs(op):
            if t in made:
                while done[made[t]] <= _last_row(graph, op, t, r):
                    compute(made[t], done[made[t]])
        for t in _row_inputs(op):  # every row read is still held: ring >= newest - read + 1
            if t in made:
                lo = r if op.op_type in ("ADD", "MUL", "CONCATENATION") else 0
                first = lo
                if op.op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D",
                                  "AVERAGE_POOL_2D", "TRANSPOSE_CONV"):
                    first = _first_row(graph, op, t, r)
                if first <= _last_row(graph, op, t, r):
                    span[t] = max(span.get(t, 1), newest[t] - first + 1)
        schedule.append((pos, r))
        newest[op.outputs[0]] = r
        done[pos] += 1

    sinks = [pos for pos, op in enumerate(members) if op.outputs[0] not in used_in]
    # Sinks first, then rows nobody reads (a VALID pool's last input row): every row once.
    for pos in [*sinks, *range(len(members))]:
        while done[pos] < graph.tensors[members[pos].outputs[0]].shape[1]:
            compute(pos, done[pos])
    rings = tuple((t, span.get(t, 1)) for t in made if t not in outside)
    return StreamGroup(ops=tuple(ops), rings=rings, schedule=tuple(schedule))


def _first_row(graph, op, t: int, r: int) -> int:
    h = graph.tensors[t].shape[1]
    oh = graph.tensors[op.outputs[0]].shape[1]
    k = op.attrs.get("kernel", (1, 1))[0]
    s = op.attrs.get("strides", (1, 1))[0]
    if op.op_type == "TRANSPOSE_CONV":
        pt = group_program.tconv_padding(oh, k, s, op.attrs.get("padding") == "same")
        return max(0, -(-(r + pt - k + 1) // s))
    pt = group_program.same_padding(h, oh, k, s) if op.attrs.get("padding") == "same" else 0
    return max(0, r * s - pt)


def _views(graph, group):
    """The group op's views as apply_groups lists them: external inputs in order of first
    read, external outputs in order of production."""
    made = {graph.ops[i].outputs[0] for i in group.ops}
    ring_ts = {t for t, _ in group.rings}
    inputs = list(dict.fromkeys(t for i in group.ops for t in graph.ops[i].inputs
                                if t >= 0 and t not in made))
    outputs = [graph.ops[i].outputs[0] for i in group.ops
               if graph.ops[i].outputs[0] not in ring_ts]
    return inputs, outputs


class Model:
    """A built .tflite: its graph, constants and every tensor of a reference run."""

    def __init__(self, data: bytes, seed: int = 0):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from backends.tflite_io import read_model
        from frontends.tflite_frontend import parse_tflite

        self.data = data
        self.graph = parse_tflite(data)
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
    assert _run(chain1, g, poison=0xA5)[0] == 0
    for i, (t, rows) in enumerate(g.rings):
        rings = list(g.rings)
        rings[i] = (t, rows - 1)
        short = type(g)(ops=g.ops, rings=tuple(rings), schedule=g.schedule)
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
