"""The exact planner on planned graphs with streamed group ops (issue #15): which external
inputs a group reads row by row from storage (stream_in) and which outputs it writes row
by row to storage as it produces them (spill_rows), chosen jointly with everything else."""

from __future__ import annotations

import pytest

from planner.costs import plan_transfer_seconds, stream_overhead_seconds, transfer_seconds
from planner.device import load_profile
from planner.errors import InfeasibleBudget
from planner.ir import DTYPE_BYTES, Graph, Op, OpKind, Role, Tensor
from planner.planners.base import Request, registry
from planner.planners.ilp.model import Stream, build_problem

PLAN = registry()
LIMIT = 20  # seconds; the graphs are tiny and both solvers prove them in well under that


class _Graph:
    """A planned graph written by hand, as streaming.apply_groups would write it."""

    def __init__(self, name: str):
        self.name = name
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []

    def tensor(self, shape, role=Role.ACTIVATION, name=None) -> int:
        n = 1
        for d in shape:
            n *= d
        tid = len(self.tensors)
        axis = 3 if len(shape) == 4 else None
        self.tensors.append(Tensor(tid, name or f"t{tid}", tuple(shape), "int8",
                                   n * DTYPE_BYTES["int8"], role, tid, axis))
        return tid

    def op(self, kind, inputs, outputs, scratch=(), **attrs) -> None:
        index = len(self.ops)
        name = f"group{attrs['group']}" if kind == OpKind.STREAMED_GROUP else f"op{index}"
        op_type = "TINYPLAN_STREAMED_GROUP" if kind == OpKind.STREAMED_GROUP else "CUSTOM"
        self.ops.append(Op(index, name, op_type, kind, tuple(inputs), tuple(outputs),
                           tuple(scratch), attrs))

    def build(self, inputs, outputs) -> Graph:
        tensors = tuple(Tensor(t.id, t.name, t.shape, t.dtype, t.nbytes, Role.OUTPUT,
                               t.source_index, t.channel_axis) if t.id in outputs else t
                        for t in self.tensors)
        return Graph(self.name, "tflite", tensors, tuple(self.ops), tuple(inputs),
                     tuple(outputs))


def skip_graph() -> Graph:
    """A group producing a big skip tensor (row-spillable) read again two ops later.

    Working sets: the group 6656 B whole, 3072 B with the skip row-spilled (2304 B with its
    input streamed too); the last op 4864 B (skip + e + out): the optimum is 4864 B, and only a
    row spill of the skip gets there.
    """
    g = _Graph("rows_out")
    x = g.tensor((1, 16, 16, 4), Role.INPUT, "input")  # 1024 B
    skip = g.tensor((1, 16, 16, 16))  # 4096 B, 256 B a row
    d = g.tensor((1, 8, 8, 8))  # 512 B
    e = g.tensor((1, 8, 8, 8))
    out = g.tensor((1, 16, 16, 1))  # 256 B
    ring = g.tensor((4, 16, 8), Role.SCRATCH, "t/ring")  # 512 B
    g.op(OpKind.STREAMED_GROUP, [x], [skip, d], [ring], kernel="tinyplan_group", group=0,
         members=[0, 1, 2], stream_in=[[x, 256]], spill_rows=[[skip, 512]])
    g.op(OpKind.CONV, [d], [e], kernel=(1, 1))
    g.op(OpKind.OTHER, [skip, e], [out])
    return g.build([x], [out])


def stream_graph() -> Graph:
    """A big input only the group reads: streaming it in is the only way below 5632 B.

    Input 4096 B (resident at step 0 whatever happens), group output 1024 B, ring 512 B;
    streamed through its 512 B of lines the group needs 2048 B: the optimum is 4096 B.
    """
    g = _Graph("stream_in")
    x = g.tensor((1, 32, 32, 4), Role.INPUT, "input")  # 4096 B, 128 B a row
    d = g.tensor((1, 16, 16, 4))  # 1024 B
    out = g.tensor((1, 16, 16, 4))
    ring = g.tensor((4, 32, 4), Role.SCRATCH, "t/ring")  # 512 B
    g.op(OpKind.STREAMED_GROUP, [x], [d], [ring], kernel="tinyplan_group", group=0,
         members=[0, 1], stream_in=[[x, 512]], spill_rows=[])
    g.op(OpKind.CONV, [d], [out], kernel=(1, 1))
    return g.build([x], [out])


def geometry_ok(p) -> None:
    """Segments aligned, inside the peak, and apart in the arena wherever alive together."""
    for s in p.segments:
        assert s.offset % 16 == 0 and s.end <= p.peak_bytes
    for n, a in enumerate(p.segments):
        for b in p.segments[n + 1:]:
            assert not (a.overlaps_in_time(b) and a.overlaps_in_space(b)), (a, b)


def plan(graph, solver="cpsat", profile="qspi-flash", **kw):
    prof = load_profile(profile)
    return PLAN["ilp"](Request(graph, prof, time_limit=LIMIT, solver=solver, **kw))


