"""Issue 14: every defect of the fault-injection pass, as a regular test.

Each test names the defect it pins; the comment says what used to happen.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.device import load_profile
from planner.errors import PlannerError
from planner.units import parse_size

GOOD = """
name = "x"
sram = "128KiB"
[[storage]]
name = "flash"
capacity = "64KiB"
read_bandwidth = "1MB"
write_bandwidth = "100KB"
"""


def _profile(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "p.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _refused(path: Path, match: str) -> str:
    with pytest.raises(PlannerError, match=match) as info:
        load_profile(str(path))
    assert "\n" not in str(info.value)
    return str(info.value)


# -- profiles -------------------------------------------------------------------------

def test_d01_fusion_string_false_is_refused_not_true(tmp_path: Path) -> None:
    # bool("false") is True: the written .tflite once had FusedConcatConv2D.
    _refused(_profile(tmp_path, 'fusion = "false"\n' + GOOD), "'fusion' must be true or false")


def test_d02_compression_string_false_is_refused(tmp_path: Path) -> None:
    _refused(_profile(tmp_path, GOOD + 'compression = "false"\n'),
             "'compression' must be true or false")
    assert not load_profile(str(_profile(tmp_path, GOOD + "compression = false\n"))
                            ).storages[0].compression


@pytest.mark.parametrize("key", ["capacity", "sram", "latency_us"])
def test_d03_boolean_is_not_a_number(tmp_path: Path, key: str) -> None:
    text = GOOD + f"{key} = true\n" if key == "latency_us" else \
        "\n".join(f"{key} = true" if ln.startswith(f"{key} =") else ln
                  for ln in GOOD.splitlines())
    _refused(_profile(tmp_path, text), "boolean")


def test_d04_duplicate_storage_names_are_refused(tmp_path: Path) -> None:
    # Two storages named alike once let the ILP "prove" a fitting budget infeasible.
    second = GOOD[GOOD.index("[[storage]]"):]
    _refused(_profile(tmp_path, GOOD + second), "storage 'flash' appears twice")


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-1"])
def test_d10_latency_must_be_finite_and_bounded(tmp_path: Path, value: str) -> None:
    # nan/inf/1e300 once passed: ILP traceback, tinyseg printed "est. transfer nan s".
    _refused(_profile(tmp_path, GOOD + f"latency_us = {value}\n"), "latency_us")


def test_d08_capacity_beyond_what_the_target_addresses(tmp_path: Path) -> None:
    text = GOOD.replace('capacity = "64KiB"', "capacity = 1e29")
    _refused(_profile(tmp_path, text), "out of range")
    text = GOOD.replace('capacity = "64KiB"', 'capacity = "99999999999999999999999999999"')
    _refused(_profile(tmp_path, text), "out of range")


def test_d08_budget_beyond_int32_is_one_line(capsys) -> None:
    from planner.cli import main

    assert main(["solve", "benchmarks/models/tiny_unet.onnx",
                 "--budget", "99999999999999999999999999999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of range" in err


def test_d11_non_utf8_profile_is_one_line(tmp_path: Path) -> None:
    _refused(_profile(tmp_path, GOOD.encode() + b"# \xff\xfe\n"), "not UTF-8")


def test_unknown_profile_key_is_reported(tmp_path: Path) -> None:
    _refused(_profile(tmp_path, GOOD + "latncy_us = 5\n"), "unknown key 'latncy_us'")


@pytest.mark.parametrize("text,expected", [
    ("256K", 262_144), ("256k", 262_144), ("256 KiB", 262_144), ("0.25MiB", 262_144),
    ("256kB", 256_000), ("1M", 1 << 20), ("1G", 1 << 30)])
def test_parse_size_forms_people_write(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), 2**31, "3GB", -1, "1e3"])
def test_parse_size_refuses_non_sizes_and_out_of_range(value) -> None:
    with pytest.raises(PlannerError) as info:
        parse_size(value, "budget")
    assert "\n" not in str(info.value) and "budget" in str(info.value)
