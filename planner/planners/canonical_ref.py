"""The canonical-order offsets search in plain Python: the reference implementation.

canonical_search.c is the same search compiled; the tests run both on the same
inputs and expect the same offsets and the same node counts. This file carries the
reasoning.

Canonical solutions. Among all packings take one with the least sum of offsets
and list its blocks by (offset, preorder rank). Placed in that order, each block's
offset is exactly the highest floor over its lifetime (the floor of a section
being the top of the blocks placed there so far): anything lower would be a
packing with a smaller sum. So the search only chooses *which* block comes next;
its offset follows, and offsets never decrease along the way.

Dominance. The next block b cannot sit at or above the top of another unplaced
block c put at c's own lowest offset: that slot under b is empty now and stays
empty (every later block sits at or above b), so c could drop into it and the sum
would shrink. Blocks whose lowest offset is below the last placed offset wait
for something to raise them.

Hatless pruning. If the block just tried raised no free block (nothing alive with
it sits below its top) and its subtree failed, that subtree was the rest of the
problem unchanged, with the block in a slot nobody else can use: the remaining
candidates, all at or above it, fail too.

Symmetry. Blocks placed at the same offset are disjoint in time and commute, so
within a run at one offset ranks must increase. Identical blocks (same lifetime
and size) are interchangeable, so each waits for its earlier twin (`twin_prev`).
Candidates are tried lowest offset first, then by preorder rank.

Inference. Every unplaced block alive in section s starts at or above both the
last offset and its own lowest offset, and they all overlap in s, so the least
of those starts plus their total size must fit the capacity, in every section.
At the root this is the load bound; deeper it is what proves infeasibility fast.

Decomposition. When no free block is alive across some section boundary, the two
sides share nothing but the fixed floors: each is searched alone (the other
side's blocks parked) and a failure of either fails the node, instead of
re-searching one side for every way of packing the other. Each side starts its
own canonical order afresh at offset 0 over the floors (its least-sum completion
need not respect the offsets placed so far, only the floors), with a preorder
made again from what is left to place there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

INF = float("inf")
PACKED, EXHAUSTED, LIMIT = 1, 0, -1


FREE, PLACED, PARKED = 0, 1, 2
HEURISTICS = 4


def preorder_key(heuristic: int, width, area, crowd, tie):
    """Sort key of the preorders: 0 longest lifetime first, 1 and 2 busiest time
    first, 3 largest area first (crowd: the most bytes alive in any of its sections),
    ties by `tie`. The C core implements the same keys (`before`)."""
    fields = {0: (width, area, crowd), 1: (crowd, area, width), 2: (crowd, width, area),
              3: (area, width, crowd)}[heuristic]
    return lambda i: (*(-f[i] for f in fields), tie[i])


def search(
    size: Sequence[int],
    s0: Sequence[int],
    s1: Sequence[int],
    nsec: int,
    order: Sequence[int],
    twin_prev: Sequence[int],
    keys: tuple[int, bool, Sequence[int], Sequence[int], Sequence[int]],
    cap: int,
    node_limit: int = 0,
    seconds: float = 1e9,
) -> tuple[int, list[int], int, int]:
    """(PACKED / EXHAUSTED / LIMIT, offsets if packed, nodes, backtracks).

    `order` is the preorder made by `preorder_key` from `keys` = (heuristic, resort,
    width, area, tie); with `resort` each side of a split is preordered again the
    same way, else it keeps `order`.
    """
    heuristic, resort, width, area, tie = keys
    n = len(size)
    rank = [0] * n
    for k, b in enumerate(order):
        rank[b] = k
    floor = [0] * nsec
    rem = [0] * nsec
    for b in range(n):
        for s in range(s0[b], s1[b]):
            rem[s] += size[b]
    state = [FREE] * n
    off = [0] * n
    val = [0] * n
    trail: list[tuple[int, list[int]]] = []  # placed blocks with the floors they covered
    deadline = time.perf_counter() + seconds
    counters = [0, 0, n]  # nodes, backtracks, free blocks

    def place(b: int, offset: int) -> None:
        trail.append((b, floor[s0[b]:s1[b]]))
        for s in range(s0[b], s1[b]):
            floor[s] = offset + size[b]
            rem[s] -= size[b]
        state[b] = PLACED
        off[b] = offset
        counters[2] -= 1

    def unplace_last() -> None:
        b, saved = trail.pop()
        floor[s0[b]:s1[b]] = saved
        for s in range(s0[b], s1[b]):
            rem[s] += size[b]
        state[b] = FREE
        counters[2] += 1

    def has_hat(b: int, top: int) -> bool:
        """Would a block topping out at `top` over b's sections raise a free block?"""
        return any(
            c != b and state[c] == FREE and s0[c] < s1[b] and s0[b] < s1[c]
            and max(floor[s0[c]:s1[c]]) < top
            for c in range(n)
        )

    def find_cut() -> int:
        """The first boundary no free block is alive across, free blocks on both sides."""
        free = [b for b in range(n) if state[b] == FREE]
        lo, hi = min(s0[b] for b in free), max(s1[b] for b in free)
        cross = [0] * (nsec + 2)
        for b in free:
            cross[s0[b] + 1] += 1
            cross[s1[b]] -= 1
        alive = 0
        for k in range(1, hi):
            alive += cross[k]
            if k > lo and alive == 0:
                return k
        return 0

    def reorder() -> list[int]:
        """The free blocks in a fresh preorder (crowd from what is left), ranked."""
        crowd = {b: max(rem[s0[b]:s1[b]]) for b in range(n) if state[b] == FREE}
        side = sorted(crowd, key=preorder_key(heuristic, width, area, crowd, tie))
        for k, b in enumerate(side):
            rank[b] = k
        return side

    def split(depth: int, order: list[int], cut: int) -> int:
        mark = len(trail)
        right = [b for b in range(n) if state[b] == FREE and s0[b] >= cut]
        for b in right:
            state[b] = PARKED
        counters[2] -= len(right)
        r = dfs(depth + 1, reorder() if resort else order, 0, -1)
        for b in right:
            state[b] = FREE
        counters[2] += len(right)
        if r == PACKED:
            r = dfs(depth + 1, reorder() if resort else order, 0, -1)
            if r != PACKED:
                while len(trail) > mark:
                    unplace_last()
        for k, b in enumerate(order):  # the caller's ranks
            rank[b] = k
        return r

    def dfs(depth: int, order: list[int], last: int, last_rank: int) -> int:
        if counters[2] == 0:
            return PACKED
        counters[0] += 1
        if node_limit > 0 and counters[0] > node_limit:
            return LIMIT
        if counters[0] % 1024 == 0 and time.perf_counter() > deadline:
            return LIMIT
        min_height = INF
        minob = [INF] * nsec
        for b in order:
            if state[b] != FREE:
                continue
            v = max(floor[s0[b]:s1[b]])
            val[b] = v
            min_height = min(min_height, v + size[b])
            start = max(v, last)
            for s in range(s0[b], s1[b]):
                if start < minob[s]:
                    minob[s] = start
        if any(minob[s] != INF and minob[s] + rem[s] > cap for s in range(nsec)):
            return EXHAUSTED
        cut = find_cut()
        if cut:
            return split(depth, order, cut)
        cands = [
            b for b in order
            if state[b] == FREE and last <= val[b] < min_height
            and (val[b] != last or rank[b] > last_rank)
            and (twin_prev[b] < 0 or state[twin_prev[b]] == PLACED)
            and val[b] + size[b] <= cap
        ]
        # Lowest offset first, rank breaking ties (a stable sort); the offsets are
        # copied because the levels below overwrite `val`.
        for m, b in sorted(((val[b], b) for b in cands), key=lambda vb: vb[0]):
            place(b, m)
            ok = all(rem[s] <= 0 or m + size[b] + rem[s] <= cap for s in range(s0[b], s1[b]))
            r = dfs(depth + 1, order, m, rank[b]) if ok else EXHAUSTED
            if r == PACKED:
                return PACKED
            unplace_last()
            if r == LIMIT:
                return LIMIT
            counters[1] += 1
            if not has_hat(b, m + size[b]):
                break
        return EXHAUSTED

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * n + 500))
    result = dfs(0, list(order), 0, -1)
    return result, (list(off) if result == PACKED else []), counters[0], counters[1]
