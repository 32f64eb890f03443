"""Ctrl-C as a user presses it: SIGINT to real subprocesses (their whole process group).

Every command exits 130, says it was interrupted (never "time limit reached"), keeps
what it had (the best valid plan, the Pareto points, the finished benchmark rows) and
leaves nothing half-made or temporary behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frontends import load_model
from planner.checker import check
from planner.kernels import with_op_kernels
from planner.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "helpers" / "slow_planners.py"
TFLITE = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"


def schema_valid(data: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from planner.schema import load_schema

    jsonschema.Draft202012Validator(load_schema()).validate(data)


def start(*args: str | Path, env: dict | None = None, helper: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, str(HELPER), *map(str, args)] if helper else \
        [sys.executable, "-m", "planner", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    """stderr lines up to the one containing `marker` (the process is ready for Ctrl-C)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {marker!r}: {seen}")


def ctrl_c(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole group
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("still running after Ctrl-C") from None
    return out, err


def test_interrupted_search_writes_its_best_plan_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start("planner", "solve", TFLITE, "--planner", "slow-ilp", "-o", out, "--json")
    wait_for(proc, "searching")
    stdout, stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    summary = json.loads(stdout)
    schema_valid(summary)
    assert summary["interrupted"] is True
    assert not any("time limit" in n for n in summary["notes"])
    assert any(n.startswith("interrupted") for n in summary["notes"])
    plan = Plan.load(out / "plan.json")
    assert check(with_op_kernels(load_model(TFLITE), plan.op_kernels), plan) == []
    assert not [p for p in out.iterdir() if p.name.startswith(".tinyplan-")]


def test_interrupted_text_summary_never_says_time_limit(tmp_path: Path) -> None:
    proc = start("planner", "solve", TFLITE, "--planner", "slow-ilp")
    wait_for(proc, "searching")
    stdout, stderr = ctrl_c(proc)
    assert proc.returncode == 130
    assert "time limit" not in stdout + stderr and "interrupted" in stdout


def test_interrupted_heuristic_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start("planner", "solve", TFLITE, "--planner", "slow-heuristic", "-o", out)
    wait_for(proc, "searching")
    _, stderr = ctrl_c(proc)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted"
    assert not out.exists()


def test_pareto_keeps_the_points_found_before_ctrl_c(tmp_path: Path) -> None:
    # Solves 1-2 find the ends of the sweep, solve 3 the first budget; the 4th waits.
    proc = start("planner", "solve", TFLITE, "--pareto", "--json", "--time-limit", "20",
                 "-o", tmp_path, env={"TINYPLAN_SLOW_ILP_AFTER": "3"})
    wait_for(proc, "searching", timeout=300)
    stdout, stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    data = json.loads(stdout)
    schema_valid(data)
    assert data["interrupted"] is True and data["budgets_planned"] == 1
    assert len(data["pareto"]) == 1 and data["budgets_total"] > 1
    assert json.loads((tmp_path / "pareto.json").read_text())["pareto"] == data["pareto"]
    assert "kept 1 points" in stderr


def test_benchmark_runner_cancels_the_queue_and_writes_what_finished(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = start("benchmarks", "run", "--models", "tiny_unet_int8", "--no-minimalloc",
                 "--no-svg", "--jobs", "2", "--planners", "tflm-greedy,slow-budgets,linear",
                 "-o", out)
    wait_for(proc, "searching", timeout=300)
    time.sleep(1.0)  # let the fast tasks finish beside the waiting ones
    started = time.monotonic()
    _, stderr = ctrl_c(proc, timeout=30)
    assert time.monotonic() - started < 20  # the waiting workers were ended, not awaited
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and {r["planner"] for r in rows} <= {"tflm-greedy", "linear", "slow-budgets"}
    assert all(r["status"] for r in rows)
    report = (out / "report.md").read_text()
    assert "Interrupted" in report


def test_storage_host_exits_130(tmp_path: Path) -> None:
    proc = start("storage-host", "--tcp", "127.0.0.1:0", "--dir", tmp_path, helper=False)
    wait_for(proc, "storage host on")
    _, stderr = ctrl_c(proc)
    assert proc.returncode == 130, stderr


def test_pulp_leaves_no_temporary_files(tmp_path: Path) -> None:
    pytest.importorskip("pulp")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    model = ROOT / "benchmarks" / "models" / "mbv2_unet_int8.tflite"
    proc = start("solve", model, "--solver", "pulp-cbc", "--budget", "400KB",
                 "--time-limit", "120", env={"TMPDIR": str(tmp)}, helper=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(tmp.rglob("*")):
        time.sleep(0.2)  # CBC has its files once the model is written out
    assert any(tmp.rglob("*")), "CBC never started"
    _, stderr = ctrl_c(proc, timeout=60)
    assert proc.returncode == 130, stderr
    assert list(tmp.rglob("*")) == []


def test_ctrl_c_on_a_real_cp_sat_search(tmp_path: Path) -> None:
    from benchmarks.scale_models import residual_unet_int8

    # About 540 int8 ops: the transfer-time phase searches for a minute or more.
    model = tmp_path / "resunet540.tflite"
    model.write_bytes(residual_unet_int8(35, 96, 96, top_blocks=0))
    out = tmp_path / "out"
    proc = start("solve", model, "--time-limit", "300", "-o", out, "--json", helper=False)
    time.sleep(8)  # reading, analysis and model building are done; CP-SAT is searching
    stdout, stderr = ctrl_c(proc, timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    schema_valid(summary)
    assert summary["interrupted"] is True and "time limit" not in stdout + stderr
    plan = Plan.load(out / "plan.json")
    assert check(with_op_kernels(load_model(model), plan.op_kernels), plan) == []
