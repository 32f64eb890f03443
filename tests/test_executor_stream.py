"""Row-streamed plans run in the arena machine: each group op on the C row runner over
views into the one arena (rings as real segments, poisoned on recycle), stream_in and
spill_rows rows against real storage; outputs bit-identical to the unmodified model on
the TFLite reference kernels."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from backends.c import kernels as ckernels
from backends.executor import kernels_for, random_inputs, run_plan
from frontends import load_model
from planner.checker import assert_valid, check
from planner.device import load_profile
from planner.kernels import apply_kernels, op_kernels_of
from planner.plan import Plan
from planner.planners.base import Request, registry
from planner.streaming import apply_groups, choose_groups, groups_of, planned_graph

pytestmark = pytest.mark.skipif(ckernels.available() is not None,
                                reason=str(ckernels.available()))
ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "models"
UNET = ZOO / "tiny_unet_int8.tflite"
ZOO_INT8 = sorted(ZOO.glob("*_int8.tflite"))
PROFILE = "qspi-flash"


@cache
def streamed(path: Path):
    """(source graph, planned graph, kernels, inputs, reference outputs) of a zoo model."""
    profile = load_profile(PROFILE)
    source = apply_kernels(load_model(path), profile)
    groups = choose_groups(source, profile)
    planned = apply_groups(source, groups)
    kernels = kernels_for(source, path)
    feeds = random_inputs(source, 0)
    return source, planned, kernels, feeds, kernels.reference(feeds)


def plan_for(path: Path, planner: str, budget: int | None = None) -> Plan:
    source, planned, *_ = streamed(path)
    profile = load_profile(PROFILE)
    plan = registry()[planner](Request(planned, profile, budget, time_limit=10.0,
                                       work_limit=0.5))
    # Planners stamp the groups and kernels of the graph they planned.
    assert plan.stream_groups == groups_of(planned) and plan.op_kernels == op_kernels_of(source)
    assert_valid(planned, plan, profile.capacities)
    return plan


def run(path: Path, plan: Plan, storage: str = "local", graph=None):
    _, planned, kernels, feeds, reference = streamed(path)
    return run_plan(graph or planned, plan, path, storage, feeds, kernels=kernels,
                    reference=reference)


def test_zoo_models_have_groups():
    _, planned, *_ = streamed(UNET)
    assert planned.source is not None and len(planned.ops) < len(planned.source.ops)


@pytest.mark.parametrize("planner", ["tflm-greedy", "tinyseg", "ilp"])
def test_tiny_unet_streamed_plans_run_bit_identical(planner: str):
    plan = plan_for(UNET, planner)
    assert plan.stream_groups
    result = run(UNET, plan)
    assert result.mismatch is None, result.mismatch
    groups = sum(op.kind.value == "streamed_group" for op in streamed(UNET)[1].ops)
    assert result.execution.c_kernel_ops >= groups >= 1


@pytest.mark.parametrize("path", ZOO_INT8, ids=lambda p: p.stem)
def test_zoo_int8_streamed_greedy_plans_run_bit_identical(path: Path):
    _, planned, *_ = streamed(path)
    if planned.source is None or len(planned.ops) == len(planned.source.ops):
        pytest.skip(f"{path.name}: no run of row-capable ops to stream")
    plan = plan_for(path, "tflm-greedy")
    result = run(path, plan)
    assert result.mismatch is None, result.mismatch


@pytest.mark.parametrize("path", [p for p in ZOO_INT8 if "unet" in p.name], ids=lambda p: p.stem)
def test_zoo_unet_streamed_ilp_and_tinyseg_plans_run_bit_identical(path: Path):
    for planner in ("tinyseg", "ilp"):
        plan = plan_for(path, planner)
        result = run(path, plan)
        assert result.mismatch is None, f"{planner}: {result.mismatch}"


@cache
def moving_plan() -> Plan:
    """The ILP on tiny_unet's streamed graph under a budget that makes it move data
    row by row (spill_rows and/or stream_in), or the lowest budget it reaches."""
    _, planned, *_ = streamed(UNET)
    plan = plan_for(UNET, "ilp")
    for fraction in (0.8, 0.7, 0.6):
        try:
            cand = plan_for(UNET, "ilp", int(plan.peak_bytes * fraction) // 16 * 16)
        except Exception:  # noqa: BLE001 - infeasible below this: keep the last one
            break
        plan = cand
        if any(t.kind in ("spill_rows", "stream") for t in plan.transfers):
            break
    return plan


def test_row_transfers_go_through_real_storage_local_and_remote():
    plan = moving_plan()
    if not plan.transfers:
        pytest.skip("the ILP reaches its lowest peak here without moving data")
    local = run(UNET, plan, "local")
    assert local.mismatch is None, local.mismatch
    remote = run(UNET, plan, "remote")
    assert remote.mismatch is None, remote.mismatch
    for t, value in local.execution.outputs.items():
        assert np.array_equal(value, remote.execution.outputs[t])
    moved = {n: (s.bytes_written, s.bytes_read) for n, s in local.execution.storage.items()}
    assert moved == {n: (s.bytes_written, s.bytes_read)
                     for n, s in remote.execution.storage.items()}
    assert sum(w for w, _ in moved.values()) == plan.spilled_bytes
    assert sum(r for _, r in moved.values()) == plan.fetched_bytes


def test_spilled_rows_are_what_the_later_fetch_reads(monkeypatch):
    """Corrupt every row a group writes to storage: a spill_rows output read back later
    then gives wrong outputs (the rows really travel through storage)."""
    plan = moving_plan()
    if not any(t.kind == "spill_rows" for t in plan.transfers):
        pytest.skip("this plan spills no rows")
    from backends.executor import stream as executor_stream

    real = executor_stream._Router.write
    monkeypatch.setattr(executor_stream._Router, "write",
                        lambda self, a, d: real(self, a, bytes(b ^ 1 for b in d)))
    assert run(UNET, plan).mismatch is not None


def shrunk(plan: Plan) -> tuple[Plan, int, int] | None:
    """The plan with its first ring of more than one row one row smaller, the schedule kept."""
    for g, group in enumerate(plan.stream_groups):
        for i, (t, rows) in enumerate(group.rings):
            if rows > 1:
                rings = list(group.rings)
                rings[i] = (t, rows - 1)
                groups = list(plan.stream_groups)
                groups[g] = replace(group, rings=tuple(rings))
                return replace(plan, stream_groups=tuple(groups)), g, t
    return None


@pytest.mark.parametrize("planner", ["tflm-greedy", "ilp"])
def test_a_ring_one_row_short_gives_wrong_numbers_or_is_refused(planner: str):
    source, planned, *_ = streamed(UNET)
    plan = plan_for(UNET, planner)
    assert run(UNET, plan).mismatch is None
    found = shrunk(plan)
    assert found is not None, "no ring of two rows or more to shrink"
    bad, _, _ = found
    bad_graph = planned_graph(load_model(UNET), bad)
    errors = check(bad_graph, bad, load_profile(PROFILE).capacities)
    assert any("before its last read" in e for e in errors)  # the checker refuses it
    result = run(UNET, bad, graph=bad_graph)
    # And the executor's poison catches it on its own (planner run --unchecked).
    assert result.mismatch is not None, "a ring one row short ran bit-identical"


def test_run_refuses_a_short_ring_and_unchecked_it_mismatches(solved: Path, tmp_path: Path):
    bad, _, _ = shrunk(Plan.load(solved / "plan.json"))  # stamped with its model by solve
    path = tmp_path / "short.json"
    bad.save(path)
    cmd = [sys.executable, "-m", "planner", "run", str(UNET), str(path)]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "before its last read" in refused.stderr
    wrong = subprocess.run([*cmd, "--unchecked"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert wrong.returncode == 1, wrong.stderr
    assert wrong.stderr.startswith("mismatch: output ")


@pytest.fixture(scope="module")
def solved(tmp_path_factory) -> Path:
    """`solve --row-streaming -o OUT` of tiny_unet_int8 with tflm-greedy."""
    out = tmp_path_factory.mktemp("solved")
    solve = subprocess.run([sys.executable, "-m", "planner", "solve", str(UNET),
                            "--row-streaming", "--planner", "tflm-greedy", "-o", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert solve.returncode == 0, solve.stderr
    return out


def test_cli_solve_row_streaming_then_run(solved: Path):
    out = solved
    plan_path = out / "plan.json"
    assert Plan.load(plan_path).stream_groups
    # The pictures and reports of the plan show its groups and rings.
    report = (out / "report.html").read_text()
    assert "id='groups'" in report and "streamed working-set bound" in report
    svg = next(out.glob("*.svg")).read_text()
    assert "class='group'" in svg and "data-role='ring'" in svg
    assert " ring " in (out / "tensors.csv").read_text()
    done = subprocess.run([sys.executable, "-m", "planner", "run", str(UNET), str(plan_path),
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["match"] is True and summary["checker_errors"] == 0


def test_a_stream_in_from_the_wrong_address_is_caught():
    """A group's stream_in reads from its transfer's own address: pointing it one row
    further brings back the wrong rows (or bytes no spill wrote), never the right answer."""
    plan = moving_plan()
    _, planned, *_ = streamed(UNET)
    groups = {op.index + 1 for op in planned.ops if op.kind.value == "streamed_group"}
    target = next((t for t in plan.transfers if t.kind == "stream" and t.step in groups), None)
    if target is None:
        pytest.skip("this plan streams no group input")
    row = planned.tensors[target.tensor].nbytes // planned.tensors[target.tensor].shape[1]
    moved = tuple(replace(t, address=t.address + row) if t == target else t
                  for t in plan.transfers)
    result = run(UNET, replace(plan, transfers=moved))
    assert result.mismatch is not None


def test_layout_of_a_plan_moving_rows_labels_its_line_buffers():
    import xml.etree.ElementTree as ET

    from backends.reports.svg import render_layout_svg

    plan = moving_plan()
    _, planned, *_ = streamed(UNET)
    root = ET.fromstring(render_layout_svg(planned, plan))
    ns = "{http://www.w3.org/2000/svg}"
    segs = [e for e in root.iter(f"{ns}rect") if e.get("class") == "seg"]
    roles = {e.get("data-role") for e in segs}
    kinds = {t.kind for t in plan.transfers}
    assert ("stream_in" in roles) == ("stream" in kinds)
    assert ("spill_rows" in roles) == ("spill_rows" in kinds)
    for e in segs:
        tip = e.find(f"{ns}title").text
        if e.get("data-role") == "stream_in":
            assert "(line buffer, stream_in rows from storage)" in tip
        if e.get("data-role") == "spill_rows":
            assert "(line buffer, spill_rows rows to storage)" in tip
    markers = [e for e in root.iter(f"{ns}polygon") if e.get("class") == "spill-rows-marker"]
    assert len(markers) == sum(t.kind == "spill_rows" for t in plan.transfers)


def test_kernel_time_is_part_of_the_run_time():
    result = run(UNET, plan_for(UNET, "tflm-greedy"))
    assert 0 < result.execution.kernel_seconds <= result.execution.seconds
