"""The kernel table (planner/kernels.py): its limits match the C sources, its rules decide
what fuses, streams and runs on the row kernel, and plans are checked against it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from graph_factory import GraphBuilder

from frontends import load_model
from planner.analysis import FusionGroup, fusion_groups, working_set_bound
from planner.checker import check
from planner.device import load_profile
from planner.errors import PlannerError
from planner.ir import Graph, OpKind
from planner.kernels import (
    FUSED_CONCAT,
    FUSED_CONCAT_CONV,
    KERNELS,
    ROWS_KERNEL,
    apply_kernels,
    c_defines,
    fusion_violations,
    kernels_used,
    op_kernels_of,
    plan_violations,
    with_op_kernels,
)
from planner.plan import Fusion, Plan, Segment, Transfer

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "backends" / "c"
TINY_UNET = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
QSPI = load_profile("qspi-flash")


def c_source_defines() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(C_DIR.glob("*.[ch]")) + sorted(C_DIR.glob("*.cc")):
        for name, value in re.findall(r"#define\s+(TP_\w+)\s+(\d+)\b", path.read_text()):
            found.setdefault(name, []).append(int(value))
    return found


def test_table_limits_equal_the_c_defines() -> None:
    """The table and the C kernels cannot drift: every limit is #defined with that value."""
    found = c_source_defines()
    wanted = c_defines()
    assert {"TP_MAX_SLICES", "TP_MAX_KERNEL_H", "TP_TFLM_MAX_INPUTS"} <= set(wanted)
    for name, value in wanted.items():
        assert found.get(name), f"{name} is not #defined in backends/c"
        assert set(found[name]) == {value}, (name, found[name], value)


def test_every_custom_op_is_named_once_and_its_c_entry_exists() -> None:
    ops = [k.custom_op for k in KERNELS.values()]
    assert len(set(ops)) == len(ops)
    text = "".join(p.read_text() for p in C_DIR.glob("*.c"))
    for k in KERNELS.values():
        if k.name in ("fused_concat", "fused_concat_conv", "spill", "fetch"):
            assert re.search(rf"\b{k.c_entry}\s*\(", text), k.c_entry


def test_generated_header_carries_the_table_limits(tmp_path: Path) -> None:
    from backends.c.glue import write_c_glue
    from planner.planners.base import Request
    from planner.planners.tflm_greedy import plan_tflm_greedy

    g = load_model(TINY_UNET)
    write_c_glue(g, plan_tflm_greedy(Request(g, QSPI)), TINY_UNET, tmp_path, profile=QSPI)
    header = (tmp_path / "tinyplan_plan.h").read_text()
    for name, value in c_defines().items():
        assert f"#define TP_TABLE_{name} {value}" in header


# -- what fuses -----------------------------------------------------------------------------


def cat_conv(dtype: str = "int8", layout: str = "NHWC", n_inputs: int = 2, channels: int = 4,
             filter_in: int | None = None, kernel: tuple[int, int] = (3, 3),
             concat_act: str = "none", **conv_attrs) -> Graph:
    """n inputs -> channel concat -> conv (the concat's only reader)."""
    g = GraphBuilder("cat", dtype=dtype, layout=layout)
    nhwc = layout == "NHWC"
    shape = (1, 8, 6, channels) if nhwc else (1, channels, 8, 6)
    x = g.input(shape)
    ins = [x] + [g.op(OpKind.CONV, [x], shape, kernel=(1, 1)) for _ in range(n_inputs - 1)]
    total = list(shape)
    total[3 if nhwc else 1] *= n_inputs
    c = g.op(OpKind.CONCAT, ins, tuple(total), axis=3 if nhwc else 1,
             fused_activation=concat_act)
    y = g.op(OpKind.CONV, [c], shape, kernel=kernel, filter_in=filter_in, **conv_attrs)
    return g.build([y])


def groups_of(graph: Graph) -> list[FusionGroup]:
    return fusion_groups(graph)


