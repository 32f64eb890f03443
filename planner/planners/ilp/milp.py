"""An independent MILP of the same problem through PuLP (CBC bundled, HiGHS via highspy).

Where CP-SAT gets optional intervals and a global no-overlap constraint, this
formulation spells out every pair of buffers that can be alive together as a
big-M disjunction ("one sits below the other"), in the style of OLLA / MODeL.
It is meant for cross-checking and for small models: the pair count grows fast.
"""

from __future__ import annotations

import tempfile
import time
from itertools import combinations

import pulp

from ...costs import footprint
from ..base import Request
from .extract import Solution
from .model import Need, Problem, Stream, costs_us

Box = tuple[str, int, int, int]  # (kind, item or tensor, a or point, b)


def solve_milp(problem: Problem, upper: int, budget_units: int | None, request: Request):
    """(Solution or None, proven infeasible)."""
    model = _Milp(problem, upper, budget_units)
    return model.solve(request.goal, request.time_limit, request.solver)


class _Milp:
    def __init__(self, problem: Problem, upper: int, budget_units: int | None):
        self.p = problem
        self.upper = upper
        self.lp = pulp.LpProblem("tinyplan", pulp.LpMinimize)
        self.peak = pulp.LpVariable("peak", 0, upper, cat="Integer")
        if budget_units is not None:
            self.lp += self.peak <= budget_units
        self.z: dict[tuple[int, int, int], pulp.LpVariable] = {}
        self.off: dict[tuple[int, int, int], pulp.LpVariable] = {}
        self.r: dict[tuple[int, int], pulp.LpVariable] = {}
        self.s: dict[tuple[int, int], pulp.LpVariable] = {}
        self.line_off: dict[tuple[int, int], pulp.LpVariable] = {}
        self.y: dict[tuple[int, str], pulp.LpVariable] = {}
        self.act = {k: self._bin(f"act{k}") for k in range(len(problem.variants))}
        self.fz = {g: self._bin(f"fz{g}") for g, grp in enumerate(problem.groups)
                   if grp.conv is not None}
        self.scratch_off: dict[int, pulp.LpVariable] = {}
        # Boxes: (presence or None, offset var, units, first, last, exclusive-key)
        self.boxes: list[tuple[object, pulp.LpVariable, int, int, int, tuple]] = []
        self.cost = pulp.lpSum([])
        self._build()

    def _bin(self, name: str) -> pulp.LpVariable:
        return pulp.LpVariable(name, cat="Binary")

    def _build(self) -> None:
        p, lp = self.p, self.lp
        for t in {v.tensor for v in p.variants}:
            lp += pulp.lpSum(self.act[k] for k in p.variants_of(t)) == 1
        for item in p.items:
            self._item(item)
        for t, step, units in p.fixed:
            off = pulp.LpVariable(f"scr{t}", 0, self.upper - units, cat="Integer")
            self.scratch_off[t] = off
            self.boxes.append((None, off, units, step, step, ("scratch", t)))
        for st in p.storages():
            load = [self.y[(i.index, st.name)] * footprint(st, i.nbytes) for i in p.items
                    if (i.index, st.name) in self.y]
            if load:
                lp += pulp.lpSum(load) <= st.capacity
        for sites in p.resident_sites():  # the fused kernel needs one resident slice
            streams = [self.s[k] for k in sites if k in self.s]
            if streams:
                lp += pulp.lpSum(self.act[p.items[i].variant] for i, _ in sites) \
                    - pulp.lpSum(streams) >= 1
        self._no_overlap()

    def _item(self, item) -> None:
        p, lp = self.p, self.lp
        i, act = item.index, self.act[item.variant]
        spilled = None
        if p.can_spill:
            for st in p.storages():
                self.y[(i, st.name)] = self._bin(f"y{i}_{st.name}")
            spilled = pulp.lpSum(self.y[(i, st.name)] for st in p.storages())
            lp += spilled <= act
        for a, b in item.candidates:
            if a > 0 and spilled is None:
                continue
            z = self._bin(f"z{i}_{a}_{b}")
            off = pulp.LpVariable(f"o{i}_{a}_{b}", 0, max(0, self.upper - item.units),
                                  cat="Integer")
            self.z[(i, a, b)], self.off[(i, a, b)] = z, off
            first, last = item.span(a, b)
            self.boxes.append((z, off, item.units, first, last, ("item", i, item.variant)))
            if a > 0:
                lp += z <= spilled
        for j, point in enumerate(item.points):
            r = self._bin(f"r{i}_{j}")
            self.r[(i, j)] = r
            lp += pulp.lpSum(self.z[(i, a, b)] for a, b in item.candidates
                             if a <= j <= b and (i, a, b) in self.z) == r
            lp += r <= act
            have = r
            if spilled is not None and point.stream != Stream.NONE:
                s = self._bin(f"s{i}_{j}")
                self.s[(i, j)] = s
                lp += s <= spilled
                lp += r + s <= 1
                if point.group in self.fz:
                    fz = self.fz[point.group]
                    lp += (s <= 1 - fz) if point.stream == Stream.CONCAT else (s <= fz)
                units = item.line_units[j]
                lo = pulp.LpVariable(f"l{i}_{j}", 0, max(0, self.upper - units), cat="Integer")
                self.line_off[(i, j)] = lo
                self.boxes.append((s, lo, units, point.step, point.step, ("line", i, j)))
                have = r + s
            if point.need == Need.ALWAYS:
                lp += have >= act
            elif point.need == Need.IF_FUSED:
                lp += have >= act + self.fz[point.group] - 1
            else:
                lp += have >= act - self.fz[point.group]
            if j > 0 and item.points[j].step - item.points[j - 1].step == 1:
                for b in range(j, len(item.points)):
                    if (i, j, b) in self.z:
                        lp += self.z[(i, j, b)] + self.r[(i, j - 1)] <= 1
        if item.eliminated_by is not None:
            for j in range(len(item.points)):
                lp += self.r[(i, j)] <= 1 - self.fz[item.eliminated_by]
        if item.part is not None:
            self._split(item, act)
        if spilled is not None:
            fetches = [self.z[(i, a, b)] for a, b in item.candidates
                       if a > 0 and (i, a, b) in self.z]
            streams = [self.s[(i, j)] for j in range(len(item.points))
                       if (i, j) in self.s and item.points[j].stream != Stream.ROWS_OUT]
            # A row spill replaces the item's one spill: its write plus a latency per row.
            rows_out = [self.s[(i, j)] for j in range(len(item.points))
                        if (i, j) in self.s and item.points[j].stream == Stream.ROWS_OUT]
            for st in p.storages():
                write, fetch, stream = costs_us(st, item.nbytes, item.rows)
                extra = item.row_spill_extra_us(st)
                y = self.y[(i, st.name)]
                self.cost += write * y
                if len(p.storages()) == 1:
                    self.cost += pulp.lpSum(fetch * f for f in fetches)
                    self.cost += pulp.lpSum(stream * s for s in streams)
                    self.cost += pulp.lpSum(extra * s for s in rows_out)
                    continue
                nf = pulp.LpVariable(f"nf{i}_{st.name}", 0, len(fetches))
                ns = pulp.LpVariable(f"ns{i}_{st.name}", 0, len(streams))
                lp += nf >= pulp.lpSum(fetches) - len(fetches) * (1 - y)
                lp += ns >= pulp.lpSum(streams) - len(streams) * (1 - y)
                self.cost += fetch * nf + stream * ns
                if rows_out:
                    nr = pulp.LpVariable(f"nr{i}_{st.name}", 0, len(rows_out))
                    lp += nr >= pulp.lpSum(rows_out) - len(rows_out) * (1 - y)
                    self.cost += extra * nr

    def _split(self, item, act) -> None:
        lp, i = self.lp, item.index
        firsts = {b: self.z[(i, 0, b)] for b in range(len(item.points))}
        for j, point in enumerate(item.points):
            if point.layout:
                lp += pulp.lpSum(z for b, z in firsts.items() if b >= j) >= act
        if item.part == 1:
            kept = self.p.items[i - 1]
            kept_firsts = {b: self.z[(kept.index, 0, b)] for b in range(len(kept.points))}
            big = self.upper
            for b, zk in kept_firsts.items():
                for b2, zs in firsts.items():
                    gap = self.off[(i, 0, b2)] - self.off[(kept.index, 0, b)] - kept.units
                    lp += gap <= big * (2 - zk - zs)
                    lp += gap >= -big * (2 - zk - zs)
            lp += pulp.lpSum(kept.points[b].step * z for b, z in kept_firsts.items()) >= \
                pulp.lpSum(item.points[b].step * z for b, z in firsts.items())

    def _no_overlap(self) -> None:
        lp, big = self.lp, self.upper
        for box in self.boxes:
            present, off, units = box[0], box[1], box[2]
            lp += off + units <= self.peak + (big * (1 - present) if present is not None else 0)
        for n, (a, b) in enumerate(combinations(self.boxes, 2)):
            if a[3] > b[4] or b[3] > a[4] or _exclusive(a[5], b[5], self.p):
                continue
            below = self._bin(f"d{n}")
            slack_a = 1 - a[0] if a[0] is not None else 0
            slack_b = 1 - b[0] if b[0] is not None else 0
            lp += a[1] + a[2] <= b[1] + big * (1 - below) + big * (slack_a + slack_b)
            lp += b[1] + b[2] <= a[1] + big * below + big * (slack_a + slack_b)

    def solve(self, goal: str, time_limit: float, solver_name: str):
        primary, secondary = (self.peak, self.cost) if goal == "peak" else (self.cost, self.peak)
        start = time.perf_counter()
        self.lp.setObjective(primary)
        status = self._run(solver_name, time_limit * 0.7)
        if status is None:
            return None, False
        if status == "infeasible":
            return None, True
        proven = status == "optimal"
        best = round(pulp.value(primary) or 0)
        bound = best if proven else None
        notes = [] if proven else [f"time limit reached: {goal} not proven optimal"]
        sol = self._read("optimal" if proven else "feasible", notes)
        self.lp += primary <= best
        self.lp.setObjective(secondary)
        remaining = max(1.0, time_limit - (time.perf_counter() - start))
        status2 = self._run(solver_name, remaining)
        if status2 in ("optimal", "feasible"):  # else keep the first phase's answer
            sol = self._read(sol.status, notes)
        if proven and status2 != "optimal":
            notes.append(f"{goal} proven optimal; secondary objective not proven minimal")
        if goal == "peak":
            sol.bound_units = bound
        else:
            sol.bound_cost_us = bound
        return sol, False

    def _run(self, solver_name: str, limit: float) -> str | None:
        if solver_name == "pulp-highs":
            if "HiGHS" not in pulp.listSolvers(onlyAvailable=True):
                from ...errors import PlannerError

                raise PlannerError("solver pulp-highs needs highspy (pip install highspy==1.12.0)")
            solver = pulp.HiGHS(msg=False, timeLimit=limit)
            self.lp.solve(solver)
        else:
            # CBC runs from files: keep them in a folder of our own, removed even on Ctrl-C
            # (PuLP leaves its own in $TMPDIR when the solve is interrupted).
            with tempfile.TemporaryDirectory(prefix="tinyplan-cbc-") as tmp:
                solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=limit)
                solver.tmpDir = tmp
                self.lp.solve(solver)
        if self.lp.sol_status == pulp.LpSolutionOptimal:
            return "optimal"
        if self.lp.sol_status == pulp.LpSolutionIntegerFeasible:
            return "feasible"
        if self.lp.status == pulp.LpStatusInfeasible:
            return "infeasible"
        return None

    def _read(self, status: str, notes: list[str]) -> Solution:
        def on(var) -> bool:
            return (var.value() or 0) > 0.5

        def val(var) -> int:
            return round(var.value() or 0)

        segments: dict[int, list[tuple[int, int, int]]] = {}
        for (i, a, b), z in self.z.items():
            if on(z):
                segments.setdefault(i, []).append((a, b, val(self.off[(i, a, b)])))
        streams: dict[int, list[tuple[int, int]]] = {}
        for (i, j), s in self.s.items():
            if on(s):
                streams.setdefault(i, []).append((j, val(self.line_off[(i, j)])))
        storage = {i: name for (i, name), y in self.y.items() if on(y)}
        fused = {g for g, fz in self.fz.items() if on(fz)}
        scratch = {t: val(off) for t, off in self.scratch_off.items()}
        return Solution(segments, streams, storage, fused, scratch, status, notes=notes)


def _exclusive(a: tuple, b: tuple, problem: Problem) -> bool:
    """Boxes that can never be present together: one item's own candidates, rival variants."""
    if a[0] == "item" and b[0] == "item":
        if a[1] == b[1]:
            return True
        ta, tb = problem.items[a[1]].tensor, problem.items[b[1]].tensor
        return ta == tb and a[2] != b[2]
    return False
