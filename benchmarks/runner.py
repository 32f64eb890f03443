"""The benchmark runner: every model x budget x planner, each plan checked, rows out.

A suite names the models, budgets and time limits. For each model the parent
process loads the graph once and computes the reference points (tflm-greedy
peak, load and working-set bounds); budgets are fractions of the tflm-greedy peak
and the SRAM sizes of the bundled device profiles. Tasks then go to a process
pool (or run inline with one job). Spill-free planners ignore the budget, so
they run once per model and their plan is scored against every budget.

Every plan passes planner.checker.assert_valid before its row is recorded; a
plan that fails is recorded as "invalid" with the checker's message, never with
its numbers.

Every model is planned as the suite's profile runs it: where the profile allows the
project's custom kernels, int8 TRANSPOSE_CONV ops run on the row kernel (scratch of
one output row, planner/kernels.py), and every planner sees that same graph.

Row streaming (planner/streaming.py): where the profile's kernels stream rows and the
model has runs of row-capable ops, the parent also builds the planned graph of the
groups `choose_groups` picks (what `solve --row-streaming` plans) and its streamed
working-set bound (column `streamed_bound`); the ILP then plans that graph too, once
per budget, in rows labelled STREAMED_ILP ("ilp-streamed"), whose `stream_overhead_s`
is the ring bookkeeping the profile charges per computed row.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from planner.analysis import buffers, load_bound, stream_rows, working_set_bound
from planner.checker import PlanError, assert_valid
from planner.commands.solve import plan_summary
from planner.device import DeviceProfile, bundled_profiles, load_profile
from planner.errors import InfeasibleBudget, PlannerError
from planner.ir import ALIGNMENT, Graph
from planner.kernels import apply_kernels
from planner.plan import Plan
from planner.planners.base import Request, registry
from planner.planners.tflm_greedy import greedy_offsets
from planner.stopping import sigint_kept, was_interrupted

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "models"  # package data: in a checkout and in an installed wheel


def shared_dir(data: str | Path | None = None) -> Path | None:
    """The shared data folder (models/, minimalloc/): --data DIR, else ../shared next to a
    checkout; None when neither exists (an installed wheel without --data)."""
    if data is not None:
        path = Path(data)
        if not path.is_dir():
            raise PlannerError(f"--data {data}: no such folder")
        if not (path / "models").is_dir() and not (path / "minimalloc").is_dir():
            raise PlannerError(f"--data {data}: has neither models/ nor minimalloc/ "
                               "(expected the shared data folder)")
        return path
    if (ROOT / "pyproject.toml").is_file() and (ROOT.parent / "shared").is_dir():
        return ROOT.parent / "shared"
    return None


SHARED_MODELS = (shared_dir() or ROOT.parent / "shared") / "models"

# Planners whose plan does not depend on the budget: run once per model.
SPILL_FREE = frozenset({"linear", "tflm-greedy", "greedy-by-size", "greedy-by-breadth",
                        "hill-climb"})
FRACTIONS = (0.90, 0.75, 0.60, 0.50)
# The rows of the exact planner on the row-streamed (planned) graph.
STREAMED_ILP = "ilp-streamed"

COLUMNS = (
    "model", "source", "ops", "buffers", "budget", "budget_bytes", "planner", "status",
    "peak_bytes", "fits", "ratio_tflm", "load_bound", "ws_bound", "ratio_load_bound",
    "ratio_ws_bound", "streamed_bound", "ratio_streamed_bound", "num_stream_groups",
    "spilled_bytes", "fetched_bytes", "num_spills", "num_fusions",
    "est_transfer_s",
    # Estimated end-to-end latency (planner/latency.py): as planned, every transfer
    # blocking, after the async post-pass (planner/async_windows.py); and compute alone.
    "latency_s", "latency_blocking_s", "latency_windows_s", "compute_s",
    "solve_seconds", "bound_bytes", "gap", "svg", "detail",
)


@dataclass(frozen=True)
class Suite:
    name: str
    models: tuple[Path, ...]
    fractions: tuple[float, ...] = FRACTIONS
    sram_budgets: bool = True  # add each bundled profile's SRAM size as a budget
    time_limit: float = 30.0  # wall-clock cap per solve
    # Work limit per exact solve (CP-SAT deterministic seconds): the tables do not move
    # with machine load as long as the wall-clock cap is not what ends a search.
    work_limit: float | None = None
    planners: tuple[str, ...] | None = None  # None: everything registered
    profile: str = "qspi-flash"  # where the spilling planners may put data
    minimalloc: tuple[Path, ...] = ()
    minimalloc_planners: tuple[str, ...] | None = None
    minimalloc_time_limit: float = 10.0
    svg: bool = True
    row_streaming: bool = True  # also plan the row-streamed graph with the ILP (STREAMED_ILP)


def zoo_models(shared: Path | None = SHARED_MODELS) -> list[Path]:
    onnx = sorted(ZOO.glob("*.onnx"))
    tflite = sorted(ZOO.glob("*.tflite"))
    found = sorted(shared.glob("**/*.tflite")) if shared is not None and shared.is_dir() else []
    return onnx + tflite + found


# The project's own zoo plus three MLPerf Tiny / TFLM references; the big segmentation
# models (hundreds of ops, megabyte tensors) are left to the full suite.
QUICK_SHARED = ("vww_96_int8.tflite", "kws_ref_model.tflite", "person_detect.tflite")


def quick_suite(data: Path | None = None) -> Suite:
    """About two minutes on two cores: small models, short limits, no exact MiniMalloc."""
    from .minimalloc import problem_files

    shared = data if data is not None else shared_dir()
    models = tuple(p for p in zoo_models(shared / "models" if shared else None)
                   if p.parent == ZOO or p.name in QUICK_SHARED)
    return Suite("quick", models, sram_budgets=False, time_limit=20.0, work_limit=2.5,
                 minimalloc=tuple(problem_files(shared / "minimalloc")) if shared else (),
                 minimalloc_planners=("tflm-greedy", "greedy-by-size", "greedy-by-breadth",
                                      "hill-climb"),
                 minimalloc_time_limit=2.0)


def full_suite(data: Path | None = None) -> Suite:
    from .minimalloc import problem_files

    shared = data if data is not None else shared_dir()
    return Suite("full", tuple(zoo_models(shared / "models" if shared else None)),
                 time_limit=60.0, work_limit=15.0,
                 minimalloc=tuple(problem_files(shared / "minimalloc")) if shared else (),
                 minimalloc_time_limit=30.0)


def suite_named(name: str, data: Path | None = None) -> Suite:
    if name == "quick":
        return quick_suite(data)
    if name == "full":
        return full_suite(data)
    raise PlannerError(f"unknown suite '{name}': use quick or full")


# ------------------------------------------------------------------ per model


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    graph: Graph
    tflm_peak: int
    load_bound: int
    ws_bound: int
    budgets: tuple[tuple[str, int | None], ...]
    # The row-streamed graph `solve --row-streaming` plans and its working-set bound;
    # None where no group applies (or the suite does not stream).
    planned: Graph | None = None
    streamed_bound: int | None = None


def model_name(path: Path) -> str:
    return path.name


def budgets_for(tflm_peak: int, suite: Suite) -> tuple[tuple[str, int | None], ...]:
    found: list[tuple[str, int | None]] = [("none", None)]
    for f in suite.fractions:
        found.append((f"{round(f * 100)}%", int(tflm_peak * f) // ALIGNMENT * ALIGNMENT))
    if suite.sram_budgets:
        for size in sorted({load_profile(p).sram_bytes for p in bundled_profiles()}):
            label = f"sram-{size // 1024}KiB" if size % 1024 == 0 else f"sram-{size}B"
            found.append((label, size))
    return tuple(found)


def prepare(path: Path, suite: Suite, graph: Graph | None = None) -> ModelInfo:
    """Reference points and budgets of one model; `graph`: the file, already read."""
    from frontends import load_model

    profile = load_profile(suite.profile)
    graph = apply_kernels(graph if graph is not None else load_model(path), profile)
    bufs = buffers(graph)
    offsets = greedy_offsets(bufs)
    peak = max((o + b.size for b, o in zip(bufs, offsets, strict=True)), default=0)
    planned = streamed_graph(graph, profile) if suite.row_streaming else None
    return ModelInfo(model_name(path), path, graph, peak, load_bound(graph).bytes,
                     working_set_bound(graph, profile.can_stream, profile.fusion).bytes,
                     budgets_for(peak, suite), planned,
                     working_set_bound(planned, profile.can_stream, profile.fusion).bytes
                     if planned is not None else None)


def streamed_graph(graph: Graph, profile: DeviceProfile) -> Graph | None:
    """The planned graph of the groups choose_groups picks for `graph` on `profile`
    (what `solve --row-streaming` plans), or None when it picks none."""
    from planner.streaming import apply_groups, choose_groups

    groups = choose_groups(graph, profile)
    return apply_groups(graph, groups) if groups else None


# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class Task:
    model: ModelInfo
    planner: str
    budgets: tuple[tuple[str, int | None], ...]  # scored against each; planned with the 1st
    plan_budget: int | None
    suite: Suite
    outdir: Path
    workers: int = 2
    streamed: bool = False  # plan model.planned (the row-streamed graph), as STREAMED_ILP


def storage_profiles() -> list[DeviceProfile]:
    return [p for p in (load_profile(n) for n in bundled_profiles()) if p.storages]


def transfer_seconds_under(graph: Graph, plan: Plan, profile: DeviceProfile) -> float:
    """The plan's transfers timed on `profile`: same-named storage, else its first one."""
    if not plan.transfers:
        return 0.0
    from planner.costs import transfer_seconds  # the planners' own cost model

    names = {s.name: s for s in profile.storages}
    total = 0.0
    for t in plan.transfers:
        storage = names.get(t.storage, profile.storages[0])
        rows = stream_rows(graph.tensors[t.tensor], graph.layout)
        total += transfer_seconds(storage, t.kind, t.nbytes, rows)
    return total


