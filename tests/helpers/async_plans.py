"""Asynchronous windows on a blocking plan, built in the arena bytes it leaves free.

`widen(plan)` gives every whole-tensor spill and every fetch the longest window (up to `reach`
steps) over which its buffer's bytes are free: a spill's source segment is held on past
the spill until its completion, a fetch's destination segment starts at its issue. No
offset moves, so the peak is the same; a fetch is issued only after its spill completes.
This stands in for the ILP's own windows in the runtime tests (planner/async_windows.py of
the timing branch does the same for the planner side).

`plant_*` break a widened plan on purpose, by hand, bypassing the checker.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from planner.plan import Plan, Segment, Transfer


def _free(segs: list[Segment], seg: Segment, step: int) -> bool:
    """No other segment holds any of seg's bytes at `step`."""
    return not any(o is not seg and o.first <= step <= o.last and o.overlaps_in_space(seg)
                   for o in segs)


def widen(plan: Plan, reach: int = 3, kinds: tuple[str, ...] = ("spill", "fetch")) -> Plan:
    segs = list(plan.segments)
    transfers = list(plan.transfers)
    read_back: dict[tuple[int, int | None], int] = {}
    for tr in transfers:
        if tr.kind in ("fetch", "stream"):
            key = (tr.tensor, tr.part)
            read_back[key] = min(read_back.get(key, tr.step), tr.step)
    spill_end = {(tr.tensor, tr.part): tr.window[1] for tr in transfers if tr.kind == "spill"}
    for i, tr in enumerate(transfers):
        if tr.kind != "spill" or tr.part is not None or "spill" not in kinds:
            continue
        k = next(j for j, s in enumerate(segs) if s.tensor == tr.tensor and s.part is None
                 and s.role == "tensor" and s.first <= tr.step <= s.last)
        seg = segs[k]
        limit = min(tr.step + reach, plan.num_steps - 1,
                    read_back.get((tr.tensor, None), plan.num_steps) - 1)
        end = tr.step
        while end < limit and (end + 1 <= seg.last or _free(segs, seg, end + 1)):
            end += 1
        spill_end[(tr.tensor, None)] = end
        if end > tr.step:
            transfers[i] = replace(tr, issue=tr.step, complete=end)
            if end > seg.last:
                segs[k] = replace(seg, last=end)
    for i, tr in enumerate(transfers):
        if tr.kind != "fetch" or "fetch" not in kinds:
            continue
        key = (tr.tensor, tr.part)
        k = next(j for j, s in enumerate(segs) if (s.tensor, s.part) == key
                 and s.role == "tensor" and s.first == tr.step)
        seg = segs[k]
        before = [s.last for s in segs if (s.tensor, s.part) == key
                  and s.role == "tensor" and s.last < tr.step]
        floor = max(1, tr.step - reach, spill_end.get(key, 0) + 1, max(before, default=0) + 1)
        start = tr.step
        while start > floor and _free(segs, seg, start - 1):
            start -= 1
        if start < tr.step:
            transfers[i] = replace(tr, issue=start, complete=tr.step)
            segs[k] = replace(seg, first=start)
    return replace(plan, segments=tuple(segs), transfers=tuple(transfers))


def windows(plan: Plan) -> list[Transfer]:
    """The transfers of a plan with a window longer than one step."""
    return [tr for tr in plan.transfers if tr.window[0] < tr.window[1]]


