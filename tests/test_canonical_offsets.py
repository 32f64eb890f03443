"""The canonical-order offsets search: C and Python agree, CP-SAT agrees, proofs hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.minimalloc import read_problem
from planner.checker import assert_valid
from planner.device import load_profile
from planner.errors import InfeasibleBudget, PlannerError
from planner.offsets import Block, load_bound, overlap_violations, peak_of
from planner.planners import canonical, canonical_native, canonical_ref
from planner.planners.base import Request, registry
from planner.planners.canonical import _parts, minimize_peak, pack
from planner.planners.ilp.offsets import solve_offsets
from tests.test_offset_heuristics import random_graph

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "minimalloc" / "examples" / \
    "input.12.csv"
ENGINES = ["python", pytest.param("c", marks=pytest.mark.skipif(
    canonical_native.load() is None, reason="no C compiler"))]

intervals = st.lists(
    st.tuples(st.integers(0, 8), st.integers(0, 5), st.sampled_from([1, 2, 3, 5, 7])),
    min_size=1, max_size=9,
)


def blocks_of(spec) -> list[Block]:
    return [Block(str(i), a, a + d, 16 * s) for i, (a, d, s) in enumerate(spec)]


# Found by a random search over instances padded so that every step is full, then
# checked by CP-SAT below: every step holds 176 bytes, yet no packing fits 176.
TIGHT = [Block(str(i), a, b, 16 * s) for i, (a, b, s) in enumerate(
    [(0, 4, 1), (0, 2, 2), (0, 1, 1), (1, 4, 3), (3, 4, 5), (2, 5, 2), (0, 0, 7), (1, 1, 4),
     (2, 2, 3), (5, 5, 9)])]


def test_the_tight_instance_is_infeasible_at_its_load_bound():
    assert load_bound(TIGHT) == 176
    reference = solve_offsets(TIGHT, time_limit=10, workers=1)
    assert reference.status == "optimal" and reference.peak == 192  # the independent check


@pytest.mark.parametrize("engine", ENGINES)
def test_known_infeasible_instances_are_proven_so(engine):
    tight = pack(TIGHT, 176, time_limit=30, engine=engine)
    assert tight.status == "infeasible" and tight.nodes > 0  # beyond the load bound
    over_load = pack([Block("x", 0, 3, 32), Block("y", 2, 5, 32)], 48, engine=engine)
    assert over_load.status == "infeasible" and over_load.nodes == 0
    best = minimize_peak(TIGHT, time_limit=30, engine=engine)
    assert best.status == "optimal" and best.bound == best.peak == 192
    assert overlap_violations(TIGHT, best.offsets) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_minimalloc_example(engine):
    problem = read_problem(EXAMPLE)
    got = pack(problem.blocks, problem.capacity, time_limit=10, engine=engine)
    assert got.status == "packed" and got.peak <= problem.capacity
    assert overlap_violations(problem.blocks, got.offsets) == []
    assert pack(problem.blocks, problem.capacity - 1, engine=engine).status == "infeasible"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals)
def test_python_and_c_search_the_same_tree(spec):
    if canonical_native.load() is None:
        pytest.skip("no C compiler")
    items = blocks_of(spec)
    floor = load_bound(items)
    for part in _parts(items):
        for order, twins, keys in zip(part.orders, part.twins, part.keys, strict=True):
            for cap in (floor, floor + 16):
                args = (part.size, part.s0, part.s1, part.nsec, order, twins, keys, cap, 5000)
                assert canonical_ref.search(*args) == canonical_native.search(*args)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals)
def test_canonical_and_cpsat_agree_on_the_optimal_peak(spec):
    items = blocks_of(spec)
    reference = solve_offsets(items, time_limit=10, workers=1)
    assert reference.status == "optimal"
    for engine in ("python", "c") if canonical_native.load() else ("python",):
        got = minimize_peak(items, time_limit=10, engine=engine)
        assert got.status == "optimal", engine
        assert got.peak == reference.peak, engine
        assert overlap_violations(items, got.offsets) == [], engine
        # Feasibility agrees too: it packs at the optimum and proves one unit below it.
        assert pack(items, got.peak, time_limit=10, engine=engine).status == "packed"
        below = pack(items, got.peak - 16, time_limit=10, engine=engine)
        assert below.status == "infeasible", engine


def test_independent_time_ranges_are_solved_apart():
    items = [Block("a", 0, 2, 32), Block("b", 1, 3, 16), Block("c", 4, 6, 48),
             Block("d", 5, 5, 16)]
    assert len(_parts(items)) == 2
    got = pack(items, 64, time_limit=10)
    assert got.status == "packed" and overlap_violations(items, got.offsets) == []
    assert peak_of(items, got.offsets) == 64


def test_falls_back_to_python_with_a_note(monkeypatch):
    monkeypatch.setattr(canonical_native, "load", lambda: None)
    monkeypatch.setattr(canonical_native, "UNAVAILABLE", "no C compiler found")
    name, run, note = canonical.engine_named()
    assert name == "python" and run is canonical_ref.search and "no C compiler" in note
    with pytest.raises(PlannerError):
        canonical.engine_named("c")
    got = pack(TIGHT, 192, time_limit=10)
    assert got.engine == "python" and got.status == "packed"


def test_the_build_is_cached_by_source_hash(tmp_path, monkeypatch):
    if canonical_native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("TINYPLAN_CACHE", str(tmp_path))
    monkeypatch.setattr(canonical_native, "_tried", False)
    monkeypatch.setattr(canonical_native, "_lib", None)
    assert canonical_native.load() is not None
    built = list((tmp_path / "tinyplan").glob("canonical_search-*.so"))
    assert len(built) == 1


@pytest.mark.parametrize("seed", range(3))
def test_canonical_planner_and_storage_free_ilp(seed):
    graph = random_graph(seed, n_ops=16)
    profile = load_profile("none")
    planners = registry()
    ours = planners["canonical"](Request(graph, profile, time_limit=10))
    assert_valid(graph, ours, {})
    assert ours.status == "optimal"
    ilp = planners["ilp"](Request(graph, profile, time_limit=10))
    assert_valid(graph, ilp, {})
    assert ilp.planner == "ilp" and ilp.status == "optimal"
    assert ilp.peak_bytes == ours.peak_bytes
    assert any(n.startswith("canonical search") for n in ilp.notes)
    # The full CP-SAT model, the second solver, reaches the same optimum.
    milp = planners["ilp"](Request(graph, profile, time_limit=10, solver="pulp-highs"))
    assert milp.peak_bytes == ours.peak_bytes
    for name in ("ilp", "canonical"):
        with pytest.raises(InfeasibleBudget):
            planners[name](Request(graph, profile, budget=ours.peak_bytes - 16, time_limit=10))
    fits = planners["ilp"](Request(graph, profile, budget=ours.peak_bytes, time_limit=10))
    assert fits.peak_bytes <= ours.peak_bytes
