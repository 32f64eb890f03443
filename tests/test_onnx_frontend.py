"""The ONNX frontend on the bundled zoo and on every way a model file can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.models import TINY_UNET, zoo_paths
from frontends import load_model
from frontends.onnx_frontend import load_onnx
from planner.analysis import lifetimes
from planner.cli import main as cli_main
from planner.errors import PlannerError
from planner.ir import OpKind, Role


def _node_outputs(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output if o}


@pytest.mark.parametrize("path", zoo_paths(), ids=lambda p: p.stem)
def test_zoo_model_parses(path: Path) -> None:
    model = onnx.load(str(path))
    g = model.graph
    graph = load_onnx(path, {})
    constant_nodes = sum(n.op_type == "Constant" for n in g.node)
    assert len(graph.ops) == len(g.node) - constant_nodes
    inits = {i.name for i in g.initializer}
    inputs = {i.name for i in g.input} - inits
    assert len(graph.tensors) == len(inputs | inits | _node_outputs(model))
    assert graph.source_format == "onnx" and graph.layout == "NCHW"
    assert [t.id for t in graph.tensors] == list(range(len(graph.tensors)))
    assert [graph.tensors[t].name for t in graph.inputs] == ["input"]
    assert [graph.tensors[t].name for t in graph.outputs] == ["output"]
    assert all(op.scratch == () for op in graph.ops)
    assert all(op.op_type != "Constant" for op in graph.ops)
    for t in graph.tensors:
        assert t.nbytes == int(np.prod(t.shape)) * 4  # the zoo is float32 throughout
        assert t.role == Role.CONSTANT or t.channel_axis == (1 if len(t.shape) == 4 else None)
    # Execution order is node order: every op input is defined before the op.
    produced = {t.id for t in graph.tensors if t.role in (Role.INPUT, Role.CONSTANT)}
    for op in graph.ops:
        assert all(t in produced for t in op.inputs if t >= 0), op.name
        produced.update(op.outputs)


def test_tiny_unet_roles_sizes_lifetimes() -> None:
    graph = load_model(TINY_UNET)  # through the dispatcher, as the CLI reads it
    by_name = {t.name: t for t in graph.tensors}
    assert by_name["input"].role == Role.INPUT and by_name["input"].nbytes == 3 * 80 * 120 * 4
    assert by_name["output"].role == Role.OUTPUT and by_name["output"].shape == (1, 1, 80, 120)
    assert by_name["conv0.weight"].role == Role.CONSTANT
    assert by_name["conv0.weight"].shape == (8, 3, 3, 3) and not by_name["conv0.weight"].planned

    concats = [op for op in graph.ops if op.kind == OpKind.CONCAT]
    assert len(concats) == 3 and all(op.attrs["axis"] == 1 for op in concats)
    last = concats[-1]
    skip = graph.tensors[last.inputs[0]]  # [skip, upsampled]
    up = graph.tensors[last.inputs[1]]
    assert skip.shape == (1, 8, 80, 120) and skip.nbytes == 80 * 120 * 8 * 4
    assert skip.role == Role.ACTIVATION and skip.channels == 8
    assert up.shape == (1, 4, 80, 120)
    producer = graph.producer()[skip.id]
    assert graph.ops[producer].op_type == "Relu"
    readers = graph.consumers()[skip.id]
    assert graph.ops[readers[0]].op_type == "MaxPool" and readers[-1] == last.index
    life = lifetimes(graph)
    assert life[skip.id] == (producer + 1, last.index + 1)
    assert life[by_name["input"].id][0] == 0
    assert life[by_name["output"].id] == (len(graph.ops), len(graph.ops))
    assert by_name["conv0.weight"].id not in life

    ups = [op for op in graph.ops if op.kind == OpKind.TRANSPOSE_CONV]
    assert [op.op_type for op in ups] == ["ConvTranspose"] * 3
    assert all(op.attrs["kernel"] == (2, 2) and op.attrs["strides"] == (2, 2) for op in ups)
    assert [graph.tensors[op.outputs[0]].shape[1] for op in ups] == [16, 8, 4]
    convs = [op for op in graph.ops if op.op_type == "Conv"]
    assert all(op.kind == OpKind.CONV for op in convs) and len(convs) == 15
    assert convs[0].attrs == {"kernel": (3, 3), "strides": (1, 1), "dilations": (1, 1),
                              "padding": "explicit", "pads": (1, 1, 1, 1), "group": 1}
    assert convs[-1].attrs["kernel"] == (1, 1)
    pools = [op for op in graph.ops if op.kind == OpKind.POOL]
    assert len(pools) == 3 and pools[0].attrs["kernel"] == (2, 2)
    assert {op.kind for op in graph.ops if op.op_type == "Relu"} == {OpKind.ELEMENTWISE}


def test_zoo_kinds_and_attrs() -> None:
    paths = {p.stem: p for p in zoo_paths()}
    mbv2 = load_onnx(paths["mbv2_unet"], {})
    depthwise = [op for op in mbv2.ops if op.kind == OpKind.DEPTHWISE_CONV]
    assert len(depthwise) == 6
    assert all(op.attrs["group"] == mbv2.tensors[op.inputs[0]].shape[1] for op in depthwise)
    # Clip bounds come from Constant nodes: constants, and no op produces them.
    clip = next(op for op in mbv2.ops if op.op_type == "Clip")
    bounds = [mbv2.tensors[t] for t in clip.inputs[1:]]
    assert [b.role for b in bounds] == [Role.CONSTANT] * 2 and all(b.shape == () for b in bounds)
    assert not set(clip.inputs[1:]) & set(mbv2.producer())
    resize = next(op for op in mbv2.ops if op.op_type == "Resize")
    assert resize.kind == OpKind.OTHER and resize.attrs["mode"] == "linear"
    assert resize.inputs[1] == -1  # the omitted roi
    assert sum(op.op_type == "Add" for op in mbv2.ops) == 3

    wide = load_onnx(paths["unet_wide96"], {})
    grouped = [op for op in wide.ops if op.attrs.get("group", 1) > 1]
    assert grouped and all(op.kind == OpKind.CONV for op in grouped)

    deeplab = load_onnx(paths["deeplab_lite"], {})
    rates = sorted(op.attrs["dilations"][0] for op in deeplab.ops
                   if op.op_type == "Conv" and op.attrs["kernel"] == (3, 3))
    assert rates[-3:] == [1, 2, 4]
    dilated = next(op for op in deeplab.ops if op.attrs.get("dilations") == (4, 4))
    assert dilated.attrs["pads"] == (4, 4, 4, 4)
    strided = deeplab.ops[0]
    assert strided.attrs["strides"] == (2, 2)
    assert deeplab.tensors[strided.outputs[0]].shape == (1, 8, 32, 32)


# --- small hand-made models for the error paths ------------------------------------------


def _model(nodes, inp=("x", [1, 3, 8, 8]), out=("y", [1, 3, 8, 8]), inits=(), opsets=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
        initializer=list(inits))
    opsets = opsets or [("", 17)]
    return helper.make_model(graph, ir_version=8,
                             opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _error(path: Path, shapes=None) -> str:
    with pytest.raises(PlannerError) as info:
        load_onnx(path, shapes or {})
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _error(tmp_path / "absent.onnx")


@pytest.mark.parametrize("cut", [100, 1000, 0.5, -1])
def test_truncated_file(tmp_path: Path, cut: float) -> None:
    data = TINY_UNET.read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:end])
    assert "not an ONNX model" in _error(path)


@pytest.mark.parametrize(
    "data", [b"", b"hello, this is not a model\n", b"\x08\x08", bytes(range(256))])
def test_not_a_model(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    assert "not an ONNX model" in _error(path)


def test_cli_reports_bad_model_with_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"junk")
    assert cli_main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: junk.onnx: not an ONNX model") and "\n" not in err


def _dynamic(tmp_path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return _save(tmp_path, _model(nodes, ("x", ["N", 3, "H", "W"]), ("y", ["N", 4, "H", "W"]),
                                  [w]))


def test_dynamic_input_needs_input_shape(tmp_path: Path) -> None:
    path = _dynamic(tmp_path)
    message = _error(path)
    assert "'x'" in message and "--input-shape x=Nx3xHxW" in message
    graph = load_onnx(path, {"x": (1, 3, 10, 12)})
    shapes = {t.name: t.shape for t in graph.tensors}
    assert shapes == {"x": (1, 3, 10, 12), "w": (4, 3, 3, 3), "c": (1, 4, 10, 12),
                      "y": (1, 4, 10, 12)}
    assert graph.tensors[graph.outputs[0]].nbytes == 4 * 10 * 12 * 4
    # The CLI spelling goes through the same path.
    assert cli_main(["analyze", str(path), "--input-shape", "x=1x3x10x12", "--json"]) == 0


def test_input_shape_errors(tmp_path: Path) -> None:
    path = _dynamic(tmp_path)
    message = _error(path, {"images": (1, 3, 8, 8)})
    assert "'images'" in message and "'x'" in message
    message = _error(path, {"x": (1, 3, 8)})
    assert "3 dimensions" in message and "gives it 4" in message


def test_input_shape_overrides_static_size(tmp_path: Path) -> None:
    # A fully convolutional model can be planned at another size; stored shapes must not clash.
    graph = load_onnx(TINY_UNET, {"input": (1, 3, 40, 64)})
    assert graph.tensors[graph.outputs[0]].shape == (1, 1, 40, 64)


def test_unknown_op(tmp_path: Path) -> None:
    path = _save(tmp_path, _model([helper.make_node("FooBar", ["x"], ["y"], name="mystery")]))
    message = _error(path)
    assert "FooBar" in message and "mystery" in message


def test_custom_domain_op_without_shapes(tmp_path: Path) -> None:
    nodes = [helper.make_node("Warp", ["x"], ["t"], name="warp", domain="com.example"),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    path = _save(tmp_path, _model(nodes, opsets=[("", 17), ("com.example", 1)]))
    message = _error(path)
    assert "'t'" in message and "com.example.Warp" in message and "static shape" in message
    # Declaring the custom op's output in value_info is enough.
    model = _model(nodes, opsets=[("", 17), ("com.example", 1)])
    model.graph.value_info.append(
        helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3, 8, 8]))
    graph = load_onnx(_save(tmp_path, model, "declared.onnx"), {})
    assert graph.ops[0].op_type == "Warp" and graph.ops[0].kind == OpKind.OTHER
    assert graph.tensors[graph.ops[0].outputs[0]].nbytes == 3 * 8 * 8 * 4


def test_shape_inference_failure_names_node(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "x"], ["y"], name="mm")]
    path = _save(tmp_path, _model(nodes, ("x", [1, 3, 4, 5]), ("y", [1, 3, 4, 5])))
    message = _error(path)
    assert "shape inference failed" in message and "MatMul" in message and "mm" in message


def test_non_topological_order(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["t"], ["y"], name="second"),
             helper.make_node("Relu", ["x"], ["t"], name="first")]
    message = _error(_save(tmp_path, _model(nodes)))
    assert "topological" in message and "'second'" in message and "'first'" in message


def test_undefined_input_and_control_flow(tmp_path: Path) -> None:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    assert "'ghost'" in _error(_save(tmp_path, _model(nodes), "ghost.onnx"))
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [helper.make_node("If", ["cond"], ["y"], name="branchy", then_branch=branch,
                              else_branch=branch)]
    message = _error(_save(tmp_path, _model(nodes, inits=[cond]), "if.onnx"))
    assert "branchy" in message and "control flow" in message


def test_auto_pad_same_is_made_explicit(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((2, 3, 4, 4), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="SAME_UPPER",
                              strides=[2, 2])]
    path = _save(tmp_path, _model(nodes, ("x", [1, 3, 9, 9]), ("y", [1, 2, 5, 5]), [w]))
    op = load_onnx(path, {}).ops[0]
    # total pad (5-1)*2 + 4 - 9 = 3 per axis; SAME_UPPER puts the odd one at the end
    assert op.attrs["padding"] == "same" and op.attrs["pads"] == (1, 1, 2, 2)


def test_external_data(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(onnx.load(str(TINY_UNET)), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    graph = load_onnx(path, {})
    assert len(graph.ops) == len(load_onnx(TINY_UNET, {}).ops)
    assert graph.tensors[1].shape == (8, 3, 3, 3)
    (tmp_path / "weights.bin").unlink()
    assert "cannot read" in _error(path)


def test_quantized_depthwise_conv(tmp_path: Path) -> None:
    scalars = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in (
        ("xs", 0.1, np.float32), ("xz", 128, np.uint8), ("ws", 0.05, np.float32),
        ("wz", 0, np.uint8), ("ys", 0.2, np.float32), ("yz", 128, np.uint8))]
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.uint8), "w")
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                            ["y"], name="qdw", group=4, pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4, 6, 6])],
        initializer=[*scalars, w])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    loaded = load_onnx(_save(tmp_path, model), {})
    (op,) = loaded.ops
    assert op.kind == OpKind.DEPTHWISE_CONV and op.attrs["kernel"] == (3, 3)
    assert op.attrs["group"] == 4 and op.attrs["pads"] == (1, 1, 1, 1)
    out = loaded.tensors[op.outputs[0]]
    assert out.dtype == "uint8" and out.nbytes == 4 * 6 * 6 and out.role == Role.OUTPUT


def test_sparse_initializer_is_refused(tmp_path: Path) -> None:
    values = numpy_helper.from_array(np.ones(2, np.float32), "w")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 5]), "i"),
                                       [1, 3, 8, 8])
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")])
    model.graph.sparse_initializer.append(sparse)
    message = _error(_save(tmp_path, model))
    assert "sparse initializer 'w'" in message
