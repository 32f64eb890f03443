from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from backends.reports.svg import (
    KNOWN_SERIES,
    ParetoPoint,
    pareto_front,
    render_layout_svg,
    render_pareto_svg,
    series_style,
    write_layout_svg,
)
from planner.analysis import line_buffer_bytes
from planner.checker import assert_valid
from planner.device import load_profile
from planner.ir import Graph, Op, OpKind, Role, Tensor
from planner.plan import Fusion, Plan, Segment, StreamGroup, Transfer
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
    assert len(by_class(root, "path", "point")) == 5
    assert len(by_class(root, "path", "front")) == 2
    front = pareto_front([ParetoPoint("u", 300_000, 0.0), ParetoPoint("u", 200_000, 0.5),
                          ParetoPoint("u", 250_000, 0.6)])
    assert [p.peak_bytes for p in front] == [200_000, 300_000]
    parse(render_pareto_svg([], "empty"))


def test_pareto_zooms_past_an_outlier_and_labels_budgets():
    points = [("ilp", 200_000, 0.4, "75%"), ("ilp", 240_000, 0.1, "90%"),
              ("tflm-greedy", 300_000, 0.0), ("greedy-by-size", 300_000, 0.0),
              ("linear", 1_200_000, 0.0)]
    root = parse(render_pareto_svg(points, "zoom", {"75%": 225_000, "90%": 270_000}))
    pts = by_class(root, "path", "point")
    far = [p for p in pts if p.get("data-outlier") == "1"]
    assert [p.get("data-series") for p in far] == ["linear"]
    text = ET.tostring(root, "unicode")
    assert "linear: 1,200,000 B" in text and "budget 75%" in text and "budget 90%" in text
    ticks = [e.text for e in root.iter(f"{{{NS['s']}}}text") if e.text and e.text.endswith(" KiB")]
    assert all(float(t.split()[0].replace(",", "")) < 400 for t in ticks)  # zoomed axis
    # Coinciding planners: distinct shapes and colours, and the tooltip names both.
    a, b = (p for p in pts if p.get("data-series") in ("tflm-greedy", "greedy-by-size"))
    assert a.get("d") != b.get("d") and a.get("stroke") != b.get("stroke")
    assert "same point: greedy-by-size" in a.find("s:title", NS).text
    assert len(set(series_style(list(KNOWN_SERIES)).values())) == len(KNOWN_SERIES)


def test_layout_labels_use_the_distinguishing_part_and_legend_shows_only_what_is_drawn():
    graph = skip_graph()
    renamed = tuple(
        Tensor(t.id, f"model/block_{t.id}/conv/Relu;model/bn_{t.id}/FusedBatchNorm", t.shape,
               t.dtype, t.nbytes, t.role, t.source_index, t.channel_axis)
        for t in graph.tensors)
    graph = Graph(graph.name, graph.source_format, renamed, graph.ops, graph.inputs,
                  graph.outputs)
    plan = registry()["tflm-greedy"](Request(graph, load_profile("none")))
    root = parse(render_layout_svg(graph, plan))
    texts = [e.text or "" for e in root.iter(f"{{{NS['s']}}}text")]
    assert not any(t.startswith("model/") for t in texts)
    assert any(t.startswith("block_") or t.startswith("#") for t in texts)
    legend = [e.text for g in by_class(root, "g", "legend")
              for e in g.iter(f"{{{NS['s']}}}text")]
    assert "spill" not in legend and "line buffer (streamed)" not in legend
    assert "budget" not in legend and "peak" in legend
    tips = [e.find("s:title", NS).text for e in by_class(root, "rect", "seg")]
    assert all(t.startswith("#") and " B" in t for t in tips)  # key and exact bytes
    spilled = parse(render_layout_svg(skip_graph(), spill_plan(skip_graph()), budget=300))
    legend = [e.text for g in by_class(spilled, "g", "legend")
              for e in g.iter(f"{{{NS['s']}}}text")]
    assert "spill" in legend and "budget" in legend


def test_short_labels():
    from backends.reports.labels import short_labels

    labels = short_labels({1: "model/a_1/Relu;model/x", 2: "model/a_2/Relu", 3: "input"})
    assert labels == {1: "a_1/Relu", 2: "a_2/Relu", 3: "input"}
    assert short_labels({1: "x/y", 2: "x/y"}) == {1: "y#1", 2: "y#2"}


