"""Spill-free offset heuristics from the literature, on plain interval problems.

- greedy-by-size: Pisarchyk & Lee 2020 ("Efficient Memory Management for Deep
  Neural Net Inference"), offset-calculation variant. Buffers largest first, each
  into the *smallest* gap between time-overlapping placed buffers that fits
  (best fit), else on top of them. TFLM's planner differs only by taking the
  first gap that fits.
- greedy-by-breadth: same paper. Operators are visited widest working set
  first; each operator's still unplaced buffers go in largest first, best fit.
- hill-climb: TVM USMP's hill climb. Start from TFLM's greedy order, move the
  buffer that sets the peak ahead of a random buffer it conflicts with (or swap
  a random conflicting pair), re-place first fit from the first changed position,
  keep the change unless it worsens the peak (a little annealing lets it leave
  plateaus). Fixed seed, bounded iterations and time: the same input gives the
  same answer unless the time cap binds.

The algorithms take any sequence of items with `first`, `last` (closed step
interval) and `size`, so planner.offsets problems (MiniMalloc) use them too.
Offsets are sums of sizes, so buffers aligned to 16 get aligned offsets.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence

from ..analysis import buffers, load_bound
from ..ir import Graph
from ..offsets import Interval, conflicts, peak_of
from ..offsets import load_bound as items_load_bound
from ..plan import Plan
from .base import Request, plan_from_offsets, register
from .tflm_greedy import tflm_order

HILL_CLIMB_ITERS = 2000
HILL_CLIMB_SECONDS = 10.0


def _gap_offset(size: int, placed: list[tuple[int, int]], best_fit: bool) -> int:
    """Offset for a block of `size` among (offset, end) ranges sorted by offset."""
    prev = 0
    best, smallest = None, math.inf
    for off, end in placed:
        gap = off - prev
        if gap >= size:
            if not best_fit:
                return prev
            if gap < smallest:
                best, smallest = prev, gap
        prev = max(prev, end)
    return prev if best is None else best


def place(
    items: Sequence[Interval],
    order: Sequence[int],
    best_fit: bool,
    conf: list[list[int]] | None = None,
) -> list[int]:
    """Offsets for `items` placed one by one in `order`, into first or smallest fitting gaps."""
    conf = conflicts(items) if conf is None else conf
    offsets = [-1] * len(items)
    for i in order:
        ranges = sorted(
            (offsets[j], offsets[j] + items[j].size) for j in conf[i] if offsets[j] >= 0
        )
        offsets[i] = _gap_offset(items[i].size, ranges, best_fit)
    return offsets


def size_order(items: Sequence[Interval]) -> list[int]:
    """Largest first; a stable sort, so ties keep the given (TFLM insertion) order."""
    return sorted(range(len(items)), key=lambda i: -items[i].size)


def greedy_by_size_offsets(items: Sequence[Interval], conf=None) -> list[int]:
    return place(items, size_order(items), best_fit=True, conf=conf)


def step_profiles(items: Sequence[Interval]) -> list[list[int]]:
    """Without operators, a step's profile is what is alive there (checked where blocks start)."""
    starts = sorted({b.first for b in items})
    return [[i for i, b in enumerate(items) if b.first <= s <= b.last] for s in starts]


def breadth_order(items: Sequence[Interval], profiles: Iterable[Sequence[int]]) -> list[int]:
    """Profiles widest first, each one's unseen items largest first; leftovers last."""
    ranked = sorted(profiles, key=lambda p: -sum(items[i].size for i in p))
    seen: dict[int, None] = {}
    for profile in ranked:
        for i in sorted(profile, key=lambda i: -items[i].size):
            seen.setdefault(i)
    rest = [i for i in size_order(items) if i not in seen]
    return list(seen) + rest


def greedy_by_breadth_offsets(
    items: Sequence[Interval], profiles: Iterable[Sequence[int]] | None = None, conf=None
) -> list[int]:
    profiles = step_profiles(items) if profiles is None else profiles
    return place(items, breadth_order(items, profiles), best_fit=True, conf=conf)


