"""Test-only stand-in for helper timing's planner/async_windows.py while it is absent.

`with_windows(graph, plan, profile)` opens each fetch's window backwards as far as the
arena allows without moving anything (at most DEPTH steps, after the tensor's previous
segment and its spill). `install()` registers it only when the real module is missing.
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace

DEPTH = 3


def with_windows(graph, plan, profile):
    segs = list(plan.segments)
    transfers = list(plan.transfers)
    for n, tr in enumerate(transfers):
        if tr.kind != "fetch" or not profile.storage(tr.storage).async_channel:
            continue
        idx = next(j for j, s in enumerate(segs) if s.tensor == tr.tensor and s.part == tr.part
                   and s.first == tr.step and s.role == "tensor")
        seg = segs[idx]
        spill = next(t for t in transfers if t.kind == "spill" and t.tensor == tr.tensor
                     and t.part == tr.part)
        before = max((s.last for s in segs if s.tensor == seg.tensor and s.part == seg.part
                      and s.role == "tensor" and s.last < seg.first), default=-1)
        first = seg.first
        while first - 1 > max(before, spill.window[1]) and seg.first - (first - 1) <= DEPTH:
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
    import planner

    try:
        __import__("planner.async_windows")
    except ImportError:
        module = types.ModuleType("planner.async_windows")
        module.with_windows = with_windows
        sys.modules["planner.async_windows"] = module
        planner.async_windows = module
