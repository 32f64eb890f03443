"""Fuzzing the text boundaries: sizes, profiles (TOML), MiniMalloc CSVs.

Each either yields a value that keeps the format's invariants or raises one
PlannerError line; anything else (another exception, a multi-line message, a value
outside the bounds) is a failure.
"""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from planner.device import PROFILE_DIR, STORAGE_FIELDS, load_profile
from planner.errors import PlannerError
from planner.units import INT32_MAX, UINT32_MAX, parse_size
from tests.fuzz.harness import fuzz_settings

UNITS = ["", "b", "B", "k", "K", "kb", "kB", "KB", "kib", "KiB", "M", "MB", "MiB", "G", "GB",
         "GiB", "T", "xb", "e3", "%"]
numbers = st.one_of(
    st.integers(-10, 10**12), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)
size_text = st.one_of(
    st.builds(lambda n, sp, u: f"{n}{sp}{u}", numbers, st.sampled_from(["", " ", "  "]),
              st.sampled_from(UNITS)),
    st.text(max_size=30), st.booleans(), st.none(), st.integers(), st.floats(),
)


@fuzz_settings(400)
@given(size_text)
def test_fuzz_parse_size(value) -> None:
    try:
        got = parse_size(value, "size")
    except PlannerError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(got, int) and not isinstance(value, bool)
    assert 0 <= got <= INT32_MAX


# -- profiles: TOML built from wild values per key, and raw bytes ---------------------

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else
                                                "-inf" if value == -math.inf else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


wild = st.one_of(
    st.booleans(), st.integers(-2**70, 2**70), st.floats(),
    st.sampled_from(["256KiB", "1MB", "0", "-5", "true", "false", "1e29", "nan", "8MiB",
                     "99999999999999999999999999999", "4KiB", "12"]),
    st.text(max_size=12), st.lists(st.integers(0, 9), max_size=3),
)
GOOD_STORAGE = {"name": "flash", "capacity": "64KiB", "read_bandwidth": "1MB",
                "write_bandwidth": "100KB"}


@st.composite
def profile_text(draw) -> str:
    top = {"sram": "128KiB", "fusion": True}
    for key in draw(st.lists(st.sampled_from(["name", "sram", "fusion", "description",
                                              "srma", "storage", "clock_mhz", "compute"]),
                             max_size=3)):
        top[key] = draw(wild)
    lines = [f"{k} = {_toml(v)}" for k, v in top.items() if k != "storage"]
    for _ in range(draw(st.integers(0, 3))):
        storage = dict(GOOD_STORAGE)
        if draw(st.booleans()):
            storage["name"] = draw(st.sampled_from(["flash", "remote", ""]))
        for key in draw(st.lists(st.sampled_from([*STORAGE_FIELDS, "unknown"]), max_size=3)):
            storage[key] = draw(wild)
        lines.append("[[storage]]")
        lines += [f"{k} = {_toml(v)}" for k, v in storage.items()]
    return "\n".join(lines) + "\n"


def _check_profile(path: Path) -> None:
    try:
        p = load_profile(str(path))
    except PlannerError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(p.fusion, bool) and 0 < p.sram_bytes <= INT32_MAX
    assert math.isfinite(p.compute.clock_hz) and p.compute.clock_hz > 0
    assert len({s.name for s in p.storages}) == len(p.storages)
    for s in p.storages:
        assert isinstance(s.compression, bool) and isinstance(s.capacity, int)
        assert 0 < s.capacity <= UINT32_MAX
        assert math.isfinite(s.latency_s) and s.latency_s >= 0
        assert s.read_bytes_per_s > 0 and s.write_bytes_per_s > 0
        assert s.erase_block >= 1 and s.write_granularity >= 1
        assert isinstance(s.async_channel, bool) and isinstance(s.erase_blocks_bus, bool)
        assert math.isfinite(s.erase_s) and s.erase_s >= 0


@fuzz_settings(300)
@given(profile_text())
def test_fuzz_profile_values(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("prof") / "p.toml"
    path.write_text(text)
    _check_profile(path)


@fuzz_settings(200)
@given(st.sampled_from(sorted(PROFILE_DIR.glob("*.toml"))), st.data())
def test_fuzz_profile_bytes(tmp_path_factory, bundled: Path, data) -> None:
    raw = bytearray(bundled.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path_factory.mktemp("prof") / "p.toml"
    path.write_bytes(bytes(raw))
    _check_profile(path)


# -- MiniMalloc CSVs ------------------------------------------------------------------

cell = st.one_of(st.integers(-5, 2**40).map(str), st.sampled_from(["", "x", "1e3", "3.5",
                                                                    " 7", "\u0663"]),
                 st.text(max_size=5))


@fuzz_settings(300)
@given(st.lists(st.tuples(cell, cell, cell, cell), max_size=6), st.binary(max_size=20),
       st.sampled_from(["p.1048576.csv", "p.csv", f"p.{10**20}.csv", "p.0.csv"]))
def test_fuzz_minimalloc_csv(tmp_path_factory, rows, junk: bytes, name: str) -> None:
    from benchmarks.minimalloc import read_problem

    body = "id,lower,upper,size\n" + "".join(",".join(r) + "\n" for r in rows)
    path = tmp_path_factory.mktemp("csv") / name
    path.write_bytes(body.encode("utf-8", "surrogatepass") + junk)
    try:
        problem = read_problem(path)
    except PlannerError as exc:
        assert "\n" not in str(exc)
        return
    for b in problem.blocks:
        assert 0 <= b.first <= b.last < INT32_MAX and 0 < b.size <= INT32_MAX
    assert problem.capacity is None or 0 < problem.capacity <= INT32_MAX