def run_task(task: Task) -> list[dict]:
    """Plan once, check, score against each budget; returns one row per budget."""
    info, suite = task.model, task.suite
    profile = load_profile(suite.profile)
    graph = info.planned if task.streamed and info.planned is not None else info.graph
    label = STREAMED_ILP if task.streamed else task.planner
    base = {"model": info.name, "model_path": str(info.path),
            "source": info.graph.source_format,
            "ops": len(info.graph.ops),
            "buffers": len(buffers(info.graph)), "planner": label,
            "load_bound": info.load_bound, "ws_bound": info.ws_bound,
            "streamed_bound": info.streamed_bound}
    # A plan of the streamed graph is held to its own (lower) bound.
    floor, floor_name = (info.streamed_bound, "streamed working-set bound") \
        if task.streamed and info.streamed_bound is not None else \
        (info.ws_bound, "working-set bound")

    def rows_with(extra: dict) -> list[dict]:
        return [{**base, "budget": label, "budget_bytes": b, **extra}
                for label, b in task.budgets]

    if task.plan_budget is not None and task.plan_budget < floor \
            and task.planner not in SPILL_FREE:
        return rows_with({"status": "infeasible", "fits": False,
                          "detail": f"below the {floor_name} {floor:,} B"})
    request = Request(graph, profile, task.plan_budget, None, suite.time_limit,
                      workers=task.workers, work_limit=suite.work_limit)
    start = time.perf_counter()
    try:
        with sigint_kept():
            plan = registry()[task.planner](request)
        elapsed = time.perf_counter() - start
        assert_valid(graph, plan, profile.capacities)
    except InfeasibleBudget as exc:
        return rows_with({"status": "infeasible", "fits": False, "detail": str(exc),
                          "solve_seconds": round(time.perf_counter() - start, 3)})
    except PlanError as exc:
        return rows_with({"status": "invalid", "fits": False, "detail": str(exc)[:300]})
    except PlannerError as exc:
        return rows_with({"status": "error", "fits": False, "detail": str(exc)})
    except Exception as exc:  # a crash in one planner must not lose the other results
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return rows_with({"status": "crash", "fits": False,
                          "detail": f"{type(exc).__name__}: {exc} ({last.filename}:{last.lineno})"})
    if was_interrupted(plan):  # CP-SAT took the Ctrl-C: stop the suite, as the parent does
        raise KeyboardInterrupt
    summary = plan_summary(plan, task.plan_budget, elapsed)
    svg = ""
    if suite.svg:
        svg = write_layout(info, plan, task.plan_budget, task.budgets[0][0], task.outdir,
                           graph, label)
    per_profile = {f"est_s_{p.name}": round(transfer_seconds_under(graph, plan, p), 6)
                   for p in storage_profiles()}
    peak = plan.peak_bytes
    tail, arena = arena_of(info, plan, profile) if not task.streamed else (None, None)
    streamed = {}
    if task.streamed:
        from planner.costs import stream_overhead_seconds

        streamed = {"num_stream_groups": len(plan.stream_groups),
                    "stream_overhead_s": round(stream_overhead_seconds(graph, profile), 6)}
    if info.streamed_bound:
        streamed["ratio_streamed_bound"] = round(peak / info.streamed_bound, 4)
    latency = latency_columns(graph, plan, profile)
    common = {
        "status": summary["status"], "peak_bytes": peak, "tail_bytes": tail,
        "arena_bytes": arena,
        "ratio_tflm": round(peak / info.tflm_peak, 4) if info.tflm_peak else None,
        "ratio_load_bound": round(peak / info.load_bound, 4) if info.load_bound else None,
        "ratio_ws_bound": round(peak / info.ws_bound, 4) if info.ws_bound else None,
        "spilled_bytes": summary["spilled_bytes"], "fetched_bytes": summary["fetched_bytes"],
        "num_spills": summary["num_spills"], "num_fusions": summary["num_fusions"],
        "est_transfer_s": round(transfer_seconds_under(graph, plan, profile), 6)
        if profile.storages else 0.0,
        "solve_seconds": summary["solve_seconds"], "bound_bytes": summary["bound_bytes"],
        "gap": round(summary["gap"], 4) if summary["gap"] is not None else None,
        "svg": svg, "detail": "; ".join(plan.notes)[:300], **per_profile, **latency,
        **streamed,
    }
    return [{**base, "budget": label, "budget_bytes": b, **common,
             "fits": b is None or peak <= b} for label, b in task.budgets]


