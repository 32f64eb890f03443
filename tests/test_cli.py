"""`python -m planner` as users run it: exit codes, one-line errors, JSON and written plans.

Exit codes: 0 the plan fits (or no budget), 1 it does not fit, 2 bad input. Every
failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends import load_model
from planner.checker import check
from planner.device import load_profile
from planner.kernels import with_op_kernels
from planner.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
TFLITE = MODELS / "tiny_unet_int8.tflite"
ONNX = MODELS / "tiny_unet.onnx"

SUMMARY_KEYS = {
    "model", "planner", "peak_bytes", "load_bound_bytes", "working_set_bound_bytes",
    "budget_bytes", "fits_budget", "status", "solve_seconds", "bound_bytes", "gap",
    "spilled_bytes", "fetched_bytes", "est_transfer_seconds",
}


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(run: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def dynamic_onnx(path: Path) -> Path:
    """Conv + Relu with a symbolic batch dimension N."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "dyn", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# --- bad model files: exit 2 ------------------------------------------------------------


@pytest.mark.parametrize("command", ["analyze", "solve"])
def test_missing_file(tmp_path: Path, command: str) -> None:
    one_error_line(cli(command, tmp_path / "absent.onnx"), 2, "no such file")


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    one_error_line(cli("analyze", tmp_path), 2, "not a file")


@pytest.mark.parametrize("source", [TFLITE, ONNX], ids=["tflite", "onnx"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.99])
def test_truncated_file(tmp_path: Path, source: Path, keep: float) -> None:
    data = source.read_bytes()
    path = tmp_path / source.name
    path.write_bytes(data[: int(len(data) * keep)])
    one_error_line(cli("analyze", path), 2, path.name)


