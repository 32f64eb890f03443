"""Plan JSON in and out of the project: strict loading, and what a plan was made for.

`plan_from_json` accepts only what `Plan.to_json` writes: exact types (a float is
not an integer, null only where the field is optional), finite numbers, offsets and
sizes inside int32 (what TFLite's offline array stores), storage addresses inside
uint32 (the C runtime and the remote protocol), bounded list lengths. Whether the
values make a valid plan for a model (steps, overlaps, sizes) is the checker's job. `load_plan`
adds a file-size cap, rejects NaN/Infinity literals and turns deep nesting into one
line. `stamp_plan` records the model (path and SHA-256) and the profile (name,
storages, capacities); `check_plan_for` refuses a plan made for anything else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import PlannerError
from .plan import Fusion, Part, Plan, ProfileRef, Segment, StorageRef, StreamGroup, Transfer
from .units import INT32_MAX, UINT32_MAX
from .validate import Field, check_table, check_unique

MAX_PLAN_BYTES = 256 << 20
MAX_ITEMS = 1_000_000
_INT = Field("int", required=True)
_OPT_PART = Field("int", nullable=True, maximum=1)


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or \
            any(c not in "0123456789abcdef" for c in value):
        raise PlannerError(f"{where} must be 64 lowercase hex digits")
    return value


SEGMENT = {
    "tensor": _INT, "first": _INT, "last": _INT, "offset": _INT,
    "size": _INT,
    "part": _OPT_PART,
    "role": Field("str", default="tensor", choices=("tensor", "line_buffer")),
}
PART = {
    "tensor": _INT, "index": Field("int", required=True, maximum=1),
    "channel_start": _INT, "channel_stop": _INT, "nbytes": _INT,
}
TRANSFER = {
    "kind": Field("str", required=True, choices=("spill", "fetch", "stream", "spill_rows")),
    "tensor": _INT, "step": _INT,
    "storage": Field("str", required=True, maximum=200),
    "nbytes": _INT,
    "address": Field("int", default=0, maximum=UINT32_MAX),
    "part": _OPT_PART,
    "issue": Field("int", nullable=True),
    "complete": Field("int", nullable=True),
}
FUSION = {"concat": _INT, "conv": Field("int", nullable=True)}
STREAM_GROUP = {"ops": Field("custom", required=True, check=lambda v, w: v),
                "rings": Field("custom", default=(), check=lambda v, w: v),
                "schedule": Field("custom", default=(), check=lambda v, w: v)}
STORAGE_REF = {"name": Field("str", required=True, maximum=200),
               "capacity": Field("int", required=True, minimum=1, maximum=UINT32_MAX)}
PROFILE_REF = {"name": Field("str", required=True, maximum=200),
               "storages": Field("tables", default=[], max_items=64)}
_SECONDS = Field("number", default=0.0, maximum=1e9)
PLAN = {
    "model": Field("str", required=True, maximum=10_000),
    "planner": Field("str", required=True, maximum=200),
    "num_steps": _INT,
    "peak_bytes": _INT,
    "segments": Field("tables", required=True, max_items=MAX_ITEMS),
    "parts": Field("tables", default=[], max_items=MAX_ITEMS),
    "transfers": Field("tables", default=[], max_items=MAX_ITEMS),
    "fusions": Field("tables", default=[], max_items=MAX_ITEMS),
    "status": Field("str", default="heuristic",
                    choices=("optimal", "feasible", "heuristic", "infeasible")),
    "bound_bytes": Field("int", nullable=True),
    "objective": Field("str", default="peak", choices=("peak", "latency", "transfers")),
    "est_transfer_seconds": _SECONDS,
    "bound_transfer_seconds": Field("number", nullable=True, maximum=1e9),
    "solve_seconds": _SECONDS,
    "op_kernels": Field("custom", default=(), check=lambda v, w: _op_kernels(v, w)),
    "stream_groups": Field("custom", default=(), check=lambda v, w: _stream_groups(v, w)),
    "notes": Field("list", default=[], max_items=1000),
    "stopped": Field("str", nullable=True, choices=("time-limit", "work-limit", "interrupted")),
    "model_sha256": Field("custom", nullable=True, check=_sha),
    "model_path": Field("str", nullable=True, maximum=10_000),
    "profile": Field("custom", nullable=True,
                     check=lambda v, w: _profile_ref(v, w)),
}
# Written beside the plan, not read back: spilled/fetched bytes (to_json, recomputed) and
# the tensors' names and shapes (plan.json's writer, for people and other tools).
DERIVED = frozenset({"spilled_bytes", "fetched_bytes", "tensors"})


def _op_kernels(data: Any, where: str) -> tuple[tuple[int, str], ...]:
    # Lists from JSON, tuples from Plan.to_json() read back in memory.
    if not isinstance(data, (list, tuple)) or len(data) > MAX_ITEMS:
        raise PlannerError(f"{where} must be a list of [op index, kernel] pairs")
    pairs = []
    for i, item in enumerate(data):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and type(item[0]) is int
                and 0 <= item[0] <= INT32_MAX and isinstance(item[1], str)
                and len(item[1]) <= 200):
            raise PlannerError(f"{where} {i} must be [op index, kernel name]")
        pairs.append((item[0], item[1]))
    return tuple(pairs)


def _int_tuple(data: Any, where: str, width: int | None = None) -> tuple:
    """A list of ints (width None) or of [int, ...] pairs of `width`, each in 0..int32."""
    if not isinstance(data, (list, tuple)) or len(data) > MAX_ITEMS:
        raise PlannerError(f"{where} must be a list")
    out = []
    for i, item in enumerate(data):
        values = [item] if width is None else item
        if width is not None and not (isinstance(item, (list, tuple)) and len(item) == width):
            raise PlannerError(f"{where} {i} must be a list of {width} integers")
        if not all(type(v) is int and 0 <= v <= INT32_MAX for v in values):
            raise PlannerError(f"{where} {i} must hold integers in 0..{INT32_MAX}")
        out.append(item if width is None else tuple(item))
    return tuple(out)


def _stream_groups(data: Any, where: str) -> tuple[StreamGroup, ...]:
    if not isinstance(data, (list, tuple)) or len(data) > MAX_ITEMS:
        raise PlannerError(f"{where} must be a list of streamed groups")
    groups = []
    for i, item in enumerate(data):
        if isinstance(item, StreamGroup):  # Plan.to_json() read back in memory
            item = {"ops": item.ops, "rings": item.rings, "schedule": item.schedule}
        top = check_table(item, STREAM_GROUP, f"{where} {i}")
        groups.append(StreamGroup(
            ops=_int_tuple(top["ops"], f"{where} {i} ops"),
            rings=_int_tuple(top["rings"], f"{where} {i} rings", 2),
            schedule=_int_tuple(top["schedule"], f"{where} {i} schedule", 2)))
    return tuple(groups)


def _profile_ref(data: Any, where: str) -> ProfileRef:
    top = check_table(data, PROFILE_REF, where)
    storages = tuple(StorageRef(**check_table(s, STORAGE_REF, f"{where} storage {i}"))
                     for i, s in enumerate(top["storages"]))
    check_unique([s.name for s in storages], f"{where} storage")
    return ProfileRef(top["name"], storages)


def _rows(items: list, table: dict[str, Field], cls: type, where: str) -> tuple:
    return tuple(cls(**check_table(item, table, f"{where} {i}")) for i, item in enumerate(items))


def plan_from_json(data: Any) -> Plan:
    top = check_table(data, PLAN, "plan", ignored=DERIVED)
    for i, note in enumerate(top["notes"]):
        if not isinstance(note, str):
            raise PlannerError(f"plan: note {i} must be a string")
    segments = _rows(top["segments"], SEGMENT, Segment, "plan: segment")
    for i, s in enumerate(segments):
        if s.offset + s.size > INT32_MAX:
            raise PlannerError(f"plan: segment {i} ends at {s.offset + s.size:,} B, beyond int32")
    transfers = _rows(top["transfers"], TRANSFER, Transfer, "plan: transfer")
    for i, t in enumerate(transfers):
        if t.address + t.nbytes > UINT32_MAX:
            raise PlannerError(f"plan: transfer {i} ends beyond a 32-bit storage address")
    # Scalars pass through as checked: a new Plan field needs one line in PLAN above.
    return Plan(**{
        **top,
        "segments": segments,
        "parts": _rows(top["parts"], PART, Part, "plan: part"),
        "transfers": transfers,
        "fusions": _rows(top["fusions"], FUSION, Fusion, "plan: fusion"),
        "est_transfer_seconds": float(top["est_transfer_seconds"]),
        "solve_seconds": float(top["solve_seconds"]),
        "notes": tuple(top["notes"]),
    })


def _no_constant(name: str) -> None:
    raise PlannerError(f"plan JSON holds {name}: numbers must be finite")


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_PLAN_BYTES:
            raise PlannerError(f"plan {p} is larger than {MAX_PLAN_BYTES:,} B")
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PlannerError(f"cannot read plan {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PlannerError(f"plan {p} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise PlannerError(f"{p} is not JSON: {exc.msg} at line {exc.lineno}") from None
    except (RecursionError, MemoryError):
        raise PlannerError(f"{p} nests too deeply to be a plan JSON") from None
    except PlannerError as exc:
        raise PlannerError(f"{p}: {exc}") from None
    except ValueError as exc:  # an integer literal of thousands of digits
        raise PlannerError(f"{p} is not a plan JSON: {str(exc).splitlines()[0]}") from None
    try:
        return plan_from_json(data)
    except PlannerError as exc:
        raise PlannerError(f"{p} is not a valid plan: {exc}") from None


# -- what a plan was made for --------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise PlannerError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def profile_ref(profile: Any) -> ProfileRef:
    """The reference a plan keeps of a DeviceProfile."""
    return ProfileRef(profile.name,
                      tuple(StorageRef(s.name, s.capacity) for s in profile.storages))


def stamp_plan(plan: Plan, model_path: str | Path, profile: Any) -> Plan:
    from dataclasses import replace

    return replace(plan, model_sha256=file_sha256(model_path), model_path=str(model_path),
                   profile=profile_ref(profile))


def check_plan_for(plan: Plan, model_path: str | Path, profile: Any | None = None) -> ProfileRef:
    """Refuse a plan made for another model or profile; return the profile it is for.

    A plan that names no model hash or no profile is refused too: nothing else could
    tell a reader which capacities its transfers must respect.
    """
    if plan.model_sha256 is None:
        raise PlannerError("the plan names no model (model_sha256): write it with solve -o")
    digest = file_sha256(model_path)
    if digest != plan.model_sha256:
        made_for = plan.model_path or plan.model
        raise PlannerError(f"the plan was made for another model ({made_for}, sha256 "
                           f"{plan.model_sha256[:12]}...), not {model_path} "
                           f"({digest[:12]}...)")
    if plan.profile is None:
        raise PlannerError("the plan names no profile: write it with solve -o")
    if profile is not None and profile_ref(profile) != plan.profile:
        raise PlannerError(f"the plan was made for profile '{plan.profile.name}' "
                           f"({_storages(plan.profile)}), not '{profile.name}' "
                           f"({_storages(profile_ref(profile))})")
    return plan.profile


def _storages(ref: ProfileRef) -> str:
    return ", ".join(f"{s.name} {s.capacity:,} B" for s in ref.storages) or "no storage"