def plant_spill_past_its_source(plan: Plan) -> Plan:
    """A spill whose window outlives its source segment: the bytes are reusable (and
    poisoned or trashed) while the spill is still in flight."""
    segs = list(plan.segments)
    transfers = list(plan.transfers)
    for i, tr in enumerate(transfers):
        if tr.kind != "spill" or tr.part is not None:
            continue
        k = next(j for j, s in enumerate(segs) if s.tensor == tr.tensor and s.part is None
                 and s.role == "tensor" and s.first <= tr.step <= s.last)
        later = [t.window[0] for t in transfers if t.tensor == tr.tensor and t.kind != "spill"]
        complete = max(tr.window[1], tr.step + 1)
        if later and complete >= min(later):
            continue
        # The source segment ends at the spill step: its bytes are free from step + 1 on.
        segs[k] = replace(segs[k], last=tr.step)
        transfers[i] = replace(tr, issue=tr.step, complete=complete)
        return replace(plan, segments=tuple(segs), transfers=tuple(transfers))
    raise ValueError("no whole-tensor spill to plant on")


def plant_fetch_completing_late(plan: Plan, graph) -> Plan:
    """A fetch that completes after a read of its destination: that read sees poison."""
    segs = list(plan.segments)
    transfers = list(plan.transfers)
    for i, tr in enumerate(transfers):
        if tr.kind != "fetch" or tr.part is not None:
            continue
        k = next(j for j, s in enumerate(segs) if s.tensor == tr.tensor and s.part is None
                 and s.role == "tensor" and s.first <= tr.window[0] and tr.step <= s.last)
        seg = segs[k]
        reads = sorted(op.index + 1 for op in graph.ops if tr.tensor in op.inputs
                       and tr.step <= op.index + 1 <= seg.last)
        # Complete just after the first read (held one step longer if need be, where the
        # bytes are free): that read still sees the poison.
        done = reads[0] + 1 if reads else seg.last + 1
        if done >= plan.num_steps or (done > seg.last and not _free(segs, seg, done)):
            continue
        segs[k] = replace(seg, last=max(seg.last, done))
        transfers[i] = replace(tr, step=done, issue=tr.window[0], complete=done)
        return replace(plan, segments=tuple(segs), transfers=tuple(transfers))
    raise ValueError("no fetch whose destination is read twice")


def hold(plan: Plan, tensor: int, after: int = 0, before: int = 0, longer: int = 0) -> Plan:
    """Room for windows: tensor's (whole, part None) segments each held `after` steps past
    their end (the first one, a spill's source) or started `before` steps earlier and held
    `longer` steps longer (the later ones, fetch destinations), then every segment re-placed
    first-fit, largest first. Only
    for plans without parts or line buffers (the hand-built fetch plans)."""
    if plan.parts or any(s.role != "tensor" for s in plan.segments):
        raise ValueError("hold re-places whole-tensor segments only")
    mine = sorted((s for s in plan.segments if s.tensor == tensor), key=lambda s: s.first)
    spans = {}
    for i, s in enumerate(plan.segments):
        first, last = s.first, s.last
        if s.tensor == tensor and s is mine[0]:
            last = min(plan.num_steps - 1, last + after)
        elif s.tensor == tensor:
            first = max(mine[0].last + after + 1, first - before)
            last = min(plan.num_steps - 1, last + longer)
        spans[i] = (first, last)
    placed: list[tuple[int, int, int, int]] = []  # first, last, offset, size
    offsets = {}
    for i in sorted(spans, key=lambda i: (-plan.segments[i].size, spans[i][0])):
        first, last = spans[i]
        size = plan.segments[i].size
        offset = 0
        for _f, _la, o, sz in sorted((p for p in placed if p[0] <= last and first <= p[1]),
                                   key=lambda p: p[2]):
            if offset + size <= o:
                break
            offset = max(offset, o + sz)
        offsets[i] = offset
        placed.append((first, last, offset, size))
    segs = tuple(replace(s, first=spans[i][0], last=spans[i][1], offset=offsets[i])
                 for i, s in enumerate(plan.segments))
    peak = max(s.end for s in segs)
    # The fetch (now issued earlier) keeps its step; its segment starts at its issue.
    transfers = tuple(
        replace(tr, issue=next(s.first for s in segs if s.tensor == tensor
                               and s.first <= tr.step <= s.last), complete=tr.step)
        if tr.kind == "fetch" and tr.tensor == tensor and before else tr
        for tr in plan.transfers)
    transfers = tuple(
        replace(tr, issue=tr.step, complete=next(s.last for s in segs if s.tensor == tensor
                                                 and s.first <= tr.step <= s.last))
        if tr.kind == "spill" and tr.tensor == tensor and after else tr
        for tr in transfers)
    return replace(plan, segments=segs, transfers=transfers, peak_bytes=peak)


