"""Rewrite a .tflite for a plan that spills, splits or fuses (docs/tflm_backend.md).

Every arena segment of the plan becomes one tensor of the rewritten subgraph, so a
plain offline plan (`OfflineMemoryAllocation`, one offset per tensor) describes the
whole schedule:

- a tensor's first segment is the original tensor; each later segment is a new
  "fetched copy" written by a `Fetch` op placed before the op at the segment's
  first step; readers in that segment read the copy;
- a `Spill` op after the op at the spill step writes the data to storage;
- an asynchronous transfer (Transfer.window longer than one step) is issued by its
  Spill (after the op at the spill step) or Fetch (before the op at the window's first
  step, writing the copy whose segment starts there) with the async option, and
  completed by a `TinyPlanWait` reading the same tensor: after the op at a spill's
  window end, before the op at a fetch's step;
- a channel-split tensor (plan.parts) is produced whole at part 0's offset; after
  the last step both parts are resident (its interleaved phase) a custom
  `TinyPlanSplit` compacts part 0 in place (part 1 is already spilled and dead);
  later readers are fused concats, which get the parts as separate inputs. No
  builtin changes meaning: stock TFLM's SPLIT_V copies and cannot be replaced;
- a fused concat becomes `FusedConcat` when an input streams from storage (else it
  stays a CONCATENATION, with parts as inputs); a fused concat+conv pair becomes
  one `FusedConcatConv2D` at the conv's position and the concat output never
  exists. Streamed inputs are -1 in the op's input list; each stream's line
  buffer is an extra output of the fused op (lives at that op only);
- a TRANSPOSE_CONV the plan runs on the row kernel (`plan.op_kernels`) becomes
  `TinyPlanTransposeConv` with the builtin's inputs, so the model needs the C glue
  even when the plan spills nothing;
- a streamed group (a planned-graph op of kind STREAMED_GROUP, plan.stream_groups)
  replaces its member ops by one `TinyPlanStreamedGroup`: inputs the group op's inputs
  (-1 for one streamed from storage), outputs its outputs (the line buffer in place of
  one spilled row by row), then one tensor per ring, then the line buffers of the
  streamed inputs; the member ops' internal tensors are touched by no op and get shape
  [0]. Its options are a small header (storage, per-transfer records) and then the
  program words of backends/c/group_program.py.

A plan that needs a kernel the table (planner/kernels.py) does not offer is refused.

Ops inserted between original op k-1 and op k run in this order: waits of spills
completing at k-1, spills of step k-1, TinyPlanSplits of step k-1, waits of fetches
completing at k, fetches issued at k. Custom options are fixed little-endian
int32 blobs (layouts below and in the docs) so C glue can read them without a
flexbuffer parser.
"""

from __future__ import annotations

import copy
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.tflite import io
from planner.analysis import lifetimes
from planner.errors import PlannerError
from planner.ir import Graph, OpKind, Role, align
from planner.kernels import (
    ROWS_KERNEL,
    SPLIT_IN_PLACE,
    STREAMED_GROUP,
    TRANSFER_WAIT,
    TRANSPOSE_CONV_ROWS,
    plan_violations,
)
from planner.plan import Plan, Segment, Transfer

OPTIONS_VERSION = 1
# Spill / Fetch: [version, storage_id, address, nbytes, axis, channel_start, channel_stop, part]
# and, for an asynchronous one, a 9th word 1: completed by the TinyPlanWait of the same
# storage and address.
TRANSFER_FIELDS = 8
ASYNC = 1
# FusedConcat / FusedConcatConv2D header: [version, axis, n_inputs, activation, padding,
# stride_h, stride_w, dilation_h, dilation_w], then per concat input:
FUSED_HEADER = 9
# [source (0 arena, 1 stream), storage_id, address, nbytes, channel_start, channel_stop,
#  line_buffer_output, line_rows]; storage fields -1 for arena inputs.
FUSED_INPUT_FIELDS = 8
SOURCE_ARENA, SOURCE_STREAM = 0, 1
# TinyPlanSplit: [version, axis, keep_channels]; TinyPlanTransposeConv: [version, padding
# (0 SAME, 1 VALID), stride_h, stride_w, fused_activation].
# TinyPlanWait: [version, kind (0 spill, 1 fetch), storage_id, address].
SIMPLE_FIELDS = {SPLIT_IN_PLACE.custom_op: 3, TRANSPOSE_CONV_ROWS.custom_op: 5,
                 TRANSFER_WAIT.custom_op: 4}
WAIT_SPILL, WAIT_FETCH = 0, 1
# TinyPlanStreamedGroup: [version, storage_id (-1 none)], then the program words of
# backends/c/group_program.py; its view table (tp_rows.h: a 6-word header with n_views at
# word 2, then per view [mode, height, row_bytes, rows_held, address]) says which views
# stream from or spill rows to storage.
STREAMED_GROUP_OP = STREAMED_GROUP.custom_op
GROUP_HEADER = 2
PROGRAM_HEADER, VIEW_FIELDS = 6, 5
VIEW_WHOLE, VIEW_RING, VIEW_STREAM_IN, VIEW_SPILL_ROWS = 0, 1, 2, 3

