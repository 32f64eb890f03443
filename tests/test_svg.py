from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from backends.svg import (
    ParetoPoint,
    pareto_front,
    render_layout_svg,
    render_pareto_svg,
    write_layout_svg,
)
from planner.analysis import line_buffer_bytes
from planner.checker import assert_valid
from planner.device import load_profile
from planner.ir import Graph, Op, OpKind, Role, Tensor
from planner.plan import Fusion, Plan, Segment, Transfer
from planner.planners.base import Request, registry

NS = {"s": "http://www.w3.org/2000/svg"}
STORAGE = {"flash": 1 << 20}


def skip_graph() -> Graph:
    """in -> c0 -> c1 -> c2 -> c3 -> concat(c3, c0) -> conv: c0 is cold over steps 3..4."""
    def act(i, c, role=Role.ACTIVATION):
        return Tensor(i, f"t{i}", (1, 4, 4, c), "int8", 16 * c, role, i, 3)

    # The head conv's int8 OHWI filter (a constant, id 7): the fused kernel needs one.
    tensors = (act(0, 2, Role.INPUT), act(1, 4), act(2, 4), act(3, 4), act(4, 4), act(5, 8),
               act(6, 2, Role.OUTPUT), Tensor(7, "filter", (2, 3, 3, 8), "int8", 144,
                                              Role.CONSTANT))
    ops = tuple(Op(k, f"conv{k}", "CONV_2D", OpKind.CONV, (k,), (k + 1,), (),
                   {"kernel": (3, 3)}) for k in range(4))
    ops += (Op(4, "cat", "CONCATENATION", OpKind.CONCAT, (4, 1), (5,), (), {"axis": 3}),
            Op(5, "head", "CONV_2D", OpKind.CONV, (5, 7), (6,), (), {"kernel": (3, 3)}))
    return Graph("skip", "tflite", tensors, ops, (0,), (6,))


def spill_plan(graph: Graph) -> Plan:
    """t1 spilled after its read at step 2, fetched back for the concat at step 5."""
    segs = (
        Segment(0, 0, 1, 0, 32), Segment(1, 1, 2, 32, 64), Segment(2, 2, 3, 96, 64),
        Segment(3, 3, 4, 0, 64), Segment(4, 4, 5, 64, 64), Segment(1, 5, 5, 128, 64),
        Segment(5, 5, 6, 192, 128), Segment(6, 6, 6, 0, 32),
    )
    transfers = (Transfer("spill", 1, 2, "flash", 64), Transfer("fetch", 1, 5, "flash", 64))
    return Plan(graph.name, "hand", graph.num_steps, 320, segs, transfers=transfers)


def stream_plan(graph: Graph) -> Plan:
    """t1 spilled, then streamed into the fused concat+conv at step 6 through a line buffer."""
    line = line_buffer_bytes(graph, 1, 5)
    segs = (
        Segment(0, 0, 1, 0, 32), Segment(1, 1, 2, 32, 64), Segment(2, 2, 3, 96, 64),
        Segment(3, 3, 4, 0, 64), Segment(4, 4, 6, 64, 64), Segment(6, 6, 6, 0, 32),
        Segment(1, 6, 6, 128, line, role="line_buffer"),
    )
    transfers = (Transfer("spill", 1, 2, "flash", 64), Transfer("stream", 1, 6, "flash", 64))
    return Plan(graph.name, "hand", graph.num_steps, 128 + line, segs, transfers=transfers,
                fusions=(Fusion(4, 5),))


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on malformed XML


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{{{NS['s']}}}{tag}") if e.get("class") == cls]