def concat_index(graph: Graph) -> int:
    return next(op.index for op in graph.ops if op.kind == OpKind.CONCAT)


@pytest.mark.parametrize("kwargs,fuses,conv", [
    ({}, True, True),
    ({"filter_in": 2}, True, True),  # grouped: 8 channels in groups of 2
    ({"filter_in": 1}, True, False),  # depthwise-style: not promised
    ({"filter_in": 3}, True, False),  # 8 channels do not divide into groups of 3
    ({"kernel": (16, 1)}, True, True),
    ({"kernel": (17, 1)}, True, False),  # TP_MAX_KERNEL_H
    ({"dilations": (2, 1)}, True, False),  # streamed rows must be adjacent
    ({"dilations": (1, 2)}, True, True),
    ({"padding": "valid"}, True, True),
    ({"fused_activation": "relu6"}, True, True),
    ({"fused_activation": "tanh"}, True, False),  # TFLM's quantised range knows no tanh
    ({"concat_act": "relu"}, False, False),  # the concat kernel applies no activation
    ({"n_inputs": 8, "channels": 1}, True, True),
    ({"n_inputs": 9, "channels": 1}, False, False),  # TP_MAX_SLICES
    ({"dtype": "uint8"}, False, False),
    ({"dtype": "float32"}, False, False),
    ({"dtype": "float32", "layout": "NCHW"}, False, False),
])
def test_fusion_follows_the_table(kwargs: dict, fuses: bool, conv: bool) -> None:
    g = cat_conv(**kwargs)
    k = concat_index(g)
    want = [FusionGroup(k, k + 1 if conv else None)] if fuses else []
    assert groups_of(g) == want


def test_onnx_graphs_never_fuse() -> None:
    g = load_model(ROOT / "benchmarks" / "models" / "tiny_unet.onnx")
    assert g.source_format == "onnx" and fusion_groups(g) == []
    # Spilling cannot beat the load bound then: the bound is the concat's whole working set.
    assert working_set_bound(g).bytes == 921_600


# -- the row kernel ----------------------------------------------------------------------------


def test_apply_kernels_moves_int8_transpose_conv_onto_the_row_kernel() -> None:
    stock = load_model(TINY_UNET)
    rows = apply_kernels(stock, QSPI)
    assert apply_kernels(stock, load_profile("none")) is stock
    assert apply_kernels(stock, QSPI, stock_transpose_conv=True) is stock
    assert op_kernels_of(stock) == ()
    tconvs = [op.index for op in stock.ops if op.op_type == "TRANSPOSE_CONV"]
    assert op_kernels_of(rows) == tuple((k, ROWS_KERNEL) for k in tconvs) and len(tconvs) == 3
    for k in tconvs:
        op, was = rows.ops[k], stock.ops[k]
        assert op.attrs["kernel"] == ROWS_KERNEL and op.attrs["kernel_size"] == was.attrs["kernel"]
        _, h, w, c = rows.tensors[op.outputs[0]].shape
        assert stock.tensors[was.scratch[0]].nbytes == h * w * c * 4
        assert rows.tensors[op.scratch[0]].nbytes == w * c * 4
        assert rows.tensors[op.scratch[0]].dtype == "int32"
    # Nothing else changes.
    moved = {s for k in tconvs for s in stock.ops[k].scratch}
    assert [t for t in rows.tensors if t.id not in moved] == \
        [t for t in stock.tensors if t.id not in moved]
    assert with_op_kernels(stock, op_kernels_of(rows)) == rows
    assert with_op_kernels(rows, op_kernels_of(rows)) is rows
    with pytest.raises(PlannerError, match="unknown kernel"):
        with_op_kernels(stock, [(tconvs[0], "bogus")])
    with pytest.raises(PlannerError, match="cannot run on kernel"):
        with_op_kernels(stock, [(0, ROWS_KERNEL)])  # a CONV_2D


