"""C glue for a checked plan: `tinyplan_plan.h/.c` tables plus the static runtime in backends/c/.

The tables say, for a device or the host harness, everything the runtime does at each
step (docs/c_runtime.md): the arena size; every tensor with its segments (offset, steps)
and channel geometry; per step, before the op, the fetches and stream openings, and
after it, the spills and the part-0 compactions of split tensors; the storages. C99,
no dynamic allocation: only the per-spill records and stream states are writable.

Nothing here re-decides the plan: every offset, step, storage and address is copied
from it. What the generator derives is the data layout the plan implies (channel
gathers of interleaved parts, stream rows, line-buffer rows, flash blocks to erase).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.analysis import fusion_groups, lifetimes, stream_rows
from planner.checker import assert_valid
from planner.device import DeviceProfile
from planner.errors import PlannerError
from planner.ir import DTYPE_BYTES, Graph
from planner.kernels import c_defines, plan_violations
from planner.plan import Plan, Segment, Transfer

C_DIR = Path(__file__).parent  # the C sources sit beside this module
RUNTIME_SOURCES = (
    "tp_storage.h", "tp_storage_file.c", "tp_storage_flash.c", "tp_storage_remote.c",
    "tp_stream_tcp.h", "tp_stream_tcp.c", "tp_compress.h", "tp_compress.c",
    "tp_runtime.h", "tp_runtime.c", "tp_kernels.h", "tp_kernels.c", "tp_rows.h", "tp_rows.c",
    "tflm_ops.cc", "tp_async.h", "tp_async.c",
)
SPILL, FETCH, STREAM, COMPACT = 0, 1, 2, 3
# Asynchronous windows (tp_runtime.h): the waits, and the transfers they complete.
WAIT_SPILL, WAIT_FETCH, SPILL_ASYNC, FETCH_ASYNC = 4, 5, 6, 7
OP_PLAIN, OP_STREAM_CONCAT, OP_FUSED_AWAY, OP_FUSED_CONV, OP_CHANNEL_CONCAT = 0, 1, 2, 3, 4
Key = tuple[int, "int | None"]


@dataclass
class StorageDesc:
    name: str
    capacity: int
    erase_block: int
    write_granularity: int
    compression: bool


@dataclass
class Action:
    kind: int
    step: int
    tensor: int
    part: int | None
    storage: int = 0
    record: int = 0
    address: int = 0
    nbytes: int = 0
    arena_offset: int = 0
    gather: tuple[int, int, int, int] = (1, 0, 0, 0)
    channels: tuple[int, int] = (0, 0)
    erase: tuple[int, int] = (0, 0)
    rows: int = 0
    row_bytes: int = 0
    line_rows: int = 0
    line_bytes: int = 0
    stream: int = 0
    # The window in flight (Transfer.window), for the phase an asynchronous fetch goes in;
    # not a table field (the kind says asynchronous, the WAIT's phase says until when).
    issue: int = -1

    def fields(self) -> list[int]:
        return [self.kind, self.step, self.tensor, -1 if self.part is None else self.part,
                self.storage, self.record, self.address, self.nbytes, self.arena_offset,
                *self.gather, *self.channels, *self.erase, self.rows, self.row_bytes,
                self.line_rows, self.line_bytes, self.stream]


def storage_names(plan: Plan, profile: DeviceProfile | None) -> list[str]:
    """Storage ids: the profile's order, else sorted names (as the .tflite rewrite numbers them)."""
    used = sorted({tr.storage for tr in plan.transfers})
    if profile is not None and profile.storages:
        ordered = [s.name for s in profile.storages]
        return [n for n in ordered if n in used] + [n for n in used if n not in ordered]
    return used


def storage_table(plan: Plan, profile: DeviceProfile | None) -> list[StorageDesc]:
    out = []
    for name in storage_names(plan, profile):
        ends = [tr.address + tr.nbytes for tr in plan.transfers if tr.storage == name]
        if profile is not None and any(s.name == name for s in profile.storages):
            s = profile.storage(name)
            out.append(StorageDesc(name, s.capacity, max(1, s.erase_block),
                                   max(1, s.write_granularity), s.compression))
        else:
            out.append(StorageDesc(name, max(ends), 1, 1, False))
    return out


