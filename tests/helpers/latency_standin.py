"""Test-only stand-ins for helper timing's modules, used while they are absent.

planner/compute.py (op_seconds), planner/latency.py (end_to_end) and
planner/async_windows.py (with_windows) come from branch `timing`; until it is merged,
`install()` puts these small versions in sys.modules. They follow the shared design
(notes: "#16 Async transfers and latency"): ops run in order; a blocking transfer stalls
the processor; an async one starts when issued and its channel is free (one transfer at
a time per storage, first in first out) and the op after its window waits for it.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, replace

from planner.analysis import stream_rows
from planner.costs import transfer_seconds

# Per-op compute seconds a test sets: {graph name: (seconds per op, ...)}.
COMPUTE: dict[str, tuple[float, ...]] = {}
DEFAULT_OP_SECONDS = 1e-3


def op_seconds(graph, profile) -> tuple[float, ...]:
    return COMPUTE.get(graph.name, (DEFAULT_OP_SECONDS,) * len(graph.ops))


@dataclass(frozen=True)
class Latency:
    total_seconds: float
    compute_seconds: float
    exposed_seconds: float


def _async(profile, name: str) -> bool:
    return bool(getattr(profile.storage(name), "dma", False))


def end_to_end(graph, plan, profile) -> Latency:
    ops = op_seconds(graph, profile)
    compute = [0.0, *ops]
    t = 0.0
    free: dict[str, float] = {}
    done: dict[int, float] = {}  # transfer index -> end time

    def cost(tr) -> float:
        rows = stream_rows(graph.tensors[tr.tensor], graph.layout)
        return transfer_seconds(profile.storage(tr.storage), tr.kind, tr.nbytes, rows)

    def run(i, tr, now) -> float:
        start = max(now, free.get(tr.storage, 0.0))
        free[tr.storage] = start + cost(tr)
        done[i] = free[tr.storage]
        return done[i]

    trs = list(enumerate(plan.transfers))
    for k in range(plan.num_steps):
        for i, tr in trs:  # async fetches issued before the op at k
            first, _ = tr.window
            if tr.kind == "fetch" and first == k and first < tr.step \
                    and _async(profile, tr.storage):
                run(i, tr, t)
        for i, tr in trs:  # what must be in the arena before the op at k
            if tr.kind in ("fetch", "stream") and tr.step == k:
                t = max(t, done[i]) if i in done else run(i, tr, t)
        t += compute[k]
        for i, tr in trs:  # spills after the op at k
            if tr.kind in ("spill", "spill_rows") and tr.step == k:
                end = run(i, tr, t)
                if tr.window[1] == k or not _async(profile, tr.storage):
                    t = end
        for i, tr in trs:  # async spills whose window ends with the op at k
            if tr.kind == "spill" and tr.window[1] == k and tr.step < k:
                t = max(t, done[i])
    total = t
    return Latency(total, sum(ops), total - sum(ops))


def with_windows(graph, plan, profile, depth: int = 3):
    """Open each fetch's window as far as the arena allows without moving anything: the
    destination segment grows backwards while its address range is free."""
    segs = list(plan.segments)
    transfers = list(plan.transfers)
    for n, tr in enumerate(transfers):
        if tr.kind != "fetch" or not _async(profile, tr.storage):
            continue
        idx = next(j for j, s in enumerate(segs) if s.tensor == tr.tensor and s.part == tr.part
                   and s.first == tr.step and s.role == "tensor")
        seg = segs[idx]
        first = seg.first
        spill = next(t for t in transfers if t.kind == "spill" and t.tensor == tr.tensor
                     and t.part == tr.part)
        own_last = max((s.last for s in segs if s.tensor == seg.tensor and s.part == seg.part
                        and s.last < seg.first), default=-1)
        while first - 1 > max(own_last, spill.window[1]) and seg.first - (first - 1) <= depth:
            trial = replace(seg, first=first - 1)
            if any(o is not seg and o.overlaps_in_time(trial) and o.overlaps_in_space(trial)
                   for o in segs):
                break
            first -= 1
        if first < seg.first:
            segs[idx] = replace(seg, first=first)
            transfers[n] = replace(tr, issue=first)
    return replace(plan, segments=tuple(segs), transfers=tuple(transfers))


def install() -> None:
    """Register the stand-ins for whichever of timing's modules is missing."""
    import planner

    for name, attrs in (("compute", {"op_seconds": op_seconds}),
                        ("latency", {"end_to_end": end_to_end, "Latency": Latency}),
                        ("async_windows", {"with_windows": with_windows})):
        full = f"planner.{name}"
        try:
            __import__(full)
            continue
        except ImportError:
            pass
        module = types.ModuleType(full)
        module.__dict__.update(attrs)
        sys.modules[full] = module
        setattr(planner, name, module)
