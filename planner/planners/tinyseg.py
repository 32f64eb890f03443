"""TinySeg's greedy spill planner (LCTES 2024, arXiv 2405.01857), from its published description.

Start from TFLM's greedy plan and repeat: at the peak step, take the tensor that is
resident there but not touched there and has the longest cold range around it
(ranges of 10 ops or fewer only when nothing longer is left), spill it over that
gap and fetch it back before its next use. A next use by a channel CONCATENATION
streams the data into it instead (fused fetching); when that concat's only
consumer is CONV_2D the pair is fused and the concat output never exists. Every
segment is then re-placed with TFLM's first-fit, and the change is kept only if
the peak went down. Under a budget the last victim may go only in part: its
trailing channels (a channel split), when every later reader is a channel concat.

Each trial derives the whole plan afresh from a small state (spilled gaps, channel
cuts, fusions), so whatever the search keeps is a complete plan.
"""

from __future__ import annotations

import time
from bisect import insort
from dataclasses import dataclass, field, replace
from itertools import pairwise

from ..analysis import buffers, fusion_groups, lifetimes, line_buffer_bytes
from ..costs import footprint, plan_transfer_seconds
from ..device import DeviceProfile
from ..ir import Graph, Role, align
from ..kernels import fusion_violations, op_kernels_of
from ..plan import Fusion, Part, Plan, Segment, SegmentRole, Transfer
from ..streaming import groups_of
from .base import Request, register
from .tflm_greedy import plan_tflm_greedy

MIN_COLD = 10  # TinySeg skips cold ranges of this many ops or fewer
MAX_ROUNDS = 200  # each kept change removes one cold gap, so this is only a safety net


@dataclass(frozen=True)
class _State:
    """What the search has decided; the plan follows from it."""

    gaps: frozenset[tuple[int, int]] = frozenset()  # (tensor, touch before a spilled gap)
    cuts: tuple[tuple[int, int], ...] = ()  # (tensor, kept leading channels)
    fusions: tuple[tuple[int, int | None], ...] = ()  # (concat op, fused conv op or None)


@dataclass
class _Trial:
    state: _State
    plan: Plan
    peak_steps: list[int]  # steps under the top segment, most live bytes first
    resident: dict[int, list[tuple[int, int]]]  # tensor -> resident step ranges (any part)
    points: dict[int, dict[int, int]]  # tensor -> original touch -> effective step
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.plan.peak_bytes


@dataclass
class _Piece:
    """A segment before placement: its offset is relative to its block."""

    rel: int
    tensor: int
    first: int
    last: int
    size: int
    part: int | None = None
    role: SegmentRole = "tensor"