class _Geometry:
    """Channel layout of a tensor: `outer` repeats of C channels of `inner` bytes each."""

    def __init__(self, graph: Graph, t: int) -> None:
        tensor = graph.tensors[t]
        es = DTYPE_BYTES.get(tensor.dtype, 1)
        shape = tensor.shape or (1,)
        axis = tensor.channel_axis
        if axis is None:
            self.outer, self.channels, self.inner = 1, 0, tensor.nbytes
        else:
            axis %= len(shape)
            self.outer = _prod(shape[:axis])
            self.channels = shape[axis]
            self.inner = _prod(shape[axis + 1:]) * es
        self.height = self.width = 0
        if len(shape) == 4 and graph.layout == "NHWC":
            self.height, self.width = shape[1], shape[2]
        self.rows = stream_rows(tensor, graph.layout)

    def gather(self, start: int, stop: int) -> tuple[int, int, int, int]:
        stride = self.channels * self.inner
        return (self.outer, stride, start * self.inner, (stop - start) * self.inner)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def build_tables(graph: Graph, plan: Plan, profile: DeviceProfile | None) -> dict[str, Any]:
    """Everything tinyplan_plan.c holds, as plain Python values (tests read it too)."""
    storages = storage_table(plan, profile)
    sid = {s.name: i for i, s in enumerate(storages)}
    parts = {(p.tensor, p.index): p for p in plan.parts}
    split = {p.tensor: parts[(p.tensor, 0)].channel_stop for p in plan.parts if p.index == 0}
    geo = {t: _Geometry(graph, t) for t in lifetimes(graph)}

    def segs(t: int, part: int | None) -> list[Segment]:
        return plan.segments_of(t, part)

    def resident(t: int, part: int | None, step: int) -> Segment:
        for s in segs(t, part):
            if s.first <= step <= s.last:
                return s
        raise PlannerError(f"tensor {t} part {part} is not resident at step {step}")

    def interleaved_until(t: int) -> int:
        """Last step at which both parts sit interleaved at part 0's first offset."""
        return min(segs(t, 0)[0].last, segs(t, 1)[0].last)

    def channels(t: int, part: int | None) -> tuple[int, int]:
        if part is None:
            return 0, geo[t].channels
        p = parts[(t, part)]
        return p.channel_start, p.channel_stop

    spills: dict[Key, Transfer] = {}
    for tr in plan.transfers:
        if tr.kind == "spill":
            spills[(tr.tensor, tr.part)] = tr
    records = {key: i for i, key in enumerate(sorted(spills, key=lambda k: (spills[k].step, k[0],
                                                                            -1 if k[1] is None
                                                                            else k[1])))}
    fused_conv_of = {f.conv: f.concat for f in plan.fusions if f.conv is not None}
    stream_concat = {f.concat for f in plan.fusions if f.conv is None}
    lines = {(s.tensor, s.part, s.first): s for s in plan.segments if s.role == "line_buffer"}
    erased: dict[int, set[int]] = {i: set() for i in range(len(storages))}

    actions: list[Action] = []
    n_streams = 0
    for tr in sorted(plan.transfers, key=lambda x: (x.step, x.kind != "spill", x.tensor,
                                                    -1 if x.part is None else x.part)):
        t, part = tr.tensor, tr.part
        spill = spills.get((t, part))
        if spill is None:
            raise PlannerError(f"{tr.kind} of tensor {t} without a spill")
        a = Action(kind=SPILL, step=tr.step, tensor=t, part=part, storage=sid[spill.storage],
                   record=records[(t, part)], address=spill.address, nbytes=tr.nbytes,
                   channels=channels(t, part))
        g = geo[t]
        if tr.kind == "spill":
            if part is not None and tr.step <= interleaved_until(t):
                a.arena_offset = segs(t, 0)[0].offset
                a.gather = g.gather(*channels(t, part))
            else:
                a.arena_offset = resident(t, part, tr.step).offset
                a.gather = (1, tr.nbytes, 0, tr.nbytes)
            a.erase = _erase_range(storages[a.storage], spill, erased[a.storage])
        elif tr.kind == "fetch":
            a.kind = FETCH
            a.arena_offset = _fetch_destination(segs(t, part), tr).offset
        else:
            a.kind = STREAM
            line = lines.get((t, part, tr.step))
            if line is None:
                raise PlannerError(f"stream of tensor {t} at step {tr.step} has no line buffer")
            op = tr.step - 1
            kernel_rows = 1
            if op in fused_conv_of:
                kernel_rows = int(graph.ops[op].attrs.get("kernel", (1, 1))[0])
                if int(graph.ops[op].attrs.get("dilations", (1, 1))[0]) != 1:
                    raise PlannerError(f"op {op}: streamed input into a dilated conv")
            a.rows = g.rows
            a.row_bytes = -(-tr.nbytes // g.rows)
            a.line_rows = min(kernel_rows, g.rows)
            a.line_bytes = line.size
            a.arena_offset = line.offset
            a.stream = n_streams
            n_streams += 1
        actions.append(a)
        actions += _window_actions(a, tr)
    for t, k in split.items():
        end = interleaved_until(t)
        if segs(t, 0)[0].last > end and geo[t].outer > 1:
            actions.append(Action(kind=COMPACT, step=end, tensor=t, part=0,
                                  arena_offset=segs(t, 0)[0].offset, nbytes=parts[(t, 0)].nbytes,
                                  gather=geo[t].gather(0, k), channels=(0, k)))

    # Stable: within a phase waits come first, spills keep step order and come before
    # compactions.
    actions.sort(key=lambda a: (_phase(a), a.kind not in (WAIT_SPILL, WAIT_FETCH),
                                a.kind == COMPACT))
    phase_start = [0] * (2 * plan.num_steps + 1)
    for p in range(2 * plan.num_steps + 1):
        phase_start[p] = sum(1 for a in actions if _phase(a) < p)

    segments = sorted(plan.segments, key=lambda s: (s.tensor, s.first, s.role,
                                                    -1 if s.part is None else s.part))
    first_seg: dict[int, int] = {}
    for i, s in enumerate(segments):
        first_seg.setdefault(s.tensor, i)
    tensors = []
    for t in graph.tensors:
        g = geo.get(t.id)
        n = sum(1 for s in segments if s.tensor == t.id)
        tensors.append({
            "name": t.name, "nbytes": t.nbytes,
            "outer": g.outer if g else 1, "inner": g.inner if g else t.nbytes,
            "channels": g.channels if g else 0, "split": split.get(t.id, 0),
            "height": g.height if g else 0, "width": g.width if g else 0,
            "rows": g.rows if g else 1, "first_segment": first_seg.get(t.id, 0),
            "num_segments": n,
        })
    ops, op_io = [], []
    fused_away = {f.concat: f.conv for f in plan.fusions if f.conv is not None}
    channel_concats = {g.concat for g in fusion_groups(graph)}
    for op in graph.ops:
        if op.index in fused_away:
            fused, partner = OP_FUSED_AWAY, fused_away[op.index]
        elif op.index in fused_conv_of:
            fused, partner = OP_FUSED_CONV, fused_conv_of[op.index]
        elif op.index in stream_concat:
            fused, partner = OP_STREAM_CONCAT, -1
        elif op.index in channel_concats:  # may read a split tensor's parts (checker rule)
            fused, partner = OP_CHANNEL_CONCAT, -1
        else:
            fused, partner = OP_PLAIN, -1
        ops.append({"type": op.op_type, "fused": fused, "partner": partner,
                    "io_start": len(op_io), "num_inputs": len(op.inputs),
                    "num_outputs": len(op.outputs), "num_scratch": len(op.scratch)})
        op_io += list(op.inputs) + list(op.outputs) + list(op.scratch)
    return {
        "arena_bytes": plan.peak_bytes, "num_steps": plan.num_steps, "tensors": tensors,
        "segments": segments, "actions": actions, "phase_start": phase_start,
        "storages": storages, "num_records": len(records), "num_streams": n_streams,
        "ops": ops, "op_io": op_io,
    }


def _phase(a: Action) -> int:
    """Phase 2s runs before the op at step s, 2s+1 after it (tp_plan.phase_start)."""
    if a.kind == WAIT_SPILL:  # after the op at the spill window's last step (a.step)
        return 2 * a.step + 1
    if a.kind == FETCH_ASYNC:  # started before the op at its issue step
        return 2 * a.issue
    return 2 * a.step + (1 if a.kind in (SPILL, SPILL_ASYNC, COMPACT) else 0)


def _fetch_destination(segs: Sequence[Segment], tr: Transfer) -> Segment:
    """The segment a fetch fills: resident over its whole window (it starts at the issue)."""
    issue, _ = tr.window
    for s in segs:
        if s.first <= issue and tr.step <= s.last:
            return s
    raise PlannerError(f"fetch of tensor {tr.tensor} at step {tr.step}: no segment holds "
                       f"its window from step {issue}")


def _window_actions(a: Action, tr: Transfer) -> list[Action]:
    """An asynchronous spill or fetch becomes the *_ASYNC kind plus the WAIT completing it
    (a spill after the op at its window's end, a fetch before the op at its step)."""
    issue, complete = tr.window
    if tr.kind not in ("spill", "fetch") or issue == complete:
        return []
    spill = tr.kind == "spill"
    a.kind = SPILL_ASYNC if spill else FETCH_ASYNC
    a.issue = issue
    return [Action(kind=WAIT_SPILL if spill else WAIT_FETCH, step=complete if spill else tr.step,
                   tensor=a.tensor, part=a.part, storage=a.storage, record=a.record,
                   address=a.address, nbytes=a.nbytes)]


def _erase_range(storage: StorageDesc, spill: Transfer, erased: set[int]) -> tuple[int, int]:
    """Flash blocks this spill is the first to touch in an inference (spills run in step order)."""
    b = storage.erase_block
    if b <= 1:
        return (0, 0)
    first = spill.address // b
    last = (spill.address + spill.nbytes - 1) // b
    fresh = [blk for blk in range(first, last + 1) if blk not in erased]
    erased.update(fresh)
    if not fresh:
        return (0, 0)
    start = fresh[0] * b
    # Blocks shared with an earlier spill sit at either end, so the fresh ones are contiguous.
    end = min((fresh[-1] + 1) * b, storage.capacity)
    return (start, end - start)


def _c_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= ord(ch) < 127 and ch != "?":
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def _array(ctype: str, name: str, rows: list[str], const: bool = True) -> str:
    qual = "static const " if const else "static "
    if not rows:
        return f"{qual}{ctype} {name}[1];\n"
    body = ",\n".join(f"  {r}" for r in rows)
    return f"{qual}{ctype} {name}[{len(rows)}] = {{\n{body}\n}};\n"


def render(graph: Graph, plan: Plan, tables: dict[str, Any]) -> tuple[str, str]:
    """(tinyplan_plan.h, tinyplan_plan.c)."""
    storages: list[StorageDesc] = tables["storages"]
    header = [
        "/* Generated by tinyplan from a checked plan; do not edit. */",
        "#ifndef TINYPLAN_PLAN_H", "#define TINYPLAN_PLAN_H", "",
        '#include "tp_runtime.h"', "",
        f"/* model {graph.name}, planner {plan.planner} ({plan.status}) */",
        f"#define TP_ARENA_BYTES {plan.peak_bytes}u",
        f"#define TP_NUM_STEPS {plan.num_steps}u",
        f"#define TP_NUM_STORAGES {len(storages)}u",
        "/* The kernel table's limits (planner/kernels.py); backends/c must agree. */",
    ]
    header += [f"#define TP_TABLE_{name} {value}" for name, value in sorted(c_defines().items())]
    header += [f"#define TP_STORAGE_{_ident(s.name)} {i}u" for i, s in enumerate(storages)]
    header += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif",
               "extern const tp_plan tinyplan_plan;",
               "#ifdef __cplusplus", "}", "#endif", "", "#endif /* TINYPLAN_PLAN_H */", ""]

    def nums(values: Sequence[int]) -> str:
        return ", ".join(str(int(v)) for v in values)

    t_rows = [
        f"{{{_c_string(t['name'])}, {nums([t[k] for k in ('nbytes', 'outer', 'inner', 'channels', 'split', 'height', 'width', 'rows', 'first_segment', 'num_segments')])}}}"  # noqa: E501
        for t in tables["tensors"]
    ]
    s_rows = [
        f"{{{s.tensor}, {-1 if s.part is None else s.part}, "
        f"{1 if s.role == 'line_buffer' else 0}, {s.first}, {s.last}, {s.offset}, {s.size}}}"
        for s in tables["segments"]
    ]
    a_rows = []
    for a in tables["actions"]:
        f = a.fields()
        a_rows.append("{" + nums(f[:9]) + ", {" + nums(f[9:13]) + "}, " + nums(f[13:]) + "}")
    st_rows = [f"{{{_c_string(s.name)}, {s.capacity}u, {s.erase_block}, {s.write_granularity}, "
               f"{int(s.compression)}}}" for s in storages]
    o_rows = [f"{{{_c_string(o['type'])}, {o['fused']}, {o['partner']}, {o['io_start']}, "
              f"{o['num_inputs']}, {o['num_outputs']}, {o['num_scratch']}}}"
              for o in tables["ops"]]
    io_rows = [str(v) for v in tables["op_io"]]
    body = [
        "/* Generated by tinyplan from a checked plan; do not edit. */",
        '#include "tinyplan_plan.h"', "",
        _array("tp_tensor", "tensors", t_rows),
        _array("tp_segment", "segments", s_rows),
        _array("tp_action", "actions", a_rows),
        f"static const uint32_t phase_start[{len(tables['phase_start'])}] = {{"
        f"{nums(tables['phase_start'])}}};\n",
        _array("tp_storage_desc", "storages", st_rows),
        _array("tp_op", "ops", o_rows),
        _array("int32_t", "op_io", io_rows),
        f"static tp_spill_record records[{max(1, tables['num_records'])}];",
        f"static tp_stream_state streams[{max(1, tables['num_streams'])}];", "",
        "const tp_plan tinyplan_plan = {",
        f"  {plan.peak_bytes}u, {plan.num_steps}u,",
        f"  {len(t_rows)}u, tensors, {len(s_rows)}u, segments,",
        f"  {len(a_rows)}u, actions, phase_start,",
        f"  {len(st_rows)}u, storages,",
        f"  {tables['num_records']}u, records, {tables['num_streams']}u, streams,",
        f"  {len(o_rows)}u, ops, op_io",
        "};", "",
    ]
    return "\n".join(header), "\n".join(body)


