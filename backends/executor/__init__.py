"""The arena machine: run a model op by op inside one byte arena laid out by a plan.

The arena is one numpy uint8 array of exactly `plan.peak_bytes`. Every activation
lives only there, at the offsets the plan gives, for the steps the plan gives; a
segment is overwritten with a poison pattern as soon as the plan frees it, scratch
buffers are clobbered while their op runs, and spilled data really goes to a storage
(a file, or the storage host over TCP) and really comes back. A plan that puts two
live things in the same bytes, fetches the wrong data, or frees something too early
therefore yields wrong numbers, which `compare` catches against the model run whole.

What is *not* in the arena, on purpose:

- constants (weights, biases): the kernels carry them, as TFLM reads them from flash;
- kernel inputs assembled for a streamed or fused read. A fused concat+conv reads
  its inputs as a virtual channel concatenation; on a device the conv pulls lines
  straight from the parts. The executor pulls every streamed line through the plan's
  line-buffer bytes in the arena, then hands the parts (one slice per resident or
  streamed part) to the kernel outside the arena. The arena never holds the concat.

Which kernels run which op: for a TFLite int8 model the ops a device runs on the
project's own C kernels run on exactly those (backends/c/kernels.py, built from
backends/c/tp_kernels.c at first use): every fused concat+conv and fused concat, and
every TRANSPOSE_CONV the plan puts on the scratch-free kernel (IR attrs["kernel"] ==
"tinyplan_rows"), which accumulates in the plan's own scratch bytes in the arena. Every
other op, and the whole-model reference, runs on the reference kernels, so a C kernel
that differs from TFLite shows up as an output mismatch.

Streamed groups (planner/streaming.py): a plan for a planned graph has one op per group
of source ops run row by row. The arena machine runs it on the project's C row runner
(backends/executor/stream.py) over views into this arena: its rings are the group op's
scratch segments, its stream_in inputs and spill_rows outputs go row by row through
their line buffers to and from the real storage, and recycled rows are poisoned. Every
other op of a planned graph runs as the source op it copies.

Step order (TFLM: op k runs at step k + 1, step 0 holds the graph inputs):
fetches into segments starting at s; scratch clobbered; inputs read (streamed
inputs row by row through their line buffers); the op runs; outputs written;
scratch clobbered again; spills of step s; part-0 compaction of split tensors
whose interleaved phase ends at s; every segment whose last step is s poisoned.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from backends.executor.common import ExecutionError, numpy_dtype
from backends.executor.stream import GroupRunner, is_group, source_op_indices
from planner.analysis import lifetimes
from planner.errors import PlannerError
from planner.ir import Graph, Op, Role, Tensor
from planner.plan import Part, Plan, Segment, Transfer

POISON_SEED = 0x5EED
SCRATCH_SEED = 0xC10B




class Kernels(Protocol):
    """Real kernels for one model, by op."""

    def compute(self, op: Op, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        """Run `op` alone. `inputs` follows op.inputs; None for constants and omitted inputs.

        Returns one array per op.outputs entry (None for an omitted output).
        """
        ...

    def reference(self, inputs: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Run the whole model unplanned; graph input id -> array in, output id -> array out."""
        ...


class StorageBackend(Protocol):
    def write(self, address: int, data: bytes) -> None: ...

    def read(self, address: int, size: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class StorageStats:
    """Bytes moved and wall time spent in one storage during a run."""

    name: str
    kind: str  # "local" or "remote"
    bytes_written: int = 0
    bytes_read: int = 0
    writes: int = 0
    reads: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read, "writes": self.writes, "reads": self.reads,
            "seconds": self.seconds,
        }


