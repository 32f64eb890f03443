"""The bundled ONNX zoo: valid, runnable, the shapes it promises, and rebuilt byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from benchmarks.models import ZOO_DIR, ZOO_NAMES, zoo_paths
from benchmarks.models.build_zoo import OPSET, ZOO, write_all
from frontends.onnx_frontend import load_onnx
from planner.analysis import load_bound


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x})
    return out


def test_registry_matches_package_paths() -> None:
    assert tuple(z.name for z in ZOO) == ZOO_NAMES
    assert [z.path for z in ZOO] == zoo_paths()
    assert all(p.is_file() for p in zoo_paths())


def test_zoo_is_small() -> None:
    total = sum(p.stat().st_size for p in zoo_paths())
    assert total < 1_500_000, total


@pytest.mark.parametrize("entry", ZOO, ids=lambda z: z.name)
def test_model_is_valid_and_runs(entry) -> None:
    model = onnx.load(str(entry.path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    floats = [i.data_type for i in model.graph.initializer]
    floats += [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert set(floats) == {onnx.TensorProto.FLOAT}
    x = np.random.default_rng(0).standard_normal(entry.input_shape).astype(np.float32)
    y = _run(entry.path, x)
    assert y.shape == entry.output_shape and y.dtype == np.float32
    assert np.isfinite(y).all() and y.std() > 0


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    first = write_all(tmp_path / "a")
    second = write_all(tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        committed = ZOO_DIR / a.name
        # A stale committed file means build_zoo changed without a rebuild.
        assert a.read_bytes() == committed.read_bytes(), f"rerun build_zoo: {a.name} is stale"


def _lazy_order(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each node as late as possible: depth first from the outputs (frees wide heads early)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(name: str) -> None:
        node = producer.get(name)
        if node is None or id(node) in done:
            return
        done.add(id(node))
        for i in node.input:
            visit(i)
        order.append(node)

    for out in model.graph.output:
        visit(out.name)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(order)
    return copy


def test_irregular_order_is_memory_hostile(tmp_path: Path) -> None:
    path = ZOO_DIR / "irregular.onnx"
    model = onnx.load(str(path))
    better = _lazy_order(model)
    assert len(better.graph.node) == len(model.graph.node)
    assert [n.name for n in better.graph.node] != [n.name for n in model.graph.node]
    x = np.random.default_rng(1).standard_normal((1, 8, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(better, x), _run(path, x), rtol=1e-5, atol=1e-5)
    reordered = tmp_path / "irregular_lazy.onnx"
    reordered.write_bytes(better.SerializeToString())
    stored = load_bound(load_onnx(path, {})).bytes
    lazy = load_bound(load_onnx(reordered, {})).bytes
    assert lazy < 0.8 * stored, (lazy, stored)
