"""TFLM lifetimes, cold ranges, fusion groups, line buffers and both lower bounds, by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from frontends import load_model
from planner.analysis import (
    Buffer,
    ColdRange,
    FusionGroup,
    buffers,
    cold_ranges,
    fusion_groups,
    lifetimes,
    line_buffer_bytes,
    load_bound,
    op_working_set,
    touches,
    working_set_bound,
)
from planner.checker import check
from planner.device import load_profile
from planner.ir import Graph, OpKind, Role
from planner.planners.base import Request, registry
from tests.conftest import ROOT, shared_models
from tests.graph_factory import GraphBuilder, small_unet


def life_graph() -> Graph:
    """x -> conv a (+scratch) -> conv b -> conv dead; concat[a, b] -> conv y; outputs y, b.

    ids: x 0, a 1, b 2, dead 3, c 4, y 5, scratch 6. Sizes 12, 20, 4, 4, 24, 8, 40 bytes.
    """
    g = GraphBuilder("life")
    x = g.input((1, 2, 2, 3))
    a = g.op(OpKind.CONV, [x], (1, 2, 2, 5), scratch_bytes=40, kernel=(3, 3))
    b = g.op(OpKind.CONV, [a], (1, 2, 2, 1), kernel=(1, 1))
    g.op(OpKind.CONV, [b], (1, 2, 2, 1), kernel=(1, 1))
    c = g.op(OpKind.CONCAT, [a, b], (1, 2, 2, 6), axis=3)
    y = g.op(OpKind.CONV, [c], (1, 2, 2, 2), kernel=(3, 3))
    graph = g.build([y, b])
    # The convs' constant filters come after these ids.
    assert [t.nbytes for t in graph.tensors][:7] == [12, 20, 4, 4, 24, 8, 40]
    assert graph.tensors[6].role == Role.SCRATCH
    assert all(t.role == Role.CONSTANT for t in graph.tensors[7:])
    return graph


def test_tflm_lifetimes() -> None:
    g = life_graph()
    assert g.num_steps == 6
    assert lifetimes(g) == {
        0: (0, 1),  # graph input: from step 0 to its last reader (op 0 at step 1)
        1: (1, 4),  # op 0 output: created at step 1, last read by the concat (op 3, step 4)
        2: (2, 5),  # graph output: lives to the last step although its last reader is op 3
        3: (3, 3),  # written, never read: only its producer's step
        4: (4, 5),
        5: (5, 5),
        6: (1, 1),  # scratch: only at its op's step
    }


def test_buffers_round_to_16_and_keep_tflm_order() -> None:
    g = life_graph()
    assert buffers(g) == [Buffer(0, 16, 0, 1), Buffer(1, 32, 1, 4), Buffer(2, 16, 2, 5),
                          Buffer(3, 16, 3, 3), Buffer(4, 32, 4, 5), Buffer(5, 16, 5, 5),
                          Buffer(6, 48, 1, 1)]


def test_scratch_requests_come_after_tensors_in_request_order() -> None:
    g = small_unet()
    scratch = [s for op in g.ops for s in op.scratch]
    assert len(scratch) == 2
    order = [b.tensor for b in buffers(g)]
    assert order[-2:] == scratch
    assert order[:-2] == sorted(order[:-2])
    for op in g.ops:
        for s in op.scratch:
            assert lifetimes(g)[s] == (op.index + 1, op.index + 1)


def test_unplanned_tensors_have_no_lifetime() -> None:
    g = GraphBuilder("consts")
    x = g.input((1, 2, 2, 1))
    w = g.tensor((3, 3), Role.CONSTANT)
    v = g.tensor((2,), Role.VARIABLE)
    z = g.tensor((0,))  # zero bytes
    y = g.op(OpKind.CONV, [x, w, v, z], (1, 2, 2, 1))
    graph = g.build([y])
    assert set(lifetimes(graph)) == {x, y}
    # An omitted optional input (-1) is no tensor at all.
    op = graph.ops[0]
    omitted = replace(graph, ops=(replace(op, inputs=(*op.inputs, -1)),))
    assert lifetimes(omitted) == lifetimes(graph)


def test_passthrough_and_unwritten_tensors() -> None:
    g = GraphBuilder("odd")
    x = g.input((1, 2, 2, 1))
    ghost = g.tensor((1, 2, 2, 1))  # read, never written, not an input
    y = g.op(OpKind.ELEMENTWISE, [x, ghost], (1, 2, 2, 1))
    z = g.op(OpKind.ELEMENTWISE, [y], (1, 2, 2, 1))
    graph = g.build([z, x])  # the input is also a graph output
    life = lifetimes(graph)
    assert life[x] == (0, 2)
    assert life[ghost] == (0, 1)  # TFLM allocates it from its creation time (-1) on
    assert life[y] == (1, 2) and life[z] == (2, 2)


def test_touches_and_cold_ranges() -> None:
    g = life_graph()
    assert touches(g, 1) == [1, 2, 4]
    assert touches(g, 2) == [2, 3, 4, 5]
    assert touches(g, 6) == [1]
    assert touches(g, 99) == []
    assert cold_ranges(g) == [ColdRange(1, 2, 4)]
    assert cold_ranges(g)[0].length == 2


def test_cold_ranges_longest_first_on_a_unet() -> None:
    g = small_unet()
    gaps = cold_ranges(g)
    assert [r.length for r in gaps] == sorted((r.length for r in gaps), reverse=True)
    # The first-level skip: made by op 0 (step 1), read by its pool (step 2), then by the
    # last concat (op 9, step 10).
    concat = g.ops[9]
    assert concat.kind == OpKind.CONCAT
    assert gaps[0] == ColdRange(concat.inputs[0], 2, 10)
    assert all(g.tensors[r.tensor].role != Role.SCRATCH for r in gaps)
    assert all(r.length > 1 for r in gaps)


def concat_graph(axis: int = 3, readers: tuple[OpKind, ...] = (OpKind.CONV,),
                 output: bool = False, second_input: bool = False, layout: str = "NHWC"
                 ) -> Graph:
    g = GraphBuilder("cat", layout=layout)
    shape = (1, 8, 4, 2) if layout == "NHWC" else (1, 2, 8, 4)
    cat_shape = list(shape)
    cat_shape[axis] *= 2
    x = g.input(shape)
    a = g.op(OpKind.CONV, [x], shape, kernel=(3, 3))
    c = g.op(OpKind.CONCAT, [x, a], tuple(cat_shape), axis=axis)
    outs = []
    for kind in readers:
        ins = [a, c] if second_input else [c]
        outs.append(g.op(kind, ins, shape, kernel=(3, 3)))
    return g.build(outs + ([c] if output else []))


@pytest.mark.parametrize("kwargs,expected", [
    ({}, [FusionGroup(1, 2)]),
    ({"layout": "NCHW", "axis": 1}, []),  # the fused kernels are NHWC only
    ({"axis": 1}, []),  # height concat: not a channel concat
    ({"axis": 2}, []),
    ({"layout": "NCHW", "axis": 3}, []),
    ({"readers": (OpKind.CONV, OpKind.CONV)}, [FusionGroup(1, None)]),  # two consumers
    ({"readers": (OpKind.CONV, OpKind.POOL)}, [FusionGroup(1, None)]),
    ({"readers": (OpKind.POOL,)}, [FusionGroup(1, None)]),
    ({"readers": (OpKind.DEPTHWISE_CONV,)}, [FusionGroup(1, None)]),
    ({"readers": ()}, [FusionGroup(1, None)]),  # a graph output with no reader
    ({"output": True}, [FusionGroup(1, None)]),  # the concat output is also a graph output
    ({"second_input": True}, [FusionGroup(1, None)]),  # the conv reads it as a 2nd input
])
def test_fusion_groups(kwargs: dict, expected: list[FusionGroup]) -> None:
    if kwargs.get("readers") == ():
        kwargs = {**kwargs, "output": True}
    assert fusion_groups(concat_graph(**kwargs)) == expected


def test_fusion_groups_on_the_unet() -> None:
    g = small_unet()
    groups = fusion_groups(g)
    assert groups == [FusionGroup(op.index, op.index + 1) for op in g.ops
                      if op.kind == OpKind.CONCAT]
    assert len(groups) == 2


def test_no_fusion_without_channels() -> None:
    g = GraphBuilder("flat")
    x = g.input((4, 6))
    c = g.op(OpKind.CONCAT, [x, x], (4, 12), axis=1)
    y = g.op(OpKind.CONV, [c], (4, 6))
    assert fusion_groups(g.build([y])) == []


def test_line_buffer_bytes() -> None:
    g = small_unet(h=16, w=24, channels=(4, 8, 16))
    skip = g.ops[9].inputs[0]  # (1, 16, 24, 4): 96 B per row
    assert g.tensors[skip].shape == (1, 16, 24, 4)
    assert line_buffer_bytes(g, skip, None) == 96  # one row into a concat
    assert line_buffer_bytes(g, skip, 10) == 3 * 96  # kernel-height rows into a 3x3 conv
    assert line_buffer_bytes(g, skip, 10, nbytes=16 * 24) == 80  # 1-channel part: 3 x 24 B
    tall = concat_graph(layout="NCHW", axis=1)
    assert line_buffer_bytes(tall, 0, None) == 16  # NCHW: 8 rows of 8 B, aligned to 16
    one_row = GraphBuilder("one_row")
    x = one_row.input((1, 1, 5, 3))
    c = one_row.op(OpKind.CONCAT, [x, x], (1, 1, 5, 6), axis=3)
    y = one_row.op(OpKind.CONV, [c], (1, 1, 5, 3), kernel=(3, 3))
    graph = one_row.build([y])
    assert line_buffer_bytes(graph, x, 1) == 16  # never more than the tensor (15 B)


@pytest.mark.parametrize("dilations,fused", [((1, 1), True), ((2, 2), False), ((2, 1), False)])
def test_dilated_conv_does_not_fuse(dilations: tuple[int, int], fused: bool) -> None:
    # A 3x3 conv with dilation 2 reads 5 rows that are not adjacent: a kernel-height
    # line buffer (3 rows, which line_buffer_bytes gives) cannot feed it. It once fused.
    g = GraphBuilder("dilated")
    x = g.input((1, 16, 4, 4))
    c = g.op(OpKind.CONCAT, [x, x], (1, 16, 4, 8), axis=3)
    y = g.op(OpKind.CONV, [c], (1, 16, 4, 4), kernel=(3, 3), dilations=dilations)
    graph = g.build([y])
    assert fusion_groups(graph) == [FusionGroup(0, 1 if fused else None)]
    if fused:
        assert line_buffer_bytes(graph, x, 1) == 3 * 16


def stream_graph(two_readers: bool = False) -> Graph:
    """x -> a -> m -> c, concat[a, c] -> d -> conv e; every tensor 16 rows of 16 B."""
    g = GraphBuilder("stream")
    x = g.input((1, 16, 4, 4))
    a = g.op(OpKind.CONV, [x], (1, 16, 4, 4), kernel=(3, 3))
    m = g.op(OpKind.CONV, [a], (1, 16, 4, 4), kernel=(3, 3))
    c = g.op(OpKind.CONV, [m], (1, 16, 4, 4), kernel=(3, 3))
    d = g.op(OpKind.CONCAT, [a, c], (1, 16, 4, 8), axis=3)
    e = g.op(OpKind.CONV, [d], (1, 16, 4, 4), kernel=(3, 3))
    outs = [e]
    if two_readers:
        outs.append(g.op(OpKind.POOL, [d], (1, 8, 2, 8), kernel=(2, 2)))
    return g.build(outs)


def test_load_bound_names_its_step() -> None:
    g = life_graph()
    lb = load_bound(g)
    # Step 1: x 16 + a 32 + scratch 48.
    assert (lb.bytes, lb.step, lb.op) == (96, 1, 0)
    s = load_bound(stream_graph())
    assert (s.bytes, s.step, s.op) == (1024, 4, 3)  # a, c and the concat output d
    assert "1024 B alive at step 4" in s.detail


def test_load_bound_at_step_zero_has_no_op() -> None:
    g = GraphBuilder("shrink")
    x = g.input((1, 8, 8, 8))
    y = g.op(OpKind.POOL, [x], (1, 1, 1, 8))
    b = load_bound(g.build([y]))
    assert (b.bytes, b.step, b.op) == (512 + 16, 1, 0)
    empty = Graph("empty", "tflite", (), (), (), ())
    assert load_bound(empty).bytes == 0 and working_set_bound(empty).bytes == 0


def test_working_set_bound_without_streaming() -> None:
    # No storage, no streaming; concat+conv fusion needs no storage and still counts: the
    # concat output never exists, the conv holds both concat inputs whole (as many bytes).
    g = stream_graph()
    assert op_working_set(g, 3, can_stream=False)[0] == 0
    assert op_working_set(g, 4, can_stream=False)[0] == 256 + 512
    ws = working_set_bound(g, can_stream=False)
    assert (ws.bytes, ws.step, ws.op) == (768, 5, 4)
    assert "op 4 CONV 'op4'" in ws.detail
    # Without a fusible conv the concat holds its inputs and its output whole.
    g2 = stream_graph(two_readers=True)
    ws2 = working_set_bound(g2, can_stream=False)
    assert (ws2.bytes, ws2.step, ws2.op) == (1024, 4, 3)
    assert "op 3 CONCAT 'op3'" in ws2.detail


def test_working_set_bound_with_streaming() -> None:
    g = stream_graph()
    assert op_working_set(g, 3)[0] == 0  # fused into its conv: never materialised
    # The conv: output 256 + two inputs streamed through 3 rows of 16 B each.
    assert op_working_set(g, 4)[0] == 256 + 2 * 48
    ws = working_set_bound(g)
    assert (ws.bytes, ws.step, ws.op) == (512, 1, 0)  # first conv: x in, a out
    assert ws.detail.startswith("op 0 CONV 'op0'")
    # Two readers: the concat streams its inputs by single rows but writes its output.
    g2 = stream_graph(two_readers=True)
    assert op_working_set(g2, 3)[0] == 512 + 2 * 16
    assert op_working_set(g2, 4)[0] == 256 + 512


def test_bounds_order_on_small_graphs() -> None:
    for g in (life_graph(), stream_graph(), stream_graph(True), small_unet(),
              small_unet(transpose_scratch=False)):
        load = load_bound(g).bytes
        stock = working_set_bound(g, can_stream=False, can_fuse=False).bytes
        assert load >= stock >= working_set_bound(g, can_stream=False).bytes
        assert working_set_bound(g, can_stream=False).bytes >= working_set_bound(g).bytes
        # Without fused kernels streaming is impossible too: storage alone changes nothing.
        assert working_set_bound(g, can_stream=True, can_fuse=False).bytes == stock


def test_working_set_bound_on_the_unet_names_the_transpose_conv() -> None:
    g = small_unet(h=16, w=24, channels=(4, 8, 16))
    ws = working_set_bound(g)
    # The last transpose conv: 8x12x8 in, 16x24x4 out, int32 scratch 16x24x4x4.
    op = g.ops[ws.op]
    assert op.kind == OpKind.TRANSPOSE_CONV
    assert ws.bytes == 8 * 12 * 8 + 16 * 24 * 4 + 16 * 24 * 4 * 4
    assert ws.step == ws.op + 1


BUNDLED = sorted((ROOT / "benchmarks" / "models").glob("*.tflite")) + \
    sorted((ROOT / "benchmarks" / "models").glob("*.onnx"))


@pytest.mark.parametrize("path", BUNDLED + shared_models(), ids=lambda p: p.name)
def test_bounds_and_greedy_on_real_models(path: Path) -> None:
    graph = load_model(path)
    load, ws0, ws = (load_bound(graph), working_set_bound(graph, can_stream=False),
                     working_set_bound(graph))
    stock = working_set_bound(graph, can_stream=False, can_fuse=False)
    assert load.bytes >= stock.bytes >= ws0.bytes >= ws.bytes > 0
    assert 0 <= load.step < graph.num_steps and (load.op is None) == (load.step == 0)
    assert ws.op is not None and ws.step == ws.op + 1
    bufs = buffers(graph)
    live = sum(b.size for b in bufs if b.first <= load.step <= b.last)
    assert live == load.bytes
    assert all(b.size % 16 == 0 and 0 <= b.first <= b.last < graph.num_steps for b in bufs)
    plan = registry()["tflm-greedy"](Request(graph, load_profile("none")))
    assert check(graph, plan, {}) == []
    assert plan.peak_bytes >= load.bytes
    for group in fusion_groups(graph):
        concat = graph.ops[group.concat]
        assert concat.kind == OpKind.CONCAT
        if group.conv is not None:
            assert graph.consumers()[concat.outputs[0]] == [group.conv]
