"""Write the int8 .tflite benchmark zoo (no TensorFlow needed).

    python -m benchmarks.models.build_tflite_zoo [--out DIR]

Weights are random (fixed seeds) and scales come from a float trace, so the files
are byte-identical on every rerun. The architectures mirror the float ONNX zoo
(benchmarks/models/build_zoo.py); what matters for memory planning is the graph
shape, not what the network has learned.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .tflite_builder import ACT_NONE, ACT_RELU, ACT_RELU6, Builder

HERE = Path(__file__).resolve().parent


def _double_conv(b: Builder, x: int, ch: int, name: str, groups: int = 1) -> int:
    # As in build_zoo.py: the first conv of the network reads 3 channels, which no
    # group count divides, so it stays dense.
    g1 = groups if b.shape(x)[3] % groups == 0 else 1
    x = b.conv2d(x, ch, 3, groups=g1, name=f"{name}/conv1")
    return b.conv2d(x, ch, 3, groups=groups, name=f"{name}/conv2")


def _unet(b: Builder, shape: tuple[int, int, int, int], widths: tuple[int, ...],
          groups: int = 1) -> Builder:
    """TinySeg's U-Net: DoubleConv, MaxPool down, Conv2DTranspose to half the channels,
    concat [skip, up] on channels, DoubleConv, 1x1 conv to one channel."""
    x = b.input("input", shape)
    skips = [_double_conv(b, x, widths[0], "inc", groups)]
    for level, ch in enumerate(widths[1:], start=1):
        p = b.max_pool(skips[-1], name=f"down{level}/pool")
        skips.append(_double_conv(b, p, ch, f"down{level}", groups))
    x = skips.pop()
    for level, ch in enumerate(reversed(widths[:-1]), start=1):
        up = b.transpose_conv(x, ch // 2, name=f"up{level}/upconv")
        cat = b.concat([skips.pop(), up], name=f"up{level}/concat")
        x = _double_conv(b, cat, ch, f"up{level}", groups)
    b.output(b.conv2d(x, 1, 1, act=ACT_NONE, name="outc"))
    return b


def tiny_unet() -> Builder:
    return _unet(Builder("tiny_unet", 101), (1, 80, 120, 3), (8, 16, 32, 64))


def unet_wide96() -> Builder:
    # Grouped 3x3 convs (8 groups) as in the ONNX zoo: the activations, all a memory
    # planner sees, are those of the dense network, at an eighth of the weight bytes.
    return _unet(Builder("unet_wide96", 102), (1, 96, 96, 3), (16, 32, 64, 128), groups=8)


def _inverted_residual(b: Builder, x: int, cout: int, stride: int, expand: int, name: str) -> int:
    cin = b.shape(x)[3]
    h = b.conv2d(x, cin * expand, 1, act=ACT_RELU6, name=f"{name}/expand")
    h = b.depthwise_conv2d(h, 3, stride, act=ACT_RELU6, name=f"{name}/dw")
    h = b.conv2d(h, cout, 1, act=ACT_NONE, name=f"{name}/project")
    if stride == 1 and cin == cout:
        h = b.add(x, h, name=f"{name}/add")
    return h


def mbv2_unet() -> Builder:
    """MobileNetV2-style encoder (expand, depthwise, project, residual ADD) with a
    bilinear-upsampling decoder that concatenates [skip, up]."""
    b = Builder("mbv2_unet", 103)
    x = b.input("input", (1, 96, 96, 3))
    x = b.conv2d(x, 8, 3, act=ACT_RELU6, name="stem")  # 96x96x8
    skips = [x]
    for stage, ch in enumerate((16, 24, 32), start=1):  # 48x48, 24x24, 12x12
        x = _inverted_residual(b, x, ch, 2, 4, f"block{stage}a")
        x = _inverted_residual(b, x, ch, 1, 4, f"block{stage}b")
        skips.append(x)
    skips.pop()
    for level, ch in enumerate((24, 16, 8), start=1):
        up = b.resize_bilinear(x, 2, name=f"dec{level}/resize")
        cat = b.concat([skips.pop(), up], name=f"dec{level}/concat")
        x = b.conv2d(cat, ch, 3, act=ACT_RELU, name=f"dec{level}/conv")
    b.output(b.conv2d(x, 1, 1, act=ACT_NONE, name="head"))
    return b


def deeplab_lite() -> Builder:
    """Strided backbone to output stride 8, ASPP (1x1 + dilated 3x3 at rates 1/2/4),
    concat, 1x1, classifier, bilinear x8 back to the input size."""
    b = Builder("deeplab_lite", 104)
    x = b.input("input", (1, 64, 64, 3))
    x = b.conv2d(x, 8, 3, stride=2, name="backbone/conv1")  # 32x32
    x = b.conv2d(x, 16, 3, stride=2, name="backbone/conv2")  # 16x16
    x = b.conv2d(x, 32, 3, stride=2, name="backbone/conv3")  # 8x8
    x = b.conv2d(x, 32, 3, name="backbone/conv4")
    branches = [b.conv2d(x, 16, 1, name="aspp/b0")]
    for rate in (1, 2, 4):
        branches.append(b.conv2d(x, 16, 3, dilation=rate, name=f"aspp/rate{rate}"))
    x = b.concat(branches, name="aspp/concat")
    x = b.conv2d(x, 16, 1, name="aspp/project")
    x = b.conv2d(x, 4, 1, act=ACT_NONE, name="classifier")
    b.output(b.resize_bilinear(x, 8, name="upsample"))
    return b


def fcn_additive() -> Builder:
    """FCN-8s style: DoubleConv/MaxPool encoder, 1x1 score layers, transposed-conv
    upsampling, skips merged by ADD (no concat)."""
    b = Builder("fcn_additive", 105)
    classes = 8
    x = b.input("input", (1, 64, 64, 3))
    skips = [_double_conv(b, x, 8, "enc0")]  # 64x64x8
    for level, ch in enumerate((16, 32, 32), start=1):  # 32x32, 16x16, 8x8
        p = b.max_pool(skips[-1], name=f"enc{level}/pool")
        skips.append(_double_conv(b, p, ch, f"enc{level}"))
    x = b.conv2d(skips.pop(), classes, 1, act=ACT_NONE, name="score3")
    while skips:
        level = len(skips) - 1
        score = b.conv2d(skips.pop(), classes, 1, act=ACT_NONE, name=f"score{level}")
        up = b.transpose_conv(x, classes, name=f"up{level}")
        x = b.add(up, score, name=f"fuse{level}")
    b.output(b.conv2d(x, 2, 1, act=ACT_NONE, name="classifier"))
    return b


def irregular() -> Builder:
    """Branches of length 2-6 off one stem, merging by ADD and CONCATENATION at
    different depths. The op order is build_zoo.py's: valid but memory-hostile, as
    the wide 1x1 heads (64 and 48 channels) run first and their tails only at the end."""
    b = Builder("irregular", 106)
    x = b.input("input", (1, 32, 32, 8))
    s = b.conv2d(x, 16, 1, name="stem")  # 32x32x16
    b_head = b.conv2d(s, 64, 1, act=ACT_NONE, name="b/head")
    d_head = b.conv2d(s, 48, 1, act=ACT_NONE, name="d/head")
    c1 = b.conv2d(b.max_pool(s, name="c/pool"), 32, 3, name="c/conv1")  # 16x16 side branch
    a1 = b.conv2d(s, 16, 3, name="a/conv1")
    c2 = b.conv2d(c1, 32, 3, name="c/conv2")
    a2 = b.conv2d(a1, 16, 3, name="a/conv2")
    c3 = b.transpose_conv(c2, 16, name="c/upconv")
    m1 = b.add(a2, c3, name="merge1/add")  # ADD merge at depth 3
    e1 = b.conv2d(m1, 8, 1, name="e/conv")  # a short branch off the merge
    a3 = b.conv2d(m1, 16, 3, name="a/conv3")
    a4 = b.conv2d(a3, 16, 3, name="a/conv4")
    m2 = b.add(a4, s, name="merge2/add")  # long residual from the stem
    b_tail = b.conv2d(b_head, 8, 3, name="b/tail")
    d_tail = b.conv2d(d_head, 8, 3, name="d/tail")
    x = b.concat([m2, b_tail, d_tail, e1], name="merge3/concat")  # CONCATENATION at the end
    b.output(b.conv2d(x, 4, 1, act=ACT_NONE, name="head"))
    return b


# name -> a function returning the traced (not yet quantized) graph.
MODELS: dict[str, Callable[[], Builder]] = {
    "tiny_unet": tiny_unet,
    "unet_wide96": unet_wide96,
    "mbv2_unet": mbv2_unet,
    "deeplab_lite": deeplab_lite,
    "fcn_additive": fcn_additive,
    "irregular": irregular,
}


def model_path(name: str, out: Path = HERE) -> Path:
    return out / f"{name}_int8.tflite"


def build_all(out: Path = HERE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in MODELS.items():
        path = model_path(name, out)
        path.write_bytes(make().finish())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args(argv)
    try:
        paths = build_all(args.out)
    except OSError as exc:
        print(f"error: cannot write the zoo to {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}  {path.stat().st_size} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