def test_stream_marker_and_visible_line_buffer():
    graph = skip_graph()
    root = parse(render_layout_svg(graph, stream_plan(graph), budget=256))
    assert by_class(root, "polygon", "stream-marker")
    hatched = [r for r in by_class(root, "rect", "seg") if r.get("fill") == "url(#hatch)"]
    assert all(float(r.get("height")) >= 4.0 for r in hatched)


# -- streamed groups ------------------------------------------------------------------

def grouped_graphs() -> tuple[Graph, Graph]:
    """Source: c0 (t0 -> t1), c1 (t1 -> t2), c2 (t0 -> t3), add (t2, t3 -> t5), 3x3 convs
    on 8x4 maps; planned: c0+c1 as one STREAMED_GROUP op whose internal tensor t1 lives
    in a ring of 3 rows (id 6)."""
    def act(i, role=Role.ACTIVATION):
        return Tensor(i, f"t{i}", (1, 8, 4, 2), "int8", 64, role, i, 3)

    filt = Tensor(4, "filter", (2, 3, 3, 2), "int8", 36, Role.CONSTANT, 4, 0)
    tensors = (act(0, Role.INPUT), act(1), act(2), act(3), filt, act(5, Role.OUTPUT))
    attrs = {"kernel": (3, 3), "padding": "same", "strides": (1, 1)}
    ops = (Op(0, "c0", "CONV_2D", OpKind.CONV, (0, 4), (1,), (), attrs),
           Op(1, "c1", "CONV_2D", OpKind.CONV, (1, 4), (2,), (), attrs),
           Op(2, "c2", "CONV_2D", OpKind.CONV, (0, 4), (3,), (), attrs),
           Op(3, "add", "ADD", OpKind.ELEMENTWISE, (2, 3), (5,), (), {}))
    source = Graph("grouped", "tflite", tensors, ops, (0,), (5,))
    ring = Tensor(6, "t1/ring", (3, 4, 2), "int8", 24, Role.SCRATCH)
    group = Op(0, "group0", "TINYPLAN_STREAMED_GROUP", OpKind.STREAMED_GROUP, (0, 4), (2,), (6,),
               {"kernel": "tinyplan_group", "group": 0, "members": [0, 1], "stream_in": [],
                "spill_rows": [[2, 32]]})
    planned = Graph("grouped", "tflite", (*tensors, ring),
                    (group, replace(ops[2], index=1), replace(ops[3], index=2)), (0,), (5,),
                    source=source)
    return source, planned


def grouped_plan(planned: Graph) -> Plan:
    """The group (step 1) spills t2 row by row through a 32 B line buffer; t2 waits in
    storage over step 2 and is fetched for the add at step 3."""
    segs = (Segment(0, 0, 2, 0, 64), Segment(6, 1, 1, 64, 32),
            Segment(2, 1, 1, 96, 32, role="line_buffer"), Segment(3, 2, 3, 64, 64),
            Segment(2, 3, 3, 0, 64), Segment(5, 3, 3, 128, 64))
    transfers = (Transfer("spill_rows", 2, 1, "flash", 64), Transfer("fetch", 2, 3, "flash", 64))
    group = StreamGroup((0, 1), ((1, 3),), tuple((m, r) for r in range(8) for m in (0, 1)))
    return Plan(planned.name, "hand", planned.num_steps, 192, segs, transfers=transfers,
                stream_groups=(group,))


