"""Residual U-Nets of a chosen size, for the scale benchmark (`python -m benchmarks scale`).

Two twins of one architecture: `residual_unet_int8` writes an int8 NHWC .tflite
(per-channel weights, benchmarks/models/tflite_builder.py, as the int8 zoo is built),
the graphs the project's fused concat / concat+conv kernels and streaming can run,
so fusion and streaming are part of the search; `residual_unet` writes the float32
NCHW ONNX twin, which no kernel fuses or streams (planner/kernels.py): a spill-only
problem. The suite uses the int8 twin by default (`write_model(fmt=...)`).

A U-Net with four levels (8/16/32/64 channels at full, 1/2, 1/4, 1/8 resolution):
each level of the encoder and the decoder is a stack of residual blocks
(conv-relu-conv-add-relu), the encoder levels end in a MaxPool, the decoder levels
start with a ConvTranspose 2x2/2 and a Concat with the encoder's skip tensor and a
1x1 conv back to the level's width. The number of blocks per level sets the op
count (10 ops per block and level), so 250 to 2000 ops keep the same shape: three
skip tensors live across a long middle. The suite's graphs have no blocks at full
resolution (`top_blocks=0`), so the full-resolution skip tensor, not a block, sets
the peak and only spilling (or streaming) reaches the working-set bound.

float32, opset 17, weights from a fixed numpy seed: a rebuild is byte-identical.
Convs are grouped (8 channels per group) so that 2000-op files stay a few MB;
the activations, which are all a memory planner sees, are those of dense convs.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .models import tflite_builder as tfl
from .models.build_zoo import Builder

WIDTHS = (8, 16, 32, 64)
GROUP_CHANNELS = 8  # channels per conv group


def _conv(b: Builder, x: str, cin: int, cout: int, k: int = 3, act: str | None = "relu") -> str:
    group = 1 if cin < GROUP_CHANNELS or k == 1 else cin // GROUP_CHANNELS
    if cout % group:
        group = 1
    return b.conv(x, cin, cout, k=k, group=group, act=act)


def _block(b: Builder, x: str, c: int) -> str:
    """conv-relu-conv, add the input, relu: 5 ops."""
    y = _conv(b, x, c, c)
    y = _conv(b, y, c, c, act=None)
    return b.activation(b.add(x, y), "relu")


def ops_for(blocks: int, top_blocks: int | None = None) -> int:
    """The op count of `residual_unet(blocks, top_blocks=...)`."""
    top = blocks if top_blocks is None else top_blocks
    levels = len(WIDTHS)
    encoder = 2 + 5 * (top + (levels - 1) * blocks) + (levels - 1) * 3  # + pool, 1x1 conv, relu
    decoder = (levels - 1) * 4 + 5 * (top + (levels - 2) * blocks)  # convT, concat, 1x1 conv
    return encoder + decoder + 1  # head conv


def blocks_for(target_ops: int, top_blocks: int | None = None) -> int:
    """The block count whose op count is closest to `target_ops`."""
    return min(range(1, 200), key=lambda n: abs(ops_for(n, top_blocks) - target_ops))


def residual_unet(blocks: int, height: int = 128, width: int = 128, seed: int = 0,
                  name: str | None = None, top_blocks: int | None = None) -> onnx.ModelProto:
    """A residual U-Net with `blocks` residual blocks per level (see the module doc).

    `top_blocks` (default `blocks`): blocks at full resolution. With 0, the largest
    working set is no longer at full resolution but where the full-resolution skip
    tensor waits for the decoder, so reaching the working-set bound takes spilling.
    """
    if height % 8 or width % 8:
        raise ValueError("height and width must be multiples of 8 (three 2x poolings)")
    top = blocks if top_blocks is None else top_blocks
    name = name or f"resunet_{ops_for(blocks, top_blocks)}"
    b = Builder(name, seed)
    x = _conv(b, "input", 3, WIDTHS[0])
    skips = []
    for level, c in enumerate(WIDTHS):
        if level:
            x = _conv(b, b.maxpool(x), WIDTHS[level - 1], c, k=1)  # widen after the pool
        for _ in range(blocks if level else top):
            x = _block(b, x, c)
        skips.append(x)
    skips.pop()
    cin = WIDTHS[-1]
    for c in reversed(WIDTHS[:-1]):
        up = b.conv_transpose(x, cin, c)
        x = b.concat([skips.pop(), up])
        x = _conv(b, x, 2 * c, c, k=1)
        for _ in range(blocks if c != WIDTHS[0] else top):
            x = _block(b, x, c)
        cin = c
    x = b.conv(x, WIDTHS[0], 1, k=1, act=None)
    return b.model(("input", (1, 3, height, width)), x, (1, 1, height, width))


def _conv_int8(b: tfl.Builder, x: int, cout: int, k: int = 3, act: int = tfl.ACT_RELU,
               name: str = "conv") -> int:
    # Grouped as in the ONNX twin (8 channels per group, 1x1 convs dense), so that
    # 2000-op files stay small; the activations are those of dense convs.
    cin = b.shape(x)[3]
    groups = 1 if cin < GROUP_CHANNELS or k == 1 else cin // GROUP_CHANNELS
    if cout % groups:
        groups = 1
    return b.conv2d(x, cout, k, act=act, groups=groups, name=name)


def _block_int8(b: tfl.Builder, x: int, name: str) -> int:
    """conv(+relu)-conv, add the input (+relu6): 3 ops, the TFLite form of `_block`
    (TFLite fuses the activations into the conv and the add). The add clips at 6
    because a stack of a hundred random residual blocks otherwise doubles its range
    at every block and overflows the float32 scales."""
    c = b.shape(x)[3]
    y = _conv_int8(b, x, c, name=f"{name}/conv1")
    y = _conv_int8(b, y, c, act=tfl.ACT_NONE, name=f"{name}/conv2")
    return b.add(x, y, act=tfl.ACT_RELU6, name=f"{name}/add")


def ops_for_int8(blocks: int, top_blocks: int | None = None) -> int:
    """The op count of `residual_unet_int8(blocks, top_blocks=...)`."""
    top = blocks if top_blocks is None else top_blocks
    levels = len(WIDTHS)
    encoder = 1 + 3 * (top + (levels - 1) * blocks) + (levels - 1) * 2  # stem; pool, 1x1 conv
    decoder = (levels - 1) * 3 + 3 * (top + (levels - 2) * blocks)  # convT, concat, 1x1 conv
    return encoder + decoder + 1  # head conv


def blocks_for_int8(target_ops: int, top_blocks: int | None = None) -> int:
    """The block count whose int8 op count is closest to `target_ops`."""
    return min(range(1, 400), key=lambda n: abs(ops_for_int8(n, top_blocks) - target_ops))


def residual_unet_int8(blocks: int, height: int = 128, width: int = 128, seed: int = 0,
                       name: str | None = None, top_blocks: int | None = None) -> bytes:
    """The int8 NHWC .tflite twin of `residual_unet` (same levels, widths, skips and
    op kinds; relus fused), as the bytes of the flatbuffer. Scales come from a float
    trace of one random image, so a rebuild is byte-identical."""
    if height % 8 or width % 8:
        raise ValueError("height and width must be multiples of 8 (three 2x poolings)")
    top = blocks if top_blocks is None else top_blocks
    b = tfl.Builder(name or f"resunet_int8_{ops_for_int8(blocks, top_blocks)}", seed)
    # One calibration image: the trace of a 2000-op graph stays a few seconds.
    x = _conv_int8(b, b.input("input", (1, height, width, 3), batch=1), WIDTHS[0], name="stem")
    skips = []
    for level, c in enumerate(WIDTHS):
        if level:
            x = _conv_int8(b, b.max_pool(x, name=f"down{level}/pool"), c, k=1,
                           name=f"down{level}/widen")
        for i in range(blocks if level else top):
            x = _block_int8(b, x, f"enc{level}/block{i}")
        skips.append(x)
    skips.pop()
    for level, c in enumerate(reversed(WIDTHS[:-1]), start=1):
        up = b.transpose_conv(x, c, name=f"up{level}/upconv")
        x = b.concat([skips.pop(), up], name=f"up{level}/concat")
        x = _conv_int8(b, x, c, k=1, name=f"up{level}/reduce")
        for i in range(blocks if c != WIDTHS[0] else top):
            x = _block_int8(b, x, f"dec{level}/block{i}")
    b.output(b.conv2d(x, 1, 1, act=tfl.ACT_NONE, name="head"))
    return b.finish()


# Sizes of the scale suite: (target ops, input side in pixels).
SIZES = ((250, 160), (500, 128), (1000, 112), (2000, 96))


FORMATS = ("tflite", "onnx")


def write_model(target_ops: int, side: int, outdir: Path, top_blocks: int | None = 0,
                fmt: str = "tflite") -> Path:
    """Build the model closest to `target_ops` at side x side pixels into `outdir`
    (by default without full-resolution blocks: the variant whose peak is set by the
    waiting skip tensor). `fmt`: "tflite" (int8 NHWC) or "onnx" (float32 NCHW)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    tag = "" if top_blocks is None else f"_top{top_blocks}"
    if fmt == "tflite":
        blocks = blocks_for_int8(target_ops, top_blocks)
        path = outdir / f"resunet_int8_{ops_for_int8(blocks, top_blocks)}{tag}_{side}px.tflite"
        if not path.is_file():
            outdir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(residual_unet_int8(blocks, side, side, name=path.stem,
                                                top_blocks=top_blocks))
        return path
    blocks = blocks_for(target_ops, top_blocks)
    path = outdir / f"resunet_{ops_for(blocks, top_blocks)}{tag}_{side}px.onnx"
    if not path.is_file():
        outdir.mkdir(parents=True, exist_ok=True)
        onnx.save(residual_unet(blocks, side, side, name=path.stem, top_blocks=top_blocks),
                  path)
    return path
