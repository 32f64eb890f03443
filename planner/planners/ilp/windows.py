"""Asynchronous transfer windows in the CP-SAT model (plan.py: Transfer.issue/complete).

A fetch at point a of an item (step f) may be *issued* up to D steps early: its
destination segment then starts at the issue step f - lead, so the arena holds the
buffer longer, which the 2-D no-overlap sees. A spill at the end of the item's first
segment (step s) may *complete* up to D steps late: that segment is held until
s + extension. Leads and extensions are integer variables on the candidate's time
interval (variable start or end); everything else in the model is unchanged.

Limits that keep a plan valid without further search:
- a fetch is issued after the tensor's previous point (its segments never overlap in
  time) and after its spill completed; a spill completes before the next point (so a
  stream or fetch there reads complete data);
- only storages with an asynchronous channel (`Storage.async_channel`) get windows;
- the parts of a channel split keep blocking spills (the kept part must outlive the
  spilled part's first segment, checker._check_parts), their fetches may lead.

`cover(...)` gives, per step, a Boolean "the window spans the op at this step", which
latency.py uses to place portions of the transfer's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from ...device import DeviceProfile, Storage
from ...plan import Plan, Segment, Transfer

DEFAULT_DEPTH = 3  # steps a fetch may lead / a spill may trail (the --async-window option)


def channel_async(storage: Storage) -> bool:
    """Whether the storage moves data on its own channel (DMA) while the processor runs."""
    return storage.async_channel


def async_storages(profile: DeviceProfile) -> tuple[str, ...]:
    return tuple(s.name for s in profile.storages if channel_async(s))


@dataclass
class WindowVars:
    lead: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)  # (item, a)
    ext: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)  # (item, b)
    fetched: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)
    # (kind, item, point) -> {step: Boolean: the window spans the op at step}
    covers: dict[tuple[str, int, int], dict[int, cp_model.IntVar]] = field(
        default_factory=dict)


class Windows:
    """Owns the window variables of one CpSatModel; `depth` 0 gives the blocking model."""

    def __init__(self, model, depth: int):
        self.model = model
        self.depth = max(0, depth)
        self.async_names = async_storages(model.p.profile)
        self.w = WindowVars()

    # -- bounds --------------------------------------------------------------------------------
    def _on(self) -> bool:
        return self.depth > 0 and bool(self.async_names)

    def max_lead(self, item, a: int) -> int:
        if a == 0 or not self._on():
            return 0
        f, prev = item.points[a].step, item.points[a - 1].step
        return max(0, min(self.depth, f - prev - 1))

    def max_ext(self, item, b: int) -> int:
        if not self._on() or item.part is not None or b + 1 >= len(item.points):
            return 0
        last, nxt = item.points[b].step, item.points[b + 1].step
        return max(0, min(self.depth, nxt - 1 - last))

    def _async_chosen(self, i: int):
        """Sum of the item's storage choices that have an async channel (0 or 1)."""
        v = self.model.v
        return sum(v.y[(i, name)] for name in self.async_names if (i, name) in v.y)

    # -- intervals -----------------------------------------------------------------------------
    def time_interval(self, item, a: int, b: int, z: cp_model.IntVar):
        """The time interval of candidate segment (a, b), its window included."""
        m = self.model.m
        i = item.index
        first, last = item.span(a, b)
        lead = self.lead_var(item, a) if a > 0 else None
        ext = self.ext_var(item, b) if a == 0 else None
        if lead is None and ext is None:
            return m.new_optional_fixed_size_interval_var(first, last - first + 1, z, f"T{i}")
        start = first - lead if lead is not None else first
        end = last + 1 + (ext if ext is not None else 0)
        return m.new_optional_interval_var(start, end - start, end, z, f"T{i}")

    def lead_var(self, item, a: int):
        key = (item.index, a)
        if key in self.w.lead:
            return self.w.lead[key]
        top = self.max_lead(item, a)
        if top == 0:
            return None
        m = self.model.m
        lead = m.new_int_var(0, top, f"lead{item.index}_{a}")
        m.add(lead <= top * self._async_chosen(item.index))
        self.w.lead[key] = lead
        return lead

    def ext_var(self, item, b: int):
        key = (item.index, b)
        if key in self.w.ext:
            return self.w.ext[key]
        top = self.max_ext(item, b)
        if top == 0 or item.index not in self.model.v.sp:
            return None
        m = self.model.m
        ext = m.new_int_var(0, top, f"ext{item.index}_{b}")
        m.add(ext <= top * self._async_chosen(item.index))  # 0 unless spilled to a DMA store
        self.w.ext[key] = ext
        return ext

    def fetched(self, item, a: int) -> cp_model.IntVar | None:
        """Boolean: the item's data is fetched at point a (a segment starts there)."""
        key = (item.index, a)
        if key not in self.w.fetched:
            v, m = self.model.v, self.model.m
            zs = [v.z[(item.index, a, b)] for b in range(a, len(item.points))
                  if (item.index, a, b) in v.z]
            if not zs:
                return None
            f = m.new_bool_var(f"fetched{item.index}_{a}")
            m.add(f == sum(zs))
            self.w.fetched[key] = f
        return self.w.fetched[key]

    def finish(self) -> None:
        """Cross-candidate rules: a fetch right after the first segment starts after its spill
        completed (other fetches are already later than the spill's window)."""
        m, p, v = self.model.m, self.model.p, self.model.v
        for (i, b), ext in self.w.ext.items():
            item = p.items[i]
            a = b + 1
            fetched = self.fetched(item, a)
            if fetched is None:
                continue
            lead = self.w.lead.get((i, a))
            issue = item.points[a].step - (lead if lead is not None else 0)
            m.add(issue >= item.points[b].step + ext + 1).only_enforce_if(
                [v.z[(i, 0, b)], fetched])

    # -- per-step cover ------------------------------------------------------------------------
    def fetch_cover(self, item, a: int) -> dict[int, cp_model.IntVar]:
        """{step k: the fetch at point a is in flight over the op at k}, k in f-D..f-1."""
        key = ("fetch", item.index, a)
        if key not in self.w.covers:
            lead = self.lead_var(item, a)
            out = {}
            if lead is not None:
                f = item.points[a].step
                for k in range(f - self.max_lead(item, a), f):
                    c = self.model.m.new_bool_var(f"cf{item.index}_{a}_{k}")
                    self.model.m.add(lead >= f - k).only_enforce_if(c)
                    out[k] = c
            self.w.covers[key] = out
        return self.w.covers[key]

    def spill_cover(self, item, b: int) -> dict[int, cp_model.IntVar]:
        """{step k: the spill ending segment (0, b) is in flight over the op at k}."""
        key = ("spill", item.index, b)
        if key not in self.w.covers:
            ext = self.ext_var(item, b)
            out = {}
            if ext is not None:
                s = item.points[b].step
                for k in range(s + 1, s + 1 + self.max_ext(item, b)):
                    c = self.model.m.new_bool_var(f"cs{item.index}_{b}_{k}")
                    self.model.m.add(ext >= k - s).only_enforce_if(c)
                    out[k] = c
            self.w.covers[key] = out
        return self.w.covers[key]

    # -- hints and reading -----------------------------------------------------------------------
    def hint(self, plan: Plan) -> Plan:
        """Hint leads/extensions from a plan's windows; returns the plan with its segments
        cut back to the blocking view, which the candidate mapping understands."""
        m, p = self.model.m, self.model.p
        blocking = blocking_view(plan)
        offsets = window_offsets(plan)
        split = {q.tensor: q.channel_stop - q.channel_start for q in plan.parts if q.index == 1}

        def chosen(item) -> bool:  # the plan's variant of the item's tensor
            return split.get(item.tensor, 0) == p.variants[item.variant].spilled_channels

        leads, exts = offsets
        for (i, a), var in self.w.lead.items():
            item = p.items[i]
            lead = leads.get((item.tensor, item.part, item.points[a].step), 0)
            m.add_hint(var, min(lead, self.max_lead(item, a)) if chosen(item) else 0)
        for (i, b), var in self.w.ext.items():
            item = p.items[i]
            ext = exts.get((item.tensor, item.part, item.points[b].step), 0)
            m.add_hint(var, min(ext, self.max_ext(item, b)) if chosen(item) else 0)
        for key, covers in self.w.covers.items():
            kind, i, j = key
            item = p.items[i]
            if not chosen(item):
                for var in covers.values():
                    m.add_hint(var, 0)
                continue
            step = item.points[j].step
            if kind == "fetch":
                lead = leads.get((item.tensor, item.part, step), 0)
                for k, var in covers.items():
                    m.add_hint(var, step - k <= lead)
            else:
                ext = exts.get((item.tensor, item.part, step), 0)
                for k, var in covers.items():
                    m.add_hint(var, k - step <= ext)
        for (i, a), var in self.w.fetched.items():
            item = p.items[i]
            m.add_hint(var, any(s.first == item.points[a].step
                                for s in blocking.segments_of(item.tensor, item.part)))
        return blocking

    def read(self, values: list[int]) -> tuple[dict, dict]:
        leads = {k: values[var.index] for k, var in self.w.lead.items() if values[var.index]}
        exts = {k: values[var.index] for k, var in self.w.ext.items() if values[var.index]}
        return leads, exts