Key = tuple[int, "int | None"]


@dataclass
class Rewrite:
    """The rewritten model and how it maps back to the plan (for tests and the shim)."""

    model: Any  # ModelT
    offsets: list[int]  # per tensor of the rewritten subgraph, -1: not in the arena
    op_steps: list[int]  # plan step each rewritten op runs at
    segment_of: dict[int, Segment] = field(default_factory=dict)  # tensor -> plan segment
    inplace: set[int] = field(default_factory=set)  # TinyPlanSplit ops (alias by design)
    storages: list[str] = field(default_factory=list)
    scratch_offsets: list[int] = field(default_factory=list)


class _Builder:
    def __init__(self, graph: Graph, plan: Plan, model: Any, storages: Sequence[str],
                 source_model: Any = None):
        self.fb = io.schema()
        self.graph, self.plan, self.model = graph, plan, model
        self.sub = model.subgraphs[0]
        self.storage_id = {name: i for i, name in enumerate(storages)}
        self.life = lifetimes(graph)
        self.parts = {(p.tensor, p.index): p for p in plan.parts}
        self.split = {p.tensor for p in plan.parts}
        self.offsets = [-1] * len(self.sub.tensors)
        self.segment_of: dict[int, Segment] = {}
        self.copies: dict[tuple[int, int | None, int], int] = {}  # (t, part, seg first) -> idx
        self.transfers: dict[tuple[str, int, int | None, int], Transfer] = {
            (tr.kind, tr.tensor, tr.part, tr.step): tr for tr in plan.transfers
        }
        self.lines = {(s.tensor, s.part, s.first): s for s in plan.segments
                      if s.role == "line_buffer"}
        self.ops: list[Any] = []
        self.op_steps: list[int] = []
        self.inplace: set[int] = set()
        # A planned graph (streaming.apply_groups) names source-graph ops in op_kernels
        # and stream_groups; the file's operators are the source graph's.
        self.source_op = source_op_indices(graph)
        planned_of = {src: k for k, src in enumerate(self.source_op)
                      if graph.ops[k].kind != OpKind.STREAMED_GROUP}
        self.op_kernels = {planned_of[i]: kernel for i, kernel in plan.op_kernels
                           if i in planned_of}
        self.source_model = source_model

    # -- tensors ---------------------------------------------------------------------
    def index(self, t: int) -> int:
        src = self.graph.tensors[t].source_index
        if src is None:
            raise PlannerError(f"tensor {t} has no index in the .tflite file")
        return src

    def channels(self, t: int, part: int | None) -> tuple[int, int]:
        if part is None:
            return 0, self.graph.tensors[t].channels or 0
        p = self.parts[(t, part)]
        return p.channel_start, p.channel_stop

    def new_tensor(self, like: int | None, name: str, shape: list[int], dtype: int,
                   seg: Segment | None) -> int:
        t = copy.copy(self.sub.tensors[like]) if like is not None else self.fb.TensorT()
        t.name = name
        t.shape = list(shape)
        t.shapeSignature = None
        t.type = dtype
        t.buffer = 0
        t.isVariable = False
        self.sub.tensors.append(t)
        self.offsets.append(seg.offset if seg is not None else -1)
        idx = len(self.sub.tensors) - 1
        if seg is not None:
            self.segment_of[idx] = seg
        return idx

    def const_tensor(self, name: str, values: list[int], shape: list[int]) -> int:
        t = self.fb.TensorT()
        t.name = name
        t.shape = shape
        t.type = self.fb.TensorType.INT32
        t.buffer = io.add_buffer(self.model, io.pack_int32(values))
        self.sub.tensors.append(t)
        self.offsets.append(-1)
        return len(self.sub.tensors) - 1

    def part_shape(self, t: int, part: int | None) -> list[int]:
        tensor = self.graph.tensors[t]
        shape = list(tensor.shape)
        if part is not None:
            start, stop = self.channels(t, part)
            shape[tensor.channel_axis] = stop - start
        return shape

    def segments(self, t: int, part: int | None) -> list[Segment]:
        return self.plan.segments_of(t, part)

    def copy_for(self, t: int, part: int | None, seg: Segment) -> int:
        """The rewritten tensor holding `seg` (created on first use)."""
        key = (t, part, seg.first)
        if key in self.copies:
            return self.copies[key]
        src = self.index(t)
        name = self.sub.tensors[src].name
        name = name.decode() if isinstance(name, bytes) else (name or f"tensor_{src}")
        first_seg = seg == self.segments(t, part)[0]
        if part is None and first_seg:
            idx = src
        elif first_seg:  # part 0 after the split, or part 1 at the split (dead)
            idx = self.new_tensor(src, f"{name}/part{part}", self.part_shape(t, part),
                                  self.sub.tensors[src].type, seg)
        else:
            suffix = f"/part{part}" if part is not None else ""
            idx = self.new_tensor(src, f"{name}{suffix}/fetch@{seg.first}",
                                  self.part_shape(t, part), self.sub.tensors[src].type, seg)
        self.copies[key] = idx
        return idx

    # -- residency ---------------------------------------------------------------------
    def resident(self, t: int, part: int | None, step: int) -> Segment | None:
        return next((s for s in self.segments(t, part) if s.first <= step <= s.last), None)

    def split_end(self, t: int) -> int:
        """Last step of a split tensor's interleaved phase (both first segments resident)."""
        return min(self.segments(t, 0)[0].last, self.segments(t, 1)[0].last)

    def whole(self, t: int, step: int) -> int:
        """The tensor a plain reader at `step` reads."""
        if t in self.split:
            if step > self.split_end(t):
                raise PlannerError(f"tensor {t} is read whole at step {step} after its split")
            return self.index(t)
        seg = self.resident(t, None, step)
        if seg is None:
            raise PlannerError(f"tensor {t} is not resident at step {step}")
        return self.copy_for(t, None, seg)

    # -- ops -----------------------------------------------------------------------------
    def opcode(self, builtin: int, custom: str | None = None) -> int:
        codes = self.model.operatorCodes
        for i, c in enumerate(codes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin and \
                    (custom is None or io._name(c.customCode) == custom):
                return i
        code = self.fb.OperatorCodeT(deprecatedBuiltinCode=min(builtin, 127),
                                     customCode=custom, version=1, builtinCode=builtin)
        codes.append(code)
        return len(codes) - 1

    def emit(self, op: Any, step: int) -> None:
        self.ops.append(op)
        self.op_steps.append(step)

    def custom(self, name: str, inputs: list[int], outputs: list[int], options: list[int]):
        op = self.fb.OperatorT(opcodeIndex=self.opcode(self.fb.BuiltinOperator.CUSTOM, name))
        op.inputs, op.outputs = inputs, outputs
        op.customOptions = list(io.pack_int32(options))
        op.customOptionsFormat = self.fb.CustomOptionsFormat.FLEXBUFFERS  # the only value
        return op

    def transfer_options(self, tr: Transfer) -> list[int]:
        t = self.graph.tensors[tr.tensor]
        start, stop = self.channels(tr.tensor, tr.part)
        axis = t.channel_axis if t.channel_axis is not None else -1
        return [OPTIONS_VERSION, self.storage_id[tr.storage], tr.address, tr.nbytes, axis,
                start, stop, -1 if tr.part is None else tr.part]

    def spill_source(self, tr: Transfer) -> int:
        if tr.tensor in self.split and tr.step <= self.split_end(tr.tensor):
            return self.index(tr.tensor)  # still whole: the op picks the part's channels
        seg = self.resident(tr.tensor, tr.part, tr.step)
        if seg is None:
            raise PlannerError(f"spill of tensor {tr.tensor} at step {tr.step}: not resident")
        return self.copy_for(tr.tensor, tr.part, seg)

    def spill(self, tr: Transfer) -> None:
        opts = self.transfer_options(tr) + ([ASYNC] if _windowed(tr) else [])
        self.emit(self.custom("Spill", [self.spill_source(tr)], [], opts), tr.step)

    def fetch_copy(self, tr: Transfer) -> int:
        """The copy a fetch writes: its segment holds the whole window (starts at issue)."""
        issue, _ = tr.window
        seg = next((s for s in self.segments(tr.tensor, tr.part)
                    if s.first <= issue and tr.step <= s.last), None)
        if seg is None:
            raise PlannerError(f"fetch of tensor {tr.tensor} at step {tr.step}: no segment "
                               f"holds its window from step {issue}")
        return self.copy_for(tr.tensor, tr.part, seg)

    def fetch(self, tr: Transfer) -> None:
        opts = self.transfer_options(tr) + ([ASYNC] if _windowed(tr) else [])
        self.emit(self.custom("Fetch", [], [self.fetch_copy(tr)], opts), tr.window[0])

    def wait(self, tr: Transfer) -> None:
        """`TinyPlanWait` completing an asynchronous spill (after the op at its window's
        end) or fetch (before the op at its step); its input keeps the buffer alive."""
        if tr.kind == "spill":
            tensor, kind, step = self.spill_source(tr), WAIT_SPILL, tr.window[1]
        else:
            tensor, kind, step = self.fetch_copy(tr), WAIT_FETCH, tr.step
        opts = [OPTIONS_VERSION, kind, self.storage_id[tr.storage], tr.address]
        self.emit(self.custom(TRANSFER_WAIT.custom_op, [tensor], [], opts), step)

    def split_v(self, t: int, step: int) -> None:
        """`TinyPlanSplit`: compact part 0 in place over the interleaved tensor.

        Part 1 is already spilled and dead, so only part 0 is an output; a stock SPLIT_V
        would copy (and clobber bytes not yet moved), hence a custom op of our own.
        """
        p0 = self.parts[(t, 0)]
        axis = self.graph.tensors[t].channel_axis
        a = self.copy_for(t, 0, self.segments(t, 0)[0])
        keep = p0.channel_stop - p0.channel_start
        op = self.custom(SPLIT_IN_PLACE.custom_op, [self.index(t)], [a],
                         [OPTIONS_VERSION, int(axis if axis is not None else -1), keep])
        self.inplace.add(len(self.ops))
        self.emit(op, step)

    def fused_inputs(self, concat_inputs: Sequence[int], step: int, conv: int | None):
        """Resolved inputs, per-input option records and line-buffer outputs at `step`."""
        inputs: list[int] = []
        records: list[list[int]] = []
        lines: list[int] = []
        streamed = False
        for t in concat_inputs:
            if t < 0 or t not in self.life:
                inputs.append(t if t < 0 else self.index(t))
                records.append([SOURCE_ARENA, -1, -1, -1, 0, 0, -1, 0])
                continue
            # A split tensor past its interleaved phase is read as two channel parts.
            split_now = t in self.split and step > self.split_end(t)
            keys: list[int | None] = [0, 1] if split_now else [None]
            for part in keys:
                start, stop = self.channels(t, part)
                nbytes = self.parts[(t, part)].nbytes if part is not None else \
                    self.graph.tensors[t].nbytes
                if part is None and t in self.split:  # interleaved: read the whole tensor
                    inputs.append(self.index(t))
                    records.append([SOURCE_ARENA, -1, -1, nbytes, start, stop, -1, 0])
                    continue
                seg = self.resident(t, part, step)
                if seg is not None:
                    inputs.append(self.copy_for(t, part, seg))
                    records.append([SOURCE_ARENA, -1, -1, nbytes, start, stop, -1, 0])
                    continue
                tr = self.transfers.get(("stream", t, part, step))
                line = self.lines.get((t, part, step))
                if tr is None or line is None:
                    raise PlannerError(f"fused input tensor {t} at step {step}: "
                                       "neither resident nor streamed")
                streamed = True
                lb = self.new_tensor(None, f"{self.graph.tensors[t].name}/line@{step}",
                                     [line.size], self.fb.TensorType.INT8, line)
                rows = 1
                if conv is not None:
                    rows = int(self.graph.ops[conv].attrs.get("kernel", (1, 1))[0])
                inputs.append(-1)
                records.append([SOURCE_STREAM, self.storage_id[tr.storage], tr.address,
                                tr.nbytes, start, stop, len(lines), rows])
                lines.append(lb)
        return inputs, records, lines, streamed

    def fused_concat(self, k: int, rop: Any, step: int) -> None:
        op = self.graph.ops[k]
        inputs, records, lines, streamed = self.fused_inputs(op.inputs, step, None)
        outs = [self.whole(t, step) if t >= 0 else t for t in op.outputs]
        if not streamed:  # every input resident: a builtin concat over the parts
            new = copy.copy(rop)
            new.inputs, new.outputs = inputs, outs
            self.emit(new, step)
            return
        act = int(getattr(rop.builtinOptions, "fusedActivationFunction", 0) or 0)
        header = [OPTIONS_VERSION, int(op.attrs.get("axis", 3)), len(inputs), act, 0, 1, 1, 1, 1]
        opts = header + [v for r in records for v in r]
        self.emit(self.custom("FusedConcat", inputs, outs + lines, opts), step)

    def fused_concat_conv(self, concat: int, k: int, rop: Any, step: int) -> None:
        cop, conv = self.graph.ops[concat], self.graph.ops[k]
        inputs, records, lines, _ = self.fused_inputs(cop.inputs, step, k)
        rest = [self.whole(t, step) if t >= 0 and t in self.life else
                (self.index(t) if t >= 0 else t) for t in conv.inputs[1:]]
        outs = [self.whole(t, step) if t >= 0 else t for t in conv.outputs]
        o = rop.builtinOptions
        header = [OPTIONS_VERSION, int(cop.attrs.get("axis", 3)), len(inputs),
                  int(o.fusedActivationFunction), int(o.padding), int(o.strideH), int(o.strideW),
                  int(o.dilationHFactor), int(o.dilationWFactor)]
        opts = header + [v for r in records for v in r]
        self.emit(self.custom("FusedConcatConv2D", inputs + rest, outs + lines, opts), step)

    def plain(self, k: int, rop: Any, step: int) -> None:
        op = self.graph.ops[k]
        new = copy.copy(rop)
        if k in self.op_kernels:
            new = self.transpose_conv_rows(k, rop)
        new.inputs = [self.whole(t, step) if t >= 0 and t in self.life else
                      (self.index(t) if t >= 0 else t) for t in op.inputs]
        new.outputs = [self.whole(t, step) if t >= 0 and t in self.life else
                       (self.index(t) if t >= 0 else t) for t in op.outputs]
        self.emit(new, step)

    def transpose_conv_rows(self, k: int, rop: Any) -> Any:
        """`TinyPlanTransposeConv`: the builtin's inputs (output_shape, filter, input, bias)
        and options [version, padding (0 SAME, 1 VALID), stride_h, stride_w, activation]."""
        kernel = self.op_kernels[k]
        if kernel != ROWS_KERNEL:
            raise PlannerError(f"op {k}: no rewrite for kernel '{kernel}'")
        o = rop.builtinOptions
        act = int(getattr(o, "fusedActivationFunction", 0) or 0)
        opts = [OPTIONS_VERSION, int(o.padding), int(o.strideH), int(o.strideW), act]
        return self.custom(TRANSPOSE_CONV_ROWS.custom_op, list(rop.inputs), list(rop.outputs),
                           opts)

    def streamed_group(self, k: int, step: int) -> None:
        """`TinyPlanStreamedGroup` for planned op k: its members run row by row in C."""
        from backends.c.group_program import encode

        op = self.graph.ops[k]
        inputs: list[int] = []
        outputs: list[int] = []
        stream_lines: list[int] = []
        storages: set[str] = set()
        for t in op.inputs:
            if t < 0 or t not in self.life:  # omitted, or a constant read whole
                inputs.append(t if t < 0 else self.index(t))
                continue
            self.refuse_split(t, k)
            tr = self.transfers.get(("stream", t, None, step))
            if tr is None:  # (group_program.encode gives the view the same mode)
                inputs.append(self.whole(t, step))
                continue
            stream_lines.append(self.group_line(t, step, "line"))
            inputs.append(-1)
            storages.add(tr.storage)
        for t in op.outputs:
            self.refuse_split(t, k)
            tr = self.transfers.get(("spill_rows", t, None, step))
            if tr is None:
                outputs.append(self.whole(t, step))
                continue
            # Written to storage row by row: the op's output slot is its line buffer.
            outputs.append(self.group_line(t, step, "rows"))
            storages.add(tr.storage)
        rings = []
        for t in op.scratch:
            seg = self.resident(t, None, step)
            tensor = self.graph.tensors[t]
            if seg is None:
                raise PlannerError(f"ring {tensor.name} of group op {k}: no segment at its step")
            if tensor.dtype != "int8":
                raise PlannerError(f"ring {tensor.name}: {tensor.dtype}, the row kernels are int8")
            rings.append(self.new_tensor(None, tensor.name, list(tensor.shape),
                                         self.fb.TensorType.INT8, seg))
        if len(storages) > 1:
            raise PlannerError(f"group op {k} moves rows to several storages "
                               f"({', '.join(sorted(storages))}): one storage per group")
        storage = self.storage_id[storages.pop()] if storages else -1
        program = [int(w) for w in encode(self.source_model, self.graph, self.plan, k)]
        self.emit(self.custom(STREAMED_GROUP_OP, inputs, outputs + rings + stream_lines,
                              [OPTIONS_VERSION, storage, *program]), step)

    def refuse_split(self, t: int, k: int) -> None:
        if t in self.split:
            raise PlannerError(f"group op {k}: tensor {t} is channel-split; a streamed group "
                               "reads and writes whole tensors")

    def group_line(self, t: int, step: int, what: str) -> int:
        """The line-buffer tensor of tensor t's stream / row spill at a group step."""
        line = self.lines.get((t, None, step))
        if line is None:
            raise PlannerError(f"tensor {t} at step {step}: streamed by a group without a "
                               "line-buffer segment")
        return self.new_tensor(None, f"{self.graph.tensors[t].name}/{what}@{step}",
                               [line.size], self.fb.TensorType.INT8, line)

    # -- driver --------------------------------------------------------------------------
    def build(self) -> None:
        g, plan = self.graph, self.plan
        for t in self.life:
            if g.tensors[t].role == Role.SCRATCH:
                continue
            first_key: int | None = 0 if t in self.split else None
            segs = self.segments(t, first_key)
            if segs:
                self.offsets[self.index(t)] = segs[0].offset
                self.segment_of[self.index(t)] = segs[0]
        by_step = _transfer_steps(plan)
        splits = defaultdict(list)
        for t in self.split:
            # Only compact when part 0 (or its spill) is needed after the interleaved phase.
            if self.segments(t, 0)[0].last > self.split_end(t):
                splits[self.split_end(t)].append(t)
        fused_concat = {f.concat: f.conv for f in plan.fusions if f.conv is not None}
        fused_conv = {f.conv: f.concat for f in plan.fusions if f.conv is not None}
        streaming = {f.concat for f in plan.fusions if f.conv is None}
        rops = self.sub.operators or []
        for step in range(g.num_steps):
            if step > 0:
                for tr in _ordered(by_step["fetch_wait"][step]):
                    self.wait(tr)
                for tr in _ordered(by_step["fetch"][step]):
                    self.fetch(tr)
                k = step - 1
                rop = rops[self.source_op[k]]
                if g.ops[k].kind == OpKind.STREAMED_GROUP:
                    self.streamed_group(k, step)
                elif k in fused_concat:
                    pass  # folded into its conv
                elif k in fused_conv:
                    self.fused_concat_conv(fused_conv[k], k, rop, step)
                elif k in streaming:
                    self.fused_concat(k, rop, step)
                else:
                    self.plain(k, rop, step)
            for tr in _ordered(by_step["spill_wait"][step]):
                self.wait(tr)
            for tr in _ordered(by_step["spill"][step]):
                self.spill(tr)
            for t in sorted(splits[step]):
                self.split_v(t, step)
        last = g.num_steps - 1
        self.sub.outputs = [self.whole(t, last) if t in self.life else self.index(t)
                            for t in g.outputs]
        self.sub.operators = self.ops


def source_op_indices(graph: Graph) -> list[int]:
    """Per op of `graph`, the index of its operator in the .tflite file: itself, or for a
    planned graph (streaming.apply_groups, ops copied in order) the source op it copies;
    a group op maps to its first member."""
    if graph.source is None:
        return list(range(len(graph.ops)))
    out, nxt = [], 0
    for op in graph.ops:
        if op.kind == OpKind.STREAMED_GROUP:
            members = [int(m) for m in op.attrs["members"]]
            if members != list(range(nxt, nxt + len(members))):
                raise PlannerError(f"group op {op.index}: members {members} do not follow "
                                   f"source op {nxt - 1}")
            out.append(members[0])
            nxt = members[-1] + 1
        else:
            out.append(nxt)
            nxt += 1
    if nxt != len(graph.source.ops):
        raise PlannerError("the planned graph does not cover its source graph's ops")
    return out


def _windowed(tr: Transfer) -> bool:
    return tr.window[0] < tr.window[1]


def _ordered(transfers: list[Transfer]) -> list[Transfer]:
    return sorted(transfers, key=lambda x: (x.tensor, x.part or 0))


def _transfer_steps(plan: Plan) -> dict[str, dict[int, list[Transfer]]]:
    """Where each spill, fetch and wait goes: spills after the op at their step, waits of
    asynchronous spills after the op at their window's end; fetches before the op at their
    window's first step (an issue at step 0 goes before op 1: nothing runs earlier), waits
    of asynchronous fetches before the op at their step."""
    out: dict[str, dict[int, list[Transfer]]] = {
        k: defaultdict(list) for k in ("spill", "spill_wait", "fetch", "fetch_wait")}
    for tr in plan.transfers:
        if tr.kind == "spill":
            out["spill"][tr.step].append(tr)
            if _windowed(tr):
                out["spill_wait"][tr.window[1]].append(tr)
        elif tr.kind == "fetch":
            out["fetch"][max(1, tr.window[0])].append(tr)
            if _windowed(tr):
                out["fetch_wait"][tr.step].append(tr)
    return out


def storage_names(plan: Plan, profile: Any = None) -> list[str]:
    """Storage ids of the custom options: the profile's order, else sorted names."""
    used = sorted({tr.storage for tr in plan.transfers})
    if profile is not None and getattr(profile, "storages", None):
        ordered = [getattr(s, "name", s) for s in profile.storages]
        return [n for n in ordered if n in used] + [n for n in used if n not in ordered]
    return used


def rewrite(graph: Graph, plan: Plan, model_path: Path, profile: Any = None) -> Rewrite:
    """The rewritten ModelT of a plan with transfers/parts/fusions, and its offline offsets."""
    if graph.source_format != "tflite":
        raise PlannerError("the .tflite rewrite needs a .tflite model")
    model = io.read_model(model_path)
    if len(model.subgraphs or []) != 1:
        raise PlannerError("the .tflite rewrite supports single-subgraph models only")
    storages = storage_names(plan, profile)
    source_model = io.read_model(model_path) if plan.stream_groups else None
    b = _Builder(graph, plan, model, storages, source_model)
    b.build()
    _empty_untouched(model)
    plan_at = {s.tensor: s.offset for s in plan.segments if s.role == "tensor"}
    # A group's rings are tensors of the rewritten model, not kernel scratch requests.
    scratch = [plan_at[s] for op in graph.ops if op.kind != OpKind.STREAMED_GROUP
               for s in op.scratch if s in plan_at]
    return Rewrite(model, b.offsets, b.op_steps, b.segment_of, b.inplace, storages, scratch)


def _empty_untouched(model: Any) -> None:
    """Give no elements to the tensors no op touches any more (fused-away concat outputs).

    Real TFLM allocates every non-constant tensor of nonzero size, even one no op reads
    or writes: its lifetime stays [-1, -1], so all such buffers overlap one another and
    are stacked online in the arena head (measured: a Tiny U-Net plan of 192,000 B got a
    head of 201,600 B from three fused-away concat outputs). A shape [0] makes TFLM skip it.
    """
    fb = io.schema()
    life, consts = file_lifetimes(model)
    sub = model.subgraphs[0]
    for i, t in enumerate(sub.tensors):
        if i not in life and i not in consts and not t.isVariable and _tensor_bytes(fb, t):
            t.shape = [0]
            t.shapeSignature = None


def write_rewritten_tflite(graph: Graph, plan: Plan, model_path: Path, outdir: Path,
                           **ctx) -> list[Path]:
    """`<stem>.planned.tflite` with Spill/Fetch/Fused* ops; runs under the C glue only."""
    from backends.tflite.offline import TOTAL_PEAK_VERSION, planned_path

    refused = plan_violations(graph, plan)
    if refused:
        raise PlannerError(f"the plan needs a kernel that does not exist: {refused[0]}")
    rw = rewrite(graph, plan, model_path, ctx.get("profile"))
    io.set_metadata(rw.model, io.OFFLINE_METADATA, io.offline_entry(rw.offsets))
    # The head a TFLM-style planner gets from these offsets is the plan's peak by construction.
    io.set_metadata(rw.model, io.PEAK_METADATA, io.pack_int32(
        [TOTAL_PEAK_VERSION, plan.peak_bytes, plan.peak_bytes, len(rw.scratch_offsets),
         *rw.scratch_offsets]))
    io.set_metadata(rw.model, io.STORAGE_METADATA, "\n".join(rw.storages).encode())
    data = io.write_model(rw.model)
    errors = check_rewritten(data)
    if errors:
        raise PlannerError(f"internal error: rewritten model is inconsistent: {errors[0]}")
    out = planned_path(model_path, outdir)
    out.write_bytes(data)
    names = "/".join(n for n in io.CUSTOM_OPS if n in set(io.custom_op_names(rw.model)))
    print(f"note: {out.name} has custom ops ({names}): it runs on TFLM with the project's "
          "custom ops registered (backends/c/tflm_ops.cc, docs/c_runtime.md), not on stock "
          "TFLM", file=sys.stderr)
    return [out]


# -- independent consistency check of a rewritten file ------------------------------------

def _tensor_bytes(fb, t: Any) -> int:
    widths = {fb.TensorType.FLOAT32: 4, fb.TensorType.INT32: 4, fb.TensorType.UINT32: 4,
              fb.TensorType.INT16: 2, fb.TensorType.UINT16: 2, fb.TensorType.FLOAT16: 2,
              fb.TensorType.INT64: 8, fb.TensorType.FLOAT64: 8, fb.TensorType.UINT64: 8}
    n = 1
    for d in t.shape if t.shape is not None else []:
        n *= int(d)
    return n * widths.get(t.type, 1)


def file_lifetimes(model: Any) -> tuple[dict[int, tuple[int, int]], set[int]]:
    """TFLM lifetimes of subgraph 0 of a model file, and the indices of constant tensors."""
    sub = model.subgraphs[0]
    consts = {i for i, t in enumerate(sub.tensors)
              if 0 < t.buffer < len(model.buffers) and model.buffers[t.buffer].data is not None
              and len(model.buffers[t.buffer].data) > 0}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in sub.inputs if sub.inputs is not None else []:
        first.setdefault(int(t), 0)
        last[int(t)] = 0
    n = len(sub.operators or [])
    for k, op in enumerate(sub.operators or []):
        for t in op.outputs if op.outputs is not None else []:
            if t >= 0:
                first.setdefault(int(t), k + 1)
                last[int(t)] = k + 1
        for t in op.inputs if op.inputs is not None else []:
            if t >= 0 and int(t) in first:
                last[int(t)] = k + 1
    for t in sub.outputs if sub.outputs is not None else []:
        if int(t) in first:
            last[int(t)] = n
    return {t: (first[t], last[t]) for t in first if t not in consts}, consts


def _check_options(k: int, name: str, op: Any) -> list[str]:
    raw = bytes(bytearray(op.customOptions)) if op.customOptions is not None else b""
    words = io.unpack_int32(raw) if len(raw) % 4 == 0 else []
    if not words or words[0] != OPTIONS_VERSION:
        return [f"op {k} {name}: options missing or of an unknown version"]
    if name in ("Spill", "Fetch"):
        ok = len(words) == TRANSFER_FIELDS or (len(words) == TRANSFER_FIELDS + 1
                                               and words[-1] == ASYNC)
        return [] if ok else [f"op {k} {name}: {len(words)} words"]
    if name in SIMPLE_FIELDS:
        return [] if len(words) == SIMPLE_FIELDS[name] else [f"op {k} {name}: {len(words)} words"]
    if name == STREAMED_GROUP_OP:
        return _check_group_options(k, op, words)
    n = words[2] if len(words) > 2 else -1
    if n < 0 or len(words) != FUSED_HEADER + n * FUSED_INPUT_FIELDS or \
            len(op.inputs if op.inputs is not None else []) < n:
        return [f"op {k} {name}: options do not describe its inputs"]
    return []


def group_views(words: Sequence[int]) -> tuple[int, list[list[int]]]:
    """(storage id, program views [mode, height, row_bytes, rows_held, address]) of
    TinyPlanStreamedGroup options; ValueError when they are cut short."""
    program = list(words[GROUP_HEADER:])
    if len(program) < PROGRAM_HEADER or program[2] < 0:
        raise ValueError("no program header")
    n = program[2]
    end = PROGRAM_HEADER + VIEW_FIELDS * n
    if len(program) < end:
        raise ValueError("view table cut short")
    return words[1], [program[i:i + VIEW_FIELDS] for i in range(PROGRAM_HEADER, end, VIEW_FIELDS)]


def _check_group_options(k: int, op: Any, words: list[int]) -> list[str]:
    """The view table against the op's own tensor lists (the program itself is checked in
    C, by tp_group_check, when TFLM prepares the op)."""
    name = f"op {k} {STREAMED_GROUP_OP}"
    try:
        storage, views = group_views(words)
    except ValueError as exc:
        return [f"{name}: {exc}"]
    inputs = list(op.inputs if op.inputs is not None else [])
    n_out = len(op.outputs if op.outputs is not None else [])
    modes = [v[0] for v in views]
    streamed = modes.count(VIEW_STREAM_IN)
    if len(views) != len(inputs) + n_out - streamed:
        return [f"{name}: {len(views)} program views for {len(inputs)} inputs, {n_out} outputs"]
    errors = []
    if [i for i, t in enumerate(inputs) if t == -1] != \
            [v for v, m in enumerate(modes) if m == VIEW_STREAM_IN]:
        errors.append(f"{name}: omitted inputs and streamed views differ")
    if any(m == VIEW_SPILL_ROWS for m in modes[:len(inputs)]) or \
            any(m == VIEW_STREAM_IN for m in modes[len(inputs):]):
        errors.append(f"{name}: a stream_in output or a spill_rows input")
    if storage < 0 and (VIEW_STREAM_IN in modes or VIEW_SPILL_ROWS in modes):
        errors.append(f"{name}: storage transfers without a storage")
    return errors


def check_rewritten(data: bytes) -> list[str]:
    """What is wrong with a written model's graph and offline plan, from the file alone.

    Every op input is a constant, a graph input or produced earlier; every arena tensor
    has an offline offset; no two tensors alive at the same step share bytes, except a
    a TinyPlanSplit's output inside its input (in-place compaction, by design).
    """
    fb = io.schema()
    model = io.read_model(data)
    errors: list[str] = []
    sub = model.subgraphs[0]
    offsets = io.read_offline_offsets(model)
    if offsets is None or len(offsets) != io.tensor_count(model):
        return ["OfflineMemoryAllocation missing or of the wrong length"]
    life, consts = file_lifetimes(model)
    produced = {int(t) for t in (sub.inputs if sub.inputs is not None else [])}
    alias: set[tuple[int, int]] = set()
    custom = {i: io._name(c.customCode) for i, c in enumerate(model.operatorCodes)
              if max(c.builtinCode, c.deprecatedBuiltinCode) == fb.BuiltinOperator.CUSTOM}
    split_v = {i for i, name in custom.items() if name == SPLIT_IN_PLACE.custom_op}
    for k, op in enumerate(sub.operators or []):
        name = custom.get(op.opcodeIndex)
        if name in io.CUSTOM_OPS:
            errors += _check_options(k, name, op)
        for t in op.inputs if op.inputs is not None else []:
            if t >= 0 and int(t) not in consts and int(t) not in produced:
                errors.append(f"op {k} reads tensor {t} before any op produces it")
        outs = [int(t) for t in (op.outputs if op.outputs is not None else []) if t >= 0]
        produced.update(outs)
        if op.opcodeIndex in split_v and op.inputs is not None:
            src = int(op.inputs[0])
            alias.update({(src, o) for o in outs} | {(o, src) for o in outs})
    for t in sub.outputs if sub.outputs is not None else []:
        if int(t) not in produced:
            errors.append(f"graph output {t} is never produced")
    spans = []
    for t, (a, b) in life.items():
        size = align(_tensor_bytes(fb, sub.tensors[t]))
        if size == 0 or sub.tensors[t].isVariable:
            continue
        if offsets[t] < 0:
            errors.append(f"tensor {t} is in the arena but has no offline offset")
            continue
        spans.append((a, b, offsets[t], offsets[t] + size, t))
    spans.sort()
    for i, (_a0, b0, lo0, hi0, t0) in enumerate(spans):
        for a1, _b1, lo1, hi1, t1 in spans[i + 1:]:
            if a1 > b0:
                break
            if lo0 < hi1 and lo1 < hi0 and (t0, t1) not in alias:
                errors.append(f"tensors {t0} and {t1} share bytes [{max(lo0, lo1)},"
                              f"{min(hi0, hi1)}) while both alive at step {a1}")
    return errors
