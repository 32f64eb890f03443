"""A thin wrapper around the real TFLM interpreter (the `tflite-micro` pip package).

It answers the questions the rest of the project checks itself against: how many
bytes does real TFLM put in the arena head and tail for a model, and what does the
model compute. TFLM reports arena use only by printing to the C-level stderr, so
`arena_usage` redirects file descriptor 2 around `print_allocations()`.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from planner.errors import PlannerError

# Real models here need at most a few hundred KiB; the interpreter fails loudly when short.
DEFAULT_ARENA = 8 * 1024 * 1024
MAX_ARENA = 1 << 30
_MISSING_RE = re.compile(r"missing: (\d+)")
_HEAD_RE = re.compile(r"Arena allocation head (\d+) bytes")
_ARENA_RE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:  # the package is a declared dependency, but say so plainly
        raise PlannerError(f"tflite-micro is not importable: {exc}") from None
    return runtime


def make_interpreter(model: bytes, arena_size: int | None = None, preserve_all: bool = False,
                     registerers: Sequence[str] = ()):
    """A TFLM interpreter with tensors allocated; any TFLM failure becomes one PlannerError.

    Without `arena_size` the arena starts at DEFAULT_ARENA and grows while TFLM says
    it is short ("... missing: N"), so large models (DeepLab: 7.6 MB head) still load.
    """
    runtime = _runtime()
    config = (
        runtime.InterpreterConfig.kPreserveAllTensors
        if preserve_all
        else runtime.InterpreterConfig.kAllocationRecording
    )
    size = arena_size or max(DEFAULT_ARENA, 10 * len(model))
    while True:
        try:
            return _build(runtime, model, size, config, registerers)
        except PlannerError as exc:
            short = _MISSING_RE.search(str(exc))
            if arena_size is not None or short is None or size >= MAX_ARENA:
                raise
            size = min(MAX_ARENA, 2 * (size + int(short.group(1))))


def _build(runtime, model: bytes, size: int, config, registerers: Sequence[str] = ()):
    made = []

    def build() -> None:
        # The keyword really is spelled "intrepreter_config" in tflite-micro.
        made.append(
            runtime.Interpreter.from_bytes(bytes(model), custom_op_registerers=list(registerers),
                                           arena_size=size, intrepreter_config=config)
        )

    try:
        log = _capture_fd2(lambda: _stdout_to_stderr(build))
    except Exception as exc:  # flatbuffer parse errors (struct.error, IndexError) included
        # TFLM explains itself on fd 2 ("Failed to get registration ..."); keep its first line.
        why = _first_line(getattr(exc, "tflm_log", "")) or _first_line(str(exc))
        raise PlannerError(f"TFLM cannot load the model: {why or type(exc).__name__}") from None
    if log.strip():
        sys.stderr.write(log)
    return made[0]


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _stdout_to_stderr(fn) -> None:
    """Run fn() with stdout sent to stderr: some wheels print notes ("Number of resource
    variables ...") while loading a model, which would corrupt `--json` output."""
    import contextlib

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            fn()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _capture_fd2(fn) -> str:
    """Run fn() with the process-level stderr (fd 2) sent to a temp file; return what it wrote."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            fn()
        except Exception as exc:
            tmp.seek(0)
            exc.tflm_log = tmp.read().decode("utf-8", "replace")  # type: ignore[attr-defined]
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode("utf-8", "replace")


def arena_usage(model: bytes, arena_size: int | None = None) -> dict[str, int]:
    """What real TFLM's print_allocations() reports for `model`: total, head and tail bytes
    (the tail as the wheel's RecordingMicroAllocator allocates it)."""
    interp = make_interpreter(model, arena_size)
    text = _capture_fd2(interp.print_allocations)
    usage = {key: int(m.group(1)) for key in ("total", "head", "tail")
             if (m := re.search(rf"Arena allocation {key} (\d+) bytes", text))}
    if len(usage) != 3:
        raise PlannerError("TFLM printed no 'Arena allocation total/head/tail' lines")
    return usage


def arena_head_bytes(model: bytes, arena_size: int | None = None) -> int:
    """The arena head (planned, non-persistent bytes) real TFLM uses for `model`."""
    return arena_usage(model, arena_size)["head"]


def arena_tail_bytes(model: bytes, arena_size: int | None = None) -> int:
    """The arena tail (persistent bytes: eval tensors, nodes, op data...) real TFLM uses."""
    return arena_usage(model, arena_size)["tail"]


def _num_io(model: bytes) -> tuple[int, int]:
    from planner.tflite_schema import schema

    fb = schema()

    sub = fb.Model.GetRootAsModel(bytes(model), 0).Subgraphs(0)
    return sub.InputsLength(), sub.OutputsLength()


def random_inputs(model: bytes, seed: int = 0) -> list[np.ndarray]:
    """One random array per model input, of the input's shape and dtype (full integer range)."""
    interp = make_interpreter(model)
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(_num_io(model)[0]):
        detail = interp.get_input_details(i)
        shape = tuple(int(d) for d in detail["shape"])
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            arr = rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            arr = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        arrays.append(arr)
    return arrays


def invoke(
    model: bytes, inputs: Sequence[np.ndarray], arena_size: int | None = None
) -> list[np.ndarray]:
    """Run `model` once on real TFLM and return copies of all its outputs."""
    n_in, n_out = _num_io(model)
    if len(inputs) != n_in:
        raise PlannerError(f"model has {n_in} inputs, got {len(inputs)} arrays")
    interp = make_interpreter(model, arena_size)
    try:
        for i, arr in enumerate(inputs):
            detail = interp.get_input_details(i)
            interp.set_input(np.ascontiguousarray(arr, dtype=detail["dtype"]), i)
        interp.invoke()
        return [np.array(interp.get_output(i), copy=True) for i in range(n_out)]
    except (RuntimeError, ValueError) as exc:
        raise PlannerError(f"TFLM invoke failed: {_first_line(str(exc)) or 'error'}") from None


def arena_figures(interp) -> dict[str, int]:
    """TFLM's own `total`, `head` and `tail` bytes for an interpreter (print_allocations)."""
    text = _capture_fd2(interp.print_allocations)
    found = {k: int(v) for k, v in _ARENA_RE.findall(text)}
    if "head" not in found:
        raise PlannerError("TFLM printed no 'Arena allocation head' line")
    return found


def invoke_runs(
    model: bytes, input_sets: Sequence[Sequence[np.ndarray]], arena_size: int | None = None,
    registerers: Sequence[str] = (),
) -> tuple[list[list[np.ndarray] | str], dict[str, int]]:
    """Consecutive inferences on one interpreter, as a device runs them.

    Returns per input set the outputs (copies) or the first line of TFLM's error, and
    the arena figures; a state kept between Invokes (storages, spill records) is
    exercised because the interpreter is not rebuilt.
    """
    n_in, n_out = _num_io(model)
    interp = make_interpreter(model, arena_size, registerers=registerers)
    results: list[list[np.ndarray] | str] = []
    for inputs in input_sets:
        if len(inputs) != n_in:
            raise PlannerError(f"model has {n_in} inputs, got {len(inputs)} arrays")
        try:
            for i, arr in enumerate(inputs):
                detail = interp.get_input_details(i)
                interp.set_input(np.ascontiguousarray(arr, dtype=detail["dtype"]), i)
            log = _capture_fd2(interp.invoke)
            results.append([np.array(interp.get_output(i), copy=True) for i in range(n_out)])
        except (RuntimeError, ValueError) as exc:
            why = _first_line(getattr(exc, "tflm_log", "")) or _first_line(str(exc))
            results.append(f"TFLM invoke failed: {why or 'error'}")
            continue
        if log.strip():
            sys.stderr.write(log)
    return results, arena_figures(interp)
