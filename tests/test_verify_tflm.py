"""`verify-tflm` on real TFLM: planned models pass, planted overlaps and custom ops do not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import MODELS

from backends.tflite import io
from backends.tflite.offline import write_offline_tflite
from frontends import load_model
from planner.checker import assert_valid, check
from planner.cli import main
from planner.device import load_profile
from planner.planners.base import Request, registry

# The shared models real TFLM runs (BRIEF): everything but segmentation and Vela.
RUNNABLE = [
    "mlperf_tiny/ad01_int8", "mlperf_tiny/kws_ref_model", "mlperf_tiny/pretrainedResnet_quant",
    "mlperf_tiny/pretrainedResnet_large_int8", "mlperf_tiny/str_ww_ref_model",
    "mlperf_tiny/vww_96_int8", "tflm/hello_world_int8", "tflm/keyword_scrambled_8bit",
    "tflm/micro_speech_quantized", "tflm/person_detect",
    # The benchmark zoo's int8 models (TinySeg's Tiny U-Net has TRANSPOSE_CONV scratch).
    "zoo/tiny_unet_int8", "zoo/unet_wide96_int8", "zoo/mbv2_unet_int8", "zoo/deeplab_lite_int8",
    "zoo/fcn_additive_int8", "zoo/irregular_int8",
]
NONE = load_profile("none")
# Bundled with the repo: TinySeg's Tiny U-Net, int8, with TRANSPOSE_CONV int32 scratch.
ZOO = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


def model(name: str) -> Path:
    path = (ZOO / f"{name[4:]}.tflite") if name.startswith("zoo/") else \
        MODELS / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"{path.name} absent (../shared)")
    return path


def write_plan(path: Path, planner: str, outdir: Path, **request) -> tuple[Path, int]:
    graph = load_model(path)
    plan = registry()[planner](Request(graph, NONE, **request))
    assert_valid(graph, plan)
    [out] = write_offline_tflite(graph, plan, path, outdir)
    return out, plan.peak_bytes


@pytest.mark.parametrize("name", RUNNABLE)
def test_greedy_plans_verify_on_tflm(name, tmp_path, capsys):
    path = model(name)
    out, peak = write_plan(path, "tflm-greedy", tmp_path)
    assert main(["verify-tflm", str(path), str(out), "--runs", "1"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and f"{peak:,}" in text


@pytest.mark.parametrize("name", RUNNABLE)
def test_ilp_plans_verify_on_tflm(name, tmp_path):
    if "ilp" not in registry():
        pytest.skip("planner 'ilp' is not registered")
    path = model(name)
    out, _ = write_plan(path, "ilp", tmp_path, time_limit=20.0)
    assert main(["verify-tflm", str(path), str(out), "--runs", "1", "--json"]) == 0


def test_planted_overlap_is_caught(tmp_path, capsys):
    """Every activation at offset 0: the checker rejects it, real TFLM computes garbage."""
    path = model("tflm/person_detect")
    graph = load_model(path)
    plan = registry()["tflm-greedy"](Request(graph, NONE))
    bad = dataclasses.replace(plan, segments=tuple(
        dataclasses.replace(s, offset=0) for s in plan.segments))
    assert check(graph, bad)  # invalid: written only by bypassing the checker
    [out] = write_offline_tflite(graph, bad, path, tmp_path)
    assert main(["verify-tflm", str(path), str(out), "--runs", "2"]) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and ("DIFF" in text or "DIFFERS" in text)


def test_planted_in_place_conv_changes_outputs_at_the_same_head(tmp_path, capsys):
    """A depthwise conv's output put on its input (peak unchanged): only the outputs tell."""
    from backends.tflite.offline import predict_tflm_placement

    path = model("tflm/person_detect")
    graph = load_model(path)
    plan = registry()["tflm-greedy"](Request(graph, NONE))
    seg = {s.tensor: s for s in plan.segments}
    for op in graph.ops:
        if op.op_type != "DEPTHWISE_CONV_2D":
            continue
        out, src = seg[op.outputs[0]], seg[op.inputs[0]]
        bad = dataclasses.replace(plan, segments=tuple(
            dataclasses.replace(s, offset=src.offset) if s.tensor == out.tensor else s
            for s in plan.segments))
        if out.size <= src.size and predict_tflm_placement(graph, bad).head == plan.peak_bytes:
            break
    else:
        pytest.skip("no in-place candidate keeps the peak")
    assert check(graph, bad)
    [written] = write_offline_tflite(graph, bad, path, tmp_path)
    assert main(["verify-tflm", str(path), str(written), "--runs", "1"]) == 1
    text = capsys.readouterr().out
    assert "DIFF " in text and "DIFFERS" not in text


def test_head_mismatch_alone_fails(tmp_path, capsys):
    """Outputs identical but a recorded peak TFLM does not reproduce: still exit 1."""
    path = model("tflm/hello_world_int8")
    out, peak = write_plan(path, "tflm-greedy", tmp_path)
    m = io.read_model(out.read_bytes())
    io.set_metadata(m, io.PEAK_METADATA, io.pack_int32([1, peak + 16, peak + 16, 0]))
    out.write_bytes(io.write_model(m))
    assert main(["verify-tflm", str(path), str(out), "--runs", "1"]) == 1
    text = capsys.readouterr().out
    assert "DIFFERS" in text and "OK   identical" in text


def test_custom_ops_are_refused(tmp_path, capsys, monkeypatch):
    """Without a TFLM tree to build the project's ops (tests/test_tflm_real.py has one)."""
    from test_tflite_rewrite import PROFILE, hand_plan

    from backends.tflm.custom import ENV_ROOT

    monkeypatch.delenv(ENV_ROOT, raising=False)
    from backends.tflite.rewrite import write_rewritten_tflite

    path = model("mlperf_tiny/pretrainedResnet_quant")
    graph = load_model(path)
    plan = hand_plan(graph, spills=[(22, 2, 4, "fetch")])
    [out] = write_rewritten_tflite(graph, plan, path, tmp_path, profile=PROFILE)
    capsys.readouterr()
    assert main(["verify-tflm", str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Fetch, Spill" in err[0] and "C glue" in err[0]


def test_model_without_plan_metadata_is_refused(capsys):
    path = model("tflm/hello_world_int8")
    assert main(["verify-tflm", str(path), str(path)]) == 2
    assert "TinyPlanPeak" in capsys.readouterr().err


def test_missing_file_is_refused(tmp_path, capsys):
    assert main(["verify-tflm", str(tmp_path / "a.tflite"), str(tmp_path / "b.tflite")]) == 2
    assert "no such file" in capsys.readouterr().err
