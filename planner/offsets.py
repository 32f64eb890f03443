"""Offsets-only packing problems: blocks with a closed time interval and a size, nothing more.

Spill-free planners place a graph's buffers by offsets alone, and MiniMalloc's
benchmark problems have exactly that shape. Keeping this type free of `Graph` lets
one set of heuristics (and one overlap check) serve both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Interval(Protocol):
    """Anything with a closed step interval and a size (analysis.Buffer, Block)."""

    @property
    def first(self) -> int: ...

    @property
    def last(self) -> int: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Block:
    id: str
    first: int  # closed interval, as analysis.Buffer
    last: int
    size: int

    def overlaps(self, other: Interval) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class OffsetProblem:
    name: str
    blocks: tuple[Block, ...]
    capacity: int | None = None  # the arena size to fit in, where the problem states one

    @staticmethod
    def from_intervals(name: str, items: Sequence[Interval], capacity: int | None = None):
        blocks = tuple(Block(str(i), b.first, b.last, b.size) for i, b in enumerate(items))
        return OffsetProblem(name, blocks, capacity)

    def load_bound(self) -> int:
        return load_bound(self.blocks)


def conflicts(items: Sequence[Interval]) -> list[list[int]]:
    """For each item, the indices of the other items alive at some common step."""
    order = sorted(range(len(items)), key=lambda i: items[i].first)
    result: list[list[int]] = [[] for _ in items]
    for k, i in enumerate(order):
        last = items[i].last
        for j in order[k + 1:]:
            if items[j].first > last:
                break  # sorted by first: j and every later item start after i ends
            result[i].append(j)
            result[j].append(i)
    return result


def load_bound(items: Sequence[Interval]) -> int:
    """Max over steps of the bytes alive: no placement goes below it."""
    events: list[tuple[int, int]] = []
    for b in items:
        events.append((b.first, b.size))
        events.append((b.last + 1, -b.size))
    # At equal steps the ends (negative deltas) go first: closed intervals [a, s-1] and [s, b]
    # are never alive together.
    events.sort(key=lambda e: (e[0], e[1]))
    live = best = 0
    for _, delta in events:
        live += delta
        best = max(best, live)
    return best


def peak_of(items: Sequence[Interval], offsets: Sequence[int]) -> int:
    return max((off + b.size for b, off in zip(items, offsets, strict=True)), default=0)


def overlap_violations(
    items: Sequence[Interval], offsets: Sequence[int], limit: int = 10
) -> list[str]:
    """Pairs alive together whose address ranges intersect, plus negative offsets.

    Deliberately shares no code with the planners: it is the independent check of
    their answers on problems that have no Graph (and so no planner.checker).
    """
    if len(offsets) != len(items):
        return [f"{len(offsets)} offsets for {len(items)} blocks"]
    errors = [f"block {i}: negative offset {off}" for i, off in enumerate(offsets) if off < 0]
    order = sorted(range(len(items)), key=lambda i: items[i].first)
    for k, i in enumerate(order):
        a = items[i]
        for j in order[k + 1:]:
            b = items[j]
            if b.first > a.last:
                break
            if offsets[i] < offsets[j] + b.size and offsets[j] < offsets[i] + a.size:
                errors.append(
                    f"blocks {i} and {j} overlap: [{offsets[i]},{offsets[i] + a.size}) and "
                    f"[{offsets[j]},{offsets[j] + b.size}) both alive at step "
                    f"{max(a.first, b.first)}"
                )
                if len(errors) >= limit:
                    return errors
    return errors