@pytest.mark.parametrize("name,content,fragment", [
    ("notes.txt", b"hello", "not an ONNX (.onnx) or TFLite (.tflite) model"),
    ("garbage.onnx", b"hello world, not protobuf\xff\xfe", "not an ONNX model"),
    ("garbage.tflite", b"hello world, not a flatbuffer", "not a TFLite file"),
    ("empty.onnx", b"", "not an ONNX model"),
    ("empty.tflite", b"", "not a TFLite file"),
])
def test_not_a_model(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    one_error_line(cli("solve", path, "--planner", "linear"), 2, fragment)


def test_onnx_model_under_another_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(ONNX.read_bytes())
    one_error_line(cli("analyze", path), 2, "not an ONNX (.onnx) or TFLite (.tflite) model")


def test_dynamic_shape_then_fixed(tmp_path: Path) -> None:
    path = dynamic_onnx(tmp_path / "dyn.onnx")
    one_error_line(cli("analyze", path), 2, "dynamic shape", "--input-shape")
    one_error_line(cli("solve", path, "--planner", "linear"), 2, "--input-shape")
    fixed = cli("analyze", path, "--input-shape", "x=1x3x8x8", "--json")
    assert fixed.returncode == 0, fixed.stderr
    data = json.loads(fixed.stdout)
    assert [t["shape"] for t in data["tensors"] if t["name"] == "x"] == [[1, 3, 8, 8]]
    # x (768 B) in, c (1024 B) out at the conv; c and y at the relu: 2048 B.
    assert data["load_bound_bytes"] == 2048
    batch2 = json.loads(cli("analyze", path, "--input-shape", "x=2x3x8x8", "--json").stdout)
    assert batch2["load_bound_bytes"] == 4096
    solved = cli("solve", path, "--input-shape", "x=1x3x8x8", "--planner", "tflm-greedy",
                 "--json")
    assert solved.returncode == 0 and json.loads(solved.stdout)["peak_bytes"] == 2048


@pytest.mark.parametrize("shape,fragment", [
    ("x=1x3x8", "3 dimensions"),
    ("y=1x3x8x8", "not a graph input"),
    ("x=1x3x0x8", "malformed --input-shape"),
    ("1x3x8x8", "malformed --input-shape"),
    ("x=1xAx8x8", "malformed --input-shape"),
])
def test_bad_input_shape(tmp_path: Path, shape: str, fragment: str) -> None:
    path = dynamic_onnx(tmp_path / "dyn.onnx")
    one_error_line(cli("analyze", path, "--input-shape", shape), 2, fragment)


def test_input_shape_contradicting_the_weights(tmp_path: Path) -> None:
    # ONNX Conv inference leaves input channels unchecked against the 4x3x3x3 weights.
    path = dynamic_onnx(tmp_path / "dyn.onnx")
    one_error_line(cli("analyze", path, "--input-shape", "x=1x4x8x8"), 2, "channels")


def test_input_shape_on_a_tflite_model() -> None:
    # Once silently ignored.
    one_error_line(cli("analyze", TFLITE, "--input-shape", "input=1x2x2x3"), 2,
                   "--input-shape")


# --- bad options: exit 2 ----------------------------------------------------------------


@pytest.mark.parametrize("budget", ["12XB", "-5", "abc", "1e3", ""])
def test_malformed_budget(budget: str) -> None:
    one_error_line(cli("solve", TFLITE, f"--budget={budget}", "--planner", "linear"), 2,
                   "malformed size")


def test_negative_budget_as_separate_argument() -> None:
    one_error_line(cli("solve", TFLITE, "--budget", "-5"), 2, "malformed size '-5'")


def test_unknown_planner() -> None:
    line = one_error_line(cli("solve", TFLITE, "--planner", "magic"), 2, "unknown planner 'magic'")
    for name in ("ilp", "tflm-greedy", "linear"):
        assert name in line


def test_unknown_profile() -> None:
    line = one_error_line(cli("solve", TFLITE, "--profile", "moon"), 2, "unknown profile 'moon'")
    assert "qspi-flash" in line


def test_broken_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("sram = ")
    one_error_line(cli("solve", TFLITE, "--profile", path), 2, "cannot read profile")


def test_unknown_solver() -> None:
    one_error_line(cli("solve", TFLITE, "--solver", "gurobi", "--time-limit", "2"), 2,
                   "invalid choice: 'gurobi'", "cpsat")


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_non_positive_time_limit(limit: str) -> None:
    one_error_line(cli("solve", TFLITE, f"--time-limit={limit}"), 2, "--time-limit")


@pytest.mark.parametrize("limit", ["nan", "inf"])
def test_non_finite_time_limit(limit: str) -> None:
    # nan once passed the '<= 0' check and the solver gave up at once, exit 0.
    one_error_line(cli("solve", TFLITE, f"--time-limit={limit}"), 2, "--time-limit")


@pytest.mark.parametrize("args", [("bogus",), ("solve",), ("solve", TFLITE, "--frobnicate"),
                                  ("solve", TFLITE, "--objective", "speed"),
                                  ("analyze", TFLITE, "--scratch", "int8")])
def test_argparse_errors_are_one_line(args: tuple) -> None:
    one_error_line(cli(*args), 2, "error:")


# --- budgets: exit 0 fits, 1 does not -------------------------------------------------------


def analysis(model: Path) -> dict:
    run = cli("analyze", model, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_budget_below_working_set_bound() -> None:
    info = analysis(TFLITE)
    ws, op = info["working_set_bound_bytes"], info["ops"][info["working_set_bound_op"]]
    budget = ws - 30_400
    run = cli("solve", TFLITE, "--head-budget", str(budget), "--planner", "tflm-greedy")
    line = one_error_line(run, 1, "below the working-set bound", f"op {op['index']} ",
                          f"'{op['name']}'", f"{ws:,} B", f"{ws - budget:,} B more")
    assert op["type"] in line
    as_json = cli("solve", TFLITE, "--budget", str(budget), "--json")
    one_error_line(as_json, 1, "below the working-set bound")
    data = json.loads(as_json.stdout)
    assert data["fits_budget"] is False and data["status"] == "infeasible"


def test_refusal_json_has_every_summary_key() -> None:
    # Once lacked bound_bytes, gap, spilled_bytes, fetched_bytes and est_transfer_seconds.
    run = cli("solve", TFLITE, "--budget", "1000", "--json")
    assert run.returncode == 1
    assert SUMMARY_KEYS <= set(json.loads(run.stdout))


def test_budget_proven_infeasible_by_the_ilp() -> None:
    # No storage: nothing spills, so 240,000 B (above the working-set bound) cannot hold.
    run = cli("solve", TFLITE, "--profile", "none", "--budget", "240000", "--time-limit", "10")
    one_error_line(run, 1, "infeasible")


def test_heuristic_plan_over_budget_exits_1() -> None:
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--budget", "200000", "--json")
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    assert data["fits_budget"] is False and data["peak_bytes"] > 200_000


def test_heuristic_plan_over_budget_says_so_on_stderr() -> None:
    # Once said only by the summary on stdout. tflm-greedy with the row kernel: 230,400 B.
    # sd-card's 320 KiB SRAM holds the plan: no SRAM warning besides the error.
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--head-budget", "200000",
              "--profile", "sd-card")
    one_error_line(run, 1, "230,400", "30,400 B over the budget")
    assert "DOES NOT FIT" in run.stdout


@pytest.mark.parametrize("budget", ["300KiB", "300kib", "307200", "307.2KB"])
def test_fitting_budget_exits_0(budget: str) -> None:
    # The head alone (--budget bounds head + tail: tests/test_arena_tail.py).
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--head-budget", budget, "--json",
              "--profile", "sd-card")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    data = json.loads(run.stdout)
    assert data["head_budget_bytes"] == 307_200 and data["fits_budget"] is True


