"""Issue #16's acceptance plans, run: every async ILP plan of the zoo U-Nets at 75% and
90% of tflm-greedy's peak (benchmarks/async_ilp.py at its acceptance limits, the solves
tests/test_ilp_latency.py compares) goes through the checker and the arena machine with
matching numerics; the ones with a window are replayed by the C harness over the threaded
host driver, moving each transfer at the end of its window, byte for byte as the same plan
run blocking.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_c_async import same_replay, write_glue
from test_c_glue import run, stats

from backends.c.glue import storage_names
from backends.executor import (
    ArenaMachine,
    compare,
    kernels_for,
    open_storages,
    random_inputs,
    run_plan,
)
from benchmarks.async_ilp import ACCEPTANCE_COMMAND, FRACTIONS, table, zoo_unets
from planner.checker import check
from planner.plan import Plan

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from async_plans import (  # noqa: E402
    acceptance_case,
    blocking,
    plant_fetch_completing_late,
    plant_spill_past_its_source,
    windows,
)

CASES = [(p, f) for p in zoo_unets() for f in FRACTIONS]
IDS = [f"{p.name}-{f:.0%}" for p, f in CASES]


@pytest.fixture(scope="module")
def solved():
    """Every acceptance case, solved once for the executor and the harness tests."""
    return {(p.name, f): acceptance_case(p, f) for p, f in CASES}


def plan_of(solved, path: Path, fraction: float):
    case = solved[(path.name, fraction)]
    if case.fast is None:
        pytest.skip(f"no plan fits {fraction:.0%} of tflm-greedy's peak")
    return case


def test_help_and_docs_name_the_acceptance_command():
    from benchmarks.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert ACCEPTANCE_COMMAND in " ".join(sub.choices["async-ilp"].format_help().split())
    docs = (Path(__file__).resolve().parents[1] / "docs" / "planner.md").read_text()
    assert f"`{ACCEPTANCE_COMMAND}`" in docs


def test_the_zoo_has_every_acceptance_model():
    # Three U-Nets, each as int8 TFLite and float ONNX: an empty glob would pass vacuously.
    assert len(zoo_unets()) == 6 and len(CASES) == 12


@pytest.mark.parametrize(("path", "fraction"), CASES, ids=IDS)
def test_async_plan_runs_with_matching_numerics(solved, path: Path, fraction: float,
                                                tmp_path: Path):
    case = plan_of(solved, path, fraction)
    assert case.row.ok, table([case.row])
    # The plan as `planner run` reads it: through its JSON file.
    case.fast.save(tmp_path / "plan.json")
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.transfers == case.fast.transfers
    assert check(case.graph, plan, case.profile.capacities) == []
    kernels = kernels_for(case.graph, path)
    feeds = random_inputs(case.graph, seed=1)
    with open_storages(plan) as backends:
        m = ArenaMachine(case.graph, plan, kernels, backends)
        got = m.run(feeds)
    assert compare(case.graph, got.outputs, kernels.reference(feeds)) is None
    # The in-flight checks ran on every window, and every window closed.
    if windows(plan):
        assert m.inflight is not None and m.inflight.started == len(windows(plan))
        assert not m.inflight.in_flight
    else:
        assert m.inflight is None


def test_some_acceptance_plan_has_a_real_window(solved):
    # Otherwise the tests above never exercise the executor's in-flight checks.
    found = [tr for case in solved.values() if case.fast is not None
             for tr in windows(case.fast)]
    assert any(tr.kind == "fetch" and tr.window[0] < tr.step or
               tr.kind == "spill" and tr.window[1] > tr.step for tr in found), found


def test_in_flight_checks_catch_broken_windows_on_these_plans(solved):
    """The executor is not blind to these windows: broken by hand (bypassing the checker),
    a windowed acceptance plan is refused or computes wrong numbers."""
    wrong = 0
    for case in solved.values():
        if case.fast is None or not windows(case.fast):
            continue
        # The windows kept, each fetch's destination starting only at its step.
        short = replace(case.fast, segments=blocking(case.fast).segments)
        assert check(case.graph, short, case.profile.capacities)
        assert "no segment holds its window" in run_plan(case.graph, short, case.path).mismatch
        for plant, extra in ((plant_fetch_completing_late, (case.graph,)),
                             (plant_spill_past_its_source, ())):
            try:
                bad = plant(case.fast, *extra)
            except ValueError:  # nothing in this plan to break that way
                continue
            assert check(case.graph, bad, case.profile.capacities)
            mismatch = run_plan(case.graph, bad, case.path).mismatch
            assert mismatch is not None and "cannot run" not in mismatch, mismatch
            wrong += 1
    assert wrong, "no acceptance plan could be broken by a late fetch or an early reuse"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is absent")
@pytest.mark.parametrize(("path", "fraction"), CASES, ids=IDS)
def test_windowed_plan_replays_over_the_threaded_driver(solved, path: Path, fraction: float,
                                                        tmp_path: Path):
    case = plan_of(solved, path, fraction)
    plan = case.fast
    if not windows(plan):
        pytest.skip("the async plan has no window: nothing in flight to replay")
    names = storage_names(plan, case.profile)
    exe_blocking = write_glue(case.graph, blocking(plan), tmp_path / "blocking", case.profile)
    exe = write_glue(case.graph, plan, tmp_path / "async", case.profile)
    specs = [f"file:{tmp_path / f's{i}.bin'}" for i in range(len(names))]
    want = run(exe_blocking, "2", *specs)
    assert want.returncode == 0, want.stderr
    # -a2: the worker thread moves each transfer at the latest moment its window allows.
    got = run(exe, "-a2", "2", *specs)
    assert got.returncode == 0, got.stderr
    same_replay(want.stdout, got.stdout)
    s = stats(got.stdout)
    assert s["async"] == 2 * len(windows(plan)) and s["worker"] > 0