class MeteredStorage:
    """Counts bytes and time of every call into a storage backend."""

    def __init__(self, backend: StorageBackend, stats: StorageStats):
        self.backend = backend
        self.stats = stats
        self.written: list[tuple[int, int]] = []  # [start, end) ranges written so far

    def write(self, address: int, data: bytes) -> None:
        start = time.perf_counter()
        self.backend.write(address, data)
        self.stats.seconds += time.perf_counter() - start
        self.stats.bytes_written += len(data)
        self.stats.writes += 1
        self.written.append((address, address + len(data)))

    def _covered(self, address: int, end: int) -> bool:
        for a, b in sorted(self.written):
            if a <= address < b:
                address = b
            if address >= end:
                return True
        return address >= end

    def read(self, address: int, size: int) -> bytes:
        # Reading bytes no spill wrote is a plan error, whatever the storage would answer
        # (a file returns short, the storage host refuses or returns erased bytes).
        if not self._covered(address, address + size):
            raise ExecutionError(f"storage '{self.stats.name}': read of {size} B at "
                                 f"{address} covers bytes no spill wrote")
        start = time.perf_counter()
        data = self.backend.read(address, size)
        self.stats.seconds += time.perf_counter() - start
        if len(data) != size:
            raise ExecutionError(
                f"storage '{self.stats.name}' returned {len(data)} B for a {size} B read"
            )
        self.stats.bytes_read += size
        self.stats.reads += 1
        return data


@dataclass
class Execution:
    outputs: dict[int, np.ndarray]  # graph output id -> array read from the arena
    storage: dict[str, StorageStats] = field(default_factory=dict)
    seconds: float = 0.0  # whole run, kernels included
    kernel_seconds: float = 0.0
    poisoned_bytes: int = 0
    c_kernel_ops: int = 0  # ops run on the project's C kernels (what the device runs)




def _shape_with_channels(tensor: Tensor, channels: int) -> tuple[int, ...]:
    shape = list(tensor.shape)
    shape[tensor.channel_axis] = channels  # type: ignore[index]
    return tuple(shape)


