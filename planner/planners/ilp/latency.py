"""The latency objective in the CP-SAT model: transfer time not hidden behind compute.

End-to-end latency = compute (a constant: the sum of the ops' estimated seconds,
planner/compute.py) + exposed transfer time. The encoding, in whole microseconds:

- a blocking transfer (no window, or a storage without a DMA channel) is exposed whole;
- a stream on a DMA channel is double-buffered inside its op (planner/latency.py): its
  time is placed on that op's step;
- an asynchronous one places portions x[k] of its time T on the steps k its window spans
  (windows.py: cover[k]); whatever is not placed (T - sum x) is exposed;
- per storage channel and step, the placed portions beyond the op's compute time c[k]
  are exposed: e[ch, k] >= sum x[ch, k] - c[k], e >= 0 (one transfer at a time per
  channel: the channel moves at most c[k] seconds of data while the op runs).

Where this relaxes planner/latency.py's FIFO simulation: the solver may split a transfer
over its window in any proportion and in any order (the simulation runs each transfer
whole, from its issue, first in first out); on one channel the model's value is then at
most the simulated one. With several channels it is not a bound: a stall caused by one
channel also gives the others time, which the model does not credit. Reports show the
simulated figure; the model's value and bound are stated beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ortools.sat.python import cp_model

from ...errors import InfeasibleBudget, PlannerError
from ...ir import Graph
from ...plan import Plan
from .model import costs_us

US = 1e6


@dataclass(frozen=True)
class LatencyInputs:
    """What the latency model needs besides the problem."""

    depth: int  # window depth D in steps (windows.py)
    compute_us: list[int]  # per step, step_compute_us
    cap_exposed_us: int | None = None  # --latency-cap minus the compute time


def add_latency(model, timing: LatencyInputs):
    """Windows' latency objective on `model`; returns the exposed-time variable."""
    objective = LatencyObjective(model, model.windows, timing.compute_us)
    if timing.cap_exposed_us is not None:
        model.m.add(objective.exposed <= max(0, timing.cap_exposed_us))
    model.latency = objective
    return objective.exposed


def secondary_of(goal: str, objectives: dict) -> str:
    """The tie-break: peak then latency when the model has it (a latency cap), else peak
    then transfer time; transfers and latency then the peak."""
    if goal == "peak":
        return "latency" if "latency" in objectives else "transfers"
    return "peak"


def step_compute_us(graph: Graph, profile) -> list[int]:
    """Compute time of the op at each step (step 0 runs no op), whole microseconds rounded
    up: hiding a little more than the estimate keeps the model a relaxation."""
    from ...compute import op_seconds

    seconds = op_seconds(graph, profile)
    return [0] + [math.ceil(s * US) for s in seconds]


def compute_seconds(graph: Graph, profile) -> float:
    from ...compute import op_seconds

    return float(sum(op_seconds(graph, profile)))


def simulated_seconds(graph: Graph, plan: Plan, profile) -> float:
    """The plan's estimated end-to-end latency: planner/latency.py's simulation."""
    from ...latency import end_to_end

    return float(end_to_end(graph, plan, profile).total_seconds)


