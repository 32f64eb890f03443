"""Row-streamed plans on the real TFLM interpreter: TinyPlanStreamedGroup inside TFLM.

Runs only where a TFLM source tree matching the installed tflite-micro wheel is named
(TINYPLAN_TFLM_ROOT; see tests/test_tflm_real.py and docs/tflm_backend.md). The Tiny
U-Net int8 is planned with `solve --row-streaming` by tflm-greedy, tinyseg and the ILP,
and by hand (tests/test_tflite_rewrite_stream.py) with every group output that may be
spilled row by row going to storage and streamed back into the next groups; each plan
runs three inferences in a row on one interpreter, on RAM, file and NOR-flash storage
(and compressed RAM): outputs bit-identical to the unmodified model's, TFLM's head equal
to the plan's peak, TFLM's tail equal to the predicted tail. A ring moved onto another
tensor of its group must change the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tflite_rewrite_stream import (
    PROFILE,
    TINY_UNET,
    row_spilled,
    streamed_graph,
    streamed_plan,
)
from test_tflm_real import _skip_reason, ops  # noqa: F401 (the built glue)

from backends.tflite import io
from backends.tflite.rewrite import STREAMED_GROUP_OP, write_rewritten_tflite
from backends.tflite.tail import predict_tail
from planner.checker import assert_valid
from planner.cli import main

PLANNERS = ["tflm-greedy", "tinyseg", "ilp"]
STORAGES = [("ram",), ("file",), ("flash",), ("ram", "--compress")]

# Every test runs with the glue built and loaded (test_tflm_real's `ops` fixture).
pytestmark = [pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
              pytest.mark.usefixtures("ops")]


def _verify(capsys, planned: Path, *extra: str, original: Path = TINY_UNET) -> dict:
    capsys.readouterr()
    code = main(["verify-tflm", str(original), str(planned), "--runs", "3", "--json",
                 "--profile", "qspi-flash", *extra])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ok"] else 1)
    return report


def _assert_passes(report: dict, planned: Path, storage: str) -> None:
    assert [r["detail"] for r in report["runs"]] == ["identical"] * 3
    assert report["planned_head_bytes"] == report["plan_peak_bytes"]
    arena = report["planned_arena_bytes"]
    assert arena["tail"] == predict_tail(io.read_model(planned.read_bytes())).bytes
    if storage == "flash":
        assert all(n and n > 0 for n in report["flash_erases"]), "the group never erased"


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """Planner -> (rewritten .tflite, solve's JSON summary), planned once per module."""
    cache: dict = {}

    def get(planner: str, capsys):
        if planner not in cache:
            out = tmp_path_factory.mktemp(f"stream-{planner}")
            capsys.readouterr()
            code = main(["solve", str(TINY_UNET), "--row-streaming", "--planner", planner,
                         "--profile", "qspi-flash", "--time-limit", "30", "--emit", "tflite",
                         "-o", str(out), "--json"])
            summary = json.loads(capsys.readouterr().out)
            assert code == 0
            [written] = out.glob("*.planned.tflite")
            cache[planner] = (written, summary)
        return cache[planner]

    return get


@pytest.mark.parametrize("planner", PLANNERS)
def test_solved_streamed_plan_runs_on_real_tflm(planner, solved, capsys):
    written, summary = solved(planner, capsys)
    # solve keeps the best of its candidate partitions (planner/streaming_search.py): for
    # tinyseg that is the unstreamed graph (153,600 B against 196,320 B streamed).
    streamed = STREAMED_GROUP_OP in io.custom_op_names(io.read_model(written.read_bytes()))
    assert streamed == bool(summary["stream_groups"]) and (streamed or planner == "tinyseg")
    report = _verify(capsys, written)
    _assert_passes(report, written, "ram")
    # What solve predicted for the emitted model is what TFLM reports.
    assert report["planned_arena_bytes"]["tail"] == summary["tail_bytes"]
    assert report["plan_peak_bytes"] == summary["head_bytes"]


@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: "+".join(s).replace("--", ""))
def test_solved_ilp_plan_on_storage(storage, solved, capsys):
    """The ILP streams rows from and spills rows to storage (issue 15's acceptance: at
    most 100,000 B of head against 153,600 B without streaming), on every driver."""
    written, summary = solved("ilp", capsys)
    kinds = {tr["kind"] for tr in json.loads((written.parent / "plan.json").read_text())
             ["transfers"]}
    assert "spill_rows" in kinds and "stream" in kinds
    assert summary["head_bytes"] <= 100_000
    report = _verify(capsys, written, "--storage", *storage)
    _assert_passes(report, written, storage[0])


