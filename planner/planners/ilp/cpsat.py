"""CP-SAT encoding: optional intervals in (time x address), one no-overlap-2D constraint.

Lexicographic objectives are solved in two phases: the primary objective first,
then the secondary with the primary held at the value found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from ...costs import footprint
from ...plan import Plan
from . import search
from .extract import Solution
from .latency import LatencyInputs, add_latency, secondary_of
from .model import Need, Problem, Stream, costs_us
from .search import Budget, Progress
from .windows import Windows

PRESOLVE_MAX_VARIABLES = 5000
# Share of the phases' budget for the latency objective's warm start (least transfer time).
WARM_SHARE = 0.3


@dataclass
class _Vars:
    z: dict[tuple[int, int, int], cp_model.IntVar] = field(default_factory=dict)
    off: dict[tuple[int, int, int], cp_model.IntVar] = field(default_factory=dict)
    r: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)
    s: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)
    line_off: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)
    y: dict[tuple[int, str], cp_model.IntVar] = field(default_factory=dict)
    act: dict[int, cp_model.IntVar] = field(default_factory=dict)
    fz: dict[int, cp_model.IntVar] = field(default_factory=dict)
    scratch_off: dict[int, cp_model.IntVar] = field(default_factory=dict)
    sp: dict[int, cp_model.IntVar] = field(default_factory=dict)  # item is spilled


class CpSatModel:
    def __init__(self, problem: Problem, upper_units: int, budget_units: int | None,
                 packing: bool = True, timing: LatencyInputs | None = None):
        """`packing=False`: the load view only (no 2-D no-overlap, no channel splits): a
        relaxation whose chosen segments decompose.py then packs. `timing`: transfer
        windows and the latency objective (windows.py, latency.py)."""
        self.p = problem
        self.windows = Windows(self, timing.depth if timing else 0)
        self.latency = None  # the LatencyObjective, with `timing`
        self.warm: list[int] | None = None  # the latency search's start (least transfers)
        self.packing = packing
        self.m = cp_model.CpModel()
        self.v = _Vars()
        self.upper = upper_units
        self.peak = self.m.new_int_var(0, upper_units, "peak")
        if budget_units is not None:
            self.m.add(self.peak <= budget_units)
        self.cost = self.m.new_int_var(0, 1 << 50, "cost_us")
        self._build()
        self.windows.finish()
        self.objectives = {"peak": self.peak, "transfers": self.cost}
        if timing is not None:
            self.objectives["latency"] = add_latency(self, timing)

    # -- model -------------------------------------------------------------------------------
    def _build(self) -> None:
        m, p, v = self.m, self.p, self.v
        for g, group in enumerate(p.groups):
            if group.conv is not None:
                v.fz[g] = m.new_bool_var(f"fuse{g}")
        for k in range(len(p.variants)):
            v.act[k] = m.new_bool_var(f"act{k}")
        for t in {variant.tensor for variant in p.variants}:
            m.add_exactly_one(v.act[k] for k in p.variants_of(t))
        xs, ys = [], []
        cost_terms = []
        for item in p.items:
            act = v.act[item.variant]
            self._item(item, act, xs, ys, cost_terms)
        for t, step, units in p.fixed:
            off = m.new_int_var(0, self.upper - units, f"scr{t}")
            v.scratch_off[t] = off
            xs.append(m.new_fixed_size_interval_var(step, 1, f"scrT{t}"))
            ys.append(m.new_fixed_size_interval_var(off, units, f"scrM{t}"))
            m.add(off + units <= self.peak)
        # Scratch buffers of one size at one step are interchangeable: fix their order.
        twins: dict[tuple[int, int], list[int]] = {}
        for t, step, units in p.fixed:
            twins.setdefault((step, units), []).append(t)
        for (_, units), ts in twins.items():
            for a, b in zip(ts, ts[1:], strict=False):
                m.add(v.scratch_off[a] + units <= v.scratch_off[b])
        for sites in p.resident_sites():
            streams = [v.s[k] for k in sites if k in v.s]
            if streams:
                m.add(sum(v.act[p.items[i].variant] for i, _ in sites) - sum(streams) >= 1)
        if self.packing:
            m.add_no_overlap_2d(xs, ys)
        else:
            for k, variant in enumerate(p.variants):
                if variant.spilled_channels:
                    m.add(v.act[k] == 0)
        # Redundant, but gives the search the load bound of whatever is resident.
        m.add_cumulative(xs, [y.size_expr() for y in ys], self.peak)
        m.add(self.cost == sum(cost_terms))
        for storage in p.storages():
            load = [v.y[(i.index, storage.name)] * footprint(storage, i.nbytes) for i in p.items
                    if (i.index, storage.name) in v.y]
            if load:
                m.add(sum(load) <= storage.capacity)

    def _item(self, item, act, xs, ys, cost_terms) -> None:
        m, p, v = self.m, self.p, self.v
        i = item.index
        npts = len(item.points)
        spilled = None
        if p.can_spill:
            for st in p.storages():
                v.y[(i, st.name)] = m.new_bool_var(f"y{i}_{st.name}")
            spilled = m.new_bool_var(f"sp{i}")
            v.sp[i] = spilled
            m.add(sum(v.y[(i, st.name)] for st in p.storages()) == spilled)
            m.add_implication(spilled, act)
        for a, b in item.candidates:
            if a > 0 and spilled is None:
                continue
            z = m.new_bool_var(f"z{i}_{a}_{b}")
            v.z[(i, a, b)] = z
            off = m.new_int_var(0, max(0, self.upper - item.units), f"o{i}_{a}_{b}")
            v.off[(i, a, b)] = off
            first, last = item.span(a, b)
            xs.append(self.windows.time_interval(item, a, b, z))
            ys.append(m.new_optional_fixed_size_interval_var(off, item.units, z, f"M{i}"))
            m.add(off + item.units <= self.peak).only_enforce_if(z)
            if a > 0:
                m.add_implication(z, spilled)
        for j, point in enumerate(item.points):
            r = m.new_bool_var(f"r{i}_{j}")
            v.r[(i, j)] = r
            covering = [v.z[(i, a, b)] for a, b in item.candidates
                        if a <= j <= b and (i, a, b) in v.z]
            m.add(sum(covering) == r)
            m.add_implication(r, act)
            s = None
            if spilled is not None and point.stream != Stream.NONE:
                s = m.new_bool_var(f"s{i}_{j}")
                v.s[(i, j)] = s
                m.add_implication(s, spilled)
                m.add(r + s <= 1)
                if point.group in v.fz:
                    fz = v.fz[point.group]
                    if point.stream == Stream.CONCAT:
                        m.add_implication(s, fz.Not())
                    else:
                        m.add_implication(s, fz)
                lo = m.new_int_var(0, max(0, self.upper - item.line_units[j]), f"l{i}_{j}")
                v.line_off[(i, j)] = lo
                xs.append(m.new_optional_fixed_size_interval_var(point.step, 1, s, f"LT{i}"))
                ys.append(m.new_optional_fixed_size_interval_var(lo, item.line_units[j], s,
                                                                   f"LM{i}"))
                m.add(lo + item.line_units[j] <= self.peak).only_enforce_if(s)
            have = r if s is None else r + s
            if point.need == Need.ALWAYS:
                m.add(have >= 1).only_enforce_if(act)
            elif point.need == Need.IF_FUSED:
                m.add(have >= 1).only_enforce_if([act, v.fz[point.group]])
            else:
                m.add(have >= 1).only_enforce_if([act, v.fz[point.group].Not()])
            # A fetch right after a step where the data was resident frees nothing.
            if j > 0 and item.points[j].step - item.points[j - 1].step == 1:
                for b in range(j, npts):
                    if (i, j, b) in v.z:
                        m.add_bool_or([v.z[(i, j, b)].Not(), v.r[(i, j - 1)].Not()])
        if item.eliminated_by is not None:
            fz = v.fz[item.eliminated_by]
            for j in range(npts):
                m.add_implication(fz, v.r[(i, j)].Not())
        if item.part is not None:
            self._split_rules(item, act)
        if spilled is not None:
            fetches = [v.z[(i, a, b)] for a, b in item.candidates if a > 0 and (i, a, b) in v.z]
            streams = [v.s[(i, j)] for j in range(npts)
                       if (i, j) in v.s and item.points[j].stream != Stream.ROWS_OUT]
            # A row spill replaces the item's one spill: its write plus a latency per row.
            rows_out = [v.s[(i, j)] for j in range(npts)
                        if (i, j) in v.s and item.points[j].stream == Stream.ROWS_OUT]
            for st in p.storages():
                write, fetch, stream = costs_us(st, item.nbytes, item.rows)
                extra = item.row_spill_extra_us(st)
                y = v.y[(i, st.name)]
                cost_terms.append(write * y)
                if len(p.storages()) == 1:
                    cost_terms += [fetch * f for f in fetches] + [stream * s for s in streams]
                    cost_terms += [extra * s for s in rows_out]
                    continue
                nf = m.new_int_var(0, len(fetches), f"nf{i}{st.name}")
                ns = m.new_int_var(0, len(streams), f"ns{i}{st.name}")
                m.add(nf >= sum(fetches)).only_enforce_if(y)
                m.add(ns >= sum(streams)).only_enforce_if(y)
                cost_terms += [fetch * nf, stream * ns]
                if rows_out:
                    nr = m.new_int_var(0, len(rows_out), f"nr{i}{st.name}")
                    m.add(nr >= sum(rows_out)).only_enforce_if(y)
                    cost_terms.append(extra * nr)

    def _split_rules(self, item, act) -> None:
        """Both parts start as one whole tensor; non-concat reads need that layout."""
        m, v = self.m, self.v
        i = item.index
        firsts = {b: v.z[(i, 0, b)] for b in range(len(item.points))}
        for j, point in enumerate(item.points):
            if point.layout:
                m.add(sum(z for b, z in firsts.items() if b >= j) >= 1).only_enforce_if(act)
        if item.part == 1:
            kept = self.p.items[i - 1]
            kept_firsts = {b: v.z[(kept.index, 0, b)] for b in range(len(kept.points))}
            for b, zk in kept_firsts.items():
                for b2, zs in firsts.items():
                    m.add(v.off[(i, 0, b2)] == v.off[(kept.index, 0, b)] + kept.units
                          ).only_enforce_if([zk, zs])
            m.add(
                sum(kept.points[b].step * z for b, z in kept_firsts.items())
                >= sum(item.points[b].step * z for b, z in firsts.items())
            )

    # -- hints and solving ---------------------------------------------------------------------
    def hint(self, plan: Plan) -> None:
        """Seed the search with a valid plan (a heuristic's), mapped onto the candidates.

        Every variable gets a value, so that on a large model CP-SAT takes the hint as its
        first solution instead of searching for one.
        """
        v, p, m = self.v, self.p, self.m
        plan = self.windows.hint(plan)  # leads/extensions; segments cut to blocking steps
        spilled_channels = {q.tensor: q.channel_stop - q.channel_start
                            for q in plan.parts if q.index == 1}
        streamed = {(t.tensor, t.part, t.step) for t in plan.transfers
                    if t.kind in ("stream", "spill_rows")}
        storage = {(t.tensor, t.part): t.storage for t in plan.transfers
                   if t.kind in ("spill", "spill_rows")}
        lines = {(s.tensor, s.part, s.first): s.offset // 16 for s in plan.segments
                 if s.role == "line_buffer"}
        for item in p.items:
            i = item.index
            segs = plan.segments_of(item.tensor, item.part)
            variant = p.variants[item.variant]
            on = spilled_channels.get(item.tensor, 0) == variant.spilled_channels
            if not on:
                segs = []  # not the variant the plan chose
            steps = [pt.step for pt in item.points]
            chosen = set()
            for seg in segs:
                a = next((j for j, s in enumerate(steps) if s == seg.first), None)
                b = max((j for j, s in enumerate(steps) if s <= seg.last), default=None)
                if a is not None and b is not None and (i, a, b) in v.z:
                    chosen.add((a, b))
                    m.add_hint(v.off[(i, a, b)], seg.offset // 16)
            for a, b in item.candidates:
                if (i, a, b) in v.z:
                    m.add_hint(v.z[(i, a, b)], (a, b) in chosen)
                    if (a, b) not in chosen:
                        m.add_hint(v.off[(i, a, b)], 0)
            for j, point in enumerate(item.points):
                m.add_hint(v.r[(i, j)], any(a <= j <= b for a, b in chosen))
                if (i, j) in v.s:
                    key = (item.tensor, item.part, point.step)
                    m.add_hint(v.s[(i, j)], on and key in streamed)
                    m.add_hint(v.line_off[(i, j)], lines.get(key, 0) if on else 0)
            for st in p.storages():
                if (i, st.name) in v.y:
                    m.add_hint(v.y[(i, st.name)],
                               on and storage.get((item.tensor, item.part)) == st.name)
            if i in v.sp:
                m.add_hint(v.sp[i], on and (item.tensor, item.part) in storage)
        for k, variant in enumerate(p.variants):
            chosen = spilled_channels.get(variant.tensor, 0) == variant.spilled_channels
            m.add_hint(v.act[k], chosen)
        fused = {f.concat for f in plan.fusions if f.conv is not None}
        for g, var in v.fz.items():
            m.add_hint(var, p.groups[g].concat in fused)
        for seg in plan.segments:
            if seg.tensor in v.scratch_off:
                m.add_hint(v.scratch_off[seg.tensor], seg.offset // 16)
        m.add_hint(self.peak, -(-plan.peak_bytes // 16))
        if self.latency is not None:
            self.latency.complete_hint()

    def solve(self, goal: str, budget: Budget, workers: int, deterministic: bool = False,
              progress: Progress | None = None, known: int | None = None) -> Solution | None:
        """Lexicographic: (peak, cost) for goal "peak", (cost, peak) for "transfers".

        Both phases share `budget` (the primary gets most of it, the secondary the rest);
        `self.stopped` says why the search ended early, None if both phases completed.
        `known`: the primary's proven optimum (the hint meets its lower bound), so that
        only the secondary is searched.
        """
        other = secondary_of(goal, self.objectives)
        primary, secondary = self.objectives[goal], self.objectives[other]
        scales = {"peak": lambda u: u * 16, "transfers": lambda us: us / 1e6,
                  "latency": lambda us: us / 1e6}
        self.infeasible, self.stopped = False, None
        if budget.interrupted:  # Ctrl-C came before this search (in the decomposition)
            self.stopped = "interrupted"
            return None
        # On large models presolve alone can take longer than the whole budget (measured:
        # 14 s and no solution at 500 ops); without it the complete hint is the first
        # solution at once and the search improves on it.
        presolve = len(self.m.proto.variables) <= PRESOLVE_MAX_VARIABLES
        if known is not None:
            first = search.Outcome(cp_model.OPTIMAL, known, known, None, None, 0.0, 0.0)
        else:
            if goal == "latency" and not self._warm_start(budget, workers, deterministic,
                                                          progress, presolve):
                return None
            self.m.minimize(primary)
            first = search.run(self.m, budget, search.PRIMARY_SHARE, workers=workers,
                               deterministic=deterministic, phase=goal, scale=scales[goal],
                               progress=progress, presolve=presolve)
            self.infeasible = first.status == cp_model.INFEASIBLE
            self.stopped = first.stopped
            if first.values is None:
                return None
        proven = first.status == cp_model.OPTIMAL
        chosen = first
        second = None
        if not budget.interrupted and budget.seconds_left() > 0:
            if first.values is not None:
                self._hint_from(first.values)
            self.m.add(primary <= first.objective)
            self.m.minimize(secondary)
            second = search.run(self.m, budget, 1.0, workers=workers,
                                deterministic=deterministic, phase=other, scale=scales[other],
                                progress=progress, presolve=presolve)
            if second.values is not None:
                chosen = second
            self.stopped = self.stopped or second.stopped
            self.infeasible = first.values is None and second.status == cp_model.INFEASIBLE
        if chosen.values is None:
            return None
        notes = []
        names = {"peak": "peak", "transfers": "transfer time",
                 "latency": "exposed transfer time"}
        if not proven:
            notes.append(f"{_why(first.stopped)}: {names[goal]} not proven optimal")
        elif second is None or second.status != cp_model.OPTIMAL:
            why = _why(second.stopped if second else budget.stopped or "time-limit")
            notes.append(f"{names[goal]} proven optimal; {why}: {names[other]} not proven "
                         "minimal for it")
        sol = self.read(chosen.values, "optimal" if proven else "feasible", notes)
        if goal == "peak":
            sol.bound_units = first.bound
        elif goal == "transfers":
            sol.bound_cost_us = first.bound
        else:
            sol.bound_exposed_us = first.bound
        if goal == "peak" and other == "transfers" and second is not None \
                and second.bound is not None:
            sol.bound_cost_us = second.bound  # the least transfer time at this peak
        if "latency" in self.objectives:
            sol.exposed_us = chosen.values[self.objectives["latency"].index]
        if self.warm is not None and goal == "latency":
            sol.alternative = self.read(self.warm, "feasible", [])
        return sol

    def _warm_start(self, budget: Budget, workers: int, deterministic: bool,
                    progress: Progress | None, presolve: bool) -> bool:
        """Before the latency search: the least transfer time. Its plan moves the least
        data, and the latency search starts from it (its windows then open at once);
        measured on the zoo U-Nets, starting from the heuristics' plans alone often ended
        above the blocking optimum within short work limits. False when the model is
        proven infeasible or nothing was found."""
        self.m.minimize(self.cost)
        warm = search.run(self.m, budget, WARM_SHARE, workers=workers,
                          deterministic=deterministic, phase="transfers",
                          scale=lambda us: us / 1e6, progress=progress, presolve=presolve)
        self.infeasible = warm.status == cp_model.INFEASIBLE
        self.stopped = warm.stopped
        if warm.values is not None:
            self._hint_from(warm.values)
            self.warm = warm.values
        return not self.infeasible and (warm.values is not None or warm.stopped is None)

    def _hint_from(self, values: list[int]) -> None:
        """Hint every variable with a solution's value (the next phase starts from it)."""
        self.m.clear_hints()
        hint = self.m.proto.solution_hint
        hint.vars.extend(range(len(values)))
        hint.values.extend(values)

    def read(self, values: list[int], status: str, notes: list[str]) -> Solution:
        v = self.v

        def val(var) -> int:
            return values[var.index]

        segments: dict[int, list[tuple[int, int, int]]] = {}
        for (i, a, b), z in v.z.items():
            if val(z):
                segments.setdefault(i, []).append((a, b, val(v.off[(i, a, b)])))
        streams: dict[int, list[tuple[int, int]]] = {}
        for (i, j), s in v.s.items():
            if val(s):
                streams.setdefault(i, []).append((j, val(v.line_off[(i, j)])))
        storage = {i: name for (i, name), y in v.y.items() if val(y)}
        fused = {g for g, fz in v.fz.items() if val(fz)}
        scratch = {t: val(off) for t, off in v.scratch_off.items()}
        leads, exts = self.windows.read(values)
        return Solution(segments, streams, storage, fused, scratch, status, notes=notes,
                        leads=leads, exts=exts)


def _why(stopped: str | None) -> str:
    return {"interrupted": "interrupted", "work-limit": "work limit reached"}.get(
        stopped or "", "time limit reached")
