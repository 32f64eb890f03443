"""The bundled ONNX model zoo (built by `python -m benchmarks.models.build_zoo`).

Paths only, so that importing this costs nothing; the builders live in build_zoo.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
ZOO_NAMES = ("tiny_unet", "unet_wide96", "mbv2_unet", "deeplab_lite", "fcn_additive", "irregular")
# The quick-start model: TinySeg's Tiny U-Net, float32, 1x3x80x120.
TINY_UNET = ZOO_DIR / "tiny_unet.onnx"


def zoo_paths() -> list[Path]:
    return [ZOO_DIR / f"{name}.onnx" for name in ZOO_NAMES]
