"""Which edges stream (issue #15): candidate partitions into streamed groups, each planned
by the exact planner under one shared clock, the best plan winning
(planner/streaming_search.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from frontends import load_model
from planner import streaming, streaming_search
from planner.checker import check
from planner.device import load_profile
from planner.errors import InfeasibleBudget
from planner.kernels import apply_kernels
from planner.planners.base import Request, registry

QSPI = load_profile("qspi-flash")
TINY_UNET = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
ILP = registry()["ilp"]
# CP-SAT work units (deterministic seconds) for a whole search: the Tiny U-Net cases
# below are proven within a small share of this.
WORK = 0.4


@pytest.fixture(scope="module")
def source():
    return apply_kernels(load_model(TINY_UNET), QSPI)


@pytest.fixture(scope="module")
def cands(source):
    return streaming_search.candidates(source, QSPI)


def request(graph, budget=None, objective=None) -> Request:
    return Request(graph, QSPI, budget, objective, time_limit=60.0, deterministic=True,
                   work_limit=WORK)


def test_candidates_chosen_none_and_drops(source, cands):
    chosen = streaming.choose_groups(source, QSPI)
    assert cands[0].name == "chosen" and cands[0].groups == chosen
    assert cands[1].name == "none" and cands[1].groups == () and cands[1].graph is source
    # One run of row-capable ops holds all six groups: no per-run variant, one per group.
    assert len(streaming.group_candidates(source, QSPI)) == 1 and len(chosen) == 6
    assert [c.name for c in cands[2:]] == [
        f"chosen without group {g.ops[0]}-{g.ops[-1]}" for g in chosen]
    assert len(cands) <= streaming_search.MAX_CANDIDATES
    assert len({tuple(g.ops for g in c.groups) for c in cands}) == len(cands)
    for c in cands:
        assert streaming.groups_of(c.graph) == c.groups
    # The DP's partition has the least bound: the streamed bound the command reports.
    assert streaming_search.least_bound(cands).bytes == cands[0].bound.bytes == 28_800
    assert cands[1].bound.bytes == 153_600 and cands[1].overhead == 0.0
    assert streaming_search.candidates(source, QSPI, limit=3) == cands[:3]


def test_head_budget_200000_moves_no_more_than_unstreamed(source, cands):
    """Streamed, the Tiny U-Net needs 210,240 B to move nothing; unstreamed 192,000 B.
    At a 200,000 B head the search must find the unstreamed plan, not a streamed one
    that spills."""
    budget = 200_000
    plain = ILP(request(source, budget))
    found = streaming_search.search(source, request(source, budget), ILP, cands)
    plan = found.plan
    assert plan.peak_bytes <= budget
    assert plan.est_transfer_seconds <= plain.est_transfer_seconds == 0
    assert found.winner.name == "none" and plan.stream_groups == () and found.graph is source
    assert plan.status == "optimal"
    assert check(found.graph, plan, QSPI.capacities) == []
    assert check(streaming.planned_graph(source, plan), plan, QSPI.capacities) == []
    assert any("candidate partition 'none' won" in n and "of 8 candidates planned" in n
               for n in plan.notes)
    # The chosen partition alone spills at this budget: what the search avoids.
    fixed = ILP(request(cands[0].graph, budget))
    assert fixed.est_transfer_seconds > 0


def test_no_budget_reaches_28800_proven(source, cands):
    found = streaming_search.search(source, request(source), ILP, cands)
    plan = found.plan
    assert found.winner.name == "chosen" and plan.stream_groups == cands[0].groups
    assert plan.peak_bytes == plan.bound_bytes == 28_800 and plan.status == "optimal"
    assert check(found.graph, plan, QSPI.capacities) == []
    # Every other candidate's bound is above 28,800 B: ruled out without planning.
    assert len(found.planned) == 1
    assert any("candidate partition 'chosen' won, 6 groups; 1 of 8 candidates planned, "
               "7 ruled out by their bounds" in n for n in plan.notes)


def test_set_of_one_behaves_as_before(source, cands):
    """The fixed partition alone: the plan the planner makes for its graph, nothing added."""
    budget = 200_000
    before = ILP(request(cands[0].graph, budget))
    found = streaming_search.search(source, request(source, budget), ILP, cands[:1])
    after = found.plan
    assert found.graph is cands[0].graph and after.stream_groups == cands[0].groups
    for field in ("peak_bytes", "segments", "transfers", "fusions", "status", "bound_bytes",
                  "est_transfer_seconds", "stream_groups", "notes"):
        assert getattr(after, field) == getattr(before, field), field


def test_budget_below_unstreamed_bound_prunes_it(source, cands):
    """At 150,000 B the unstreamed graph (bound 153,600 B) is never planned; the winner is
    no worse, transfers plus ring overhead, than every candidate planned."""
    budget = 150_000
    seen = []

    def recording(req):
        seen.append(req.graph)
        return ILP(req)

    found = streaming_search.search(source, request(source, budget), recording, cands)
    assert source not in seen and found.winner.groups
    assert found.plan.peak_bytes <= budget
    assert check(found.graph, found.plan, QSPI.capacities) == []
    mine = found.plan.est_transfer_seconds + found.winner.overhead
    for cand, plan in found.planned:
        assert mine <= plan.est_transfer_seconds + cand.overhead + 1e-9, cand.name
    # Fewer transfers, or as few, as the fixed partition's plan.
    assert found.plan.est_transfer_seconds <= ILP(request(cands[0].graph, budget)) \
        .est_transfer_seconds + 1e-9


def test_shared_clock_split_fairly(source, cands):
    """Each candidate planned gets an equal share of the work left, never more in all."""
    shares = []
    greedy = registry()["tflm-greedy"]

    def recording(req):
        shares.append((req.time_limit, req.work_limit))
        return greedy(req)

    streaming_search.search(source, request(source, objective="transfers"), recording, cands)
    assert shares and sum(w for _, w in shares) <= WORK + 1e-9
    assert shares[0][1] == pytest.approx(WORK / len(cands))
    assert all(w >= WORK / len(cands) - 1e-9 for _, w in shares)
    assert all(t <= 60.0 for t, _ in shares)


def test_every_candidate_above_the_budget_is_infeasible(source, cands):
    with pytest.raises(InfeasibleBudget, match="candidate partitions"):
        streaming_search.search(source, request(source, 1_000), ILP, cands)


def test_cli_head_budget_200000(tmp_path):
    """`solve --row-streaming` writes the winner's plan (no groups here), which the
    command checked before writing."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "planner", "solve", str(TINY_UNET), "--row-streaming",
         "--head-budget", "200000", "--deterministic", "--time-limit", "20", "--json",
         "-o", str(out), "--emit", "svg"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["head_bytes"] == 192_000 and s["est_transfer_seconds"] == 0
    assert s["stream_groups"] == [] and s["stream_candidates"] == 8
    assert s["streamed_bound_bytes"] == 28_800 and s["status"] == "optimal"
    assert any("candidate partition 'none' won" in n for n in s["notes"])
    saved = json.loads((out / "plan.json").read_text())
    assert saved["stream_groups"] == [] and saved["peak_bytes"] == 192_000


def test_interrupted_candidate_ends_the_search(source, cands):
    """Ctrl-C in one candidate's solve (its plan says so): no further candidate is
    planned and the plan returned is marked interrupted, as solve reports it."""
    from dataclasses import replace

    calls = []
    greedy = registry()["tflm-greedy"]

    def stopped(req):
        calls.append(req.graph)
        return replace(greedy(req), stopped="interrupted")

    found = streaming_search.search(source, request(source), stopped, cands)
    assert len(calls) == 1 and found.plan.stopped == "interrupted"
    assert found.winner.name == "chosen"  # the least bound: planned first
    assert any("without a plan (interrupted)" in n for n in found.plan.notes)
