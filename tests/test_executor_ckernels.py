"""The executor runs what the device runs: fused concat(+conv) ops and scratch-free
TRANSPOSE_CONVs of TFLite int8 plans go through the project's C kernels
(backends/c/kernels.py), every other op and the whole-model reference through ai-edge-litert's
reference kernels, so `outputs match` proves the C kernels bit-exact on that plan."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_executor import ZOO, _plan, hand_plan, model

from backends.c import kernels as ckernels
from backends.executor import run_plan
from backends.executor.kernels_tflite import DeviceKernels, uses_row_transpose_conv
from planner.checker import assert_valid
from planner.device import load_profile
from planner.ir import Graph, Role, align

pytestmark = pytest.mark.skipif(ckernels.available() is not None,
                                reason=str(ckernels.available()))
UNET = ZOO / "tiny_unet_int8.tflite"
WIDE96 = ZOO / "unet_wide96_int8.tflite"


@pytest.mark.parametrize("mode", ["stream", "split-stream"])
def test_fused_concat_conv_runs_on_the_c_kernel(mode: str, monkeypatch):
    unet = model(UNET)
    plan = hand_plan(unet.graph, 6, mode, fuse_conv=True)
    result = unet.run(plan)
    assert result.mismatch is None, result.mismatch
    assert result.execution.c_kernel_ops == len(plan.fusions) >= 1
    # The C kernel's output is what reaches the graph output: spoil it, outputs differ.
    real = DeviceKernels.fused_conv
    monkeypatch.setattr(DeviceKernels, "fused_conv",
                        lambda self, op, slices: real(self, op, slices) ^ np.int8(1))
    assert unet.run(plan).mismatch is not None


def test_streamed_fused_concat_runs_on_the_c_kernel():
    unet = model(UNET)
    plan = hand_plan(unet.graph, 6, "split-stream", fuse_conv=False)
    result = unet.run(plan)
    assert result.mismatch is None, result.mismatch
    assert result.execution.c_kernel_ops == 1


def test_grouped_conv_of_unet_wide96_at_75_percent():
    """The issue's failing case: the fused conv has filter [16,3,3,3] on 24 channels."""
    wide = model(WIDE96)
    greedy = _plan(wide.graph, "tflm-greedy")
    plan = _plan(wide.graph, "ilp", int(greedy.peak_bytes * 0.75))
    convs = [wide.graph.ops[f.conv] for f in plan.fusions if f.conv is not None]
    grouped = [op for op in convs if wide.graph.tensors[op.inputs[1]].shape[3] !=
               wide.graph.tensors[op.inputs[0]].shape[3]]
    if not grouped:
        pytest.skip("this plan fuses no grouped conv (the kernel table may forbid it)")
    result = wide.run(plan)
    assert result.mismatch is None, result.mismatch
    assert result.execution.c_kernel_ops >= len(convs)


