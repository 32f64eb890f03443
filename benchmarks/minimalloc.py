"""MiniMalloc's benchmark problems through every offset planner, each answer checked.

A problem file is a CSV `id,lower,upper,size` with half-open lifetimes
[lower, upper); its capacity is the number before `.csv` in the file name
(`A.1048576.csv`). Lifetimes become closed [lower, upper - 1] steps, as the
planners' buffers are. Each planner's offsets are checked for overlap by
planner.offsets.overlap_violations, which shares no code with the planners.
"""

from __future__ import annotations

import csv
import functools
import importlib
import inspect
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.errors import PlannerError
from planner.offsets import Block, OffsetProblem, conflicts, overlap_violations, peak_of
from planner.planners.offset_heuristics import (
    greedy_by_breadth_offsets,
    greedy_by_size_offsets,
    hill_climb_offsets,
)
from planner.planners.tflm_greedy import greedy_offsets
from planner.units import INT32_MAX


def _shared_minimalloc() -> Path:
    from .runner import ROOT, shared_dir

    shared = shared_dir()
    return (shared if shared is not None else ROOT.parent / "shared") / "minimalloc"


SHARED_DIR = _shared_minimalloc()

# name -> fn(blocks, time_limit) -> offsets, or a result with .offsets (and .nodes, .status)
OffsetSolver = Callable[[Sequence[Block], float], object]
# Solvers that take the problem's capacity: they pack into it (or prove it impossible).
CAPACITY_AWARE = ("canonical", "ilp")


MAX_CSV_BYTES = 64 << 20
MAX_BLOCKS = 1_000_000


def read_problem(path: str | Path) -> OffsetProblem:
    """A MiniMalloc CSV (id,lower,upper,size; capacity in the name), strictly checked.

    UTF-8 only; integers only; every time and size inside int32 (what the planners
    and OR-Tools are given), so a bad file is one line, never a traceback.
    """
    path = Path(path)
    parts = path.name.split(".")
    capacity = None
    if len(parts) >= 3 and parts[-2].isdigit():
        capacity = _bounded(parts[-2], f"{path}: capacity in the file name", 1)
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            raise PlannerError(f"{path}: larger than {MAX_CSV_BYTES:,} B")
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(itertools.islice(csv.DictReader(fh), MAX_BLOCKS + 1))
    except OSError as exc:
        raise PlannerError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PlannerError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise PlannerError(f"{path}: not a CSV file ({exc})") from None
    if len(rows) > MAX_BLOCKS:
        raise PlannerError(f"{path}: more than {MAX_BLOCKS:,} blocks")
    blocks = []
    for n, row in enumerate(rows, start=2):
        try:
            lower, upper, size = (_bounded(row[k], f"{path}:{n}: {k}", 0)
                                  for k in ("lower", "upper", "size"))
        except (KeyError, TypeError):
            raise PlannerError(f"{path}:{n}: expected integer columns id,lower,upper,size") \
                from None
        if upper <= lower or size <= 0:
            raise PlannerError(f"{path}:{n}: needs 0 <= lower < upper and size > 0")
        blocks.append(Block(row.get("id") or str(n - 2), lower, upper - 1, size))
    if not blocks:
        raise PlannerError(f"{path}: no blocks")
    return OffsetProblem(path.name.split(".")[0], tuple(blocks), capacity)


def _bounded(text: str, what: str, minimum: int) -> int:
    """A decimal integer minimum..INT32_MAX (at most 12 characters, so never a huge int)."""
    text = text.strip() if isinstance(text, str) else text
    if not isinstance(text, str) or not text.isdigit() or not text.isascii() or len(text) > 12:
        shown = repr(text)[:40]
        raise PlannerError(f"{what} must be an integer {minimum}..{INT32_MAX:,}, not {shown}")
    value = int(text)
    if not minimum <= value <= INT32_MAX:
        raise PlannerError(f"{what} = {value:,} is out of range {minimum}..{INT32_MAX:,}")
    return value


def problem_files(root: Path = SHARED_DIR) -> list[Path]:
    return sorted(root.glob("**/*.csv")) if root.is_dir() else []


def _hill_climb(blocks: Sequence[Block], limit: float) -> list[int]:
    conf = conflicts(blocks)
    starts = [greedy_by_size_offsets(blocks, conf), greedy_by_breadth_offsets(blocks, conf=conf)]
    return hill_climb_offsets(blocks, time_limit=limit, starts=starts, conf=conf)[0]