class LatencyObjective:
    """Builds `exposed` (microseconds) on a CpSatModel whose windows are `windows`."""

    def __init__(self, model, windows, compute_us: list[int]):
        self.model, self.windows, self.c = model, windows, compute_us
        self.m = model.m
        self.blocked: list = []  # exposed terms
        # (storage, step) -> [(portion variable, its transfer's whole time)]
        self.placed: dict[tuple[str, int], list] = {}
        self.top = 0  # an upper bound on the exposed time
        # For completing a hint: (bool, a, b) with bool == a and b; per transfer (gate,
        # cost, [(step, cover or None, portion)], rest, storage); per (storage, step) the
        # exposure variable.
        self.ands: list[tuple] = []
        self.transfers: list[tuple] = []
        self.overflow: dict[tuple[str, int], cp_model.IntVar] = {}
        self._build()
        self.exposed = self.m.new_int_var(0, max(self.top, 0), "exposed_us")
        self.m.add(self.exposed == sum(self.blocked))

    def _gate(self, on, i: int, storage: str, single: bool, name: str):
        """Boolean: `on` and the item lives in `storage`."""
        if single:
            return on
        y = self.model.v.y[(i, storage)]
        return self._and(on, y, name)

    def _transfer(self, gate, cost: int, covers: dict[int, cp_model.IntVar], storage: str,
                  name: str) -> None:
        self.top += cost
        async_ = storage in self.windows.async_names and covers
        if not async_:
            self.blocked.append(cost * gate)
            self.transfers.append((gate, cost, [], None, storage))
            return
        rest = self.m.new_int_var(0, cost, f"blk{name}")
        portions, placed = [], []
        for k, cover in covers.items():
            x = self.m.new_int_var(0, cost, f"x{name}_{k}")
            if cover is not None:  # None: always in flight over the op at k
                self.m.add(x <= cost * cover)
            portions.append(x)
            placed.append((k, cover, x))
            self.placed.setdefault((storage, k), []).append((x, cost))
        self.m.add(sum(portions) + rest == cost * gate)
        self.blocked.append(rest)
        self.transfers.append((gate, cost, placed, rest, storage))

    def _build(self) -> None:
        p, v, w = self.model.p, self.model.v, self.windows
        stores = p.storages()
        single = len(stores) == 1
        for item in p.items:
            i = item.index
            if i not in v.sp:
                continue
            npts = len(item.points)
            for st in stores:
                write, fetch, stream = costs_us(st, item.nbytes, item.rows)
                for b in range(npts):  # the spill ends the first segment (0, b)
                    z = v.z.get((i, 0, b))
                    if z is None:
                        continue
                    # The spill: this first segment, and the item goes to this storage.
                    gate = self._and(z, v.sp[i], f"gs{i}_{b}") if single else \
                        self._gate(z, i, st.name, False, f"gs{i}_{b}_{st.name}")
                    self._transfer(gate, write, w.spill_cover(item, b), st.name,
                                   f"s{i}_{b}_{st.name}")
                for a in range(1, npts):
                    fetched = w.fetched(item, a)
                    if fetched is None:
                        continue
                    gate = self._gate(fetched, i, st.name, single, f"gf{i}_{a}_{st.name}")
                    self._transfer(gate, fetch, w.fetch_cover(item, a), st.name,
                                   f"f{i}_{a}_{st.name}")
                for j in range(npts):
                    s = v.s.get((i, j))
                    if s is not None:  # double-buffered beside its own op on a DMA channel
                        gate = self._gate(s, i, st.name, single, f"gt{i}_{j}_{st.name}")
                        self._transfer(gate, stream, {item.points[j].step: None}, st.name,
                                       f"t{i}_{j}_{st.name}")
        for (storage, k), portions in sorted(self.placed.items()):
            c = self.c[k] if k < len(self.c) else 0
            most = sum(cost for _, cost in portions)
            if most <= c:
                continue  # this step's compute hides whatever lands on it
            e = self.m.new_int_var(0, most, f"e{storage}_{k}")
            self.m.add(e >= sum(x for x, _ in portions) - c)
            self.blocked.append(e)
            self.overflow[(storage, k)] = e

    def complete_hint(self) -> None:
        """Hint every variable of the objective from the hinted plan (the rest of the
        model's hint): each transfer's time goes to the steps its window spans while the
        channel has compute left there, the rest is exposed. With a complete hint CP-SAT
        takes the plan as its first solution at once."""
        hint = self.m.proto.solution_hint
        known = dict(zip(hint.vars, hint.values, strict=True))

        def val(var) -> int:
            return known.get(var.index, 0)

        def put(var, value: int) -> None:
            known[var.index] = value
            self.m.add_hint(var, value)

        for g, a, b in self.ands:
            put(g, int(bool(val(a)) and bool(val(b))))
        free = {}
        exposed = 0
        for gate, cost, placed, rest, storage in self.transfers:
            left = cost * val(gate)
            for k, cover, x in placed:
                room = free.setdefault((storage, k), self.c[k] if k < len(self.c) else 0)
                share = min(left, room) if cover is None or val(cover) else 0
                put(x, share)
                free[(storage, k)] -= share
                left -= share
            if rest is not None:
                put(rest, left)
            exposed += left
        for e in self.overflow.values():
            put(e, 0)
        put(self.exposed, exposed)

    def _and(self, a, b, name: str):
        g = self.m.new_bool_var(name)
        self.ands.append((g, a, b))
        self.m.add_implication(g, a)
        self.m.add_implication(g, b)
        self.m.add_bool_or([a.Not(), b.Not(), g])
        return g


