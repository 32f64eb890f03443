"""Shared test fixtures: where the real models and problem sets live.

The data sits next to the checkout (../shared relative to the repo root); CI has it,
a bare checkout may not, so tests that need it use `needs_shared` and skip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models"
MINIMALLOC = SHARED / "minimalloc"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared data is absent")


def shared_models(pattern: str = "**/*.tflite") -> list[Path]:
    """Shared model files matching `pattern`, sorted; empty when the data is absent."""
    return sorted(MODELS.glob(pattern)) if MODELS.is_dir() else []


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared data is absent")
    return SHARED
