"""The compute-time model: MACs, bytes and seconds per op from the profile's cycle table."""

from __future__ import annotations

import dataclasses

import pytest

from planner.compute import dtype_of, kind_of, op_bytes, op_macs, op_seconds
from planner.device import ComputeModel, DeviceProfile, load_profile, profile_from_dict
from planner.errors import PlannerError
from planner.ir import Graph, Op, OpKind, Role
from tests.graph_factory import GraphBuilder


def conv_graph():
    b = GraphBuilder("conv")
    x = b.input((1, 8, 8, 4))
    y = b.op(OpKind.CONV, [x], (1, 8, 8, 6), kernel=(3, 3), strides=(1, 1))
    z = b.op(OpKind.CONCAT, [x, y], (1, 8, 8, 10), axis=3)
    return b.build([z])


def test_conv_macs_are_output_elements_times_window():
    g = conv_graph()
    conv, cat = g.ops
    assert op_macs(g, conv) == 8 * 8 * 6 * (3 * 3 * 4)
    assert op_macs(g, cat) == 0
    # bytes read + written: input 256, filter 6*3*3*4 = 216, output 384
    assert op_bytes(g, conv) == 256 + 216 + 384
    assert op_bytes(g, cat) == 256 + 384 + 640
    assert kind_of(conv) == "conv" and kind_of(cat) == "concat"
    assert dtype_of(g, conv) == "int8"


def test_depthwise_and_transpose_conv_macs():
    b = GraphBuilder("dw")
    x = b.input((1, 4, 4, 8))
    w_dw = b.tensor((1, 3, 3, 8), Role.CONSTANT, "dw_filter")
    y = b.op(OpKind.DEPTHWISE_CONV, [x, w_dw], (1, 4, 4, 8))
    w_tc = b.tensor((5, 2, 2, 8), Role.CONSTANT, "tc_filter")  # TFLite [Cout, kh, kw, Cin]
    shape = b.tensor((4,), Role.CONSTANT, "output_shape")
    z = b.op(OpKind.TRANSPOSE_CONV, [shape, w_tc, y], (1, 8, 8, 5))
    g = b.build([z])
    assert op_macs(g, g.ops[0]) == 4 * 4 * 8 * 9
    assert op_macs(g, g.ops[1]) == 4 * 4 * 8 * (5 * 2 * 2)  # each input element: kh*kw*Cout


def test_seconds_are_cycles_over_clock():
    g = conv_graph()
    model = ComputeModel(clock_hz=2e6, cycles=(("conv", (("int8", 2.0),)),
                                               ("concat", (("int8", 0.5),))))
    prof = DeviceProfile("p", 1 << 20, (), compute=model)
    secs = op_seconds(g, prof)
    assert secs == pytest.approx((8 * 8 * 6 * 36 * 2.0 / 2e6, 1280 * 0.5 / 2e6))
    # Unlisted kinds and dtypes take the bundled defaults.
    assert model.cycles_per_unit("pool", "int8") == ComputeModel().cycles_per_unit("pool", "int8")


def test_streamed_group_costs_the_sum_of_its_members():
    source = conv_graph()
    conv, cat = source.ops
    group = Op(0, "group0", "TINYPLAN_STREAMED_GROUP", OpKind.STREAMED_GROUP,
               conv.inputs, cat.outputs, (), {"members": [0, 1]})
    planned = dataclasses.replace(source, ops=(group,), source=source)
    prof = load_profile("qspi-flash")
    assert op_macs(planned, group) == op_macs(source, conv)
    assert op_bytes(planned, group) == op_bytes(source, conv) + op_bytes(source, cat)
    assert op_seconds(planned, prof)[0] == pytest.approx(sum(op_seconds(source, prof)))


def test_float_and_int16_ops_use_their_rows():
    b = GraphBuilder("f", dtype="float32")
    x = b.input((1, 4, 4, 2))
    y = b.op(OpKind.ELEMENTWISE, [x], (1, 4, 4, 2))
    g: Graph = b.build([y])
    assert dtype_of(g, g.ops[0]) == "float32"
    b16 = GraphBuilder("i", dtype="int16")
    x = b16.input((1, 4, 4, 2))
    g16 = b16.build([b16.op(OpKind.POOL, [x], (1, 2, 2, 2))])
    assert dtype_of(g16, g16.ops[0]) == "int16"


