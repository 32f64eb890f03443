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

A model whose TRANSPOSE_CONV kernels request scratch is planned twice: as TFLM
runs it (int32 accumulators) and with that scratch stored as int16, the setting
TinySeg's published numbers use. Each variant is its own ModelSpec and its own
row in every table.
"""

from __future__ import annotations

import os
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
from planner.ir import ALIGNMENT, Graph, OpKind
from planner.plan import Plan
from planner.planners.base import Request, registry
from planner.planners.tflm_greedy import greedy_offsets

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "benchmarks" / "models"
SHARED_MODELS = ROOT.parent / "shared" / "models"

# Planners whose plan does not depend on the budget: run once per model.
SPILL_FREE = frozenset({"linear", "tflm-greedy", "greedy-by-size", "greedy-by-breadth",
                        "hill-climb"})
FRACTIONS = (0.90, 0.75, 0.60, 0.50)

COLUMNS = (
    "model", "source", "scratch", "ops", "buffers", "budget", "budget_bytes", "planner", "status",
    "peak_bytes", "fits", "ratio_tflm", "load_bound", "ws_bound", "ratio_load_bound",
    "ratio_ws_bound", "spilled_bytes", "fetched_bytes", "num_spills", "num_fusions",
    "est_transfer_s", "solve_seconds", "bound_bytes", "gap", "svg", "detail",
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
    # Also plan models with TRANSPOSE_CONV scratch with that scratch as int16.
    int16_scratch: bool = True


def zoo_models() -> list[Path]:
    onnx = sorted(ZOO.glob("*.onnx"))
    tflite = sorted(ZOO.glob("*.tflite"))
    shared = sorted(SHARED_MODELS.glob("**/*.tflite")) if SHARED_MODELS.is_dir() else []
    return onnx + tflite + shared


# The project's own zoo plus three MLPerf Tiny / TFLM references; the big segmentation
# models (hundreds of ops, megabyte tensors) are left to the full suite.
QUICK_SHARED = ("vww_96_int8.tflite", "kws_ref_model.tflite", "person_detect.tflite")


def quick_suite() -> Suite:
    """About two minutes on two cores: small models, short limits, no exact MiniMalloc."""
    from .minimalloc import problem_files

    models = tuple(p for p in zoo_models() if p.parent == ZOO or p.name in QUICK_SHARED)
    return Suite("quick", models, sram_budgets=False, time_limit=20.0, work_limit=2.5,
                 minimalloc=tuple(problem_files()),
                 minimalloc_planners=("tflm-greedy", "greedy-by-size", "greedy-by-breadth",
                                      "hill-climb"),
                 minimalloc_time_limit=2.0)


def full_suite() -> Suite:
    from .minimalloc import problem_files

    return Suite("full", tuple(zoo_models()), time_limit=60.0, work_limit=15.0,
                 minimalloc=tuple(problem_files()), minimalloc_time_limit=30.0)


def suite_named(name: str) -> Suite:
    if name == "quick":
        return quick_suite()
    if name == "full":
        return full_suite()
    raise PlannerError(f"unknown suite '{name}': use quick or full")


# ------------------------------------------------------------------ per model


SCRATCH_VARIANTS = ("int32", "int16")


@dataclass(frozen=True)
class ModelSpec:
    """One model row: a file plus how its TRANSPOSE_CONV scratch is stored."""

    path: Path
    scratch: str = "int32"  # "int16": TinySeg's temporary quantization, halves the scratch

    def __post_init__(self) -> None:
        if self.scratch not in SCRATCH_VARIANTS:
            raise PlannerError(f"unknown scratch variant '{self.scratch}': use "
                               f"{' or '.join(SCRATCH_VARIANTS)}")

    @property
    def name(self) -> str:
        return self.path.name if self.scratch == "int32" else \
            f"{self.path.name} [{self.scratch} scratch]"

    def apply(self, graph: Graph) -> Graph:
        """The graph this variant plans, from the graph the frontend read."""
        if self.scratch == "int16":
            return graph.with_scratch_scale(OpKind.TRANSPOSE_CONV, 1, 2)
        return graph


def has_transpose_conv_scratch(graph: Graph) -> bool:
    return any(op.kind == OpKind.TRANSPOSE_CONV and op.scratch for op in graph.ops)


def variants(path: Path, graph: Graph, suite: Suite) -> list[ModelSpec]:
    """The specs a suite plans for one model file (int16 only where it changes something)."""
    specs = [ModelSpec(path)]
    if suite.int16_scratch and has_transpose_conv_scratch(graph):
        specs.append(ModelSpec(path, "int16"))
    return specs


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    graph: Graph
    tflm_peak: int
    load_bound: int
    ws_bound: int
    budgets: tuple[tuple[str, int | None], ...]
    scratch: str = "int32"


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


def prepare(model: Path | ModelSpec, suite: Suite, graph: Graph | None = None) -> ModelInfo:
    """Reference points and budgets of one model variant; `graph`: the file, already read."""
    from frontends import load_model

    spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
    graph = spec.apply(graph if graph is not None else load_model(spec.path))
    bufs = buffers(graph)
    offsets = greedy_offsets(bufs)
    peak = max((o + b.size for b, o in zip(bufs, offsets, strict=True)), default=0)
    profile = load_profile(suite.profile)
    return ModelInfo(spec.name, spec.path, graph, peak, load_bound(graph).bytes,
                     working_set_bound(graph, profile.can_stream, profile.fusion).bytes,
                     budgets_for(peak, suite), spec.scratch)


def prepare_all(path: Path, suite: Suite) -> list[ModelInfo]:
    """Every variant the suite plans for one model file; the file is read once."""
    from frontends import load_model

    graph = load_model(path)
    return [prepare(spec, suite, graph) for spec in variants(path, graph, suite)]


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
    base = {"model": info.name, "source": info.graph.source_format, "scratch": info.scratch,
            "ops": len(info.graph.ops),
            "buffers": len(buffers(info.graph)), "planner": task.planner,
            "load_bound": info.load_bound, "ws_bound": info.ws_bound}

    def rows_with(extra: dict) -> list[dict]:
        return [{**base, "budget": label, "budget_bytes": b, **extra}
                for label, b in task.budgets]

    if task.plan_budget is not None and task.plan_budget < info.ws_bound \
            and task.planner not in SPILL_FREE:
        return rows_with({"status": "infeasible", "fits": False,
                          "detail": f"below the working-set bound {info.ws_bound:,} B"})
    request = Request(info.graph, profile, task.plan_budget, None, suite.time_limit,
                      workers=task.workers, work_limit=suite.work_limit)
    start = time.perf_counter()
    try:
        plan = registry()[task.planner](request)
        elapsed = time.perf_counter() - start
        assert_valid(info.graph, plan, profile.capacities)
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
    summary = plan_summary(plan, task.plan_budget, elapsed)
    svg = ""
    if suite.svg:
        svg = write_layout(info, plan, task.plan_budget, task.budgets[0][0], task.outdir)
    per_profile = {f"est_s_{p.name}": round(transfer_seconds_under(info.graph, plan, p), 6)
                   for p in storage_profiles()}
    peak = plan.peak_bytes
    common = {
        "status": summary["status"], "peak_bytes": peak,
        "ratio_tflm": round(peak / info.tflm_peak, 4) if info.tflm_peak else None,
        "ratio_load_bound": round(peak / info.load_bound, 4) if info.load_bound else None,
        "ratio_ws_bound": round(peak / info.ws_bound, 4) if info.ws_bound else None,
        "spilled_bytes": summary["spilled_bytes"], "fetched_bytes": summary["fetched_bytes"],
        "num_spills": summary["num_spills"], "num_fusions": summary["num_fusions"],
        "est_transfer_s": round(transfer_seconds_under(info.graph, plan, profile), 6)
        if profile.storages else 0.0,
        "solve_seconds": summary["solve_seconds"], "bound_bytes": summary["bound_bytes"],
        "gap": round(summary["gap"], 4) if summary["gap"] is not None else None,
        "svg": svg, "detail": "; ".join(plan.notes)[:300], **per_profile,
    }
    return [{**base, "budget": label, "budget_bytes": b, **common,
             "fits": b is None or peak <= b} for label, b in task.budgets]


def safe(text: str) -> str:
    """A file-name-safe form of a model or budget label ("75%" -> "75pct").

    Runs of other characters become one "_" ("a.tflite [int16 scratch]" ->
    "a.tflite_int16_scratch").
    """
    text = text.replace("%", "pct")
    out = "".join(c if c.isalnum() or c in "-_." else " " for c in text)
    return "_".join(out.split())


def write_layout(info: ModelInfo, plan: Plan, budget: int | None, label: str,
                 outdir: Path) -> str:
    from backends.svg import render_layout_svg

    folder = outdir / "svg" / safe(info.name)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{safe(plan.planner)}.svg" if plan.planner in SPILL_FREE else \
        f"{safe(plan.planner)}.{safe(label)}.svg"
    path = folder / name
    path.write_text(render_layout_svg(info.graph, plan, budget=budget))
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
    """A plain stderr progress bar; one line per 10% when stderr is not a terminal."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label}"
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            decile = 10 * self.done // max(self.total, 1)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class Results:
    rows: list[dict] = field(default_factory=list)
    minimalloc: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # models that could not be loaded
    seconds: float = 0.0


def run_suite(suite: Suite, outdir: Path, jobs: int = 1,
              progress: Callable[[int], Progress] | None = None) -> Results:
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
            infos += prepare_all(path, suite)
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
    for task, rows in _execute(tasks, jobs):
        if isinstance(task, MiniMallocTask):
            results.minimalloc += rows
            bar.update(f"minimalloc {task.path.name} {task.planner}")
        else:
            results.rows += rows
            bar.update(f"{task.model.name} {task.planner} {task.budgets[0][0]}")
    order = {info.name: k for k, info in enumerate(infos)}
    planner_rank = {p: k for k, p in enumerate(planners)}
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


def _execute(tasks, jobs: int):
    if jobs <= 1:
        for task in tasks:
            yield task, _run_any(task)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_any, t): t for t in tasks}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))
