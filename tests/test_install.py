"""A wheel installed into a fresh venv and run from another folder, as a user would.

Kept fast: the wheel is built without dependencies and the venv sees this
environment's packages through a .pth file instead of installing them again.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import SHARED, needs_shared

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(venv bin folder, an empty working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist",
                 ROOT], cwd=tmp)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip()[-300:]}")
    wheel = next((tmp / "dist").glob("tinyplan-*.whl"))
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    purelib = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=tmp).stdout.strip())
    # This environment's dependencies (numpy, onnx, ortools, ...), not tinyplan itself.
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q",
                wheel], cwd=tmp)
    assert inst.returncode == 0, inst.stderr
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere


def test_the_console_command_runs_from_another_folder(installed) -> None:
    bin_dir, cwd = installed
    from planner.version import __version__

    version = run([bin_dir / "tinyplan", "--version"], cwd)
    assert version.returncode == 0 and version.stdout.strip() == f"tinyplan {__version__}"
    located = run([bin_dir / "python", "-c", "import planner.cli; print(planner.cli.__file__)"],
                  cwd)
    assert "site-packages" in located.stdout, located  # the wheel, not the checkout


def test_solve_from_the_wheel(installed) -> None:
    bin_dir, cwd = installed
    model = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
    done = run([bin_dir / "tinyplan", "solve", model, "--planner", "tflm-greedy", "--json",
                "--profile", "sd-card", "-o", cwd / "out"], cwd)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["peak_bytes"] == 230_400  # TRANSPOSE_CONV on the row kernel
    assert (cwd / "out" / "plan.json").is_file() and (cwd / "out" / "tensors.csv").is_file()


def test_the_wheel_carries_the_zoo_and_the_schema(installed) -> None:
    bin_dir, cwd = installed
    code = ("import pathlib, tinyplan; "
            "assert (pathlib.Path(tinyplan.__file__).parent / 'py.typed').is_file(); "
            "from benchmarks.runner import ZOO; from planner.schema import load_schema; "
            "print(len(list(ZOO.glob('*.onnx'))), len(list(ZOO.glob('*.tflite'))), "
            "load_schema()['properties']['schema_version']['const'])")
    got = run([bin_dir / "python", "-c", code], cwd)
    assert got.returncode == 0, got.stderr
    onnx, tflite, version = got.stdout.split()
    assert int(onnx) >= 6 and int(tflite) >= 6 and int(version) >= 1


@needs_shared
def test_benchmarks_from_the_wheel_with_data(installed) -> None:
    bin_dir, cwd = installed
    done = run([bin_dir / "python", "-m", "benchmarks", "run", "--suite", "quick", "--data",
                SHARED, "--models", "deeplab_lite_int8", "--models", "kws_ref",
                "--planners", "tflm-greedy,linear", "--no-minimalloc", "--no-svg",
                "-o", cwd / "bench"], cwd)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((cwd / "bench" / "results.csv").open()))
    assert {r["model"] for r in rows} == {"deeplab_lite_int8.tflite", "kws_ref_model.tflite"}


def test_benchmarks_from_the_wheel_without_data(installed) -> None:
    bin_dir, cwd = installed
    done = run([bin_dir / "python", "-m", "benchmarks", "run", "--models", "deeplab_lite",
                "--planners", "tflm-greedy", "--no-svg", "-o", cwd / "bench0"], cwd)
    assert done.returncode == 0, done.stderr
    assert "no shared data" in done.stderr  # said, not silently an empty run
    rows = list(csv.DictReader((cwd / "bench0" / "results.csv").open()))
    assert rows
    mm = run([bin_dir / "python", "-m", "benchmarks", "minimalloc"], cwd)
    assert mm.returncode == 2 and "--data DIR" in mm.stderr
    assert len(mm.stderr.strip().splitlines()) == 1
    bad = run([bin_dir / "python", "-m", "benchmarks", "run", "--data", cwd / "nothere"], cwd)
    assert bad.returncode == 2 and "no such folder" in bad.stderr
