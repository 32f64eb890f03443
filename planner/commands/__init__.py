"""CLI commands, one module each, with `add_parser(subparsers)` setting `run`."""

from __future__ import annotations

import importlib
from types import ModuleType

_COMMANDS = ("analyze", "solve", "verify_tflm", "run", "storage_host")


def load_commands() -> list[ModuleType]:
    found = []
    for name in _COMMANDS:
        try:
            found.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return found
