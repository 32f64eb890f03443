"""CP-SAT encoding: optional intervals in (time x address), one no-overlap-2D constraint.

Lexicographic objectives are solved in two phases: the primary objective first,
then the secondary with the primary held at the value found.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from ...costs import footprint
from ...plan import Plan
from .extract import Solution
from .model import Need, Problem, Stream, costs_us


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


class CpSatModel:
    def __init__(self, problem: Problem, upper_units: int, budget_units: int | None):
        self.p = problem
        self.m = cp_model.CpModel()
        self.v = _Vars()
        self.upper = upper_units
        self.peak = self.m.new_int_var(0, upper_units, "peak")
        if budget_units is not None:
            self.m.add(self.peak <= budget_units)
        self.cost = self.m.new_int_var(0, 1 << 50, "cost_us")
        self._build()

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
        m.add_no_overlap_2d(xs, ys)
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
            xs.append(m.new_optional_fixed_size_interval_var(first, last - first + 1, z, f"T{i}"))
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
            streams = [v.s[(i, j)] for j in range(npts) if (i, j) in v.s]
            for st in p.storages():
                write, fetch, stream = costs_us(st, item.nbytes, item.rows)
                y = v.y[(i, st.name)]
                cost_terms.append(write * y)
                if len(p.storages()) == 1:
                    cost_terms += [fetch * f for f in fetches] + [stream * s for s in streams]
                    continue
                nf = m.new_int_var(0, len(fetches), f"nf{i}{st.name}")
                ns = m.new_int_var(0, len(streams), f"ns{i}{st.name}")
                m.add(nf >= sum(fetches)).only_enforce_if(y)
                m.add(ns >= sum(streams)).only_enforce_if(y)
                cost_terms += [fetch * nf, stream * ns]

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
        """Seed the search with a valid plan (a heuristic's), mapped onto the candidates."""
        v, p = self.v, self.p
        spilled_channels = {q.tensor: q.channel_stop - q.channel_start
                            for q in plan.parts if q.index == 1}
        for item in p.items:
            segs = plan.segments_of(item.tensor, item.part)
            variant = p.variants[item.variant]
            if spilled_channels.get(item.tensor, 0) != variant.spilled_channels:
                segs = []  # not the variant the plan chose
            steps = [pt.step for pt in item.points]
            chosen = set()
            for seg in segs:
                a = next((j for j, s in enumerate(steps) if s == seg.first), None)
                b = max((j for j, s in enumerate(steps) if s <= seg.last), default=None)
                if a is not None and b is not None and (item.index, a, b) in v.z:
                    chosen.add((a, b))
                    self.m.add_hint(v.off[(item.index, a, b)], seg.offset // 16)
            for a, b in item.candidates:
                if (item.index, a, b) in v.z:
                    self.m.add_hint(v.z[(item.index, a, b)], (a, b) in chosen)
        for k, variant in enumerate(p.variants):
            chosen = spilled_channels.get(variant.tensor, 0) == variant.spilled_channels
            self.m.add_hint(v.act[k], chosen)
        fused = {f.concat for f in plan.fusions if f.conv is not None}
        for g, var in v.fz.items():
            self.m.add_hint(var, p.groups[g].concat in fused)
        for seg in plan.segments:
            if seg.tensor in v.scratch_off:
                self.m.add_hint(v.scratch_off[seg.tensor], seg.offset // 16)

    def solve(self, goal: str, time_limit: float, workers: int,
              deterministic: bool = False) -> Solution | None:
        """Lexicographic: (peak, cost) for goal "peak", (cost, peak) for "latency"."""
        primary, secondary = (self.peak, self.cost) if goal == "peak" else (self.cost, self.peak)
        start = time.perf_counter()
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = workers
        solver.parameters.interleave_search = deterministic
        solver.parameters.max_time_in_seconds = time_limit * 0.7
        self.m.minimize(primary)
        status = solver.solve(self.m)
        self.infeasible = status == cp_model.INFEASIBLE
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        proven = status == cp_model.OPTIMAL
        best, bound = int(solver.objective_value), int(solver.best_objective_bound)
        self._hint_from(solver)
        self.m.add(primary <= best)
        self.m.minimize(secondary)
        remaining = max(1.0, time_limit - (time.perf_counter() - start))
        solver2 = cp_model.CpSolver()
        solver2.parameters.num_workers = workers
        solver2.parameters.interleave_search = deterministic
        solver2.parameters.max_time_in_seconds = remaining
        status2 = solver2.solve(self.m)
        chosen = solver2 if status2 in (cp_model.OPTIMAL, cp_model.FEASIBLE) else solver
        notes = []
        if not proven:
            notes.append(f"time limit reached: {goal} not proven optimal")
        elif status2 != cp_model.OPTIMAL:
            other = "transfer time" if goal == "peak" else "peak"
            notes.append(f"{goal} proven optimal; {other} not proven minimal for it")
        sol = self._read(chosen, "optimal" if proven else "feasible", notes)
        if goal == "peak":
            sol.bound_units = bound
        else:
            sol.bound_cost_us = bound
        return sol

    def _hint_from(self, solver: cp_model.CpSolver) -> None:
        self.m.clear_hints()
        for var in self._all_vars():
            self.m.add_hint(var, solver.value(var))

    def _all_vars(self):
        v = self.v
        for d in (v.z, v.off, v.r, v.s, v.line_off, v.y, v.act, v.fz, v.scratch_off):
            yield from d.values()

    def _read(self, solver: cp_model.CpSolver, status: str, notes: list[str]) -> Solution:
        v = self.v
        segments: dict[int, list[tuple[int, int, int]]] = {}
        for (i, a, b), z in v.z.items():
            if solver.boolean_value(z):
                segments.setdefault(i, []).append((a, b, solver.value(v.off[(i, a, b)])))
        streams: dict[int, list[tuple[int, int]]] = {}
        for (i, j), s in v.s.items():
            if solver.boolean_value(s):
                streams.setdefault(i, []).append((j, solver.value(v.line_off[(i, j)])))
        storage = {i: name for (i, name), y in v.y.items() if solver.boolean_value(y)}
        fused = {g for g, fz in v.fz.items() if solver.boolean_value(fz)}
        scratch = {t: solver.value(off) for t, off in v.scratch_off.items()}
        return Solution(segments, streams, storage, fused, scratch, status, notes=notes)
