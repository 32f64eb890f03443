"""The .tflite rewrite of row-streamed plans: one TinyPlanStreamedGroup per group.

Plans are built by hand on the planned graph of the Tiny U-Net (streaming.apply_groups
of the groups choose_groups picks), offsets by first-fit over their segments, and must
pass the checker first. No TFLM here: the rewritten file is read back and checked
against the plan (tests/test_tflm_real_stream.py runs it on real TFLM).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tflite_rewrite import _ops as _listing

from backends.c.group_program import encode
from backends.tflite import io
from backends.tflite.rewrite import (
    GROUP_HEADER,
    STREAMED_GROUP_OP,
    VIEW_SPILL_ROWS,
    VIEW_STREAM_IN,
    check_rewritten,
    file_lifetimes,
    group_views,
    rewrite,
    write_rewritten_tflite,
)
from frontends import load_model
from planner import kernels, streaming
from planner.analysis import Buffer, lifetimes
from planner.checker import assert_valid
from planner.device import load_profile
from planner.errors import PlannerError
from planner.ir import Graph, OpKind, align
from planner.plan import Plan, Segment, Transfer
from planner.planners.tflm_greedy import greedy_offsets

TINY_UNET = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "tiny_unet_int8.tflite"
PROFILE = load_profile("qspi-flash")
STORAGE = "qspi"


def streamed_graph() -> Graph:
    """The Tiny U-Net's planned graph with the groups choose_groups picks."""
    source = kernels.apply_kernels(load_model(TINY_UNET), PROFILE)
    groups = streaming.choose_groups(source, PROFILE)
    assert groups, "the Tiny U-Net should have streamed groups"
    return streaming.apply_groups(source, groups)


def _group_ops(planned: Graph) -> list[int]:
    return [op.index for op in planned.ops if op.kind == OpKind.STREAMED_GROUP]


def row_spilled(planned: Graph) -> list[int]:
    """Group outputs the plan may spill row by row, read later by another op."""
    consumers = planned.consumers()
    out = []
    for k in _group_ops(planned):
        for t, _ in planned.ops[k].attrs["spill_rows"]:
            if t not in planned.outputs and any(c > k for c in consumers.get(t, [])):
                out.append(t)
    return out


def streamed_plan(planned: Graph, rows: tuple[int, ...] = ()) -> Plan:
    """A plan for `planned`, first-fit offsets; each tensor in `rows` is spilled row by row
    by its group and read back by the groups that stream it (stream_in) or, at its first
    other reader, by a fetch whose segment lasts to its end."""
    life = dict(lifetimes(planned))
    producer = planned.producer()
    consumers = planned.consumers()
    items: list[tuple[int, int, int, int, str]] = []  # tensor, first, last, size, role
    transfers: list[Transfer] = []
    address = 0
    for t, (first, last) in life.items():
        if t not in rows:
            items.append((t, first, last, align(planned.tensors[t].nbytes), "tensor"))
    for t in rows:
        nbytes = planned.tensors[t].nbytes
        made = producer[t] + 1
        line = dict(planned.ops[producer[t]].attrs["spill_rows"])[t]
        items.append((t, made, made, line, "line_buffer"))
        transfers.append(Transfer("spill_rows", t, made, STORAGE, nbytes, address))
        fetched = False
        for c in consumers[t]:
            op, step = planned.ops[c], c + 1
            streams = dict(op.attrs.get("stream_in", [])) if op.kind == OpKind.STREAMED_GROUP \
                else {}
            if t in streams and not fetched:
                items.append((t, step, step, streams[t], "line_buffer"))
                transfers.append(Transfer("stream", t, step, STORAGE, nbytes, address))
            elif not fetched:
                items.append((t, step, life[t][1], align(nbytes), "tensor"))
                transfers.append(Transfer("fetch", t, step, STORAGE, nbytes, address))
                fetched = True
        address += align(nbytes)
    bufs = [Buffer(i, size, first, last) for i, (_, first, last, size, _) in enumerate(items)]
    offsets = greedy_offsets(bufs)
    segments = tuple(Segment(t, first, last, off, size, None, role)
                     for (t, first, last, size, role), off in zip(items, offsets, strict=True))
    source = planned.source
    assert source is not None
    return Plan(planned.name, "hand", planned.num_steps, max(s.end for s in segments),
                segments, (), tuple(transfers), (), op_kernels=kernels.op_kernels_of(planned),
                stream_groups=streaming.groups_of(planned))