@pytest.mark.parametrize("budget,expected", [("256KB", 256_000), ("256KiB", 262_144),
                                             ("256kb", 256_000), ("256KIB", 262_144)])
def test_budget_units(budget: str, expected: int) -> None:
    run = cli("solve", TFLITE, "--planner", "linear", "--budget", budget, "--json")
    assert json.loads(run.stdout)["budget_bytes"] == expected


def test_no_budget_exits_0_and_text_summary() -> None:
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--profile", "sd-card")
    assert run.returncode == 0 and run.stderr == ""
    # 230,400 B: TRANSPOSE_CONV on the row kernel (TFLM's own kernel: 307,200 B).
    assert "peak" in run.stdout and "230,400 B" in run.stdout


def test_fusion_without_storage_is_not_refused() -> None:
    # With fused kernels but no storage the ilp planner fuses concat+conv (tiny_unet_int8:
    # 192,000 B, below the 230,400 B without fusion); the working-set bound once ignored
    # such fusion and refused budgets like this one.
    run = cli("solve", TFLITE, "--profile", "fused", "--head-budget", "200000",
              "--time-limit", "10", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["working_set_bound_bytes"] <= data["peak_bytes"] <= 200_000
    assert data["num_fusions"] > 0 and data["spilled_bytes"] == 0


def test_stock_tflm_profile_neither_fuses_nor_goes_below_the_load_bound() -> None:
    run = cli("solve", ONNX, "--profile", "none", "--budget", "800000", "--json")
    one_error_line(run, 1, "below the working-set bound")
    run = cli("solve", ONNX, "--profile", "none", "--time-limit", "10", "--json")
    data = json.loads(run.stdout)
    assert data["num_fusions"] == 0 and data["spilled_bytes"] == 0
    assert data["peak_bytes"] >= data["load_bound_bytes"] == data["working_set_bound_bytes"]


# --- JSON and written plans ---------------------------------------------------------------


def test_solve_json_summary() -> None:
    # 180 KB: below the 192,000 B the fused kernels reach without storage, so it spills.
    run = cli("solve", TFLITE, "--time-limit", "10", "--json", "--head-budget", "180KB")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()) == 1
    data = json.loads(run.stdout)
    assert SUMMARY_KEYS <= set(data)
    assert data["planner"] == "ilp" and data["head_budget_bytes"] == 180_000
    assert data["fits_budget"] is True and data["peak_bytes"] <= 180_000
    assert data["load_bound_bytes"] >= data["working_set_bound_bytes"]
    assert data["peak_bytes"] >= data["working_set_bound_bytes"]
    assert data["status"] in ("optimal", "feasible")
    assert data["spilled_bytes"] > 0 and data["fetched_bytes"] >= data["spilled_bytes"]
    assert data["est_transfer_seconds"] > 0
    if data["bound_bytes"] is not None:
        assert data["bound_bytes"] <= data["peak_bytes"]
        assert data["gap"] == pytest.approx(
            (data["peak_bytes"] - data["bound_bytes"]) / data["peak_bytes"])


@pytest.mark.parametrize("model", [TFLITE, ONNX], ids=["tflite", "onnx"])
def test_analyze_json_on_both_formats(model: Path) -> None:
    data = analysis(model)
    assert data["format"] == model.suffix.lstrip(".")
    assert data["num_ops"] == len(data["ops"]) > 0
    assert data["num_tensors"] == len(data["tensors"])
    assert data["load_bound_bytes"] >= data["working_set_bound_bytes"] > 0
    assert 0 <= data["load_bound_step"] <= data["num_ops"]
    graph = load_model(model)
    assert data["num_ops"] == len(graph.ops)
    lengths = [g["length"] for g in data["cold_ranges"]]
    assert lengths == sorted(lengths, reverse=True)
    for t in data["tensors"]:
        if t["first"] is not None:
            assert 0 <= t["first"] <= t["last"] <= data["num_ops"]