@pytest.mark.parametrize("make", [spill_plan, stream_plan])
def test_layout_has_one_rect_per_segment_and_the_lines(make):
    graph = skip_graph()
    plan = make(graph)
    assert_valid(graph, plan, STORAGE)  # the fixture itself is a legal plan
    root = parse(render_layout_svg(graph, plan, budget=300))
    segs = by_class(root, "rect", "seg")
    assert len(segs) == len(plan.segments)
    assert sorted(int(r.get("data-tensor")) for r in segs) == \
        sorted(s.tensor for s in plan.segments)
    assert len(by_class(root, "g", "budget")) == 1
    assert len(by_class(root, "g", "peak")) == 1
    assert by_class(root, "rect", "away"), "the spilled stretch is drawn in the storage band"
    assert len(by_class(root, "polygon", "spill-marker")) == 1


def test_spill_and_fetch_markers_and_storage_stretch():
    graph = skip_graph()
    root = parse(render_layout_svg(graph, spill_plan(graph)))
    assert len(by_class(root, "polygon", "fetch-marker")) == 1
    assert not by_class(root, "g", "budget")  # no budget, no line
    away = by_class(root, "rect", "away")
    assert len(away) == 1
    assert "steps 3..4" in away[0].find("s:title", NS).text


def test_stream_draws_hatched_line_buffer_and_fusion_columns():
    graph = skip_graph()
    root = parse(render_layout_svg(graph, stream_plan(graph), budget=256))
    hatched = [r for r in by_class(root, "rect", "seg") if r.get("fill") == "url(#hatch)"]
    assert len(hatched) == 1
    assert len(by_class(root, "rect", "fusion")) == 2  # the concat's and the conv's step


def test_segment_geometry_follows_steps_and_offsets():
    graph = skip_graph()
    plan = spill_plan(graph)
    root = parse(render_layout_svg(graph, plan))
    rects = by_class(root, "rect", "seg")
    wide = {int(r.get("data-tensor")): float(r.get("width")) for r in rects}
    # t2 lives two steps, t6 one: twice the width.
    assert wide[2] == pytest.approx(2 * wide[6], rel=1e-3)
    heights = {int(r.get("data-tensor")): float(r.get("height")) for r in rects}
    assert heights[5] == pytest.approx(4 * heights[0], rel=1e-3)  # 128 B vs 32 B


def test_writer_and_real_planner_plan(tmp_path):
    graph = skip_graph()
    plan = registry()["tflm-greedy"](Request(graph, load_profile("none")))
    paths = write_layout_svg(graph, plan, tmp_path / "skip.tflite", tmp_path, budget=1000)
    assert [p.name for p in paths] == ["skip.tflm-greedy.layout.svg"]
    root = parse(paths[0].read_text())
    assert len(by_class(root, "rect", "seg")) == len(plan.segments)
    assert not by_class(root, "rect", "away")


def test_names_are_escaped():
    graph = skip_graph()
    t = graph.tensors[1]
    odd = Tensor(t.id, "a<b>&'c\"", t.shape, t.dtype, t.nbytes, t.role, t.source_index,
                 t.channel_axis)
    graph = Graph(graph.name, graph.source_format, (graph.tensors[0], odd, *graph.tensors[2:]),
                  graph.ops, graph.inputs, graph.outputs)
    parse(render_layout_svg(graph, spill_plan(graph)))


def test_pareto_plot_series_points_and_front():
    points = [
        ("unet", 300_000, 0.0), ("unet", 200_000, 0.5, "75%"), ("unet", 250_000, 0.6),
        {"series": "fcn", "peak_bytes": 90_000, "est_transfer_seconds": 0.1},
        ParetoPoint("fcn", 80_000, 0.3, "50%"),
    ]
    root = parse(render_pareto_svg(points, "peak vs time <test>"))
    assert len(by_class(root, "circle", "point")) == 5
    assert len(by_class(root, "path", "front")) == 2
    front = pareto_front([ParetoPoint("u", 300_000, 0.0), ParetoPoint("u", 200_000, 0.5),
                          ParetoPoint("u", 250_000, 0.6)])
    assert [p.peak_bytes for p in front] == [200_000, 300_000]
    parse(render_pareto_svg([], "empty"))
