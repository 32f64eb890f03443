"""Options and steps that several commands share: reading the model, scratch dtype."""

from __future__ import annotations

import argparse

from frontends import load_model, parse_input_shape

from ..ir import Graph, OpKind


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx or .tflite model")
    p.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=1x3x80x120",
        help="fix a dynamic input dimension (ONNX); may be repeated",
    )
    p.add_argument(
        "--scratch", choices=("int32", "int16"), default="int32",
        help="int16: store TRANSPOSE_CONV int32 scratch as int16 (halves it; changes numerics)",
    )


def read_graph(args: argparse.Namespace) -> Graph:
    shapes = dict(parse_input_shape(s) for s in args.input_shape)
    graph = load_model(args.model, shapes)
    if getattr(args, "scratch", "int32") == "int16":
        graph = graph.with_scratch_scale(OpKind.TRANSPOSE_CONV, 1, 2)
    return graph
