"""Exact offsets by canonical-order search (after MiniMalloc, ASPLOS 2023; our own code).

`pack` finds offsets within a capacity or proves there are none; `minimize_peak`
searches the capacity between the load bound and a heuristic packing, using the
proofs to raise the bound. Around the search (canonical_ref.py explains the
search itself):

- Decomposition: where no block is alive across a time point the two sides are
  independent problems; each is solved alone against the same capacity.
- A portfolio of preorders with restarts: each problem is fast under one block
  order and slow under others, so every order runs with a node limit, in turn,
  and the limit grows each round. A search that finishes its tree without a
  packing proves infeasibility, whatever the order.
- Engines: the compiled core (canonical_search.c) when a C compiler is found,
  else the Python reference with a note; both give the same answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

from ..analysis import buffers
from ..errors import InfeasibleBudget, PlannerError
from ..offsets import Interval, load_bound, peak_of
from ..plan import Plan
from . import canonical_native, canonical_ref
from .base import Request, plan_from_offsets, register

FIRST_NODE_LIMIT = 1000
NODE_LIMIT_GROWTH = 2

Engine = Callable[..., tuple[int, list[int], int, int]]


@dataclass(frozen=True)
class CanonicalResult:
    offsets: list[int]  # empty when nothing was found
    peak: int
    # pack: packed / infeasible (proven) / unknown; minimize_peak: optimal / feasible
    status: str
    bound: int  # proven lower bound on the peak
    nodes: int
    backtracks: int
    engine: str  # "c" or "python"
    note: str = ""


def engine_named(name: str | None = None) -> tuple[str, Engine, str]:
    """(name, search function, note). None: C if it builds, else Python with a note."""
    if name == "python":
        return "python", canonical_ref.search, ""
    if canonical_native.load() is not None:
        return "c", canonical_native.search, ""
    if name == "c":
        raise PlannerError(f"canonical search: {canonical_native.UNAVAILABLE}")
    note = f"canonical search in Python ({canonical_native.UNAVAILABLE}); expect it slower"
    return "python", canonical_ref.search, note


@dataclass(frozen=True)
class _Part:
    """Blocks no other block of the problem overlaps in time, in sections of their own."""

    index: list[int]  # positions in the caller's block list
    size: list[int]
    s0: list[int]
    s1: list[int]
    nsec: int
    orders: list[list[int]]
    twins: list[list[int]]  # per order: each block's previous identical block, or -1
    keys: list[tuple]  # per order: (heuristic, resort, width, area, tie), see canonical_ref


def _parts(blocks: Sequence[Interval]) -> list[_Part]:
    live = sorted((i for i, b in enumerate(blocks) if b.size > 0), key=lambda i: blocks[i].first)
    groups: list[list[int]] = []
    reach = None
    for i in live:
        if reach is None or blocks[i].first > reach:
            groups.append([])
            reach = blocks[i].last
        groups[-1].append(i)
        reach = max(reach, blocks[i].last)
    return [_part(blocks, g) for g in groups]


def _part(blocks: Sequence[Interval], index: list[int]) -> _Part:
    items = [blocks[i] for i in index]
    points = sorted({b.first for b in items} | {b.last + 1 for b in items})
    at = {p: k for k, p in enumerate(points)}
    s0 = [at[b.first] for b in items]
    s1 = [at[b.last + 1] for b in items]
    nsec = len(points) - 1
    load = [0] * nsec
    for b, a, z in zip(items, s0, s1, strict=True):
        for s in range(a, z):
            load[s] += b.size
    size = [b.size for b in items]
    width = [b.last - b.first + 1 for b in items]
    area = [w * s for w, s in zip(width, size, strict=True)]
    crowd = [max(load[a:z]) for a, z in zip(s0, s1, strict=True)]  # busiest section it spans
    # Ties go by the caller's block order. MiniMalloc's three preorders and one more;
    # measured on the challenging set each problem is fast under one of them, none
    # under all (by size or by start: none).
    # Each preorder twice: keeping it on both sides of a split, and made again there
    # from what is left (each wins on some problems).
    keys = [(h, resort, width, area, index)
            for resort in (False, True) for h in range(canonical_ref.HEURISTICS)]
    orders = [sorted(range(len(items)), key=canonical_ref.preorder_key(h, width, area, crowd,
                                                                       index))
              for h, *_ in keys]
    return _Part(index, size, s0, s1, nsec, orders, [_twins(items, o) for o in orders], keys)


def _twins(items: Sequence[Interval], order: list[int]) -> list[int]:
    prev = [-1] * len(items)
    seen: dict[tuple[int, int, int], int] = {}
    for b in order:
        key = (items[b].first, items[b].last, items[b].size)
        prev[b] = seen.get(key, -1)
        seen[key] = b
    return prev


def pack(
    blocks: Sequence[Interval],
    capacity: int,
    time_limit: float = 10.0,
    engine: str | None = None,
    node_limit: int | None = None,
) -> CanonicalResult:
    """Offsets with every block inside [0, capacity), or a proof that there are none.

    `node_limit` caps each single search (tests use it for determinism); by default
    the portfolio restarts with growing limits until `time_limit`.
    """
    name, run, note = engine_named(engine)
    floor = max(load_bound(blocks), max((b.size for b in blocks), default=0))
    if floor > capacity:  # the load bound alone proves it
        return CanonicalResult([], 0, "infeasible", floor, 0, 0, name, note)
    deadline = time.perf_counter() + time_limit
    offsets = [0] * len(blocks)
    nodes = backtracks = 0
    for part in _parts(blocks):
        status, found, n, bt = _pack_part(part, capacity, deadline, run, node_limit)
        nodes, backtracks = nodes + n, backtracks + bt
        if status != canonical_ref.PACKED:
            proven = status == canonical_ref.EXHAUSTED
            return CanonicalResult([], 0, "infeasible" if proven else "unknown",
                                   capacity + 1 if proven else floor, nodes, backtracks,
                                   name, note)
        for i, off in zip(part.index, found, strict=True):
            offsets[i] = off
    return CanonicalResult(offsets, peak_of(blocks, offsets), "packed", floor, nodes,
                           backtracks, name, note)


def _pack_part(part: _Part, capacity: int, deadline: float, run: Engine,
               node_limit: int | None) -> tuple[int, list[int], int, int]:
    limit = node_limit or FIRST_NODE_LIMIT
    nodes = backtracks = 0
    while True:
        for order, twins, keys in zip(part.orders, part.twins, part.keys, strict=True):
            left = deadline - time.perf_counter()
            if left <= 0:
                return canonical_ref.LIMIT, [], nodes, backtracks
            status, offsets, n, bt = run(part.size, part.s0, part.s1, part.nsec, order, twins,
                                         keys, capacity, limit, left)
            nodes, backtracks = nodes + n, backtracks + bt
            if status != canonical_ref.LIMIT:
                return status, offsets, nodes, backtracks
        if node_limit is not None:
            return canonical_ref.LIMIT, [], nodes, backtracks
        limit *= NODE_LIMIT_GROWTH


def minimize_peak(
    blocks: Sequence[Interval],
    time_limit: float = 10.0,
    engine: str | None = None,
    start: Sequence[int] | None = None,
    node_limit: int | None = None,
) -> CanonicalResult:
    """The lowest peak: bisection between the proven bound and the best packing found.

    `start` is a valid packing to improve on (default: the better of two greedy
    heuristics). Capacities that time out are skipped upwards without raising the
    proven bound, so the answer stays valid and says whether it is optimal.
    """
    name, _run, note = engine_named(engine)
    if not blocks:
        return CanonicalResult([], 0, "optimal", 0, 0, 0, name, note)
    best = list(start) if start is not None else _greedy_start(blocks)
    peak = peak_of(blocks, best)
    bound = max(load_bound(blocks), max(b.size for b in blocks))
    # Canonical peaks are sums of sizes: only multiples of their gcd need trying.
    unit = reduce(math.gcd, (b.size for b in blocks if b.size > 0), 0) or 1
    lo = -(-bound // unit) * unit
    nodes = backtracks = 0
    deadline = time.perf_counter() + time_limit
    first = True
    while lo < peak:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        probes = max(1, math.ceil(math.log2((peak - lo) / unit + 1)))
        # The bound first (it is often the optimum), then bisection.
        trial = lo if first else lo + ((peak - unit - lo) // unit // 2) * unit
        first = False
        got = pack(blocks, trial, left / probes, engine=name, node_limit=node_limit)
        nodes, backtracks = nodes + got.nodes, backtracks + got.backtracks
        if got.status == "packed":
            best, peak = got.offsets, got.peak
        elif got.status == "infeasible":
            lo = trial + unit
            bound = max(bound, lo)
        else:
            lo = trial + unit  # unresolved: look higher, prove nothing
    bound = min(bound, peak)
    status = "optimal" if peak <= bound else "feasible"
    return CanonicalResult(best, peak, status, bound, nodes, backtracks, name, note)


def _greedy_start(blocks: Sequence[Interval]) -> list[int]:
    from .offset_heuristics import greedy_by_size_offsets
    from .tflm_greedy import greedy_offsets

    return min((greedy_offsets(blocks), greedy_by_size_offsets(blocks)),
               key=lambda offs: peak_of(blocks, offs))


def describe(result: CanonicalResult) -> str:
    """One line for plan notes and benchmark logs."""
    text = (f"canonical search ({result.engine}): {result.status}, {result.nodes:,} nodes, "
            f"{result.backtracks:,} backtracks")
    return f"{text}; {result.note}" if result.note else text


@register("canonical")
def plan_canonical(request: Request) -> Plan:
    """Spill-free plan at the lowest peak the canonical search proves (or reaches in time).

    A budget below the proven bound is refused: no spill-free plan fits it.
    """
    start = time.perf_counter()
    bufs = buffers(request.graph)
    result = minimize_peak(bufs, time_limit=request.time_limit)
    if request.budget is not None and result.bound > request.budget:
        raise InfeasibleBudget(
            f"budget {request.budget:,} B is infeasible: the canonical offsets search proved "
            f"that no spill-free plan fits it; at least {result.bound:,} B are needed")
    return plan_from_offsets(
        request.graph, bufs, result.offsets, "canonical", status=result.status,
        bound_bytes=result.bound, solve_seconds=time.perf_counter() - start,
        notes=(describe(result),))
