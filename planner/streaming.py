"""Row-streamed groups (issue #15): row bands, schedules, rings, the planned graph, the choice.

A streamed group is a run of consecutive source-graph ops that the row kernels compute
one output row at a time (kernels.ROW_OPS). Output row r of a member reads a *band* of
rows of each row input; a tensor produced and read only inside the group (and not a
graph output) is *internal*: it never exists whole, only in a ring of R rows (row r in
slot r % R), R the least under which no row is overwritten before its last read. The
group runs as one op of the *planned graph* (`apply_groups`); any planner plans that
graph unchanged, and the checker re-simulates every schedule (`verify_schedule`).

No arithmetic changes: every row is computed once, from the same input rows, so the
results are those of running the members one after another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from . import kernels
from .errors import PlannerError
from .ir import Graph, Op, OpKind, Role, Tensor, align
from .plan import Plan, StreamGroup

GROUP_OP_TYPE = "TINYPLAN_STREAMED_GROUP"
GROUP_KERNEL = "tinyplan_group"  # Op.attrs["kernel"] of a group op
MAX_ERRORS = 20  # verify_schedule stops listing after this many

Band = tuple[int, int]  # closed row interval [lo, hi]; lo > hi: no rows


# -- row bands ---------------------------------------------------------------------------------

def height(tensor: Tensor) -> int:
    """Rows of a 4-D NHWC tensor."""
    return int(tensor.shape[1])


def row_bytes(tensor: Tensor) -> int:
    """Bytes of one row (batch 1: width x channels x element size)."""
    return tensor.nbytes // height(tensor)


def _cdiv(a: int, b: int) -> int:
    """C's integer division (towards zero), as tp_kernels.c computes it."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def tconv_pad_top(out_h: int, kh: int, sh: int, same: bool) -> int:
    """TFLite's transpose-conv padding (tp_tconv_padding in backends/c/tp_kernels.c)."""
    if sh <= 0 or kh <= 0 or out_h < 0:
        return 0
    n = _cdiv(out_h + sh - 1, sh) if same else _cdiv(out_h + sh - kh, sh)
    if n < 0:
        return 0
    total = (n - 1) * sh + kh - out_h
    return _cdiv(total, 2) if total > 0 else 0


def window_pad_top(in_h: int, out_h: int, kh: int, sh: int, same: bool) -> int:
    """TFLite SAME padding (ComputePaddingHeightWidth, dilation 1); VALID pads nothing."""
    return max((out_h - 1) * sh + kh - in_h, 0) // 2 if same else 0


def _kernel_h(graph: Graph, op: Op) -> int:
    if op.kind == OpKind.POOL:
        return int(op.attrs["kernel"][0])
    return int(graph.tensors[op.inputs[1]].shape[1])  # OHWI / 1HWO filters: H at 1


