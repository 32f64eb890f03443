"""The arena machine with asynchronous windows (backends/executor/inflight.py, issue #16).

Windowed plans move their data at the end of each window: a spill reads its source at its
completion, a fetch's destination is poisoned at its issue and filled at its completion.
Plans whose buffers are held over their windows match the model run whole; a window that
outlives its buffer (planted by hand, bypassing the checker) gives wrong numbers, and a
fetch issued before its spill completes is refused.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_executor import UNET_TFLITE, hand_plan, model

from planner.checker import check
from planner.plan import Plan

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from async_plans import (  # noqa: E402
    ILP_LATENCY_CASES,
    blocking,
    hold,
    ilp_latency_plan,
    plant_fetch_completing_late,
    plant_spill_past_its_source,
    widen,
    windows,
)

SKIP = 6  # conv1 output of the Tiny U-Net: read at step 3 and by the last concat at 21


@pytest.fixture(scope="module")
def unet():
    return model(UNET_TFLITE)


@pytest.fixture(scope="module")
def windowed(unet) -> Plan:
    plan = hold(hand_plan(unet.graph, SKIP, "fetch"), SKIP, after=3, before=3)
    assert check(unet.graph, plan) == []
    assert {tr.kind: tr.window for tr in windows(plan)} == {"spill": (3, 6),
                                                             "fetch": (18, 21)}
    return plan


def test_windowed_plan_matches(unet, windowed: Plan):
    result = unet.run(windowed)
    assert result.mismatch is None, result.mismatch
    stats = result.execution.storage["qspi"]
    moved = next(t.nbytes for t in windowed.transfers if t.kind == "spill")
    assert stats.bytes_written == moved and stats.bytes_read == moved


def test_windows_really_are_in_flight(unet, windowed: Plan):
    from backends.executor import ArenaMachine, open_storages

    with open_storages(windowed) as backends:
        m = ArenaMachine(unet.graph, windowed, unet.kernels, backends)
        m.run(unet.inputs)
    assert m.inflight is not None and m.inflight.started == 2
    assert not m.inflight.in_flight  # every window closed


def test_spill_outliving_its_source_spills_wrong_data(unet, windowed: Plan):
    bad = plant_spill_past_its_source(windowed)
    spill = next(t for t in bad.transfers if t.kind == "spill")
    source = next(s for s in bad.segments if s.tensor == SKIP and s.first <= spill.step <= s.last)
    assert source.last < spill.window[1]
    assert any("not resident over its window" in e for e in check(unet.graph, bad))
    assert unet.run(bad).mismatch is not None
    # The same plan run blocking (data moved at the spill step) would have matched.
    blocking = replace(bad, transfers=tuple(replace(t, issue=None, complete=None)
                                            if t.kind == "spill" else t
                                            for t in bad.transfers))
    assert unet.run(blocking).mismatch is None


def test_read_before_the_fetch_completes_sees_poison(unet):
    # Destination held one step past its read, so the fetch can complete after that read.
    longer = hold(hand_plan(unet.graph, SKIP, "fetch"), SKIP, before=3, longer=1)
    assert check(unet.graph, longer) == []
    bad = plant_fetch_completing_late(longer, unet.graph)
    assert any("while its fetch is in flight" in e for e in check(unet.graph, bad))
    assert unet.run(longer).mismatch is None
    assert unet.run(bad).mismatch is not None


def test_fetch_issued_before_its_spill_completes_is_refused(unet, windowed: Plan):
    fetch = next(t for t in windowed.transfers if t.kind == "fetch")
    early = tuple(replace(t, complete=fetch.window[0]) if t.kind == "spill" else t
                  for t in windowed.transfers)
    result = unet.run(replace(windowed, transfers=early))
    assert result.mismatch is not None and "before its spill completes" in result.mismatch


def test_windowed_ilp_plans_match(unet):
    from test_c_glue import ILP_CASES, ilp_plan

    from planner.async_windows import with_windows

    g, base, prof = ilp_plan(*ILP_CASES["tflite-mixed"])
    for plan in (widen(base), with_windows(g, base, prof)):
        if not windows(plan):
            continue
        assert check(g, plan) == []
        result = unet.run(plan)
        assert result.mismatch is None, result.mismatch


@pytest.mark.parametrize(("name", "fraction"), ILP_LATENCY_CASES)
def test_ilp_latency_plans_match(name: str, fraction: float):
    """The exact planner's own windows run with matching numerics, as the blocking plan."""
    g, plan, _, path = ilp_latency_plan(name, fraction)
    m = model(path)
    assert m.run(plan).mismatch is None
    assert m.run(blocking(plan)).mismatch is None
