from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.minimalloc import markdown_table, read_problem, run_problem, solvers
from benchmarks.report import README_END, README_START, change, kib, update_readme, write_all
from benchmarks.runner import (
    ZOO,
    Progress,
    Results,
    Suite,
    budgets_for,
    prepare,
    run_suite,
    run_task,
    safe,
    tasks_for,
)
from frontends import load_model
from planner.device import load_profile
from planner.errors import PlannerError
from planner.kernels import apply_kernels
from planner.plan import Plan, Segment
from planner.planners import base
from planner.planners.base import Request, registry

SVG = "{http://www.w3.org/2000/svg}"
MODEL = ZOO / "deeplab_lite_int8.tflite"
UNET = ZOO / "tiny_unet_int8.tflite"  # TRANSPOSE_CONV: on the row kernel with qspi-flash
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
    points = [e for e in pareto.iter() if e.get("class") == "point"]
    assert len(points) == 2  # each spill-free plan once, not once per budget


def test_report_headline_matches_the_csv(tiny_run):
    out, _, _ = tiny_run
    rows = read_rows(out / "results.csv")
    text = (out / "report.md").read_text()
    greedy = next(int(r["peak_bytes"]) for r in rows if r["planner"] == "tflm-greedy")
    climb = next(int(r["peak_bytes"]) for r in rows if r["planner"] == "hill-climb")
    cells = table(text, "| model | ops |")[MODEL.name]
    assert cells[2] == kib(greedy)
    assert cells[3].startswith(f"{kib(climb)} (hill-climb)")
    # no ILP in this run: no ILP head, arena total or comparisons
    assert cells[5] == "-" and cells[6] == "-" and cells[9:] == ["-", "-"]
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
    assert all("task/s" in line and "ETA" in line for line in lines)  # rate and ETA


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


# ------------------------------------------------------------------ kernels, headline


def table(text: str, header: str) -> dict[str, list[str]]:
    """The Markdown table whose header line starts with `header`: first cell -> cells."""
    lines = text.splitlines()
    start = next(k for k, ln in enumerate(lines) if ln.startswith(header))
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0] if header.startswith("| model | ops") else f"{cells[0]} {cells[1]}"] = cells
    return rows


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    """tiny_unet_int8 (TRANSPOSE_CONV scratch) and deeplab_lite_int8 (none), in 2 processes."""
    out = tmp_path_factory.mktemp("unet")
    suite = Suite("unet", (UNET, MODEL), fractions=(0.9,), sram_budgets=False, time_limit=1.0,
                  planners=("tflm-greedy", "tinyseg", "ilp"), svg=False)
    results = run_suite(suite, out, jobs=2, progress=lambda n: Progress(n, io.StringIO()))
    write_all(results, suite, out, jobs=2)
    return out, results, suite


def test_models_are_planned_on_the_profiles_kernels(unet_run):
    """One row set per model; with the suite's profile (qspi-flash) its TRANSPOSE_CONVs run
    on the row kernel, so every planner sees the small scratch."""
    out, _, _ = unet_run
    rows = read_rows(out / "results.csv")
    assert list(dict.fromkeys(r["model"] for r in rows)) == [UNET.name, MODEL.name]
    assert "scratch" not in rows[0]
    peaks = {(r["model"], r["planner"]): int(r["peak_bytes"]) for r in rows
             if r["budget"] == "none"}
    # Stock TFLM needs 307,200 B; with the row kernel greedy gets 230,400 B, TinySeg 153,600 B.
    assert peaks[(UNET.name, "tflm-greedy")] == 230_400
    assert peaks[(UNET.name, "tinyseg")] == 153_600
    info = prepare(UNET, Suite("t", ()))
    assert info.graph == apply_kernels(load_model(UNET), load_profile("qspi-flash"))
    assert next(r for r in rows if r["model"] == UNET.name)["ws_bound"] == str(info.ws_bound)
    assert info.ws_bound == 153_600
    stock = prepare(UNET, Suite("t", (), profile="none"))
    assert stock.tflm_peak == 307_200 and stock.graph == load_model(UNET)


def test_safe_file_names():
    assert safe("75%") == "75pct" and safe("a b.tflite") == "a_b.tflite"
    assert safe("x [y z]") == "x_y_z"


