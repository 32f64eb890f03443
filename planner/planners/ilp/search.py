"""Running CP-SAT under one budget: a wall-clock deadline, a work limit, Ctrl-C, progress.

CP-SAT's own `max_time_in_seconds` is not enough on large models: a first-solution
worker (feasibility jump) checks the clock rarely and was measured running minutes
past it. So the solve runs in a worker thread while the calling thread waits on the
deadline and calls `stop_search()` when it passes or when SIGINT arrives (the
waiting thread is the one Python delivers KeyboardInterrupt to; CP-SAT's own SIGINT
handler is turned off so that it does not swallow the signal).

The work limit is CP-SAT's deterministic time: with a fixed number of workers, a
fixed seed and interleaved search, a solve stopped by it returns the same answer
whatever else the machine is doing. The wall-clock deadline stays as a cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ortools.sat.python import cp_model

# After stop_search, how long to wait for the workers to wind down before giving up on
# the solve's own answer and keeping the last solution the callback saw.
STOP_GRACE_SECONDS = 1.5
# Fraction of the phases' budget for the primary objective; the secondary gets the rest.
PRIMARY_SHARE = 0.7

Progress = Callable[[dict], None]


@dataclass
class Budget:
    """What the whole planning call may still spend: wall seconds and CP-SAT work units."""

    deadline: float  # time.perf_counter() value
    work: float | None = None  # deterministic seconds left; None: no work limit
    stopped: str | None = None  # "time-limit" / "work-limit" / "interrupted" once hit

    @classmethod
    def start(cls, seconds: float, work: float | None = None) -> Budget:
        return cls(time.perf_counter() + seconds, work)

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"


@dataclass
class Outcome:
    status: int  # cp_model status
    objective: int | None
    bound: int | None
    values: list[int] | None  # the best solution, by variable index
    stopped: str | None  # why it ended early, None if it completed
    work: float  # deterministic time spent
    seconds: float


class _Watch(cp_model.CpSolverSolutionCallback):
    """Keeps the latest solution (for a solve that will not wind down) and reports progress."""

    def __init__(self, progress: Progress | None, phase: str,
                 scale: Callable[[float], float]) -> None:
        super().__init__()
        self.progress, self.phase, self.scale = progress, phase, scale
        self.best: list[int] | None = None
        self.objective: int | None = None
        self.bound: int | None = None
        self.solutions = 0
        self.lock = threading.Lock()

    def on_solution_callback(self) -> None:
        objective, bound = int(self.objective_value), int(self.best_objective_bound)
        values = list(self.response_proto.solution)
        with self.lock:
            self.solutions += 1
            self.best, self.objective, self.bound = values, objective, bound
        if self.progress is not None:
            best, low = self.scale(objective), self.scale(bound)
            gap = (best - low) / best if best else 0.0
            self.progress({"phase": self.phase, "best": best, "bound": low, "gap": gap,
                           "solutions": self.solutions, "seconds": self.wall_time})


def run(model: cp_model.CpModel, budget: Budget,
        share: float, *, workers: int, deterministic: bool, phase: str,
        scale: Callable[[float], float] = float, progress: Progress | None = None,
        presolve: bool = True) -> Outcome:
    """Solve `model` with `share` of what is left of `budget`; never past its deadline."""
    start = time.perf_counter()
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.num_workers = workers
    params.catch_sigint_signal = False
    params.random_seed = 0
    params.interleave_search = deterministic
    params.cp_model_presolve = presolve
    seconds = budget.seconds_left() * share
    params.max_time_in_seconds = max(0.01, seconds)
    work_limit = None
    if budget.work is not None:
        work_limit = max(0.01, budget.work * share)
        params.max_deterministic_time = work_limit
    watch = _Watch(progress, phase, scale)
    box: dict[str, int] = {}

    def target() -> None:
        box["status"] = solver.solve(model, watch)

    thread = threading.Thread(target=target, name=f"cpsat-{phase}", daemon=True)
    stopped = _wait(thread, solver, start + seconds, budget)
    work = solver.deterministic_time if "status" in box else (work_limit or 0.0)
    if budget.work is not None:
        budget.work = max(0.0, budget.work - work)
    if "status" not in box:  # the workers did not wind down: keep what the callback saw
        with watch.lock:
            status = cp_model.FEASIBLE if watch.best is not None else cp_model.UNKNOWN
            return Outcome(status, watch.objective, watch.bound, watch.best, stopped or
                           "time-limit", work, time.perf_counter() - start)
    status = box["status"]
    if stopped is None and status not in (cp_model.OPTIMAL, cp_model.INFEASIBLE):
        hit_work = work_limit is not None and solver.deterministic_time >= 0.99 * work_limit
        stopped = "work-limit" if hit_work else "time-limit"
    if stopped is not None and budget.stopped is None and stopped != "work-limit":
        budget.stopped = stopped
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    values = list(solver.response_proto.solution) if found else None
    return Outcome(status, int(solver.objective_value) if found else None,
                   int(solver.best_objective_bound) if found else None, values, stopped,
                   work, time.perf_counter() - start)


def _wait(thread: threading.Thread, solver: cp_model.CpSolver, deadline: float,
          budget: Budget) -> str | None:
    """Wait for the solve; stop it at the deadline or on Ctrl-C. Returns why it was stopped."""
    stopped = None
    thread.start()
    try:
        while thread.is_alive():
            left = deadline - time.perf_counter()
            if left <= 0:
                stopped = "time-limit"
                break
            thread.join(min(0.05, left))
    except KeyboardInterrupt:
        stopped = "interrupted"
        budget.stopped = "interrupted"
    if stopped is None:
        return None
    solver.stop_search()
    until = time.perf_counter() + STOP_GRACE_SECONDS
    while thread.is_alive() and time.perf_counter() < until:
        try:
            thread.join(0.05)
        except KeyboardInterrupt:  # a second Ctrl-C while winding down: keep winding down
            budget.stopped = stopped = "interrupted"
    return stopped