def test_group_column_rings_and_spill_rows_are_labelled():
    _, planned = grouped_graphs()
    plan = grouped_plan(planned)
    root = parse(render_layout_svg(planned, plan))
    cols = by_class(root, "rect", "group")
    assert len(cols) == 1
    assert cols[0].find("s:title", NS).text == (
        "step 1: op 0 runs streamed group 0: source ops 0..1 (CONV_2D #0, CONV_2D #1)")
    segs = {r.get("data-role"): r for r in by_class(root, "rect", "seg")}
    assert set(segs) == {"tensor", "ring", "spill_rows"}
    ring_tip = segs["ring"].find("s:title", NS).text
    assert ring_tip == ("#6 t1/ring (ring of group 0: 3 of 8 rows of #1 t1, 8 B a row, row r in "
                        "slot r % 3) steps 1..1, offset 64..96, 32 B")
    assert len(by_class(root, "line", "ring-row")) == 2  # three rows: two stripes between
    assert segs["spill_rows"].get("fill") == "url(#hatch-out)"
    assert "line buffer, spill_rows rows to storage" in segs["spill_rows"].find("s:title", NS).text
    marker = by_class(root, "polygon", "spill-rows-marker")
    assert [m.find("s:title", NS).text for m in marker] == [
        "spill_rows of #2 t2 to flash at step 1: 64 B written row by row"]
    assert not by_class(root, "polygon", "spill-marker")
    away = by_class(root, "rect", "away")
    assert [a.find("s:title", NS).text for a in away] == [
        "t2 in flash over steps 2..2, fetched at 3"]
    legend = [e.text for g in by_class(root, "g", "legend") for e in g.iter(f"{{{NS['s']}}}text")]
    for row in ("streamed group (one op)", "ring (rows held)",
                "line buffer (spill_rows)", "spill_rows (row by row)", "fetch"):
        assert row in legend
    assert "fused op" not in legend and "line buffer (streamed)" not in legend


def test_html_and_tensor_reports_name_groups_rings_and_internal_tensors():
    from backends.reports.html import render_html_report
    from backends.reports.tensors import render_csv, rows

    _, planned = grouped_graphs()
    plan = grouped_plan(planned)
    html = render_html_report(planned, plan)
    assert "id='groups'" in html and "<table class='groups'>" in html
    assert "CONV_2D #0, CONV_2D #1" in html
    assert "#1 t1: 3/8 rows, 24 B" in html
    assert "#2 t2 (32 B line): spilled row by row" in html
    assert "streamed working-set bound" in html and "(no streaming)" in html
    by_id = {r["id"]: r for r in rows(planned, plan)}
    assert by_id[6]["offsets"] == "64@1-1 ring 3/8 rows"
    assert by_id[2]["offsets"] == "96@1-1 line buffer spill_rows 0@3-3"
    assert by_id[2]["transfers"] == "spill_rows@1:flash:64B fetch@3:flash:64B"
    assert by_id[1]["bytes"] == 0 and "rows in ring #6 (3/8 rows)" in by_id[1]["offsets"]
    assert render_csv(planned, plan).count("\n") == len(by_id) + 1


def test_real_streamed_plan_draws_every_group_and_ring():
    """tiny_unet_int8's planned graph (choose_groups on qspi-flash) under tflm-greedy."""
    from pathlib import Path

    from frontends import load_model
    from planner.kernels import apply_kernels, op_kernels_of
    from planner.streaming import apply_groups, choose_groups, groups_of

    model = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "tiny_unet_int8.tflite"
    profile = load_profile("qspi-flash")
    source = apply_kernels(load_model(model), profile)
    planned = apply_groups(source, choose_groups(source, profile))
    plan = registry()["tflm-greedy"](Request(planned, profile))
    # Planners stamp the groups and kernels of the graph they planned.
    assert plan.stream_groups == groups_of(planned) and plan.op_kernels == op_kernels_of(source)
    assert_valid(planned, plan, profile.capacities)
    root = parse(render_layout_svg(planned, plan))
    cols = by_class(root, "rect", "group")
    assert len(cols) == len(plan.stream_groups) >= 1
    for col, group in zip(cols, plan.stream_groups, strict=True):
        tip = col.find("s:title", NS).text
        assert f"source ops {group.ops[0]}..{group.ops[-1]}" in tip
        assert all(f"#{m}" in tip for m in group.ops)
    rings = [r for r in by_class(root, "rect", "seg") if r.get("data-role") == "ring"]
    held = {t: rows for g in plan.stream_groups for t, rows in g.rings}
    assert len(rings) == len(held)
    for r in rings:
        tip = r.find("s:title", NS).text
        source_t = int(tip.split(" rows of #")[1].split()[0])
        assert f": {held[source_t]} of {source.tensors[source_t].shape[1]} rows" in tip
