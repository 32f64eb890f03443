"""Planners behind one interface (`base.Request` -> `plan.Plan`), looked up by name."""

from __future__ import annotations

import importlib

_MODULES = ("linear", "tflm_greedy", "offset_heuristics", "tinyseg", "canonical", "ilp")


def load_all() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
