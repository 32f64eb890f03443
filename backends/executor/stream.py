"""Streamed groups in the arena machine: one group op runs row by row on the C row runner.

A plan made for a planned graph (planner/streaming.py: `apply_groups`) has one op per
streamed group. The arena machine runs it through `backends/crows.run_group` with the
program `backends/group_program.encode` builds for it, on *views into the one arena*:

- a resident input or an output created at the group's step: its segment's bytes;
- a ring (one scratch tensor of the group op per internal tensor): its segment's bytes,
  so a ring smaller than the schedule needs overwrites rows that are still to be read;
- a `stream_in` input not resident at the step: its line buffer segment, which the
  runner fills row by row from storage (`read`, at the plan's storage address);
- a `spill_rows` output: its line buffer segment, which the runner writes row by row to
  storage (`write`) as the rows are produced: the output never exists whole in the arena;
- constants: the model's weights, outside the arena (TFLM reads them from flash).

Recycled ring and line-buffer rows are poisoned by the runner (POISON_BYTE), so an
undersized ring or line buffer yields wrong numbers, which the comparison catches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from planner.ir import Graph, Op, OpKind
from planner.plan import Transfer

if TYPE_CHECKING:
    from backends.executor import ArenaMachine

# Written over each recycled ring / line-buffer row. Not 0: a zero row is plausible data
# (the zero point of many int8 tensors sits near it); 0xA5 is -91 as int8.
POISON_BYTE = 0xA5


def is_group(op: Op) -> bool:
    return op.kind == OpKind.STREAMED_GROUP


def source_op_indices(graph: Graph) -> list[int]:
    """Planned op index -> index of the source op it copies (a group: its first member).

    apply_groups copies every op outside a group in order and replaces each group by
    one op, so the source index advances by the group's member count.
    """
    out: list[int] = []
    k = 0
    for op in graph.ops:
        out.append(k)
        k += len(op.attrs["members"]) if is_group(op) else 1
    if graph.source is not None and k != len(graph.source.ops):
        from backends.executor.common import ExecutionError

        raise ExecutionError(f"planned graph covers {k} source ops, its source has "
                             f"{len(graph.source.ops)}")
    return out


@dataclass(frozen=True)
class _Range:
    storage: str
    start: int
    stop: int


class _Router:
    """Routes the runner's storage addresses to the storage of the transfer they fall in.

    The C runner knows one address space per group (the view table's storage address);
    the executor finds which of the step's stream / spill_rows transfers owns each range,
    so a row read or written outside every transfer of the step is a plan error."""

    def __init__(self, machine: ArenaMachine, reads: Sequence[Transfer],
                 writes: Sequence[Transfer]):
        self.machine = machine
        self.reads = [_Range(t.storage, t.address, t.address + t.nbytes) for t in reads]
        self.writes = [_Range(t.storage, t.address, t.address + t.nbytes) for t in writes]
        self.error: Exception | None = None

    @staticmethod
    def _owner(ranges: Sequence[_Range], address: int, nbytes: int, what: str) -> str:
        from backends.executor.common import ExecutionError

        owners = {r.storage for r in ranges if r.start <= address and address + nbytes <= r.stop}
        if len(owners) != 1:
            why = "no transfer of this step covers it" if not owners else \
                f"transfers in {len(owners)} storages cover it"
            raise ExecutionError(f"streamed group {what} of {nbytes} B at storage address "
                                 f"{address}: {why}")
        return owners.pop()

    def read(self, address: int, nbytes: int) -> bytes:
        try:
            name = self._owner(self.reads, address, nbytes, "read")
            return self.machine.storages[name].read(address, nbytes)
        except Exception as exc:  # noqa: BLE001 - reported after the C call returns
            self.error = self.error or exc
            raise

    def write(self, address: int, data: bytes) -> None:
        try:
            name = self._owner(self.writes, address, len(data), "write")
            self.machine.storages[name].write(address, bytes(data))
        except Exception as exc:  # noqa: BLE001 - reported after the C call returns
            self.error = self.error or exc
            raise


class GroupRunner:
    """Runs the streamed group ops of one plan (built by the arena machine)."""

    def __init__(self, machine: ArenaMachine):
        self.m = machine
        self.programs: dict[int, np.ndarray] = {}
        self.constants: dict[int, np.ndarray] = {}

    def _program(self, op: Op) -> np.ndarray:
        if op.index not in self.programs:
            from backends.c.group_program import encode

            # The parsed .tflite the kernels already hold: quantisation comes from it.
            model = getattr(self.m.kernels, "model", None)
            if model is None:
                from backends.executor.common import ExecutionError

                raise ExecutionError(f"op {op.index} ({op.name}): streamed groups run on TFLite "
                                     "int8 models only")
            self.programs[op.index] = encode(model, self.m.graph, self.m.plan, op.index)
        return self.programs[op.index]

    def _constant(self, t: int) -> np.ndarray:
        # The runner takes writable buffers: a private copy of the model's bytes, made once.
        if t not in self.constants:
            self.constants[t] = np.array(self.m.device._const(t), copy=True).reshape(-1) \
                .view(np.uint8)
        return self.constants[t]

    def _line(self, t: int, step: int, kind: str) -> np.ndarray:
        from backends.executor.common import ExecutionError

        line = self.m.lines.get((t, None, step))
        if line is None:
            raise ExecutionError(f"tensor {t} '{self.m.graph.tensors[t].name}' is {kind} at "
                                 f"step {step} without a line buffer segment there")
        return self.m.arena[line.offset:line.offset + line.size]

    def _segment_view(self, t: int, step: int, created: bool) -> np.ndarray | None:
        from backends.executor.common import ExecutionError

        m = self.m
        if t in m.split:
            raise ExecutionError(f"tensor {t}: a streamed group reads no channel-split tensor")
        seg = m._resident(t, None, step)
        if seg is None or (created and seg.first != step):
            return None
        nbytes = m.graph.tensors[t].nbytes
        if nbytes > seg.size or seg.offset + nbytes > m.arena.size:
            raise ExecutionError(f"tensor {t} ({nbytes} B) does not fit its segment of "
                                 f"{seg.size} B at step {step}")
        return m.arena[seg.offset:seg.offset + nbytes]

    def bases(self, op: Op, step: int) -> tuple[list[np.ndarray], list[Transfer], list[Transfer]]:
        """The runner's buffers (inputs, outputs, rings), and the step's stream /
        spill_rows transfers of this op."""
        from backends.executor.common import ExecutionError

        m = self.m
        streams = {tr.tensor: tr for tr in m.by_step[("stream", step)]}
        spills = {tr.tensor: tr for tr in m.by_step[("spill_rows", step)]}
        reads: list[Transfer] = []
        writes: list[Transfer] = []
        views: list[np.ndarray] = []
        for t in op.inputs:
            tensor = m.graph.tensors[t]
            if not tensor.planned:  # weights and biases: outside the arena, as in flash
                views.append(self._constant(t))
                continue
            view = self._segment_view(t, step, created=False)
            if view is None:
                if t not in streams or (t, None) not in m.spill_of:
                    raise ExecutionError(
                        f"group op {op.index} ({op.name}) at step {step}: input {t} "
                        f"'{tensor.name}' is neither resident nor streamed after a spill")
                reads.append(streams[t])
                view = self._line(t, step, "streamed in")
            views.append(view)
        for t in op.outputs:
            view = self._segment_view(t, step, created=True)
            if view is None:
                if t not in spills:
                    raise ExecutionError(
                        f"group op {op.index} ({op.name}) at step {step}: output {t} "
                        f"'{m.graph.tensors[t].name}' has neither a segment created there "
                        "nor a spill_rows transfer")
                writes.append(spills[t])
                view = self._line(t, step, "spilled row by row")
            views.append(view)
        for t in op.scratch:
            seg = m._resident(t, None, step)
            if seg is None:
                raise ExecutionError(f"ring {t} '{m.graph.tensors[t].name}' of group op "
                                     f"{op.index} has no segment at step {step}")
            views.append(m.arena[seg.offset:seg.offset + seg.size])
        return views, reads, writes

    def run(self, op: Op, step: int) -> None:
        """Run group `op` at `step`: outputs land in their segments or in storage."""
        from backends.c import rows as crows
        from backends.executor.common import ExecutionError

        if self.m.device is None:
            raise ExecutionError(f"op {op.index} ({op.name}): streamed groups run on the C row "
                                 "runner, which serves TFLite int8 models only")
        crows.library()  # no C compiler: one PlannerError line, not a mismatch
        program = self._program(op)
        views, reads, writes = self.bases(op, step)
        router = _Router(self.m, reads, writes)
        try:
            crows.run_group(program, views, router.read, router.write, POISON_BYTE)
        except Exception as exc:  # the runner's error, or a storage error it passed on
            cause = router.error or exc
            if isinstance(cause, ExecutionError):
                raise cause from None
            raise ExecutionError(f"group op {op.index} ({op.name}) at step {step}: "
                                 f"{cause}") from None
        if router.error is not None:
            raise router.error
