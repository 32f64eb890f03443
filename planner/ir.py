"""The graph IR every stage shares: ops in execution order over typed tensors.

Frontends build it, analysis and planners read it, nothing mutates it. Tensor ids
are positions in `Graph.tensors`; op indices are positions in `Graph.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

ALIGNMENT = 16  # TFLM's MicroArenaBufferAlignment


def align(nbytes: int, alignment: int = ALIGNMENT) -> int:
    return -(-nbytes // alignment) * alignment


class Role(str, Enum):
    ACTIVATION = "activation"
    CONSTANT = "constant"
    INPUT = "input"
    OUTPUT = "output"
    VARIABLE = "variable"
    SCRATCH = "scratch"


class OpKind(str, Enum):
    """What planners need to know of an op, whatever the source format calls it."""

    CONV = "conv"
    DEPTHWISE_CONV = "depthwise_conv"
    TRANSPOSE_CONV = "transpose_conv"
    CONCAT = "concat"
    POOL = "pool"
    ELEMENTWISE = "elementwise"
    RESHAPE = "reshape"
    STREAMED_GROUP = "streamed_group"  # ops run as one, row by row (planner/streaming.py)
    OTHER = "other"


DTYPE_BYTES: dict[str, int] = {
    "bool": 1,
    "int4": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "string": 1,
}


@dataclass(frozen=True)
class Tensor:
    id: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    role: Role
    # Index in the source file (TFLite tensor index); backends write per-tensor metadata by it.
    source_index: int | None = None
    # Axis that holds channels (NHWC: -1 as 3, NCHW: 1); None where channels mean nothing.
    channel_axis: int | None = None

    @property
    def planned(self) -> bool:
        """Whether the arena holds this tensor (TFLM plans no constants or variables)."""
        return self.role not in (Role.CONSTANT, Role.VARIABLE) and self.nbytes > 0

    @property
    def channels(self) -> int | None:
        if self.channel_axis is None or not self.shape:
            return None
        return self.shape[self.channel_axis]


@dataclass(frozen=True)
class Op:
    index: int
    name: str
    op_type: str  # as the source format names it: "Conv", "CONV_2D", ...
    kind: OpKind
    inputs: tuple[int, ...]  # tensor ids, -1 for an omitted optional input
    outputs: tuple[int, ...]
    scratch: tuple[int, ...] = ()  # scratch tensor ids this op requests, in request order
    # Attributes later stages read: kernel (kh, kw), strides (sh, sw), dilations,
    # padding ("same"/"valid" or explicit pads), axis (concat, normalised to >= 0),
    # fused_activation. Plain JSON-able values only.
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Graph:
    name: str
    source_format: str  # "onnx" or "tflite"
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    # Channel layout of 4-D activations: "NHWC" (TFLite) or "NCHW" (ONNX).
    layout: str = "NHWC"
    # For a graph whose streamed groups were replaced by one op each (streaming.py): the
    # graph before, whose op indices Plan.op_kernels and Plan.stream_groups name.
    source: Graph | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def num_steps(self) -> int:
        """Steps 0..num_steps-1: step 0 holds the inputs, op k runs at step k + 1."""
        return len(self.ops) + 1

    def producer(self) -> dict[int, int]:
        """Tensor id -> index of the op that writes it."""
        return {t: op.index for op in self.ops for t in op.outputs if t >= 0}

    def consumers(self) -> dict[int, list[int]]:
        """Tensor id -> indices of the ops that read it, ascending."""
        users: dict[int, list[int]] = {}
        for op in self.ops:
            for t in dict.fromkeys(op.inputs):
                if t >= 0:
                    users.setdefault(t, []).append(op.index)
        return users
