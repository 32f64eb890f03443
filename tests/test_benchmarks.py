from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.minimalloc import markdown_table, read_problem, run_problem, solvers
from benchmarks.report import kib, write_all
from benchmarks.runner import (
    ZOO,
    Progress,
    Suite,
    budgets_for,
    prepare,
    run_suite,
    run_task,
    tasks_for,
)
from frontends import load_model
from planner.device import load_profile
from planner.errors import PlannerError
from planner.plan import Plan, Segment
from planner.planners import base
from planner.planners.base import Request, registry

SVG = "{http://www.w3.org/2000/svg}"
MODEL = ZOO / "deeplab_lite_int8.tflite"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOY = SHARED / "minimalloc" / "examples" / "input.12.csv"


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    suite = Suite("test", (MODEL,), fractions=(0.75,), sram_budgets=False, time_limit=2.0,
                  planners=("tflm-greedy", "hill-climb"),
                  minimalloc=(TOY,) if TOY.is_file() else (),
                  minimalloc_planners=("tflm-greedy", "hill-climb"), minimalloc_time_limit=0.5)
    stream = io.StringIO()
    results = run_suite(suite, out, jobs=1, progress=lambda n: Progress(n, stream))
    write_all(results, suite, out, jobs=1)
    return out, results, stream.getvalue()


def test_csv_has_one_checked_row_per_budget_and_planner(tiny_run):
    out, _, _ = tiny_run
    rows = read_rows(out / "results.csv")
    assert [(r["budget"], r["planner"]) for r in rows] == [
        ("none", "tflm-greedy"), ("none", "hill-climb"),
        ("75%", "tflm-greedy"), ("75%", "hill-climb"),
    ]
    graph = load_model(MODEL)
    greedy = registry()["tflm-greedy"](Request(graph, load_profile("none"))).peak_bytes
    for r in rows:
        assert r["status"] == "heuristic"
        peak = int(r["peak_bytes"])
        assert peak >= int(r["load_bound"])
        assert r["fits"] == str(r["budget_bytes"] == "" or peak <= int(r["budget_bytes"]))
        assert float(r["ratio_tflm"]) == pytest.approx(peak / greedy, abs=1e-4)
        if r["planner"] == "tflm-greedy":
            assert peak == greedy
    assert int(rows[2]["budget_bytes"]) == int(greedy * 0.75) // 16 * 16


def test_svgs_match_the_csv(tiny_run):
    out, _, _ = tiny_run
    for r in read_rows(out / "results.csv"):
        root = ET.parse(out / r["svg"]).getroot()
        segs = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "seg"]
        assert len(segs) == int(r["buffers"])  # spill-free: one segment per buffer
        assert f"{int(r['peak_bytes']) / 1024:.4g} KiB" in ET.tostring(root, "unicode")
    pareto = ET.parse(out / "svg" / MODEL.name / "pareto.svg").getroot()
    points = [e for e in pareto.iter(f"{SVG}circle") if e.get("class") == "point"]
    assert len(points) == 2  # each spill-free plan once, not once per budget


def test_report_headline_matches_the_csv(tiny_run):
    out, _, _ = tiny_run
    rows = read_rows(out / "results.csv")
    text = (out / "report.md").read_text()
    greedy = next(int(r["peak_bytes"]) for r in rows if r["planner"] == "tflm-greedy")
    climb = next(int(r["peak_bytes"]) for r in rows if r["planner"] == "hill-climb")
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {MODEL.name} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == kib(greedy)
    assert cells[3].startswith(f"{kib(climb)} (hill-climb)")
    assert "## Problems" not in text
    if TOY.is_file():
        assert "## MiniMalloc problems" in text
        mm = read_rows(out / "minimalloc.csv")
        assert {r["planner"] for r in mm} == {"tflm-greedy", "hill-climb"}
        assert all(r["status"] == "ok" and r["peak"] == "12" for r in mm)


def test_progress_reports_every_task(tiny_run):
    _, results, log = tiny_run
    lines = log.strip().splitlines()
    assert lines[-1].split()[1] == f"{2 + 2 * bool(TOY.is_file())}/{2 + 2 * bool(TOY.is_file())}"


def test_an_invalid_plan_is_recorded_as_invalid_without_numbers(tmp_path):
    @base.register("broken-for-test")
    def broken(request: Request) -> Plan:  # every buffer at offset 0: overlaps
        from planner.analysis import buffers

        segs = tuple(Segment(b.tensor, b.first, b.last, 0, b.size)
                     for b in buffers(request.graph))
        return Plan(request.graph.name, "broken-for-test", request.graph.num_steps,
                    max(s.size for s in segs), segs)

    try:
        suite = Suite("t", (MODEL,), fractions=(), sram_budgets=False, svg=False)
        info = prepare(MODEL, suite)
        (task,) = tasks_for(info, ["broken-for-test"], suite, tmp_path, 1)
        (row,) = run_task(task)
        assert row["status"] == "invalid"
        assert "overlap" in row["detail"]
        assert row.get("peak_bytes") is None
    finally:
        base._REGISTRY.pop("broken-for-test", None)


