"""Decomposition for large graphs: choose segments on the load view, then pack them.

The full model places every segment in (time x address) with one 2-D no-overlap
constraint, which CP-SAT does not improve within a minute past a few hundred ops. Here
the same model without that constraint (only the cumulative "load" constraint: live
bytes at every step within the peak) chooses spills, fetches, streams and fusions;
the chosen segments are then fixed intervals, packed by the canonical offsets search
(`planners/canonical.py`, node-capped so the result does not depend on load), or by
CP-SAT's offsets model (`offsets.solve_offsets`) where that ends unproven. Every plan
satisfies the load view, so the relaxation's proven bound bounds the full problem, and
a packing that reaches the relaxation's
proven optimum is optimal. A solution that uses a channel split is not packed (the
two parts' first segments must sit back to back, which plain packing cannot say);
its bound still counts.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ...offsets import Block
from ...plan import Plan
from . import search
from .cpsat import CpSatModel
from .extract import Solution, to_plan
from .model import Problem
from .offsets import OffsetResult, solve_offsets
from .search import Budget, Progress


@dataclass
class LoadView:
    plan: Plan | None  # the packed plan, None if nothing was packed
    bound_bytes: int | None  # proven lower bound on the peak of any plan
    relaxed_bytes: int | None  # the load view's best peak


def load_view_plan(problem: Problem, seed: Plan, budget: Budget, share: float,
                   pack_share: float, workers: int, deterministic: bool,
                   progress: Progress | None = None) -> LoadView:
    model = CpSatModel(problem, -(-seed.peak_bytes // 16), None, packing=False)
    model.hint(seed)
    model.m.minimize(model.peak)
    out = search.run(model.m, budget, share, workers=workers, deterministic=deterministic,
                     phase="peak", scale=lambda u: u * 16, progress=progress,
                     presolve=False)
    if out.values is None:
        return LoadView(None, None, None)
    bound = out.bound * 16 if out.bound is not None else None
    sol = model.read(out.values, "feasible", [])
    if any(problem.items[i].part is not None for i in sol.segments):
        return LoadView(None, bound, out.objective * 16)
    blocks, keys = _blocks(problem, sol)
    seconds = max(0.1, budget.seconds_left() * pack_share)
    # A reproducible search packs by node counts and work, never by the clock.
    work = None
    if deterministic:
        work = max(0.01, (budget.work if budget.work is not None else 1.0) * pack_share)
    packed, interrupted = _pack(blocks, out.objective, seconds, workers, work)
    if interrupted:
        budget.stopped = "interrupted"
    if not packed.offsets:
        return LoadView(None, bound, out.objective * 16)
    new = Solution({}, {}, sol.storage, sol.fused, {}, "feasible")
    for (kind, i, j, k), off in zip(keys, packed.offsets, strict=True):
        if kind == "seg":
            a, b, _ = sol.segments[i][k]
            new.segments.setdefault(i, []).append((a, b, off))
        elif kind == "line":
            new.streams.setdefault(i, []).append((j, off))
        else:
            new.scratch[i] = off
    plan = to_plan(problem, new, "load-view", "peak")
    return LoadView(plan, bound, out.objective * 16)


# The canonical search's node cap per strategy: a count, not seconds, so that the same
# problem packs the same way under any load (the time limit only guards a slow machine).
CANONICAL_NODES = 200_000


def _pack(blocks: list[Block], capacity: int, seconds: float, workers: int,
          work: float | None = None):
    """The chosen segments inside the load view's peak: the canonical offsets search first
    (fast, and exact: it packs or proves no packing), CP-SAT when it ends unproven. With
    `work` (reproducible runs) the node cap, not the clock, ends the canonical search (the
    clock stays a generous guard) and CP-SAT stops on that much work."""
    from ..canonical import pack

    guard = seconds / 2 if work is None else max(seconds / 2, 30.0)
    found = pack(blocks, capacity, time_limit=guard, node_limit=CANONICAL_NODES)
    if found.status == "packed":
        peak = max((o + b.size for o, b in zip(found.offsets, blocks, strict=True)), default=0)
        return OffsetResult(found.offsets, peak, "feasible", found.bound), False
    return _held(lambda: solve_offsets(blocks, time_limit=seconds / 2, capacity=capacity,
                                       workers=workers, work_limit=work))


def _blocks(problem: Problem, sol: Solution):
    blocks, keys = [], []
    for i, segs in sol.segments.items():
        item = problem.items[i]
        for k, (a, b, _) in enumerate(segs):
            first, last = item.span(a, b)
            blocks.append(Block(f"{i}.{k}", first, last, item.units))
            keys.append(("seg", i, 0, k))
    for i, streams in sol.streams.items():
        item = problem.items[i]
        for j, _ in streams:
            step = item.points[j].step
            blocks.append(Block(f"{i}L{j}", step, step, item.line_units[j]))
            keys.append(("line", i, j, 0))
    for t, step, units in problem.fixed:
        blocks.append(Block(f"s{t}", step, step, units))
        keys.append(("scratch", t, 0, 0))
    return blocks, keys


T = TypeVar("T")


def _held(fn: Callable[[], T]) -> tuple[T, bool]:
    """Run `fn` with SIGINT held back; (its result, whether Ctrl-C came meanwhile).

    offsets.solve_offsets runs CP-SAT with its own SIGINT handler, which swallows Ctrl-C
    and leaves the default handler behind (the next Ctrl-C would kill the process
    without a plan). So the signal is blocked while it runs and delivered afterwards.
    """
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "pthread_sigmask"):
        return fn(), False
    previous = signal.getsignal(signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        result = fn()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.getsignal(signal.SIGINT)  # a pending Ctrl-C is raised by now
    except KeyboardInterrupt:
        return result, True
    return result, False
