"""The plan every planner returns and every backend reads.

A plan places *segments*: a tensor (or a channel part of it) resident at one arena
offset over a closed step interval. A tensor that is never spilled has one segment
spanning its TFLM lifetime. A spilled tensor has several, joined by transfers:

- ``spill`` at step s: after the op at step s runs, the data is written to storage
  (once per tensor part; tensors are immutable once produced);
- ``fetch`` at step s: before the op at step s runs, the data is read back into a
  segment that starts at s;
- ``stream`` at step s: the op at step s (a fused concat, the conv of a fused
  concat+conv group, or a streamed group) reads the data from storage through a
  line-buffer segment;
- ``spill_rows`` at step s: the streamed group at step s writes the tensor to storage
  row by row as it produces it, through a line-buffer segment: the tensor never exists
  whole in the arena at its creation (its later segments start with a fetch).

A transfer is *blocking* by default: it runs between two ops. An *asynchronous* one
has a window of steps in flight, [issue, complete] (None meaning ``step``): a spill is
issued after the op at ``step`` (issue == step) and overlaps the ops at steps
step+1..complete; a fetch completes before the op at ``step`` (complete == step) and
overlaps the ops at steps issue..step-1. The arena holds the buffer over the whole
window, and storage channels carry one transfer at a time.

A *streamed group* (StreamGroup) is a run of consecutive ops of the source graph that
runs as one op, row by row: the tensors between its members live in rings of a few
rows (planner/streaming.py). The plan's steps and segments then refer to the graph with
each group replaced by one op (streaming.apply_groups); `stream_groups` and
`op_kernels` refer to the source graph's op indices.

A *fusion* names a channel CONCATENATION that streams, or a concat+conv pair whose
concat output is never materialised (the conv reads a virtual concatenation).

A *part* splits a tensor on its channel axis into a kept part 0 (leading channels)
and a spilled part 1 (trailing channels). Both parts' first segments start at the
producer and sit back to back, so the producer writes the whole tensor at part 0's
offset; when part 1 is spilled the runtime compacts part 0 in place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SegmentRole = Literal["tensor", "line_buffer"]
TransferKind = Literal["spill", "fetch", "stream", "spill_rows"]


@dataclass(frozen=True)
class Segment:
    tensor: int
    first: int
    last: int
    offset: int
    size: int
    part: int | None = None  # None: the whole tensor
    role: SegmentRole = "tensor"

    def overlaps_in_time(self, other: Segment) -> bool:
        return self.first <= other.last and other.first <= self.last

    def overlaps_in_space(self, other: Segment) -> bool:
        return self.offset < other.offset + other.size and other.offset < self.offset + self.size

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Part:
    tensor: int
    index: int  # 0 kept (leading channels), 1 spilled (trailing channels)
    channel_start: int
    channel_stop: int
    nbytes: int


@dataclass(frozen=True)
class Transfer:
    kind: TransferKind
    tensor: int
    step: int
    storage: str
    nbytes: int
    address: int = 0  # byte position in the storage
    part: int | None = None
    # Asynchronous window of steps in flight (None: `step`, a blocking transfer).
    issue: int | None = None
    complete: int | None = None

    @property
    def window(self) -> tuple[int, int]:
        """[first, last] step the transfer is in flight; (step, step) when blocking."""
        return (self.step if self.issue is None else self.issue,
                self.step if self.complete is None else self.complete)


@dataclass(frozen=True)
class Fusion:
    concat: int  # op index
    conv: int | None = None  # op index: concat output never materialised


@dataclass(frozen=True)
class StreamGroup:
    """Consecutive source-graph ops run as one op, row by row (planner/streaming.py)."""

    ops: tuple[int, ...]  # source-graph op indices, consecutive, ascending
    # (source tensor id, rows held) of every tensor the group keeps in a ring.
    rings: tuple[tuple[int, int], ...] = ()
    # (member position in `ops`, output row) in execution order.
    schedule: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class StorageRef:
    name: str
    capacity: int


@dataclass(frozen=True)
class ProfileRef:
    """The profile a plan was made for: its name and storages with capacities."""

    name: str
    storages: tuple[StorageRef, ...] = ()

    @property
    def capacities(self) -> dict[str, int]:
        return {s.name: s.capacity for s in self.storages}


@dataclass(frozen=True)
class Plan:
    model: str
    planner: str
    num_steps: int
    peak_bytes: int
    segments: tuple[Segment, ...]
    parts: tuple[Part, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    fusions: tuple[Fusion, ...] = ()
    # "optimal" (proven), "feasible" (valid, not proven), "heuristic" (no proof attempted)
    status: str = "heuristic"
    bound_bytes: int | None = None  # proven lower bound on the peak, where one is known
    objective: str = "peak"
    est_transfer_seconds: float = 0.0
    bound_transfer_seconds: float | None = None  # proven lower bound, latency objective
    solve_seconds: float = 0.0
    # (op index, kernel) of ops moved onto a custom kernel (planner/kernels.py), e.g. the
    # scratch-free TRANSPOSE_CONV: writers swap exactly these ops, re-deriving nothing.
    op_kernels: tuple[tuple[int, str], ...] = ()
    stream_groups: tuple[StreamGroup, ...] = ()
    notes: tuple[str, ...] = field(default=())
    # What the plan was made for (planner/plan_check.py stamps and checks them).
    model_sha256: str | None = None
    model_path: str | None = None
    profile: ProfileRef | None = None
    # Why the search ended early: "time-limit" (wall clock), "work-limit" (the reproducible
    # work budget), "interrupted" (Ctrl-C); None: it ran to completion (or none was run).
    stopped: str | None = None

    @property
    def spilled_bytes(self) -> int:
        return sum(t.nbytes for t in self.transfers if t.kind in ("spill", "spill_rows"))

    @property
    def fetched_bytes(self) -> int:
        return sum(t.nbytes for t in self.transfers if t.kind in ("fetch", "stream"))

    def segments_of(self, tensor: int, part: int | None = None) -> list[Segment]:
        return sorted(
            (s for s in self.segments
             if s.tensor == tensor and s.part == part and s.role == "tensor"),
            key=lambda s: s.first,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spilled_bytes"] = self.spilled_bytes
        data["fetched_bytes"] = self.fetched_bytes
        return data

    @staticmethod
    def from_json(data: Any) -> Plan:
        """A Plan from parsed JSON, strictly checked (planner/plan_check.py)."""
        from .plan_check import plan_from_json

        return plan_from_json(data)

    def save(self, path: str | Path) -> None:
        from .atomic import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")

    @staticmethod
    def load(path: str | Path) -> Plan:
        from .plan_check import load_plan

        return load_plan(path)
