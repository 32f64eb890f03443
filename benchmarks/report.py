"""What a benchmark run leaves behind: results.csv, minimalloc.csv, report.md, Pareto SVGs.

Everything here is computed from the rows the runner recorded (each from a plan
that passed the checker); nothing is typed in by hand.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
from collections.abc import Sequence
from pathlib import Path

from planner.errors import PlannerError

from .runner import COLUMNS, STREAMED_ILP, Results, Suite, safe

HEURISTICS = ("greedy-by-size", "greedy-by-breadth", "hill-climb")
README_START = "<!-- benchmark:headline:start -->"
README_END = "<!-- benchmark:headline:end -->"


def columns_of(rows: Sequence[dict]) -> list[str]:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    return list(COLUMNS) + extra


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] | None = None) -> Path:
    cols = list(columns) if columns is not None else columns_of(rows)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    return path


def kib(n: int | None) -> str:
    """KiB with one decimal; small arenas (hello_world: 32 B) keep three significant digits."""
    if n is None:
        return "-"
    return f"{n / 1024:,.1f}" if n >= 10 * 1024 else f"{n / 1024:.3g}"


def _ok(r: dict) -> bool:
    return r.get("peak_bytes") is not None and r["status"] not in ("invalid", "crash", "error")


def best_peak(rows: Sequence[dict], model: str, planners: Sequence[str]) -> dict | None:
    """The lowest valid peak any of `planners` reached for `model`, over every budget."""
    mine = [r for r in rows if r["model"] == model and r["planner"] in planners and _ok(r)]
    return min(mine, key=lambda r: (r["peak_bytes"], r.get("est_transfer_s") or 0.0),
               default=None)


def change(new: int | None, old: int | None) -> str:
    """Peak change from `old` to `new` as a signed percentage; "=" when equal."""
    if new is None or not old:
        return "-"
    return "=" if new == old else f"{new / old - 1:+.1%}"


def ilp_status(rows: Sequence[dict], model: str, best: dict, planner: str = "ilp") -> str:
    """The status that speaks for ILP's lowest peak.

    Without a budget the ILP minimises the peak, so that run's status says whether
    the peak is proven; under a budget it minimises transfer time, and its status
    says nothing about the peak, hence the budget label.
    """
    unbudgeted = next((r for r in rows if r["model"] == model and r["planner"] == planner
                       and r["budget_bytes"] is None and _ok(r)), None)
    if unbudgeted is not None and unbudgeted["peak_bytes"] == best["peak_bytes"]:
        return unbudgeted["status"]
    return f"{best['status']} at {best['budget']}"


def headline(rows: Sequence[dict]) -> list[str]:
    """Per model: the lowest peak each approach reached, the bounds, and ILP's gains."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [
        "| model | ops | tflm-greedy head KiB | best offset heuristic head KiB | TinySeg head "
        "KiB | ILP head KiB (status) | ILP arena total KiB | load bound KiB | working-set "
        "bound KiB | ILP vs tflm-greedy | ILP vs TinySeg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in models:
        first = next(r for r in rows if r["model"] == m)
        tflm = best_peak(rows, m, ["tflm-greedy"])
        heur = best_peak(rows, m, HEURISTICS)
        tiny = best_peak(rows, m, ["tinyseg"])
        ilp = best_peak(rows, m, ["ilp"])
        heur_cell = f"{kib(heur['peak_bytes'])} ({heur['planner']})" if heur else "-"
        ilp_cell = f"{kib(ilp['peak_bytes'])} ({ilp_status(rows, m, ilp)})" if ilp else "-"
        ilp_peak = ilp and ilp["peak_bytes"]
        lines.append(
            f"| {m} | {first['ops']} | {kib(tflm and tflm['peak_bytes'])} | {heur_cell} | "
            f"{kib(tiny and tiny['peak_bytes'])} | {ilp_cell} | "
            f"{kib(ilp.get('arena_bytes') if ilp else None)} | {kib(first['load_bound'])} | "
            f"{kib(first['ws_bound'])} | {change(ilp_peak, tflm and tflm['peak_bytes'])} | "
            f"{change(ilp_peak, tiny and tiny['peak_bytes'])} |"
        )
    return lines


