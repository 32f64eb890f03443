"""Row streaming (planner/streaming.py): bands against the reference kernels and brute
force, schedules and their least rings, the planned graph, and the choice of groups."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_graphs import Chain, out_hw, tconv_out

from frontends import load_model
from planner import streaming
from planner.analysis import op_working_sets, working_set_bound
from planner.device import load_profile
from planner.ir import OpKind, Role, align
from planner.kernels import apply_kernels, op_kernels_of, row_refusals
from planner.plan import StreamGroup

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
QSPI = load_profile("qspi-flash")
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def brute_rows(kind: str, r: int, in_h: int, out_h: int, k: int, s: int, padding: str) -> set[int]:
    """Input rows output row r reads, by enumerating filter rows (TFLite's padding)."""
    same = padding == "same"
    if kind == "window":
        pad = max((out_h - 1) * s + k - in_h, 0) // 2 if same else 0
        return {r * s - pad + ky for ky in range(k) if 0 <= r * s - pad + ky < in_h}
    # Transpose conv, scatter form: input row i feeds output rows i*s - pad + ky.
    n = -(-out_h // s) if same else (out_h + s - k) // s
    total = (n - 1) * s + k - out_h
    pad = total // 2 if total > 0 else 0
    return {i for i in range(in_h) for ky in range(k) if i * s - pad + ky == r}


def band_set(band: tuple[int, int]) -> set[int]:
    return set(range(band[0], band[1] + 1))


# -- bands ---------------------------------------------------------------------------------------

def _reference_rows(kind: str, h: int, k: int, s: int, padding: str, seed: int):
    """(IR op, its graph, per output row the input rows that change it in the TFLite
    reference kernel): each input row is perturbed in turn."""
    from one_op_models import one_op_model, reference

    rng = np.random.default_rng(seed)
    c, cout, w = 2, 2, max(3, k)
    if kind == "TRANSPOSE_CONV":
        oh, ow = tconv_out(h, k, s, padding), tconv_out(w, k, s, padding)
        filt = rng.choice([-3, -2, -1, 1, 2, 3], (cout, k, k, c))
    else:
        oh, ow = out_hw(h, k, s, padding), out_hw(w, k, s, padding)
        filt = rng.choice([-3, -2, -1, 1, 2, 3], (1, k, k, cout) if kind == "DEPTHWISE_CONV_2D"
                          else (cout, k, k, c))
    bias = rng.integers(-50, 50, cout)
    model = one_op_model(kind, (1, h, w, c), filt, bias, (0.05, 0), [0.01] * cout, (0.01, 0),
                         (1, oh, ow, cout), (s, s), padding, "none")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "op.tflite"
        path.write_bytes(model)
        graph = apply_kernels(load_model(path), QSPI)
    x = rng.integers(-20, 20, (1, h, w, c)).astype(np.int8)
    base = reference(model, x)
    reads: dict[int, set[int]] = {r: set() for r in range(oh)}
    for i in range(h):
        y = x.copy()
        y[0, i] = np.where(y[0, i] > 0, -60, 60)
        changed = np.any(reference(model, y) != base, axis=(0, 2, 3))
        for r in np.nonzero(changed)[0]:
            reads[int(r)].add(i)
    return graph, graph.ops[0], reads


@FAST
@given(kind=st.sampled_from(["CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"]),
       h=st.integers(1, 9), k=st.integers(1, 4), s=st.integers(1, 3),
       padding=st.sampled_from(["same", "valid"]), seed=st.integers(0, 2**16))
def test_bands_hold_what_the_reference_kernels_read(kind, h, k, s, padding, seed) -> None:
    """Every input row the TFLite reference kernel's output row depends on lies in its band,
    and the band is exactly the rows the filter covers (brute force)."""
    if kind != "TRANSPOSE_CONV" and padding == "valid" and k > h:
        return  # no output
    graph, op, reads = _reference_rows(kind, h, k, s, padding, seed)
    assert row_refusals(graph, op) == []
    bands = streaming.op_bands(graph, op)
    out_h = graph.tensors[op.outputs[0]].shape[1]
    assert len(bands) == out_h
    assert any(reads.values())  # the perturbations reach the output
    band_kind = "gather" if kind == "TRANSPOSE_CONV" else "window"
    for r, band in enumerate(bands):
        assert reads[r] <= band_set(band), (r, reads[r], band)
        assert band_set(band) == brute_rows(band_kind, r, h, out_h, k, s, padding)


@FAST
@given(h=st.integers(1, 40), k=st.integers(1, 5), s=st.integers(1, 4),
       padding=st.sampled_from(["same", "valid"]), up=st.booleans())
def test_bands_match_brute_force(h, k, s, padding, up) -> None:
    """Pools and transpose convs of random shapes, against enumeration."""
    if not up and padding == "valid" and k > h:
        return
    c = Chain(h, 3, 2)
    y = c.tconv(c.x, 2, k, s, padding) if up else c.pool(c.x, k, s, padding)
    graph = c.build([y])
    op = graph.ops[0]
    assert row_refusals(graph, op) == []
    out_h = graph.tensors[y].shape[1]
    for r, band in enumerate(streaming.op_bands(graph, op)):
        assert band_set(band) == brute_rows("gather" if up else "window", r, h, out_h, k, s,
                                            padding)


def test_elementwise_and_concat_read_their_own_row() -> None:
    c = Chain(5, 4, 3)
    a = c.conv(c.x, 3)
    y = c.concat(c.add(a, c.x), a)
    graph = c.build([y])
    for op in graph.ops[1:]:
        assert streaming.op_bands(graph, op) == tuple((r, r) for r in range(5))


# -- schedules and rings -------------------------------------------------------------------------

LAYERS = st.lists(st.sampled_from(["conv", "conv_s2", "dw", "pool", "tconv", "conv1",
                                   "conv5_valid"]), min_size=2, max_size=5)


def _chain(layers: list[str], h: int, skip: bool):
    c = Chain(h, 4, 2)
    t = first = c.conv(c.x, 2)
    for layer in layers:
        _, th, _, _ = c.shape(t)
        if layer == "conv":
            t = c.conv(t, 2)
        elif layer == "conv_s2" and th >= 2:
            t = c.conv(t, 2, 3, 2)
        elif layer == "dw":
            t = c.conv(t, 2, 3, 1, depthwise=True)
        elif layer == "pool" and th >= 2:
            t = c.pool(t)
        elif layer == "tconv":
            t = c.tconv(t, 2)
        elif layer == "conv5_valid" and th >= 5:
            t = c.conv(t, 2, 5, 1, "valid")
        else:
            t = c.conv(t, 2, 1)
    if skip and c.shape(t) == c.shape(first):
        t = c.concat(first, t)  # a skip connection inside the group
    return c.build([t])


def _with_ring(group: StreamGroup, tensor: int, rows: int) -> StreamGroup:
    return replace(group, rings=tuple((t, rows if t == tensor else r) for t, r in group.rings))


@FAST
@given(layers=LAYERS, h=st.integers(4, 24), skip=st.booleans())
def test_schedules_are_valid_and_their_rings_least(layers, h, skip) -> None:
    graph = _chain(layers, h, skip)
    ops = tuple(range(len(graph.ops)))
    group = streaming.schedule_group(graph, ops)
    assert streaming.verify_schedule(graph, group) == []
    out_rows = [graph.tensors[op.outputs[0]].shape[1] for op in graph.ops]
    assert sorted(group.schedule) == [(m, r) for m in ops for r in range(out_rows[m])]
    # Every tensor but the graph output is internal; each ring is the least that works.
    assert {t for t, _ in group.rings} == {op.outputs[0] for op in graph.ops[:-1]}
    for t, rows in group.rings:
        assert 1 <= rows <= graph.tensors[t].shape[1]
        if rows > 1:
            assert streaming.verify_schedule(graph, _with_ring(group, t, rows - 1)), (t, rows)


def test_a_stride_one_chain_keeps_kernel_height_rows() -> None:
    """conv3 -> conv3 -> conv3 at 32 rows: each internal tensor lives in 3 rows."""
    c = Chain(32, 8, 4)
    t = c.conv(c.conv(c.conv(c.x, 4), 4), 4)
    graph = c.build([t])
    group = streaming.schedule_group(graph, (0, 1, 2))
    assert [r for _, r in group.rings] == [3, 3]


def test_verify_schedule_finds_each_planted_error() -> None:
    graph = _chain(["conv", "pool", "tconv"], 12, True)
    ops = tuple(range(len(graph.ops)))
    good = streaming.schedule_group(graph, ops)
    sched = list(good.schedule)
    # A consumer row moved before the rows it reads.
    first_consumer = next(p for p, (m, _) in enumerate(sched) if m == 1)
    early = [sched[first_consumer]] + sched[:first_consumer] + sched[first_consumer + 1:]
    errors = streaming.verify_schedule(graph, replace(good, schedule=tuple(early)))
    assert any("not produced yet" in e for e in errors)
    assert any("computed twice" in e for e in streaming.verify_schedule(
        graph, replace(good, schedule=good.schedule + good.schedule[:1])))
    assert any("never computed" in e for e in streaming.verify_schedule(
        graph, replace(good, schedule=good.schedule[:-1])))
    assert any("no such member row" in e for e in streaming.verify_schedule(
        graph, replace(good, schedule=good.schedule + ((0, 999),))))
    t, rows = max(good.rings, key=lambda tr: tr[1])
    errors = streaming.verify_schedule(graph, _with_ring(good, t, rows - 1))
    assert any("before its last read" in e or "overwritten" in e for e in errors)
    assert any("rings for tensors" in e for e in streaming.verify_schedule(
        graph, replace(good, rings=good.rings[1:])))


# -- the planned graph ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet():
    source = apply_kernels(load_model(TINY_UNET), QSPI)
    groups = streaming.choose_groups(source, QSPI)
    return source, groups, streaming.apply_groups(source, groups)


def test_apply_groups_builds_one_op_per_group(unet) -> None:
    source, groups, planned = unet
    assert groups and planned.source is source
    assert streaming.groups_of(planned) == groups
    assert op_kernels_of(planned) == op_kernels_of(source)
    assert planned.tensors[:len(source.tensors)] == source.tensors
    grouped = {m for g in groups for m in g.ops}
    assert len(planned.ops) == len(source.ops) - len(grouped) + len(groups)
    producer = source.producer()
    rings_seen = []
    for number, g in enumerate(groups):
        op = next(o for o in planned.ops if o.name == f"group{number}")
        assert op.kind == OpKind.STREAMED_GROUP and op.op_type == "TINYPLAN_STREAMED_GROUP"
        assert op.attrs["kernel"] == "tinyplan_group" and op.attrs["members"] == list(g.ops)
        assert streaming.verify_schedule(source, g) == []
        members = [source.ops[m] for m in g.ops]
        made = {m.outputs[0] for m in members}
        # Inputs: every tensor the members read that no member writes, constants included.
        assert set(op.inputs) == {t for m in members for t in m.inputs if t >= 0} - made
        assert all(producer.get(t, -1) < g.ops[0] for t in op.inputs)
        ring_of = dict(g.rings)
        assert set(op.outputs) == made - set(ring_of)
        for s, (t, rows) in zip(op.scratch, g.rings, strict=True):
            ring = planned.tensors[s]
            assert ring.role == Role.SCRATCH and ring.name == source.tensors[t].name + "/ring"
            assert ring.shape == (rows, *source.tensors[t].shape[2:])
            assert ring.nbytes == rows * source.tensors[t].nbytes // source.tensors[t].shape[1]
            rings_seen.append(s)
        stream_in = dict(op.attrs["stream_in"])
        assert set(stream_in) == {t for t in op.inputs if source.tensors[t].planned}
        assert set(dict(op.attrs["spill_rows"])) == set(op.outputs) - set(source.outputs)
        assert all(b % 16 == 0 and b > 0 for b in stream_in.values())
    # Rings are new tensors after the source's; internal tensors are read by no op.
    assert sorted(rings_seen) == list(range(len(source.tensors), len(planned.tensors)))
    internal = {t for g in groups for t, _ in g.rings}
    assert not internal & {t for op in planned.ops for t in op.inputs + op.outputs}


def test_streamed_bound_of_tiny_unet(unet) -> None:
    """Far below the bound without streaming (153,600 B), and what streamed_bound says."""
    source, groups, planned = unet
    before = working_set_bound(source, QSPI.can_stream, QSPI.fusion)
    after = streaming.streamed_bound(source, QSPI)
    assert after == working_set_bound(planned, QSPI.can_stream, QSPI.fusion)
    assert before.bytes == 153_600
    # The graph input, resident at step 0, sets it: every op streams or spills below that.
    assert after.bytes == planned.tensors[planned.inputs[0]].nbytes == 28_800, after
    assert max(op_working_sets(planned)) < after.bytes
    print(f"tiny_unet_int8 streamed working-set bound {after.bytes} B ({after.detail})")


def test_no_groups_without_custom_kernels() -> None:
    stock = replace(QSPI, custom_kernels=False)
    source = load_model(TINY_UNET)
    assert streaming.group_candidates(source, stock) == []
    assert streaming.choose_groups(source, stock) == ()
    assert streaming.apply_groups(source, ()) is source


# -- end to end: solve / analyze --row-streaming, the plan file, the Python API -----------------

def _cli(capsys, *args) -> dict:
    import json

    from planner.cli import main

    assert main([str(a) for a in args] + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _partitions() -> list[list[list[int]]]:
    """The Tiny U-Net's candidate partitions into streamed groups, "chosen" first."""
    from planner.streaming_search import candidates

    source = apply_kernels(load_model(TINY_UNET), QSPI)
    return [[list(g.ops) for g in c.groups] for c in candidates(source, QSPI)]


@pytest.mark.parametrize("planner", ["tflm-greedy", "tinyseg"])
def test_solve_row_streaming_writes_a_valid_plan(planner, tmp_path, capsys) -> None:
    from planner.checker import check
    from planner.plan import Plan
    from planner.schema import load_schema

    jsonschema = pytest.importorskip("jsonschema")
    out = _cli(capsys, "solve", TINY_UNET, "--row-streaming", "--planner", planner,
               "-o", tmp_path, "--emit", "svg")
    jsonschema.Draft202012Validator(load_schema()).validate(out)
    assert out["working_set_bound_bytes"] == 153_600
    assert out["streamed_bound_bytes"] == streaming.streamed_bound(
        apply_kernels(load_model(TINY_UNET), QSPI), QSPI).bytes
    plan = Plan.load(tmp_path / "plan.json")
    assert [list(g.ops) for g in plan.stream_groups] == out["stream_groups"]
    # The winner of the candidate partitions solve plans (planner/streaming_search.py).
    assert out["stream_groups"] in _partitions() and out["stream_candidates"] == 8
    assert any("row streaming: candidate partition" in n for n in out["notes"])
    # The plan's graph rebuilt from the plan file alone, as `run` and the writers do.
    graph = streaming.planned_graph(load_model(TINY_UNET), plan)
    assert graph.num_steps == plan.num_steps and check(graph, plan, QSPI.capacities) == []
    plain = _cli(capsys, "solve", TINY_UNET, "--planner", planner)
    assert plain["streamed_bound_bytes"] is None and plain["stream_groups"] == []


def test_analyze_row_streaming_shows_groups_and_bound(capsys) -> None:
    out = _cli(capsys, "analyze", TINY_UNET, "--row-streaming")
    assert out["streamed_bound_bytes"] < out["working_set_bound_bytes"]
    assert out["stream_groups"] and all(g["rows"] > 0 for g in out["stream_groups"])
    from planner.cli import main

    assert main(["analyze", str(TINY_UNET), "--row-streaming"]) == 0
    text = capsys.readouterr().out
    assert "streamed group:" in text and "streamed bound:" in text


def test_python_api_row_streaming() -> None:
    import tinyplan

    graph = tinyplan.load(TINY_UNET)
    analysis = tinyplan.analyse(graph, row_streaming=True)
    assert analysis.streamed_bound_bytes is not None and analysis.stream_groups
    assert tinyplan.analyse(graph).streamed_bound_bytes is None
    plan = tinyplan.plan(graph, planner="tflm-greedy", row_streaming=True)
    # analyse reports the bound-minimising groups; plan keeps the best candidate's.
    assert analysis.stream_groups == tuple(tuple(g) for g in _partitions()[0])
    assert [list(g.ops) for g in plan.stream_groups] in _partitions() and plan.stream_groups
    assert tinyplan.check(graph, plan) == []
    assert tinyplan.check(graph, replace(plan, stream_groups=())) != []


def test_every_planner_plans_a_planned_graph(unet) -> None:
    """Planners know nothing of groups; their plans of a planned graph pass the checker."""
    from planner.checker import check
    from planner.planners.base import Request, registry

    _, groups, planned = unet
    for name in ("linear", "tflm-greedy", "tinyseg", "ilp"):
        plan = registry()[name](Request(planned, QSPI, time_limit=10.0))
        assert plan.stream_groups == groups, name
        assert check(planned, plan, QSPI.capacities) == [], name


# -- the row-kernel table and the group working set ---------------------------------------------

def test_row_refusals_follow_the_table() -> None:
    source = apply_kernels(load_model(TINY_UNET), QSPI)
    assert all(row_refusals(source, op) == [] for op in source.ops)
    stock = load_model(TINY_UNET)  # TRANSPOSE_CONV on TFLM's kernel: not a row op
    assert [op.index for op in stock.ops if row_refusals(stock, op)] == [11, 15, 19]
    c = Chain(6, 4, 2)
    a = c.conv(c.x, 2)
    b = c.add(a, c.conv(c.x, 2))
    g = c.build([b])
    conv = g.ops[0]
    assert row_refusals(g, conv) == []
    bent = [
        replace(conv, attrs={**conv.attrs, "dilations": (2, 2)}),
        replace(conv, attrs={**conv.attrs, "fused_activation": "tanh"}),
        replace(conv, attrs={**conv.attrs, "padding": "explicit"}),
        replace(conv, op_type="FULLY_CONNECTED"),
    ]
    for op in bent:
        assert row_refusals(g, op), op
    tensors = list(g.tensors)
    tensors[a] = replace(tensors[a], shape=(2, 6, 4, 2))  # batch 2
    assert any("batch 1" in w for w in row_refusals(replace(g, tensors=tuple(tensors)),
                                                     g.ops[2]))
    tensors = list(g.tensors)
    tensors[a] = replace(tensors[a], shape=(1, 1, 4, 2))  # broadcasting add
    assert any("no broadcasting" in w
               for w in row_refusals(replace(g, tensors=tuple(tensors)), g.ops[2]))
    assert row_refusals(replace(g, source_format="onnx"), conv)


def test_group_working_set_needs_storage_to_stream(unet) -> None:
    from planner.analysis import group_working_set

    source, _, planned = unet
    for op in planned.ops:
        if op.kind != OpKind.STREAMED_GROUP:
            continue
        whole, _ = group_working_set(planned.tensors, op, can_stream=False)
        lines, _ = group_working_set(planned.tensors, op, can_stream=True)
        rings = sum(align(planned.tensors[t].nbytes) for t in op.scratch)
        held = sum(align(planned.tensors[t].nbytes)
                   for t in op.inputs + op.outputs if planned.tensors[t].planned)
        assert whole == rings + held and lines <= whole
    none = load_profile("none")  # no storage, no custom kernels: nothing streams
    assert streaming.streamed_bound(load_model(TINY_UNET), none).bytes == \
        working_set_bound(load_model(TINY_UNET), none.can_stream, none.fusion).bytes
