"""Coverage-guided fuzzing of the input boundaries with atheris (libFuzzer for Python).

An optional, longer run; not part of CI (`pip install -e ".[fuzz]"`):

    python tests/fuzz/atheris_fuzz.py plan -max_total_time=600
    python tests/fuzz/atheris_fuzz.py tflite -max_total_time=600 corpus_dir/

Targets: plan (plan JSON), profile (TOML), frames (protocol decoder + host),
tflite (the TFLite frontend), csv (MiniMalloc problems). Each input must either
parse or raise one PlannerError line; any other exception is a finding (atheris
stops and writes the crashing input to ./crash-*).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from backends.storage.host import StorageBackend  # noqa: E402
    from backends.storage.protocol import Damaged, FrameDecoder  # noqa: E402
    from benchmarks.minimalloc import read_problem  # noqa: E402
    from frontends.tflite_frontend import parse_tflite  # noqa: E402
    from planner.device import profile_from_dict, tomllib  # noqa: E402
    from planner.errors import PlannerError  # noqa: E402
    from planner.plan_check import plan_from_json  # noqa: E402

_TMP = Path(tempfile.mkdtemp(prefix="tinyplan-atheris-"))
_BACKEND: StorageBackend | None = None


def _one_line(exc: PlannerError) -> None:
    if "\n" in str(exc):
        raise AssertionError(f"multi-line error: {exc!r}")


def plan(data: bytes) -> None:
    try:
        plan_from_json(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return  # not JSON: load_plan turns these into one line before from_json
    except PlannerError as exc:
        _one_line(exc)


def profile(data: bytes) -> None:
    try:
        profile_from_dict(tomllib.loads(data.decode("utf-8")), "fuzz")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return
    except PlannerError as exc:
        _one_line(exc)


def frames(data: bytes) -> None:
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = StorageBackend(4096, _TMP)
    decoder = FrameDecoder()
    seen_damage = False
    for item in decoder.feed(data):
        if seen_damage:
            raise AssertionError("a frame decoded after a damaged one")
        seen_damage = isinstance(item, Damaged)
        _BACKEND.handle(item)


def tflite(data: bytes) -> None:
    try:
        parse_tflite(data, where="fuzz")
    except PlannerError as exc:
        _one_line(exc)


def csv(data: bytes) -> None:
    path = _TMP / "p.1048576.csv"
    path.write_bytes(data)
    try:
        read_problem(path)
    except PlannerError as exc:
        _one_line(exc)


TARGETS = {"plan": plan, "profile": profile, "frames": frames, "tflite": tflite, "csv": csv}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
