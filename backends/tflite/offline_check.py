"""Check a model's OfflineMemoryAllocation array before TFLM reads it.

TFLM trusts the array: a wrong length, an offset of -2 or an offset near 2^31 make
it abort or fail far from the cause. This is the same contract the writer
(backends/tflite/offline.py) produces: [version 1, subgraph 0, N, offsets...] with N
the tensor count over all subgraphs; each offset -1 (plan online) or a multiple of
16 (MicroArenaBufferAlignment) whose tensor ends inside the plan's peak.
"""

from __future__ import annotations

from typing import Any

from backends.tflite import io
from planner.errors import PlannerError

ALIGNMENT = 16


def check_offline_array(model: Any, data: bytes, peak: int) -> None:
    """PlannerError (one line, naming the tensor) unless the offline array is well formed."""
    raw = io.get_metadata(model, io.OFFLINE_METADATA)
    if raw is None:
        return  # nothing offline: TFLM plans everything itself
    if len(raw) % 4 or len(raw) < 12:
        raise PlannerError(f"OfflineMemoryAllocation holds {len(raw)} bytes, not a "
                           "[version, subgraph, N, offsets...] array of int32")
    values = io.unpack_int32(raw)
    version, subgraph, n, offsets = values[0], values[1], values[2], values[3:]
    if version != 1 or subgraph != 0:
        raise PlannerError(f"OfflineMemoryAllocation version {version}, subgraph {subgraph}: "
                           "expected version 1, subgraph 0")
    expected = io.tensor_count(model)
    if n != len(offsets) or n != expected:
        raise PlannerError(f"OfflineMemoryAllocation says {n} offsets and holds {len(offsets)}; "
                           f"the model has {expected} tensors")
    sizes = _tensor_bytes(data)
    for i, off in enumerate(offsets):
        if off == -1:
            continue
        if off < 0 or off % ALIGNMENT:
            raise PlannerError(f"OfflineMemoryAllocation offset {off} of tensor {i} is neither -1 "
                               f"nor a multiple of {ALIGNMENT} >= 0")
        end = off + sizes.get(i, 0)
        if end > peak:
            raise PlannerError(f"OfflineMemoryAllocation puts tensor {i} at {off:,} B, ending at "
                               f"{end:,} B, beyond the plan's peak of {peak:,} B")


def _tensor_bytes(data: bytes) -> dict[int, int]:
    """Bytes of each subgraph-0 tensor, by index (the frontend's reading of the file)."""
    from frontends.tflite_frontend import parse_tflite

    graph = parse_tflite(data, where="planned model")
    return {t.source_index: t.nbytes for t in graph.tensors if t.source_index is not None}
