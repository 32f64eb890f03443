from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.analysis import buffers, load_bound
from planner.checker import assert_valid
from planner.device import load_profile
from planner.ir import Graph, Op, OpKind, Role, Tensor
from planner.offsets import Block, conflicts, overlap_violations, peak_of
from planner.offsets import load_bound as items_load_bound
from planner.planners.base import Request, registry
from planner.planners.offset_heuristics import (
    greedy_by_breadth_offsets,
    greedy_by_size_offsets,
    hill_climb_offsets,
    place,
)
from planner.planners.tflm_greedy import greedy_offsets

HEURISTICS = ("greedy-by-size", "greedy-by-breadth", "hill-climb")


def random_graph(seed: int, n_ops: int = 14) -> Graph:
    """A chain of ops where some ops also read an older activation (skip connections)."""
    rng = random.Random(seed)
    acts = [Tensor(0, "in", (1, 8, 8, 4), "int8", 256, Role.INPUT, 0, 3)]
    specs = []
    for k in range(n_ops):
        c = rng.choice([2, 4, 8, 16])
        out = len(acts)
        role = Role.OUTPUT if k == n_ops - 1 else Role.ACTIVATION
        acts.append(Tensor(out, f"t{out}", (1, 8, 8, c), "int8", 64 * c, role, out, 3))
        skip = k > 0 and rng.random() < 0.4
        inputs = (out - 1, rng.randrange(out - 1)) if skip else (out - 1,)
        specs.append((inputs, out, rng.random() < 0.2))
    # Scratch tensors take ids after the activations, as TFLM orders them.
    tensors, ops = list(acts), []
    for k, (inputs, out, wants_scratch) in enumerate(specs):
        scratch: tuple[int, ...] = ()
        if wants_scratch:
            sid = len(tensors)
            nbytes = rng.choice([48, 160, 800])
            tensors.append(Tensor(sid, f"s{sid}", (nbytes,), "int8", nbytes, Role.SCRATCH))
            scratch = (sid,)
        kind = OpKind.CONV if len(inputs) == 1 else OpKind.ELEMENTWISE
        ops.append(Op(k, f"op{k}", "CONV_2D", kind, inputs, (out,), scratch))
    return Graph(f"random{seed}", "tflite", tuple(tensors), tuple(ops), (0,), (n_ops,))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", HEURISTICS)
def test_graph_plans_are_valid_and_above_the_load_bound(name, seed):
    graph = random_graph(seed)
    request = Request(graph, load_profile("none"), time_limit=2.0)
    plan = registry()[name](request)
    assert_valid(graph, plan, {})
    assert plan.planner == name
    assert not plan.transfers and not plan.fusions
    assert plan.peak_bytes >= load_bound(graph).bytes


@pytest.mark.parametrize("seed", range(6))
def test_hill_climb_never_loses_to_the_greedy_planners(seed):
    graph = random_graph(seed, n_ops=20)
    request = Request(graph, load_profile("none"), time_limit=2.0)
    planners = registry()
    climb = planners["hill-climb"](request).peak_bytes
    for other in ("tflm-greedy", "greedy-by-size", "greedy-by-breadth"):
        assert climb <= planners[other](request).peak_bytes


def test_hill_climb_is_deterministic():
    graph = random_graph(3, n_ops=24)
    request = Request(graph, load_profile("none"), time_limit=5.0)
    a = registry()["hill-climb"](request)
    b = registry()["hill-climb"](request)
    assert a.segments == b.segments


def test_best_fit_takes_the_smallest_gap_where_first_fit_takes_the_first():
    # Short-lived x1 and x2 leave two holes under "new": [0, 32) and [48, 64).
    items = [
        Block("x1", 0, 0, 32),
        Block("w1", 0, 3, 16),
        Block("x2", 0, 0, 16),
        Block("w2", 0, 3, 16),
        Block("new", 2, 3, 16),
    ]
    first = place(items, range(5), best_fit=False)
    best = place(items, range(5), best_fit=True)
    assert first[:4] == best[:4] == [0, 32, 48, 64]
    assert first[4] == 0
    assert best[4] == 48


intervals = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 12), st.integers(1, 64)),
    min_size=1, max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(intervals)
def test_random_interval_sets(spec):
    items = [Block(str(i), a, a + d, 16 * s) for i, (a, d, s) in enumerate(spec)]
    floor = items_load_bound(items)
    conf = conflicts(items)
    results = {
        "tflm": greedy_offsets(items),
        "size": greedy_by_size_offsets(items, conf),
        "breadth": greedy_by_breadth_offsets(items, conf=conf),
        "climb": hill_climb_offsets(items, max_iters=40, time_limit=2.0, conf=conf)[0],
    }
    for name, offsets in results.items():
        assert overlap_violations(items, offsets) == [], name
        assert all(off % 16 == 0 for off in offsets), name
        assert peak_of(items, offsets) >= floor, name
    assert peak_of(items, results["climb"]) <= peak_of(items, results["tflm"])


def test_overlap_check_catches_a_collision():
    items = [Block("a", 0, 4, 32), Block("b", 4, 6, 16), Block("c", 5, 9, 16)]
    assert overlap_violations(items, [0, 16, 32]) != []  # a and b share step 4 and [16, 32)
    assert overlap_violations(items, [0, 32, 0]) == []  # c starts after a ends
    assert overlap_violations(items, [0, 32]) != []


def test_breadth_order_starts_with_the_widest_step():
    graph = random_graph(1)
    bufs = buffers(graph)
    offsets = greedy_by_breadth_offsets(bufs)
    assert overlap_violations(bufs, offsets) == []
    assert peak_of(bufs, offsets) >= load_bound(graph).bytes