def test_model_points():
    g = skip_graph()
    problem = build_problem(g, load_profile("qspi-flash"))
    by_tensor = {i.tensor: i for i in problem.items if i.part is None}
    x, skip = by_tensor[0], by_tensor[1]
    assert [p.stream for p in x.points] == [Stream.NONE, Stream.GROUP]
    assert x.line_units == {1: 256 // 16}
    assert [p.stream for p in skip.points] == [Stream.ROWS_OUT, Stream.NONE]
    assert skip.line_units == {0: 512 // 16}
    assert problem.resident_sites() == []  # group ops read their streams on their own
    assert all(i.part is None for i in problem.items if i.tensor in (0, 1))  # no splits


@pytest.mark.parametrize("solver", ["cpsat", "pulp-cbc"])
def test_row_spill_reaches_the_optimum(solver):
    g = skip_graph()
    p = plan(g, solver)
    geometry_ok(p)
    assert p.status == "optimal" and p.peak_bytes == p.bound_bytes == 4864
    kinds = {(t.kind, t.tensor) for t in p.transfers}
    assert ("spill_rows", 1) in kinds and ("fetch", 1) in kinds
    assert not [s for s in p.segments_of(1) if s.first == 1]  # never whole at its creation
    line = [s for s in p.segments if s.tensor == 1 and s.role == "line_buffer"]
    assert [(s.first, s.last, s.size) for s in line] == [(1, 1, 512)]
    rows = 16
    flash = load_profile("qspi-flash").storages[0]
    assert p.est_transfer_seconds == pytest.approx(plan_transfer_seconds(g, p, load_profile(
        "qspi-flash")))
    spill_rows = [t for t in p.transfers if t.kind == "spill_rows"][0]
    assert transfer_seconds(flash, "spill_rows", spill_rows.nbytes, rows) > transfer_seconds(
        flash, "spill", spill_rows.nbytes, rows)


@pytest.mark.parametrize("solver", ["cpsat", "pulp-cbc"])
def test_group_stream_in_reaches_the_optimum(solver):
    g = stream_graph()
    p = plan(g, solver)
    geometry_ok(p)
    assert p.status == "optimal" and p.peak_bytes == p.bound_bytes == 4096
    assert [(t.kind, t.step) for t in p.transfers if t.tensor == 0] == [("spill", 0),
                                                                          ("stream", 1)]
    line = [s for s in p.segments if s.tensor == 0 and s.role == "line_buffer"]
    assert [(s.first, s.last, s.size) for s in line] == [(1, 1, 512)]


@pytest.mark.parametrize("profile", ["qspi-flash", "mixed"])
def test_solvers_agree_on_transfer_time(profile):
    for graph in (skip_graph(), stream_graph()):
        a, b = plan(graph, "cpsat", profile), plan(graph, "pulp-cbc", profile)
        assert a.status == b.status == "optimal"
        assert a.peak_bytes == b.peak_bytes
        assert a.est_transfer_seconds == pytest.approx(b.est_transfer_seconds, abs=2e-6)
        geometry_ok(a)
        geometry_ok(b)


def test_nothing_streams_without_storage():
    p = plan(skip_graph(), profile="none")
    assert p.transfers == () and p.peak_bytes == 1024 + 4096 + 512 + 512


def test_below_the_bound_is_infeasible():
    with pytest.raises(InfeasibleBudget):
        plan(skip_graph(), budget=4848)


def test_overhead_counts_member_rows():
    prof = load_profile("qspi-flash")
    # No source graph: the group's own output rows (16 + 8) stand for its members'.
    assert stream_overhead_seconds(skip_graph(), prof) == pytest.approx(24 * 0.2e-6)


def test_row_overhead_is_a_profile_field(tmp_path):
    from planner.errors import PlannerError

    assert load_profile("qspi-flash").row_overhead_s == pytest.approx(0.2e-6)
    path = tmp_path / "p.toml"
    path.write_text('sram = "64KiB"\nrow_overhead_us = 1.5\n')
    prof = load_profile(str(path))
    assert prof.row_overhead_s == pytest.approx(1.5e-6)
    assert stream_overhead_seconds(skip_graph(), prof) == pytest.approx(24 * 1.5e-6)
    path.write_text('sram = "64KiB"\nrow_overhead_us = -1\n')
    with pytest.raises(PlannerError, match="row_overhead_us"):
        load_profile(str(path))


def chain_graph() -> Graph:
    """Two groups: the first may write its skip row by row, the second read it row by row.

    The skip (4096 B) then never exists whole in the arena: both groups need 1792 B.
    """
    g = _Graph("chain")
    x = g.tensor((1, 16, 16, 1), Role.INPUT, "input")  # 256 B
    skip = g.tensor((1, 16, 16, 16))  # 4096 B
    d = g.tensor((1, 8, 8, 8))  # 512 B
    e = g.tensor((1, 8, 8, 8))
    out = g.tensor((1, 16, 16, 1))  # 256 B
    ring0 = g.tensor((4, 16, 8), Role.SCRATCH, "a/ring")  # 512 B
    ring1 = g.tensor((4, 16, 8), Role.SCRATCH, "b/ring")
    g.op(OpKind.STREAMED_GROUP, [x], [skip, d], [ring0], kernel="tinyplan_group", group=0,
         members=[0, 1], stream_in=[], spill_rows=[[skip, 512]])
    g.op(OpKind.CONV, [d], [e], kernel=(1, 1))
    g.op(OpKind.STREAMED_GROUP, [skip, e], [out], [ring1], kernel="tinyplan_group", group=1,
         members=[3, 4], stream_in=[[skip, 512]], spill_rows=[])
    return g.build([x], [out])


@pytest.mark.parametrize("solver", ["cpsat", "pulp-cbc"])
def test_row_spilled_then_streamed_never_whole(solver):
    p = plan(chain_graph(), solver)
    geometry_ok(p)
    assert p.status == "optimal" and p.peak_bytes == 1792
    assert [(t.kind, t.step) for t in p.transfers if t.tensor == 1] == [("spill_rows", 1),
                                                                          ("stream", 3)]
    assert p.segments_of(1) == []
    assert sorted(s.first for s in p.segments if s.tensor == 1) == [1, 3]  # two line buffers
