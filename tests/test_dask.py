"""`benchmarks run --scheduler ADDRESS`: the same rows from a Dask cluster (LocalCluster)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from benchmarks.__main__ import main  # noqa: E402
from benchmarks.runner import Progress, Suite, run_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "benchmarks" / "models" / "deeplab_lite_int8.tflite"
# Wall-clock dependent: times, file names, and the notes of a time-limited search (they
# name the intermediate plans it passed through; the results themselves are compared).
TIMING = {"solve_seconds", "svg", "detail"}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield c


def rows_of(results) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in results.rows),
                  key=lambda r: (r["planner"], r["budget"]))


def test_a_cluster_gives_the_same_rows_as_the_process_pool(cluster, tmp_path: Path) -> None:
    suite = Suite("t", (MODEL,), fractions=(0.9, 0.75), sram_budgets=False, time_limit=5.0,
                  planners=("tflm-greedy", "tinyseg", "ilp"), svg=False)
    quiet = lambda n: Progress(n, io.StringIO())  # noqa: E731
    local = run_suite(suite, tmp_path / "local", jobs=1, progress=quiet)
    remote = run_suite(suite, tmp_path / "dask", progress=quiet,
                       scheduler=cluster.scheduler_address)
    assert rows_of(remote) == rows_of(local) and not remote.interrupted


def test_the_command_writes_the_tables(cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["run", "--scheduler", cluster.scheduler_address, "--models",
                 "deeplab_lite_int8", "--planners", "tflm-greedy,linear", "--no-minimalloc",
                 "--no-svg", "-o", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["planner"] for r in rows} == {"tflm-greedy", "linear"}
    assert (out / "report.md").is_file()


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["run", "--scheduler", "tcp://127.0.0.1:1", "--models", "deeplab_lite_int8",
                 "--planners", "tflm-greedy", "--no-minimalloc", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: cannot reach the Dask scheduler")