def test_analyze_text_output() -> None:
    run = cli("analyze", ONNX)
    assert run.returncode == 0 and run.stderr == ""
    assert "load bound" in run.stdout and "working-set bound" in run.stdout


@pytest.mark.parametrize("model,planner", [(TFLITE, "ilp"), (ONNX, "tflm-greedy")],
                         ids=["tflite-ilp", "onnx-greedy"])
def test_solve_writes_a_plan_that_round_trips(tmp_path: Path, model: Path, planner: str) -> None:
    out = tmp_path / "out"
    run = cli("solve", model, "--planner", planner, "--time-limit", "10", "-o", out, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    path = out / "plan.json"
    assert str(path) in summary["files"]
    plan = Plan.load(path)
    written = json.loads(path.read_text())
    # plan.json also names the tensors (names, shapes, sizes) for people and tools
    assert {t["id"]: t["name"] for t in written.pop("tensors")} == \
        {t.id: t.name for t in load_model(model).tensors}
    assert json.loads(json.dumps(plan.to_json())) == written
    assert plan.peak_bytes == summary["peak_bytes"] and plan.planner == planner
    # The plan says which ops it runs on custom kernels: the graph it was made for.
    graph = with_op_kernels(load_model(model), plan.op_kernels)
    assert bool(plan.op_kernels) == (model == TFLITE)
    assert check(graph, plan, load_profile("qspi-flash").capacities) == []


def test_unknown_emit(tmp_path: Path) -> None:
    run = cli("solve", TFLITE, "--planner", "linear", "-o", tmp_path / "o", "--emit", "bogus")
    one_error_line(run, 2, "invalid choice: 'bogus'")


def test_outdir_that_is_a_file(tmp_path: Path) -> None:
    # Once a FileExistsError traceback.
    path = tmp_path / "taken"
    path.write_text("x")
    one_error_line(cli("solve", TFLITE, "--planner", "linear", "-o", path), 2, "cannot write")


def test_svg_into_a_missing_directory(tmp_path: Path) -> None:
    # Once a FileNotFoundError traceback.
    one_error_line(cli("solve", TFLITE, "--planner", "linear", "--svg",
                       tmp_path / "nodir" / "x.svg"), 2, "cannot write")


def test_emit_tflite_needs_a_tflite_model(tmp_path: Path) -> None:
    run = cli("solve", ONNX, "--planner", "linear", "-o", tmp_path / "o", "--emit", "tflite")
    one_error_line(run, 2, "--emit tflite needs a .tflite model")


def test_row_kernel_shrinks_transpose_conv_scratch_unless_stock() -> None:
    """Every profile but `none` runs int8 TRANSPOSE_CONV on the row kernel (one output row
    of int32 accumulators); --stock-transpose-conv and profile none keep TFLM's."""
    rows = analysis(TFLITE)
    stock = json.loads(cli("analyze", TFLITE, "--stock-transpose-conv", "--json").stdout)
    none = json.loads(cli("analyze", TFLITE, "--profile", "none", "--json").stdout)
    # The two name different profiles (and so may time ops differently); the graph is one.
    assert stock["tensors"] == none["tensors"] and stock["op_kernels"] == none["op_kernels"] == []
    assert [k for _, k in rows["op_kernels"]] == ["tinyplan_rows"] * 3
    scratch = {t["id"]: t["bytes"] for t in rows["tensors"] if t["role"] == "scratch"}
    full = {t["id"]: t["bytes"] for t in stock["tensors"] if t["role"] == "scratch"}
    outputs = {op["scratch"][0]: op["outputs"][0] for op in rows["ops"] if op["scratch"]}
    shape = {t["id"]: t["shape"] for t in rows["tensors"]}
    for s, out in outputs.items():
        _, h, w, c = shape[out]
        assert full[s] == h * w * c * 4 and scratch[s] == w * c * 4
    assert rows["load_bound_bytes"] < stock["load_bound_bytes"]
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--json")
    data = json.loads(run.stdout)
    assert run.returncode == 0 and data["op_kernels"] == rows["op_kernels"]
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--stock-transpose-conv", "--json")
    data = json.loads(run.stdout)
    assert data["op_kernels"] == [] and data["peak_bytes"] == 307_200
    one_error_line(cli("solve", TFLITE, "--scratch", "int16"), 2, "error:")


def test_svg_is_written(tmp_path: Path) -> None:
    svg = tmp_path / "layout.svg"
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--svg", svg)
    assert run.returncode == 0, run.stderr
    assert svg.read_text().lstrip().startswith("<")