class _Context:
    """Graph facts the search reads on every trial, computed once."""

    def __init__(self, graph: Graph, profile: DeviceProfile):
        self.graph, self.profile = graph, profile
        self.life = lifetimes(graph)
        self.bufs = buffers(graph)
        self.scratch = {t.id for t in graph.tensors if t.role == Role.SCRATCH}
        self.groups = {g.concat: g for g in fusion_groups(graph)} if profile.fusion else {}
        self.last_step = graph.num_steps - 1
        self.outputs = set(graph.outputs)
        readers: dict[int, list[int]] = {}
        for op in graph.ops:
            for t in dict.fromkeys(op.inputs):
                if t in self.life:
                    readers.setdefault(t, []).append(op.index)
        self.readers = readers
        # The same touches as analysis.touches, for every tensor in one pass.
        self.touches: dict[int, list[int]] = {}
        for t, (first, _) in self.life.items():
            if t in self.scratch:
                continue
            steps = {first, *(op + 1 for op in readers.get(t, []))}
            if t in self.outputs:
                steps.add(self.last_step)
            self.touches[t] = sorted(steps)
        self.next_touch = {(t, a): b for t, steps in self.touches.items()
                           for a, b in pairwise(steps) if b - a > 1}

    def splittable(self, t: int, after: int) -> bool:
        """A channel split is only read back by channel concats (checker: _check_parts)."""
        tensor = self.graph.tensors[t]
        if t in self.outputs or (tensor.channels or 0) < 2 or len(tensor.shape) != 4:
            return False
        later = [op for op in self.readers.get(t, []) if op + 1 > after]
        return bool(later) and all(op in self.groups for op in later)

    def part_bytes(self, t: int, kept: int) -> tuple[int, int]:
        tensor = self.graph.tensors[t]
        per_channel = tensor.nbytes // (tensor.channels or 1)
        return kept * per_channel, tensor.nbytes - kept * per_channel

    # -- from a state to a placed plan ------------------------------------------------

    def realize(self, state: _State) -> _Trial | None:
        """The plan `state` describes, placed by first-fit; None if the state is unusable."""
        fusion = dict(state.fusions)
        cuts = dict(state.cuts)
        fused_away = {self.graph.ops[c].outputs[0] for c, conv in fusion.items()
                      if conv is not None}
        stream_ops = {c for c, conv in fusion.items() if conv is None} | \
                     {conv for conv in fusion.values() if conv is not None}
        concat_of_conv = {conv: c for c, conv in fusion.items() if conv is not None}
        spilled: dict[int, set[int]] = {}
        for t, a in state.gaps:
            spilled.setdefault(t, set()).add(a)

        blocks: list[list[_Piece]] = []
        resident: dict[int, list[tuple[int, int]]] = {}
        points: dict[int, dict[int, int]] = {}
        moves: list[tuple[int, int | None, int, list[int], list[int], int]] = []
        parts: list[Part] = []
        for buf in self.bufs:
            t = buf.tensor
            if t in self.scratch:
                blocks.append([_Piece(0, t, buf.first, buf.last, buf.size)])
                continue
            if t in fused_away:
                continue
            eff = self._effective(t, fusion, stream_ops)
            points[t] = {s: e for s, (e, _) in eff.items()}
            walked = self._walk(t, eff, spilled.get(t, set()))
            if walked is None:
                return None
            segs, fetches, streams = walked
            kept = cuts.get(t)
            if kept is None:
                size = buf.size
                blocks.extend([_Piece(0, t, a, b, size)] for a, b in segs)
                part: int | None = None
                nbytes = self.graph.tensors[t].nbytes
            else:
                k_bytes, s_bytes = self.part_bytes(t, kept)
                channels = self.graph.tensors[t].channels or 0
                parts += [Part(t, 0, 0, kept, k_bytes), Part(t, 1, kept, channels, s_bytes)]
                whole = (segs[0][0], max(e for e, _ in eff.values()))
                # Both parts start back to back: the producer writes the whole tensor there.
                blocks.append([_Piece(0, t, *whole, align(k_bytes), 0),
                               _Piece(align(k_bytes), t, *segs[0], align(s_bytes), 1)])
                blocks.extend([_Piece(0, t, a, b, align(s_bytes), 1)] for a, b in segs[1:])
                part, nbytes = 1, s_bytes
                segs = [whole]
            resident[t] = segs
            for step in streams:
                op = step - 1
                conv = op if op in concat_of_conv else None
                size = line_buffer_bytes(self.graph, t, conv, nbytes if part is not None else None)
                blocks.append([_Piece(0, t, step, step, size, part, "line_buffer")])
            if fetches or streams:
                spill_step = walked[0][0][1]
                moves.append((t, part, nbytes, fetches, streams, spill_step))
        transfers = self._transfers(moves)
        if transfers is None:
            return None
        offsets = _place(blocks)
        segments = [
            Segment(p.tensor, p.first, p.last, off + p.rel, p.size, p.part, p.role)
            for block, off in zip(blocks, offsets, strict=True) for p in block
        ]
        peak = max((s.end for s in segments), default=0)
        plan = Plan(
            model=self.graph.name, planner="tinyseg", num_steps=self.graph.num_steps,
            peak_bytes=peak,
            segments=tuple(sorted(segments, key=lambda s: (s.first, s.offset, s.tensor))),
            parts=tuple(parts),
            transfers=tuple(sorted(transfers, key=lambda x: (x.step, x.kind != "spill",
                                                              x.tensor, x.part or 0))),
            fusions=tuple(Fusion(c, conv) for c, conv in sorted(fusion.items())),
            status="heuristic",
            op_kernels=op_kernels_of(self.graph),
            stream_groups=groups_of(self.graph),
        )
        if fusion_violations(self.graph, plan):
            return None  # e.g. every input of a fused op streams: the kernel cannot run it
        plan = replace(plan, est_transfer_seconds=plan_transfer_seconds(
            self.graph, plan, self.profile))
        return _Trial(state, plan, _peak_steps(plan), resident, points)

    def _effective(self, t: int, fusion: dict[int, int | None], stream_ops: set[int]
                   ) -> dict[int, tuple[int, bool]]:
        """Original touch -> (effective step, may be streamed there) under the fusions.

        A read by a fused concat moves to its conv's step; any read at a streaming op's
        step may come from storage; creation and the graph-output step may not.
        """
        creation = self.life[t][0]
        readers = set(self.readers.get(t, []))
        out = {}
        for s in self.touches[t]:
            op = s - 1
            step, streamable = s, False
            if s != creation and op in readers:
                if op in fusion:
                    streamable, conv = True, fusion[op]
                    if conv is not None:
                        step = conv + 1
                elif op in stream_ops:
                    streamable = True
            if t in self.outputs and s == self.last_step:
                streamable = False
            out[s] = (step, streamable)
        return out

    def _walk(self, t: int, eff: dict[int, tuple[int, bool]], spilled: set[int]):
        """Resident ranges, fetch steps and stream steps of `t` (or its spilled part)."""
        order = sorted(eff)
        steps = [eff[s][0] for s in order]
        if spilled and any(b < a for a, b in pairwise(steps)):
            return None  # a fusion reordered the uses around a spilled gap
        into: set[int] = set()
        for a in spilled:
            b = self.next_touch[(t, a)]
            if eff[b][0] <= eff[a][0]:
                return None  # the fusion closed the gap
            into.add(eff[b][0])
        merged: dict[int, bool] = {}
        for step, streamable in eff.values():
            merged[step] = merged.get(step, True) and streamable
        seq = sorted(merged.items())
        segs: list[tuple[int, int]] = []
        fetches: list[int] = []
        streams: list[int] = []
        start = prev = seq[0][0]
        resident = True
        for step, streamable in seq[1:]:
            if step in into and resident:
                segs.append((start, prev))
                resident = False
            if resident:
                prev = step
            elif streamable:
                streams.append(step)
            else:
                fetches.append(step)
                start = prev = step
                resident = True
        if resident:
            segs.append((start, prev))
        return segs, fetches, streams

    def _transfers(self, moves) -> list[Transfer] | None:
        """Spill/fetch/stream transfers; each spill takes the first storage with room left."""
        used = {s.name: 0 for s in self.profile.storages}
        out: list[Transfer] = []
        for t, part, nbytes, fetches, streams, spill_step in sorted(moves, key=lambda m: m[:2]):
            for store in self.profile.storages:
                need = footprint(store, nbytes)
                if used[store.name] + need <= store.capacity:
                    address = used[store.name]
                    used[store.name] += need
                    break
            else:
                return None
            name = store.name
            out.append(Transfer("spill", t, spill_step, name, nbytes, address, part))
            out += [Transfer("fetch", t, s, name, nbytes, address, part) for s in fetches]
            out += [Transfer("stream", t, s, name, nbytes, address, part) for s in streams]
        return out