def test_float_and_synthetic_transpose_convs_stay_stock() -> None:
    from graph_factory import small_unet

    g = small_unet()  # TRANSPOSE_CONV without filter/output_shape inputs: no rows kernel
    assert apply_kernels(g, QSPI) is g
    onnx = load_model(ROOT / "benchmarks" / "models" / "tiny_unet.onnx")
    assert apply_kernels(onnx, QSPI) is onnx


def test_profile_flag() -> None:
    assert load_profile("none").custom_kernels is False
    assert all(load_profile(n).custom_kernels for n in
               ("fused", "qspi-flash", "internal-flash", "mixed", "uart-host", "sd-card"))


def test_plan_records_and_round_trips_its_kernels() -> None:
    from planner.planners.base import Request, registry

    rows = apply_kernels(load_model(TINY_UNET), QSPI)
    plan = registry()["tflm-greedy"](Request(rows, QSPI))
    assert plan.op_kernels == op_kernels_of(rows)
    assert Plan.from_json(plan.to_json()) == plan
    assert [k.name for k in kernels_used(plan)] == ["transpose_conv_rows"]
    assert plan_violations(rows, plan) == []
    # Checked against the stock graph it is not its plan (its scratch is too small there).
    stock = load_model(TINY_UNET)
    assert any("not the graph it was planned for" in e for e in check(stock, plan))
    assert plan_violations(rows, replace(plan, op_kernels=())) != []


# -- plans against the table ----------------------------------------------------------------------


def streamed_plan(graph: Graph, stream_all: bool) -> Plan:
    """Concat inputs streamed (all, or all but the first) into the fused concat+conv."""
    k = concat_index(graph)
    conv = k + 1
    ins = list(graph.ops[k].inputs)
    streamed = ins if stream_all else ins[1:]
    transfers = []
    for i, t in enumerate(streamed):
        n = graph.tensors[t].nbytes
        transfers += [Transfer("spill", t, 1, "qspi", n, i * 4096),
                      Transfer("stream", t, conv + 1, "qspi", n, i * 4096)]
    return Plan(graph.name, "hand", graph.num_steps, 0, (Segment(0, 0, 1, 0, 16),),
                transfers=tuple(transfers), fusions=(Fusion(k, conv),))


def test_a_fused_op_keeps_one_input_resident() -> None:
    g = cat_conv()
    assert fusion_violations(g, streamed_plan(g, stream_all=False)) == []
    errors = fusion_violations(g, streamed_plan(g, stream_all=True))
    assert any("needs one resident input" in e and FUSED_CONCAT_CONV.custom_op in e
               for e in errors)


def test_fusions_outside_the_table_are_violations() -> None:
    g = cat_conv(dtype="uint8")
    k = concat_index(g)
    errors = fusion_violations(g, Plan(g.name, "hand", g.num_steps, 0, (),
                                       fusions=(Fusion(k, k + 1),)))
    assert any("needs int8" in e for e in errors)
    g = cat_conv(n_inputs=5, channels=1)  # 5 inputs fit; split, each counts twice
    plan = Plan(g.name, "hand", g.num_steps, 0, (), fusions=(Fusion(k := concat_index(g)),))
    assert fusion_violations(g, plan) == []
    from planner.plan import Part

    parts = tuple(Part(t, i, i, i + 1, 48) for t in g.ops[k].inputs[:4] for i in (0, 1))
    errors = fusion_violations(g, replace(plan, parts=parts))
    assert any(f"9 slices > {FUSED_CONCAT.max_slices}" in e for e in errors)


def test_planners_never_stream_every_input_of_a_fused_op() -> None:
    """With a budget only streaming both inputs would meet, the planners refuse rather
    than plan what the kernel cannot run."""
    from planner.errors import InfeasibleBudget
    from planner.planners.base import Request, registry
    from planner.planners.ilp.model import build_problem

    g = cat_conv(channels=16)
    # The exact model holds the rule: one constraint for the fused conv's streams.
    sites = build_problem(g, QSPI).resident_sites()
    assert len(sites) == 2 and all(sites)  # the concat (unfused) and its conv (fused)
    for name in ("ilp", "tinyseg"):
        try:
            plan = registry()[name](Request(g, QSPI, None, "peak", time_limit=10))
        except (InfeasibleBudget, PlannerError):
            continue
        assert fusion_violations(g, plan) == [], name
        assert check(g, plan, QSPI.capacities) == []