def exact_solver() -> OffsetSolver | None:
    """The lead's exact offsets-only solver, if the ILP package exposes one."""
    try:
        module = importlib.import_module("planner.planners.ilp")
    except ModuleNotFoundError:
        return None
    fn = getattr(module, "solve_offsets", None)
    if fn is None:
        return None
    params = inspect.signature(fn).parameters

    def run(blocks: Sequence[Block], limit: float, capacity: int | None = None) -> list[int]:
        kwargs = {"time_limit": limit} if "time_limit" in params else {}
        if capacity is not None and "capacity" in params:
            kwargs["capacity"] = capacity
        result = fn(list(blocks), **kwargs)
        # Accept a bare offset list or an object/tuple carrying one.
        offsets = getattr(result, "offsets", result)
        if isinstance(offsets, tuple) and offsets and isinstance(offsets[0], list):
            offsets = offsets[0]
        return list(offsets) if offsets is not None else []

    return run


def canonical_solver(blocks: Sequence[Block], limit: float, capacity: int | None = None):
    """The canonical-order search: pack into the capacity, or minimise the peak without one."""
    from planner.planners.canonical import minimize_peak, pack

    if capacity is None:
        return minimize_peak(blocks, time_limit=limit)
    return pack(blocks, capacity, time_limit=limit)


def solvers(with_exact: bool = True) -> dict[str, OffsetSolver]:
    found: dict[str, OffsetSolver] = {
        "tflm-greedy": lambda b, _t: greedy_offsets(b),
        "greedy-by-size": lambda b, _t: greedy_by_size_offsets(b),
        "greedy-by-breadth": lambda b, _t: greedy_by_breadth_offsets(b),
        "hill-climb": _hill_climb,
    }
    found["canonical"] = canonical_solver
    exact = exact_solver() if with_exact else None
    if exact is not None:
        found["ilp"] = exact
    return found


@dataclass(frozen=True)
class Result:
    problem: str
    planner: str
    blocks: int
    capacity: int | None
    load_bound: int
    peak: int | None
    ratio: float | None  # peak / load bound
    fits: bool
    seconds: float
    status: str  # "ok", "no answer", "infeasible" (proven), "invalid", "error"
    detail: str = ""
    nodes: int | None = None  # search nodes, for the solvers that count them

    def row(self) -> dict:
        return asdict(self)


def run_problem(problem: OffsetProblem, name: str, solve: OffsetSolver,
                time_limit: float) -> Result:
    blocks = problem.blocks
    floor = problem.load_bound()
    if name in CAPACITY_AWARE and problem.capacity is not None:
        # The exact solvers pack into the stated capacity (or prove it impossible).
        solve = functools.partial(solve, capacity=problem.capacity)
    start = time.perf_counter()
    try:
        out = solve(blocks, time_limit)
    except PlannerError as exc:
        return Result(problem.name, name, len(blocks), problem.capacity, floor, None, None,
                      False, time.perf_counter() - start, "error", str(exc))
    seconds = time.perf_counter() - start
    offsets = getattr(out, "offsets", out)
    nodes = getattr(out, "nodes", None)
    if not offsets:
        proven = getattr(out, "status", "") == "infeasible"
        return Result(problem.name, name, len(blocks), problem.capacity, floor, None, None,
                      False, seconds, "infeasible" if proven else "no answer", nodes=nodes)
    errors = overlap_violations(blocks, offsets)
    if errors:
        return Result(problem.name, name, len(blocks), problem.capacity, floor, None, None,
                      False, seconds, "invalid", errors[0], nodes)
    peak = peak_of(blocks, offsets)
    fits = problem.capacity is None or peak <= problem.capacity
    return Result(problem.name, name, len(blocks), problem.capacity, floor, peak,
                  peak / floor if floor else 1.0, fits, seconds, "ok", nodes=nodes)


def run_all(paths: Sequence[Path], names: Sequence[str] | None = None, time_limit: float = 10.0,
            with_exact: bool = True) -> list[Result]:
    available = solvers(with_exact)
    chosen = list(available) if names is None else [n for n in names if n in available]
    results = []
    for path in paths:
        problem = read_problem(path)
        for n in chosen:
            results.append(run_problem(problem, n, available[n], time_limit))
    return results


