"""Offline-planned .tflite writer and planner-shim header.

Real TFLM is the referee: the written offsets must be what TFLM uses (its arena head
follows them), and the replay of TFLM's placement must predict that head exactly.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import MODELS

from backends.tflite import io
from backends.tflite.offline import (
    predict_tflm_placement,
    read_peak,
    tflm_first_fit,
    write_offline_tflite,
)
from backends.tflite.shim_header import buffer_entries, write_shim_header
from backends.tflm import interpreter as tflm
from frontends import load_model
from planner.analysis import Buffer
from planner.checker import assert_valid
from planner.device import load_profile
from planner.errors import PlannerError
from planner.ir import Role
from planner.plan import Plan, Segment
from planner.planners.base import Request, registry
from planner.planners.tflm_greedy import greedy_offsets

PERSON = MODELS / "tflm" / "person_detect.tflite"
VELA = MODELS / "tflm" / "person_detect_vela.tflite"
KWS_SCRAMBLED = MODELS / "tflm" / "keyword_scrambled_8bit.tflite"
RESNET = MODELS / "mlperf_tiny" / "pretrainedResnet_quant.tflite"
NONE = load_profile("none")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} absent (../shared)")
    return path


def plan_of(path: Path, planner: str = "tflm-greedy"):
    graph = load_model(path)
    plan = registry()[planner](Request(graph, NONE))
    assert_valid(graph, plan)
    return graph, plan


def test_metadata_layout_and_model_kept_intact(tmp_path):
    path = need(PERSON)
    graph, plan = plan_of(path)
    [out] = write_offline_tflite(graph, plan, path, tmp_path)
    assert out.name == "person_detect.planned.tflite"
    before, after = io.read_model(path), io.read_model(out.read_bytes())
    offsets = io.read_offline_offsets(after)
    raw = io.get_metadata(after, io.OFFLINE_METADATA)
    assert io.unpack_int32(raw)[:3] == [1, 0, io.tensor_count(before)]
    seg = {s.tensor: s.offset for s in plan.segments}
    for t in graph.tensors:
        if t.role == Role.SCRATCH:
            continue
        assert offsets[t.source_index] == seg.get(t.id, -1)
        if t.role == Role.CONSTANT:
            assert offsets[t.source_index] == -1
    # Operators, tensors and every original buffer are unchanged.
    sub0, sub1 = before.subgraphs[0], after.subgraphs[0]
    assert [list(o.inputs) for o in sub0.operators] == [list(o.inputs) for o in sub1.operators]
    assert [(io._name(t.name), list(t.shape), t.buffer) for t in sub0.tensors] == \
        [(io._name(t.name), list(t.shape), t.buffer) for t in sub1.tensors]
    for b0, b1 in zip(before.buffers, after.buffers, strict=False):
        assert (b0.data is None) == (b1.data is None)
        if b0.data is not None:
            assert bytes(bytearray(b0.data)) == bytes(bytearray(b1.data))
    assert read_peak(after) == {"peak": plan.peak_bytes, "predicted_head": plan.peak_bytes,
                                "scratch": []}


def test_existing_offline_entry_is_replaced(tmp_path):
    path = need(VELA)
    graph, plan = plan_of(path)
    [out] = write_offline_tflite(graph, plan, path, tmp_path)
    model = io.read_model(out.read_bytes())
    names = [io._name(m.name) for m in model.metadata]
    assert names.count(io.OFFLINE_METADATA) == 1 and "vela_version" in names
    seg = {s.tensor: s.offset for s in plan.segments}
    expected = [seg.get(t.id, -1) for t in graph.tensors if t.source_index is not None]
    assert io.read_offline_offsets(model) == expected
    assert io.read_offline_offsets(io.read_model(path)) != expected  # Vela's own plan is gone


def test_tflm_uses_the_written_offsets(tmp_path):
    """A plan without reuse (linear) makes real TFLM's head the plan's, not greedy's."""
    path = need(RESNET)
    graph, plan = plan_of(path, "linear")
    [out] = write_offline_tflite(graph, plan, path, tmp_path)
    greedy_head = tflm.arena_head_bytes(path.read_bytes())
    assert plan.peak_bytes > greedy_head
    assert tflm.arena_head_bytes(out.read_bytes()) == plan.peak_bytes


def test_scratch_replay_predicts_tflm(tmp_path, capsys):
    """Scratch is placed online by TFLM: moving it in the plan is reported, and the
    predicted head is exactly what TFLM then uses."""
    path = need(KWS_SCRAMBLED)
    graph, plan = plan_of(path)
    scratch = next(s for op in graph.ops for s in op.scratch)
    segs = tuple(
        dataclasses.replace(s, offset=plan.peak_bytes) if s.tensor == scratch else s
        for s in plan.segments
    )
    moved = dataclasses.replace(plan, segments=segs,
                                peak_bytes=plan.peak_bytes + next(
                                    s.size for s in segs if s.tensor == scratch))
    assert_valid(graph, moved)
    placement = predict_tflm_placement(graph, moved)
    assert placement.moved and placement.moved[0][0] == scratch
    [out] = write_offline_tflite(graph, moved, path, tmp_path)
    assert "scratch cannot be offline-planned" in capsys.readouterr().err
    head = tflm.arena_head_bytes(out.read_bytes())
    assert head == placement.head == plan.peak_bytes
    assert read_peak(io.read_model(out.read_bytes()))["predicted_head"] == head


