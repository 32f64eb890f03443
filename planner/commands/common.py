"""Options and steps that several commands share: reading the model, choosing its kernels."""

from __future__ import annotations

import argparse

from frontends import load_model, parse_input_shape

from .. import streaming
from ..device import DeviceProfile
from ..ir import Graph
from ..kernels import apply_kernels


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx or .tflite model")
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=1x3x80x120",
        help="fix a dynamic input dimension (ONNX); may be repeated",
    )


def add_kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stock-transpose-conv", action="store_true",
        help="keep TFLM's TRANSPOSE_CONV (int32 scratch of the whole output) instead of the "
        "project's bit-exact row kernel (scratch of one output row)",
    )
    p.add_argument(
        "--row-streaming", action="store_true",
        help="run chains of row-capable ops (conv, depthwise, pool, add/mul, concat, the row "
        "transpose conv) as streamed groups, row by row, the tensors between them in rings "
        "of a few rows (planner/streaming.py); solve plans a few candidate partitions into "
        "groups, the bound-minimising one and none among them, and keeps the best plan "
        "(planner/streaming_search.py)",
    )


def read_graph(args: argparse.Namespace) -> Graph:
    """The graph as the frontend reads it (stock kernels)."""
    shapes = dict(parse_input_shape(s) for s in args.input_shape)
    return load_model(args.model, shapes)


def source_graph(args: argparse.Namespace, profile: DeviceProfile) -> Graph:
    """The graph with its ops on the kernels the profile and flags allow (no groups)."""
    return apply_kernels(read_graph(args), profile, getattr(args, "stock_transpose_conv", False))


def planned_graph(args: argparse.Namespace, profile: DeviceProfile) -> Graph:
    """The graph a plan is made for: its ops on the kernels the profile and flags allow,
    with --row-streaming the streamed groups streaming.choose_groups picks as one op each
    (`.source` then holds the graph before; `solve` searches more partitions:
    planner/streaming_search.py)."""
    source = source_graph(args, profile)
    if not getattr(args, "row_streaming", False):
        return source
    return streaming.apply_groups(source, streaming.choose_groups(source, profile))
