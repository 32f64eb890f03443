"""A lower bound on transfer time at a given peak, from the cumulative (load) view.

A tensor that is never spilled stays in the arena from its creation to its last
point needed whatever the fusions (a read by an ordinary op, a graph output, the
earlier of a concat read and its fused conv's read). So at
every step s the tensors covering s that way, plus the scratch buffers of s, must fit
in the peak P unless some of them are spilled: at least R(s) - P bytes (R: their
aligned sizes) are spilled, each written once and read back at least once. With
E = max over s of that excess, no plan with peak <= P moves less than one write of E
bytes plus one read of E bytes on the cheapest storage (latency counted once each:
writes and reads only add up). CP-SAT's own bound on transfer time is usually 0 (its
relaxation spills fractions of tensors), so this is what the gap is measured against.
"""

from __future__ import annotations

from ...ir import ALIGNMENT
from .model import Need, Problem


def transfer_bound_seconds(problem: Problem, peak_bytes: int) -> float:
    """No plan of `problem` with a peak of at most `peak_bytes` moves data for less."""
    storages = problem.storages()
    if not storages:
        return 0.0
    steps = problem.graph.num_steps
    resident = [0] * (steps + 1)  # aligned bytes that must be in the arena, if not spilled
    count = [0] * (steps + 1)
    for item in problem.items:
        if item.part is not None or item.eliminated_by is not None:
            continue  # split parts and fusable concat outputs may vanish without a spill
        needed = [p.step for p in item.points if p.need == Need.ALWAYS]
        # A read needed if its group is fused and another if it is not: one of them is
        # needed either way, so the earlier one is.
        by_group: dict[int, dict[Need, int]] = {}
        for p in item.points:
            if p.need != Need.ALWAYS and p.group is not None:
                by_group.setdefault(p.group, {})[p.need] = p.step
        needed += [min(g.values()) for g in by_group.values() if len(g) == 2]
        if not needed:
            continue
        first, last = item.points[0].step, max(needed)
        for s in range(first, last + 1):
            resident[s] += item.units * ALIGNMENT
            count[s] += 1
    for _, step, units in problem.fixed:  # scratch is never spilled
        resident[step] += units * ALIGNMENT
    # Spilled bytes are unaligned: each spilled tensor may be up to 15 B smaller.
    excess = max(max(0, resident[s] - peak_bytes - (ALIGNMENT - 1) * count[s])
                 for s in range(steps + 1))
    if excess == 0:
        return 0.0
    return min(st.write_seconds(excess) + st.read_seconds(excess) for st in storages)