def test_kib_keeps_small_arenas_readable():
    assert kib(32) == "0.0312"
    assert kib(16000) == "15.6"
    assert kib(None) == "-"


def test_budgets_are_fractions_of_greedy_and_profile_srams():
    suite = Suite("t", (), fractions=(0.5,), sram_budgets=True)
    budgets = dict(budgets_for(100_100, suite))
    assert budgets["none"] is None
    assert budgets["50%"] == 50_048  # rounded down to the 16-byte alignment
    assert budgets["sram-256KiB"] == 256 * 1024


def test_spilling_planner_below_the_working_set_bound_is_infeasible(tmp_path):
    suite = Suite("t", (MODEL,), fractions=(), sram_budgets=False, svg=False)
    info = prepare(MODEL, suite)
    info = replace(info, budgets=(("tiny", 16),))
    (task,) = tasks_for(info, ["not-spill-free"], suite, tmp_path, 1)
    (row,) = run_task(task)  # never reaches the (unknown) planner
    assert row["status"] == "infeasible"


@pytest.mark.skipif(not TOY.is_file(), reason="../shared data is absent")
def test_minimalloc_reader_and_checker(tmp_path, capsys):
    problem = read_problem(TOY)
    assert problem.capacity == 12 and len(problem.blocks) == 5
    assert problem.blocks[0].first == 0 and problem.blocks[0].last == 2  # [0, 3) closed
    assert problem.load_bound() == 12
    bad = run_problem(problem, "zeros", lambda b, _t: [0] * len(b), 1.0)
    assert bad.status == "invalid" and bad.peak is None
    good = [run_problem(problem, n, fn, 0.5) for n, fn in solvers(with_exact=False).items()]
    assert all(r.status == "ok" and r.fits and r.ratio == 1.0 for r in good)
    assert "| input | 5 | 12 | 12 |" in markdown_table(good)
    assert main(["minimalloc", str(TOY), "--planners", "tflm-greedy",
                 "--csv", str(tmp_path / "mm.csv")]) == 0
    assert "1.000*" in capsys.readouterr().out
    assert read_rows(tmp_path / "mm.csv")[0]["peak"] == "12"


def test_minimalloc_bad_files(tmp_path):
    bad = tmp_path / "x.64.csv"
    bad.write_text("id,lower,upper,size\n0,5,3,16\n")
    with pytest.raises(PlannerError, match="lower < upper"):
        read_problem(bad)
    bad.write_text("id,lower,upper,size\n0,a,3,16\n")
    with pytest.raises(PlannerError, match="integer"):
        read_problem(bad)
    with pytest.raises(PlannerError, match="cannot read"):
        read_problem(tmp_path / "missing.csv")


def test_cli_refuses_bad_options(tmp_path, capsys):
    assert main(["run", "--models", "no-such-model", "-o", str(tmp_path)]) == 2
    assert "no model matches" in capsys.readouterr().err
    assert main(["run", "--models", MODEL.name, "--planners", "nope", "--no-minimalloc",
                 "-o", str(tmp_path)]) == 2
    assert "unknown planner" in capsys.readouterr().err
    assert main(["minimalloc", "--planners", "nope", str(TOY)]) == 2


def test_parallel_jobs_give_the_same_rows(tiny_run, tmp_path):
    _, serial, _ = tiny_run
    suite = Suite("test", (MODEL,), fractions=(0.75,), sram_budgets=False, time_limit=2.0,
                  planners=("tflm-greedy", "hill-climb"), svg=False)
    parallel = run_suite(suite, tmp_path, jobs=2, progress=lambda n: Progress(n, io.StringIO()))

    def key(rows):
        return [(r["budget"], r["planner"], r["peak_bytes"], r["fits"]) for r in rows]

    assert key(parallel.rows) == key(serial.rows)


def test_unreadable_model_is_listed_not_fatal(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    suite = Suite("t", (junk,), fractions=(), sram_budgets=False, planners=("tflm-greedy",))
    results = run_suite(suite, tmp_path / "out", progress=lambda n: Progress(n, io.StringIO()))
    assert results.rows == [] and len(results.skipped) == 1
    write_all(results, suite, tmp_path / "out", jobs=1)
    assert "- not loaded: junk.tflite" in (tmp_path / "out" / "report.md").read_text()


def test_exact_offset_solver_is_wired_when_the_ilp_exposes_one(monkeypatch):
    import sys
    import types

    from planner.offsets import Block
    from planner.planners.tflm_greedy import greedy_offsets

    fake = types.ModuleType("planner.planners.ilp")
    fake.solve_offsets = lambda blocks, time_limit: greedy_offsets(blocks)
    monkeypatch.setitem(sys.modules, "planner.planners.ilp", fake)
    found = solvers()
    assert "ilp" in found
    blocks = [Block("a", 0, 1, 16), Block("b", 1, 2, 16), Block("c", 2, 3, 32)]
    assert found["ilp"](blocks, 1.0) == greedy_offsets(blocks)
    del fake.solve_offsets
    assert "ilp" not in solvers()