def latency_columns(graph: Graph, plan: Plan, profile: DeviceProfile) -> dict:
    """Estimated end-to-end seconds: as planned, all blocking, and with the async post-pass
    widening the plan's own transfers (checked like every plan; None if it were invalid)."""
    from planner.async_windows import with_windows
    from planner.latency import end_to_end, without_windows

    planned = end_to_end(graph, plan, profile)
    blocking = end_to_end(graph, without_windows(plan), profile)
    windowed = with_windows(graph, plan, profile)
    try:
        assert_valid(graph, windowed, profile.capacities)
        windows_s: float | None = round(end_to_end(graph, windowed, profile).total_seconds, 6)
    except PlanError:
        windows_s = None
    return {"latency_s": round(planned.total_seconds, 6),
            "latency_blocking_s": round(blocking.total_seconds, 6),
            "latency_windows_s": windows_s,
            "compute_s": round(planned.compute_seconds, 6)}


def arena_of(info: ModelInfo, plan: Plan, profile) -> tuple[int | None, int | None]:
    """The predicted tail and arena total of the model the plan emits (TFLite input);
    (None, None) where there is no TFLM model or an op has no tail rule."""
    from backends.tflite.tail import ArenaTail

    if info.graph.source_format != "tflite":
        return None, None
    tails = ArenaTail(info.graph, info.path, profile)
    tail = tails.of_plan(plan)
    return (tail, tails.arena(plan.peak_bytes)) if tail is not None else (None, None)


