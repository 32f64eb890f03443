"""The exact planner's latency objective: transfer windows and the time they hide.

Small graphs where the optimum is worked out by hand. One storage of 1 MB/s both ways
and no per-transfer latency, so moving a 1,024 B tensor takes 1.024 ms; every op
computes for 1 ms unless a test says otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from graph_factory import GraphBuilder, small_unet

import planner.async_windows
import planner.compute
import planner.latency
import tinyplan
from benchmarks.async_ilp import FRACTIONS, table, zoo_unets
from planner.checker import check
from planner.device import DeviceProfile, Storage, load_profile
from planner.errors import InfeasibleBudget, PlannerError
from planner.ir import OpKind
from planner.kernels import apply_kernels
from planner.latency import end_to_end
from planner.planners.base import Request, registry

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from async_plans import acceptance_case  # noqa: E402

PLAN = registry()
MS = 1e-3
T = 1.024e-3  # one 1,024 B transfer
TINY = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"


def device(dma: bool = True) -> DeviceProfile:
    store = Storage("flash", 1 << 20, 1e6, 1e6, 0.0, async_channel=dma)
    return DeviceProfile("test-dma" if dma else "test-blocking", 1 << 20, (store,),
                         fusion=False)


@pytest.fixture
def compute(monkeypatch):
    """compute(graph, {op index: seconds}) sets the ops' compute times (others 1 ms)."""
    table: dict[str, tuple[float, ...]] = {}

    def op_seconds(graph, profile):
        return table[graph.name]

    # Every module that took compute.op_seconds by name (imported before any patching).
    for module in (planner.compute, planner.latency, planner.async_windows):
        monkeypatch.setattr(module, "op_seconds", op_seconds)

    def set_times(graph, special: dict[int, float] | None = None) -> float:
        times = [MS] * len(graph.ops)
        for k, s in (special or {}).items():
            times[k] = s
        table[graph.name] = tuple(times)
        return sum(times)

    return set_times


def skip_chain(widths: tuple[int, int, int, int], name: str):
    """x -> A (16 ch, 1,024 B) -> y1..y4 (channels `widths`) -> concat(A, y4) -> conv."""
    b = GraphBuilder(name)
    x = b.input((1, 8, 8, 2))
    a = b.op(OpKind.CONV, [x], (1, 8, 8, 16), kernel=(1, 1))
    y = a
    for c in widths:
        y = b.op(OpKind.CONV, [y], (1, 8, 8, c), kernel=(1, 1))
    cat = b.op(OpKind.CONCAT, [a, y], (1, 8, 8, 16 + widths[-1]), axis=3)
    out = b.op(OpKind.CONV, [cat], (1, 8, 8, 1), kernel=(1, 1))
    graph = b.build([out])
    return graph, graph.ops[0].outputs[0]


def solve(graph, profile, budget, objective="latency", **kw):
    plan = PLAN["ilp"](Request(graph, profile, budget, objective, 30.0, **kw))
    assert check(graph, plan, profile.capacities) == []
    return plan, planner.latency.end_to_end(graph, plan, profile).total_seconds


def only(plan, kind: str):
    found = [t for t in plan.transfers if t.kind == kind]
    assert len(found) == 1, plan.transfers
    return found[0]


def test_a_fetch_hides_behind_a_long_op(compute):
    # A (step 1, read at 2 and 6) cannot stay over y2's step (A + y1 + y2 = 3,584 B >
    # 2,560 B), nor complete its spill there; its fetch for the concat at step 6 may be
    # issued at step 5 (y3 + y4 + A = 1,792 B), where op 4 computes for 2 ms: hidden.
    g, a = skip_chain((8, 32, 8, 4), "hide")
    total = compute(g, {4: 2 * MS})
    plan, seconds = solve(g, device(), 2560)
    assert plan.peak_bytes <= 2560 and plan.status == "optimal"
    fetch = only(plan, "fetch")
    assert fetch.tensor == a and fetch.step == 6 and fetch.window == (5, 6)
    assert only(plan, "spill").window == (2, 2)  # y2's step leaves no room to hold A
    assert seconds == pytest.approx(total + T)  # only the blocking spill is exposed
    # The same plan problem with every transfer blocking pays for the fetch too.
    blocking, slow = solve(g, device(), 2560, async_window=0)
    assert all(t.window == (t.step, t.step) for t in blocking.transfers)
    assert slow == pytest.approx(total + 2 * T)
    assert any("estimated end-to-end latency" in n for n in plan.notes)


