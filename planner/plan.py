"""The plan every planner returns and every backend reads.

A plan places *segments*: a tensor (or a channel part of it) resident at one arena
offset over a closed step interval. A tensor that is never spilled has one segment
spanning its TFLM lifetime. A spilled tensor has several, joined by transfers:

- ``spill`` at step s: after the op at step s runs, the data is written to storage
  (once per tensor part; tensors are immutable once produced);
- ``fetch`` at step s: before the op at step s runs, the data is read back into a
  segment that starts at s;
- ``stream`` at step s: the op at step s (a fused concat, or the conv of a fused
  concat+conv group) reads the data from storage through a line-buffer segment.

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
TransferKind = Literal["spill", "fetch", "stream"]


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


@dataclass(frozen=True)
class Fusion:
    concat: int  # op index
    conv: int | None = None  # op index: concat output never materialised


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
    scratch_dtype: str = "int32"
    notes: tuple[str, ...] = field(default=())
    # Why the search ended early: "time-limit" (wall clock), "work-limit" (the reproducible
    # work budget), "interrupted" (Ctrl-C); None: it ran to completion (or none was run).
    stopped: str | None = None

    @property
    def spilled_bytes(self) -> int:
        return sum(t.nbytes for t in self.transfers if t.kind == "spill")

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
    def from_json(data: dict[str, Any]) -> Plan:
        return Plan(
            model=data["model"],
            planner=data["planner"],
            num_steps=data["num_steps"],
            peak_bytes=data["peak_bytes"],
            segments=tuple(Segment(**s) for s in data["segments"]),
            parts=tuple(Part(**p) for p in data.get("parts", ())),
            transfers=tuple(Transfer(**t) for t in data.get("transfers", ())),
            fusions=tuple(Fusion(**f) for f in data.get("fusions", ())),
            status=data.get("status", "heuristic"),
            bound_bytes=data.get("bound_bytes"),
            objective=data.get("objective", "peak"),
            est_transfer_seconds=data.get("est_transfer_seconds", 0.0),
            bound_transfer_seconds=data.get("bound_transfer_seconds"),
            solve_seconds=data.get("solve_seconds", 0.0),
            scratch_dtype=data.get("scratch_dtype", "int32"),
            notes=tuple(data.get("notes", ())),
            stopped=data.get("stopped"),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @staticmethod
    def load(path: str | Path) -> Plan:
        return Plan.from_json(json.loads(Path(path).read_text()))