def safe(text: str) -> str:
    """A file-name-safe form of a model or budget label ("75%" -> "75pct").

    Runs of other characters become one "_" ("a b.tflite" -> "a_b.tflite").
    """
    text = text.replace("%", "pct")
    out = "".join(c if c.isalnum() or c in "-_." else " " for c in text)
    return "_".join(out.split())


def write_layout(info: ModelInfo, plan: Plan, budget: int | None, label: str,
                 outdir: Path, graph: Graph | None = None, planner: str | None = None) -> str:
    """The layout picture of `plan` (of `graph`, default the model's; named after
    `planner`, default the plan's, so streamed ILP plans do not overwrite the ILP's)."""
    from backends.reports.svg import render_layout_svg

    folder = outdir / "svg" / safe(info.name)
    folder.mkdir(parents=True, exist_ok=True)
    who = planner or plan.planner
    name = f"{safe(who)}.svg" if who in SPILL_FREE else f"{safe(who)}.{safe(label)}.svg"
    path = folder / name
    path.write_text(render_layout_svg(graph or info.graph, plan, budget=budget))
    return str(path.relative_to(outdir))


def tasks_for(info: ModelInfo, planners: Sequence[str], suite: Suite, outdir: Path,
              workers: int) -> list[Task]:
    tasks = []
    for name in planners:
        if name in SPILL_FREE:
            tasks.append(Task(info, name, info.budgets, None, suite, outdir, workers))
        else:
            tasks += [Task(info, name, ((label, b),), b, suite, outdir, workers)
                      for label, b in info.budgets]
        if name == "ilp" and info.planned is not None:
            tasks += [Task(info, name, ((label, b),), b, suite, outdir, workers, streamed=True)
                      for label, b in info.budgets]
    return tasks


