"""The JSON output contract: every `--json` object and the benchmark CSV share one schema.

`planner/schemas/tinyplan-output.schema.json` (JSON Schema 2020-12) describes each
kind; docs/json_schema.md explains the fields. Bump SCHEMA_VERSION when a field
changes meaning or goes away (adding a field does not bump it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "tinyplan-output.schema.json"
KINDS = ("solve", "pareto", "run", "verify-tflm", "analyze", "benchmark-row")


def stamp(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with `schema_version` and `kind` first, as every JSON output starts."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    return {"schema_version": SCHEMA_VERSION, "kind": kind, **data}


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())
