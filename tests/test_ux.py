"""What a new user meets first: the console command, --version, usage, help with defaults,
every argument refused before any work, SRAM warnings, the per-tensor report."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
TFLITE = MODELS / "tiny_unet_int8.tflite"
ONNX = MODELS / "tiny_unet.onnx"


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def refused(run: subprocess.CompletedProcess, *fragments: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert run.stdout == ""
    return lines[0]


def test_console_script_is_declared() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["tinyplan"] == "planner.cli:main"
    assert any(d.startswith("tqdm") for d in data["project"]["dependencies"])


def test_version() -> None:
    from planner.version import __version__

    run = cli("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"tinyplan {__version__}"


def test_bare_invocation_prints_usage() -> None:
    run = cli()
    assert run.returncode == 2
    assert run.stderr.startswith("usage:")
    for command in ("analyze", "solve", "verify-tflm", "run", "storage-host", "exit codes"):
        assert command in run.stderr


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_has_help_and_shows_its_default() -> None:
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and action.default not in (None, False, []):
                assert "default" in sub._get_formatter()._get_help_string(action), \
                    (name, action.dest)
        if name == "solve":
            assert "(default: 60.0)" in text and "(default: qspi-flash)" in text


def test_solve_help_names_the_exit_codes() -> None:
    text = cli("solve", "--help").stdout
    assert "130 interrupted" in " ".join(text.split())


# --- refused before any work: no solve, nothing written ----------------------------------


def test_emit_tflite_on_onnx_is_refused_in_full_before_solving(tmp_path: Path) -> None:
    out = tmp_path / "o"
    # A time limit that the ILP would use up: the refusal must come long before it.
    line = refused(cli("solve", ONNX, "--emit", "tflite", "-o", out, "--time-limit", "600",
                       timeout=60), "--emit tflite needs a .tflite model")
    assert line.rstrip().endswith("c, svg")  # the whole list, not "...gets plan.json and C"
    assert not out.exists()


def test_emit_shim_on_onnx(tmp_path: Path) -> None:
    refused(cli("solve", ONNX, "--emit", "shim", "-o", tmp_path / "o"), "--emit shim")


def test_emit_without_outdir_is_refused() -> None:
    refused(cli("solve", TFLITE, "--emit", "svg"), "give -o OUTDIR")


@pytest.mark.parametrize("extra,fragment", [
    (("--budget", "300KB"), "--budget"),
    (("--planner", "tinyseg"), "--planner tinyseg"),
    (("--objective", "peak"), "--objective"),
    (("--svg", "x.svg"), "--svg"),
    (("-o", "o", "--emit", "svg"), "--emit"),
])
def test_pareto_refuses_what_it_cannot_honour(extra: tuple, fragment: str) -> None:
    refused(cli("solve", TFLITE, "--pareto", *extra), "--pareto does not take", fragment)


def test_unknown_planner_before_reading_the_model() -> None:
    refused(cli("solve", "no-such-model.onnx", "--planner", "nope"), "unknown planner 'nope'")


# --- the profile's SRAM -------------------------------------------------------------------


def test_plan_above_the_profiles_sram_is_warned_about() -> None:
    # On TFLM's own TRANSPOSE_CONV: head 307,200 + tail 9,328 B.
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--stock-transpose-conv", "--json")
    assert run.returncode == 0
    data = json.loads(run.stdout)
    assert data["sram_bytes"] == 262_144 and data["fits_sram"] is False
    assert "exceeds the 262,144 B of SRAM" in run.stderr
    assert "arena total (316,528 B)" in run.stderr


def test_budget_above_the_profiles_sram_is_warned_about_before_planning() -> None:
    run = cli("solve", TFLITE, "--planner", "tflm-greedy", "--budget", "1MiB")
    assert run.returncode == 0
    assert run.stderr.count("warning:") == 1 and "budget (1,048,576 B)" in run.stderr


def test_summary_explains_the_load_bound_under_a_smaller_peak() -> None:
    run = cli("solve", TFLITE, "--budget", "256KiB", "--time-limit", "20")
    assert run.returncode == 0, run.stderr
    assert "no spilling can go below" not in run.stdout
    assert "no plan without spilling or fusion goes below" in run.stdout
    assert "passed by spilling/fusion" in run.stdout


# --- what -o writes ------------------------------------------------------------------------


def test_outdir_gets_the_per_tensor_report(tmp_path: Path) -> None:
    import csv

    from frontends import load_model
    from planner.analysis import buffers

    out = tmp_path / "o"
    run = cli("solve", TFLITE, "--budget", "180KB", "--time-limit", "20", "-o", out)
    assert run.returncode == 0, run.stderr
    names = {p.name for p in out.iterdir()}
    assert {"plan.json", "tensors.csv", "tensors.md", "report.html",
            "tiny_unet_int8.planned.tflite",
            "tiny_unet_int8_plan.h", "tiny_unet_int8.ilp.layout.svg"} <= names
    assert not [n for n in names if n.startswith(".tinyplan-")]  # no staging folder left
    graph = load_model(TFLITE)
    rows = list(csv.DictReader((out / "tensors.csv").open()))
    assert [int(r["id"]) for r in rows] == [b.tensor for b in buffers(graph)]
    by_id = {int(r["id"]): r for r in rows}
    plan = json.loads((out / "plan.json").read_text())
    spilled = {t["tensor"] for t in plan["transfers"] if t["kind"] == "spill"}
    assert spilled  # 180 KB needs a spill on this model
    for t in spilled:
        assert "spill@" in by_id[t]["transfers"]
        assert by_id[t]["name"] == graph.tensors[t].name
    md = (out / "tensors.md").read_text()
    assert all(graph.tensors[t].name in md for t in spilled)


def test_benchmark_options_have_help_and_defaults() -> None:
    from benchmarks.__main__ import build_parser as bench_parser

    for name, sub in _subparsers(bench_parser()).items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.dest)
        # scale generates its models, async-ilp and pareto plan the bundled zoo: no data
        if name not in ("scale", "async-ilp", "pareto"):
            assert "--data DIR" in sub.format_help()


def test_readme_command_list_names_every_option() -> None:
    from benchmarks.__main__ import build_parser as bench_parser

    text = (ROOT / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    missing = []
    for parser in (build_parser(), bench_parser()):
        for name, sub in _subparsers(parser).items():
            assert name in block, name
            for action in sub._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                longest = max(action.option_strings, key=len, default=None)
                if longest and not any(o in block for o in action.option_strings):
                    missing.append(f"{name} {longest}")
    assert not missing, missing
