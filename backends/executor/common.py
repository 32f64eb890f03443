"""What the executor and its kernels share (kept apart so that no two modules import
each other)."""

from __future__ import annotations

import numpy as np

from planner.errors import PlannerError
from planner.ir import Tensor


class ExecutionError(Exception):
    """The plan does not give an op its data (missing segment, stream or part)."""


def numpy_dtype(tensor: Tensor) -> np.dtype:
    if tensor.dtype in ("int4", "bfloat16", "string"):
        raise PlannerError(f"tensor '{tensor.name}' has dtype {tensor.dtype}: not executable")
    try:
        return np.dtype(np.bool_ if tensor.dtype == "bool" else tensor.dtype)
    except TypeError:
        raise PlannerError(f"tensor '{tensor.name}' has unknown dtype {tensor.dtype}") from None