def _place(blocks: list[list[_Piece]]) -> list[int]:
    """TFLM's greedy first-fit: largest first (ties in reverse insertion order), lowest gap.

    TFLM's scan over placed buffers in offset order finds the lowest offset where a
    buffer fits; a split's two back-to-back parts are placed together the same way.
    """
    sizes = [sum(p.size for p in b) for b in blocks]
    order = sorted(reversed(range(len(blocks))), key=lambda i: -sizes[i])
    offsets = [0] * len(blocks)
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last), by offset
    for i in order:
        block = blocks[i]
        x = 0
        if len(block) == 1:
            p = block[0]
            for off, end, first, last in placed:
                if first > p.last or p.first > last:
                    continue
                if off >= x + p.size:
                    break
                x = max(x, end)
        else:
            moved = True
            while moved:
                moved = False
                for p in block:
                    lo = x + p.rel
                    for off, end, first, last in placed:
                        if first <= p.last and p.first <= last and off < lo + p.size \
                                and lo < end:
                            x, lo, moved = end - p.rel, end, True
        offsets[i] = x
        for p in block:
            insort(placed, (x + p.rel, x + p.rel + p.size, p.first, p.last))
    return offsets


def _peak_steps(plan: Plan) -> list[int]:
    """Steps where a segment reaching the peak is alive, most live bytes first.

    The first is the step whose live bytes set the arena. When everything live there is
    touched there (a concat reading a skip tensor), its neighbours under the same top
    segment still offer victims.
    """
    delta = [0] * (plan.num_steps + 1)
    top: set[int] = set()
    for s in plan.segments:
        delta[s.first] += s.size
        delta[s.last + 1] -= s.size
        if s.end == plan.peak_bytes:
            top.update(range(s.first, s.last + 1))
    running, live = 0, []
    for step in range(plan.num_steps):
        running += delta[step]
        live.append(running)
    return sorted(top or {0}, key=lambda s: (-live[s], s))


def _candidates(ctx: _Context, trial: _Trial) -> list[tuple[int, int, int, int]]:
    """(cold length, tensor, gap start, step): resident across a peak step, untouched there.

    Ordered by the steps' priority, then longest cold range first, then larger tensor.
    """
    cuts = dict(trial.state.cuts)
    seen: set[tuple[int, int]] = set()
    found = []
    for s in trial.peak_steps:
        here = []
        for t, ranges in trial.resident.items():
            if t in cuts or not any(a <= s <= b for a, b in ranges):
                continue
            eff = trial.points[t]
            if s in eff.values():
                continue
            for a in ctx.touches[t]:
                b = ctx.next_touch.get((t, a))
                if b is None or (t, a) in trial.state.gaps or (t, a) in seen:
                    continue
                if eff[a] < s < eff[b]:
                    here.append((eff[b] - eff[a], t, a, s))
                    seen.add((t, a))
        size = ctx.graph.tensors
        found += sorted(here, key=lambda c: (-c[0], -size[c[1]].nbytes, c[1]))
    return found


