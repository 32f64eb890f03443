"""The Python API: the docs page's example runs as written, and bad input raises cleanly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import tinyplan

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_example_runs(tmp_path: Path, capsys) -> None:
    text = (ROOT / "docs" / "python_api.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    model = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
    here = os.getcwd()
    os.chdir(tmp_path)  # out-api/ goes here, not into the checkout
    try:
        exec(compile(block.replace('"benchmarks/models/tiny_unet_int8.tflite"', repr(str(model))),
                     "python_api.md", "exec"), {})
    finally:
        os.chdir(here)
    out = capsys.readouterr().out
    # the row kernel's graph: TFLM's own TRANSPOSE_CONV would give a 307,200 B load bound
    assert "load bound 230,400 B" in out and "spilled " in out
    assert {"plan.json", "report.html", "tensors.csv"} <= {p.name for p in
                                                           (tmp_path / "out-api").iterdir()}


def test_every_documented_function_exists_and_is_typed() -> None:
    text = (ROOT / "docs" / "python_api.md").read_text()
    for name in re.findall(r"^\| `(\w+)\(", text, flags=re.M):
        assert callable(getattr(tinyplan, name)), name
        assert getattr(tinyplan, name).__annotations__, name
    assert (ROOT / "tinyplan" / "py.typed").is_file()


def test_bad_input_raises_planner_errors() -> None:
    with pytest.raises(tinyplan.PlannerError, match="no such file"):
        tinyplan.load("missing.onnx")
    graph = tinyplan.load(ROOT / "benchmarks" / "models" / "deeplab_lite_int8.tflite")
    with pytest.raises(tinyplan.PlannerError, match="unknown planner"):
        tinyplan.plan(graph, planner="nope")
    with pytest.raises(tinyplan.PlannerError, match="malformed size"):
        tinyplan.plan(graph, budget="lots")
    with pytest.raises(tinyplan.InfeasibleBudget):
        tinyplan.plan(graph, budget=1000, device="none")
