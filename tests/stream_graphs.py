"""Small int8 NHWC chains built straight in the IR, for the row-streaming tests."""

from __future__ import annotations

import math

from planner.ir import Graph, Op, OpKind, Role, Tensor
from planner.kernels import ROWS_KERNEL


class Chain:
    """Builds conv / depthwise / pool / transpose-conv / add / concat ops as TFLite names
    them (CONV_2D, ...), with their constants, so the row kernels accept them."""

    def __init__(self, h: int, w: int, c: int, name: str = "chain"):
        self.name = name
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.x = self.tensor((1, h, w, c), Role.INPUT, "input")

    def tensor(self, shape, role=Role.ACTIVATION, name="", dtype="int8") -> int:
        width = 4 if dtype == "int32" else 1
        tid = len(self.tensors)
        self.tensors.append(Tensor(tid, name or f"t{tid}", tuple(shape), dtype,
                                   math.prod(shape) * width, role, tid,
                                   3 if len(shape) == 4 else None))
        return tid

    def _op(self, op_type, kind, inputs, out_shape, scratch=(), **attrs) -> int:
        out = self.tensor(out_shape)
        self.ops.append(Op(len(self.ops), f"op{len(self.ops)}", op_type, kind, tuple(inputs),
                           (out,), tuple(scratch), attrs))
        return out

    def shape(self, t: int) -> tuple[int, ...]:
        return self.tensors[t].shape

    def conv(self, x: int, cout: int, k: int = 3, s: int = 1, padding: str = "same",
             depthwise: bool = False) -> int:
        _, h, w, c = self.shape(x)
        oh, ow = out_hw(h, k, s, padding), out_hw(w, k, s, padding)
        if depthwise:
            filt = self.tensor((1, k, k, cout), Role.CONSTANT, f"f{len(self.ops)}")
        else:
            filt = self.tensor((cout, k, k, c), Role.CONSTANT, f"f{len(self.ops)}")
        bias = self.tensor((cout,), Role.CONSTANT, f"b{len(self.ops)}", "int32")
        op_type, kind = ("DEPTHWISE_CONV_2D", OpKind.DEPTHWISE_CONV) if depthwise else \
            ("CONV_2D", OpKind.CONV)
        return self._op(op_type, kind, (x, filt, bias), (1, oh, ow, cout), kernel=(k, k),
                        strides=(s, s), dilations=(1, 1), padding=padding,
                        fused_activation="relu")

    def pool(self, x: int, k: int = 2, s: int = 2, padding: str = "valid") -> int:
        _, h, w, c = self.shape(x)
        return self._op("MAX_POOL_2D", OpKind.POOL, (x,),
                        (1, out_hw(h, k, s, padding), out_hw(w, k, s, padding), c),
                        kernel=(k, k), strides=(s, s), padding=padding, fused_activation="none")

    def tconv(self, x: int, cout: int, k: int = 2, s: int = 2, padding: str = "valid") -> int:
        _, h, w, c = self.shape(x)
        oh, ow = tconv_out(h, k, s, padding), tconv_out(w, k, s, padding)
        shape = self.tensor((4,), Role.CONSTANT, f"shape{len(self.ops)}", "int32")
        filt = self.tensor((cout, k, k, c), Role.CONSTANT, f"f{len(self.ops)}")
        bias = self.tensor((cout,), Role.CONSTANT, f"b{len(self.ops)}", "int32")
        scratch = self.tensor((ow * cout,), Role.SCRATCH, f"acc{len(self.ops)}", "int32")
        return self._op("TRANSPOSE_CONV", OpKind.TRANSPOSE_CONV, (shape, filt, x, bias),
                        (1, oh, ow, cout), (scratch,), kernel=ROWS_KERNEL,
                        kernel_size=(k, k), strides=(s, s), dilations=(1, 1),
                        padding=padding, fused_activation="none")

    def add(self, a: int, b: int) -> int:
        return self._op("ADD", OpKind.ELEMENTWISE, (a, b), self.shape(a), fused_activation="relu")

    def concat(self, *ins: int) -> int:
        _, h, w, _ = self.shape(ins[0])
        c = sum(self.shape(t)[3] for t in ins)
        return self._op("CONCATENATION", OpKind.CONCAT, ins, (1, h, w, c), axis=3,
                        fused_activation="none")

    def build(self, outputs: list[int]) -> Graph:
        tensors = [Tensor(t.id, t.name, t.shape, t.dtype, t.nbytes, Role.OUTPUT, t.source_index,
                          t.channel_axis) if t.id in outputs else t for t in self.tensors]
        return Graph(self.name, "tflite", tuple(tensors), tuple(self.ops), (self.x,),
                     tuple(outputs), "NHWC")


def out_hw(n: int, k: int, s: int, padding: str) -> int:
    """TFLite's output size of a conv / pool."""
    return -(-n // s) if padding == "same" else -(-(n - k + 1) // s)


def tconv_out(n: int, k: int, s: int, padding: str) -> int:
    """The usual transpose-conv output size (what a Keras Conv2DTranspose gives)."""
    return n * s if padding == "same" else (n - 1) * s + max(k, s)