def test_every_bundled_profile_has_a_clock_and_compute_table():
    from planner.device import bundled_profiles

    for name in bundled_profiles():
        prof = load_profile(name)
        assert prof.compute.clock_hz > 1e6, name
        assert prof.compute.cycles, f"{name}: bundled profiles state their estimates"


@pytest.mark.parametrize("compute, message", [
    ({"conv": {"int8": -1}}, "out of range"),
    ({"conv": {"int4": 1}}, "unknown key 'int4'"),
    ({"matmul": {"int8": 1}}, "unknown key 'matmul'"),
    ({"conv": 2}, "must be a table"),
    ("fast", "must be a table"),
])
def test_bad_compute_tables_get_one_line(compute, message):
    with pytest.raises(PlannerError, match=message):
        profile_from_dict({"sram": 1024, "compute": compute}, "t.toml")


def test_clock_and_storage_channel_fields_are_checked():
    with pytest.raises(PlannerError, match="clock_mhz"):
        profile_from_dict({"sram": 1024, "clock_mhz": 0}, "t.toml")
    with pytest.raises(PlannerError, match="'async' must be true or false"):
        profile_from_dict({"sram": 1024, "storage": [
            {"name": "s", "capacity": 1, "read_bandwidth": 1, "write_bandwidth": 1,
             "async": "yes"}]}, "t.toml")
    p = profile_from_dict({"sram": 1024, "clock_mhz": 64, "storage": [
        {"name": "s", "capacity": 1, "read_bandwidth": 1, "write_bandwidth": 1}]}, "t.toml")
    assert p.compute.clock_hz == 64e6
    s = p.storages[0]
    assert (s.async_channel, s.erase_blocks_bus, s.erase_s) == (False, True, 0.0)


def test_analyze_shows_macs_bytes_and_time(capsys):
    from pathlib import Path

    from planner.cli import main

    model = Path(__file__).resolve().parents[1] / "benchmarks/models/tiny_unet_int8.tflite"
    assert main(["analyze", str(model), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    conv = data["ops"][0]
    assert conv["type"] == "CONV_2D" and conv["macs"] == 80 * 120 * 8 * 3 * 3 * 3
    assert conv["est_seconds"] == pytest.approx(conv["macs"] * 1.2 / 168e6)
    assert data["est_compute_seconds"] == pytest.approx(sum(o["est_seconds"] for o in data["ops"]))
    assert main(["analyze", str(model), "--profile", "internal-flash"]) == 0
    text = capsys.readouterr().out
    assert "216 MHz" in text and "not measurements" in text and "2,073,600" in text


def test_real_models_count_their_macs():
    """DS-CNN KWS (MLPerf Tiny): 25x5x64 outputs; conv 10x4 on 1 channel, four depthwise
    3x3 + pointwise 64x64 blocks, FC 64->12. The ONNX U-Net's first conv (NCHW) matches the
    TFLite one's."""
    from pathlib import Path

    from frontends import load_model

    root = Path(__file__).resolve().parents[1]
    kws = root.parent / "shared" / "models" / "mlperf_tiny" / "kws_ref_model.tflite"
    if not kws.is_file():
        pytest.skip("shared models absent")
    g = load_model(kws)
    out = 25 * 5 * 64
    want = out * 10 * 4 + 4 * (out * 9 + out * 64) + 12 * 64
    assert sum(op_macs(g, op) for op in g.ops) == want
    assert {kind_of(op) for op in g.ops} >= {"conv", "depthwise_conv", "fully_connected",
                                            "pool", "reshape", "other"}
    onnx = load_model(root / "benchmarks" / "models" / "tiny_unet.onnx")
    assert op_macs(onnx, onnx.ops[0]) == 80 * 120 * 8 * 3 * 3 * 3
    assert dtype_of(onnx, onnx.ops[0]) == "float32"