def test_first_fit_replay_matches_greedy_without_fixed_buffers():
    bufs = [Buffer(0, 32, 0, 3), Buffer(1, 16, 1, 2), Buffer(2, 32, 2, 5), Buffer(3, 16, 4, 5),
            Buffer(4, 48, 0, 1), Buffer(5, 16, 3, 3)]
    assert tflm_first_fit(bufs, {}) == greedy_offsets(bufs)
    # A fixed buffer stays put and online ones go around it.
    got = tflm_first_fit(bufs, {0: 64})
    assert got[0] == 64 and got[4] == 0 and got[1] == 48


def test_spill_plans_are_refused_by_the_whole_tensor_path(tmp_path):
    path = need(RESNET)
    graph, plan = plan_of(path)
    seg = plan.segments[0]
    two = dataclasses.replace(plan, segments=plan.segments + (
        Segment(seg.tensor, seg.last, seg.last, plan.peak_bytes, seg.size),))
    with pytest.raises(PlannerError, match="several segments"):
        predict_tflm_placement(graph, two)


def _compile(tmp_path: Path, header: Path, ident: str, expected: list[int]) -> list[int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc absent")
    src = tmp_path / "main.c"
    macro = ident.upper()
    src.write_text(
        f'#include <stdio.h>\n#include "{header.name}"\n'
        "int main(void) {\n"
        f"  const {ident}_buffer_plan_t *p = {ident}_buffer_plan();\n"
        f"  if (p->buffer_count != {len(expected)} || {macro}_BUFFER_COUNT != {len(expected)})"
        " return 1;\n"
        "  for (int i = 0; i < p->buffer_count; ++i)"
        ' printf("%ld\\n", (long)p->buffer_plan_entries[i].offset);\n'
        "  return 0;\n}\n")
    exe = tmp_path / "main"
    subprocess.run([gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    f"-I{header.parent}", str(src), "-o", str(exe)], check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    return [int(x) for x in run.stdout.split()]


def test_shim_header_compiles_and_lists_tflm_order(tmp_path):
    path = need(KWS_SCRAMBLED)  # has scratch buffers (SVDF) after the tensors
    graph, plan = plan_of(path)
    [header] = write_shim_header(graph, plan, path, tmp_path)
    assert header.name == "keyword_scrambled_8bit_plan.h"
    seg = {s.tensor: s.offset for s in plan.segments}
    tensors = [seg.get(t.id, 0) for t in graph.tensors if t.planned and t.role != Role.SCRATCH]
    scratch = [seg[s] for op in graph.ops for s in op.scratch]
    assert scratch
    expected = tensors + scratch
    assert _compile(tmp_path, header, "keyword_scrambled_8bit", expected) == expected
    text = header.read_text()
    assert f"KEYWORD_SCRAMBLED_8BIT_ARENA_HEAD_BYTES {plan.peak_bytes}" in text


def test_shim_header_is_layout_compatible_with_tflite_bufferplan(tmp_path):
    path = need(PERSON)
    graph, plan = plan_of(path)
    [header] = write_shim_header(graph, plan, path, tmp_path)
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ absent")
    src = tmp_path / "shim.cc"
    # tflite::BufferPlan as memory_plan_struct.h declares it.
    src.write_text(
        '#include "person_detect_plan.h"\n'
        "namespace tflite { struct BufferDescriptor { int32_t offset; };\n"
        "struct BufferPlan { int32_t buffer_count; BufferDescriptor buffer_plan_entries[1]; }; }\n"
        "static_assert(sizeof(person_detect_buffer_plan_t) == sizeof(int32_t) * "
        "(1 + PERSON_DETECT_BUFFER_COUNT), \"packed\");\n"
        "int main() {\n"
        "  const tflite::BufferPlan *p =\n"
        "      reinterpret_cast<const tflite::BufferPlan *>(person_detect_buffer_plan());\n"
        "  return p->buffer_count == PERSON_DETECT_BUFFER_COUNT ? 0 : 1;\n}\n")
    exe = tmp_path / "shim"
    subprocess.run([gxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path}",
                    str(src), "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)]).returncode == 0


def test_shim_header_of_a_spill_plan_follows_the_rewritten_model(tmp_path):
    from test_tflite_rewrite import PROFILE, hand_plan

    path = need(RESNET)
    graph = load_model(path)
    plan = hand_plan(graph, spills=[(22, 2, 4, "fetch")])
    assert_valid(graph, plan, PROFILE.capacities)
    entries = buffer_entries(graph, plan, path, PROFILE)
    n_planned = sum(1 for t in graph.tensors if t.planned)
    assert len(entries) == n_planned + 1  # one fetched copy more
    fetched = plan.segments_of(22)[1]
    assert entries[-1][0] == fetched.offset
    [header] = write_shim_header(graph, plan, path, tmp_path, profile=PROFILE)
    got = _compile(tmp_path, header, "pretrainedresnet_quant", [e[0] for e in entries])
    assert got == [e[0] for e in entries]


def test_empty_plan_header_still_compiles(tmp_path):
    path = need(PERSON)
    graph, _ = plan_of(path)
    # A graph whose tensors are all constants: no buffers at all.
    consts = tuple(dataclasses.replace(t, role=Role.CONSTANT) for t in graph.tensors)
    g = dataclasses.replace(graph, tensors=consts, ops=())
    plan = Plan(g.name, "hand", 1, 0, ())
    [header] = write_shim_header(g, plan, path, tmp_path)
    assert _compile(tmp_path, header, "person_detect", []) == []
