"""Graphs built straight in the IR, for tests that need no model file."""

from __future__ import annotations

import random

from planner.ir import DTYPE_BYTES, Graph, Op, OpKind, Role, Tensor


class GraphBuilder:
    def __init__(self, name: str, dtype: str = "int8", layout: str = "NHWC"):
        self.name, self.dtype, self.layout = name, dtype, layout
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.inputs: list[int] = []
        self.filters: set[int] = set()  # filters op() added, numbered after everything else

    def tensor(self, shape: tuple[int, ...], role: Role = Role.ACTIVATION, name: str = "") -> int:
        n = 1
        for d in shape:
            n *= d
        tid = len(self.tensors)
        axis = (3 if self.layout == "NHWC" else 1) if len(shape) == 4 else None
        number = len(self.tensors) - len(self.filters)  # filters take no name number
        self.tensors.append(Tensor(tid, name or f"t{number}", shape, self.dtype,
                                   n * DTYPE_BYTES[self.dtype], role, tid, axis))
        return tid

    def input(self, shape: tuple[int, ...]) -> int:
        t = self.tensor(shape, Role.INPUT, "input")
        self.inputs.append(t)
        return t

    def op(self, kind: OpKind, inputs: list[int], out_shape: tuple[int, ...],
           scratch_bytes: int = 0, filter_in: int | None = None, **attrs) -> int:
        """An op; a one-input 4-D CONV also gets a constant int8 OHWI filter (as TFLite's
        CONV_2D has), of `filter_in` input channels (default: all: no groups)."""
        if kind == OpKind.CONV and len(inputs) == 1 and len(out_shape) == 4 \
                and self.layout == "NHWC":
            kh, kw = attrs.get("kernel", (1, 1))
            in_c = filter_in or self.tensors[inputs[0]].shape[3]
            inputs = [inputs[0], self.tensor((out_shape[3], kh, kw, in_c), Role.CONSTANT,
                                             f"filter{len(self.ops)}")]
            self.filters.add(inputs[1])
        out = self.tensor(out_shape)
        scratch: tuple[int, ...] = ()
        if scratch_bytes:
            scratch = (self.tensor((scratch_bytes,), Role.SCRATCH),)
        self.ops.append(Op(len(self.ops), f"op{len(self.ops)}", kind.value.upper(), kind,
                           tuple(inputs), (out,), scratch, attrs))
        return out

    def shape(self, t: int) -> tuple[int, ...]:
        return self.tensors[t].shape

    def build(self, outputs: list[int]) -> Graph:
        tensors = [
            Tensor(t.id, t.name, t.shape, t.dtype, t.nbytes, Role.OUTPUT, t.source_index,
                   t.channel_axis) if t.id in outputs else t
            for t in self.tensors
        ]
        # Scratch tensors go after the others, as the frontends append them; the filters
        # last of all, so that activation ids do not depend on them.
        order = [t for t in tensors if t.role != Role.SCRATCH and t.id not in self.filters] + \
                [t for t in tensors if t.role == Role.SCRATCH] + \
                [t for t in tensors if t.id in self.filters]
        remap = {t.id: i for i, t in enumerate(order)}
        tensors = [Tensor(remap[t.id], t.name, t.shape, t.dtype, t.nbytes, t.role,
                          remap[t.id], t.channel_axis) for t in order]
        ops = [Op(o.index, o.name, o.op_type, o.kind, tuple(remap[t] for t in o.inputs),
                  tuple(remap[t] for t in o.outputs), tuple(remap[t] for t in o.scratch),
                  o.attrs) for o in self.ops]
        return Graph(self.name, "tflite", tuple(tensors), tuple(ops),
                     tuple(remap[t] for t in self.inputs), tuple(remap[t] for t in outputs),
                     self.layout)


def small_unet(h: int = 16, w: int = 24, channels: tuple[int, ...] = (4, 8, 16),
               transpose_scratch: bool = True) -> Graph:
    """A U-Net in NHWC int8: conv blocks down, transpose-conv up, channel concat skips."""
    b = GraphBuilder(f"small_unet_{h}x{w}")
    x = b.input((1, h, w, 3))
    skips = []
    for i, c in enumerate(channels):
        x = b.op(OpKind.CONV, [x], (1, h, w, c), kernel=(3, 3), strides=(1, 1))
        if i < len(channels) - 1:
            skips.append(x)
            h, w = h // 2, w // 2
            x = b.op(OpKind.POOL, [x], (1, h, w, c), kernel=(2, 2), strides=(2, 2))
    for c, skip in zip(reversed(channels[:-1]), reversed(skips), strict=True):
        h, w = h * 2, w * 2
        scratch = h * w * c * 4 if transpose_scratch else 0
        up = b.op(OpKind.TRANSPOSE_CONV, [x], (1, h, w, c), scratch_bytes=scratch,
                  kernel=(2, 2), strides=(2, 2))
        cat = b.op(OpKind.CONCAT, [skip, up], (1, h, w, 2 * c), axis=3)
        x = b.op(OpKind.CONV, [cat], (1, h, w, c), kernel=(3, 3), strides=(1, 1))
    out = b.op(OpKind.CONV, [x], (1, h, w, 1), kernel=(1, 1), strides=(1, 1))
    return b.build([out])


def random_dag(rng: random.Random, max_ops: int = 12) -> Graph:
    """A random topologically ordered DAG of 4-D tensors with concats and elementwise merges."""
    b = GraphBuilder(f"random_{rng.randrange(10**6)}")
    h, w = rng.choice([(4, 4), (8, 8), (4, 8)])
    live = [b.input((1, h, w, rng.randint(1, 8)))]
    for _ in range(rng.randint(1, max_ops)):
        kind = rng.choice([OpKind.CONV, OpKind.CONV, OpKind.CONCAT, OpKind.ELEMENTWISE])
        if kind == OpKind.CONCAT and len(live) >= 2:
            ins = rng.sample(live, 2)
            c = sum(b.shape(t)[3] for t in ins)
            live.append(b.op(OpKind.CONCAT, ins, (1, h, w, c), axis=3))
        elif kind == OpKind.ELEMENTWISE and len(live) >= 2:
            a = rng.choice(live)
            same = [t for t in live if b.shape(t) == b.shape(a)]
            live.append(b.op(OpKind.ELEMENTWISE, [a, rng.choice(same)], b.shape(a)))
        else:
            src = rng.choice(live)
            scratch = rng.choice([0, 0, 64 * rng.randint(1, 8)])
            live.append(b.op(OpKind.CONV, [src], (1, h, w, rng.randint(1, 8)),
                             scratch_bytes=scratch, kernel=(3, 3), strides=(1, 1)))
    consumed = {t for op in b.ops for t in op.inputs}
    outputs = [t for t in live[1:] if t not in consumed] or [live[-1]]
    return b.build(outputs)
