"""Device profiles: SRAM size and the storages a tensor can be spilled to (TOML)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PlannerError
from .units import UINT32_MAX
from .validate import Field, check_table, check_unique

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class Storage:
    name: str
    capacity: int  # bytes
    read_bytes_per_s: float
    write_bytes_per_s: float
    latency_s: float  # per transfer (request set-up, command, framing)
    erase_block: int = 1  # bytes erased at once (flash); 1 where writes need no erase
    write_granularity: int = 1  # writes are padded to this many bytes
    compression: bool = False  # TinySeg's most-frequent-byte elision on spilled data

    def write_seconds(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.write_bytes_per_s

    def read_seconds(self, nbytes: int, transfers: int = 1) -> float:
        return transfers * self.latency_s + nbytes / self.read_bytes_per_s


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    sram_bytes: int
    storages: tuple[Storage, ...]
    description: str = ""
    # Fused concat / concat+conv kernels available (the generated C glue); stock TFLM: no.
    fusion: bool = True
    # Row streaming's ring bookkeeping (slot indices, band checks) per member-op output row
    # of a streamed group, in seconds: planner/costs.py stream_overhead_seconds.
    row_overhead_s: float = 0.2e-6
    # The project's other custom kernels (planner/kernels.py), e.g. the scratch-free
    # TRANSPOSE_CONV; False keeps every op on stock TFLM's kernel.
    custom_kernels: bool = True

    @property
    def can_stream(self) -> bool:
        return bool(self.storages) and self.fusion

    def storage(self, name: str) -> Storage:
        for s in self.storages:
            if s.name == name:
                return s
        raise PlannerError(f"profile '{self.name}' has no storage '{name}'")

    @property
    def capacities(self) -> dict[str, int]:
        return {s.name: s.capacity for s in self.storages}


def bundled_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


# What a profile may say. Sizes take units (planner/units.py); every bound is what the
# target can address: SRAM and block sizes are int32 (TFLite), storage positions uint32
# (the C runtime and the remote protocol).
PROFILE_FIELDS: dict[str, Field] = {
    "name": Field("str", maximum=200),
    "description": Field("str", default="", maximum=10_000),
    "sram": Field("size", required=True, minimum=1),
    "fusion": Field("bool", default=True),
    # Per member-op output row of a streamed group (ring bookkeeping), in microseconds.
    "row_overhead_us": Field("number", default=0.2, maximum=1e6),
    # The project's custom kernels (planner/kernels.py); stock TFLM ('none') has none.
    "custom_kernels": Field("bool", default=True),
    "storage": Field("tables", default=[], max_items=64),
}
STORAGE_FIELDS: dict[str, Field] = {
    "name": Field("str", required=True, maximum=200),
    "capacity": Field("size", required=True, minimum=1, maximum=UINT32_MAX),
    "read_bandwidth": Field("size", required=True, minimum=1, maximum=2**50),
    "write_bandwidth": Field("size", required=True, minimum=1, maximum=2**50),
    "latency_us": Field("number", default=0, maximum=60e6),  # at most a minute per transfer
    "erase_block": Field("size", default=1, minimum=1),
    "write_granularity": Field("size", default=1, minimum=1),
    "compression": Field("bool", default=False),
}
MAX_PROFILE_BYTES = 1 << 20


def load_profile(name_or_path: str) -> DeviceProfile:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise PlannerError(
                f"unknown profile '{name_or_path}': use one of {', '.join(bundled_profiles())} "
                "or a .toml file"
            )
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise PlannerError(f"profile {path} is larger than {MAX_PROFILE_BYTES:,} B")
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PlannerError(f"profile {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise PlannerError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else "nesting too deep"
        raise PlannerError(f"cannot read profile {path}: {why}") from None
    return profile_from_dict(data, str(path), default_name=path.stem)


def profile_from_dict(data: object, where: str, default_name: str = "profile") -> DeviceProfile:
    """A checked DeviceProfile from parsed TOML; one PlannerError line on anything wrong."""
    top = check_table(data, PROFILE_FIELDS, f"profile {where}")
    storages = []
    for i, table in enumerate(top["storage"]):
        s = check_table(table, STORAGE_FIELDS, f"profile {where}: storage {i + 1}")
        storages.append(Storage(
            name=s["name"],
            capacity=s["capacity"],
            read_bytes_per_s=float(s["read_bandwidth"]),
            write_bytes_per_s=float(s["write_bandwidth"]),
            latency_s=float(s["latency_us"]) * 1e-6,
            erase_block=s["erase_block"],
            write_granularity=s["write_granularity"],
            compression=s["compression"],
        ))
    check_unique([s.name for s in storages], f"profile {where}: storage")
    return DeviceProfile(
        name=top["name"] if top["name"] is not None else default_name,
        sram_bytes=top["sram"],
        storages=tuple(storages),
        description=top["description"],
        fusion=top["fusion"],
        row_overhead_s=float(top["row_overhead_us"]) * 1e-6,
        custom_kernels=top["custom_kernels"],
    )
