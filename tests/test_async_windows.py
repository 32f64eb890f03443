"""The async post-pass: windows widened into free arena space, checker-clean, never slower."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.runner import ZOO, Suite, prepare
from planner.async_windows import with_windows
from planner.checker import check
from planner.device import ComputeModel, DeviceProfile, Storage, load_profile
from planner.latency import end_to_end, without_windows
from planner.planners.base import Request, registry
from tests.test_checker import BASE, CAP, A, M, fetch, layout, skip_graph, spill

SLOW_OPS = ComputeModel(clock_hz=1e6)  # default cycles at 1 MHz: ops of a few ms


def profile(dma: bool = True) -> DeviceProfile:
    return DeviceProfile("t", 1 << 20, (Storage("qspi", 1 << 20, 1e15, 1e15, 1e-3,
                                                async_channel=dma),), compute=SLOW_OPS)


def spill_plan():
    return layout([*BASE, (A, 1, 2), (A, 4, 4)], transfers=(spill(A, 2), fetch(A, 4)))


def test_fetch_widened_into_free_space_hides_it():
    g, plan, prof = skip_graph(), spill_plan(), profile()
    out = with_windows(g, plan, prof)
    assert check(g, out, CAP) == []
    assert out.peak_bytes == plan.peak_bytes
    # One step (3) lies between a's reads: either the spill completes there or the
    # fetch is issued there, not both (a fetch is issued after its spill completed).
    windows = sorted(t.window for t in out.transfers)
    assert windows in ([(2, 2), (3, 4)], [(2, 3), (4, 4)])
    assert end_to_end(g, out, prof).total_seconds < end_to_end(g, plan, prof).total_seconds
    assert "async windows" in out.notes[-1]


def test_no_dma_channel_leaves_the_plan_alone():
    g, plan = skip_graph(), spill_plan()
    assert with_windows(g, plan, profile(dma=False)) is plan


def test_occupied_bytes_stop_the_widening():
    # Put m's segment (steps 2..3) on a's fetched bytes: the fetch cannot be issued early.
    g, plan = skip_graph(), spill_plan()
    segs = list(plan.segments)
    fetched = next(s for s in segs if s.tensor == A and s.first == 4)
    m = next(i for i, s in enumerate(segs) if s.tensor == M)
    others = [s for s in segs if s is not segs[m] and s.overlaps_in_space(fetched)
              and s.first <= 3 and s.last >= 2]
    assert not others
    segs[m] = replace(segs[m], offset=fetched.offset, size=max(segs[m].size, 16))
    blocked = replace(plan, segments=tuple(segs))
    assert check(g, blocked, CAP) == []
    out = with_windows(g, blocked, profile())
    assert check(g, out, CAP) == []
    assert next(t for t in out.transfers if t.kind == "fetch").window == (4, 4)


U_NETS = ("tiny_unet_int8.tflite", "mbv2_unet_int8.tflite", "unet_wide96_int8.tflite",
          "mbv2_unet.onnx")


@pytest.mark.parametrize("name", U_NETS)
def test_zoo_unets_with_tinyseg_plans(name):
    prof = load_profile("qspi-flash")
    info = prepare(ZOO / name, Suite("t", ()))
    for fraction in (0.90, 0.75):
        budget = int(info.tflm_peak * fraction) // 16 * 16
        plan = registry()["tinyseg"](Request(info.graph, prof, budget, None, 10.0))
        out = with_windows(info.graph, plan, prof)
        assert check(info.graph, out, prof.capacities) == [], (name, fraction)
        assert out.peak_bytes == plan.peak_bytes
        assert [(t.kind, t.tensor, t.step) for t in out.transfers] == \
            [(t.kind, t.tensor, t.step) for t in plan.transfers]
        blocking = end_to_end(info.graph, without_windows(out), prof).total_seconds
        assert end_to_end(info.graph, out, prof).total_seconds <= blocking + 1e-12


def test_spill_window_first_uses_the_source_segment_it_already_has():
    # a spilled at its creation (step 1) but resident to step 2 for conv m: completing by
    # step 2 costs no bytes, so the spill's 1 ms hides behind conv m.
    g, prof = skip_graph(), profile()
    plan = layout([*BASE, (A, 1, 2), (A, 4, 4)], transfers=(spill(A, 1), fetch(A, 4)))
    assert check(g, plan, CAP) == []
    out = with_windows(g, plan, prof)
    assert check(g, out, CAP) == []
    spill_t = next(t for t in out.transfers if t.kind == "spill")
    assert spill_t.window == (1, 2)  # the narrowest window that hides it
    assert out.segments_of(A)[0] == plan.segments_of(A)[0]  # source segment unchanged
    assert end_to_end(g, out, prof).total_seconds < end_to_end(g, plan, prof).total_seconds
