"""The checker rejects each kind of bad plan with its own message and accepts valid ones.

Plans are made by hand on a five-op graph with one skip connection:

    x -> conv a -> conv m -> conv c -> concat[a, c] -> conv e (+ scratch s)
    steps: x [0,1], a [1,4], m [2,3], c [3,4], d [4,5], e [5,5], s [5,5]

`a` is cold between steps 2 and 4: it can be spilled after op 1, fetched before the
concat (step 4), streamed into the concat, or streamed into the conv when concat and
conv are fused. Each bad plan breaks one rule of a valid plan.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from planner.analysis import buffers, lifetimes, line_buffer_bytes
from planner.checker import PlanError, assert_valid, check
from planner.device import load_profile
from planner.ir import Graph, OpKind, Role, align
from planner.plan import Fusion, Part, Plan, Segment, Transfer
from planner.planners.base import Request, registry
from tests.graph_factory import GraphBuilder, random_dag, small_unet

CAP = {"qspi": 1 << 20}
X, A, M, C, D, E, S = range(7)  # tensor ids of skip_graph


def skip_graph(merge: OpKind = OpKind.CONCAT, extra_output: bool = False) -> Graph:
    b = GraphBuilder("skip")
    x = b.input((1, 4, 4, 2))
    a = b.op(OpKind.CONV, [x], (1, 4, 4, 4), kernel=(3, 3))
    m = b.op(OpKind.CONV, [a], (1, 4, 4, 4), kernel=(3, 3))
    c = b.op(OpKind.CONV, [m], (1, 4, 4, 4), kernel=(3, 3))
    if merge == OpKind.CONCAT:
        d = b.op(OpKind.CONCAT, [a, c], (1, 4, 4, 8), axis=3)
    else:
        d = b.op(merge, [a, c], (1, 4, 4, 4))
    e = b.op(OpKind.CONV, [d], (1, 4, 4, 2), scratch_bytes=48, kernel=(3, 3))
    g = b.build([c, e] if extra_output else [e])
    # Ids 0..6 as named above; the conv filters (constants) come after them.
    assert [t.name for t in g.tensors][:7] == ["input", "t1", "t2", "t3", "t4", "t5", "t6"]
    assert all(t.role == Role.CONSTANT for t in g.tensors[7:])
    return g


def layout(specs: list[tuple], peak: int | None = None, graph: Graph | None = None,
           **plan_fields) -> Plan:
    """A plan whose segments sit one above the other (so never overlap), in list order.

    A spec is (tensor, first, last[, size[, part[, role]]]); size defaults to the
    aligned tensor size in `graph` (skip_graph by default).
    """
    g = graph or skip_graph()
    segs, off = [], 0
    for spec in specs:
        t, first, last, *rest = spec
        size = rest[0] if rest else align(g.tensors[t].nbytes)
        part = rest[1] if len(rest) > 1 else None
        role = rest[2] if len(rest) > 2 else "tensor"
        segs.append(Segment(t, first, last, off, size, part, role))
        off += size
    return Plan("skip", "hand", g.num_steps, off if peak is None else peak, tuple(segs),
                **plan_fields)


def spill(t: int, step: int, nbytes: int = 64, address: int = 0, part: int | None = None,
          storage: str = "qspi") -> Transfer:
    return Transfer("spill", t, step, storage, nbytes, address, part)


def fetch(t: int, step: int, nbytes: int = 64, address: int = 0, part: int | None = None,
          kind: str = "fetch") -> Transfer:
    return Transfer(kind, t, step, "qspi", nbytes, address, part)  # type: ignore[arg-type]


BASE = [(X, 0, 1), (M, 2, 3), (C, 3, 4), (D, 4, 5), (E, 5, 5), (S, 5, 5)]


def spill_plan() -> Plan:
    """a spilled after op 1 (step 2) and fetched back before the concat (step 4)."""
    return layout([*BASE, (A, 1, 2), (A, 4, 4)], transfers=(spill(A, 2), fetch(A, 4)))


def stream_plan() -> Plan:
    """a spilled, then streamed into the concat through a one-row line buffer."""
    g = skip_graph()
    line = line_buffer_bytes(g, A, None)
    return layout([*BASE, (A, 1, 2), (A, 4, 4, line, None, "line_buffer")],
                  transfers=(spill(A, 2), fetch(A, 4, kind="stream")), fusions=(Fusion(3),))


def fused_conv_plan() -> Plan:
    """concat+conv fused: d never exists, a streams into the conv, c stays to step 5."""
    g = skip_graph()
    line = line_buffer_bytes(g, A, 4)
    specs = [(X, 0, 1), (M, 2, 3), (C, 3, 5), (E, 5, 5), (S, 5, 5), (A, 1, 2),
             (A, 5, 5, line, None, "line_buffer")]
    return layout(specs, transfers=(spill(A, 2), fetch(A, 5, kind="stream")),
                  fusions=(Fusion(3, 4),))


def split_plan(merge: OpKind = OpKind.CONCAT) -> Plan:
    """a split in two 2-channel parts; part 1 spilled at step 2 and fetched at step 4 for the
    concat (op 3), which takes the parts as two inputs: a fused concat."""
    parts = (Part(A, 0, 0, 2, 32), Part(A, 1, 2, 4, 32))
    specs = [*BASE, (A, 1, 4, 32, 0), (A, 1, 2, 32, 1), (A, 4, 4, 32, 1)]
    return layout(specs, parts=parts, fusions=(Fusion(3, None),),
                  transfers=(spill(A, 2, 32, part=1), fetch(A, 4, 32, part=1)))


def errors_of(plan: Plan, graph: Graph | None = None, cap=CAP) -> list[str]:
    return check(graph or skip_graph(), plan, cap)


def assert_rejects(plan: Plan, *fragments: str, graph: Graph | None = None, cap=CAP) -> None:
    errs = errors_of(plan, graph, cap)
    for fragment in fragments:
        assert any(fragment in e for e in errs), f"{fragment!r} not in {errs}"
    with pytest.raises(PlanError, match="invalid"):
        assert_valid(graph or skip_graph(), plan, cap)


def swap_segment(plan: Plan, index: int, **changes) -> Plan:
    segs = list(plan.segments)
    segs[index] = replace(segs[index], **changes)
    return replace(plan, segments=tuple(segs))


def drop_segment(plan: Plan, tensor: int, first: int, role: str = "tensor") -> Plan:
    kept = tuple(s for s in plan.segments
                 if not (s.tensor == tensor and s.first == first and s.role == role))
    assert len(kept) == len(plan.segments) - 1
    return replace(plan, segments=kept)


# --- the graph the hand-made plans rely on ---------------------------------------------


def test_skip_graph_lifetimes() -> None:
    assert lifetimes(skip_graph()) == {X: (0, 1), A: (1, 4), M: (2, 3), C: (3, 4), D: (4, 5),
                                       E: (5, 5), S: (5, 5)}


# --- valid plans pass ------------------------------------------------------------------


@pytest.mark.parametrize("make", [spill_plan, stream_plan, fused_conv_plan, split_plan])
def test_hand_made_valid_plans_pass(make) -> None:
    plan = make()
    assert errors_of(plan) == []
    assert_valid(skip_graph(), plan, CAP)


def test_whole_layout_without_transfers_passes() -> None:
    g = skip_graph()
    plan = layout([(b.tensor, b.first, b.last) for b in buffers(g)])
    assert errors_of(plan) == []


@pytest.mark.parametrize("name", ["tflm-greedy", "linear"])
@pytest.mark.parametrize("graph", [skip_graph(), skip_graph(extra_output=True), small_unet(),
                                   small_unet(transpose_scratch=False)],
                         ids=["skip", "skip2", "unet", "unet_noscratch"])
def test_heuristic_plans_pass(name: str, graph: Graph) -> None:
    profile = load_profile("qspi-flash")
    plan = registry()[name](Request(graph, profile))
    assert check(graph, plan, profile.capacities) == []


def test_greedy_reuses_memory_and_linear_does_not() -> None:
    g = small_unet()
    profile = load_profile("none")
    greedy = registry()["tflm-greedy"](Request(g, profile))
    linear = registry()["linear"](Request(g, profile))
    assert linear.peak_bytes == sum(b.size for b in buffers(g))
    assert greedy.peak_bytes < linear.peak_bytes


# --- geometry ---------------------------------------------------------------------------


def test_overlapping_live_segments() -> None:
    plan = spill_plan()
    m = next(i for i, s in enumerate(plan.segments) if s.tensor == M)
    c_off = next(s.offset for s in plan.segments if s.tensor == C)
    assert_rejects(swap_segment(plan, m, offset=c_off), "tensors 2 and 3 overlap",
                   "both alive at step 3")


def test_same_address_at_disjoint_times_is_fine() -> None:
    plan = spill_plan()
    x = next(i for i, s in enumerate(plan.segments) if s.tensor == X)
    c_off = next(s.offset for s in plan.segments if s.tensor == C)  # c [3,4], x [0,1]
    assert errors_of(swap_segment(plan, x, offset=c_off)) == []


def test_segment_above_peak() -> None:
    plan = spill_plan()
    assert_rejects(replace(plan, peak_bytes=plan.peak_bytes - 16), "above the peak")


def test_misaligned_offset() -> None:
    plan = spill_plan()
    last = len(plan.segments) - 1
    bad = swap_segment(plan, last, offset=plan.segments[last].offset + 8)
    assert_rejects(replace(bad, peak_bytes=plan.peak_bytes + 16), "offset not a non-negative")


def test_negative_offset() -> None:
    plan = swap_segment(spill_plan(), 0, offset=-16)
    assert_rejects(plan, "offset not a non-negative")


def test_segment_too_small_for_its_tensor() -> None:
    plan = spill_plan()
    d = next(i for i, s in enumerate(plan.segments) if s.tensor == D)
    assert_rejects(swap_segment(plan, d, size=64), "size 64 below 128")


def test_segment_steps_outside_the_graph() -> None:
    plan = spill_plan()
    e = next(i for i, s in enumerate(plan.segments) if s.tensor == E)
    assert_rejects(swap_segment(plan, e, last=6), "steps outside 0..5")


def test_step_count_mismatch() -> None:
    assert_rejects(replace(spill_plan(), num_steps=5), "plan has 5 steps, graph has 6")


def test_segment_of_a_constant_or_unknown_tensor() -> None:
    b = GraphBuilder("const")
    x = b.input((1, 2, 2, 1))
    w = b.tensor((4,), Role.CONSTANT)
    y = b.op(OpKind.CONV, [x, w], (1, 2, 2, 1))
    g = b.build([y])
    plan = Plan("const", "hand", g.num_steps, 64,
                (Segment(x, 0, 1, 0, 16), Segment(y, 1, 1, 16, 16), Segment(w, 1, 1, 32, 16)))
    assert any("not planned in the arena" in e for e in check(g, plan))
    plan = replace(plan, segments=(*plan.segments[:2], Segment(99, 1, 1, 32, 16)))
    assert any("no such tensor" in e for e in check(g, plan))


# --- every use finds its data -------------------------------------------------------------


def test_input_not_resident_at_consumer() -> None:
    plan = replace(drop_segment(spill_plan(), A, 4), transfers=(spill(A, 2),))
    assert_rejects(plan, "op 3 input tensor 1 't1' at step 4: not resident")


def test_segment_created_late() -> None:
    plan = spill_plan()
    c = next(i for i, s in enumerate(plan.segments) if s.tensor == C)
    assert_rejects(swap_segment(plan, c, first=4), "tensor 3 first resident at 4, created at 3",
                   "op 2 output tensor 3 't3' at step 3: not resident")


def test_graph_output_not_resident_at_last_step() -> None:
    g = skip_graph(extra_output=True)
    assert lifetimes(g)[C] == (3, 5)
    plan = spill_plan()  # c [3,4]: enough for the concat, not for a graph output
    assert_rejects(plan, "graph output tensor 3 't3' at step 5: not resident", graph=g)
    c = next(i for i, s in enumerate(plan.segments) if s.tensor == C)
    assert errors_of(swap_segment(plan, c, last=5), g) == []


def test_graph_input_missing_at_step_zero() -> None:
    plan = drop_segment(spill_plan(), X, 0)
    assert_rejects(plan, "graph input tensor 0 'input' at step 0: not resident",
                   "op 0 input tensor 0")


def test_scratch_missing_at_its_op() -> None:
    plan = drop_segment(spill_plan(), S, 5)
    assert_rejects(plan, "op 4 output tensor 6 't6' at step 5: not resident")


def test_scratch_too_small() -> None:
    plan = spill_plan()
    s = next(i for i, seg in enumerate(plan.segments) if seg.tensor == S)
    assert_rejects(swap_segment(plan, s, size=32), "size 32 below 48")


# --- transfers ----------------------------------------------------------------------------


def test_fetch_without_spill() -> None:
    plan = replace(spill_plan(), transfers=(fetch(A, 4),))
    assert_rejects(plan, "fetch of tensor 1 at step 4 has no earlier spill")


def test_fetch_before_or_at_its_spill() -> None:
    # Segments a [1,3] and [3,3] would overlap in time: spill at 3 and fetch at 3.
    plan = layout([*BASE, (A, 1, 3), (A, 4, 4)], transfers=(spill(A, 3), fetch(A, 4)))
    assert errors_of(plan) == []
    plan = layout([*BASE, (A, 1, 3), (A, 4, 4)], transfers=(spill(A, 3), fetch(A, 3)))
    assert_rejects(plan, "fetch of tensor 1 at step 3 has no earlier spill",
                   "fetch of tensor 1 at step 3 starts no segment",
                   "tensor 1 reappears at step 4 without a fetch")


def test_fetch_from_another_storage() -> None:
    plan = replace(spill_plan(), transfers=(spill(A, 2), replace(fetch(A, 4), storage="sd")))
    assert_rejects(plan, "fetch of tensor 1 at step 4 has no earlier spill",
                   cap={"qspi": 1 << 20, "sd": 1 << 20})


def test_segment_reappears_without_fetch() -> None:
    plan = replace(spill_plan(), transfers=(spill(A, 2),))
    assert_rejects(plan, "tensor 1 reappears at step 4 without a fetch")


def test_spill_while_not_resident() -> None:
    plan = replace(spill_plan(), transfers=(spill(A, 3), fetch(A, 4)))
    assert_rejects(plan, "tensor 1 spilled at step 3 while not resident")


def test_spilled_twice() -> None:
    plan = replace(spill_plan(), transfers=(spill(A, 1), spill(A, 2, address=64), fetch(A, 4)))
    assert_rejects(plan, "tensor 1 part None spilled 2 times")


def test_transfer_of_wrong_size_or_scratch() -> None:
    plan = replace(spill_plan(), transfers=(spill(A, 2, 48), fetch(A, 4, 48)))
    assert_rejects(plan, "spill of tensor 1: 48 B, expected 64")
    plan = replace(spill_plan(), transfers=(*spill_plan().transfers, spill(S, 5, 48, 64)))
    assert_rejects(plan, "transfer of tensor 6: not a planned activation")


def test_storage_overflow() -> None:
    assert_rejects(spill_plan(), "storage 'qspi': spills exceed its capacity 32",
                   cap={"qspi": 32})
    assert errors_of(spill_plan(), cap={"qspi": 64}) == []


def test_unknown_storage() -> None:
    assert_rejects(spill_plan(), "unknown storage 'qspi'", cap={"flash": 1 << 20})


def test_overlapping_spill_addresses() -> None:
    # m spilled at step 2 and fetched at 3 as well; its spill address lands inside a's.
    specs = [(X, 0, 1), (M, 2, 2), (M, 3, 3), (C, 3, 4), (D, 4, 5), (E, 5, 5), (S, 5, 5),
             (A, 1, 2), (A, 4, 4)]
    ok = (spill(A, 2), fetch(A, 4), spill(M, 2, address=64), fetch(M, 3, address=64))
    assert errors_of(layout(specs, transfers=ok)) == []
    bad = (spill(A, 2), fetch(A, 4), spill(M, 2, address=32), fetch(M, 3, address=32))
    assert_rejects(layout(specs, transfers=bad), "storage 'qspi': spills overlap at byte 32")


@pytest.mark.parametrize("address", [64, 16, -64])
def test_fetch_from_another_address(address: int) -> None:
    # Once matched to its spill by tensor, part and storage only: reading bytes no spill
    # wrote passed the checker and failed in the executor.
    plan = replace(spill_plan(), transfers=(spill(A, 2), fetch(A, 4, address=address)))
    assert_rejects(plan, f"fetch of tensor 1 at step 4 reads address {address}, its spill wrote 0")
    streamed = fetch(A, 4, address=address, kind="stream")
    plan = replace(stream_plan(), transfers=(spill(A, 2), streamed))
    assert_rejects(plan, "stream of tensor 1 at step 4 reads address")


def test_negative_storage_address() -> None:
    plan = replace(spill_plan(), transfers=(spill(A, 2, address=-64), fetch(A, 4, address=-64)))
    assert_rejects(plan, "negative address")


def test_transfer_of_undeclared_part_is_a_violation() -> None:
    # Once raised KeyError in _check_transfers instead of reporting a violation.
    plan = replace(spill_plan(), transfers=(spill(A, 2, part=1), fetch(A, 4, part=1)))
    assert_rejects(plan, "spill of tensor 1: part 1 is not declared")


def test_line_buffer_of_unknown_tensor_is_a_violation() -> None:
    # Once raised IndexError in _check_fusions (line_buffer_bytes) instead of reporting.
    plan = stream_plan()
    bad = replace(plan, peak_bytes=plan.peak_bytes + 16, segments=(
        *plan.segments, Segment(99, 4, 4, plan.peak_bytes, 16, None, "line_buffer")))
    assert any("no such tensor" in e for e in errors_of(bad))


# --- streams and fusions --------------------------------------------------------------------


def test_stream_without_line_buffer() -> None:
    plan = drop_segment(stream_plan(), A, 4, role="line_buffer")
    assert_rejects(plan, "op 3 input tensor 1 't1' at step 4: streamed part None has no line "
                   "buffer")


def test_line_buffer_too_small() -> None:
    plan = stream_plan()
    i = next(i for i, s in enumerate(plan.segments) if s.role == "line_buffer")
    need = plan.segments[i].size
    assert need == 16  # one row of a 4-row tensor of 64 B
    plan = fused_conv_plan()
    i = next(i for i, s in enumerate(plan.segments) if s.role == "line_buffer")
    assert plan.segments[i].size == 48  # kernel height 3 rows into the fused conv
    assert_rejects(swap_segment(plan, i, size=32), "line buffer of tensor 1 at step 5: 32 < 48")


def test_stream_into_an_op_that_is_not_fused() -> None:
    plan = replace(stream_plan(), fusions=())
    assert_rejects(plan, "line buffer of tensor 1 is not at one fused op's step",
                   "op 3 input tensor 1 't1' at step 4: not resident")


def test_stream_without_spill() -> None:
    plan = replace(stream_plan(), transfers=(fetch(A, 4, kind="stream"),))
    assert_rejects(plan, "stream of tensor 1 at step 4 has no earlier spill")


def test_fusion_of_a_non_fusible_group() -> None:
    assert_rejects(replace(stream_plan(), fusions=(Fusion(2),)),
                   "fusion of ops 2/None is not a fusible concat group")
    assert_rejects(replace(fused_conv_plan(), fusions=(Fusion(3, 1),)),
                   "fusion of ops 3/1 is not a fusible concat group")


def test_fused_concat_output_with_segments() -> None:
    plan = fused_conv_plan()
    plan = layout([(s.tensor, s.first, s.last, s.size, s.part, s.role) for s in plan.segments]
                  + [(D, 4, 5)], transfers=plan.transfers, fusions=plan.fusions)
    assert_rejects(plan, "fused concat output 4 still has arena segments")


def test_fused_conv_needs_concat_inputs_at_its_step() -> None:
    plan = fused_conv_plan()
    c = next(i for i, s in enumerate(plan.segments) if s.tensor == C)
    assert_rejects(swap_segment(plan, c, last=4), "op 4 fused input tensor 3 't3' at step 5")


# --- channel splits -------------------------------------------------------------------------


def part_segment(plan: Plan, part: int, first: int) -> int:
    return next(i for i, s in enumerate(plan.segments)
                if s.tensor == A and s.part == part and s.first == first)


def test_split_parts_not_back_to_back() -> None:
    plan = split_plan()
    i = part_segment(plan, 1, 1)
    bad = swap_segment(plan, i, offset=plan.peak_bytes)
    bad = replace(bad, peak_bytes=plan.peak_bytes + 32)
    assert_rejects(bad, "first segments of its parts are not back to back")


def test_split_parts_start_at_different_steps() -> None:
    plan = split_plan()
    assert_rejects(swap_segment(plan, part_segment(plan, 1, 1), first=2),
                   "not back to back")


def test_split_tensor_read_whole_by_non_concat() -> None:
    g = skip_graph(OpKind.ELEMENTWISE)
    assert_rejects(split_plan(), "op 3 input tensor 1 't1' at step 4: split tensor read whole "
                   "after its split", graph=g)


def test_split_tensor_read_by_an_unfused_concat() -> None:
    # Only the fused concat kernel takes the parts as two inputs; the builtin reads one tensor.
    assert_rejects(replace(split_plan(), fusions=()),
                   "op 3 input tensor 1 't1' at step 4: split tensor read whole after its split")


def test_split_tensor_read_whole_while_interleaved_is_fine() -> None:
    # op 1 (a conv) reads a at step 2, while both first segments still hold it whole.
    g = skip_graph(OpKind.ELEMENTWISE)
    plan = split_plan()
    specs = [*BASE, (A, 1, 4, 32, 0), (A, 1, 4, 32, 1)]
    whole = layout(specs, parts=plan.parts)
    assert errors_of(whole, g) == []


def test_split_kept_part_leaves_first() -> None:
    plan = split_plan()
    specs = [*BASE, (A, 1, 2, 32, 0), (A, 1, 4, 32, 1), (A, 4, 4, 32, 0)]
    bad = layout(specs, parts=plan.parts,
                 transfers=(spill(A, 2, 32, part=0), fetch(A, 4, 32, part=0)))
    assert_rejects(bad, "kept part leaves before the spilled part")


def test_split_parts_must_cover_the_channels() -> None:
    plan = split_plan()
    bad = replace(plan, parts=(Part(A, 0, 0, 1, 16), Part(A, 1, 2, 4, 32)))
    assert_rejects(bad, "parts do not split channels 0..4 in two",
                   "part sizes do not match their channels")
    only_one = replace(plan, parts=(Part(A, 1, 2, 4, 32),))
    assert_rejects(only_one, "a split needs parts 0 and 1")


def test_split_tensor_with_whole_segment() -> None:
    plan = split_plan()
    bad = layout([(s.tensor, s.first, s.last, s.size, s.part) for s in plan.segments]
                 + [(A, 1, 1)], parts=plan.parts, transfers=plan.transfers)
    assert_rejects(bad, "split tensor also has whole-tensor segments")


def test_split_part_segment_too_small() -> None:
    plan = split_plan()
    i = part_segment(plan, 1, 4)
    assert_rejects(swap_segment(plan, i, size=16), "size 16 below 32")


# --- planners' plans on random graphs stay valid under small perturbations -----------------


def test_checker_catches_any_single_shift_into_a_live_neighbour() -> None:
    profile = load_profile("none")
    for seed in range(5):
        g = random_dag(random.Random(seed))
        plan = registry()["linear"](Request(g, profile))
        segs = plan.segments
        for i, s in enumerate(segs):
            for other in segs:
                if other is s or not s.overlaps_in_time(other):
                    continue
                bad = swap_segment(plan, i, offset=other.offset)
                assert any("overlap" in e for e in check(g, bad)), (seed, s, other)
                break


# --- the checker and the executor agree ------------------------------------------------------

TINY_TFLITE = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / \
    "tiny_unet_int8.tflite"


def split_into_concat() -> tuple[Graph, Plan]:
    """tiny_unet_int8's first skip tensor split; part 1 spilled and fetched for its concat,
    declared a fused concat (the builtin CONCATENATION cannot take the parts)."""
    from frontends import load_model

    g = load_model(TINY_TFLITE)
    plan = registry()["linear"](Request(g, load_profile("qspi-flash")))
    life = lifetimes(g)
    concat = next(op for op in g.ops if op.kind == OpKind.CONCAT)
    skip = next(t for t in concat.inputs if life[t][1] - life[t][0] > 2)
    tensor = g.tensors[skip]
    channels = tensor.channels
    assert channels is not None and channels >= 2
    kept = tensor.nbytes * (channels // 2) // channels
    gone = tensor.nbytes - kept
    first, last = life[skip]
    whole = next(s for s in plan.segments if s.tensor == skip)
    step = concat.index + 1
    segments = [s for s in plan.segments if s.tensor != skip] + [
        Segment(skip, first, last, whole.offset, align(kept), 0),
        Segment(skip, first, first + 1, whole.offset + align(kept), align(gone), 1),
        Segment(skip, step, step, plan.peak_bytes, align(gone), 1),
    ]
    split = replace(
        plan, planner="hand", segments=tuple(segments),
        peak_bytes=plan.peak_bytes + align(gone),
        parts=(Part(skip, 0, 0, channels // 2, kept), Part(skip, 1, channels // 2, channels, gone)),
        transfers=(Transfer("spill", skip, first + 1, "qspi", gone, 0, 1),
                   Transfer("fetch", skip, step, "qspi", gone, 0, 1)),
        fusions=(Fusion(concat.index, None),))
    capacities = load_profile("qspi-flash").capacities
    assert check(g, split, capacities) == []
    plain = check(g, replace(split, fusions=()), capacities)
    assert any("split tensor read whole after its split" in e for e in plain), plain
    return g, split


def test_split_into_fused_concat_runs() -> None:
    from backends.executor import run_plan

    g, plan = split_into_concat()
    assert run_plan(g, plan, TINY_TFLITE).mismatch is None


@pytest.mark.parametrize("emit", ["tflite", "shim"])
def test_split_into_fused_concat_is_written(tmp_path: Path, emit: str) -> None:
    from backends import write_outputs

    g, plan = split_into_concat()
    assert write_outputs(g, plan, TINY_TFLITE, tmp_path, [emit],
                         profile=load_profile("qspi-flash"))


def test_split_into_fused_concat_c_glue_is_written(tmp_path: Path) -> None:
    from backends import write_outputs

    g, plan = split_into_concat()
    written = write_outputs(g, plan, TINY_TFLITE, tmp_path, ["c"],
                            profile=load_profile("qspi-flash"))
    assert any(p.name.endswith(".c") for p in written)


def skip_onnx(path: Path) -> Path:
    """skip_graph as a float ONNX model (NCHW, no scratch): x, a, m, c, d = concat[a, c], e."""
    rng = np.random.default_rng(0)

    def weight(name: str, co: int, ci: int):
        return numpy_helper.from_array(rng.standard_normal((co, ci, 3, 3)).astype(np.float32),
                                       name)

    def conv(x: str, w: str, y: str):
        return helper.make_node("Conv", [x, w], [y], pads=[1] * 4, kernel_shape=[3, 3], name=y)

    nodes = [conv("x", "w0", "a"), conv("a", "w1", "m"), conv("m", "w2", "c"),
             helper.make_node("Concat", ["a", "c"], ["d"], axis=1, name="d"), conv("d", "w3", "e")]
    graph = helper.make_graph(
        nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 2, 8, 8])],
        [weight("w0", 4, 2), weight("w1", 4, 4), weight("w2", 4, 4), weight("w3", 2, 8)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_plans(g: Graph) -> dict[str, Plan]:
    """Hand-made plans of skip_onnx: the same shapes of plan as on skip_graph."""
    ids = {t.name: t.id for t in g.tensors}
    x, a, m, c, d, e = (ids[n] for n in "xamcde")
    assert lifetimes(g) == {x: (0, 1), a: (1, 4), m: (2, 3), c: (3, 4), d: (4, 5), e: (5, 5)}
    n = g.tensors[a].nbytes  # 1024: 8 rows of 128 B
    base = [(x, 0, 1), (m, 2, 3), (c, 3, 4), (d, 4, 5), (e, 5, 5)]
    q = "qspi"
    sp, fe = Transfer("spill", a, 2, q, n), Transfer("fetch", a, 4, q, n)

    def lay(specs, **fields) -> Plan:
        return layout(specs, graph=g, **fields)

    half = n // 2
    parts = (Part(a, 0, 0, 2, half), Part(a, 1, 2, 4, half))
    no_d = [(x, 0, 1), (m, 2, 3), (c, 3, 5), (e, 5, 5)]
    return {
        "spill_fetch": lay([*base, (a, 1, 2), (a, 4, 4)], transfers=(sp, fe)),
        "stream_concat": lay([*base, (a, 1, 2), (a, 4, 4, line_buffer_bytes(g, a, None), None,
                                                 "line_buffer")],
                             transfers=(sp, replace(fe, kind="stream")), fusions=(Fusion(3),)),
        "fused_conv": lay(no_d + [(a, 1, 2), (a, 5, 5, line_buffer_bytes(g, a, 4), None,
                                              "line_buffer")],
                          transfers=(sp, replace(fe, kind="stream", step=5)),
                          fusions=(Fusion(3, 4),)),
        "fused_conv_split_fetch": lay(
            no_d + [(a, 1, 5, half, 0), (a, 1, 2, half, 1), (a, 5, 5, half, 1)], parts=parts,
            transfers=(Transfer("spill", a, 2, q, half, 0, 1),
                       Transfer("fetch", a, 5, q, half, 0, 1)),
            fusions=(Fusion(3, 4),)),
        "fused_conv_split_stream": lay(
            no_d + [(a, 1, 5, half, 0), (a, 1, 2, half, 1),
                    (a, 5, 5, line_buffer_bytes(g, a, 4, half), 1, "line_buffer")],
            parts=parts,
            transfers=(Transfer("spill", a, 2, q, half, 0, 1),
                       Transfer("stream", a, 5, q, half, 0, 1)),
            fusions=(Fusion(3, 4),)),
    }


ONNX_PLANS = ["spill_fetch"]
# The fused kernels are int8 NHWC (planner/kernels.py): on a float NCHW ONNX graph these
# shapes of plan need a kernel that does not exist, and the checker says so.
ONNX_FUSED_PLANS = ["stream_concat", "fused_conv", "fused_conv_split_fetch",
                    "fused_conv_split_stream"]


@pytest.mark.parametrize("name", ONNX_FUSED_PLANS)
def test_checker_refuses_fusions_no_kernel_computes(tmp_path: Path, name: str) -> None:
    from frontends import load_model

    path = skip_onnx(tmp_path / "skip.onnx")
    g = load_model(path)
    errors = check(g, onnx_plans(g)[name], CAP)
    assert any("runs tflite graphs, not onnx" in e for e in errors), errors


@pytest.mark.parametrize("name", ONNX_PLANS)
def test_checker_accepted_plans_run_in_the_executor(tmp_path: Path, name: str) -> None:
    from backends.executor import run_plan
    from frontends import load_model

    path = skip_onnx(tmp_path / "skip.onnx")
    g = load_model(path)
    plan = onnx_plans(g)[name]
    assert check(g, plan, CAP) == []
    result = run_plan(g, plan, path)
    assert result.mismatch is None
    assert sum(s.bytes_read for s in result.execution.storage.values()) > 0


@pytest.fixture(scope="module")
def onnx_skip(tmp_path_factory):
    from backends.executor import kernels_for, random_inputs
    from frontends import load_model

    path = skip_onnx(tmp_path_factory.mktemp("skip") / "skip.onnx")
    g = load_model(path)
    kernels = kernels_for(g, path)
    feeds = random_inputs(g, 0)
    return path, g, kernels, feeds, kernels.reference(feeds)


def mutate(plan: Plan, rng: random.Random) -> Plan:
    """One random local change to segments, transfers, addresses or fusions."""
    segs, trs = list(plan.segments), list(plan.transfers)
    i = rng.randrange(len(segs))
    s = segs[i]
    kind = rng.randrange(9)
    if kind == 0:
        segs[i] = replace(s, offset=rng.randrange(0, plan.peak_bytes // 16 + 1) * 16)
    elif kind == 1:
        segs[i] = replace(s, last=min(s.last + rng.randint(1, 2), plan.num_steps - 1))
    elif kind == 2:
        segs[i] = replace(s, first=max(s.first - rng.randint(1, 2), 0))
    elif kind == 3:
        segs[i] = replace(s, last=max(s.first, s.last - 1))
    elif kind == 4:
        segs[i] = replace(s, size=max(16, s.size - 16 * rng.randint(1, 4)))
    elif kind == 5 and trs:
        j = rng.randrange(len(trs))
        trs[j] = replace(trs[j], step=trs[j].step + rng.choice([-1, 1]))
    elif kind == 6 and trs:
        j = rng.randrange(len(trs))
        if trs[j].kind != "spill":
            trs[j] = replace(trs[j], kind="stream" if trs[j].kind == "fetch" else "fetch")
    elif kind == 7 and plan.fusions:
        return replace(plan, fusions=plan.fusions[1:])
    elif kind == 8 and trs:
        j = rng.randrange(len(trs))
        trs[j] = replace(trs[j], address=trs[j].address + rng.choice([-16, 16, 4096]))
    return replace(plan, segments=tuple(segs), transfers=tuple(trs),
                   peak_bytes=max(x.end for x in segs))


@pytest.mark.parametrize("name", ONNX_PLANS)
def test_mutants_the_checker_accepts_run_correctly(onnx_skip, name: str) -> None:
    """Soundness against the executor: no accepted mutant reads poison or stale bytes."""
    from backends.executor import run_plan

    path, g, kernels, feeds, reference = onnx_skip
    base = onnx_plans(g)[name]
    rng = random.Random(name)
    accepted = 0
    for _ in range(150):
        plan = mutate(mutate(base, rng), rng) if rng.random() < 0.3 else mutate(base, rng)
        if check(g, plan, CAP):
            continue
        accepted += 1
        result = run_plan(g, plan, path, kernels=kernels, inputs=feeds, reference=reference)
        assert result.mismatch is None, (plan, result.mismatch)
    assert accepted > 0


# --- the checker never crashes, whatever the plan says ----------------------------------------

_steps = st.integers(-1, 7)
_ids = st.integers(-2, 8)
_maybe_part = st.sampled_from([None, None, 0, 1, 2])
_segments = st.builds(Segment, _ids, _steps, _steps,
                      st.integers(-1, 24).map(lambda k: 16 * k) | st.integers(-8, 400),
                      st.integers(-1, 12).map(lambda k: 16 * k), _maybe_part,
                      st.sampled_from(["tensor", "tensor", "line_buffer"]))
_transfers = st.builds(Transfer, st.sampled_from(["spill", "fetch", "stream"]), _ids, _steps,
                       st.sampled_from(["qspi", "sd"]), st.integers(-16, 160),
                       st.integers(-32, 256), _maybe_part)
_parts = st.builds(Part, _ids, st.integers(-1, 2), st.integers(-1, 8),
                   st.integers(-1, 8), st.integers(-16, 128))
_fusions = st.builds(Fusion, st.integers(-1, 6), st.none() | st.integers(-1, 6))


@settings(max_examples=300, deadline=None)
@given(st.lists(_segments, max_size=9), st.lists(_parts, max_size=3),
       st.lists(_transfers, max_size=5), st.lists(_fusions, max_size=2),
       st.integers(0, 400), st.sampled_from([None, {}, CAP]))
def test_checker_reports_instead_of_raising(segs, parts, trs, fusions, peak, cap) -> None:
    g = skip_graph()
    plan = Plan("fuzz", "fuzz", g.num_steps, peak, tuple(segs), tuple(parts), tuple(trs),
                tuple(fusions))
    errors = check(g, plan, cap)
    assert all(isinstance(e, str) and "\n" not in e for e in errors)


def test_part_of_unknown_tensor_is_a_violation() -> None:
    # Once raised IndexError in _check_parts.
    plan = replace(spill_plan(), parts=(Part(99, 0, 0, 2, 32), Part(99, 1, 2, 4, 32)))
    assert_rejects(plan, "part of tensor 99: no such tensor")