def _hand_written(tmp_path: Path, spill: bool) -> tuple[Path, int]:
    planned = streamed_graph()
    rows = tuple(row_spilled(planned)) if spill else ()
    plan = streamed_plan(planned, rows)
    assert_valid(planned, plan, PROFILE.capacities)
    [out] = write_rewritten_tflite(planned, plan, TINY_UNET, tmp_path, profile=PROFILE)
    return out, plan.peak_bytes


@pytest.mark.parametrize("storage", STORAGES, ids=lambda s: "+".join(s).replace("--", ""))
def test_rows_spilled_and_streamed_by_groups_on_real_tflm(storage, capsys, tmp_path):
    written, peak = _hand_written(tmp_path, spill=True)
    report = _verify(capsys, written, "--storage", *storage)
    _assert_passes(report, written, storage[0])
    # Every tensor between groups goes through storage: far below the 153,600 B optimum
    # without streaming (README).
    assert peak < 100_000


def test_spill_free_hand_plan_on_real_tflm(capsys, tmp_path):
    written, _ = _hand_written(tmp_path, spill=False)
    _assert_passes(_verify(capsys, written), written, "ram")


def _ring_over_input(data: bytes) -> bytes:
    """Put a group's first ring on the bytes of one of its resident activation inputs."""
    model = io.read_model(data)
    offsets = io.read_offline_offsets(model)
    sub = model.subgraphs[0]
    names = [io._name(c.customCode) for c in model.operatorCodes]
    for op in sub.operators:
        if names[op.opcodeIndex] != STREAMED_GROUP_OP:
            continue
        rings = [t for t in op.outputs if io._name(sub.tensors[t].name).endswith("/ring")]
        inputs = [t for t in op.inputs if t >= 0 and offsets[t] >= 0]
        if rings and inputs:
            offsets[rings[0]] = offsets[inputs[0]]
            io.set_metadata(model, io.OFFLINE_METADATA, io.offline_entry(offsets))
            return io.write_model(model)
    raise AssertionError("no group with a ring and a resident input")


def test_planted_ring_overlap_changes_outputs(capsys, tmp_path):
    written, _ = _hand_written(tmp_path, spill=False)
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(_ring_over_input(written.read_bytes()))
    report = _verify(capsys, bad)
    assert not report["ok"]
    assert any(not r["identical"] for r in report["runs"])


@pytest.mark.parametrize("name", ["fcn_additive_int8", "irregular_int8", "mbv2_unet_int8",
                                  "unet_wide96_int8"])
def test_zoo_streamed_ilp_plans_on_real_tflm(name, capsys, tmp_path):
    """The other zoo models (transpose convs, grouped and depthwise convs, skip ADDs) with
    the ILP's row-streamed plan, on NOR flash."""
    model = TINY_UNET.parent / f"{name}.tflite"
    capsys.readouterr()
    assert main(["solve", str(model), "--row-streaming", "--planner", "ilp", "--profile",
                 "qspi-flash", "--time-limit", "30", "--emit", "tflite", "-o", str(tmp_path),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    [written] = tmp_path.glob("*.planned.tflite")
    assert STREAMED_GROUP_OP in io.custom_op_names(io.read_model(written.read_bytes()))
    report = _verify(capsys, written, "--storage", "flash", original=model)
    _assert_passes(report, written, "flash" if "Spill" in report["custom_ops"] else "ram")
    assert report["planned_arena_bytes"]["tail"] == summary["tail_bytes"]
