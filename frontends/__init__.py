"""Model readers: each turns a file into the shared `planner.ir.Graph`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from planner.errors import PlannerError
from planner.ir import Graph
from planner.units import INT32_MAX

TFLITE_MAGIC = b"TFL3"


def load_model(
    path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> Graph:
    """Read an .onnx or .tflite model; bad files raise PlannerError with one clear line."""
    path = Path(path)
    if not path.exists():
        raise PlannerError(f"{path}: no such file")
    if not path.is_file():
        raise PlannerError(f"{path}: not a file")
    try:
        head = path.read_bytes()[:8]
    except OSError as exc:
        raise PlannerError(f"{path}: cannot read: {exc.strerror}") from None
    if head[4:8] == TFLITE_MAGIC or path.suffix.lower() == ".tflite":
        from .tflite_frontend import load_tflite

        if input_shapes:
            raise PlannerError("--input-shape applies to ONNX models; TFLite shapes are static")

        return load_tflite(path)
    if path.suffix.lower() == ".onnx":
        from .onnx_frontend import load_onnx

        return _addressable(load_onnx(path, input_shapes or {}), path)
    raise PlannerError(f"{path}: not an ONNX (.onnx) or TFLite (.tflite) model")


def _addressable(graph: Graph, path: Path) -> Graph:
    """Refuse tensors beyond int32 bytes: TFLM and the offline array address no more."""
    for t in graph.tensors:
        if t.nbytes > INT32_MAX:
            raise PlannerError(f"{path}: tensor '{t.name}' {list(t.shape)} needs {t.nbytes:,} B, "
                               "beyond what the target addresses (int32)")
    return graph


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """NAME=1x3x80x120 -> ("NAME", (1, 3, 80, 120))."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(not 0 < d <= INT32_MAX for d in shape):
        raise PlannerError(f"malformed --input-shape {text!r}: use NAME=1x3x80x120")
    return name, shape
