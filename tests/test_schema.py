"""Every JSON output against the one documented schema (planner/schemas/), with jsonschema."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from planner.schema import SCHEMA_VERSION, load_schema

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
TFLITE = MODELS / "tiny_unet_int8.tflite"
SMALL = MODELS / "deeplab_lite_int8.tflite"


def valid(data: dict, kind: str) -> dict:
    jsonschema.Draft202012Validator.check_schema(load_schema())
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] == kind
    return data


def cli_json(*args: str | Path, code: int = 0) -> dict:
    run = subprocess.run([sys.executable, "-m", "planner", *map(str, args), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == code, run.stderr
    return json.loads(run.stdout)


def test_the_schema_rejects_what_it_should() -> None:
    good = valid(cli_json("solve", SMALL, "--planner", "tflm-greedy"), "solve")
    validator = jsonschema.Draft202012Validator(load_schema())
    for broken in ({**good, "schema_version": 0}, {**good, "peak_bytes": "big"},
                   {k: v for k, v in good.items() if k != "model_path"},
                   {**good, "kind": "nonsense"}):
        assert not validator.is_valid(broken), broken


def test_solve_json(tmp_path: Path) -> None:
    data = valid(cli_json("solve", TFLITE, "--budget", "256KiB", "--time-limit", "20",
                          "-o", tmp_path), "solve")
    assert data["model"] == "tiny_unet_int8" and data["model_path"].endswith(".tflite")
    refused = valid(cli_json("solve", TFLITE, "--budget", "1000", code=1), "solve")
    assert refused["status"] == "infeasible" and refused["peak_bytes"] is None


def test_pareto_json() -> None:
    data = valid(cli_json("solve", SMALL, "--pareto", "--time-limit", "10"), "pareto")
    assert data["pareto"] and all("budget_bytes" in p and "budget" not in p
                                  for p in data["pareto"])


def test_analyze_json() -> None:
    valid(cli_json("analyze", SMALL), "analyze")


def test_run_json(tmp_path: Path) -> None:
    cli_json("solve", SMALL, "--planner", "tflm-greedy", "-o", tmp_path)
    data = valid(cli_json("run", SMALL, tmp_path / "plan.json"), "run")
    assert data["match"] is True and data["model"] == "deeplab_lite_int8"


def test_verify_tflm_json(tmp_path: Path) -> None:
    pytest.importorskip("tflite_micro")
    cli_json("solve", SMALL, "--profile", "none", "-o", tmp_path, "--time-limit", "10")
    planned = tmp_path / "deeplab_lite_int8.planned.tflite"
    data = valid(cli_json("verify-tflm", SMALL, planned, "--runs", "1"), "verify-tflm")
    assert data["ok"] is True and data["model_path"] == str(SMALL)


def test_benchmark_rows_and_csv_columns(tmp_path: Path) -> None:
    from benchmarks.report import write_all
    from benchmarks.runner import Progress, Suite, run_suite
    from planner.schema import stamp

    suite = Suite("t", (SMALL,), fractions=(0.9,), sram_budgets=False, time_limit=5.0,
                  planners=("tflm-greedy", "ilp"), svg=False)
    results = run_suite(suite, tmp_path, progress=lambda n: Progress(n, io.StringIO()))
    assert results.rows
    for row in results.rows:
        valid(stamp("benchmark-row", row), "benchmark-row")
    write_all(results, replace(suite, svg=False), tmp_path, 1)
    header = next(csv.reader((tmp_path / "results.csv").open()))
    documented = set(load_schema()["$defs"]["benchmark_row"]["properties"])
    documented |= set(load_schema()["$defs"]["model"]["properties"])
    assert {c for c in header if not c.startswith("est_s_")} <= documented
