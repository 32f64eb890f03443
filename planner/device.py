"""Device profiles: SRAM size and the storages a tensor can be spilled to (TOML)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PlannerError
from .units import parse_size

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
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PlannerError(f"cannot read profile {path}: {exc}") from None
    try:
        storages = tuple(
            Storage(
                name=s["name"],
                capacity=parse_size(s["capacity"]),
                read_bytes_per_s=float(parse_size(s["read_bandwidth"])),
                write_bytes_per_s=float(parse_size(s["write_bandwidth"])),
                latency_s=float(s.get("latency_us", 0)) * 1e-6,
                erase_block=int(parse_size(s.get("erase_block", 1))),
                write_granularity=int(parse_size(s.get("write_granularity", 1))),
                compression=bool(s.get("compression", False)),
            )
            for s in data.get("storage", [])
        )
        for st in storages:
            numbers = (st.capacity, st.read_bytes_per_s, st.write_bytes_per_s, st.erase_block,
                       st.write_granularity)
            if min(numbers) <= 0 or st.latency_s < 0:
                raise PlannerError(f"profile {path}: storage '{st.name}' needs positive sizes "
                                   "and bandwidths and a non-negative latency")
        return DeviceProfile(
            name=data.get("name", path.stem),
            sram_bytes=_positive(parse_size(data["sram"]), "sram", path),
            storages=storages,
            description=data.get("description", ""),
            fusion=bool(data.get("fusion", True)),
            custom_kernels=bool(data.get("custom_kernels", True)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PlannerError(f"profile {path} is missing or mangles field {exc}") from None


def _positive(value: int, what: str, path: Path) -> int:
    if value <= 0:
        raise PlannerError(f"profile {path}: {what} must be positive")
    return value