def test_a_budget_forbids_the_early_issue(compute):
    # y3 (24 ch) is so wide that A cannot come back at step 5 under 2,560 B (y3 + y4 + A =
    # 2,816 B): the fetch blocks. A's spill may complete one step late instead (over op 2:
    # A + y1 + y2 = 2,048 B), where a 2 ms op hides it.
    g, a = skip_chain((8, 8, 24, 4), "forbid")
    total = compute(g, {2: 2 * MS, 4: 2 * MS})
    plan, seconds = solve(g, device(), 2560)
    assert only(plan, "fetch").window == (6, 6)
    assert only(plan, "spill").window == (2, 3)
    assert seconds == pytest.approx(total + T)
    # 256 B more and the fetch is issued at step 5 as well: nothing is exposed.
    roomy, fast = solve(g, device(), 2816)
    assert only(roomy, "fetch").window[0] < 6
    assert fast == pytest.approx(total)


def test_a_storage_without_dma_never_hides(compute):
    g, _ = skip_chain((8, 32, 8, 4), "nodma")
    total = compute(g, {4: 2 * MS})
    plan, seconds = solve(g, device(dma=False), 2560)
    assert all(t.window == (t.step, t.step) for t in plan.transfers)
    assert seconds == pytest.approx(total + 2 * T)


def two_skips():
    """A1, A2 (1,024 B each) both go round y1, y2 (2,048 B each) to a final concat."""
    b = GraphBuilder("two_skips")
    x = b.input((1, 8, 8, 2))
    a1 = b.op(OpKind.CONV, [x], (1, 8, 8, 16), kernel=(1, 1))
    a2 = b.op(OpKind.CONV, [a1], (1, 8, 8, 16), kernel=(1, 1))
    y = b.op(OpKind.CONV, [a2], (1, 8, 8, 32), kernel=(1, 1))
    y = b.op(OpKind.CONV, [y], (1, 8, 8, 32), kernel=(1, 1))
    y = b.op(OpKind.CONV, [y], (1, 8, 8, 4), kernel=(1, 1))
    y = b.op(OpKind.CONV, [y], (1, 8, 8, 4), kernel=(1, 1))
    cat = b.op(OpKind.CONCAT, [a1, a2, y], (1, 8, 8, 36), axis=3)
    out = b.op(OpKind.CONV, [cat], (1, 8, 8, 1), kernel=(1, 1))
    return b.build([out])


def test_one_channel_carries_one_transfer_at_a_time(compute):
    # Under 4,608 B (the concat's working set) A1 and A2 are both out over y2's step 4.
    # With windows of one step both fetches land on op 5 (step 6, 1 ms): the channel moves
    # 1 ms of their 2.048 ms there, the rest is exposed; the spills: A1's completes over
    # op 2 (step 3, 1 ms: 0.024 ms exposed), A2's blocks (y2's step leaves no room).
    g = two_skips()
    total = compute(g)
    plan, seconds = solve(g, device(), 4608, async_window=1)
    fetches = [t for t in plan.transfers if t.kind == "fetch"]
    assert sorted(t.window for t in fetches) == [(6, 7), (6, 7)]
    assert seconds == pytest.approx(total + (2 * T - MS) + (T - MS) + T)
    # Windows of three steps reach op 4 (step 5) too: 2 ms for the two fetches.
    wide, faster = solve(g, device(), 4608, async_window=3)
    assert faster == pytest.approx(total + (2 * T - 2 * MS) + (T - MS) + T)


def test_latency_cap_gives_the_smallest_arena_within_it(compute):
    g, _ = skip_chain((8, 32, 8, 4), "cap")
    total = compute(g, {4: 2 * MS})
    free, _ = solve(g, device(), None, objective="peak")
    assert free.peak_bytes == 2560  # the working-set bound: spilling A reaches it
    # A cap that forbids the exposed fetch and the blocking spill: no spill at all.
    capped, seconds = solve(g, device(), None, objective="peak", latency_cap=total + 0.5 * MS)
    assert seconds <= total + 0.5 * MS and not capped.transfers
    assert capped.peak_bytes > 2560
    # One blocking spill allowed: the peak comes back down, the fetch hidden.
    capped, seconds = solve(g, device(), None, objective="peak", latency_cap=total + 1.5 * MS)
    assert capped.peak_bytes == 2560 and seconds == pytest.approx(total + T)
    with pytest.raises(InfeasibleBudget, match="below the compute time"):
        PLAN["ilp"](Request(g, device(), None, "peak", 10.0, latency_cap=total / 2))


