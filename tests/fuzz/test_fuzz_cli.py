"""Fuzzing the command line: hostile arguments to every command that terminates.

Arguments come from a grammar of each command's options with wild values (sizes
beyond int64, nan, negative seeds, paths naming the input model, damaged files).
The contract holds for each call, and no call changes the input model.
(`storage-host` serves until killed; its boundary is fuzzed in test_fuzz_protocol.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.cli import main
from tests.fuzz.harness import assert_contract, call_cli, fuzz_settings

ROOT = Path(__file__).resolve().parents[2]
UNET8 = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    model = d / "model.tflite"
    shutil.copy(UNET8, model)
    planned_dir = d / "planned"
    code, _, err = call_cli(main, ["solve", str(model), "--planner", "tflm-greedy", "--profile",
                                   "none", "-o", str(planned_dir), "--emit", "tflite"])
    assert code == 0, err
    (d / "junk.bin").write_bytes(b"\xff\xfe garbage \x00" * 10)
    (d / "bad.toml").write_text('sram = "1KiB"\nfusion = "false"\n')
    (d / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return {"model": model, "plan": planned_dir / "plan.json",
            "planned": planned_dir / "model.planned.tflite", "junk": d / "junk.bin",
            "bad_toml": d / "bad.toml", "bad_npz": d / "bad.npz", "dir": d,
            "missing": d / "missing.tflite", "out": d / "out"}


sizes = st.sampled_from(["256KB", "0", "-1", "1e3", "99999999999999999999999999999", "nan",
                         "256K", "0.25MiB", "2GiB", "abc", "", "300000"])
numbers = st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e309", "0.5", "abc", "",
                           "99999999999999999999"])
seeds = st.sampled_from(["0", "1", "-1", "-99999999999999999999", "2", "99999999999999999999",
                         "x"])


def paths(files: dict[str, Path], *keys: str):
    return st.sampled_from([str(files[k]) for k in keys])


@st.composite
def argv(draw, files: dict[str, Path]) -> list[str]:
    command = draw(st.sampled_from(["analyze", "solve", "solve", "run", "verify-tflm"]))
    args = [command]
    if command == "analyze":
        args.append(draw(paths(files, "model", "junk", "dir", "missing", "bad_toml")))
        args += draw(st.sampled_from([[], ["--json"], ["--scratch", "int16"], ["--bogus"]]))
    elif command == "solve":
        args.append(draw(paths(files, "model", "model", "junk", "missing")))
        args += ["--time-limit", draw(st.sampled_from(["1", "0.5", "0", "nan", "-3", "inf"]))]
        options = {
            "--budget": sizes,
            "--planner": st.sampled_from(["tflm-greedy", "linear", "tinyseg", "ilp",
                                          "greedy-by-size", "nope"]),
            "--profile": st.sampled_from(["none", "qspi-flash", "mixed", "nope",
                                          str(files["bad_toml"]), str(files["junk"])]),
            "--objective": st.sampled_from(["peak", "transfers", "latency", "speed"]),
            "--solver": st.sampled_from(["cpsat", "nope"]),
            "--scratch": st.sampled_from(["int32", "int16", "int8"]),
            "-o": paths(files, "out", "junk", "model"),
            "--emit": st.sampled_from(["tflite", "shim", "c", "svg", "pdf"]),
            "--svg": paths(files, "model", "out", "junk") .map(lambda p: p + ".svg")
            | paths(files, "model"),
            "--input-shape": st.sampled_from(["x=1x2", "=", "a=0x1"]),
        }
        for key in draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True)):
            args += [key, draw(options[key])]
        args += draw(st.sampled_from([[], ["--json"], ["--deterministic"]]))
    elif command == "run":
        args.append(draw(paths(files, "model", "model", "junk", "missing")))
        args.append(draw(paths(files, "plan", "plan", "junk", "model", "missing", "bad_toml")))
        options = {"--seed": seeds, "--storage": st.sampled_from(["local", "remote", "cloud"]),
                   "--inputs": paths(files, "bad_npz", "junk", "missing"),
                   "--profile": st.sampled_from(["none", "qspi-flash", "nope"]),
                   "--runtime": st.sampled_from(["auto", "litert", "gpu"])}
        for key in draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True)):
            args += [key, draw(options[key])]
        args += draw(st.sampled_from([[], ["--json"], ["--unchecked"]]))
    else:
        args.append(draw(paths(files, "model", "junk", "missing")))
        args.append(draw(paths(files, "planned", "planned", "model", "junk", "missing")))
        args += ["--runs", draw(st.sampled_from(["1", "0", "-1", "999999999999", "x"]))]
        if draw(st.booleans()):
            args += ["--seed", draw(seeds)]
    return args


@fuzz_settings(100)
@given(st.data())
def test_fuzz_cli_arguments(files, data) -> None:
    before = files["model"].read_bytes()
    args = data.draw(argv(files))
    code, _, err = call_cli(main, args)
    assert_contract(code, err, args)
    assert files["model"].read_bytes() == before, f"{args} changed the input model"