def window_offsets(plan: Plan):
    """({(tensor, part, fetch step): lead}, {(tensor, part, spill step): extension})."""
    leads, exts = {}, {}
    for t in plan.transfers:
        first, last = t.window
        if t.kind == "fetch" and first < t.step:
            leads[(t.tensor, t.part, t.step)] = t.step - first
        if t.kind == "spill" and last > t.step:
            exts[(t.tensor, t.part, t.step)] = last - t.step
    return leads, exts


def blocking_view(plan: Plan) -> Plan:
    """The plan with every window closed: segments cut back to the blocking steps."""
    from dataclasses import replace

    leads, exts = window_offsets(plan)
    if not leads and not exts:
        return plan
    segs = []
    for s in plan.segments:
        first, last = s.first, s.last
        if s.role == "tensor":
            for (t, part, step), lead in leads.items():
                if t == s.tensor and part == s.part and first == step - lead:
                    first = step
            for (t, part, step), ext in exts.items():
                if t == s.tensor and part == s.part and last == step + ext:
                    last = step
        segs.append(Segment(s.tensor, first, last, s.offset, s.size, s.part, s.role))
    transfers = tuple(Transfer(t.kind, t.tensor, t.step, t.storage, t.nbytes, t.address,
                               t.part) for t in plan.transfers)
    return replace(plan, segments=tuple(segs), transfers=transfers)