def row_tconv_graph(g: Graph, shrink: int = 0) -> Graph:
    """g with every TRANSPOSE_CONV on the scratch-free kernel: attrs["kernel"] =
    "tinyplan_rows" and a scratch of one output row of int32 (less `shrink` bytes)."""
    tensors = list(g.tensors)
    ops = []
    for op in g.ops:
        if op.op_type == "TRANSPOSE_CONV":
            need = ckernels.tconv_scratch_bytes(g.tensors[op.outputs[0]].shape) - shrink
            for s in op.scratch:
                tensors[s] = replace(tensors[s], nbytes=need, shape=(need // 4,))
            op = replace(op, attrs={**op.attrs, "kernel": "tinyplan_rows"})
        ops.append(op)
    return replace(g, tensors=tuple(tensors), ops=tuple(ops))


def run_on(g: Graph, plan, m):
    """Run `plan` of graph g (the model's graph with IR changes) on the model's kernels."""
    return run_plan(g, plan, m.path, "local", m.inputs, kernels=m.kernels, reference=m.reference)


def test_scratch_free_transpose_conv_runs_in_its_small_scratch():
    unet = model(UNET)
    g = row_tconv_graph(unet.graph)
    tconvs = [op for op in g.ops if uses_row_transpose_conv(op)]
    assert tconvs
    for op in tconvs:  # the scratch really is one row: out_w * out_c * 4
        out = g.tensors[op.outputs[0]].shape
        assert g.tensors[op.scratch[0]].nbytes == out[2] * out[3] * 4
    plan = _plan(g, "tflm-greedy", profile="none")
    old = _plan(unet.graph, "tflm-greedy", profile="none")
    assert plan.peak_bytes < old.peak_bytes
    result = run_on(g, plan, unet)
    assert result.mismatch is None, result.mismatch
    assert result.execution.c_kernel_ops == len(tconvs)


def test_scratch_free_transpose_conv_with_too_little_scratch_is_caught():
    unet = model(UNET)
    g = row_tconv_graph(unet.graph, shrink=align(1))
    plan = _plan(g, "tflm-greedy", profile="none")
    assert_valid(g, plan, load_profile("none").capacities)
    result = run_on(g, plan, unet)
    assert result.mismatch is not None and "scratch" in result.mismatch


def test_scratch_is_really_used_by_the_kernel():
    """The kernel accumulates in the plan's scratch bytes: scratch overlapping a live
    tensor at that step (a bad plan) corrupts the outputs."""
    unet = model(UNET)
    g = row_tconv_graph(unet.graph)
    plan = _plan(g, "tflm-greedy", profile="none")
    op = next(op for op in g.ops if uses_row_transpose_conv(op))
    step = op.index + 1
    scratch = next(s for s in plan.segments if s.tensor == op.scratch[0])
    x = next(s for s in plan.segments if s.tensor == op.inputs[2] and s.first <= step <= s.last)
    assert g.tensors[op.inputs[2]].role is not Role.CONSTANT
    moved = tuple(replace(s, offset=x.offset) if s is scratch else s for s in plan.segments)
    assert run_on(g, plan, unet).mismatch is None
    assert run_on(g, replace(plan, segments=moved), unet).mismatch is not None


@pytest.mark.parametrize("path", sorted(ZOO.glob("*_int8.tflite")), ids=lambda p: p.name)
def test_every_fused_op_of_zoo_spill_plans_runs_on_the_c_kernels(path):
    """TinySeg's plans at 75 % of tflm-greedy (its fused fetches and concat+convs): each
    fused op runs on the C kernels and the outputs equal the reference model's."""
    m = model(path)
    greedy = _plan(m.graph, "tflm-greedy")
    plan = _plan(m.graph, "tinyseg", int(greedy.peak_bytes * 0.75))
    result = m.run(plan)
    assert result.mismatch is None, result.mismatch
    assert result.execution.c_kernel_ops == len(plan.fusions)


def test_scratch_free_16x8_transpose_conv_in_a_plan(tmp_path):
    """A one-op 16x8 TRANSPOSE_CONV model: on the row kernel its scratch is one output row
    of int64, and the planned run matches the reference."""
    pytest.importorskip("ai_edge_litert")
    from one_op_models import one_op_model

    from frontends import load_model

    rng = np.random.default_rng(16)
    filt = rng.integers(-127, 128, (4, 3, 3, 5)).astype(np.int8)
    bias = rng.integers(-100000, 100000, 4).astype(np.int64)
    scales = [float(np.float32(v)) for v in rng.uniform(0.002, 0.03, 4)]
    path = tmp_path / "tconv16.tflite"
    path.write_bytes(one_op_model("TRANSPOSE_CONV", (1, 6, 5, 5), filt, bias,
                                  (float(np.float32(4e-4)), 0), scales,
                                  (float(np.float32(4e-3)), 0), (1, 12, 10, 4), (2, 2), "same",
                                  "none", activations="int16"))
    g = load_model(path)
    op = g.ops[0]
    assert g.tensors[op.scratch[0]].nbytes == 12 * 10 * 4 * 8  # TFLM's int64 scatter buffer
    tensors = list(g.tensors)
    tensors[op.scratch[0]] = replace(tensors[op.scratch[0]], nbytes=10 * 4 * 8, shape=(40,))
    g = replace(g, tensors=tuple(tensors),
                ops=(replace(op, attrs={**op.attrs, "kernel": "tinyplan_rows"}),))
    plan = _plan(g, "tflm-greedy", profile="none")
    result = run_plan(g, plan, path)
    assert result.mismatch is None, result.mismatch
    assert result.execution.c_kernel_ops == 1