def expected_headline(rows: list[dict], model: str) -> dict[str, int | None]:
    def low(planners):
        peaks = [int(r["peak_bytes"]) for r in rows
                 if r["model"] == model and r["planner"] in planners and r["peak_bytes"]]
        return min(peaks, default=None)

    return {"tflm": low({"tflm-greedy"}), "tiny": low({"tinyseg"}), "ilp": low({"ilp"})}


def test_headline_columns_match_the_csv(unet_run):
    out, _, _ = unet_run
    rows = read_rows(out / "results.csv")
    head = table((out / "report.md").read_text(), "| model | ops |")
    assert list(head) == list(dict.fromkeys(r["model"] for r in rows))
    for model, cells in head.items():
        want = expected_headline(rows, model)
        assert cells[2] == kib(want["tflm"])
        assert cells[4] == kib(want["tiny"])
        assert cells[5].startswith(f"{kib(want['ilp'])} (")
        ilp_arena = [int(r["arena_bytes"]) for r in rows if r["model"] == model
                     and r["planner"] == "ilp" and r["arena_bytes"]
                     and int(r["peak_bytes"]) == want["ilp"]]
        # the arena total of that lowest-head plan (head + predicted tail), for TFLite
        assert cells[6] in ({kib(a) for a in ilp_arena} if ilp_arena else {"-"})
        assert cells[9] == change(want["ilp"], want["tflm"])
        assert cells[10] == change(want["ilp"], want["tiny"])
        if want["ilp"] is not None and want["tiny"] is not None and want["ilp"] < want["tiny"]:
            assert cells[10] == f"-{1 - want['ilp'] / want['tiny']:.1%}"
    unet = head[UNET.name]
    assert unet[2] == kib(230_400) and unet[4] == kib(153_600)


def test_change_formats_signed_percentages():
    assert change(153_600, 192_000) == "-20.0%"
    assert change(192_000, 192_000) == "="
    assert change(200, 100) == "+100.0%"
    assert change(None, 100) == "-" and change(100, None) == "-"


def test_transfer_table_matches_the_csv(unet_run):
    out, _, _ = unet_run
    rows = read_rows(out / "results.csv")
    text = (out / "report.md").read_text()
    assert "### Transfer time under budget" in text
    by = {(r["model"], r["budget"], r["planner"]): r for r in rows}
    expected = []
    for (model, budget, planner), tiny in by.items():
        ilp = by.get((model, budget, "ilp"))
        if planner != "tinyseg" or not budget.endswith("%") or ilp is None:
            continue
        if tiny["fits"] == ilp["fits"] == "True" and \
                (float(tiny["est_transfer_s"]) or float(ilp["est_transfer_s"])):
            expected.append((model, budget, float(tiny["est_transfer_s"]),
                             float(ilp["est_transfer_s"])))
    if not expected:
        assert "No budget where both TinySeg and the ILP fit moves data." in text
        return
    got = table(text, "| model | budget KiB |")
    assert len(got) == len(expected)
    for model, budget, tiny_s, ilp_s in expected:
        cells = next(c for c in got.values() if c[0] == model and c[1].startswith(budget))
        assert float(cells[3]) == pytest.approx(tiny_s, rel=1e-2)
        assert float(cells[5].split()[0]) == pytest.approx(ilp_s, rel=1e-2)
        if ilp_s and tiny_s != ilp_s:
            assert cells[6] == f"{tiny_s / ilp_s:.2f}x"


README = """# Project

Intro text.

<!-- benchmark:headline:start -->
old table
<!-- benchmark:headline:end -->

## After
kept
"""


def test_update_readme_replaces_only_the_marked_block(unet_run, tmp_path):
    _, results, suite = unet_run
    readme = tmp_path / "README.md"
    readme.write_text(README)
    update_readme(readme, results, suite, 2, "python -m benchmarks run --suite unet")
    text = readme.read_text()
    before, rest = text.split(README_START + "\n")
    block, after = rest.split(README_END + "\n")
    assert before == README.split(README_START)[0]
    assert after == README.split(README_END + "\n")[1]
    assert "old table" not in text
    assert "Generated by `python -m benchmarks run --suite unet` (unet suite," in block
    assert f"| {UNET.name} |" in block
    assert "### Transfer time under budget" in block
    update_readme(readme, results, suite, 2, "again")  # the block can be replaced again
    assert readme.read_text().count(README_START) == 1 and "Generated by `again`" in \
        readme.read_text()


