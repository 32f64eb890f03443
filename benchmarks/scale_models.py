"""Residual U-Nets of a chosen size, for the scale benchmark (`python -m benchmarks scale`).

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


# Sizes of the scale suite: (target ops, input side in pixels).
SIZES = ((250, 160), (500, 128), (1000, 112), (2000, 96))


def write_model(target_ops: int, side: int, outdir: Path, top_blocks: int | None = 0) -> Path:
    """Build the model closest to `target_ops` at side x side pixels into `outdir`
    (by default without full-resolution blocks: the variant that needs spilling)."""
    blocks = blocks_for(target_ops, top_blocks)
    tag = "" if top_blocks is None else f"_top{top_blocks}"
    path = outdir / f"resunet_{ops_for(blocks, top_blocks)}{tag}_{side}px.onnx"
    if not path.is_file():
        outdir.mkdir(parents=True, exist_ok=True)
        onnx.save(residual_unet(blocks, side, side, name=path.stem, top_blocks=top_blocks),
                  path)
    return path