def write_c_glue(graph: Graph, plan: Plan, model_path: Path | None, outdir: str | Path,
                 **ctx: Any) -> list[Path]:
    """Write tinyplan_plan.h/.c and copy the runtime sources into `outdir`."""
    profile: DeviceProfile | None = ctx.get("profile")
    capacities = profile.capacities if profile is not None else None
    refused = plan_violations(graph, plan)
    if refused:  # the runtime would have no kernel for it (planner/kernels.py)
        raise PlannerError(f"the plan needs a kernel that does not exist: {refused[0]}")
    if plan.stream_groups:
        # tp_plan has no action for rows a group spills or streams; the group op itself
        # (TinyPlanStreamedGroup in tflm_ops.cc, tp_rows.c) does that inside TFLM.
        raise PlannerError("the C glue's plan tables cannot replay streamed groups: emit "
                           "tflite and run it with backends/c/tflm_ops.cc and tp_rows.c "
                           "(docs/c_runtime.md)")
    assert_valid(graph, plan, capacities)
    tables = build_tables(graph, plan, profile)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    h, c = render(graph, plan, tables)
    written = [out / "tinyplan_plan.h", out / "tinyplan_plan.c"]
    written[0].write_text(h)
    written[1].write_text(c)
    for name in RUNTIME_SOURCES:
        shutil.copyfile(C_DIR / name, out / name)
        written.append(out / name)
    return written