def test_update_readme_from_the_cli(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    argv = ["run", "--models", MODEL.name, "--planners", "tflm-greedy", "--no-minimalloc",
            "--no-svg", "-o", str(tmp_path / "out"), "--update-readme", str(readme)]
    assert main(argv) == 0
    text = readme.read_text()
    assert f"Generated by `python -m benchmarks {' '.join(argv)}` (quick suite" in text
    assert f"| {MODEL.name} | 12 | 20.0 |" in text and text.endswith("## After\nkept\n")


@pytest.mark.parametrize("content", [
    "# no markers\n",
    f"{README_END}\n{README_START}\n",  # wrong order
    f"{README_START}\n{README_END}\n{README_START}\n{README_END}\n",  # twice
])
def test_update_readme_refuses_without_markers_before_planning(tmp_path, capsys, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    out = tmp_path / "out"
    assert main(["run", "--models", MODEL.name, "-o", str(out), "--update-readme",
                 str(readme)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "benchmark:headline:start" in err
    assert not out.exists()  # refused before any planning
    assert readme.read_text() == content
    assert main(["run", "-o", str(out), "--update-readme", str(tmp_path / "none.md")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_empty_results_leave_a_readable_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    update_readme(readme, Results(), Suite("t", ()), 1, "cmd")
    assert "No budget where both TinySeg and the ILP fit moves data." in readme.read_text()


def test_streamed_ilp_rows_and_the_row_streaming_table_match_the_csv(unet_run):
    """The ILP also plans the row-streamed graph (rows ilp-streamed); every row carries the
    streamed bound of the groups choose_groups picks, and the headline's row-streaming
    table shows it and the lowest streamed head."""
    from benchmarks.runner import STREAMED_ILP
    from planner.streaming import streamed_bound

    out, _, _ = unet_run
    rows = read_rows(out / "results.csv")
    info = prepare(UNET, Suite("t", ()))
    want = streamed_bound(info.graph, load_profile("qspi-flash")).bytes
    assert info.streamed_bound == want < info.ws_bound
    unet = [r for r in rows if r["model"] == UNET.name]
    assert {r["streamed_bound"] for r in unet} == {str(want)}
    streamed = [r for r in unet if r["planner"] == STREAMED_ILP and r["peak_bytes"]]
    assert streamed and all(int(r["num_stream_groups"]) >= 1 for r in streamed)
    assert all(int(r["peak_bytes"]) >= want for r in streamed)
    got = table((out / "report.md").read_text(), "| model | working-set bound KiB |")
    cells = next(c for c in got.values() if c[0] == UNET.name)
    assert cells[1] == kib(info.ws_bound) and cells[2] == kib(want)
    low = min(int(r["peak_bytes"]) for r in streamed)
    assert cells[4].startswith(f"{kib(low)} (")
    assert cells[7] == ("=" if low == want else f"{low / want - 1:+.1%}")


def test_pareto_sweeps_with_streaming_off_and_on(tmp_path, capsys):
    from benchmarks.runner import STREAMED_ILP

    code = main(["pareto", "--models", "tiny_unet_int8", "--points", "2", "--time-limit", "3",
                 "-o", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(tmp_path / "pareto_streaming.csv")
    series = {r["series"] for r in rows}
    assert series == {"ilp", STREAMED_ILP}
    off = min(int(r["peak_bytes"]) for r in rows if r["series"] == "ilp")
    on = min(int(r["peak_bytes"]) for r in rows if r["series"] == STREAMED_ILP)
    assert on < off  # streaming reaches below every unstreamed plan
    for r in rows:
        assert float(r["est_s"]) == pytest.approx(float(r["transfer_s"]) + float(r["overhead_s"]),
                                                  abs=2e-6)
        assert (float(r["overhead_s"]) > 0) == (r["series"] == STREAMED_ILP)
    svg = ET.parse(tmp_path / "tiny_unet_int8.tflite.pareto_streaming.svg").getroot()
    points = [p for p in svg.iter(f"{SVG}path") if p.get("class") == "point"]
    assert {p.get("data-series") for p in points} == series
    strokes = {p.get("data-series"): p.get("stroke") for p in points}
    assert strokes["ilp"] != strokes[STREAMED_ILP]  # the two series stay apart
    assert main(["pareto", "--points", "1"]) == 2
