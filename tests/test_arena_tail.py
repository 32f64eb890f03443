"""The predicted arena tail equals the tail real TFLM (tflite-micro) reports, and `solve`
bounds the whole arena (head + tail) with --budget.

Real tails are measured live with the wheel's print_allocations(). Besides the shared and
zoo models: the segmentation models made runnable (float kernels, uint8 as int8),
synthetic one-kernel models for kernel paths no real model takes, spill-free planned
models, and the project's custom-op structs recompiled from backends/c.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

from backends.tflite.io import read_model, write_model
from backends.tflite.offline import write_offline_tflite
from backends.tflite.tail import (
    CUSTOM_KERNELS,
    CUSTOM_STRUCTS,
    MAX_FUSED_INPUTS,
    TailUnknown,
    load_arena,
    plan_tail,
    predict_tail,
)
from backends.tflm.interpreter import arena_usage
from frontends.tflite_frontend import parse_tflite
from planner.device import load_profile
from planner.planners.base import Request, registry
from tests.conftest import MODELS, ROOT, SHARED, needs_shared, shared_models
from tests.test_tflm_greedy import OPTS, TT, Net, _tflm_runnable_selfie, _uint8_to_int8

BO = fb.BuiltinOperator
C_DIR = ROOT / "backends" / "c"
ZOO = sorted((ROOT / "benchmarks" / "models").glob("*_int8.tflite"))
TINY_UNET = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
# TFLM runs every shared model but the Ethos-U one and the segmentation models as stored.
RUNNABLE = [p for p in shared_models("mlperf_tiny/*.tflite") + shared_models("tflm/*.tflite")
            if p.stem != "person_detect_vela"] + ZOO


def assert_tail_is_tflm(model: bytes) -> int:
    real = arena_usage(model)
    predicted = predict_tail(model)
    assert predicted.bytes == real["tail"], predicted.by_kind()
    assert real["total"] == real["head"] + real["tail"]
    return predicted.bytes


def test_every_runnable_model_is_here() -> None:
    assert len(ZOO) >= 6
    if SHARED.is_dir():
        assert len(RUNNABLE) == len(ZOO) + 10


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.stem)
def test_tail_of_runnable_model_is_tflm_tail(path: Path) -> None:
    assert_tail_is_tflm(path.read_bytes())


@needs_shared
@pytest.mark.parametrize("name,convert", [
    ("selfie_segmentation", _tflm_runnable_selfie),  # float conv, transpose conv, MUL...
    ("selfie_segmentation_landscape", _tflm_runnable_selfie),  # + float MEAN
    ("deeplabv3_mnv2_dm05_pascal_quant", _uint8_to_int8),  # + ARG_MAX, QUANTIZE
])
def test_tail_of_segmentation_models_made_runnable(name: str, convert) -> None:
    data = (MODELS / "segmentation" / f"{name}.tflite").read_bytes()
    assert_tail_is_tflm(convert(data))


# -- kernel paths no real model takes: one-kernel models ------------------------------------

@pytest.mark.parametrize("builtin", [BO.MEAN, BO.SUM, BO.REDUCE_MAX, BO.REDUCE_MIN],
                         ids=["mean", "sum", "max", "min"])
@pytest.mark.parametrize("ttype", [TT.INT8, TT.FLOAT32], ids=["int8", "float"])
def test_reduce_tail(builtin: int, ttype: int) -> None:
    net = Net()
    x = net.act([3, 5, 7, 9, 2], ttype)
    assert_tail_is_tflm(net.bytes([x], [net.reduce(builtin, x, [0, 1, 3], ttype)]))


@pytest.mark.parametrize("ttype,bias", [(TT.INT8, TT.INT32), (TT.INT8, None),
                                        (TT.FLOAT32, TT.FLOAT32)],
                         ids=["int8", "int8-nobias", "float"])
def test_transpose_conv_tail(ttype: int, bias: int | None) -> None:
    net = Net()
    x = net.act([1, 6, 5, 4], ttype)
    assert_tail_is_tflm(net.bytes([x], [net.transpose_conv(x, 3, ttype, bias)]))


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv", "depthwise"])
def test_int4_conv_tail(depthwise: bool) -> None:
    net = Net()
    x = net.act([1, 6, 6, 5])
    assert_tail_is_tflm(net.bytes([x], [net.conv(x, 7, filt=TT.INT4, depthwise=depthwise)]))


def test_float_svdf_tail() -> None:
    net = Net()
    x = net.act([2, 16], TT.FLOAT32)
    feature = net.tensor([8, 16], TT.FLOAT32, np.ones((8, 16), np.float32))
    time = net.tensor([8, 4], TT.FLOAT32, np.ones((8, 4), np.float32))
    bias = net.tensor([4], TT.FLOAT32, np.zeros(4, np.float32))
    state = net.tensor([2, 32], TT.FLOAT32, variable=True)
    opt = fb.SVDFOptionsT()
    opt.rank = 2
    y = net.op(BO.SVDF, [x, feature, time, bias, state], [net.act([2, 4], TT.FLOAT32)],
               OPTS.SVDFOptions, opt)
    assert_tail_is_tflm(net.bytes([x], [y]))


def _split_v(copies: int) -> bytes:
    """`copies` SPLIT_V ops (the rewrite's channel split) on one int8 tensor."""
    net = Net()
    x = net.act([1, 4, 4, 6])
    sizes = net.tensor([2], TT.INT32, np.array([4, 2], np.int32))
    axis = net.tensor([], TT.INT32, np.array([3], np.int32))
    outs = [net.act([1, 4, 4, 4]), net.act([1, 4, 4, 2])]
    opt = fb.SplitVOptionsT()
    opt.numSplits = 2
    for _ in range(copies):
        net.op(BO.SPLIT_V, [x, sizes, axis], outs, OPTS.SplitVOptions, opt)
    return net.bytes([x], outs)


@pytest.mark.parametrize("copies", [1, 2, 3, 5])
def test_split_v_tail(copies: int) -> None:
    # Several copies move the 4-byte-aligned params across 16-byte boundaries.
    assert_tail_is_tflm(_split_v(copies))


def test_scratch_handles_follow_the_frontend_scratch_requests() -> None:
    # The tail counts one ScratchBufferHandle per scratch request; the head planner sees
    # the same requests through the frontend. The two must not drift apart.
    for path in RUNNABLE:
        data = path.read_bytes()
        graph = parse_tflite(data)
        requests = sum(len(op.scratch) for op in graph.ops)
        handles = [a for a in predict_tail(data).allocations if a.kind == "scratch handles"]
        assert sum(a.size for a in handles) == 8 * requests, path.stem


def test_unknown_op_is_refused_not_guessed() -> None:
    net = Net()
    x = net.act([1, 8], TT.FLOAT32)
    model = net.bytes([x], [net.op(BO.TANH, [x], [net.act([1, 8], TT.FLOAT32)])])
    with pytest.raises(TailUnknown, match="TANH"):
        predict_tail(model)


def test_application_allocator_is_the_recording_one_minus_its_bigger_objects() -> None:
    data = TINY_UNET.read_bytes()
    recording, application = predict_tail(data), predict_tail(data, "application")
    # RecordingSingleArenaBufferAllocator 104 vs 72, RecordingMicroAllocator 272 vs 72,
    # and the 16-byte alignment of the allocations after them.
    assert recording.bytes - application.bytes in (232, 240, 224)


# -- planned models ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.stem)
def test_spill_free_planned_model_tail(path: Path, tmp_path: Path) -> None:
    """Offline-planned (profile none): the tail plan_tail predicts is the one TFLM reports."""
    graph = parse_tflite(path.read_bytes())
    plan = registry()["tflm-greedy"](Request(graph, load_profile("none"), None, None, 5.0,
                                             "cpsat"))
    [written] = write_offline_tflite(graph, plan, path, tmp_path)
    real = arena_usage(written.read_bytes())
    assert plan_tail(graph, plan, path).bytes == real["tail"]
    assert plan.peak_bytes + real["tail"] == real["total"]


def cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_solve_reports_the_real_arena_of_its_spill_free_model(tmp_path: Path) -> None:
    run = cli("solve", TINY_UNET, "--profile", "none", "--time-limit", "20", "--json",
              "-o", tmp_path, "--emit", "tflite")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    real = arena_usage((tmp_path / "tiny_unet_int8.planned.tflite").read_bytes())
    assert (data["head_bytes"], data["tail_bytes"], data["arena_bytes"]) == (
        real["head"], real["tail"], real["total"])
    assert data["head_bytes"] == data["peak_bytes"]


def test_budget_that_fits_the_head_but_not_the_arena_is_refused() -> None:
    # On TFLM's own TRANSPOSE_CONV tflm-greedy's head is 307,200 B; with its 9,328 B tail
    # it does not fit 307,200 B.
    # sd-card: its 320 KiB of SRAM holds the arena, so no SRAM warning joins the error.
    stock = ("--planner", "tflm-greedy", "--stock-transpose-conv", "--profile", "sd-card")
    run = cli("solve", TINY_UNET, *stock, "--budget", "307200")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "316,528 B" in lines[0] and "9,328 B over the budget" in lines[0]
    assert "arena total" in run.stdout and "DOES NOT FIT" in run.stdout
    head_only = cli("solve", TINY_UNET, *stock, "--head-budget", "307200")
    assert head_only.returncode == 0, head_only.stderr


def test_budget_below_the_bound_once_the_tail_is_taken_names_the_op() -> None:
    info = json.loads(cli("analyze", TINY_UNET, "--json").stdout)
    ws, op = info["working_set_bound_bytes"], info["ops"][info["working_set_bound_op"]]
    tail = predict_tail(TINY_UNET.read_bytes()).bytes
    budget = ws + tail // 2  # above the head's bound, below bound + tail
    run = cli("solve", TINY_UNET, "--budget", str(budget), "--json")
    assert run.returncode == 1
    line = run.stderr.strip()
    for fragment in (f"budget {budget:,} B", f"tail of {tail:,} B", "below the working-set bound",
                     f"'{op['name']}'", f"{ws:,} B"):
        assert fragment in line, (fragment, line)
    assert json.loads(run.stdout)["tail_bytes"] == tail


def test_budget_loop_replans_for_the_rewrite_tail(tmp_path: Path) -> None:
    # 256 KB: the first head budget (256,000 - the model's own tail) gives a plan whose
    # rewritten model has more tail (Spill, Fetch, FusedConcatConv2D); solve re-plans. On
    # TFLM's own TRANSPOSE_CONV, so that the plan must spill.
    run = cli("solve", TINY_UNET, "--stock-transpose-conv", "--budget", "256KB",
              "--time-limit", "20", "--json",
              "-o", tmp_path, "--emit", "tflite")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    own_tail = predict_tail(TINY_UNET.read_bytes()).bytes
    written = (tmp_path / "tiny_unet_int8.planned.tflite").read_bytes()
    assert data["tail_bytes"] == predict_tail(written).bytes > own_tail
    assert data["arena_bytes"] == data["head_bytes"] + data["tail_bytes"] <= 256_000
    assert data["head_budget_bytes"] == 256_000 - data["tail_bytes"]
    assert data["head_bytes"] <= data["head_budget_bytes"]


def test_onnx_input_says_there_is_no_tail() -> None:
    run = cli("solve", ROOT / "benchmarks" / "models" / "tiny_unet.onnx", "--profile", "none",
              "--time-limit", "10", "--json")
    data = json.loads(run.stdout)
    assert data["tail_bytes"] is None and data["arena_bytes"] is None
    assert "ONNX" in data["tail_note"] and "bounds the head" in data["tail_note"]


# -- the custom ops' structs, recompiled from the C sources ---------------------------------

def _struct_program(names: list[str]) -> list[str]:
    """sizeof() of tflm_ops.cc's op-data structs and tp_runtime.h's types on this host,
    compiled from the sources (the structs need no TFLM header)."""
    src = (C_DIR / "tflm_ops.cc").read_text()
    lines = ["#include <stdio.h>", "#include <stdint.h>",
             'extern "C" {', '#include "tp_kernels.h"', '#include "tp_runtime.h"', "}"]
    lines += [f"#define {n} {v}" for n, v in re.findall(r"^#define (TP_TFLM_\w+) (\d+)", src, re.M)]
    lines += [f"constexpr int {n} = {v};"
              for n, v in re.findall(r"^\s*constexpr int (k\w+) = (\d+);", src, re.M)]
    for name in names:
        found = re.search(rf"^struct {name} \{{.*?^\}};", src, re.M | re.S)
        if found:
            lines.append(found.group(0))
    lines.append("int main(void) {")
    lines += [f'  printf("{n} %zu\\n", sizeof({n}));' for n in names]
    lines.append("  return 0;\n}")
    return lines


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_custom_struct_sizes_match_the_c_sources(tmp_path: Path) -> None:
    names = sorted(CUSTOM_STRUCTS)
    (tmp_path / "sizes.cc").write_text("\n".join(_struct_program(names)))
    subprocess.run(["g++", "-std=c++17", "-I", str(C_DIR), str(tmp_path / "sizes.cc"), "-o",
                    str(tmp_path / "sizes")], check=True)
    out = subprocess.run([str(tmp_path / "sizes")], capture_output=True, text=True, check=True)
    measured = {k: int(v) for k, v in (line.split() for line in out.stdout.splitlines())}
    assert measured == CUSTOM_STRUCTS
    src = (C_DIR / "tflm_ops.cc").read_text()
    assert f"#define TP_TFLM_MAX_INPUTS {MAX_FUSED_INPUTS}" in src


def test_every_custom_op_of_the_rewrite_has_a_tail_rule() -> None:
    from backends.tflite.io import CUSTOM_OPS

    assert set(CUSTOM_OPS) <= set(CUSTOM_KERNELS)


def test_fused_concat_conv_tail_is_its_structs_and_channel_arrays() -> None:
    """Swap a zoo model's CONCATENATION+CONV_2D pair for FusedConcatConv2D by hand: its
    tail grows by FusedData, 8 stream states and two int32 arrays per output channel,
    minus the builtin pair's own data."""
    model = read_model(TINY_UNET.read_bytes())
    before = predict_tail(model)
    sg = model.subgraphs[0]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = BO.CUSTOM
    code.customCode = b"FusedConcatConv2D"
    model.operatorCodes.append(code)
    names = {v: k for k, v in vars(BO).items() if not k.startswith("_")}
    kind = [names[max(model.operatorCodes[o.opcodeIndex].builtinCode,
                      model.operatorCodes[o.opcodeIndex].deprecatedBuiltinCode)]
            for o in sg.operators]
    k = kind.index("CONCATENATION")
    concat, conv = sg.operators[k], sg.operators[k + 1]
    assert kind[k + 1] == "CONV_2D" and conv.inputs[0] == concat.outputs[0]
    fused = fb.OperatorT()
    fused.opcodeIndex = len(model.operatorCodes) - 1
    fused.inputs = [*concat.inputs, *conv.inputs[1:]]
    fused.outputs = list(conv.outputs)
    sg.operators[k:k + 2] = [fused]
    after = predict_tail(read_model(write_model(model)))
    out_c = sg.tensors[conv.outputs[0]].shape[3]
    added = sorted(a.size for a in after.allocations if a.what.startswith("FusedConcatConv2D"))
    assert added == sorted([CUSTOM_STRUCTS["FusedData"],
                            CUSTOM_STRUCTS["tp_stream_state"] * MAX_FUSED_INPUTS,
                            4 * out_c, 4 * out_c])
    assert after.bytes > before.bytes


# -- the arena TFLM needs while it loads a model --------------------------------------------

_PROBE = """
import sys
from backends.tflm.interpreter import make_interpreter
make_interpreter(open(sys.argv[1], "rb").read(), int(sys.argv[2]))
"""


def loads(path: Path, arena: int) -> bool:
    """Whether TFLM allocates the model in `arena` bytes; in a child process, because an
    arena too small for Prepare's temporaries can crash TFLM instead of failing."""
    run = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(arena)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    return run.returncode == 0


def _wide(kind: str) -> bytes:
    """One weighted op with many channels on a 1x1 input: Prepare's temporary tensors
    (zero-point arrays of every channel, read twice) outgrow head + tail."""
    net = Net()
    if kind == "depthwise":
        x = net.act([1, 1, 1, 200])
        y = net.conv(x, 200, k=1, depthwise=True)
    elif kind == "transpose_conv":
        x = net.act([1, 1, 1, 3])
        y = net.transpose_conv(x, 96)
    else:
        x = net.act([1, 1, 1, 3])
        y = net.conv(x, 128, k=1)
    return net.bytes([x], [y])


@pytest.mark.parametrize("source", [
    "mlperf_tiny/ad01_int8", "tflm/hello_world_int8", "tflm/keyword_scrambled_8bit",
    "tflm/micro_speech_quantized", "zoo/tiny_unet_int8", "conv", "depthwise",
    "transpose_conv"])
def test_load_arena_is_the_smallest_that_loads(source: str, tmp_path: Path) -> None:
    if source in ("conv", "depthwise", "transpose_conv"):
        path = tmp_path / f"{source}.tflite"
        path.write_bytes(_wide(source))
    elif source.startswith("zoo/"):
        path = ROOT / "benchmarks" / "models" / f"{source[4:]}.tflite"
    else:
        path = MODELS / f"{source}.tflite"
        if not path.is_file():
            pytest.skip("../shared data is absent")
    data = path.read_bytes()
    real = arena_usage(data)
    need = load_arena(data, real["head"])
    assert need >= real["total"]
    assert loads(path, need) and not loads(path, need - 16)


def test_solve_refuses_a_budget_that_only_the_loading_temporaries_exceed() -> None:
    # ad01: head 768 + tail 3,216 = 3,984 B, but TFLM needs 4,640 B while it plans.
    path = MODELS / "mlperf_tiny" / "ad01_int8.tflite"
    if not path.is_file():
        pytest.skip("../shared data is absent")
    run = cli("solve", path, "--profile", "none", "--budget", "4000", "--json")
    assert run.returncode == 1
    data = json.loads(run.stdout)
    assert data["head_bytes"] + data["tail_bytes"] <= 4000 < data["arena_bytes"] == 4640
    assert "only while loading" in run.stderr and "640 B over the budget" in run.stderr
