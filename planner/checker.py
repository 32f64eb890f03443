"""The one independent plan checker: every plan passes it before it is written anywhere.

It re-derives what must hold from the graph alone (TFLM lifetimes, fusion groups,
line-buffer sizes) and never trusts a planner's bookkeeping:

1. geometry: segments aligned, inside [0, peak), and no two segments alive at the
   same step overlap in address;
2. every use finds its data: each op's outputs and scratch are resident at its step,
   each input is resident there or streamed into a fused concat / concat+conv through
   a line buffer; graph inputs at step 0 and outputs at the last step are resident;
3. every byte that comes back was put away: a segment that does not start where the
   tensor is created begins with a fetch, and every fetch or stream follows a spill
   made while the data was resident;
4. storages: known names, spilled data inside their capacity, no two spills sharing
   storage bytes;
5. kernels: every fusion, stream and custom kernel the plan relies on is one the kernel
   table (planner/kernels.py) offers, and the plan was made for this graph's kernels;
6. transfer windows (async transfers): each inside the steps, of the shape plan.py
   states, its buffer's segment spanning the whole window (so no other buffer reuses
   the bytes while the transfer is in flight), nothing read before its fetch lands and
   no fetch issued before its spill is done.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from itertools import pairwise

from .analysis import fusion_groups, lifetimes, line_buffer_bytes
from .ir import ALIGNMENT, Graph, Role, align
from .kernels import plan_violations
from .plan import Plan, Segment, Transfer


class PlanError(Exception):
    """A plan that breaks a rule; the message lists every violation found."""


Key = tuple[int, "int | None"]


def check(graph: Graph, plan: Plan, storage_capacity: Mapping[str, int] | None = None) -> list[str]:
    """All violations of `plan` against `graph`, empty when the plan is valid."""
    errors: list[str] = []
    if plan.num_steps != graph.num_steps:
        errors.append(f"plan has {plan.num_steps} steps, graph has {graph.num_steps}")
        return errors
    life = lifetimes(graph)
    parts = {(p.tensor, p.index): p for p in plan.parts}
    split = {p.tensor for p in plan.parts}
    errors += _check_geometry(graph, plan, life, parts)
    errors += _check_parts(graph, plan, split)
    fused_concat, fused_conv, stream_ops, errs = _check_fusions(graph, plan)
    errors += errs
    errors += plan_violations(graph, plan)  # every kernel it relies on exists (kernels.py)
    streams = {(t.tensor, t.part, t.step) for t in plan.transfers if t.kind == "stream"}
    lines = {(s.tensor, s.part, s.first) for s in plan.segments if s.role == "line_buffer"}

    def resident(t: int, part: int | None, step: int) -> bool:
        return any(s.first <= step <= s.last for s in plan.segments_of(t, part))

    def interleaved(t: int, step: int) -> bool:
        firsts = [plan.segments_of(t, i)[:1] for i in (0, 1)]
        return all(f and f[0].first <= step <= f[0].last for f in firsts)

    # Only a fused concat (or concat+conv) takes a split tensor's two parts as two inputs;
    # any other op needs the tensor as produced, before part 1 leaves and part 0 is compacted.
    def available(t: int, step: int, streamable: bool) -> str | None:
        keys: list[int | None] = [0, 1] if t in split else [None]
        if t in split and not streamable:
            return None if interleaved(t, step) else "split tensor read whole after its split"
        for part in keys:
            if resident(t, part, step):
                continue
            if streamable and (t, part, step) in streams:
                if (t, part, step) not in lines:
                    return f"streamed part {part} has no line buffer"
                continue
            return "not resident" + (" and not streamed" if streamable else "")
        return None

    def need(t: int, step: int, what: str, streamable: bool = False):
        if t < 0 or t not in life:
            return
        why = available(t, step, streamable)
        if why:
            errors.append(f"{what} tensor {t} '{graph.tensors[t].name}' at step {step}: {why}")

    for t in graph.inputs:
        need(t, 0, "graph input")
    last_step = graph.num_steps - 1
    for t in graph.outputs:
        need(t, last_step, "graph output")
    for op in graph.ops:
        step = op.index + 1
        if op.index in fused_concat:
            continue  # its reads happen at the conv's step, its output never exists
        for t in op.outputs + op.scratch:
            need(t, step, f"op {op.index} output")
        reads = list(dict.fromkeys(op.inputs))
        streamable = op.index in stream_ops
        if op.index in fused_conv:
            concat = graph.ops[fused_conv[op.index]]
            reads = [t for t in reads if t != concat.outputs[0]]
            for t in dict.fromkeys(concat.inputs):
                need(t, step, f"op {op.index} fused input", streamable=True)
        for t in reads:
            need(t, step, f"op {op.index} input", streamable)
    errors += _check_transfers(graph, plan, life, parts, storage_capacity)
    errors += _check_windows(graph, plan)
    return errors


def assert_valid(graph: Graph, plan: Plan, storage_capacity: Mapping[str, int] | None = None):
    errors = check(graph, plan, storage_capacity)
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise PlanError(f"plan '{plan.planner}' is invalid: {shown}")


def _needed_size(graph: Graph, seg: Segment, parts) -> int:
    if seg.role == "line_buffer":
        return 0  # checked against the fused op in _check_fusions
    if seg.part is not None:
        part = parts.get((seg.tensor, seg.part))
        return align(part.nbytes) if part else 0
    return align(graph.tensors[seg.tensor].nbytes)


def _check_geometry(graph: Graph, plan: Plan, life, parts) -> list[str]:
    errors = []
    for s in plan.segments:
        where = f"segment of tensor {s.tensor} [{s.first},{s.last}] @{s.offset}"
        if not 0 <= s.tensor < len(graph.tensors):
            errors.append(f"{where}: no such tensor")
            continue
        if s.role == "tensor" and s.tensor not in life:
            errors.append(f"{where}: tensor is not planned in the arena")
        if s.part is not None and (s.tensor, s.part) not in parts:
            errors.append(f"{where}: part {s.part} is not declared")
        if not 0 <= s.first <= s.last < plan.num_steps:
            errors.append(f"{where}: steps outside 0..{plan.num_steps - 1}")
        if s.offset < 0 or s.offset % ALIGNMENT:
            errors.append(f"{where}: offset not a non-negative multiple of {ALIGNMENT}")
        if s.size < _needed_size(graph, s, parts) or s.size <= 0:
            errors.append(f"{where}: size {s.size} below {_needed_size(graph, s, parts)}")
        if s.end > plan.peak_bytes:
            errors.append(f"{where}: ends at {s.end}, above the peak {plan.peak_bytes}")
    # Sweep in time: only segments alive together can collide.
    ordered = sorted(plan.segments, key=lambda s: s.first)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if b.first > a.last:
                break
            if a.overlaps_in_space(b):
                errors.append(
                    f"tensors {a.tensor} and {b.tensor} overlap: [{a.offset},{a.end}) and "
                    f"[{b.offset},{b.end}) both alive at step {max(a.first, b.first)}"
                )
    for t, (first, _) in life.items():
        keys = [p.index for p in plan.parts if p.tensor == t] or [None]
        for key in keys:
            segs = plan.segments_of(t, key)
            if segs and segs[0].first != first:
                errors.append(f"tensor {t} first resident at {segs[0].first}, created at {first}")
            for a, b in pairwise(segs):
                if b.first <= a.last:
                    errors.append(f"tensor {t} part {key} has segments overlapping in time")
    return errors


def _check_parts(graph: Graph, plan: Plan, split: set[int]) -> list[str]:
    errors = []
    for t in split:
        if not 0 <= t < len(graph.tensors):
            errors.append(f"part of tensor {t}: no such tensor")
            continue
        tensor = graph.tensors[t]
        ps = sorted((p for p in plan.parts if p.tensor == t), key=lambda p: p.index)
        c = tensor.channels
        if [p.index for p in ps] != [0, 1] or c is None:
            errors.append(f"tensor {t}: a split needs parts 0 and 1 of a tensor with channels")
            continue
        k, s = ps
        if not (k.channel_start == 0 and k.channel_stop == s.channel_start
                and s.channel_stop == c and 0 < k.channel_stop < c):
            errors.append(f"tensor {t}: parts do not split channels 0..{c} in two")
        if k.nbytes + s.nbytes != tensor.nbytes or k.nbytes * c != tensor.nbytes * k.channel_stop:
            errors.append(f"tensor {t}: part sizes do not match their channels")
        if plan.segments_of(t, None):
            errors.append(f"tensor {t}: split tensor also has whole-tensor segments")
        k0, s0 = plan.segments_of(t, 0)[:1], plan.segments_of(t, 1)[:1]
        if not k0 or not s0:
            errors.append(f"tensor {t}: both parts need a first segment")
            continue
        if s0[0].offset != k0[0].offset + align(k.nbytes) or s0[0].first != k0[0].first:
            errors.append(f"tensor {t}: first segments of its parts are not back to back")
        if k0[0].last < s0[0].last:
            errors.append(f"tensor {t}: kept part leaves before the spilled part")
    return errors


def _check_fusions(graph: Graph, plan: Plan):
    errors = []
    groups = {g.concat: g for g in fusion_groups(graph)}
    fused_concat: dict[int, int] = {}  # concat op -> conv op
    fused_conv: dict[int, int] = {}  # conv op -> concat op
    stream_ops: set[int] = set()
    for f in plan.fusions:
        g = groups.get(f.concat)
        if g is None or (f.conv is not None and f.conv != g.conv):
            errors.append(f"fusion of ops {f.concat}/{f.conv} is not a fusible concat group")
            continue
        if f.conv is None:
            stream_ops.add(f.concat)
        else:
            fused_concat[f.concat] = f.conv
            fused_conv[f.conv] = f.concat
            stream_ops.add(f.conv)
            out = graph.ops[f.concat].outputs[0]
            if plan.segments_of(out):
                errors.append(f"fused concat output {out} still has arena segments")
    parts = {(p.tensor, p.index): p for p in plan.parts}
    for s in plan.segments:
        if s.role != "line_buffer" or not 0 <= s.tensor < len(graph.tensors):
            continue  # an unknown tensor is reported by the geometry check
        op = s.first - 1
        if s.first != s.last or op not in stream_ops:
            errors.append(f"line buffer of tensor {s.tensor} is not at one fused op's step")
            continue
        part = parts.get((s.tensor, s.part))
        need = line_buffer_bytes(graph, s.tensor, op if op in fused_conv else None,
                                 part.nbytes if part else None)
        if s.size < need:
            errors.append(f"line buffer of tensor {s.tensor} at step {s.first}: {s.size} < {need}")
    return fused_concat, fused_conv, stream_ops, errors


def _check_transfers(graph: Graph, plan: Plan, life, parts, capacity) -> list[str]:
    errors = []
    by_key: dict[Key, list[Transfer]] = defaultdict(list)
    for tr in plan.transfers:
        by_key[(tr.tensor, tr.part)].append(tr)
        if tr.tensor not in life or graph.tensors[tr.tensor].role == Role.SCRATCH:
            errors.append(f"transfer of tensor {tr.tensor}: not a planned activation")
            continue
        if tr.part is not None and (tr.tensor, tr.part) not in parts:
            errors.append(f"{tr.kind} of tensor {tr.tensor}: part {tr.part} is not declared")
            continue
        expected = parts[(tr.tensor, tr.part)].nbytes if tr.part is not None else \
            graph.tensors[tr.tensor].nbytes
        if tr.nbytes != expected:
            errors.append(f"{tr.kind} of tensor {tr.tensor}: {tr.nbytes} B, expected {expected}")
        if capacity is not None and tr.storage not in capacity:
            errors.append(f"{tr.kind} of tensor {tr.tensor}: unknown storage '{tr.storage}'")
    for key, trs in by_key.items():
        t, part = key
        spills = [tr for tr in trs if tr.kind == "spill"]
        segs = plan.segments_of(t, part)
        if len(spills) > 1:
            errors.append(f"tensor {t} part {part} spilled {len(spills)} times")
        spill = spills[0] if spills else None
        if spill and not any(s.first <= spill.step <= s.last for s in segs):
            errors.append(f"tensor {t} spilled at step {spill.step} while not resident")
        for tr in trs:
            if tr.kind == "spill":
                continue
            if spill is None or spill.step >= tr.step or tr.storage != spill.storage:
                errors.append(f"{tr.kind} of tensor {t} at step {tr.step} has no earlier spill")
            elif tr.address != spill.address:
                errors.append(f"{tr.kind} of tensor {t} at step {tr.step} reads address "
                              f"{tr.address}, its spill wrote {spill.address}")
            if tr.kind == "fetch" and not any(s.first == tr.window[0] for s in segs):
                errors.append(f"fetch of tensor {t} at step {tr.step} starts no segment")
    for t in life:
        keys = [p.index for p in plan.parts if p.tensor == t] or [None]
        for key in keys:
            fetch_steps = {tr.window[0] for tr in by_key.get((t, key), []) if tr.kind == "fetch"}
            for seg in plan.segments_of(t, key)[1:]:
                if seg.first not in fetch_steps:
                    errors.append(f"tensor {t} reappears at step {seg.first} without a fetch")
    # Storage: spills hold disjoint byte ranges within capacity.
    used: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for tr in plan.transfers:
        if tr.kind == "spill":
            used[tr.storage].append((tr.address, tr.address + tr.nbytes))
    for name, ranges in used.items():
        ranges.sort()
        for (_, a1), (b0, _) in pairwise(ranges):
            if b0 < a1:
                errors.append(f"storage '{name}': spills overlap at byte {b0}")
        if capacity is not None and name in capacity and ranges and \
                max(end for _, end in ranges) > capacity[name]:
            errors.append(f"storage '{name}': spills exceed its capacity {capacity[name]}")
        if any(start < 0 for start, _ in ranges):
            errors.append(f"storage '{name}': negative address")
    return errors


def _check_windows(graph: Graph, plan: Plan) -> list[str]:
    """Async transfer windows (plan.py): shape, residency over the window, ordering."""
    errors = []
    last_step = plan.num_steps - 1
    reads = _read_steps(graph, plan)
    spill_end: dict[Key, int] = {}
    for tr in plan.transfers:
        if tr.kind == "spill":
            spill_end[(tr.tensor, tr.part)] = tr.window[1]
    for tr in plan.transfers:
        first, last = tr.window
        what = f"{tr.kind} of tensor {tr.tensor} at step {tr.step}"
        if tr.window == (tr.step, tr.step):
            if tr.kind != "spill" and (tr.tensor, tr.part) in spill_end and \
                    spill_end[(tr.tensor, tr.part)] >= tr.step:
                errors.append(f"{what} reads storage before its spill completes "
                              f"(step {spill_end[(tr.tensor, tr.part)]})")
            continue
        if not 0 <= first <= last <= last_step:
            errors.append(f"{what}: window [{first},{last}] outside 0..{last_step}")
            continue
        if tr.kind in ("stream", "spill_rows"):
            errors.append(f"{what}: a {tr.kind} is blocking (window [{first},{last}])")
            continue
        segs = plan.segments_of(tr.tensor, tr.part)
        if tr.kind == "spill":
            if first != tr.step or last < tr.step:
                errors.append(f"{what}: a spill's window starts at its step "
                              f"(issue == step <= complete), not [{first},{last}]")
                continue
            if tr.part is not None:
                errors.append(f"{what}: a part is compacted right after its spill, "
                              "so the spill of a part is blocking")
            if not any(s.first <= first and last <= s.last for s in segs):
                errors.append(f"{what}: source not resident over its window [{first},{last}]")
        else:  # fetch
            if last != tr.step or first > tr.step:
                errors.append(f"{what}: a fetch's window ends at its step "
                              f"(issue <= complete == step), not [{first},{last}]")
                continue
            if not any(s.first == first and s.last >= last for s in segs):
                errors.append(f"{what}: destination segment does not span its window "
                              f"[{first},{last}]")
            early = sorted(r for r in reads.get(tr.tensor, ()) if first <= r < last)
            if early:
                errors.append(f"{what}: tensor read at step {early[0]}, while its fetch "
                              "is in flight")
            done = spill_end.get((tr.tensor, tr.part))
            if done is not None and first <= done:
                errors.append(f"{what}: issued at step {first}, before its spill completes "
                              f"(step {done})")
    return errors


def _read_steps(graph: Graph, plan: Plan) -> dict[int, set[int]]:
    """Tensor id -> steps at which an op reads it (a fused concat reads at its conv's step)."""
    fused = {f.concat: f.conv for f in plan.fusions if f.conv is not None}
    out: dict[int, set[int]] = defaultdict(set)
    for op in graph.ops:
        step = (fused[op.index] if op.index in fused else op.index) + 1
        for t in op.inputs:
            if t >= 0:
                out[t].add(step)
    for t in graph.outputs:
        out[t].add(graph.num_steps - 1)
    return out