def latency_inputs(request) -> LatencyInputs | None:
    """The latency model's inputs for a request that needs it (objective "latency", or a
    latency cap); None otherwise. Refuses what the model cannot do in one line."""
    if request.goal != "latency" and request.latency_cap is None:
        return None
    if request.solver != "cpsat":
        raise PlannerError(
            f"--objective latency and --latency-cap need --solver cpsat: the MILP encoding "
            f"({request.solver}) has no transfer windows")
    if request.latency_cap is not None and request.goal != "peak":
        raise PlannerError("--latency-cap goes with --objective peak (the peak under a "
                           "latency cap); --objective latency minimises the latency itself")
    if request.async_window < 0:
        raise PlannerError(f"--async-window must be 0 or more steps, not {request.async_window}")
    compute_us = step_compute_us(request.graph, request.profile)
    cap = None
    if request.latency_cap is not None:
        compute = compute_seconds(request.graph, request.profile)
        if request.latency_cap < compute:
            raise InfeasibleBudget(
                f"latency cap {request.latency_cap:g} s is below the compute time alone "
                f"({compute:.6g} s with profile '{request.profile.name}')")
        # Rounded down: the model's compute (rounded up per step) hides no less than this.
        cap = math.floor((request.latency_cap - compute) * US)
    return LatencyInputs(request.async_window, compute_us, cap)


def windowed_seeds(seeds: list[Plan], request) -> list[Plan]:
    """The seeds and, for each that moves data, the same plan with async windows
    (planner/async_windows.py): the latency model starts from the better one."""
    from ...async_windows import with_windows

    out = list(seeds)
    for plan in seeds:
        if plan.transfers:
            try:
                windowed = with_windows(request.graph, plan, request.profile)
            except PlannerError:
                continue
            out.append(clamp_windows(windowed, request.async_window))
    return out


def clamp_windows(plan: Plan, depth: int) -> Plan:
    """`plan` with no window longer than `depth` steps (the request's --async-window):
    a fetch is issued later (its segment starts there), a spill completes sooner (its
    segment may stay longer). Shorter windows keep a plan valid."""
    transfers, segments = list(plan.transfers), list(plan.segments)
    for n, t in enumerate(transfers):
        first, last = t.window
        if t.kind == "fetch" and t.step - first > depth:
            issue = t.step - depth
            transfers[n] = replace(t, issue=issue if issue < t.step else None)
            for k, seg in enumerate(segments):
                if (seg.tensor, seg.part, seg.role, seg.first) == (t.tensor, t.part, "tensor",
                                                                  first):
                    segments[k] = replace(seg, first=t.step - depth)
        if t.kind == "spill" and last - t.step > depth:
            done = t.step + depth
            transfers[n] = replace(t, complete=done if done > t.step else None)
    return replace(plan, transfers=tuple(transfers), segments=tuple(segments))


def with_latency_notes(plan: Plan, request, solution) -> Plan:
    """State the simulated end-to-end latency (the figure every report shows) and, for a
    solver's answer, the model's value, its proven bound and the gap between them."""
    if request.goal != "latency" and request.latency_cap is None:
        return plan
    sim = simulated_seconds(request.graph, plan, request.profile)
    compute = compute_seconds(request.graph, request.profile)
    notes = [f"estimated end-to-end latency {sim:.7f} s (planner/latency.py: compute "
             f"{compute:.6g} s + exposed transfers {sim - compute:.6g} s)"]
    status = plan.status
    if solution is not None and solution.bound_exposed_us is not None:
        # CP-SAT's bound on a linear objective may sit below the variable's domain.
        bound = min(compute + max(solution.bound_exposed_us, 0) / US, sim)
        gap = (sim - bound) / sim if sim > 0 else 0.0
        text = f"latency bound {bound:.7f} s (gap {gap:.2%} to the estimate)"
        if solution.exposed_us is not None:
            text = f"latency model {compute + solution.exposed_us / US:.7f} s, " + text
        notes.append(text + f"; windows of up to {request.async_window} steps")
        # The model rounds each op's compute and each transfer to whole microseconds.
        rounding = (plan.num_steps + len(plan.transfers)) / US
        if status == "optimal" and sim - bound > rounding:
            # Proven for the model, which splits transfers more freely than the simulation.
            status = "feasible"
            notes.append("latency proven optimal for the model, not for the simulation")
    return replace(plan, status=status, notes=(*plan.notes, *notes))