def op_bands(graph: Graph, op: Op) -> tuple[Band, ...]:
    """Per output row of row-capable `op`: the rows of each row input it reads, clipped."""
    rule = kernels.ROW_OPS[op.op_type]
    out_h = height(graph.tensors[op.outputs[0]])
    if rule.band == "same":
        return tuple((r, r) for r in range(out_h))
    x = graph.tensors[kernels.row_inputs(graph, op)[0]]
    in_h, kh = height(x), _kernel_h(graph, op)
    sh = int(op.attrs.get("strides", (1, 1))[0])
    same = op.attrs.get("padding", "same") == "same"
    bands = []
    for r in range(out_h):
        if rule.band == "window":
            pad = window_pad_top(in_h, out_h, kh, sh, same)
            lo, hi = r * sh - pad, r * sh - pad + kh - 1
        else:  # gather: rows i with i*sh - pad <= r <= i*sh - pad + kh - 1
            pad = tconv_pad_top(out_h, kh, sh, same)
            lo, hi = -((kh - 1 - r - pad) // sh), (r + pad) // sh
        bands.append((max(lo, 0), min(hi, in_h - 1)))
    return tuple(bands)


# -- what a group reads, writes and keeps --------------------------------------------------------

@dataclass
class _Group:
    """A run of source ops seen as one group: its members, bands and tensors."""

    members: list[Op]
    out_of: list[int]  # member position -> its output tensor
    reads: list[tuple[int, ...]]  # member position -> row inputs
    bands: list[tuple[Band, ...]]
    producer: dict[int, int]  # member output -> member position
    internal: list[int]  # in production order
    inputs: list[int]  # external inputs (constants too), in order of first read
    outputs: list[int]  # external outputs, in order of production
    stream_in: list[int]  # external activation inputs read row by row
    spill_rows: list[int]  # external outputs that are not graph outputs


class _Rows:
    """Per op of one graph, computed once: why the row kernels refuse it, its row inputs
    and its bands (choose_groups looks at each op in many candidate groups)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.consumers = graph.consumers()
        self._memo: dict[int, tuple[list[str], tuple[int, ...], tuple[Band, ...]]] = {}

    def of(self, op: Op) -> tuple[list[str], tuple[int, ...], tuple[Band, ...]]:
        if op.index not in self._memo:
            why = kernels.row_refusals(self.graph, op)
            self._memo[op.index] = (why, kernels.row_inputs(self.graph, op),
                                    () if why else op_bands(self.graph, op))
        return self._memo[op.index]


def _group(graph: Graph, ops: Sequence[int], rows: _Rows | None = None) -> _Group:
    if not ops or list(ops) != list(range(ops[0], ops[0] + len(ops))) or \
            not 0 <= ops[0] <= ops[-1] < len(graph.ops):
        raise PlannerError(f"group {list(ops)}: not consecutive ops of the graph")
    rows = rows if rows is not None and rows.graph is graph else _Rows(graph)
    members = [graph.ops[i] for i in ops]
    for op in members:
        why = rows.of(op)[0]
        if why:
            raise PlannerError(f"group {list(ops)}: op {op.index}: {why[0]}")
    users = rows.consumers
    in_group = set(ops)
    out_of = [op.outputs[0] for op in members]
    producer = {t: m for m, t in enumerate(out_of)}
    internal = [t for t in out_of if t not in graph.outputs
                and all(u in in_group for u in users.get(t, []))]
    inputs = list(dict.fromkeys(t for op in members for t in op.inputs
                                if t >= 0 and t not in producer))
    reads = [rows.of(op)[1] for op in members]
    row_read = {t for r in reads for t in r}
    outputs = [t for t in out_of if t not in internal]
    return _Group(
        members=members, out_of=out_of, reads=reads,
        bands=[rows.of(op)[2] for op in members], producer=producer,
        internal=internal, inputs=inputs, outputs=outputs,
        stream_in=[t for t in inputs if t in row_read and graph.tensors[t].planned],
        spill_rows=[t for t in outputs if t not in graph.outputs],
    )


def group_views(graph: Graph, group: StreamGroup) -> int:
    """Buffers the group's C program addresses: inputs, outputs and rings."""
    g = _group(graph, group.ops)
    return len(g.inputs) + len(g.outputs) + len(g.internal)


# -- schedule and rings --------------------------------------------------------------------------

def _pull_schedule(g: _Group) -> list[tuple[int, int]]:
    """Demand-driven order: the group's sinks advance evenly; a row is computed when a
    reader needs it (its producers' rows first), so rings hold few rows."""
    n = len(g.members)
    rows = [len(b) for b in g.bands]
    done = [0] * n
    deps = [[(g.producer[t]) for t in g.reads[m] if t in g.producer] for m in range(n)]
    order: list[tuple[int, int]] = []

    def demand(m: int, last: int) -> None:
        while done[m] <= last:
            r = done[m]
            lo, hi = g.bands[m][r]
            if lo <= hi:
                for p in deps[m]:
                    demand(p, hi)
            order.append((m, r))
            done[m] += 1

    external = set(g.outputs)
    drivers = [m for m in range(n) if g.out_of[m] in external or
               not any(g.out_of[m] in g.reads[k] for k in range(n))]
    while True:
        live = [m for m in drivers if done[m] < rows[m]]
        if not live:
            break
        # The least advanced sink next (ties: the later member, which pulls the others).
        m = min(live, key=lambda k: ((done[k] + 1) / rows[k], -k))
        demand(m, done[m])
    for m in range(n):  # rows no reader needs (e.g. below a VALID pool's last window)
        demand(m, rows[m] - 1)
    return order


def _intervals(g: _Group, schedule: Iterable[tuple[int, int]]) -> dict[int, dict[int, list[int]]]:
    """Tensor -> row -> [first, last] schedule position the row must be held: from its
    production (or first read, for an input) to its last read."""
    n = len(g.members)
    at = [[-1] * len(b) for b in g.bands]  # (member, row) -> its position in the schedule
    for p, (m, r) in enumerate(schedule):
        if 0 <= m < n and 0 <= r < len(at[m]) and at[m][r] < 0:
            at[m][r] = p
    held = {g.out_of[m]: {r: [p, p] for r, p in enumerate(at[m]) if p >= 0} for m in range(n)}
    for m in range(n):
        bands = g.bands[m]
        for t in g.reads[m]:
            rows = held.setdefault(t, {})
            for r, p in enumerate(at[m]):
                if p < 0:
                    continue
                lo, hi = bands[r]
                for i in range(lo, hi + 1):
                    span = rows.get(i)
                    if span is None:
                        rows[i] = [p, p]
                    elif p < span[0]:
                        span[0] = p
                    elif p > span[1]:
                        span[1] = p
    return held


def _fits(rows: dict[int, list[int]], ring: int) -> bool:
    """Whether rows held over these intervals fit a ring of `ring` slots (row i in i % ring)."""
    end: dict[int, int] = {}
    for i in sorted(rows, key=lambda i: rows[i][0]):
        a, b = rows[i]
        if end.get(i % ring, -1) >= a:
            return False
        end[i % ring] = b
    return True


def least_ring(rows: dict[int, list[int]]) -> int:
    """The least R under which no row is overwritten before its last read."""
    if not rows:
        return 1
    # No ring holds fewer rows than are alive together (a sweep over the intervals).
    events = sorted([(a, 1) for a, _ in rows.values()] + [(b + 1, -1) for _, b in rows.values()])
    alive = ring = 0
    for _, d in events:
        alive += d
        ring = max(ring, alive)
    while not _fits(rows, ring):
        ring += 1
    return ring


def held_rows(graph: Graph, group: StreamGroup) -> dict[int, int]:
    """Rows the schedule holds at once of each internal tensor, row-read input and output."""
    g = _group(graph, group.ops)
    return {t: least_ring(rows) for t, rows in _intervals(g, group.schedule).items()}


def schedule_group(graph: Graph, ops: Sequence[int]) -> StreamGroup:
    """The group of consecutive ops `ops`: a demand-driven schedule and its least rings."""
    g = _group(graph, ops)
    schedule = _pull_schedule(g)
    held = _intervals(g, schedule)
    rings = tuple((t, least_ring(held.get(t, {}))) for t in g.internal)
    return StreamGroup(tuple(ops), rings, tuple(schedule))


def line_bytes(graph: Graph, group: StreamGroup) -> tuple[dict[int, int], dict[int, int]]:
    """Arena bytes of the line buffer of each stream_in input and each spill_rows output:
    the rows the schedule holds of it x its row bytes, aligned."""
    g = _group(graph, group.ops)
    held = {t: least_ring(rows) for t, rows in _intervals(g, group.schedule).items()}

    def size(t: int) -> int:
        return align(held.get(t, 1) * row_bytes(graph.tensors[t]))

    return {t: size(t) for t in g.stream_in}, {t: size(t) for t in g.spill_rows}


def verify_schedule(graph: Graph, group: StreamGroup) -> list[str]:
    """Re-simulate `group` row by row: every member row computed once, after the rows it
    reads, each read finding its row in its ring slot, no slot overwritten before its
    row's last read, the rings exactly the internal tensors (empty: valid)."""
    name = f"group {list(group.ops)}"
    try:
        g = _group(graph, group.ops)
    except PlannerError as exc:
        return [str(exc)]
    errors: list[str] = []
    rings = dict(group.rings)
    if len(rings) != len(group.rings) or set(rings) != set(g.internal):
        errors.append(f"{name}: rings for tensors {sorted(rings)}, internal tensors are "
                      f"{sorted(g.internal)}")
    for t, ring in rings.items():
        if t in g.internal and not 1 <= ring <= height(graph.tensors[t]):
            errors.append(f"{name}: ring of tensor {t} holds {ring} rows, not 1.."
                          f"{height(graph.tensors[t])}")
    if errors:
        return errors
    n = len(g.members)
    valid: list[tuple[int, int] | None] = []
    seen: set[tuple[int, int]] = set()
    for p, step in enumerate(group.schedule):
        m, r = step
        if not (0 <= m < n and 0 <= r < len(g.bands[m])):
            errors.append(f"{name}: schedule entry {p} {step}: no such member row")
            valid.append(None)
        elif (m, r) in seen:
            errors.append(f"{name}: schedule entry {p}: member {m} row {r} computed twice")
            valid.append(None)
        else:
            seen.add((m, r))
            valid.append((m, r))
    # How often each internal row is read: a slot may be reused once these are spent.
    remaining: dict[int, dict[int, int]] = {t: {} for t in g.internal}
    for step in valid:
        if step is None:
            continue
        m, r = step
        lo, hi = g.bands[m][r]
        for t in g.reads[m]:
            if t in remaining:
                for i in range(lo, hi + 1):
                    remaining[t][i] = remaining[t].get(i, 0) + 1
    slots = {t: [None] * rings[t] for t in g.internal}
    produced: dict[int, set[int]] = {t: set() for t in g.internal}
    for p, step in enumerate(valid):
        if step is None:
            continue
        m, r = step
        lo, hi = g.bands[m][r]
        for t in g.reads[m]:
            if t not in slots:
                continue  # external: read whole or through its line buffer
            for i in range(lo, hi + 1):
                if slots[t][i % rings[t]] == i:
                    remaining[t][i] -= 1
                    continue
                what = "overwritten" if i in produced[t] else "not produced yet"
                errors.append(f"{name}: entry {p} (member {m} row {r}) reads row {i} of "
                              f"tensor {t}: {what}")
        t = g.out_of[m]
        if t in slots:
            slot = r % rings[t]
            old = slots[t][slot]
            if old is not None and remaining[t].get(old, 0) > 0:
                errors.append(f"{name}: entry {p} (member {m} row {r}) overwrites row {old} "
                              f"of tensor {t} in ring slot {slot} before its last read")
            slots[t][slot] = r
            produced[t].add(r)
        if len(errors) > MAX_ERRORS:
            return errors + [f"{name}: and more"]
    missing = [(m, r) for m in range(n) for r in range(len(g.bands[m])) if (m, r) not in seen]
    if missing:
        errors.append(f"{name}: {len(missing)} member rows never computed, first "
                      f"{missing[0]}")
    return errors


# -- the planned graph ------------------------------------------------------------------------

def _group_op(graph: Graph, group: StreamGroup, number: int, index: int,
              tensors: list[Tensor], g: _Group | None = None,
              held: dict[int, int] | None = None) -> Op:
    """The op that runs `group`, its ring tensors appended to `tensors` (`held`: the rows
    its schedule holds of each tensor, when already known)."""
    g = g or _group(graph, group.ops)
    rings = dict(group.rings)
    if set(rings) != set(g.internal):
        raise PlannerError(f"group {list(group.ops)}: rings for tensors {sorted(rings)}, "
                           f"internal tensors are {sorted(g.internal)}")
    scratch = []
    for t, ring in group.rings:
        src = graph.tensors[t]
        _, _, w, c = src.shape
        scratch.append(len(tensors))
        tensors.append(Tensor(len(tensors), f"{src.name}/ring", (int(ring), int(w), int(c)),
                              src.dtype, int(ring) * row_bytes(src), Role.SCRATCH))
    if held is None:
        held = {t: least_ring(rows) for t, rows in _intervals(g, group.schedule).items()}

    def lines(ts: list[int]) -> list[list[int]]:
        return [[t, align(held.get(t, 1) * row_bytes(graph.tensors[t]))] for t in ts]

    attrs = {
        "kernel": GROUP_KERNEL, "group": number, "members": list(group.ops),
        "stream_in": lines(g.stream_in), "spill_rows": lines(g.spill_rows),
        "rings": [[t, int(ring)] for t, ring in group.rings],
        "schedule": [[int(m), int(r)] for m, r in group.schedule],
    }
    return Op(index, f"group{number}", GROUP_OP_TYPE, OpKind.STREAMED_GROUP,
              tuple(g.inputs), tuple(g.outputs), tuple(scratch), attrs)


def apply_groups(source: Graph, groups: Iterable[StreamGroup]) -> Graph:
    """`source` with each group replaced by one STREAMED_GROUP op (its rings as scratch);
    source tensor ids stay, other ops keep their order with new indices."""
    ordered = sorted(groups, key=lambda g: g.ops[0] if g.ops else -1)
    if not ordered:
        return source
    starts: dict[int, tuple[int, StreamGroup]] = {}
    covered: set[int] = set()
    for number, group in enumerate(ordered):
        if not group.ops or covered & set(group.ops):
            raise PlannerError(f"group {list(group.ops)}: empty or overlapping another group")
        covered |= set(group.ops)
        starts[group.ops[0]] = (number, group)
    tensors = list(source.tensors)
    ops: list[Op] = []
    i = 0
    rows = _Rows(source)
    while i < len(source.ops):
        if i in starts:
            number, group = starts[i]
            g = _group(source, group.ops, rows)
            ops.append(_group_op(source, group, number, len(ops), tensors, g))
            i = group.ops[-1] + 1
        else:
            ops.append(replace(source.ops[i], index=len(ops)))
            i += 1
    return replace(source, tensors=tuple(tensors), ops=tuple(ops), source=source)


def groups_of(graph: Graph) -> tuple[StreamGroup, ...]:
    """The streamed groups a planned graph runs (empty for any other graph)."""
    return tuple(
        StreamGroup(tuple(int(m) for m in op.attrs["members"]),
                    tuple((int(t), int(r)) for t, r in op.attrs["rings"]),
                    tuple((int(m), int(r)) for m, r in op.attrs["schedule"]))
        for op in graph.ops if op.kind == OpKind.STREAMED_GROUP)


def planned_graph(source_graph: Graph, plan: Plan) -> Graph:
    """The graph `plan` was made for, from the frontend's graph: its ops on the plan's
    kernels, its groups replaced by group ops."""
    source = kernels.with_op_kernels(source_graph, plan.op_kernels)
    return apply_groups(source, plan.stream_groups)


# -- which groups ----------------------------------------------------------------------------

def group_candidates(source: Graph, profile) -> list[tuple[int, ...]]:
    """Maximal runs (two ops or more) of consecutive ops the row kernels compute; none
    where the profile has no custom kernels."""
    if not getattr(profile, "custom_kernels", True):
        return []
    runs: list[list[int]] = []
    current: list[int] = []
    for op in source.ops:
        if not kernels.row_refusals(source, op):
            current.append(op.index)
            continue
        runs.append(current)
        current = []
    runs.append(current)
    return [tuple(r) for r in runs if len(r) >= 2]


def _segment_cost(source: Graph, ops: tuple[int, ...], can_stream: bool,
                  rows: _Rows) -> tuple[int, int] | None:
    """(working set, rows computed) of `ops` as one group; None if the C limits refuse it."""
    from .analysis import group_working_set

    if len(ops) > kernels.GROUP_MAX_OPS:
        return None
    g = _group(source, ops, rows)
    if len(g.inputs) + len(g.outputs) + len(g.internal) > kernels.GROUP_MAX_VIEWS:
        return None
    schedule = tuple(_pull_schedule(g))
    held = {t: least_ring(r) for t, r in _intervals(g, schedule).items()}
    group = StreamGroup(ops, tuple((t, held.get(t, 1)) for t in g.internal), schedule)
    tensors = list(source.tensors)
    op = _group_op(source, group, 0, 0, tensors, g, held)
    need, _ = group_working_set(tensors, op, can_stream)
    return need, len(schedule)


def _ring_floor(source: Graph, rows: _Rows, ops: Sequence[int]) -> int:
    """A lower bound on the rings of group `ops`: each internal tensor holds at least the
    rows one reader reads at once (its widest band). It only grows as the group takes in
    earlier ops, so the search stops extending there."""
    in_group = set(ops)
    total = 0
    for i in ops:
        t = source.ops[i].outputs[0]
        users = rows.consumers.get(t, [])
        if t not in source.outputs and all(u in in_group for u in users):
            widest = max((hi - lo + 1 for u in users for lo, hi in rows.of(source.ops[u])[2]),
                         default=1)
            total += align(max(widest, 1) * row_bytes(source.tensors[t]))
    return total


def choose_groups(source: Graph, profile) -> tuple[StreamGroup, ...]:
    """The partition of each candidate run into groups (two ops or more) and single ops
    that minimises the run's largest working set (the streamed bound there); among those,
    the one computing fewest rows in groups (each costs row bookkeeping).

    A concat and the conv it fuses into count as fused only when both stay single ops
    next to each other; the bound of the result is re-derived on the planned graph."""
    from .analysis import fusion_groups, op_working_sets

    can_stream = profile.can_stream
    fused = op_working_sets(source, can_stream, profile.fusion)
    alone = op_working_sets(source, can_stream, profile.fusion, pair_fusion=False)
    pairs = {(f.concat, f.conv) for f in fusion_groups(source) if f.conv is not None} \
        if profile.fusion else set()
    rows_of = _Rows(source)
    chosen: list[StreamGroup] = []
    inf = float("inf")
    for run in group_candidates(source, profile):
        n = len(run)
        options: dict[tuple[int, int], list[tuple[float, int, bool]]] = {}

        def segment(j: int, i: int, run=run, options=options) -> list[tuple[float, int, bool]]:
            """(working set, group rows, as a group) of each way to run run[j:i]."""
            if (j, i) not in options:
                found: list[tuple[float, int, bool]] = []
                if i - j == 1:
                    found.append((alone[run[j]], 0, False))
                else:
                    if i - j == 2 and (run[j], run[j + 1]) in pairs:
                        found.append((max(fused[run[j]], fused[run[j + 1]]), 0, False))
                    c = _segment_cost(source, run[j:i], can_stream, rows_of)
                    if c is not None:
                        found.append((c[0], c[1], True))
                options[(j, i)] = found
            return options[(j, i)]

        def starts(i: int, cap: float, run=run) -> Iterator[int]:
            """Segment starts for run[:i], longest segment last, while its rings alone
            stay below `cap` (they only grow with the segment)."""
            for j in range(i - 1, max(0, i - kernels.GROUP_MAX_OPS) - 1, -1):
                if cap < inf and i - j > 2 and _ring_floor(source, rows_of, run[j:i]) >= cap:
                    return
                yield j

        best = [0.0] + [inf] * n  # least largest working set of run[:i]
        for i in range(1, n + 1):
            for j in starts(i, inf):
                for need, _, _ in segment(j, i):
                    best[i] = min(best[i], max(best[j], need))
                if i - j > 2 and _ring_floor(source, rows_of, run[j:i]) >= best[i]:
                    break
        bound = best[n]
        # Fewest group rows of run[:i] within the bound, then fewest groups (each group
        # boundary is a tensor to keep whole or move through storage).
        rows: list[tuple[float, int]] = [(0.0, 0)] + [(inf, 0)] * n
        cut: list[tuple[int, bool]] = [(0, False)] * (n + 1)
        for i in range(1, n + 1):
            for j in starts(i, bound + 1):
                for need, extra, grouped in segment(j, i):
                    cost = (rows[j][0] + extra, rows[j][1] + grouped)
                    if need <= bound and cost < rows[i]:
                        rows[i], cut[i] = cost, (j, grouped)
        i = n
        while i > 0:
            j, grouped = cut[i]
            if grouped:
                chosen.append(schedule_group(source, run[j:i]))
            i = j
    return tuple(sorted(chosen, key=lambda g: g.ops[0]))


def streamed_bound(source: Graph, profile):
    """The working-set bound of the graph with the chosen groups (analysis.Bound)."""
    from .analysis import working_set_bound

    planned = apply_groups(source, choose_groups(source, profile))
    return working_set_bound(planned, profile.can_stream, profile.fusion)