def _ops(model) -> list[tuple[str, list[int], list[int], list[int]]]:
    """test_tflite_rewrite's op listing, custom options as int32 words."""
    return [(name, ins, outs, io.unpack_int32(opts) if opts and len(opts) % 4 == 0 else [])
            for name, ins, outs, opts in _listing(io.write_model(model))]


@pytest.fixture(scope="module")
def planned() -> Graph:
    return streamed_graph()


def _written(planned: Graph, plan: Plan, tmp_path: Path):
    assert_valid(planned, plan, PROFILE.capacities)
    [out] = write_rewritten_tflite(planned, plan, TINY_UNET, tmp_path, profile=PROFILE)
    data = out.read_bytes()
    assert check_rewritten(data) == []
    return io.read_model(data)


def test_group_ops_replace_their_members(planned, tmp_path):
    plan = streamed_plan(planned)
    model = _written(planned, plan, tmp_path)
    ops = _ops(model)
    groups = _group_ops(planned)
    # One op per planned op: every member is gone, nothing else is added (no transfers).
    assert len(ops) == len(planned.ops)
    assert [k for k, o in enumerate(ops) if o[0] == STREAMED_GROUP_OP] == groups
    sub = model.subgraphs[0]
    offsets = io.read_offline_offsets(model)
    seg = {s.tensor: s for s in plan.segments}
    for k in groups:
        gop = planned.ops[k]
        name, inputs, outputs, words = ops[k]
        index = [planned.tensors[t].source_index for t in gop.inputs]
        assert inputs == index
        n_out = len(gop.outputs)
        assert outputs[:n_out] == [planned.tensors[t].source_index for t in gop.outputs]
        rings = outputs[n_out:]
        assert len(rings) == len(gop.scratch)
        for r, t in zip(rings, gop.scratch, strict=True):
            ring = planned.tensors[t]
            assert io._name(sub.tensors[r].name) == ring.name
            assert list(sub.tensors[r].shape) == list(ring.shape)
            assert offsets[r] == seg[t].offset
        # The options: version, no storage, then exactly the program for this op.
        assert words[:GROUP_HEADER] == [1, -1]
        assert words[GROUP_HEADER:] == [int(w) for w in encode(io.read_model(TINY_UNET),
                                                               planned, plan, k)]
        storage, views = group_views(words)
        assert storage == -1 and len(views) == len(inputs) + len(outputs)
        assert not {VIEW_STREAM_IN, VIEW_SPILL_ROWS} & {v[0] for v in views}
    # The tensors inside groups are touched by no op and hold no elements.
    life, _ = file_lifetimes(model)
    for group in plan.stream_groups:
        for t, _ in group.rings:
            i = planned.tensors[t].source_index
            assert i not in life and list(sub.tensors[i].shape) == [0]
    # TinyPlanPeak lists no scratch: rings are tensors, not kernel scratch requests.
    peak = io.unpack_int32(io.get_metadata(model, io.PEAK_METADATA))
    assert peak[1] == plan.peak_bytes and peak[3] == 0


def test_rows_spilled_by_a_group_are_streamed_or_fetched_back(planned, tmp_path):
    rows = row_spilled(planned)
    assert rows, "a Tiny U-Net group should have an output it can spill row by row"
    plan = streamed_plan(planned, tuple(rows))
    model = _written(planned, plan, tmp_path)
    ops = _ops(model)
    offsets = io.read_offline_offsets(model)
    lines = {(s.tensor, s.first): s for s in plan.segments if s.role == "line_buffer"}
    streamed = [(tr.tensor, tr.step) for tr in plan.transfers if tr.kind == "stream"]
    fetched = [tr for tr in plan.transfers if tr.kind == "fetch"]
    assert [o[0] for o in ops].count("Fetch") == len(fetched)
    assert "Spill" not in [o[0] for o in ops]  # the groups write the rows themselves
    steps = rewrite(planned, plan, TINY_UNET, PROFILE).op_steps
    sub = model.subgraphs[0]
    seen_spill = seen_stream = 0
    for k, (name, inputs, outputs, words) in enumerate(ops):
        if name != STREAMED_GROUP_OP:
            continue
        step = steps[k]
        gop = planned.ops[step - 1]
        storage, views = group_views(words)
        for v, t in enumerate(gop.inputs):
            if (t, step) in streamed:
                seen_stream += 1
                assert inputs[v] == -1 and views[v][0] == VIEW_STREAM_IN
                assert storage == 0
        n_in, n_out = len(gop.inputs), len(gop.outputs)
        line_outs = outputs[n_out + len(gop.scratch):]
        assert len(line_outs) == inputs.count(-1)
        for t, lb in zip([t for v, t in enumerate(gop.inputs) if inputs[v] == -1], line_outs,
                         strict=True):
            assert offsets[lb] == lines[(t, step)].offset
        for j, t in enumerate(gop.outputs):
            if t in rows:
                seen_spill += 1
                lb = outputs[j]
                assert io._name(sub.tensors[lb].name).endswith(f"/rows@{step}")
                assert offsets[lb] == lines[(t, step)].offset
                view = views[n_in + j]
                assert view[0] == VIEW_SPILL_ROWS and storage == 0
                tr = next(x for x in plan.transfers if x.kind == "spill_rows" and x.tensor == t)
                assert view[4] == tr.address and view[1] * view[2] == tr.nbytes
    assert seen_spill == len(rows)
    assert seen_stream == len(streamed)
    # A fetch writes the tensor's first arena copy (the original tensor index).
    for tr in fetched:
        k = next(i for i, o in enumerate(ops) if o[0] == "Fetch" and steps[i] == tr.step
                 and o[2] == [planned.tensors[tr.tensor].source_index])
        assert offsets[ops[k][2][0]] == plan.segments_of(tr.tensor)[0].offset


