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

Symmetry. Blocks placed at the same offset are disjoint in time and commute, so
within a run at one offset ranks must increase. Identical blocks (same lifetime
and size) are interchangeable, so each waits for its earlier twin (`twin_prev`).
Candidates are tried lowest offset first, then by preorder rank.

Inference. Every unplaced block alive in section s starts at or above both the
last offset and its own lowest offset, and they all overlap in s, so the least
of those starts plus their total size must fit the capacity, in every section.
At the root this is the load bound; deeper it is what proves infeasibility fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

INF = float("inf")
PACKED, EXHAUSTED, LIMIT = 1, 0, -1


def search(
    size: Sequence[int],
    s0: Sequence[int],
    s1: Sequence[int],
    nsec: int,
    order: Sequence[int],
    twin_prev: Sequence[int],
    cap: int,
    node_limit: int = 0,
    seconds: float = 1e9,
) -> tuple[int, list[int], int, int]:
    """(PACKED / EXHAUSTED / LIMIT, offsets if packed, nodes, backtracks)."""
    n = len(size)
    rank = [0] * n
    for k, b in enumerate(order):
        rank[b] = k
    floor = [0] * nsec
    rem = [0] * nsec
    for b in range(n):
        for s in range(s0[b], s1[b]):
            rem[s] += size[b]
    placed = [False] * n
    off = [0] * n
    val = [0] * n
    deadline = time.perf_counter() + seconds
    counters = [0, 0]  # nodes, backtracks

    def dfs(depth: int, last: int, last_rank: int) -> int:
        if depth == n:
            return PACKED
        counters[0] += 1
        if node_limit > 0 and counters[0] > node_limit:
            return LIMIT
        if counters[0] % 1024 == 0 and time.perf_counter() > deadline:
            return LIMIT
        min_height = INF
        minob = [INF] * nsec
        for b in order:
            if placed[b]:
                continue
            v = max(floor[s0[b]:s1[b]])
            val[b] = v
            min_height = min(min_height, v + size[b])
            start = max(v, last)
            for s in range(s0[b], s1[b]):
                if start < minob[s]:
                    minob[s] = start
        if any(rem[s] > 0 and minob[s] + rem[s] > cap for s in range(nsec)):
            return EXHAUSTED
        cands = [
            b for b in order
            if not placed[b] and last <= val[b] < min_height
            and (val[b] != last or rank[b] > last_rank)
            and (twin_prev[b] < 0 or placed[twin_prev[b]])
            and val[b] + size[b] <= cap
        ]
        # Lowest offset first, rank breaking ties (a stable sort); the offsets are
        # copied because the levels below overwrite `val`.
        cands = sorted(((val[b], b) for b in cands), key=lambda vb: vb[0])
        for m, b in cands:
            top = m + size[b]
            saved = floor[s0[b]:s1[b]]
            ok = True
            for s in range(s0[b], s1[b]):
                floor[s] = top
                rem[s] -= size[b]
                if rem[s] > 0 and top + rem[s] > cap:
                    ok = False
            placed[b] = True
            off[b] = m
            r = dfs(depth + 1, m, rank[b]) if ok else EXHAUSTED
            if r == PACKED:
                return PACKED
            placed[b] = False
            floor[s0[b]:s1[b]] = saved
            for s in range(s0[b], s1[b]):
                rem[s] += size[b]
            if r == LIMIT:
                return LIMIT
            counters[1] += 1
        return EXHAUSTED

    sys.setrecursionlimit(max(sys.getrecursionlimit(), n + 500))
    result = dfs(0, 0, -1)
    return result, (list(off) if result == PACKED else []), counters[0], counters[1]
