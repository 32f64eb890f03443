"""Fuzzing plan JSON and models through the real commands (`run`, `analyze`, `solve`).

Plans: a solved spill plan, mutated (values replaced by any JSON, integers nudged,
keys dropped), run by `run`: exit 0 or 2; never 1, which would be a plan the checker
accepted and that executed wrongly (a checker hole). Models: the int8 Tiny U-Net
with flipped, cut or inserted bytes, and with structural edits (op order, tensor
indices, shapes, types), through `analyze` and `solve`: the command contract, and
never exit 3 (a plan the frontend should have refused).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.cli import main
from tests.fuzz.harness import assert_contract, call_cli, fuzz_settings

ROOT = Path(__file__).resolve().parents[2]
UNET8 = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
UNET_ONNX = ROOT / "benchmarks" / "models" / "tiny_unet.onnx"


@pytest.fixture(scope="module")
def spill_plan(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plan")
    code, _, err = call_cli(main, ["solve", str(UNET8), "--planner", "tinyseg", "--budget",
                                   "256KB", "-o", str(out), "--emit", "svg"])
    assert code == 0, err
    return json.loads((out / "plan.json").read_text())


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.integers(),
              st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(root, path, value):
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _get(root, path):
    for key in path:
        root = root[key]
    return root


@st.composite
def mutated(draw, base: dict) -> dict:
    """Wild edits (any JSON anywhere) or, twice as often, well-typed ones the checker judges."""
    data = copy.deepcopy(base)
    wild = draw(st.integers(0, 2)) == 0
    for _ in range(draw(st.integers(1, 3))):
        if wild:
            path = draw(st.sampled_from([p for p in _paths(data) if p]))
            if draw(st.booleans()):
                del _get(data, path[:-1])[path[-1]]
            else:
                _set(data, path, draw(json_values))
            continue
        # Well typed: nudge a segment or transfer integer by a plausible step.
        group = draw(st.sampled_from(["segments", "transfers"]))
        if not data[group]:
            continue
        row = data[group][draw(st.integers(0, len(data[group]) - 1))]
        key = draw(st.sampled_from([k for k, v in row.items()
                                    if isinstance(v, int) and not isinstance(v, bool)]))
        step = 16 if key in ("offset", "size", "address", "nbytes") else 1
        row[key] = max(0, row[key] + step * draw(st.sampled_from([-4, -1, 1, 4, 1000])))
    return data


@fuzz_settings(80)
@given(st.data())
def test_fuzz_mutated_plans_never_succeed_wrongly(spill_plan, tmp_path_factory, data) -> None:
    plan = data.draw(mutated(spill_plan))
    path = tmp_path_factory.mktemp("mut") / "plan.json"
    path.write_text(json.dumps(plan))
    argv = ["run", str(UNET8), str(path)]
    code, _, err = call_cli(main, argv)
    assert_contract(code, err, argv)
    assert code in (0, 2), f"checker hole: the checker accepted a plan that ran wrongly: {err}"


# -- models ---------------------------------------------------------------------------

@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    raw = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        how = draw(st.sampled_from(["flip", "flip", "cut", "insert", "zero"]))
        pos = draw(st.integers(0, len(raw) - 1))
        if how == "flip":
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            raw = raw[:pos]
        elif how == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            raw[pos: pos + 4] = b"\0\0\0\0"
        if not raw:
            break
    return bytes(raw)


def _structural(model, draw) -> None:
    sub = model.subgraphs[0]
    ops, tensors = sub.operators, sub.tensors
    how = draw(st.sampled_from(["swap_ops", "input_index", "output_index", "shape", "type",
                                "graph_input", "drop_op"]))
    i = draw(st.integers(0, len(ops) - 1))
    if how == "swap_ops":
        j = draw(st.integers(0, len(ops) - 1))
        ops[i], ops[j] = ops[j], ops[i]
    elif how in ("input_index", "output_index"):
        field = "inputs" if how == "input_index" else "outputs"
        group = [int(t) for t in getattr(ops[i], field)] \
            if getattr(ops[i], field) is not None else []
        if group:
            group[draw(st.integers(0, len(group) - 1))] = draw(st.integers(-2, len(tensors) + 2))
            setattr(ops[i], field, group)
    elif how == "shape":
        t = tensors[draw(st.integers(0, len(tensors) - 1))]
        if t.shape is not None and len(t.shape):
            shape = [int(d) for d in t.shape]
            shape[draw(st.integers(0, len(shape) - 1))] = draw(
                st.sampled_from([0, 1, 2, 3, 7, 2**20, 2**31 - 1, -1]))
            t.shape = shape
    elif how == "type":
        tensors[draw(st.integers(0, len(tensors) - 1))].type = draw(st.integers(0, 20))
    elif how == "graph_input":
        sub.inputs = [draw(st.integers(0, len(tensors) - 1))]
    else:
        del ops[i]


def _model_contract(path: Path) -> None:
    for argv in (["analyze", str(path)],
                 ["solve", str(path), "--planner", "tflm-greedy", "--profile", "none"]):
        code, _, err = call_cli(main, argv)
        assert_contract(code, err, argv)


@fuzz_settings(100)
@given(st.data())
def test_fuzz_damaged_tflite_bytes(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("m") / "m.tflite"
    path.write_bytes(data.draw(damaged_bytes(UNET8.read_bytes())))
    _model_contract(path)


@fuzz_settings(100)
@given(st.data())
def test_fuzz_crafted_tflite_models(tmp_path_factory, data) -> None:
    from backends.tflite import io

    model = io.read_model(UNET8)
    for _ in range(data.draw(st.integers(1, 3))):
        _structural(model, data.draw)
    path = tmp_path_factory.mktemp("m") / "m.tflite"
    try:
        path.write_bytes(io.write_model(model))
    except Exception:  # noqa: BLE001 - an edit flatbuffers cannot serialise is no model
        return
    _model_contract(path)


@fuzz_settings(40)
@given(st.data())
def test_fuzz_damaged_onnx_bytes(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    path.write_bytes(data.draw(damaged_bytes(UNET_ONNX.read_bytes())))
    argv = ["analyze", str(path)]
    code, _, err = call_cli(main, argv)
    assert_contract(code, err, argv)
