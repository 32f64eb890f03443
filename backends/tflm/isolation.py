"""Run a TFLM call in a child process, so that TFLM aborting cannot take the caller down.

TFLM trusts its model: an offline offset of -2 makes it free memory it never owned
("double free or corruption", SIGABRT), which kills the whole Python process. Every
call that loads a user's model into TFLM for `verify-tflm` goes through `isolated`:
the child (forked, so nothing is re-imported) runs the call with its fd 2 in a temp
file; a result or a PlannerError comes back through a pipe; a child that dies by a
signal or exits without answering becomes one `TFLMAborted` line quoting TFLM's
first complaint.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from planner.errors import PlannerError


class TFLMAborted(PlannerError):
    """TFLM crashed (signal or abnormal exit) on a model: bad input, exit code 2."""


def isolated(label: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child; its return value, or its PlannerError, or TFLMAborted."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    with tempfile.TemporaryFile() as log:
        child = ctx.Process(target=_child, args=(send, log.fileno(), fn, args), daemon=True)
        child.start()
        send.close()
        try:
            answer = receive.recv()
        except EOFError:  # the child died before it could answer
            answer = None
        finally:
            receive.close()
            child.join()
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    if answer is None or child.exitcode != 0:
        raise TFLMAborted(f"TFLM aborted on {label}: {_death(child.exitcode)}"
                          + (f" ({_first_line(text)})" if _first_line(text) else ""))
    if text.strip():
        sys.stderr.write(text)  # what TFLM printed on success, as before isolation
    kind, value = answer
    if kind == "error":
        raise PlannerError(value)
    return value


def _child(send, log_fd: int, fn: Callable[..., Any], args: tuple) -> None:
    code = 0
    try:
        faulthandler.disable()  # an abort is reported by the parent, not dumped here
        sys.stderr.flush()
        os.dup2(log_fd, 2)
        try:
            send.send(("ok", fn(*args)))
        except PlannerError as exc:
            send.send(("error", str(exc)))
        except Exception as exc:  # noqa: BLE001 - anything TFLM's bindings raise is one line
            send.send(("error", f"TFLM failed: {type(exc).__name__}: {_first_line(str(exc))}"))
    except BaseException:  # noqa: BLE001 - never run the parent's cleanup in the child
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode} without an answer"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""