class ArenaMachine:
    """Executes one plan; build it, call `run(inputs)` once."""

    def __init__(self, graph: Graph, plan: Plan, kernels: Kernels,
                 storages: Mapping[str, StorageBackend] | None = None,
                 storage_kind: str = "local"):
        if plan.num_steps != graph.num_steps:
            raise PlannerError(
                f"plan has {plan.num_steps} steps, model '{graph.name}' has {graph.num_steps}"
            )
        self.graph = graph
        self.plan = plan
        self.kernels = kernels
        self.life = lifetimes(graph)
        self.arena = np.zeros(plan.peak_bytes, dtype=np.uint8)
        # A fixed pseudo-random pattern, not a constant byte: a stale read of poison
        # must not look like plausible data (NaN for floats, noise for integers).
        self.pattern = np.random.default_rng(POISON_SEED).integers(
            0, 256, plan.peak_bytes, dtype=np.uint8)
        self.scratch_pattern = np.random.default_rng(SCRATCH_SEED).integers(
            0, 256, plan.peak_bytes, dtype=np.uint8)
        self.stats = {name: StorageStats(name, storage_kind)
                      for name in sorted({t.storage for t in plan.transfers})}
        missing = set(self.stats) - set(storages or {})
        if missing:
            raise PlannerError(f"no storage backend for {', '.join(sorted(missing))}")
        self.storages = {n: MeteredStorage(storages[n], s)  # type: ignore[index]
                         for n, s in self.stats.items()}
        self.parts: dict[tuple[int, int], Part] = {(p.tensor, p.index): p for p in plan.parts}
        self.split = {p.tensor for p in plan.parts}
        self.segs: dict[tuple[int, int | None], list[Segment]] = defaultdict(list)
        self.lines: dict[tuple[int, int | None, int], Segment] = {}
        for s in plan.segments:
            if s.role == "line_buffer":
                self.lines[(s.tensor, s.part, s.first)] = s
            else:
                self.segs[(s.tensor, s.part)].append(s)
        for v in self.segs.values():
            v.sort(key=lambda s: s.first)
        self.by_step: dict[tuple[str, int], list[Transfer]] = defaultdict(list)
        self.spill_of: dict[tuple[int, int | None], Transfer] = {}
        for tr in plan.transfers:
            self.by_step[(tr.kind, tr.step)].append(tr)
            if tr.kind in ("spill", "spill_rows"):  # a spill_rows output's one spill
                self.spill_of[(tr.tensor, tr.part)] = tr
        self.ending: dict[int, list[Segment]] = defaultdict(list)
        for s in plan.segments:
            self.ending[s.last].append(s)
        self.fused_concat: dict[int, int] = {}  # concat op -> conv op
        self.fused_conv: dict[int, int] = {}  # conv op -> concat op
        self.stream_ops: set[int] = set()
        for f in plan.fusions:
            if f.conv is None:
                self.stream_ops.add(f.concat)
            else:
                self.fused_concat[f.concat] = f.conv
                self.fused_conv[f.conv] = f.concat
                self.stream_ops.add(f.conv)
        # A planned graph (streamed groups as one op each) runs its other ops as the source
        # ops they copy; the groups run on the C row runner (backends/executor/stream.py).
        self.source_op = source_op_indices(graph)
        self.groups = GroupRunner(self)
        self.side: dict[int, np.ndarray] = {}  # unplanned non-constant values (shapes etc.)
        self.poisoned = 0
        self.kernel_seconds = 0.0
        self.c_kernel_ops = 0
        self.device = self._device_kernels()
        # Plans with asynchronous windows move their data at the end of each window
        # (backends/executor/inflight.py); blocking plans run exactly as before.
        self.inflight = None
        if any(tr.window != (tr.step, tr.step) for tr in plan.transfers):
            from backends.executor.inflight import InFlight

            self.inflight = InFlight(self)

    def _device_kernels(self):
        """The C kernels, when this plan has an op a device runs on them (TFLite int8)."""
        from backends.executor.kernels_tflite import uses_row_transpose_conv

        if self.graph.source_format != "tflite" or not hasattr(self.kernels, "device_kernels"):
            return None
        device_ops = [self.graph.ops[o] for o in (*self.fused_conv, *self.stream_ops)]
        device_ops += [op for op in self.graph.ops if uses_row_transpose_conv(op) or is_group(op)]
        if not any(op.inputs and self._tensor(op.outputs[0]).dtype in ("int8", "int16")
                   for op in device_ops):
            return None
        return self.kernels.device_kernels()  # type: ignore[attr-defined]

    # -- geometry -------------------------------------------------------------

    def _tensor(self, t: int) -> Tensor:
        return self.graph.tensors[t]

    def _resident(self, t: int, part: int | None, step: int) -> Segment | None:
        for s in self.segs.get((t, part), ()):
            if s.first <= step <= s.last:
                return s
        return None

    def _first(self, t: int, part: int | None) -> Segment:
        segs = self.segs.get((t, part))
        if not segs:
            raise ExecutionError(f"tensor {t} part {part} has no segment")
        return segs[0]

    def _interleaved(self, t: int, step: int) -> bool:
        """Whether split tensor t still sits whole (channels interleaved) at part 0's offset."""
        return all(self._first(t, i).first <= step <= self._first(t, i).last for i in (0, 1))

    def _put(self, offset: int, data: bytes | np.ndarray, room: int) -> None:
        raw = np.frombuffer(bytes(data), dtype=np.uint8) if isinstance(data, bytes) else \
            np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        if raw.size > room or offset + raw.size > self.arena.size:
            raise ExecutionError(f"{raw.size} B do not fit at offset {offset} (room {room} B)")
        self.arena[offset:offset + raw.size] = raw

    def _get(self, offset: int, nbytes: int) -> np.ndarray:
        if offset + nbytes > self.arena.size:
            raise ExecutionError(f"read of {nbytes} B at {offset} leaves the arena")
        return self.arena[offset:offset + nbytes]

    def _shape(self, t: int, part: int | None) -> tuple[int, ...]:
        tensor = self._tensor(t)
        if part is None:
            return tensor.shape
        p = self.parts[(t, part)]
        return _shape_with_channels(tensor, p.channel_stop - p.channel_start)

    def _as_array(self, raw: np.ndarray | bytes, t: int, part: int | None) -> np.ndarray:
        dtype = numpy_dtype(self._tensor(t))
        return np.frombuffer(bytes(raw), dtype=dtype).reshape(self._shape(t, part)).copy()

    def _part_nbytes(self, t: int, part: int | None) -> int:
        return self._tensor(t).nbytes if part is None else self.parts[(t, part)].nbytes

    def _slice_part(self, whole: np.ndarray, t: int, part: int) -> np.ndarray:
        p = self.parts[(t, part)]
        axis = self._tensor(t).channel_axis
        index = [slice(None)] * whole.ndim
        index[axis] = slice(p.channel_start, p.channel_stop)  # type: ignore[index]
        return np.ascontiguousarray(whole[tuple(index)])

    # -- reading and writing tensors -----------------------------------------

    def _read_whole_split(self, t: int) -> np.ndarray:
        seg = self._first(t, 0)
        return self._as_array(self._get(seg.offset, self._tensor(t).nbytes), t, None)

    def read_part(self, t: int, part: int | None, step: int) -> np.ndarray:
        """The data of tensor t (or one channel part) resident at `step`, as its own array."""
        if part is not None and self._interleaved(t, step):
            return self._slice_part(self._read_whole_split(t), t, part)
        seg = self._resident(t, part, step)
        if seg is None:
            raise ExecutionError(
                f"tensor {t} '{self._tensor(t).name}'"
                + (f" part {part}" if part is not None else "")
                + f" is not resident at step {step}")
        return self._as_array(self._get(seg.offset, self._part_nbytes(t, part)), t, part)

    def stream_part(self, t: int, part: int | None, step: int) -> np.ndarray:
        """Pull a spilled tensor (part) from storage row by row through its line buffer."""
        line = self.lines.get((t, part, step))
        stream = [tr for tr in self.by_step[("stream", step)]
                  if tr.tensor == t and tr.part == part]
        spill = self.spill_of.get((t, part))
        if line is None or not stream or spill is None:
            raise ExecutionError(
                f"tensor {t} part {part} at step {step}: not resident and no stream with "
                "a line buffer and an earlier spill")
        tr = stream[0]
        nbytes = self._part_nbytes(t, part)
        shape = self._shape(t, part)
        rows = shape[self._row_axis()] if len(shape) == 4 else 1
        row = max(1, nbytes // max(rows, 1))
        # As many whole rows as the line buffer holds per read; at least one row.
        chunk = max(row, (min(line.size, nbytes) // row) * row)
        if chunk > line.size:
            raise ExecutionError(
                f"line buffer of tensor {t} at step {step} holds {line.size} B, a row is {row} B")
        out = np.empty(nbytes, dtype=np.uint8)
        storage = self.storages[tr.storage]
        for pos in range(0, nbytes, chunk):
            size = min(chunk, nbytes - pos)
            self._put(line.offset, storage.read(tr.address + pos, size), line.size)
            out[pos:pos + size] = self._get(line.offset, size)
        return self._as_array(out, t, part)

    def _row_axis(self) -> int:
        return 2 if self.graph.layout == "NCHW" else 1

    def read_input(self, t: int, step: int, streamable: bool) -> np.ndarray:
        if t not in self.split:
            if self._resident(t, None, step) is None and streamable:
                return self.stream_part(t, None, step)
            return self.read_part(t, None, step)
        if self._interleaved(t, step):
            return self._read_whole_split(t)
        if not streamable:
            raise ExecutionError(f"split tensor {t} read whole at step {step} after its split")
        pieces = [self.read_part(t, i, step) if self._resident(t, i, step) is not None
                  else self.stream_part(t, i, step) for i in (0, 1)]
        return np.concatenate(pieces, axis=self._tensor(t).channel_axis)  # type: ignore[arg-type]

    def write_tensor(self, t: int, value: np.ndarray, step: int) -> None:
        tensor = self._tensor(t)
        data = np.ascontiguousarray(value, dtype=numpy_dtype(tensor))
        if data.nbytes != tensor.nbytes:
            raise PlannerError(
                f"kernel wrote {data.nbytes} B for tensor '{tensor.name}' of {tensor.nbytes} B")
        if t in self.split:
            # The producer writes the whole tensor at part 0's offset, over both parts.
            k0, s0 = self._first(t, 0), self._first(t, 1)
            if k0.first != step or s0.first != step:
                raise ExecutionError(f"split tensor {t} is not created at step {step}")
            self._put(k0.offset, data, max(k0.end, s0.end) - k0.offset)
            return
        seg = self._resident(t, None, step)
        if seg is None or seg.first != step:
            raise ExecutionError(f"tensor {t} '{tensor.name}' has no segment created at {step}")
        self._put(seg.offset, data, seg.size)

    # -- step phases ----------------------------------------------------------

    def _fetch(self, step: int) -> None:
        if self.inflight is not None:
            self.inflight.before_op(step)
            return
        for tr in self.by_step[("fetch", step)]:
            seg = self._resident(tr.tensor, tr.part, step)
            spill = self.spill_of.get((tr.tensor, tr.part))
            if seg is None or seg.first != step or spill is None:
                raise ExecutionError(f"fetch of tensor {tr.tensor} at step {step} has no "
                                     "segment starting there or no earlier spill")
            # The fetch's own address, as a device runtime would use it: a plan whose
            # fetch points elsewhere than its spill brings back the wrong bytes.
            data = self.storages[tr.storage].read(tr.address, self._part_nbytes(tr.tensor, tr.part))
            self._put(seg.offset, data, seg.size)

    def _spill(self, step: int) -> None:
        if self.inflight is not None:
            self.inflight.after_op(step)
            return
        for tr in self.by_step[("spill", step)]:
            data = self.read_part(tr.tensor, tr.part, step)
            if data.nbytes != tr.nbytes:
                raise ExecutionError(f"spill of tensor {tr.tensor}: {tr.nbytes} B planned, "
                                     f"{data.nbytes} B resident")
            self.storages[tr.storage].write(tr.address, data.tobytes())

    def _compact(self, step: int) -> None:
        """Split tensors whose part 1 leaves now while part 0 stays: pack part 0's channels."""
        for t in sorted(self.split):
            k0, s0 = self._first(t, 0), self._first(t, 1)
            if s0.last == step and k0.last > step:
                kept = self._slice_part(self._read_whole_split(t), t, 0)
                self._put(k0.offset, kept, k0.size)

    def _free(self, step: int) -> None:
        for s in self.ending.get(step, ()):
            end = min(s.end, self.arena.size)
            self.arena[s.offset:end] = self.pattern[s.offset:end]
            self.poisoned += max(0, end - s.offset)

    def _clobber_scratch(self, op: Op, step: int) -> None:
        for t in op.scratch:
            seg = self._resident(t, None, step)
            if seg is not None:
                end = min(seg.end, self.arena.size)
                self.arena[seg.offset:end] = self.scratch_pattern[seg.offset:end]

    def _gather(self, op: Op, step: int) -> list[np.ndarray | None]:
        streamable = op.index in self.stream_ops
        concat_out = None
        if op.index in self.fused_conv:
            concat = self.graph.ops[self.fused_conv[op.index]]
            concat_out = concat.outputs[0]
            pieces = self._gather_plain(concat, step, streamable=True)
            # The virtual concatenation, outside the arena: only the conv kernel sees it.
            virtual = self._compute(concat, pieces)[0]
        values = []
        for t in op.inputs:
            if t == concat_out:
                values.append(virtual)
            else:
                values.append(self._value(t, step, streamable))
        return values

    def _slices(self, op: Op, step: int) -> list[np.ndarray]:
        """The concat's inputs as the fused kernel sees them: one slice per resident or
        streamed part (a split tensor after its split gives two)."""
        out: list[np.ndarray] = []
        for t in op.inputs:
            if t in self.split and not self._interleaved(t, step):
                out += [self.read_part(t, i, step) if self._resident(t, i, step) is not None
                        else self.stream_part(t, i, step) for i in (0, 1)]
            else:
                out.append(self.read_input(t, step, True))
        return out

    def _on_device(self, op: Op, step: int) -> list[np.ndarray | None] | None:
        """Run `op` on the C kernels if the device does; None if it runs on the reference."""
        from backends.executor.kernels_tflite import uses_row_transpose_conv

        dev = self.device
        if dev is None or not op.outputs:
            return None
        dtype = self._tensor(op.outputs[0]).dtype
        if dtype != "int8" and not (dtype == "int16" and uses_row_transpose_conv(op)):
            return None
        start = time.perf_counter()
        if op.index in self.fused_conv:
            concat = self.graph.ops[self.fused_conv[op.index]]
            result = dev.fused_conv(op, self._slices(concat, step))
        elif op.index in self.stream_ops:
            result = dev.fused_concat(op, self._slices(op, step))
        elif uses_row_transpose_conv(op):
            seg = self._resident(op.scratch[0], None, step) if op.scratch else None
            need = dev.ck.tconv_scratch_bytes(self._tensor(op.outputs[0]).shape, dtype)
            if seg is None or seg.size < need:
                raise ExecutionError(
                    f"op {op.index} ({op.op_type}, scratch-free kernel) needs {need} B of "
                    f"scratch at step {step}, the plan gives {seg.size if seg else 0} B")
            x = self.read_input(op.inputs[2], step, False)
            # The kernel accumulates in the plan's scratch bytes, inside the arena.
            result = dev.transpose_conv(op, x, self.arena[seg.offset:seg.offset + seg.size])
        else:
            return None
        self.kernel_seconds += time.perf_counter() - start
        self.c_kernel_ops += 1
        return [result]

    def _gather_plain(self, op: Op, step: int, streamable: bool) -> list[np.ndarray | None]:
        return [self._value(t, step, streamable) for t in op.inputs]

    def _value(self, t: int, step: int, streamable: bool) -> np.ndarray | None:
        if t < 0:
            return None
        if t in self.life:
            return self.read_input(t, step, streamable)
        if t in self.side:
            return self.side[t]
        if self._tensor(t).role in (Role.CONSTANT, Role.VARIABLE) or self._tensor(t).nbytes == 0:
            return None  # the kernel carries it
        raise ExecutionError(f"tensor {t} '{self._tensor(t).name}' has no value at step {step}")

    def _compute(self, op: Op, inputs: list[np.ndarray | None]) -> list[np.ndarray | None]:
        start = time.perf_counter()
        source = self.graph.source
        # The kernels know the source model's ops; a planned graph's copy names its original.
        out = self.kernels.compute(op if source is None else source.ops[self.source_op[op.index]],
                                   inputs)
        self.kernel_seconds += time.perf_counter() - start
        if len(out) != len(op.outputs):
            raise PlannerError(f"kernel of op {op.index} returned {len(out)} outputs, "
                               f"expected {len(op.outputs)}")
        return out

    # -- the run ---------------------------------------------------------------

    def run(self, inputs: Mapping[int, np.ndarray]) -> Execution:
        start = time.perf_counter()
        self.arena[:] = self.pattern  # nothing in the arena is zero-initialised
        last = self.graph.num_steps - 1
        outputs: dict[int, np.ndarray] = {}
        for t in self.graph.inputs:
            if t not in inputs:
                raise PlannerError(f"no value for graph input '{self._tensor(t).name}'")
            if t in self.life:
                self.write_tensor(t, inputs[t], 0)
            else:
                self.side[t] = np.asarray(inputs[t])
        for step in range(self.graph.num_steps):
            if step > 0:
                op = self.graph.ops[step - 1]
                self._fetch(step)
                if is_group(op):
                    # Rings start as garbage; outputs go to their segments or to storage.
                    self._clobber_scratch(op, step)
                    began = time.perf_counter()
                    self.groups.run(op, step)
                    self.kernel_seconds += time.perf_counter() - began
                    self.c_kernel_ops += 1
                    self._clobber_scratch(op, step)
                elif op.index not in self.fused_concat:
                    self._clobber_scratch(op, step)
                    results = self._on_device(op, step)
                    if results is None:
                        results = self._compute(op, self._gather(op, step))
                    for t, value in zip(op.outputs, results, strict=True):
                        if t < 0 or value is None:
                            continue
                        if t in self.life:
                            self.write_tensor(t, value, step)
                        else:
                            self.side[t] = np.asarray(value)
                    self._clobber_scratch(op, step)
            self._spill(step)
            self._compact(step)
            if step == last:
                for t in self.graph.outputs:
                    outputs[t] = (self.read_input(t, step, False) if t in self.life
                                  else self.side[t])
            self._free(step)
        return Execution(outputs, dict(self.stats), time.perf_counter() - start,
                         self.kernel_seconds, self.poisoned, self.c_kernel_ops)


def execute(graph: Graph, plan: Plan, kernels: Kernels, inputs: Mapping[int, np.ndarray],
            storages: Mapping[str, StorageBackend] | None = None,
            storage_kind: str = "local") -> Execution:
    return ArenaMachine(graph, plan, kernels, storages, storage_kind).run(inputs)


# -- comparison -----------------------------------------------------------------

FLOAT_RTOL = 1e-6


def compare(graph: Graph, got: Mapping[int, np.ndarray],
            want: Mapping[int, np.ndarray]) -> str | None:
    """None when every output matches (integers exactly, floats within 1e-6 relative)."""
    for t in graph.outputs:
        name = graph.tensors[t].name
        a, b = np.asarray(got[t]), np.asarray(want[t])
        if a.size != b.size:
            return f"output '{name}': {a.size} elements, reference has {b.size}"
        a, b = a.reshape(-1), b.reshape(-1)
        if a.dtype.kind in "iub" and b.dtype.kind in "iub":
            diff = np.flatnonzero(a != b)
            if diff.size:
                i = int(diff[0])
                return (f"output '{name}': {diff.size} of {a.size} values differ "
                        f"(first at {i}: {a[i]} vs {b[i]})")
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.all(np.isfinite(a64) == np.isfinite(b64)):
            return f"output '{name}': non-finite values where the reference has none"
        fin = np.isfinite(b64)
        scale = float(np.max(np.abs(b64[fin]))) if fin.any() else 0.0
        err = float(np.max(np.abs(a64[fin] - b64[fin]))) if fin.any() else 0.0
        if err > FLOAT_RTOL * max(scale, np.finfo(np.float32).tiny):
            return (f"output '{name}': max abs error {err:.3g} exceeds 1e-6 of the "
                    f"output's magnitude {scale:.3g}")
    return None


# -- storages, inputs, the whole run ----------------------------------------------

class FileStorage:
    """Local storage: one file, written and read at the plan's byte addresses."""

    def __init__(self, path: Path):
        self.file = open(path, "w+b")  # noqa: SIM115 - closed by close()

    def write(self, address: int, data: bytes) -> None:
        self.file.seek(address)
        self.file.write(data)

    def read(self, address: int, size: int) -> bytes:
        self.file.flush()
        self.file.seek(address)
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


def storage_extent(plan: Plan) -> dict[str, int]:
    """Bytes each storage must hold for the plan's spills (at least 1)."""
    extent: dict[str, int] = {}
    for tr in plan.transfers:
        end = tr.address + tr.nbytes if tr.kind in ("spill", "spill_rows") else 0
        extent[tr.storage] = max(extent.get(tr.storage, 1), end)
    return extent


@contextmanager
def open_storages(plan: Plan, kind: str = "local") -> Iterator[dict[str, StorageBackend]]:
    """One backend per storage the plan names: temp files, or storage hosts on loopback."""
    if kind not in ("local", "remote"):
        raise PlannerError(f"unknown storage kind '{kind}': use local or remote")
    opened: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="tinyplan-run-") as tmp:
        try:
            backends: dict[str, StorageBackend] = {}
            for i, (name, capacity) in enumerate(sorted(storage_extent(plan).items())):
                directory = Path(tmp) / f"storage{i}"
                directory.mkdir()
                if kind == "local":
                    backends[name] = FileStorage(directory / "data.bin")
                    opened.append(backends[name])
                    continue
                from backends.storage.host import StorageHostServer
                from backends.storage.protocol import RemoteStorageClient

                server = StorageHostServer(capacity, directory, "127.0.0.1", 0)
                port = server.start()
                opened.append(server)
                client = RemoteStorageClient("127.0.0.1", port)
                opened.append(client)
                backends[name] = client
            yield backends
        finally:
            for thing in reversed(opened):  # clients before their servers
                if hasattr(thing, "stop"):
                    thing.stop()
                else:
                    thing.close()


def kernels_for(graph: Graph, model_path: str | Path, runtime: str = "auto") -> Kernels:
    """Kernels for the model's format; `runtime` picks litert or TFLM for TFLite models."""
    if graph.source_format == "onnx":
        from backends.executor.kernels_onnx import OnnxKernels

        return OnnxKernels(graph, model_path)
    if graph.source_format == "tflite":
        from backends.executor.kernels_tflite import TfliteKernels

        return TfliteKernels(graph, model_path, runtime)
    raise PlannerError(f"no kernels for models of format '{graph.source_format}'")


def random_inputs(graph: Graph, seed: int = 0) -> dict[int, np.ndarray]:
    """One random array per graph input: full range for integers, [-1, 1) for floats."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in graph.inputs:
        tensor = graph.tensors[t]
        dtype = numpy_dtype(tensor)
        if dtype.kind == "b":
            out[t] = rng.integers(0, 2, tensor.shape).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            out[t] = rng.integers(info.min, int(info.max) + 1, tensor.shape, dtype=dtype)
        else:
            out[t] = rng.uniform(-1.0, 1.0, tensor.shape).astype(dtype)
    return out


def load_inputs(graph: Graph, path: str | Path) -> dict[int, np.ndarray]:
    """Graph inputs from an .npz: arrays keyed by input name, or arr_0.. in input order."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - a damaged npz raises zipfile/zlib/EOF/... errors
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PlannerError(f"cannot read inputs {path}: {why}") from None
    out = {}
    for i, t in enumerate(graph.inputs):
        tensor = graph.tensors[t]
        arr = arrays.get(tensor.name, arrays.get(f"arr_{i}"))
        if arr is None:
            raise PlannerError(f"{path} has no array '{tensor.name}' (or arr_{i})")
        if arr.size * numpy_dtype(tensor).itemsize != tensor.nbytes:
            raise PlannerError(f"{path}: '{tensor.name}' has shape {list(arr.shape)}, the model "
                               f"wants {list(tensor.shape)}")
        if arr.dtype.kind not in "biuf":
            raise PlannerError(f"{path}: '{tensor.name}' holds {arr.dtype} data, not numbers")
        out[t] = arr.astype(numpy_dtype(tensor)).reshape(tensor.shape)
    return out


@dataclass
class RunResult:
    execution: Execution
    reference: dict[int, np.ndarray]
    mismatch: str | None  # None: outputs match the unplanned model
    storage_kind: str
    kernels: Kernels | None = None


def run_plan(graph: Graph, plan: Plan, model_path: str | Path, storage: str = "local",
             inputs: Mapping[int, np.ndarray] | None = None, seed: int = 0,
             kernels: Kernels | None = None, runtime: str = "auto",
             reference: Mapping[int, np.ndarray] | None = None) -> RunResult:
    """Execute `plan` in its arena and compare with the model run whole on the same inputs.

    `kernels` and `reference` (outputs of the whole model on `inputs`) may be passed in
    to run several plans of one model without rebuilding them.
    """
    # Kernels of the model file: a planned graph's source graph is the model's.
    kernels = kernels or kernels_for(graph.source or graph, model_path, runtime)
    feeds = dict(inputs) if inputs is not None else random_inputs(graph, seed)
    reference = dict(reference) if reference is not None else kernels.reference(feeds)
    with open_storages(plan, storage) as backends:
        try:
            execution = execute(graph, plan, kernels, feeds, backends, storage)
        except ExecutionError as exc:
            return RunResult(Execution({}), reference, f"plan cannot run: {exc}", storage,
                             kernels)
    return RunResult(execution, reference, compare(graph, execution.outputs, reference), storage,
                     kernels)
