"""Async post-pass for any plan: widen each transfer's window where free arena space allows.

A fetch issued earlier needs its destination bytes free from its issue on; a spill
completed later holds its source bytes longer (plan.py states the windows). The pass
never moves a segment, so the peak never rises; it only stretches a transfer's own
segment into steps where no other segment uses those bytes. Every widening is kept
only if the end-to-end latency (planner/latency.py) does not get worse, so the result
is never slower than the plan it was given, and never slower than that plan blocking.

This gives every planner, TinySeg's greedy included, asynchronous transfers of its own
in the benchmarks; the ILP's window model (planner/planners/ilp/windows.py) chooses
windows and placement together instead.
"""

from __future__ import annotations

from dataclasses import replace

from .checker import check
from .compute import op_seconds
from .device import DeviceProfile
from .ir import Graph
from .latency import end_to_end
from .plan import Plan, Segment, Transfer

# Candidate window ends tried per transfer; beyond this, evenly spaced ones.
MAX_CANDIDATES = 48


def with_windows(graph: Graph, plan: Plan, profile: DeviceProfile) -> Plan:
    """`plan` with async windows wherever they fit and do not slow the inference."""
    dma = {s.name for s in profile.storages if s.async_channel}
    if not any(t.storage in dma and t.kind in ("spill", "fetch") for t in plan.transfers):
        return plan
    ops = op_seconds(graph, profile)
    best = end_to_end(graph, plan, profile, ops).total_seconds
    current = plan
    order = sorted(range(len(plan.transfers)),
                   key=lambda i: (-plan.transfers[i].nbytes, i))
    widened = 0
    for i in order:
        tr = current.transfers[i]
        if tr.storage not in dma or tr.kind not in ("spill", "fetch"):
            continue
        if tr.kind == "spill" and tr.part is not None:
            continue  # a part is compacted right after its spill (checker rule)
        choice, choice_time = None, best
        for candidate in _candidates(graph, current, i):
            t = end_to_end(graph, candidate, profile, ops).total_seconds
            if t < choice_time - 1e-12:
                choice, choice_time = candidate, t
        # The checker has the last word on each widening (it re-derives every rule).
        if choice is not None and not check(graph, choice):
            best = choice_time
            current = choice
            widened += 1
    if widened == 0:
        return plan
    note = f"async windows: {widened} transfer(s) widened where free arena space allowed"
    return replace(current, notes=(*current.notes, note))


def _candidates(graph: Graph, plan: Plan, i: int) -> list[Plan]:
    """Plans with transfer i's window widened by one step, two, ..., as far as space allows."""
    tr = plan.transfers[i]
    segs = plan.segments
    own = _own_segment(plan, tr)
    if own is None:
        return []
    seg_index = segs.index(own)
    if tr.kind == "spill":
        if tr.window[1] > own.last:
            return []  # not a valid window to start from (the checker says why)
        # Up to the source segment's own end the window costs no bytes; beyond, the
        # segment is stretched into free space.
        steps = list(range(tr.window[1] + 1, _spill_limit(plan, tr, own) + 1))
        return [_with(plan, i, replace(tr, issue=tr.step, complete=c), seg_index,
                      replace(own, last=max(own.last, c))) for c in _thin(steps)]
    limit = _fetch_limit(plan, tr, own)
    steps = list(range(own.first - 1, limit - 1, -1))  # earliest last: try nearer first
    return [_with(plan, i, replace(tr, issue=s, complete=tr.step), seg_index,
                  replace(own, first=s)) for s in _thin(steps)]


def _own_segment(plan: Plan, tr: Transfer) -> Segment | None:
    """The spill's source segment (holding its step) or the fetch's destination segment."""
    for s in plan.segments_of(tr.tensor, tr.part):
        if tr.kind == "spill" and s.first <= tr.step <= s.last:
            return s
        if tr.kind == "fetch" and s.first == tr.window[0]:
            return s
    return None


def _free(plan: Plan, seg: Segment, first: int, last: int) -> bool:
    """Whether seg's bytes are unused by every other segment over steps first..last."""
    return not any(o is not seg and o.first <= last and first <= o.last
                   and o.overlaps_in_space(seg) for o in plan.segments)


def _spill_limit(plan: Plan, tr: Transfer, own: Segment) -> int:
    """Latest step the spill may complete: space free, before the tensor comes back."""
    later = [s.first for s in plan.segments_of(tr.tensor, tr.part) if s.first > own.last]
    later += [t.window[0] for t in plan.transfers
              if t.tensor == tr.tensor and t.part == tr.part and t.kind != "spill"]
    limit = min([plan.num_steps - 1] + [f - 1 for f in later])
    c = own.last
    while c < limit and _free(plan, own, c + 1, c + 1):
        c += 1
    return c


def _fetch_limit(plan: Plan, tr: Transfer, own: Segment) -> int:
    """Earliest step the fetch may be issued: space free, after its spill completed."""
    earlier = [s.last for s in plan.segments_of(tr.tensor, tr.part) if s.last < own.first]
    earlier += [t.window[1] for t in plan.transfers
                if t.tensor == tr.tensor and t.part == tr.part and t.kind == "spill"]
    # Streams of the tensor read storage at their step; a fetch after one keeps after it.
    earlier += [t.step for t in plan.transfers if t.tensor == tr.tensor and t.part == tr.part
                and t.kind == "stream" and t.step < own.first]
    floor = max(earlier + [0]) + 1
    s = own.first
    while s > floor and _free(plan, own, s - 1, s - 1):
        s -= 1
    return s


def _thin(steps: list[int]) -> list[int]:
    if len(steps) <= MAX_CANDIDATES:
        return steps
    stride = len(steps) / MAX_CANDIDATES
    picked = [steps[int(k * stride)] for k in range(MAX_CANDIDATES)]
    return sorted(set(picked + [steps[-1]]), key=steps.index)


def _with(plan: Plan, i: int, tr: Transfer, seg_index: int, seg: Segment) -> Plan:
    transfers = list(plan.transfers)
    transfers[i] = tr
    segments = list(plan.segments)
    segments[seg_index] = seg
    return replace(plan, transfers=tuple(transfers), segments=tuple(segments))