def _variants(ctx: _Context, state: _State, t: int, a: int) -> list[_State]:
    """Spilling gap (t, a): fetch back, or stream into a concat (fused with its conv or not)."""
    gaps = state.gaps | {(t, a)}
    op = ctx.next_touch[(t, a)] - 1
    fusion = dict(state.fusions)
    group = ctx.groups.get(op)
    if group is None or op in fusion or t not in ctx.graph.ops[op].inputs:
        return [replace(state, gaps=gaps)]
    options = [group.conv, None] if group.conv is not None else [None]
    return [replace(state, gaps=gaps, fusions=tuple(sorted({**fusion, op: conv}.items(),
                                                           key=lambda kv: kv[0])))
            for conv in options]


def _better(a: _Trial, b: _Trial | None) -> bool:
    if b is None:
        return True
    return (a.peak, a.plan.est_transfer_seconds) < (b.peak, b.plan.est_transfer_seconds)


def _split(ctx: _Context, whole: _Trial, t: int, a: int, target: int) -> _Trial | None:
    """The fewest trailing channels of `t` to spill over gap `a` that still meet `target`."""
    channels = ctx.graph.tensors[t].channels or 0
    lo, hi, best = 1, channels - 1, None
    while lo <= hi:
        spilled = (lo + hi) // 2
        cuts = dict(whole.state.cuts)
        cuts[t] = channels - spilled
        trial = ctx.realize(replace(whole.state, cuts=tuple(sorted(cuts.items()))))
        if trial is not None and trial.peak <= target:
            best, hi = trial, spilled - 1
        else:
            lo = spilled + 1
    return best


def _step(ctx: _Context, current: _Trial, target: int | None) -> _Trial | None:
    """One TinySeg round: the first victim (longest cold range first) that lowers the peak."""
    cands = _candidates(ctx, current)
    long = [c for c in cands if c[0] > MIN_COLD]
    short = [c for c in cands if c[0] <= MIN_COLD]
    for group, is_short in ((long, False), (short, True)):
        for length, t, a, step in group:
            best = None
            for state in _variants(ctx, current.state, t, a):
                trial = ctx.realize(state)
                if trial is not None and _better(trial, best):
                    best = trial
            if best is None or best.peak >= current.peak:
                continue
            if target is not None and best.peak <= target and \
                    not any(g[0] == t for g in current.state.gaps) and ctx.splittable(t, a):
                best = _split(ctx, best, t, a, target) or best
            name = ctx.graph.tensors[t].name
            best.notes = [*current.notes]
            if is_short:
                best.notes.append(
                    f"tensor {t} '{name}' spilled over a cold range of {length} steps: "
                    f"no range longer than {MIN_COLD} was left at step {step}")
            return best
    return None


@register("tinyseg", heuristic=True)
def plan_tinyseg(request: Request) -> Plan:
    start = time.perf_counter()
    graph, profile, target = request.graph, request.profile, request.budget
    greedy = plan_tflm_greedy(request)
    if not profile.storages:
        note = f"profile '{profile.name}' has no storage: nothing to spill, the TFLM greedy plan"
        return replace(greedy, planner="tinyseg", notes=(*greedy.notes, note),
                       solve_seconds=time.perf_counter() - start)
    ctx = _Context(graph, profile)
    current = ctx.realize(_State())
    if current is None or current.peak > greedy.peak_bytes:
        current = None
    rounds = 0
    while current is not None and (target is None or current.peak > target) \
            and rounds < MAX_ROUNDS:
        nxt = _step(ctx, current, target)
        if nxt is None:
            break
        current, rounds = nxt, rounds + 1
    if current is None or current.peak >= greedy.peak_bytes:
        why = "the TFLM greedy plan already meets the budget" \
            if target is not None and greedy.peak_bytes <= target \
            else "no spill lowered the TFLM greedy peak"
        plan = replace(greedy, planner="tinyseg", notes=(*greedy.notes, why))
    else:
        plan = replace(current.plan, notes=tuple(current.notes))
    if target is not None and plan.peak_bytes > target:
        plan = replace(plan, notes=(*plan.notes, f"budget {target:,} B not reached: stopped at "
                                                 f"{plan.peak_bytes:,} B"))
    return replace(plan, solve_seconds=time.perf_counter() - start)