def blocking(plan: Plan) -> Plan:
    """The same plan with every transfer blocking: same offsets, a spill's source held as
    long, a fetch's destination starting at its step (a blocking fetch starts its segment)."""
    segs = list(plan.segments)
    for tr in plan.transfers:
        if tr.kind == "fetch" and tr.window[0] < tr.step:
            k = next(j for j, s in enumerate(segs) if (s.tensor, s.part) == (tr.tensor, tr.part)
                     and s.role == "tensor" and s.first == tr.window[0])
            segs[k] = replace(segs[k], first=tr.step)
    return replace(plan, segments=tuple(segs), transfers=tuple(
        replace(t, issue=None, complete=None) for t in plan.transfers))


# The exact planner's own windows (--objective latency): irregular_int8 on qspi-flash gets
# a spill and a fetch window at 75 % and 90 % of tflm-greedy (measured when written).
ILP_LATENCY_CASES = (("irregular_int8", 0.9), ("irregular_int8", 0.75))
_LATENCY_PLANS: dict = {}


def ilp_latency_plan(name: str, fraction: float, profile: str = "qspi-flash"):
    """(graph, plan, profile, model path) of the ILP's latency objective under
    `fraction` of tflm-greedy's peak; pytest-skips when the ILP or the model is absent or
    the plan has no window."""
    import pytest

    from frontends import load_model
    from planner.checker import check
    from planner.device import load_profile
    from planner.kernels import apply_kernels
    from planner.planners.base import Request, registry

    key = (name, fraction, profile)
    if key not in _LATENCY_PLANS:
        path = Path(__file__).resolve().parents[2] / "benchmarks" / "models" / f"{name}.tflite"
        planners = registry()
        if not path.is_file() or "ilp" not in planners:
            pytest.skip(f"{path.name} or the ilp planner is absent")
        prof = load_profile(profile)
        graph = apply_kernels(load_model(path), prof)
        greedy = planners["tflm-greedy"](Request(graph, prof)).peak_bytes
        budget = int(greedy * fraction) // 16 * 16
        plan = planners["ilp"](Request(graph, prof, budget, "latency", 30, async_window=3))
        assert check(graph, plan, prof.capacities) == []
        _LATENCY_PLANS[key] = (graph, plan, prof, path)
    graph, plan, prof, path = _LATENCY_PLANS[key]
    if not windows(plan):
        pytest.skip("the ILP chose no window for this case")
    return graph, plan, prof, path


# Issue #16's acceptance cases (benchmarks/async_ilp.py at its acceptance limits), solved once
# per test session: tests/test_ilp_latency.py compares their latencies,
# tests/test_async_acceptance.py runs their plans.
_ACCEPTANCE: dict = {}


def acceptance_case(path: Path, fraction: float, profile: str = "qspi-flash"):
    """benchmarks.async_ilp.AsyncCase of `path` at `fraction` of tflm-greedy's peak, as
    `python -m benchmarks async-ilp --work-limit 4 --time-limit 120` solves it."""
    from benchmarks.async_ilp import ACCEPTANCE_TIME_LIMIT, ACCEPTANCE_WORK_LIMIT, solve_case
    from planner.device import load_profile

    key = (str(path), fraction, profile)
    if key not in _ACCEPTANCE:
        _ACCEPTANCE[key] = solve_case(path, fraction, load_profile(profile),
                                      ACCEPTANCE_TIME_LIMIT, ACCEPTANCE_WORK_LIMIT)
    return _ACCEPTANCE[key]
