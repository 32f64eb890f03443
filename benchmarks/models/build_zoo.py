"""Build the bundled ONNX model zoo: `python -m benchmarks.models.build_zoo [OUTDIR]`.

Every model is float32, opset 17, built with onnx.helper from fixed numpy seeds, so
a rebuild writes byte-identical files. The weights are random (He-scaled so the
activations stay finite): these models exist to be planned, not to segment images.

- tiny_unet: TinySeg's Tiny U-Net (coslab-kr/tinyseg, model/models/unet.py) at
  1x3x80x120. As there, an up block turns C channels into a level of c channels
  with ConvTranspose 2x2/2 to c/2 channels and concatenates [skip, upsampled].
- unet_wide96: the same U-Net at 1x3x96x96 with 16/32/64/128 channels. Dense
  float32 weights would take 1.7 MB, more than the whole zoo may, so every 3x3
  conv after the first is grouped (group 8, ResNeXt style): the activations, which
  are all a memory planner sees, are those of the dense network.
- mbv2_unet: MobileNetV2 inverted-residual encoder, bilinear Resize x2 decoder.
- deeplab_lite: strided backbone, ASPP (1x1 and dilated 3x3 at rates 1/2/4),
  bilinear Resize back to the input size.
- fcn_additive: FCN-8s style decoder whose skips are Adds, not Concats.
- irregular: unequal branches merging at different depths, stored in a valid but
  memory-hostile topological order (wide branch heads all run first).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the lowest IR that opset 17 allows: readable by older runtimes too
PRODUCER = "tinyplan benchmarks.models.build_zoo"
ZOO_DIR = Path(__file__).resolve().parent


class Builder:
    """Accumulates nodes and initializers; names are deterministic counters."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counts: dict[str, int] = {}
        self.shared: dict[str, str] = {}

    def fresh(self, prefix: str) -> str:
        k = self.counts.get(prefix, 0)
        self.counts[prefix] = k + 1
        return f"{prefix}{k}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, prefix: str, shape: Sequence[int], fan_in: int) -> str:
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return self.init(prefix, w.astype(np.float32))

    def bias(self, prefix: str, n: int) -> str:
        return self.init(prefix, (0.01 * self.rng.standard_normal(n)).astype(np.float32))

    def node(self, op: str, inputs: Sequence[str], name: str, **attrs) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def constant(self, key: str, value: np.ndarray) -> str:
        """One Constant node per distinct `key`: exercises constants that are node outputs."""
        if key not in self.shared:
            name = self.fresh("const")
            self.nodes.append(helper.make_node(
                "Constant", [], [name], name=name,
                value=numpy_helper.from_array(value, name)))
            self.shared[key] = name
        return self.shared[key]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1,
             dilation: int = 1, group: int = 1, act: str | None = "relu") -> str:
        name = self.fresh("conv")
        pad = dilation * (k - 1) // 2
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k), cin // group * k * k)
        b = self.bias(f"{name}.bias", cout)
        y = self.node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride, stride],
                      pads=[pad] * 4, dilations=[dilation, dilation], group=group)
        return self.activation(y, act)

    def activation(self, x: str, act: str | None) -> str:
        if act is None:
            return x
        if act == "relu":
            return self.node("Relu", [x], self.fresh("relu"))
        if act == "relu6":
            lo = self.constant("relu6_min", np.array(0.0, np.float32))
            hi = self.constant("relu6_max", np.array(6.0, np.float32))
            return self.node("Clip", [x, lo, hi], self.fresh("relu6"))
        raise ValueError(act)

    def conv_transpose(self, x: str, cin: int, cout: int) -> str:
        name = self.fresh("upconv")
        w = self.weight(f"{name}.weight", (cin, cout, 2, 2), cin)
        b = self.bias(f"{name}.bias", cout)
        return self.node("ConvTranspose", [x, w, b], name, kernel_shape=[2, 2], strides=[2, 2])

    def maxpool(self, x: str) -> str:
        return self.node("MaxPool", [x], self.fresh("pool"), kernel_shape=[2, 2], strides=[2, 2])

    def resize(self, x: str, factor: int) -> str:
        scales = self.constant(f"scales{factor}",
                               np.array([1, 1, factor, factor], np.float32))
        return self.node("Resize", [x, "", scales], self.fresh("resize"), mode="linear",
                         coordinate_transformation_mode="half_pixel")

    def concat(self, xs: Sequence[str]) -> str:
        return self.node("Concat", xs, self.fresh("concat"), axis=1)

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b], self.fresh("add"))

    def model(self, inp: tuple[str, Sequence[int]], out: str,
              out_shape: Sequence[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, list(inp[1]))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))],
            initializer=self.inits,
        )
        # The graph output is named "output": rename the last node's output.
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == out:
                    node.output[i] = "output"
        model = helper.make_model(
            graph, producer_name=PRODUCER, producer_version="1",
            opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def double_conv(b: Builder, x: str, cin: int, cout: int, group: int = 1) -> str:
    # The network's first conv reads 3 channels, which no group of 8 divides.
    g1 = group if cin % group == 0 else 1
    x = b.conv(x, cin, cout, group=g1)
    return b.conv(x, cout, cout, group=group)


def unet(name: str, seed: int, shape: tuple[int, int, int, int], widths: Sequence[int],
         group: int = 1) -> onnx.ModelProto:
    """TinySeg's U-Net: DoubleConv; MaxPool + DoubleConv down; ConvT + Concat + DoubleConv up."""
    b = Builder(name, seed)
    x = double_conv(b, "input", shape[1], widths[0], group)
    skips = [x]
    for cin, cout in pairwise(widths):
        x = double_conv(b, b.maxpool(x), cin, cout, group)
        skips.append(x)
    skips.pop()
    cin = widths[-1]
    for c in reversed(widths[:-1]):
        up = b.conv_transpose(x, cin, c // 2)
        x = b.concat([skips.pop(), up])
        x = double_conv(b, x, c + c // 2, c, group)
        cin = c
    x = b.conv(x, widths[0], 1, k=1, act=None)
    return b.model(("input", shape), x, (shape[0], 1, shape[2], shape[3]))


def tiny_unet() -> onnx.ModelProto:
    return unet("tiny_unet", 1, (1, 3, 80, 120), (8, 16, 32, 64))


def unet_wide96() -> onnx.ModelProto:
    return unet("unet_wide96", 2, (1, 3, 96, 96), (16, 32, 64, 128), group=8)


def inverted_residual(b: Builder, x: str, cin: int, cout: int, stride: int,
                      expand: int) -> str:
    hidden = cin * expand
    y = b.conv(x, cin, hidden, k=1, act="relu6")
    y = b.conv(y, hidden, hidden, k=3, stride=stride, group=hidden, act="relu6")
    y = b.conv(y, hidden, cout, k=1, act=None)
    return b.add(x, y) if stride == 1 and cin == cout else y


def mbv2_unet() -> onnx.ModelProto:
    b = Builder("mbv2_unet", 3)
    x = b.conv("input", 3, 8, act="relu6")  # 96x96x8
    skips = [x]
    cin = 8
    for cout in (16, 24, 32):  # 48x48, 24x24, 12x12
        x = inverted_residual(b, x, cin, cout, stride=2, expand=4)
        x = inverted_residual(b, x, cout, cout, stride=1, expand=4)
        skips.append(x)
        cin = cout
    skips.pop()
    for c in (24, 16, 8):
        x = b.concat([skips.pop(), b.resize(x, 2)])
        x = b.conv(x, c + cin, c)
        cin = c
    x = b.conv(x, cin, 1, k=1, act=None)
    return b.model(("input", (1, 3, 96, 96)), x, (1, 1, 96, 96))


def deeplab_lite() -> onnx.ModelProto:
    b = Builder("deeplab_lite", 4)
    x = b.conv("input", 3, 8, stride=2)  # 32x32
    x = b.conv(x, 8, 16, stride=2)  # 16x16
    x = b.conv(x, 16, 32, stride=2)  # 8x8: output stride 8
    x = b.conv(x, 32, 32)
    branches = [b.conv(x, 32, 16, k=1)]
    branches += [b.conv(x, 32, 16, dilation=rate) for rate in (1, 2, 4)]
    x = b.conv(b.concat(branches), 64, 16, k=1)
    x = b.conv(x, 16, 4, k=1, act=None)
    x = b.resize(x, 8)
    return b.model(("input", (1, 3, 64, 64)), x, (1, 4, 64, 64))


def fcn_additive() -> onnx.ModelProto:
    b = Builder("fcn_additive", 5)
    classes = 8
    x = double_conv(b, "input", 3, 8)  # 64x64
    skips = [x]
    for cin, cout in ((8, 16), (16, 32), (32, 32)):  # 32x32, 16x16, 8x8
        x = double_conv(b, b.maxpool(x), cin, cout)
        skips.append(x)
    widths = [8, 16, 32, 32]
    x = b.conv(skips.pop(), widths.pop(), classes, k=1, act=None)
    while skips:
        score = b.conv(skips.pop(), widths.pop(), classes, k=1, act=None)
        x = b.add(b.conv_transpose(x, classes, classes), score)
    x = b.conv(x, classes, 2, k=1, act=None)
    return b.model(("input", (1, 3, 64, 64)), x, (1, 2, 64, 64))


def irregular() -> onnx.ModelProto:
    """Branches of length 2-6 off one stem; all wide heads are scheduled before any tail."""
    b = Builder("irregular", 6)
    s = b.conv("input", 8, 16, k=1)  # 32x32x16
    # Wide linear heads (256 KiB, 192 KiB) whose tails run only at the end.
    b_head = b.conv(s, 16, 64, k=1, act=None)
    d_head = b.conv(s, 16, 48, k=1, act=None)
    c1 = b.conv(b.maxpool(s), 16, 32)  # 16x16 side branch
    a1 = b.conv(s, 16, 16)
    c2 = b.conv(c1, 32, 32)
    a2 = b.conv(a1, 16, 16)
    c3 = b.conv_transpose(c2, 32, 16)
    m1 = b.add(a2, c3)  # Add merge at depth 3
    e1 = b.conv(m1, 16, 8, k=1)  # a short branch off the merge
    a3 = b.conv(m1, 16, 16)
    a4 = b.conv(a3, 16, 16)
    m2 = b.add(a4, s)  # long residual from the stem
    b_tail = b.conv(b_head, 64, 8)
    d_tail = b.conv(d_head, 48, 8)
    x = b.concat([m2, b_tail, d_tail, e1])  # Concat merge at the end
    x = b.conv(x, 40, 4, k=1, act=None)
    return b.model(("input", (1, 8, 32, 32)), x, (1, 4, 32, 32))


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], onnx.ModelProto]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def path(self) -> Path:
        return ZOO_DIR / f"{self.name}.onnx"


ZOO: tuple[ZooModel, ...] = (
    ZooModel("tiny_unet", tiny_unet, (1, 3, 80, 120), (1, 1, 80, 120)),
    ZooModel("unet_wide96", unet_wide96, (1, 3, 96, 96), (1, 1, 96, 96)),
    ZooModel("mbv2_unet", mbv2_unet, (1, 3, 96, 96), (1, 1, 96, 96)),
    ZooModel("deeplab_lite", deeplab_lite, (1, 3, 64, 64), (1, 4, 64, 64)),
    ZooModel("fcn_additive", fcn_additive, (1, 3, 64, 64), (1, 2, 64, 64)),
    ZooModel("irregular", irregular, (1, 8, 32, 32), (1, 4, 32, 32)),
)


def write_all(outdir: Path = ZOO_DIR) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in ZOO:
        path = outdir / f"{entry.name}.onnx"
        path.write_bytes(entry.build().SerializeToString())
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    outdir = Path(args[0]) if args else ZOO_DIR
    for path in write_all(outdir):
        print(f"{path} {path.stat().st_size} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