def markdown_table(results: Sequence[Result]) -> str:
    """Problems as rows, planners as columns: peak / load bound (seconds), * when it fits."""
    planners = list(dict.fromkeys(r.planner for r in results))
    problems = list(dict.fromkeys(r.problem for r in results))
    cell = {(r.problem, r.planner): r for r in results}
    head = "| problem | blocks | load bound | capacity | " + " | ".join(planners) + " |"
    lines = [head, "|" + " --- |" * (4 + len(planners))]
    for p in problems:
        first = next(r for r in results if r.problem == p)
        cells = []
        for name in planners:
            r = cell.get((p, name))
            if r is None:
                cells.append("")
            elif r.ratio is None:
                cells.append(r.status)
            else:
                nodes = f", {r.nodes:,} nodes" if r.nodes is not None else ""
                cells.append(f"{r.ratio:.3f}{'*' if r.fits else ''} ({r.seconds:.2f} s{nodes})")
        cap = f"{first.capacity:,}" if first.capacity is not None else "-"
        lines.append(f"| {p} | {first.blocks} | {first.load_bound:,} | {cap} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: peak / load bound (solve seconds, search nodes where counted); "
                 "* = fits the stated capacity.")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Proof:
    problem: str
    capacity: int
    status: str  # infeasible (proven) / packed / unknown
    seconds: float
    nodes: int


def below_capacity(paths: Sequence[Path], time_limit: float, margin: int = 16) -> list[Proof]:
    """For each problem whose load bound is its capacity: capacity - margin, proven impossible?"""
    from planner.planners.canonical import pack

    proofs = []
    for path in paths:
        problem = read_problem(path)
        if problem.capacity is None or problem.capacity <= margin or \
                problem.load_bound() != problem.capacity:
            continue
        start = time.perf_counter()
        got = pack(problem.blocks, problem.capacity - margin, time_limit=time_limit)
        if got.status == "packed" and overlap_violations(problem.blocks, got.offsets):
            raise PlannerError(f"{problem.name}: the canonical search returned an invalid packing")
        proofs.append(Proof(problem.name, problem.capacity - margin, got.status,
                            time.perf_counter() - start, got.nodes))
    return proofs


def proofs_table(proofs: Sequence[Proof]) -> str:
    lines = ["| problem | capacity | canonical search | seconds | nodes |",
             "| --- | --- | --- | --- | --- |"]
    for p in proofs:
        lines.append(f"| {p.problem} | {p.capacity:,} | {p.status} | {p.seconds:.3f} | "
                     f"{p.nodes:,} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ModelCheck:
    model: str
    buffers: int
    load_bound: int
    canonical: int
    canonical_status: str
    canonical_seconds: float
    canonical_nodes: int
    cpsat: int
    cpsat_status: str
    cpsat_seconds: float


def spill_free_models(paths: Sequence[Path], time_limit: float) -> list[ModelCheck]:
    """Each model's buffers, spill-free, by the canonical search and by CP-SAT: same optimum?"""
    from frontends import load_model
    from planner.analysis import buffers
    from planner.planners.canonical import minimize_peak
    from planner.planners.ilp.offsets import solve_offsets

    rows = []
    for path in paths:
        bufs = buffers(load_model(path))
        start = time.perf_counter()
        ours = minimize_peak(bufs, time_limit=time_limit)
        mid = time.perf_counter()
        theirs = solve_offsets(bufs, time_limit=time_limit)
        end = time.perf_counter()
        for offsets in (ours.offsets, theirs.offsets):
            errors = overlap_violations(bufs, offsets)
            if errors:
                raise PlannerError(f"{path.name}: invalid spill-free offsets: {errors[0]}")
        rows.append(ModelCheck(path.name, len(bufs), OffsetProblem.from_intervals(
            path.name, bufs).load_bound(), ours.peak, ours.status, mid - start, ours.nodes,
            theirs.peak, theirs.status, end - mid))
    return rows


def models_table(rows: Sequence[ModelCheck]) -> str:
    lines = ["| model | buffers | load bound | canonical peak (status, s, nodes) | "
             "CP-SAT peak (status, s) | same |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        same = "=" if r.canonical == r.cpsat else f"{r.canonical - r.cpsat:+,}"
        lines.append(
            f"| {r.model} | {r.buffers} | {r.load_bound:,} | {r.canonical:,} "
            f"({r.canonical_status}, {r.canonical_seconds:.2f} s, {r.canonical_nodes:,}) | "
            f"{r.cpsat:,} ({r.cpsat_status}, {r.cpsat_seconds:.2f} s) | {same} |")
    return "\n".join(lines) + "\n"
