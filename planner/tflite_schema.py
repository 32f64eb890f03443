"""The TFLite flatbuffer schema module shipped inside the installed tflite-micro wheel.

Wheels moved it: recent ones have `tflite_micro.tensorflow.lite.micro.python`, the
2026-08 wheels (the ones whose TFLM source is public, docs/tflm_backend.md) have
`tflite_micro.tensorflow.lite.python`. Both generate the same object API.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from planner.errors import PlannerError

_LOCATIONS = (
    "tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
    "tflite_micro.tensorflow.lite.python.schema_py_generated",
)


def schema() -> ModuleType:
    errors = []
    for name in _LOCATIONS:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(str(exc))
    raise PlannerError(f"tflite-micro (TFLite schema) is not importable: {errors[0]}")
