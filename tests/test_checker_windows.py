"""The checker's rules for async transfer windows (planner/checker.py _check_windows).

On test_checker's five-op skip graph: `a` (tensor 1) is made at step 1, read at steps 2
and 4. A spill after step 2 may stay in flight to step 3 when a's source segment holds
to step 3; a fetch before step 4 may be issued at step 3 into a segment from step 3.
"""

from __future__ import annotations

from dataclasses import replace

from planner.checker import check
from planner.plan import Fusion, Part
from tests.test_checker import BASE, CAP, A, assert_rejects, fetch, layout, skip_graph, spill


def async_spill_plan():
    return layout([*BASE, (A, 1, 3), (A, 4, 4)],
                  transfers=(replace(spill(A, 2), issue=2, complete=3), fetch(A, 4)))


def async_fetch_plan():
    return layout([*BASE, (A, 1, 2), (A, 3, 4)],
                  transfers=(spill(A, 2), replace(fetch(A, 4), issue=3, complete=4)))


def test_valid_windows_pass():
    assert check(skip_graph(), async_spill_plan(), CAP) == []
    assert check(skip_graph(), async_fetch_plan(), CAP) == []
    # issue/complete spelled out equal to the step: a blocking transfer, also valid.
    plan = layout([*BASE, (A, 1, 2), (A, 4, 4)],
                  transfers=(replace(spill(A, 2), issue=2, complete=2),
                             replace(fetch(A, 4), issue=4, complete=4)))
    assert check(skip_graph(), plan, CAP) == []


def test_spill_window_must_start_at_its_step():
    plan = layout([*BASE, (A, 1, 3), (A, 4, 4)],
                  transfers=(replace(spill(A, 2), issue=1, complete=3), fetch(A, 4)))
    assert_rejects(plan, "a spill's window starts at its step")


def test_fetch_window_must_end_at_its_step():
    plan = layout([*BASE, (A, 1, 2), (A, 3, 4)],
                  transfers=(spill(A, 2), replace(fetch(A, 4), issue=3, complete=5)))
    assert_rejects(plan, "a fetch's window ends at its step")


def test_window_inside_the_steps():
    plan = layout([*BASE, (A, 1, 5), (A, 4, 4)],
                  transfers=(replace(spill(A, 2), complete=9), fetch(A, 4)))
    assert_rejects(plan, "window [2,9] outside 0..5")


def test_streams_stay_blocking():
    from tests.test_checker import stream_plan

    plan = stream_plan()
    spill_t, stream_t = plan.transfers
    plan = replace(plan, transfers=(spill_t, replace(stream_t, issue=3)))
    assert_rejects(plan, "a stream is blocking")


def test_spill_source_resident_over_its_window():
    # The source segment ends at step 2: from step 3 its bytes may be reused mid-spill.
    plan = layout([*BASE, (A, 1, 2), (A, 4, 4)],
                  transfers=(replace(spill(A, 2), complete=3), fetch(A, 4)))
    assert_rejects(plan, "source not resident over its window [2,3]")


def test_fetch_destination_spans_its_window():
    # Issued at step 3 into a segment that only starts at 4: the bytes are not held.
    plan = layout([*BASE, (A, 1, 2), (A, 4, 4)],
                  transfers=(spill(A, 2), replace(fetch(A, 4), issue=3)))
    assert_rejects(plan, "destination segment does not span its window [3,4]")


def test_nothing_reads_a_tensor_while_its_fetch_is_in_flight():
    # Spilled at its creation (step 1), fetched from step 2 on, but conv m reads it at 2.
    plan = layout([*BASE, (A, 1, 1), (A, 2, 4)],
                  transfers=(spill(A, 1), replace(fetch(A, 4), issue=2)))
    assert_rejects(plan, "tensor read at step 2, while its fetch is in flight")


def test_fetch_issued_after_its_spill_completes():
    plan = layout([*BASE, (A, 1, 3), (A, 3, 4)],
                  transfers=(replace(spill(A, 2), complete=3), replace(fetch(A, 4), issue=3)))
    assert_rejects(plan, "issued at step 3, before its spill completes (step 3)")
    blocking = layout([*BASE, (A, 1, 4), (A, 4, 4)],
                      transfers=(replace(spill(A, 2), complete=4), fetch(A, 4)))
    assert_rejects(blocking, "fetch of tensor 1 at step 4 reads storage before its spill")


def test_spill_of_a_part_is_blocking():
    parts = (Part(A, 0, 0, 2, 32), Part(A, 1, 2, 4, 32))
    specs = [*BASE, (A, 1, 4, 32, 0), (A, 1, 3, 32, 1), (A, 4, 4, 32, 1)]
    plan = layout(specs, parts=parts, fusions=(Fusion(3),),
                  transfers=(replace(spill(A, 2, 32, part=1), complete=3),
                             fetch(A, 4, 32, part=1)))
    assert_rejects(plan, "the spill of a part is blocking")