# -- acceptance: every plan of the zoo uses only what the table offers ----------------------------

ZOO = sorted((ROOT / "benchmarks" / "models").glob("*.onnx")) + \
    sorted((ROOT / "benchmarks" / "models").glob("*.tflite"))
FRACTIONS = (None, 0.9, 0.75, 0.6, 0.5)


def zoo_plans(path: Path):
    """(label, graph, plan) of ilp and tinyseg at every budget fraction of tflm-greedy."""
    from planner.errors import InfeasibleBudget
    from planner.planners.base import Request, registry

    graph = apply_kernels(load_model(path), QSPI)
    greedy = registry()["tflm-greedy"](Request(graph, QSPI)).peak_bytes
    ws = working_set_bound(graph, QSPI.can_stream, QSPI.fusion).bytes
    for fraction in FRACTIONS:
        budget = None if fraction is None else int(greedy * fraction) // 16 * 16
        if budget is not None and budget < ws:
            continue
        for name in ("ilp", "tinyseg"):
            if name == "tinyseg" and budget is None:
                continue
            try:
                plan = registry()[name](Request(graph, QSPI, budget, time_limit=2.0))
            except (InfeasibleBudget, PlannerError):
                continue
            yield f"{name}@{fraction}", graph, plan


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_every_zoo_plan_fuses_only_what_the_table_allows(path: Path, tmp_path: Path) -> None:
    from backends.c.glue import write_c_glue
    from backends.tflite.offline import write_offline_tflite

    seen = 0
    for label, graph, plan in zoo_plans(path):
        assert plan_violations(graph, plan) == [], label
        assert check(graph, plan, QSPI.capacities) == [], label
        groups = {g.concat: g.conv for g in fusion_groups(graph)}
        for f in plan.fusions:
            assert f.concat in groups and f.conv in (None, groups[f.concat]), label
        out = tmp_path / label
        out.mkdir()
        if graph.source_format == "tflite":  # the rewrite accepts every such plan
            [written] = write_offline_tflite(graph, plan, path, out, profile=QSPI)
            from backends.tflite import io

            names = set(io.custom_op_names(io.read_model(written.read_bytes())))
            assert "SPLIT_V" not in names
            assert ("TinyPlanTransposeConv" in names) == bool(plan.op_kernels), label
        write_c_glue(graph, plan, path, out, profile=QSPI)
        seen += 1
    assert seen >= 1  # at least the unbudgeted ILP plan (smaller budgets may be below the bound)


def test_unet_wide96_at_75_percent_plans_its_grouped_fused_conv() -> None:
    """The issue's case: a conv of 8 groups (filter [16,3,3,3] on 24 channels) fuses, and the
    plan at 75% of tflm-greedy relies on the fused concat+conv kernel with groups."""
    from planner.planners.base import Request, registry

    path = ROOT / "benchmarks" / "models" / "unet_wide96_int8.tflite"
    # The plan (stock TRANSPOSE_CONV, 442,368 B) and the row kernel's 75%.
    for stock in (True, False):
        graph = apply_kernels(load_model(path), QSPI, stock_transpose_conv=stock)
        greedy = registry()["tflm-greedy"](Request(graph, QSPI)).peak_bytes
        budget = int(greedy * 0.75) // 16 * 16
        assert (budget == 442_368) == stock
        plan = registry()["ilp"](Request(graph, QSPI, budget, time_limit=10.0))
        assert plan.peak_bytes <= budget and plan_violations(graph, plan) == []
        grouped = [f for f in plan.fusions if f.conv is not None and
                   graph.tensors[graph.ops[f.conv].inputs[1]].shape[3] <
                   graph.tensors[graph.ops[f.concat].outputs[0]].shape[3]]
        assert grouped, plan.fusions