def test_latency_objective_refuses_the_milp(compute):
    g, _ = skip_chain((8, 32, 8, 4), "milp")
    compute(g)
    with pytest.raises(PlannerError, match="need --solver cpsat"):
        PLAN["ilp"](Request(g, device(), 2560, "latency", 10.0, solver="pulp-cbc"))


# Issue #16's acceptance, as benchmarks/async_ilp.ACCEPTANCE_COMMAND runs it (CP-SAT
# deterministic work per solve, so the answers do not depend on the load); the solves are
# shared with tests/test_async_acceptance.py, which runs the plans.
@pytest.mark.parametrize("path", zoo_unets(), ids=lambda p: p.name)
def test_async_plans_are_never_slower_than_blocking_ones_on_the_zoo_unets(path):
    rows = [acceptance_case(path, f).row for f in FRACTIONS]
    assert len(rows) == 2
    for row in rows:
        assert row.ok, table([row])


@pytest.mark.parametrize("extra,fragment", [
    (("--objective", "latency", "--solver", "pulp-cbc"), "need --solver cpsat"),
    (("--latency-cap", "1", "--solver", "pulp-highs"), "need --solver cpsat"),
    (("--latency-cap", "1", "--objective", "transfers"), "goes with --objective peak"),
    (("--latency-cap", "-1"), "positive number of seconds"),
    (("--latency-cap", "1", "--planner", "tinyseg"), "needs --planner ilp"),
    (("--async-window", "-1"), "--async-window must be 0 to"),
])
def test_latency_options_are_refused_in_one_line(extra, fragment):
    run = subprocess.run([sys.executable, "-m", "planner", "solve", str(TINY), *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == "", (run.returncode, run.stdout)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], run.stderr


def test_python_api_plans_for_latency_and_under_a_cap():
    from frontends import load_model

    g = load_model(TINY)
    prof = load_profile("qspi-flash")
    budget = 207360  # 90% of tflm-greedy's peak on the row kernel
    fast = tinyplan.plan(g, budget, objective="latency", time_limit=20)
    assert fast.objective == "latency" and fast.peak_bytes <= budget
    assert any("estimated end-to-end latency" in n for n in fast.notes)
    seconds = end_to_end(apply_kernels(g, prof), fast, prof).total_seconds
    capped = tinyplan.plan(g, objective="peak", latency_cap=seconds, time_limit=20)
    assert end_to_end(apply_kernels(g, prof), capped, prof).total_seconds <= seconds + 1e-9


GRAPHS = {
    "small_unet": lambda: small_unet(),
    "small_unet_2": lambda: small_unet(8, 12, (4, 8)),
    "two_skips": two_skips,
    "skip_chain": lambda: skip_chain((8, 32, 8, 4), "chain")[0],
}


@pytest.mark.parametrize("profile", ["test-dma", "qspi-flash"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_model_never_exceeds_the_simulation_on_one_channel(name, profile):
    # docs/planner.md: on one storage the latency model relaxes planner/latency.py, so its
    # value for the plan it returns is at most the simulated latency of that plan.
    g = GRAPHS[name]()
    prof = device() if profile == "test-dma" else load_profile(profile)
    least = PLAN["ilp"](Request(g, prof, None, "peak", 5.0)).peak_bytes
    plan = PLAN["ilp"](Request(g, prof, least, "latency", 10.0))
    assert check(g, plan, prof.capacities) == []
    seconds = planner.latency.end_to_end(g, plan, prof).total_seconds
    model = [float(n.split("latency model ")[1].split(" ")[0]) for n in plan.notes
             if "latency model " in n]
    for value in model:  # absent when the returned plan is not the solver's own
        # The note rounds to 6 digits; the model rounds each transfer up to 1 us.
        assert value <= seconds * (1 + 1e-5) + 1e-6 * len(plan.transfers)