def streaming_table(rows: Sequence[dict]) -> list[str]:
    """Per model with streamed groups: the bounds with and without row streaming, the
    ILP's lowest head on each graph, and how far the streamed plan is from its bound."""
    models = [m for m in dict.fromkeys(r["model"] for r in rows)
              if any(r["model"] == m and r.get("streamed_bound") is not None for r in rows)]
    if not models:
        return ["No model has a run of row-capable ops to stream (or the suite ran without "
                "row streaming)."]
    lines = [
        "| model | working-set bound KiB | streamed bound KiB | ILP head KiB | streamed ILP "
        "head KiB (status) | groups | streamed ILP vs ILP | streamed ILP over its bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in models:
        first = next(r for r in rows if r["model"] == m)
        ilp = best_peak(rows, m, ["ilp"])
        st = best_peak(rows, m, [STREAMED_ILP])
        bound = first["streamed_bound"]
        if st is not None:
            cell = f"{kib(st['peak_bytes'])} ({ilp_status(rows, m, st, STREAMED_ILP)})"
            over = "=" if st["peak_bytes"] == bound else f"{st['peak_bytes'] / bound - 1:+.1%}"
            groups = str(st.get("num_stream_groups", "-"))
        else:
            cell, over, groups = "-", "-", "-"
        lines.append(
            f"| {m} | {kib(first['ws_bound'])} | {kib(bound)} | "
            f"{kib(ilp and ilp['peak_bytes'])} | {cell} | {groups} | "
            f"{change(st and st['peak_bytes'], ilp and ilp['peak_bytes'])} | {over} |")
    return lines


def seconds(s: float) -> str:
    return "0" if s == 0 else f"{s:.3g}"


def transfer_ratio(tiny_s: float, ilp_s: float) -> str:
    """How many times longer TinySeg's transfers take than the ILP's."""
    if tiny_s == ilp_s:
        return "="
    if ilp_s == 0:
        return "∞ (ILP moves nothing)"
    return f"{tiny_s / ilp_s:.2f}x"


def transfer_table(rows: Sequence[dict]) -> list[str]:
    """Per model and fraction budget both fit: estimated transfer seconds of TinySeg and ILP.

    Under a budget the ILP minimises transfer time; TinySeg only tries to fit. Rows
    where neither moves data say nothing and are left out.
    """
    by = {(r["model"], r["budget"], r["planner"]): r for r in rows
          if r["planner"] in ("tinyseg", "ilp") and str(r["budget"]).endswith("%")}
    lines = [
        "| model | budget KiB | TinySeg KiB | TinySeg s | ILP KiB | ILP s (status) | "
        "TinySeg s / ILP s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    found = False
    for (m, b, p), tiny in by.items():
        ilp = by.get((m, b, "ilp"))
        if p != "tinyseg" or ilp is None or not (_ok(tiny) and _ok(ilp)):
            continue
        if not (tiny["fits"] and ilp["fits"]):
            continue
        tiny_s = tiny.get("est_transfer_s") or 0.0
        ilp_s = ilp.get("est_transfer_s") or 0.0
        if tiny_s == 0 and ilp_s == 0:
            continue
        found = True
        lines.append(
            f"| {m} | {b} ({kib(tiny['budget_bytes'])}) | {kib(tiny['peak_bytes'])} | "
            f"{seconds(tiny_s)} | {kib(ilp['peak_bytes'])} | {seconds(ilp_s)} "
            f"({ilp['status']}) | {transfer_ratio(tiny_s, ilp_s)} |"
        )
    return lines if found else ["No budget where both TinySeg and the ILP fit moves data."]


def ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:,.1f}"


def best_latency(r: dict) -> float | None:
    """The plan's latency with async windows where the post-pass found room, else as planned."""
    w = r.get("latency_windows_s")
    return w if w is not None else r.get("latency_s")


def latency_table(rows: Sequence[dict]) -> list[str]:
    """Per model, fraction budget and planner that fits it by moving data: estimated
    end-to-end milliseconds, compute alone, every transfer blocking, as planned, and after
    the async post-pass widened the plan's own transfer windows."""
    lines = [
        "| model | budget KiB | planner | head KiB | compute ms | blocking ms | as planned ms "
        "| with windows ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    found = False
    for r in rows:
        if not (str(r["budget"]).endswith("%") and _ok(r) and r["fits"]
                and r.get("latency_s") is not None and (r.get("spilled_bytes") or 0) > 0):
            continue
        # The streamed ILP's ties on transfer time (same head, same transfers) may differ in
        # overlap from run to run; its rows stay in results.csv, out of the headline.
        if r["planner"] == STREAMED_ILP:
            continue
        found = True
        lines.append(
            f"| {r['model']} | {r['budget']} ({kib(r['budget_bytes'])}) | {r['planner']} | "
            f"{kib(r['peak_bytes'])} | {ms(r.get('compute_s'))} | "
            f"{ms(r.get('latency_blocking_s'))} | {ms(r.get('latency_s'))} | "
            f"{ms(r.get('latency_windows_s'))} |")
    return lines if found else ["No fraction budget is met by a plan that moves data."]


def headline_tables(rows: Sequence[dict], profile: str) -> list[str]:
    """The two headline tables with their captions: shared by report.md and the README."""
    return [
        "Lowest peak (arena head: the planned buffers) each approach reached on each model "
        "(over all budgets; spilling planners trade transfer time for it). ILP arena total: "
        "that plan's head plus TFLM's tail predicted for the model it emits (TFLite input, "
        "64-bit host; what an application passes to MicroInterpreter). The last two "
        "columns: ILP's head against tflm-greedy's and TinySeg's (\"=\": equal). int8 "
        "TRANSPOSE_CONV runs on the project's row kernel (one output row of int32 scratch) "
        "wherever the profile allows custom kernels.",
        "",
        *headline(rows),
        "",
        "### Transfer time under budget",
        "",
        "Fraction budgets (of the tflm-greedy peak) that TinySeg and the ILP both meet: "
        f"estimated seconds spent moving data on `{profile}`. Under a budget the ILP "
        "minimises transfer time; TinySeg only looks for a fit.",
        "",
        *transfer_table(rows),
        "",
        "### End-to-end latency under budget",
        "",
        f"Estimated milliseconds of one inference on `{profile}` (planner/latency.py): op "
        "times from the profile's clock and cycle table, transfer times from its storages, "
        "async transfers overlapping compute on storages with a DMA channel. Estimates from "
        "the profile, not measurements. Blocking: every transfer stalls the processor; as "
        "planned: the planner's own windows; with windows: after the async post-pass "
        "(planner/async_windows.py) widened the plan's transfers into free arena space, "
        "the peak unchanged.",
        "",
        *latency_table(rows),
        "",
        "### Row streaming",
        "",
        "Streamed bound: the working-set bound of the graph whose streamed groups (the "
        "partition `choose_groups` picks) run as one op each, holding rings of rows instead "
        "of the tensors between their members; streamed ILP: the exact planner on that "
        f"graph (`solve --row-streaming`), rows `{STREAMED_ILP}`, lowest head over all "
        "budgets; its status is the solver's for that graph (the chosen groups). Last "
        "column: that head against the streamed bound (\"=\": optimal over every partition "
        "choose_groups searches; above it, the gap no search closed, e.g. a graph input "
        "that is whole in the arena at step 0 in any plan).",
        "",
        *streaming_table(rows),
    ]


def model_table(rows: Sequence[dict], model: str) -> list[str]:
    """Planners as rows, budgets as columns: peak KiB, fit mark, est. transfer seconds."""
    mine = [r for r in rows if r["model"] == model]
    budgets = list(dict.fromkeys(r["budget"] for r in mine))
    planners = list(dict.fromkeys(r["planner"] for r in mine))
    by = {(r["planner"], r["budget"]): r for r in mine}
    sizes = {r["budget"]: r["budget_bytes"] for r in mine}
    head = [f"{b} ({kib(sizes[b])} KiB)" if sizes[b] is not None else b for b in budgets]
    lines = ["| planner | " + " | ".join(head) + " |",
             "| --- |" + " ---: |" * len(budgets)]
    for p in planners:
        cells = []
        for b in budgets:
            r = by.get((p, b))
            if r is None:
                cells.append("")
            elif not _ok(r):
                cells.append(r["status"])
            else:
                mark = "" if r["fits"] else " (over)"
                est = r.get("est_transfer_s") or 0.0
                cells.append(f"{kib(r['peak_bytes'])}{mark}" + (f", {est:.3g} s" if est else ""))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def problems(results: Results) -> list[str]:
    bad = [r for r in results.rows if r["status"] in ("invalid", "crash", "error")]
    bad_mm = [r for r in results.minimalloc if r["status"] in ("invalid", "error")]
    lines = [f"- {r['model']} / {r['planner']} / {r['budget']}: {r['status']}: {r['detail']}"
             for r in bad]
    lines += [f"- MiniMalloc {r['problem']} / {r['planner']}: {r['status']}: {r['detail']}"
              for r in bad_mm]
    lines += [f"- not loaded: {s}" for s in results.skipped]
    return lines


def write_pareto(results: Results, outdir: Path) -> dict[str, Path]:
    """One plot per model: each valid plan's peak against its estimated transfer time."""
    from backends.reports.svg import ParetoPoint, render_pareto_svg

    written = {}
    models = list(dict.fromkeys(r["model"] for r in results.rows))
    for m in models:
        seen = set()
        points = []
        for r in results.rows:
            if r["model"] != m or not _ok(r):
                continue
            key = (r["planner"], r["peak_bytes"], r.get("est_transfer_s") or 0.0)
            if key in seen:
                continue  # spill-free plans repeat once per budget
            seen.add(key)
            points.append(ParetoPoint(r["planner"], r["peak_bytes"],
                                      r.get("est_transfer_s") or 0.0, r["budget"]))
        folder = outdir / "svg" / safe(m)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "pareto.svg"
        budgets = {r["budget"]: r["budget_bytes"] for r in results.rows
                   if r["model"] == m and r["budget_bytes"] is not None}
        path.write_text(render_pareto_svg(points, f"{m}: peak vs estimated transfer time",
                                          budgets))
        written[m] = path
        lat = _latency_points(results.rows, m)
        if lat:
            (folder / "pareto_latency.svg").write_text(render_pareto_svg(
                lat, f"{m}: peak vs estimated end-to-end latency", budgets,
                y_label="estimated end-to-end latency (s)"))
    return written


def _latency_points(rows: Sequence[dict], model: str) -> list:
    """Each valid plan's peak against its end-to-end latency (with the post-pass windows)."""
    from backends.reports.svg import ParetoPoint

    seen, points = set(), []
    for r in rows:
        if r["model"] != model or not _ok(r) or best_latency(r) is None:
            continue
        key = (r["planner"], r["peak_bytes"], best_latency(r))
        if key not in seen:
            seen.add(key)
            points.append(ParetoPoint(r["planner"], r["peak_bytes"], best_latency(r),
                                      r["budget"]))
    return points


def markdown(results: Results, suite: Suite, jobs: int, pareto: dict[str, Path],
             outdir: Path) -> str:
    rows = results.rows
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Benchmark report: {suite.name} suite",
        "",
        f"{now}; {len(set(r['model'] for r in rows))} models, "
        f"{len(set(r['planner'] for r in rows))} planners, {len(rows)} rows; "
        f"{results.seconds:.0f} s wall on {os.cpu_count()} cores with {jobs} job(s); "
        f"Python {platform.python_version()}. Spilling planners plan for profile "
        f"`{suite.profile}` with a {suite.time_limit:g} s time limit. Every plan passed "
        "the independent checker before it was recorded.",
        "",
        "## Headline",
        "",
        *headline_tables(rows, suite.profile),
        "",
    ]
    if getattr(results, "interrupted", False):
        lines += ["## Interrupted", "",
                  f"Stopped by Ctrl-C: these tables hold the {len(rows)} rows of the tasks "
                  f"that finished (of {getattr(results, 'tasks', 0)} tasks queued).", ""]
    bad = problems(results)
    if bad:
        lines += ["## Problems", "", *bad, ""]
    lines += [
        "## Per model",
        "",
        "Cells: peak KiB, `(over)` when it misses the budget, estimated transfer seconds "
        f"on `{suite.profile}` when the plan moves data. Budgets are fractions of the "
        "tflm-greedy peak and bundled profiles' SRAM sizes.",
        "",
    ]
    for m in dict.fromkeys(r["model"] for r in rows):
        lines += [f"### {m}", ""]
        if m in pareto:
            lat = pareto[m].with_name("pareto_latency.svg")
            lat_link = (f", against end-to-end latency: [{lat.relative_to(outdir)}]"
                        f"({lat.relative_to(outdir)})" if lat.is_file() else "")
            lines += [f"Pareto plot: [{pareto[m].relative_to(outdir)}]"
                      f"({pareto[m].relative_to(outdir)}){lat_link}; layouts in "
                      f"`svg/{safe(m)}/`.", ""]
        lines += [*model_table(rows, m), ""]
    if results.minimalloc:
        from .minimalloc import Result, markdown_table

        mm = [Result(**r) for r in results.minimalloc]
        lines += ["## MiniMalloc problems", "",
                  f"Offset planners only, {suite.minimalloc_time_limit:g} s limit for the "
                  "searching ones; every answer checked for overlap independently.", "",
                  markdown_table(mm)]
    return "\n".join(lines).rstrip() + "\n"


def write_all(results: Results, suite: Suite, outdir: Path, jobs: int) -> list[Path]:
    written = [write_csv(results.rows, outdir / "results.csv")]
    if results.minimalloc:
        from .minimalloc import Result

        cols = list(Result.__dataclass_fields__)
        written.append(write_csv(results.minimalloc, outdir / "minimalloc.csv", cols))
    pareto = write_pareto(results, outdir) if suite.svg else {}
    written += list(pareto.values())
    written += [p.with_name("pareto_latency.svg") for p in pareto.values()
                if p.with_name("pareto_latency.svg").is_file()]
    report = outdir / "report.md"
    report.write_text(markdown(results, suite, jobs, pareto, outdir))
    written.append(report)
    return written


def readme_block(text: str, path: Path) -> tuple[int, int]:
    """Line indices of the start and end markers; one clear error when they are not there."""
    lines = text.splitlines()
    starts = [k for k, ln in enumerate(lines) if ln.strip() == README_START]
    ends = [k for k, ln in enumerate(lines) if ln.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise PlannerError(f"{path} needs exactly one line {README_START} followed by one "
                           f"line {README_END}")
    return starts[0], ends[0]


def read_readme(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlannerError(f"cannot read {path}: {exc.strerror or exc}") from None
    readme_block(text, path)
    return text


def update_readme(path: Path, results: Results, suite: Suite, jobs: int,
                  command: str) -> Path:
    """Replace the marked block of `path` with the headline tables and how they were made."""
    text = read_readme(path)
    start, end = readme_block(text, path)
    lines = text.splitlines()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [
        "",
        f"Generated by `{command}` ({suite.name} suite, {now}, {results.seconds:.0f} s wall "
        f"on {os.cpu_count()} cores with {jobs} job(s)).",
        "",
        *headline_tables(results.rows, suite.profile),
        "",
    ]
    out = lines[:start + 1] + block + lines[end:]
    path.write_text("\n".join(out) + ("\n" if text.endswith("\n") else ""))
    return path
