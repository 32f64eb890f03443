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
    # A DMA channel / transfer engine that moves data beside the CPU: transfers with a
    # window overlap compute (planner/latency.py). False: the CPU moves every byte.
    async_channel: bool = False
    # An erase stalls the storage's bus: reads wait behind it (NOR flash, single-bank
    # internal flash). False: the chip erases in the background while the bus is free.
    erase_blocks_bus: bool = True
    erase_s: float = 0.0  # per erase block; 0 where erase is folded into write_bandwidth

    def write_seconds(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.write_bytes_per_s

    def read_seconds(self, nbytes: int, transfers: int = 1) -> float:
        return transfers * self.latency_s + nbytes / self.read_bytes_per_s


# Op kinds the compute model prices per MAC, and per byte read + written (planner/compute.py).
MAC_KINDS = ("conv", "depthwise_conv", "transpose_conv", "fully_connected")
BYTE_KINDS = ("concat", "reshape", "pool", "elementwise", "other")
COMPUTE_DTYPES = ("int8", "int16", "float32")


@dataclass(frozen=True)
class ComputeModel:
    """Cycles per MAC (MAC kinds) or per byte moved (byte kinds), per kind and dtype.

    The defaults are estimates for a Cortex-M4F-class core running CMSIS-NN-style
    kernels (SIMD int8 MACs, FPU float32), not measurements.
    """

    clock_hz: float = 168e6
    # ((kind, ((dtype, cycles), ...)), ...): frozen, so profiles stay hashable.
    cycles: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def cycles_per_unit(self, kind: str, dtype: str) -> float:
        for k, row in self.cycles:
            if k == kind:
                for d, c in row:
                    if d == dtype:
                        return c
        return DEFAULT_CYCLES[kind][dtype]


# Cortex-M4F-class estimates (CMSIS-NN int8 convolutions reach about 1 cycle per MAC with
# SMLAD; depthwise and the reference transpose conv are slower per MAC; int16 (16x8)
# kernels about 1.5-2x int8; float32 uses the FPU's 1-cycle MAC plus loads; copies run
# near one word per few cycles). Estimates, not measurements.
DEFAULT_CYCLES: dict[str, dict[str, float]] = {
    "conv": {"int8": 1.2, "int16": 2.0, "float32": 4.0},
    "depthwise_conv": {"int8": 2.5, "int16": 4.0, "float32": 5.0},
    "transpose_conv": {"int8": 6.0, "int16": 8.0, "float32": 6.0},
    "fully_connected": {"int8": 1.0, "int16": 1.8, "float32": 3.5},
    "concat": {"int8": 0.5, "int16": 0.5, "float32": 0.5},
    "reshape": {"int8": 0.5, "int16": 0.5, "float32": 0.5},
    "pool": {"int8": 2.0, "int16": 2.0, "float32": 2.5},
    "elementwise": {"int8": 3.0, "int16": 2.5, "float32": 2.0},
    "other": {"int8": 4.0, "int16": 4.0, "float32": 4.0},
}


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    sram_bytes: int
    storages: tuple[Storage, ...]
    description: str = ""
    # Fused concat / concat+conv kernels available (the generated C glue); stock TFLM: no.
    fusion: bool = True
    # The project's other custom kernels (planner/kernels.py), e.g. the scratch-free
    # TRANSPOSE_CONV; False keeps every op on stock TFLM's kernel.
    custom_kernels: bool = True
    compute: ComputeModel = ComputeModel()  # op timing (planner/compute.py)

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
    # The project's custom kernels (planner/kernels.py); stock TFLM ('none') has none.
    "custom_kernels": Field("bool", default=True),
    "storage": Field("tables", default=[], max_items=64),
    # Op timing (planner/compute.py): the core clock and a [compute] table of cycles.
    "clock_mhz": Field("number", default=168, minimum=0.001, maximum=100_000),
    "compute": Field("custom", default=None, check=lambda v, w: _check_compute(v, w)),
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
    # A DMA channel beside the CPU (async transfers overlap compute); blocking if not said.
    "async": Field("bool", default=False),
    "erase_blocks_bus": Field("bool", default=True),
    "erase_us": Field("number", default=0, maximum=60e6),  # per erase block
}
# [compute] table: kind = { int8 = cycles, int16 = cycles, float32 = cycles }, each optional.
CYCLE_FIELDS: dict[str, Field] = {d: Field("number", minimum=0, maximum=1e6)
                                  for d in COMPUTE_DTYPES}
COMPUTE_FIELDS: dict[str, Field] = {k: Field("custom", check=lambda v, w: v)
                                    for k in MAC_KINDS + BYTE_KINDS}


def _check_compute(value: object, where: str) -> tuple:
    kinds = check_table(value, COMPUTE_FIELDS, where)
    out = []
    for kind, row in kinds.items():
        if row is None:
            continue
        cycles = check_table(row, CYCLE_FIELDS, f"{where}: '{kind}'")
        out.append((kind, tuple((d, float(c)) for d, c in cycles.items() if c is not None)))
    return tuple(out)
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
            async_channel=s["async"],
            erase_blocks_bus=s["erase_blocks_bus"],
            erase_s=float(s["erase_us"]) * 1e-6,
        ))
    check_unique([s.name for s in storages], f"profile {where}: storage")
    return DeviceProfile(
        name=top["name"] if top["name"] is not None else default_name,
        sram_bytes=top["sram"],
        storages=tuple(storages),
        description=top["description"],
        fusion=top["fusion"],
        custom_kernels=top["custom_kernels"],
        compute=ComputeModel(clock_hz=float(top["clock_mhz"]) * 1e6,
                             cycles=top["compute"] or ()),
    )
