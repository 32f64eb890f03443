"""Byte sizes as users write them, and the device profiles built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.device import PROFILE_DIR, bundled_profiles, load_profile
from planner.errors import PlannerError
from planner.units import parse_size


@pytest.mark.parametrize("text,expected", [
    ("256KB", 256_000), ("256KiB", 262_144), ("256kb", 256_000), ("256kib", 262_144),
    ("256 KiB", 262_144), ("256KIB", 262_144), ("1MB", 10**6), ("1MiB", 1 << 20),
    ("1mib", 1 << 20), ("2GB", 2 * 10**9), ("1GiB", 1 << 30), ("12", 12), ("12B", 12),
    ("12b", 12), (" 7 ", 7), ("1.5KB", 1500), ("1.5KiB", 1536), ("0.5MiB", 1 << 19),
    ("1.0", 1), ("0", 0), (4096, 4096),
])
def test_parse_size(text, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12XB", "-5", "abc", "", "KB", "1e3", "1,000", "5 K B",
                                  "0x10", "1.2KiB", "0.5", "1..5KB", "2 3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(PlannerError) as info:
        parse_size(text)
    assert "\n" not in str(info.value)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text,expected", [("4.1MB", 4_100_000), ("8.2MB", 8_200_000),
                                           ("8.3GB", 8_300_000_000)])
def test_parse_size_exact_decimals(text: str, expected: int) -> None:
    # Once computed in float: 4.1 * 10**6 != 4100000, refused as 'not a whole number'.
    assert parse_size(text, maximum=None) == expected


def test_bundled_profiles_are_the_documented_ones() -> None:
    assert set(bundled_profiles()) >= {"none", "fused", "internal-flash", "qspi-flash",
                                       "uart-host", "sd-card", "mixed"}


@pytest.mark.parametrize("name", bundled_profiles())
def test_every_bundled_profile_loads(name: str) -> None:
    p = load_profile(name)
    assert p.name == name
    assert p.sram_bytes > 0
    names = [s.name for s in p.storages]
    assert len(names) == len(set(names))
    for s in p.storages:
        assert s.capacity > 0 and s.read_bytes_per_s > 0 and s.write_bytes_per_s > 0
        assert s.latency_s >= 0 and s.erase_block >= 1 and s.write_granularity >= 1
        assert p.storage(s.name) is s
        assert p.capacities[s.name] == s.capacity
        # Times grow with bytes and include the per-transfer latency.
        assert s.read_seconds(0) == pytest.approx(s.latency_s)
        assert s.write_seconds(2048) > s.write_seconds(1024)
    assert load_profile(str(PROFILE_DIR / f"{name}.toml")) == p
    with pytest.raises(PlannerError, match="has no storage"):
        p.storage("no-such-storage")


def test_profile_values() -> None:
    none = load_profile("none")
    assert none.storages == () and none.sram_bytes == 256 * 1024
    assert not none.fusion and not none.can_stream  # stock TFLM
    fused = load_profile("fused")
    assert fused.storages == () and fused.fusion and not fused.can_stream
    assert load_profile("qspi-flash").can_stream
    uart = load_profile("uart-host")
    (remote,) = uart.storages
    assert remote.capacity == 1 << 20
    assert remote.read_bytes_per_s == 11520  # 115200 baud, 8N1
    assert remote.latency_s == pytest.approx(0.002)
    assert remote.compression
    qspi = load_profile("qspi-flash").storage("qspi")
    assert (qspi.capacity, qspi.erase_block, qspi.write_granularity) == (8 << 20, 4096, 256)
    assert set(load_profile("mixed").capacities) == {"flash", "remote"}


def test_unknown_profile() -> None:
    with pytest.raises(PlannerError, match="unknown profile 'nope'") as info:
        load_profile("nope")
    assert "qspi-flash" in str(info.value)


GOOD = """
name = "x"
sram = "128KiB"
[[storage]]
name = "flash"
capacity = "64KiB"
read_bandwidth = "1MB"
write_bandwidth = "100KB"
"""

BROKEN = {
    "syntax": "name = \"x\"\nsram = ",
    "no_sram": "name = 'x'\n",
    "bad_sram": "sram = '12XB'\n",
    "storage_without_capacity": "sram = '1KiB'\n[[storage]]\nname = 'f'\n"
                                "read_bandwidth = '1MB'\nwrite_bandwidth = '1MB'\n",
    "storage_bad_bandwidth": GOOD.replace('"1MB"', '"fast"'),
    "storage_not_a_list": "sram = '1KiB'\n[storage]\nname = 'f'\n",
    "latency_not_a_number": GOOD + "latency_us = 'slow'\n",
    "fractional_capacity": GOOD.replace('"64KiB"', '"0.5"'),
    "binary": "\x00\x01\x02",
}


def test_custom_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD + "latency_us = 7\nerase_block = '4KiB'\ncompression = true\n")
    p = load_profile(str(path))
    (s,) = p.storages
    assert (p.name, p.sram_bytes, s.capacity, s.erase_block) == ("x", 131072, 65536, 4096)
    assert s.latency_s == pytest.approx(7e-6) and s.compression


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_profile_gives_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.toml"
    path.write_text(BROKEN[case])
    with pytest.raises(PlannerError) as info:
        load_profile(str(path))
    assert "\n" not in str(info.value).strip()
    assert str(path) in str(info.value) or case in ("bad_sram", "storage_bad_bandwidth",
                                                     "fractional_capacity")


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(PlannerError, match="cannot read profile"):
        load_profile(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize("field,value", [("capacity", "-100"), ("read_bandwidth", '"0"'),
                                         ("write_bandwidth", "0"), ("sram", "0")])
def test_profile_rejects_non_positive_values(tmp_path: Path, field: str, value: str) -> None:
    # Integers once bypassed parse_size's checks: a zero bandwidth crashed solve with
    # ZeroDivisionError, a negative capacity with a TypeError in the ilp planner.
    lines = [f"{field} = {value}" if line.startswith(f"{field} =") else line
             for line in GOOD.splitlines()]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PlannerError):
        load_profile(str(path))


UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 10**6, "gb": 10**9, "kib": 1024, "mib": 1 << 20,
         "gib": 1 << 30}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.sampled_from(sorted(UNITS)), st.booleans(), st.booleans())
def test_parse_size_any_whole_size(n: int, unit: str, upper: bool, space: bool) -> None:
    text = f"{n}{' ' if space else ''}{unit.upper() if upper else unit}"
    assert parse_size(text, maximum=None) == n * UNITS[unit]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 999), st.sampled_from(["kb", "mb", "gb"]))
def test_parse_size_decimals_are_exact(whole: int, frac: int, unit: str) -> None:
    digits = f"{frac:03d}"
    exact = (whole * 1000 + frac) * UNITS[unit] // 1000
    assert parse_size(f"{whole}.{digits}{unit}", maximum=None) == exact