def hill_climb_offsets(
    items: Sequence[Interval],
    seed: int = 0,
    max_iters: int = HILL_CLIMB_ITERS,
    time_limit: float = HILL_CLIMB_SECONDS,
    starts: Sequence[Sequence[int]] = (),
    conf: list[list[int]] | None = None,
) -> tuple[list[int], int]:
    """(offsets, iterations run). `starts` are extra offset vectors to beat (other heuristics)."""
    n = len(items)
    if n == 0:
        return [], 0
    conf = conflicts(items) if conf is None else conf
    sizes = [b.size for b in items]
    floor = items_load_bound(items)
    rng = random.Random(seed)
    order = tflm_order(items)  # so the first placement is TFLM's own answer
    offsets = place(items, order, best_fit=False, conf=conf)
    cost = peak_of(items, offsets)
    best_offsets, best = list(offsets), cost
    for start in starts:
        if peak_of(items, start) < best:
            best_offsets, best = list(start), peak_of(items, start)
    pos = [0] * n
    for k, i in enumerate(order):
        pos[i] = k
    deadline = time.perf_counter() + time_limit
    it = 0
    while it < max_iters and best > floor and time.perf_counter() < deadline:
        it += 1
        tops = [i for i in range(n) if offsets[i] + sizes[i] == cost]
        top = tops[rng.randrange(len(tops))]
        earlier = [j for j in conf[top] if pos[j] < pos[top]]
        if earlier and rng.random() < 0.75:
            a, b = top, earlier[rng.randrange(len(earlier))]
        else:
            a = rng.randrange(n)
            if not conf[a]:
                continue
            b = conf[a][rng.randrange(len(conf[a]))]
        p, q = sorted((pos[a], pos[b]))
        order[p], order[q] = order[q], order[p]
        pos[order[p]], pos[order[q]] = p, q
        new = _replace_from(items, order, pos, offsets, conf, p)
        new_cost = peak_of(items, new)
        # Accept sideways moves, and worse ones with a probability that cools to zero.
        temperature = 0.02 * (1 - it / max_iters)
        worse = (new_cost - cost) / cost if cost else 0.0
        if new_cost <= cost or (temperature > 0 and rng.random() < math.exp(-worse / temperature)):
            offsets, cost = new, new_cost
            if cost < best:
                best_offsets, best = list(offsets), cost
        else:
            order[p], order[q] = order[q], order[p]
            pos[order[p]], pos[order[q]] = p, q
    return best_offsets, it


def _replace_from(items, order, pos, offsets, conf, start: int) -> list[int]:
    """Re-run first fit from position `start` of `order`; earlier placements are unchanged."""
    new = list(offsets)
    for k in range(start, len(order)):
        i = order[k]
        ranges = sorted((new[j], new[j] + items[j].size) for j in conf[i] if pos[j] < k)
        new[i] = _gap_offset(items[i].size, ranges, best_fit=False)
    return new


def op_profiles(graph: Graph, index: dict[int, int]) -> list[list[int]]:
    """Per step, the buffers the step touches: graph inputs at 0, then each op's tensors."""
    profiles = [[index[t] for t in dict.fromkeys(graph.inputs) if t in index]]
    for op in graph.ops:
        touched = dict.fromkeys(op.inputs + op.outputs + op.scratch)
        profiles.append([index[t] for t in touched if t in index])
    return profiles


def _plan(request: Request, name: str, offsets_fn) -> Plan:
    start = time.perf_counter()
    bufs = buffers(request.graph)
    offsets, notes = offsets_fn(bufs)
    return plan_from_offsets(
        request.graph, bufs, offsets, name,
        solve_seconds=time.perf_counter() - start, notes=tuple(notes),
    )


@register("greedy-by-size", heuristic=True)
def plan_greedy_by_size(request: Request) -> Plan:
    return _plan(request, "greedy-by-size", lambda bufs: (greedy_by_size_offsets(bufs), ()))


@register("greedy-by-breadth", heuristic=True)
def plan_greedy_by_breadth(request: Request) -> Plan:
    def run(bufs):
        index = {b.tensor: i for i, b in enumerate(bufs)}
        profiles = op_profiles(request.graph, index)
        return greedy_by_breadth_offsets(bufs, profiles), ()

    return _plan(request, "greedy-by-breadth", run)


@register("hill-climb", heuristic=True)
def plan_hill_climb(request: Request) -> Plan:
    def run(bufs):
        conf = conflicts(bufs)
        index = {b.tensor: i for i, b in enumerate(bufs)}
        starts = [
            greedy_by_size_offsets(bufs, conf),
            greedy_by_breadth_offsets(bufs, op_profiles(request.graph, index), conf),
        ]
        limit = min(request.time_limit, HILL_CLIMB_SECONDS)
        offsets, iters = hill_climb_offsets(bufs, time_limit=limit, starts=starts, conf=conf)
        floor = load_bound(request.graph).bytes
        reached = " (the load bound)" if peak_of(bufs, offsets) == floor else ""
        return offsets, (f"hill-climb: {iters} iterations{reached}",)

    return _plan(request, "hill-climb", run)