# ------------------------------------------------------------------ MiniMalloc


@dataclass(frozen=True)
class MiniMallocTask:
    path: Path
    planner: str
    time_limit: float


def run_minimalloc_task(task: MiniMallocTask) -> list[dict]:
    from .minimalloc import read_problem, run_problem, solvers

    solve = solvers()[task.planner]
    return [run_problem(read_problem(task.path), task.planner, solve, task.time_limit).row()]


# ------------------------------------------------------------------ running


class Progress:
    """The suite's progress with rate and ETA: a tqdm bar on a terminal, else a line per 10%."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="benchmarks", unit="task", file=self.stream,
                             dynamic_ncols=True)

    def update(self, label: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label[:40], refresh=False)
            self._bar.update(1)
            if self.done == self.total:
                self._bar.close()
            return
        decile = 10 * self.done // max(self.total, 1)
        if decile != self._last_decile:
            from tqdm import tqdm

            self._last_decile = decile
            elapsed = time.perf_counter() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            self.stream.write(
                f"benchmarks {self.done}/{self.total} {100 * self.done // max(self.total, 1)}% "
                f"{tqdm.format_interval(elapsed)} elapsed, {rate:.2f} task/s, "
                f"ETA {tqdm.format_interval(eta)}: {label}\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class Results:
    rows: list[dict] = field(default_factory=list)
    minimalloc: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # models that could not be loaded
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C: the rows are the tasks that finished before it
    tasks: int = 0  # tasks the suite meant to run


def run_suite(suite: Suite, outdir: Path, jobs: int = 1,
              progress: Callable[[int], Progress] | None = None,
              scheduler: str | None = None) -> Results:
    """Run every task; `scheduler`: a dask.distributed scheduler address instead of the
    local process pool (same tasks, same rows; SVGs are written by the workers, so a
    remote cluster needs `outdir` on a shared file system or svg=False)."""
    start = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    available = registry()
    planners = list(available) if suite.planners is None else list(suite.planners)
    unknown = [p for p in planners if p not in available]
    if unknown:
        raise PlannerError(f"unknown planner(s) {', '.join(unknown)}: use "
                           f"{', '.join(sorted(available))}")
    results = Results()
    infos = []
    for path in suite.models:
        try:
            infos.append(prepare(path, suite))
        except PlannerError as exc:
            results.skipped.append(f"{path.name}: {exc}")
        except Exception as exc:  # a frontend crash on one model must not end the run
            results.skipped.append(f"{path.name}: frontend crashed: {type(exc).__name__}: {exc}")
    workers = 1 if jobs > 1 else 2
    tasks: list[Task | MiniMallocTask] = []
    for info in infos:
        tasks += tasks_for(info, planners, suite, outdir, workers)
    if suite.minimalloc:
        from .minimalloc import solvers

        mm = solvers()
        names = list(mm) if suite.minimalloc_planners is None else \
            [n for n in suite.minimalloc_planners if n in mm]
        tasks += [MiniMallocTask(p, n, suite.minimalloc_time_limit)
                  for p in suite.minimalloc for n in names]
    # Long tasks first so the pool's tail is short.
    tasks.sort(key=lambda t: 0 if isinstance(t, Task) and t.planner not in SPILL_FREE else 1)
    bar = (progress or Progress)(len(tasks))
    results.tasks = len(tasks)
    running = _execute_dask(tasks, scheduler) if scheduler else _execute(tasks, jobs)
    try:
        for task, rows in running:
            if isinstance(task, MiniMallocTask):
                results.minimalloc += rows
                bar.update(f"minimalloc {task.path.name} {task.planner}")
            else:
                results.rows += rows
                who = STREAMED_ILP if task.streamed else task.planner
                bar.update(f"{task.model.name} {who} {task.budgets[0][0]}")
    except KeyboardInterrupt:  # keep what finished; the caller writes it and exits 130
        results.interrupted = True
    finally:
        running.close()  # ends the pool (cancels the queue, stops the workers) now, not at GC
        getattr(bar, "close", lambda: None)()
    order = {info.name: k for k, info in enumerate(infos)}
    planner_rank = {p: k for k, p in enumerate(planners)}
    planner_rank[STREAMED_ILP] = planner_rank.get("ilp", len(planners)) + 0.5
    budget_rank = {(info.name, label): k for info in infos
                   for k, (label, _) in enumerate(info.budgets)}
    results.rows.sort(key=lambda r: (order[r["model"]], budget_rank[(r["model"], r["budget"])],
                                     planner_rank[r["planner"]]))
    mm_rank = {n: k for k, n in enumerate(dict.fromkeys(t.planner for t in tasks
                                                         if isinstance(t, MiniMallocTask)))}
    results.minimalloc.sort(key=lambda r: (r["problem"], mm_rank[r["planner"]]))
    results.seconds = time.perf_counter() - start
    return results


def _run_any(task: Task | MiniMallocTask) -> list[dict]:
    return run_minimalloc_task(task) if isinstance(task, MiniMallocTask) else run_task(task)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which cancels the queue and ends them at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _execute(tasks, jobs: int):
    if jobs <= 1:
        for task in tasks:
            yield task, _run_any(task)
        return
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint)
    try:
        futures = {pool.submit(_run_any, t): t for t in tasks}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except BaseException:  # Ctrl-C (or a broken pool): nothing queued may start or run on
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join(timeout=5)
        raise
    pool.shutdown()


def _execute_dask(tasks, address: str):
    """The tasks on a Dask cluster, yielded as they finish; Ctrl-C cancels the rest there."""
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ModuleNotFoundError:
        raise PlannerError("--scheduler needs dask.distributed: pip install "
                           "'tinyplan[dask]'") from None
    try:
        client = Client(address, timeout=10)
    except OSError as exc:
        raise PlannerError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    futures = {}
    try:
        futures = {client.submit(_run_any, t, pure=False): t for t in tasks}
        for fut in dask_completed(list(futures)):
            yield futures[fut], fut.result()
    except BaseException:
        client.cancel(list(futures), force=True)
        raise
    finally:
        client.close()


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))