def test_checker_of_the_file_catches_views_that_disagree_with_the_inputs(planned, tmp_path):
    rows = row_spilled(planned)
    plan = streamed_plan(planned, tuple(rows))
    model = _written(planned, plan, tmp_path)
    fb = io.schema()
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != fb.BuiltinOperator.CUSTOM or \
                io._name(code.customCode) != STREAMED_GROUP_OP:
            continue
        words = io.unpack_int32(bytes(bytearray(op.customOptions)))
        _, views = group_views(words)
        v = next((i for i, view in enumerate(views) if view[0] == VIEW_SPILL_ROWS), None)
        if v is None:
            continue
        # A spill_rows view turned into a whole one: the op's tensors no longer match.
        words[GROUP_HEADER + 6 + 5 * v] = 0
        words[1] = -1
        op.customOptions = list(io.pack_int32(words))
        errors = check_rewritten(io.write_model(model))
        assert errors and STREAMED_GROUP_OP in errors[0]
        return
    raise AssertionError("no group spills rows in this plan")


def test_options_cut_short_are_refused():
    with pytest.raises(ValueError):
        group_views([1, -1, 0x31475054, 1])
    with pytest.raises(ValueError):
        group_views([1, -1, 0x31475054, 1, 3, 1, 2, 99])  # three views announced, none given


def test_group_moving_rows_to_two_storages_is_refused(planned, tmp_path):
    rows = row_spilled(planned)
    plan = streamed_plan(planned, tuple(rows))
    by_group: dict[int, list[Transfer]] = {}
    for tr in plan.transfers:
        if tr.kind in ("spill_rows", "stream"):
            by_group.setdefault(tr.step, []).append(tr)
    step, trs = max(by_group.items(), key=lambda kv: len(kv[1]))
    if len(trs) < 2:
        pytest.skip("no group moves two tensors in this plan")
    moved = trs[1]
    renamed = tuple(Transfer(t.kind, t.tensor, t.step, "other", t.nbytes, t.address)
                    if t.tensor == moved.tensor else t for t in plan.transfers)
    from dataclasses import replace

    with pytest.raises(PlannerError, match="several storages"):
        rewrite(planned, replace(plan, transfers=renamed), TINY_UNET, PROFILE)


def test_c_glue_tables_refuse_streamed_groups(planned, tmp_path):
    from backends.c.glue import write_c_glue

    plan = streamed_plan(planned, tuple(row_spilled(planned)))
    with pytest.raises(PlannerError, match="cannot replay streamed groups"):
        write_c_glue(planned, plan, TINY_UNET, tmp_path, profile=PROFILE)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_tail_counts_one_group_data_per_group_op(planned, tmp_path):
    """Each TinyPlanStreamedGroup adds GroupData (InitGroup's one allocation) and nothing
    in Prepare: the program stays in the options, views are checked on eval tensors."""
    from backends.tflite.tail import CUSTOM_STRUCTS, predict_tail

    model = _written(planned, streamed_plan(planned), tmp_path)
    allocs = [a for a in predict_tail(model).allocations
              if a.what.startswith(STREAMED_GROUP_OP)]
    assert sorted(a.size for a in allocs) == \
        [CUSTOM_STRUCTS["GroupData"]] * len(_group_ops(planned))
