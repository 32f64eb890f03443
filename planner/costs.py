"""Transfer-time model: bytes over bandwidth plus a latency per transfer, from the profile."""

from __future__ import annotations

from .analysis import stream_rows
from .device import DeviceProfile, Storage
from .ir import Graph
from .plan import Plan, Transfer


def footprint(storage: Storage, nbytes: int) -> int:
    """Storage bytes a spill occupies: whole erase blocks and write units."""
    unit = max(storage.erase_block, storage.write_granularity, 1)
    return -(-nbytes // unit) * unit


def erase_seconds(storage: Storage, nbytes: int) -> float:
    """Time erasing the blocks a write of `nbytes` covers (0 where erase is not modelled)."""
    if storage.erase_s <= 0 or storage.erase_block <= 1:
        return 0.0
    return -(-nbytes // storage.erase_block) * storage.erase_s


def transfer_seconds(storage: Storage, kind: str, nbytes: int, rows: int = 1) -> float:
    if kind == "spill":
        return storage.write_seconds(footprint(storage, nbytes)) + erase_seconds(storage, nbytes)
    if kind == "fetch":
        return storage.read_seconds(nbytes)
    return storage.read_seconds(nbytes, transfers=rows)  # a stream reads row by row


def plan_transfer_seconds(graph: Graph, plan: Plan, profile: DeviceProfile) -> float:
    return sum(_one(graph, t, profile) for t in plan.transfers)


def seconds_by_storage(graph: Graph, plan: Plan, profile: DeviceProfile) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in plan.transfers:
        out[t.storage] = out.get(t.storage, 0.0) + _one(graph, t, profile)
    return out


def transfer_time(graph: Graph, t: Transfer, profile: DeviceProfile) -> float:
    """Seconds one transfer keeps its storage channel busy (erase included)."""
    return _one(graph, t, profile)


def _one(graph: Graph, t: Transfer, profile: DeviceProfile) -> float:
    rows = stream_rows(graph.tensors[t.tensor], graph.layout)
    return transfer_seconds(profile.storage(t.storage), t.kind, t.nbytes, rows)
